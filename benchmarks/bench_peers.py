"""PipeLite next to its peers (joblib.Memory, marimo's persistent cache, Hamilton's cache) and the
raw floor, on the same workloads, in one run.

    python benchmarks/bench_peers.py [--size-mib 1024] [--rows 10000000] [--reps 3]
                                     [--only W1,W3] [--dir DIR] [--out results.json]
    python benchmarks/bench_peers.py --from-json results.json    # reprint its tables

Workloads (issue 13):

- W1  persist a ``--size-mib`` float64 array, durably (``os.sync()`` before each timed write;
      peers that do not fsync are timed with an fsync of every file they wrote, like for like)
- W2  that array's cache hit after a restart (a fresh process)
- W3  a tiny stage's cache hit, per call (median of many calls in a fresh process)
- W4  a ``--rows`` x 10 pandas frame (9 float64 columns, 1 string column): persist (durable),
      and its hit after a restart
- W5  a 200-stage chain after a restart: the status check (or the peer's equivalent), and the
      cached re-run of every stage
- W6  a hit of a stage whose input is a ``--size-mib`` array: peers take it as an argument and
      hash it; PipeLite receives it as an upstream stage's artifact

Every measurement runs in its own subprocess (so "after restart" is real and no cache leaks
between tools), tools interleaved rep by rep (the order rotates each rep); each figure is the
best and the median of ``--reps`` processes. Times exclude imports, and exclude the stage's
own compute time on a miss (PipeLite: from its record; peers: timed inside the function).
The page cache is left alone: "after restart" means a new process, not a reboot.

Needs the peers: ``pip install -e '.[bench]'`` (joblib, marimo, sf-hamilton). A missing peer is
reported as n/a, with how to install it.
"""
from __future__ import annotations

import argparse
import gc
import importlib
import importlib.metadata
import json
import os
import pickle
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

MIB = 1 << 20
CHAIN = 200
TINY_CALLS = 300
INSTALL_HINT = "pip install -e '.[bench]'  (or: pip install joblib marimo sf-hamilton)"

# what each row measures, in table order
METRICS: list[tuple[str, str, str]] = [
    # (key, workload, label)
    ("W1", "W1", "persist a {size} array (durable)"),
    ("W2", "W2", "{size} array hit after restart"),
    ("W3", "W3", "tiny stage hit, per call"),
    ("W4p", "W4", "persist a {rows} x 10 frame (durable)"),
    ("W4h", "W4", "{rows} x 10 frame hit after restart"),
    ("W5s", "W5", f"{CHAIN}-stage chain: status after restart"),
    ("W5r", "W5", f"{CHAIN}-stage chain: cached re-run after restart"),
    ("W6", "W6", "hit of a stage whose input is a {size} array"),
]
WORKLOADS = ["W1", "W2", "W3", "W4", "W5", "W6"]
TOOLS = ["pipelite", "joblib", "joblib-mmap", "marimo", "hamilton", "hamilton-dag", "floor"]
PEERS = ["joblib", "joblib-mmap", "marimo", "hamilton", "hamilton-dag"]
PEER_MODULE = {"joblib": "joblib", "joblib-mmap": "joblib", "marimo": "marimo",
               "hamilton": "hamilton", "hamilton-dag": "hamilton"}

SAME_AS_JOBLIB = "mmap_mode changes only how stored arrays load: same as joblib"
# (metric, tool) -> why the tool has no figure there
NOT_APPLICABLE: dict[tuple[str, str], str] = {
    ("W3", "joblib-mmap"): SAME_AS_JOBLIB,
    ("W5s", "joblib-mmap"): SAME_AS_JOBLIB,
    ("W5r", "joblib-mmap"): SAME_AS_JOBLIB,
    ("W6", "joblib-mmap"): SAME_AS_JOBLIB,
    ("W5s", "marimo"): "no way to ask whether a call is cached without making the call",
    ("W5s", "hamilton"): "its cache is consulted only by execute(): no status query",
}
# hamilton-dag is Hamilton with the big array made by an upstream node (as PipeLite does):
# it only exists for W6
for _m in ("W1", "W2", "W3", "W4p", "W4h", "W5s", "W5r"):
    NOT_APPLICABLE[(_m, "hamilton-dag")] = "W6 only (Hamilton with the array as an upstream node)"
