"""Observed dependencies: the cost of the audit hook while a stage runs, and of checking.

    python benchmarks/bench_observe.py            # ~1 min
    python benchmarks/bench_observe.py --rounds 7 --dir /data/scratch

(a) A stage that opens and reads 10,000 small files, run with observation on and off
    (PIPELITE_OBSERVE=0: the audit hook is never installed). Each side runs in its own fresh
    process (a hook cannot be removed once installed), alternating, ``--rounds`` times:
    * recording only: the stage's own run time (its record's ``duration``: the window in
      which the hook records), on vs off;
    * full: ``run(force=True)`` wall time, which adds hashing the 10,000 files at the end and
      writing them into the record: cold (the first run in a process, empty hash cache; the
      files are in the OS page cache either way) and warm (later runs: stat only);
    * the same plain loop outside any stage with the hook installed but idle, vs no hook.
(a') The same loop in one process, no fresh processes: first with no hook, then with the hook
    installed and idle, then recording (a recorder active), interleaved rep by rep for the last
    two. Steadier than (a) on a noisy VM, where separate processes swing by +-30 %.
(b) ``status()`` of 1,000 stages that each observed 10 files (the size/mtime fast path; files
    last modified a minute before the run), vs 1,000 stages that observed nothing.

Times are medians; ratios are observed / baseline. The exit status is 1 if a target is missed.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)  # measure this checkout, in this process and in the children
NFILES = 10_000
STAGES = 1000
PER_STAGE = 10


def make_files(folder: str, n: int) -> None:
    os.makedirs(folder, exist_ok=True)
    past = time.time_ns() - 60_000_000_000  # not "racy": written a minute before any run
    for i in range(n):
        path = os.path.join(folder, f"{i:05d}.txt")
        with open(path, "wb") as f:
            f.write(b"%05d," % i + b"x" * 94)
        os.utime(path, ns=(past, past))


def plain_loop(n: int) -> int:
    total = 0
    for i in range(n):
        with open(f"files/{i:05d}.txt", "rb") as f:
            total += len(f.read())
    return total


# -- (a) in a child process ---------------------------------------------------------------------
def child(root: str, mode: str, reps: int) -> None:
    os.environ["PIPELITE_OBSERVE"] = "1" if mode == "on" else "0"
    os.chdir(root)
    from pipelite import Pipeline, stage

    store = os.path.join(root, f"store-{mode}-{os.getpid()}")

    @stage(outputs="warmup")
    def warmup():
        return 1

    @stage(outputs="total")
    def read_all(*, n: int = NFILES):
        total = 0
        for i in range(n):
            with open(f"files/{i:05d}.txt", "rb") as f:
                total += len(f.read())
        return total

    pipe = Pipeline(store=store)
    pipe.run("warmup")
    t0 = time.perf_counter()
    res = pipe.run("read_all", force=True)
    cold = time.perf_counter() - t0
    cold_duration = res.records["read_all"].duration
    observed = len((res.records["read_all"].observed or {}).get("files", []))
    walls, durations = [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        res = pipe.run("read_all", force=True)
        walls.append(time.perf_counter() - t0)
        durations.append(res.records["read_all"].duration)
    loops = []
    for _ in range(reps):  # the hook is installed (when on) but no stage runs
        t0 = time.perf_counter()
        plain_loop(NFILES)
        loops.append(time.perf_counter() - t0)
    from pipelite import _observe

    print(json.dumps({"cold": cold, "cold_duration": cold_duration,
                      "warm": statistics.median(walls), "duration": statistics.median(durations),
                      "loop": statistics.median(loops), "observed": observed,
                      "hook": _observe.hook_installed()}))


def bench_hook(root: str, rounds: int, reps: int) -> list[tuple]:
    results: dict[str, list[dict]] = {"off": [], "on": []}
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for _ in range(rounds):
        for mode in ("off", "on"):  # alternate, so both sides see the same disk and load
            out = subprocess.run([sys.executable, __file__, "--child", mode, "--dir", root,
                                  "--reps", str(reps)], env=env, check=True,
                                 capture_output=True, text=True).stdout
            results[mode].append(json.loads(out.strip().splitlines()[-1]))
    on, off = results["on"], results["off"]
    assert all(r["observed"] == NFILES and r["hook"] for r in on), on[0]
    assert all(r["observed"] == 0 and not r["hook"] for r in off), off[0]

    def med(rows, key):
        return statistics.median(r[key] for r in rows)

    n = f"{NFILES:,} files"
    return [
        (f"stage reading {n}: recording only (stage run time)", med(on, "duration"),
         "observation off (no hook)", med(off, "duration"), "<= 1.05x"),
        (f"stage reading {n}: recording only, first run in a process", med(on, "cold_duration"),
         "observation off (no hook)", med(off, "cold_duration"), "<= 1.05x"),
        (f"run(force=True) reading {n}: full, cold hash cache", med(on, "cold"),
         "observation off (no hook)", med(off, "cold"), "(info)"),
        (f"run(force=True) reading {n}: full, warm hash cache", med(on, "warm"),
         "observation off (no hook)", med(off, "warm"), "(info)"),
        (f"plain loop reading {n}, no stage running: hook installed, idle", med(on, "loop"),
         "no hook", med(off, "loop"), "(info)"),
    ]


# -- (b) status of 1,000 stages -----------------------------------------------------------------
def write_stages_module(folder: str, name: str) -> str:
    lines = ["from pipelite import stage", ""]
    for s in range(STAGES):
        lines += [f"@stage('s{s:04d}', outputs='o{s:04d}')",
                  f"def s{s:04d}():",
                  "    n = 0",
                  f"    for j in range({PER_STAGE}):",
                  f"        with open(f'files/{{{s * PER_STAGE} + j:05d}}.txt', 'rb') as f:",
                  "            n += len(f.read())",
                  "    return n", ""]
    with open(os.path.join(folder, f"{name}.py"), "w") as f:
        f.write("\n".join(lines))
    return name


def bench_status(root: str, reps: int) -> list[tuple]:
    from pipelite import REGISTRY, Pipeline

    os.chdir(root)
    src = os.path.join(root, "src")
    os.makedirs(src, exist_ok=True)
    sys.path.insert(0, src)
    try:
        importlib.import_module(write_stages_module(src, "pipelite_bench_observe"))
    finally:
        sys.path.remove(src)
    times = {}
    for mode in ("off", "on"):
        os.environ["PIPELITE_OBSERVE"] = "1" if mode == "on" else "0"
        store = os.path.join(root, f"status-{mode}")
        pipe = Pipeline(store=store)
        pipe.run()
        rec = pipe.record("s0001")
        assert len((rec.observed or {}).get("files", [])) == (PER_STAGE if mode == "on"
                                                                     else 0)

        def check(pipe: Pipeline = pipe) -> None:
            states = pipe.status()
            assert len(states) == STAGES and all(s.state == "fresh" for s in states), \
                [s.reasons for s in states if s.state != "fresh"][:3]

        check()
        t = []
        for _ in range(reps):
            t0 = time.perf_counter()
            check()
            t.append(time.perf_counter() - t0)
        times[mode] = statistics.median(t)
        t = []
        for _ in range(reps):
            t0 = time.perf_counter()
            Pipeline(store=store).status()
            t.append(time.perf_counter() - t0)
        times[mode + "-new"] = statistics.median(t)
    os.environ.pop("PIPELITE_OBSERVE", None)
    REGISTRY.clear()
    paths = [os.path.join(root, "files", f"{i:05d}.txt") for i in range(STAGES * PER_STAGE)]
    t = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for p in paths:
            os.stat(p)
        t.append(time.perf_counter() - t0)
    times["stat"] = statistics.median(t)
    name = f"status() of {STAGES:,} stages x {PER_STAGE} observed files"
    return [
        (name, times["on"], f"{STAGES:,} stages that observed nothing", times["off"],
         "< 100 ms"),
        (name + ", new Pipeline", times["on-new"], f"{STAGES:,} stages that observed nothing, "
         "new Pipeline", times["off-new"], "< 100 ms"),
        (f"os.stat of the {STAGES * PER_STAGE:,} files alone (the fast path's floor)",
         times["stat"], f"{STAGES:,} stages that observed nothing", times["off"], "(info)"),
    ]


def fmt(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms" if seconds >= 1e-3 else f"{seconds * 1e6:.0f} µs"


def bench_hook_in_process(root: str, reps: int) -> list[tuple]:
    """(a'): the hook's own cost per opened file, measured in this one process."""
    from pipelite import _observe

    os.chdir(root)

    def timed() -> float:
        t0 = time.perf_counter()
        plain_loop(NFILES)
        return time.perf_counter() - t0

    plain_loop(NFILES)
    none = statistics.median(timed() for _ in range(reps * 3))
    _observe._install()
    idle, recording = [], []
    for _ in range(reps * 3):
        idle.append(timed())
        rec = _observe.start([])
        recording.append(timed())
        rec.stop()
    return [
        ("one process: 10,000 file reads, hook installed, idle", statistics.median(idle),
         "no hook (same process, before)", none, "(info)"),
        ("one process: 10,000 file reads while a stage records", statistics.median(recording),
         "no hook (same process, before)", none, "<= 1.05x"),
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default=None, help="scratch directory")
    ap.add_argument("--rounds", type=int, default=5, help="processes per side for (a)")
    ap.add_argument("--reps", type=int, default=5, help="repetitions within a process")
    ap.add_argument("--child", choices=("on", "off"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args.dir, args.child, args.reps)
        return 0
    root = tempfile.mkdtemp(prefix="pipelite-bench-observe-", dir=args.dir)
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus, scratch {root}\n")
    try:
        make_files(os.path.join(root, "files"), NFILES)
        rows = bench_hook(root, args.rounds, args.reps)
        rows += bench_status(root, args.reps)
        rows += bench_hook_in_process(root, args.reps)  # last: it installs the hook here
    finally:
        os.chdir(REPO)
        shutil.rmtree(root, ignore_errors=True)
    print("| benchmark | observed | baseline | baseline time | ratio | target | met |")
    print("|---|---:|---|---:|---:|---|:-:|")
    missed = False
    for name, value, base_name, base, target in rows:
        ratio = value / base
        if target.startswith("<="):
            met = ratio <= float(target[2:].strip().rstrip("x"))
        elif target.startswith("<"):
            met = value < float(target[1:].split()[0]) / 1e3
        else:
            met = None
        missed |= met is False
        mark = "-" if met is None else ("yes" if met else "**no**")
        print(f"| {name} | {fmt(value)} | {base_name} | {fmt(base)} | {ratio:.2f}x | "
              f"{target} | {mark} |")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
