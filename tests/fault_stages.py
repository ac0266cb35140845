"""Stages for the fault tests, and a tiny driver that runs one of them in a child process.

The test process imports this module and calls ``register()`` so that it computes the same
fingerprints as the children. A child is started as ``python fault_stages.py <store> <stage>
'<params as JSON>'`` and talks to the parent through stdout lines:

    ready            imported and registered; waiting for "go" on stdin (only with --wait-go)
    writing          the stage computed its value and returns it: the save starts now
    computing        the stage's code is running (and blocks when FAULT_BLOCK_SECONDS is set)
    result <hash> <executed> <seconds>   the run finished: xxh3-128 of the target value's
                     bytes, whether this process executed the stage, how long run() took
"""
from __future__ import annotations

import json
import os
import sys
import time

import numpy as np
import xxhash

MIB = 1 << 20


def big_array(*, seed: int, mib: int = 300):
    """A ``mib`` MiB float64 array whose every element is ``seed``."""
    value = np.full(mib * MIB // 8, float(seed))
    print("writing", flush=True)  # the next thing the pipeline does is save the value
    return value


def slow_counted(*, counter: str, value: int):
    """Append a line to ``counter`` (one line per execution), then take a while."""
    with open(counter, "a") as f:
        f.write(f"{os.getpid()}\n")
        f.flush()
        os.fsync(f.fileno())
    time.sleep(1.5)
    return np.arange(100_000, dtype=np.int64) * value


def interruptible(*, n: int):
    """Returns ``[n] * 1000``; blocks first (waiting for a signal) if FAULT_BLOCK_SECONDS is set."""
    print("computing", flush=True)
    block = float(os.environ.get("FAULT_BLOCK_SECONDS", "0"))
    if block:
        time.sleep(block)
    return np.full(1000, n, dtype=np.int64)


def register() -> None:
    """Register every stage of this module in the global registry."""
    from pipelite import stage

    stage(outputs="big")(big_array)
    stage(outputs="slow_value")(slow_counted)
    stage(outputs="interrupted_value")(interruptible)


def value_hash(value) -> str:
    """xxh3-128 of an array's bytes (how children report what they got)."""
    return xxhash.xxh3_128_hexdigest(np.ascontiguousarray(value).view(np.uint8).data)


def main(argv: list[str]) -> int:
    wait_go = "--wait-go" in argv
    store, name, params = [a for a in argv if a != "--wait-go"]
    from pipelite import Pipeline

    register()
    pipeline = Pipeline(store, params={name: json.loads(params)})
    if wait_go:
        print("ready", flush=True)
        if sys.stdin.readline().strip() != "go":
            return 2
    t0 = time.perf_counter()
    result = pipeline.run(name)
    elapsed = time.perf_counter() - t0
    (value,) = result.values()
    print(f"result {value_hash(value)} {name in result.executed} {elapsed:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    # import ourselves by module name so that the stages' module is "fault_stages", as in the
    # test process, not "__main__"
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import fault_stages

    sys.exit(fault_stages.main(sys.argv[1:]))