FLOOR_NAME = {
    "W1": "np.save + fsync", "W2": "np.load(mmap_mode='r')", "W3": "open + pickle.load",
    "W4p": "pickle-5 + fsync", "W4h": "pickle load", "W5s": f"os.stat x{CHAIN}",
    "W5r": f"pickle.load x{CHAIN}", "W6": "open + pickle.load of the result",
}
TOOL_NAME = {
    "pipelite": "PipeLite", "joblib": "joblib.Memory", "joblib-mmap": "joblib.Memory mmap_mode='r'",
    "marimo": "marimo persistent_cache", "hamilton": "Hamilton cache",
    "hamilton-dag": "Hamilton cache, array from an upstream node", "floor": "floor",
}


# == the child side: one measurement per process ==============================================
COMPUTE: dict[str, float] = {}  # how long the last computation of each function took


def quiet_disk() -> None:
    """Start a timed write from a quiet disk: no write-back of earlier files competing."""
    gc.collect()
    os.sync()


def fsync_tree(root: str) -> None:
    """fsync every file and directory under ``root`` (what a durable store would have done)."""
    for folder, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def build_frame(seed: int, rows: int):
    """The W4 frame: 9 float64 columns and one string column."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    data: dict[str, Any] = {f"f{i}": rng.random(rows) for i in range(9)}
    data["s"] = pd.Series(np.arange(rows) % 1000).astype(str).radd("item-")
    return pd.DataFrame(data)


# Peers' functions go through these, which note how long the computation took (so a miss can
# be timed without it, and a hit can be checked to have computed nothing). PipeLite's stages
# must not: they would read COMPUTE, a global that changes, and PipeLite would (rightly) see
# a changed dependency. Its record says how long a stage ran.
def make_array(seed: int, nbytes: int) -> np.ndarray:
    t0 = time.perf_counter()
    value = np.full(nbytes // 8, float(seed))
    COMPUTE["array"] = time.perf_counter() - t0
    return value


def make_frame(seed: int, rows: int):
    t0 = time.perf_counter()
    frame = build_frame(seed, rows)
    COMPUTE["frame"] = time.perf_counter() - t0
    return frame


def first_of(big) -> float:
    COMPUTE["consume"] = 0.0
    return float(big[0])


def tiny_value(x: int) -> int:
    COMPUTE["tiny"] = 0.0
    return 42


# -- PipeLite's stages (a function's keyword-only parameters are parameters) --
def pl_array(*, seed: int, nbytes: int):
    return np.full(nbytes // 8, float(seed))


def pl_frame(*, seed: int, rows: int):
    return build_frame(seed, rows)


def pl_tiny():
    return {"tiny_value": 42}


def pl_source(*, seed: int, nbytes: int):
    return np.full(nbytes // 8, float(seed))


def pl_consume(big_input):
    return float(big_input[0])


# -- joblib's functions --
def jl_array(seed, nbytes):
    return make_array(seed, nbytes)


def jl_frame(seed, rows):
    return make_frame(seed, rows)


def jl_tiny(x):
    return tiny_value(x)


def jl_consume(big):
    return first_of(big)


# -- Hamilton's nodes (a node per function, named by the function; typed) --
def harray(seed: int, nbytes: int) -> np.ndarray:
    return make_array(seed, nbytes)


def hframe(seed: int, rows: int) -> Any:
    return make_frame(seed, rows)


def htiny(x: int) -> int:
    return tiny_value(x)


def hconsume(big_input: np.ndarray) -> float:
    return first_of(big_input)


def hsource(seed: int, nbytes: int) -> np.ndarray:
    return make_array(seed, nbytes)


def hconsume_dag(hsource: np.ndarray) -> float:
    return first_of(hsource)


def hamilton_driver(cache: str, *functions: Callable) -> Any:
    from hamilton import ad_hoc_utils, driver

    module = ad_hoc_utils.create_temporary_module(*functions, module_name="bench_peers_nodes")
    return driver.Builder().with_modules(module).with_cache(path=cache).build()


# -- marimo: persistent_cache must decorate inside a function (as in a notebook cell) --
def marimo_functions(cache: str) -> dict[str, Callable]:
    import marimo as mo

    @mo.persistent_cache(save_path=cache)
    def mo_array(seed, nbytes):
        return make_array(seed, nbytes)

    @mo.persistent_cache(save_path=cache)
    def mo_frame(seed, rows):
        return make_frame(seed, rows)

    @mo.persistent_cache(save_path=cache)
    def mo_tiny(x):
        return tiny_value(x)

    @mo.persistent_cache(save_path=cache)
    def mo_consume(big):
        return first_of(big)

    return {"array": mo_array, "frame": mo_frame, "tiny": mo_tiny, "consume": mo_consume}


def quiet_marimo() -> None:
    """Outside a notebook marimo warns that there is no app; that is expected here."""
    import logging

    logging.getLogger("marimo").setLevel(logging.ERROR)


# -- the chain, one generated module per tool --
def write_chain_modules(folder: str) -> None:
    pl = ["from pipelite import stage", "", "", "@stage", "def link_0():",
          "    return {'a_0': 0}", ""]
    jl = ["def link_0():", "    return 0", ""]
    ha = ["def a_0() -> int:", "    return 0", ""]
    mo = ["import marimo as mo", "", "", "def make(cache):", "    links = []", "",
          "    @mo.persistent_cache(save_path=cache)", "    def link_0():", "        return 0",
          "", "    links.append(link_0)"]
    for i in range(1, CHAIN):
        pl += ["", "@stage", f"def link_{i}(a_{i - 1}):", f"    return {{'a_{i}': a_{i - 1} + 1}}",
               ""]
        jl += ["", f"def link_{i}(a):", "    return a + 1", ""]
        ha += ["", f"def a_{i}(a_{i - 1}: int) -> int:", f"    return a_{i - 1} + 1", ""]
        mo += ["", "    @mo.persistent_cache(save_path=cache)", f"    def link_{i}(a):",
               "        return a + 1", "", f"    links.append(link_{i})"]
    mo += ["    return links", ""]
    for name, lines in [("chain_pipelite", pl), ("chain_joblib", jl), ("chain_hamilton", ha),
                        ("chain_marimo", mo)]:
        with open(os.path.join(folder, name + ".py"), "w") as f:
            f.write("\n".join(lines) + "\n")


def pipelite_with(*fns: Callable, outputs: dict[str, str] | None = None) -> None:
    from pipelite import REGISTRY, stage

    REGISTRY.clear()
    for fn in fns:
        out = (outputs or {}).get(fn.__name__)
        if out:
            stage(outputs=out)(fn)
        else:
            stage(fn)


# -- the measurements --
def m_persist(tool: str, d: str, what: str, cfg: dict) -> dict:
    """W1 / W4 persist: the cache miss minus the computation, made durable."""
    seed = cfg["seed"]
    arg = cfg["nbytes"] if what == "array" else cfg["rows"]
    argname = "nbytes" if what == "array" else "rows"
    if tool == "floor":
        value = make_array(seed, arg) if what == "array" else make_frame(seed, arg)
        os.makedirs(d, exist_ok=True)
        path = os.path.join(d, "value.npy" if what == "array" else "value.pkl")
        quiet_disk()
        t0 = time.perf_counter()
        with open(path, "wb") as f:
            if what == "array":
                np.save(f, value)
            else:
                pickle.dump(value, f, protocol=5)
            f.flush()
            os.fsync(f.fileno())
        fsync_tree(d)
        return {"seconds": time.perf_counter() - t0}
    if tool == "pipelite":
        from pipelite import Pipeline

        fn = pl_array if what == "array" else pl_frame
        pipelite_with(fn, outputs={fn.__name__: what})
        pipeline = Pipeline(store=d, params={fn.__name__: {"seed": seed, argname: arg}})
        quiet_disk()
        t0 = time.perf_counter()
        result = pipeline.run(fn.__name__)
        elapsed = time.perf_counter() - t0
        assert result.executed == [fn.__name__]
        return {"seconds": elapsed - pipeline.record(fn.__name__).duration}
    if tool in ("joblib", "joblib-mmap"):
        import joblib

        memory = joblib.Memory(d, mmap_mode="r" if tool == "joblib-mmap" else None, verbose=0)
        call = memory.cache(jl_array if what == "array" else jl_frame)
        quiet_disk()
        t0 = time.perf_counter()
        call(seed, arg)
    elif tool == "marimo":
        quiet_marimo()
        call = marimo_functions(d)[what]
        quiet_disk()
        t0 = time.perf_counter()
        call(seed, arg)
    elif tool == "hamilton":
        fn = harray if what == "array" else hframe
        dr = hamilton_driver(d, fn)
        quiet_disk()
        t0 = time.perf_counter()
        dr.execute([fn.__name__], inputs={"seed": seed, argname: arg})
    else:
        raise ValueError(tool)
    t1 = time.perf_counter()
    fsync_tree(d)
    t2 = time.perf_counter()
    compute = COMPUTE.pop(what)
    return {"seconds": t2 - t0 - compute, "not_durable": t1 - t0 - compute}


def m_hit(tool: str, d: str, what: str, cfg: dict) -> dict:
    """W2 / W4 hit in a fresh process: everything from "the library is imported" to the value."""
    seed = cfg["seed"]
    arg = cfg["nbytes"] if what == "array" else cfg["rows"]
    argname = "nbytes" if what == "array" else "rows"
    if tool == "floor":
        t0 = time.perf_counter()
        if what == "array":
            value = np.load(os.path.join(d, "value.npy"), mmap_mode="r")
        else:
            with open(os.path.join(d, "value.pkl"), "rb") as f:
                value = pickle.load(f)
        return {"seconds": time.perf_counter() - t0, "type": type(value).__name__}
    if tool == "pipelite":
        from pipelite import Pipeline

        fn = pl_array if what == "array" else pl_frame
        pipelite_with(fn, outputs={fn.__name__: what})
        t0 = time.perf_counter()
        result = Pipeline(store=d, params={fn.__name__: {"seed": seed, argname: arg}}).run(
            fn.__name__)
        elapsed = time.perf_counter() - t0
        assert not result.executed, "PipeLite recomputed on a hit"
        return {"seconds": elapsed, "type": type(result[what]).__name__}
    t0 = time.perf_counter()
    if tool in ("joblib", "joblib-mmap"):
        import joblib

        memory = joblib.Memory(d, mmap_mode="r" if tool == "joblib-mmap" else None, verbose=0)
        value = memory.cache(jl_array if what == "array" else jl_frame)(seed, arg)
    elif tool == "marimo":
        quiet_marimo()
        value = marimo_functions(d)[what](seed, arg)
    elif tool == "hamilton":
        fn = harray if what == "array" else hframe
        value = hamilton_driver(d, fn).execute([fn.__name__],
                                               inputs={"seed": seed, argname: arg})[fn.__name__]
    else:
        raise ValueError(tool)
    elapsed = time.perf_counter() - t0
    assert what not in COMPUTE, f"{tool} recomputed on a hit"
    return {"seconds": elapsed, "type": type(value).__name__}


def m_tiny(tool: str, d: str, phase: str) -> dict:
    """W3: fill the cache (setup), or time calls in a fresh process: the first call (the
    restart's cold hit) and the median of TINY_CALLS warm ones."""
    if tool == "floor":
        path = os.path.join(d, "tiny.pkl")
        if phase == "setup":
            os.makedirs(d, exist_ok=True)
            with open(path, "wb") as f:
                pickle.dump(42, f, protocol=5)
            return {}

        def call() -> object:
            with open(path, "rb") as f:
                return pickle.load(f)
    elif tool == "pipelite":
        from pipelite import Pipeline

        pipelite_with(pl_tiny)
        pipeline = Pipeline(store=d)

        def call() -> object:
            return pipeline.run("pl_tiny")
    elif tool == "joblib":
        import joblib

        cached = joblib.Memory(d, verbose=0).cache(jl_tiny)

        def call() -> object:
            return cached(1)
    elif tool == "marimo":
        quiet_marimo()
        cached = marimo_functions(d)["tiny"]

        def call() -> object:
            return cached(1)
    elif tool == "hamilton":
        dr = hamilton_driver(d, htiny)

        def call() -> object:
            return dr.execute(["htiny"], inputs={"x": 1})
    else:
        raise ValueError(tool)
    if phase == "setup":
        call()
        return {}
    COMPUTE.clear()
    t0 = time.perf_counter()
    call()
    first = time.perf_counter() - t0
    gc.collect()
    times = []
    for _ in range(TINY_CALLS):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    assert not COMPUTE, f"{tool} recomputed on a hit"
    return {"seconds": statistics.median(times), "first_call": first}


def m_chain(tool: str, d: str, phase: str, src: str) -> dict:
    """W5: run the chain (setup); or, in a fresh process, its status (or the peer's
    equivalent) or its cached re-run."""
    sys.path.insert(0, src)
    if tool == "floor":
        paths = [os.path.join(d, f"a_{i}.pkl") for i in range(CHAIN)]
        if phase == "setup":
            os.makedirs(d, exist_ok=True)
            for i, path in enumerate(paths):
                with open(path, "wb") as f:
                    pickle.dump(i, f, protocol=5)
            return {}
        t0 = time.perf_counter()
        if phase == "status":
            for path in paths:
                os.stat(path)
        else:
            for path in paths:
                with open(path, "rb") as f:
                    pickle.load(f)
        return {"seconds": time.perf_counter() - t0}
    if tool == "pipelite":
        from pipelite import REGISTRY, Pipeline

        REGISTRY.clear()
        importlib.import_module("chain_pipelite")
        t0 = time.perf_counter()
        pipeline = Pipeline(store=d)
        if phase == "status":
            states = pipeline.status()
            elapsed = time.perf_counter() - t0
            assert len(states) == CHAIN and all(s.state == "fresh" for s in states)
        else:
            result = pipeline.run()
            elapsed = time.perf_counter() - t0
            if phase == "setup":
                return {}
            assert not result.executed, "PipeLite recomputed on a re-run"
        return {"seconds": elapsed}
    if tool == "joblib":
        import joblib

        module = importlib.import_module("chain_joblib")
        fns = [getattr(module, f"link_{i}") for i in range(CHAIN)]
        t0 = time.perf_counter()
        memory = joblib.Memory(d, verbose=0)
        links = [memory.cache(fn) for fn in fns]
        if phase == "status":
            # generous to joblib: it is told every link's argument instead of loading it
            ok = links[0].check_call_in_cache() and all(
                links[i].check_call_in_cache(i - 1) for i in range(1, CHAIN))
            elapsed = time.perf_counter() - t0
            assert ok
            return {"seconds": elapsed}
        a = links[0]()
        for link in links[1:]:
            a = link(a)
        elapsed = time.perf_counter() - t0
        assert a == CHAIN - 1
        return {"seconds": elapsed}
    if tool == "marimo":
        quiet_marimo()
        module = importlib.import_module("chain_marimo")
        t0 = time.perf_counter()
        links = module.make(d)
        a = links[0]()
        for link in links[1:]:
            a = link(a)
        elapsed = time.perf_counter() - t0
        assert a == CHAIN - 1
        hits = sum(link.hits for link in links)
        if phase != "setup":
            assert hits == CHAIN, f"marimo: {hits} hits of {CHAIN}"
        return {"seconds": elapsed}
    if tool == "hamilton":
        from hamilton import driver

        module = importlib.import_module("chain_hamilton")
        t0 = time.perf_counter()
        dr = driver.Builder().with_modules(module).with_cache(path=d).build()
        value = dr.execute([f"a_{CHAIN - 1}"])[f"a_{CHAIN - 1}"]
        elapsed = time.perf_counter() - t0
        assert value == CHAIN - 1
        return {"seconds": elapsed}
    raise ValueError(tool)


def m_big_input(tool: str, d: str, phase: str, cfg: dict) -> dict:
    """W6: a hit of a stage whose input is a big array. PipeLite gets it from an upstream
    stage's artifact (what a hit checks is that stage's record); peers get it as an argument,
    already in memory before the clock starts, and hash it."""
    seed, nbytes = cfg["seed"], cfg["nbytes"]
    if tool == "pipelite":
        from pipelite import Pipeline

        pipelite_with(pl_source, pl_consume,
                      outputs={"pl_source": "big_input", "pl_consume": "first"})
        params = {"pl_source": {"seed": seed, "nbytes": nbytes}}
        t0 = time.perf_counter()
        result = Pipeline(store=d, params=params).run("pl_consume")
        elapsed = time.perf_counter() - t0
        if phase != "setup":
            assert not result.executed, "PipeLite recomputed on a hit"
        return {"seconds": elapsed}
    if tool == "hamilton-dag":
        dr = hamilton_driver(d, hsource, hconsume_dag)
        t0 = time.perf_counter()
        dr.execute(["hconsume_dag"], inputs={"seed": seed, "nbytes": nbytes})
        elapsed = time.perf_counter() - t0
        if phase != "setup":
            assert not COMPUTE, "Hamilton recomputed on a hit"
        return {"seconds": elapsed}
    if tool == "floor":
        path = os.path.join(d, "result.pkl")
        if phase == "setup":
            os.makedirs(d, exist_ok=True)
            with open(path, "wb") as f:
                pickle.dump(float(seed), f, protocol=5)
            return {}
        t0 = time.perf_counter()
        with open(path, "rb") as f:
            pickle.load(f)
        return {"seconds": time.perf_counter() - t0}
    big = np.full(nbytes // 8, float(seed))
    t0 = time.perf_counter()
    if tool == "joblib":
        import joblib

        joblib.Memory(d, verbose=0).cache(jl_consume)(big)
    elif tool == "marimo":
        quiet_marimo()
        marimo_functions(d)["consume"](big)
    elif tool == "hamilton":
        hamilton_driver(d, hconsume).execute(["hconsume"], inputs={"big_input": big})
    else:
        raise ValueError(tool)
    elapsed = time.perf_counter() - t0
    if phase != "setup":
        assert not COMPUTE, f"{tool} recomputed on a hit"
    return {"seconds": elapsed}


def preload(tool: str, kind: str) -> None:
    """Import before any clock starts: times exclude imports (the tools' own lazy imports
    during a call are theirs to pay)."""
    if kind == "frame":
        import pandas  # noqa: F401
        import pyarrow  # noqa: F401
    if tool == "pipelite":
        import pipelite  # noqa: F401
    elif tool in ("joblib", "joblib-mmap"):
        import joblib  # noqa: F401
    elif tool == "marimo":
        import marimo  # noqa: F401
    elif tool in ("hamilton", "hamilton-dag"):
        from hamilton import ad_hoc_utils, driver  # noqa: F401


def child_main(spec_json: str) -> int:
    spec = json.loads(spec_json)
    tool, d, phase, kind, cfg = spec["tool"], spec["dir"], spec["phase"], spec["kind"], spec["cfg"]
    preload(tool, kind)
    if kind in ("array", "frame"):
        out = (m_persist if phase == "persist" else m_hit)(tool, d, kind, cfg)
    elif kind == "tiny":
        out = m_tiny(tool, d, phase)
    elif kind == "chain":
        out = m_chain(tool, d, phase, spec["src"])
    elif kind == "big_input":
        out = m_big_input(tool, d, phase, cfg)
    else:
        raise ValueError(kind)
    print("RESULT " + json.dumps(out), flush=True)
    return 0


# == the parent side: orchestration and the report =============================================
@dataclass
class Cell:
    times: list[float] = field(default_factory=list)
    na: str | None = None
    extras: list[dict] = field(default_factory=list)

    @property
    def best(self) -> float | None:
        return min(self.times) if self.times else None

    @property
    def median(self) -> float | None:
        return statistics.median(self.times) if self.times else None


class Runner:
    def __init__(self, root: str, cfg: dict, timeout: float, verbose: bool) -> None:
        self.root, self.cfg, self.timeout, self.verbose = root, cfg, timeout, verbose
        self.src = os.path.join(root, "src")
        os.makedirs(self.src)
        write_chain_modules(self.src)
        here = os.path.dirname(os.path.abspath(__file__))
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = os.pathsep.join(
            [here, self.src] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))
        # no usage telemetry sent from inside a timed call
        self.env["HAMILTON_TELEMETRY_ENABLED"] = "false"

    def child(self, tool: str, d: str, kind: str, phase: str) -> dict:
        spec = json.dumps({"tool": tool, "dir": d, "kind": kind, "phase": phase,
                           "cfg": self.cfg, "src": self.src})
        code = "import sys, bench_peers; sys.exit(bench_peers.child_main(sys.argv[1]))"
        proc = subprocess.run([sys.executable, "-c", code, spec], env=self.env,
                              capture_output=True, text=True, timeout=self.timeout)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode or not lines:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-6:]
            raise RuntimeError(f"{tool} {kind} {phase} failed:\n  " + "\n  ".join(tail))
        out = json.loads(lines[-1][len("RESULT "):])
        if self.verbose and "seconds" in out:
            print(f"    {kind:9} {phase:7} {tool:12} {fmt_time(out['seconds'])}", flush=True)
        return out


def fmt_time(s: float | None) -> str:
    if s is None:
        return "-"
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.1f} ms"
    return f"{s * 1e6:.0f} µs"


def peer_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for dist in ("pipelite", "numpy", "pandas", "pyarrow", "joblib", "marimo", "sf-hamilton",
                 "apache-hamilton"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    return out


def available(tool: str) -> bool:
    module = PEER_MODULE.get(tool)
    if module is None:
        return True
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def run_all(runner: Runner, workloads: list[str], reps: int) -> dict[str, dict[str, Cell]]:
    cells = {key: {tool: Cell() for tool in TOOLS} for key, w, _ in METRICS if w in workloads}
    missing = [t for t in TOOLS if not available(t)]
    for key, row in cells.items():
        for tool, cell in row.items():
            if tool in missing:
                cell.na = f"not installed ({INSTALL_HINT})"
            elif (key, tool) in NOT_APPLICABLE:
                cell.na = NOT_APPLICABLE[(key, tool)]
    if missing:
        print(f"peers missing: {', '.join(missing)}; install them with: {INSTALL_HINT}",
              flush=True)

    def wants(key: str, tool: str) -> bool:
        return key in cells and cells[key][tool].na is None

    def record(key: str, tool: str, out: dict) -> None:
        cells[key][tool].times.append(out["seconds"])
        cells[key][tool].extras.append({k: v for k, v in out.items() if k != "seconds"})

    for rep in range(reps):
        print(f"rep {rep + 1}/{reps}", flush=True)
        order = TOOLS[rep % len(TOOLS):] + TOOLS[:rep % len(TOOLS)]  # who goes first rotates
        for w in workloads:
            if w == "W2" and "W1" in workloads:
                continue  # W1 and W2 share their processes (W2 hits what W1 persisted)
            for tool in order:
                d = os.path.join(runner.root, w, tool)
                try:
                    if w in ("W1", "W2") and (wants("W1", tool) or wants("W2", tool)):
                        out = runner.child(tool, d, "array", "persist")
                        if wants("W1", tool):
                            record("W1", tool, out)
                        if wants("W2", tool):
                            record("W2", tool, runner.child(tool, d, "array", "hit"))
                    elif w == "W3" and wants("W3", tool):
                        runner.child(tool, d, "tiny", "setup")
                        record("W3", tool, runner.child(tool, d, "tiny", "measure"))
                    elif w == "W4" and wants("W4p", tool):
                        record("W4p", tool, runner.child(tool, d, "frame", "persist"))
                        record("W4h", tool, runner.child(tool, d, "frame", "hit"))
                    elif w == "W5" and wants("W5r", tool):
                        runner.child(tool, d, "chain", "setup")
                        if wants("W5s", tool):
                            record("W5s", tool, runner.child(tool, d, "chain", "status"))
                        record("W5r", tool, runner.child(tool, d, "chain", "rerun"))
                    elif w == "W6" and wants("W6", tool):
                        runner.child(tool, d, "big_input", "setup")
                        record("W6", tool, runner.child(tool, d, "big_input", "measure"))
                except (RuntimeError, subprocess.TimeoutExpired) as exc:
                    print(f"  ! {exc}", flush=True)
                    for key, kw, _ in METRICS:
                        if kw == w and key in cells and cells[key][tool].na is None:
                            cells[key][tool].na = f"failed: {str(exc).splitlines()[-1][:120]}"
                finally:
                    shutil.rmtree(d, ignore_errors=True)
    return cells


def labels(cfg: dict) -> dict[str, str]:
    mib = cfg["nbytes"] // MIB
    size = f"{mib / 1024:g} GiB" if mib >= 1024 else f"{mib} MiB"
    rows = cfg["rows"]
    rows_s = f"{rows / 1e6:g}M" if rows >= 10**6 else f"{rows:,}"
    return {key: label.format(size=size, rows=rows_s) for key, _, label in METRICS}


def summary_table(cells: dict[str, dict[str, Cell]], cfg: dict) -> str:
    names = labels(cfg)
    out = ["| workload | PipeLite best / median | best peer (median) | PipeLite / best peer "
           "| floor (median) | PipeLite / floor |", "|---|---:|---|---:|---|---:|"]
    for key, row in cells.items():
        pl = row["pipelite"]
        peers = [(row[t].median, t) for t in PEERS if row[t].median is not None]
        best = min(peers) if peers else None
        floor = row["floor"].median
        pl_s = f"{fmt_time(pl.best)} / {fmt_time(pl.median)}" if pl.median else f"n/a ({pl.na})"
        peer_s = f"{TOOL_NAME[best[1]]} {fmt_time(best[0])}" if best else "-"
        r_peer = f"{pl.median / best[0]:.2f}x" if best and pl.median else "-"
        floor_s = f"{FLOOR_NAME[key]} {fmt_time(floor)}" if floor else "-"
        r_floor = f"{pl.median / floor:.2f}x" if floor and pl.median else "-"
        out.append(f"| {key} {names[key]} | {pl_s} | {peer_s} | {r_peer} | {floor_s} | "
                   f"{r_floor} |")
    return "\n".join(out)


def detail_table(cells: dict[str, dict[str, Cell]], cfg: dict) -> str:
    names = labels(cfg)
    out = ["| workload | tool | best | median | runs |", "|---|---|---:|---:|---|"]
    for key, row in cells.items():
        for tool in TOOLS:
            cell = row[tool]
            if tool == "hamilton-dag" and cell.median is None and key != "W6":
                continue  # a W6-only variant
            name = FLOOR_NAME[key] if tool == "floor" else TOOL_NAME[tool]
            if cell.median is None:
                out.append(f"| {key} {names[key]} | {name} | n/a | | {cell.na} |")
            else:
                runs = ", ".join(fmt_time(t) for t in cell.times)
                out.append(f"| {key} {names[key]} | {name} | {fmt_time(cell.best)} | "
                           f"{fmt_time(cell.median)} | {runs} |")
    return "\n".join(out)


def machine_info(root: str, versions: dict[str, str | None]) -> str:
    ver = ", ".join(f"{k} {v}" for k, v in versions.items() if v)
    return "\n".join([
        f"- machine: {platform.platform()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}",
        f"- versions: {ver}",
        f"- scratch dir: {root}",
    ])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=1024, help="array size (W1, W2, W6)")
    ap.add_argument("--rows", type=int, default=10_000_000, help="frame rows (W4)")
    ap.add_argument("--reps", type=int, default=3, help="fresh processes per figure (>= 3)")
    ap.add_argument("--only", default=None, help="comma-separated workloads, e.g. W1,W3")
    ap.add_argument("--dir", default=None, help="scratch directory (on the disk to measure)")
    ap.add_argument("--out", default=None, help="also write the results as JSON here")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per process")
    ap.add_argument("-q", "--quiet", action="store_true", help="no per-process lines")
    ap.add_argument("--from-json", default=None, metavar="FILE",
                    help="measure nothing: print the tables of an earlier --out file")
    args = ap.parse_args(argv)
    if args.from_json:
        with open(args.from_json) as f:
            data = json.load(f)
        cells = {key: {tool: Cell(times=c["times"], na=c["na"], extras=c["extras"])
                       for tool, c in res["tools"].items()}
                 for key, res in data["results"].items()}
        ver = ", ".join(f"{k} {v}" for k, v in data["versions"].items() if v)
        print(f"{data['args']['reps']} fresh processes per figure; {ver}\n")
        print(summary_table(cells, data["config"]))
        print()
        print(detail_table(cells, data["config"]))
        return 0
    workloads = WORKLOADS if not args.only else [w.strip().upper() for w in args.only.split(",")]
    unknown = [w for w in workloads if w not in WORKLOADS]
    if unknown:
        ap.error(f"unknown workloads {unknown}; choose from {WORKLOADS}")
    if args.reps < 3:
        print("note: fewer than 3 reps: a smoke run, not a figure to report", flush=True)
    cfg = {"nbytes": args.size_mib * MIB, "rows": args.rows, "seed": 7}
    root = tempfile.mkdtemp(prefix="pipelite-peers-", dir=args.dir)
    versions = peer_versions()
    print(machine_info(root, versions), flush=True)
    t_start = time.perf_counter()
    try:
        cells = run_all(Runner(root, cfg, args.timeout, not args.quiet), workloads, args.reps)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    wall = time.perf_counter() - t_start
    summary, detail = summary_table(cells, cfg), detail_table(cells, cfg)
    print()
    print(f"{args.reps} fresh processes per figure; ratios are of medians (below 1: PipeLite "
          f"is faster); whole run {wall:.0f} s")
    print()
    print(summary)
    print()
    print(detail)
    if args.out:
        names = labels(cfg)
        data = {
            "args": vars(args), "config": cfg, "versions": versions, "wall_seconds": wall,
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                        "python": platform.python_version()},
            "results": {key: {"label": names[key], "tools": {
                tool: {"times": c.times, "best": c.best, "median": c.median, "na": c.na,
                       "extras": c.extras, "name": FLOOR_NAME[key] if tool == "floor"
                       else TOOL_NAME[tool]}
                for tool, c in row.items()}} for key, row in cells.items()},
            "summary_table": summary, "detail_table": detail,
        }
        with open(args.out, "w") as f:
            json.dump(data, f, indent=1)
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
