"""Core benchmarks: PipeLite next to raw numpy and joblib.Memory, measured in one run.

    python benchmarks/bench_core.py [--dir DIR] [--reps N] [--quick] [--frames | --no-frames]

Prints machine info and a markdown table: each PipeLite time, its baseline on the same
workload in the same run, the ratio, and the target. Times are medians of several
repetitions (``time.perf_counter``). ``--dir`` must be on the disk you care about (default: the
system temp dir); about 3 GiB of free space and 4 GiB of RAM are needed (``--quick``: 1/8 of it).
``--frames`` runs only the frame workload (a 10M x 10 pandas frame, 9 float64 columns and a
string column: persist, and hit in a fresh process); ``--no-frames`` leaves it out.
"""
from __future__ import annotations

import argparse
import gc
import importlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from typing import Callable

import numpy as np
import xxhash
from _report import Row, fmt_time, machine, table

GIB = 1 << 30
CHAIN = 1000
BIG_CHAIN = 10_000



def median_time(fn: Callable[[], object], reps: int) -> float:
    """Median wall time of ``fn()`` over ``reps`` calls, after one untimed warm-up call."""
    fn()
    gc.collect()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)



def settle() -> None:
    """Start a timed write from a quiet disk: no write-back of earlier files competing."""
    gc.collect()
    os.sync()


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- workloads --------------------------------------------------------------------------------
COMPUTE: dict[str, float] = {}  # how long joblib's last computation took


def big_output(*, seed: int, nbytes: int):
    """A stage returning ``nbytes`` of float64 (its record says how long that took)."""
    return np.full(nbytes // 8, float(seed))


def joblib_big(seed: int, nbytes: int):
    t0 = time.perf_counter()
    value = np.full(nbytes // 8, float(seed))
    COMPUTE["joblib_big"] = time.perf_counter() - t0
    return value


def tiny() -> dict:
    return {"tiny_value": 42}


def joblib_tiny(x: int) -> int:
    return 42


def joblib_link(i: int) -> int:
    return i + 1


def write_chain_module(folder: str, n: int, name: str = "pipelite_bench_chain") -> str:
    """A module of ``n`` function stages, each consuming the previous one's output."""
    lines = ["from pipelite import stage", "", "",
             "@stage", "def link_0():", "    return {'a_0': 0}", ""]
    for i in range(1, n):
        lines += ["", "@stage", f"def link_{i}(a_{i - 1}):",
                  f"    return {{'a_{i}': a_{i - 1} + 1}}", ""]
    with open(os.path.join(folder, name + ".py"), "w") as f:
        f.write("\n".join(lines))
    return name


# -- benchmarks ---------------------------------------------------------------------------------
def bench_persist(root: str, nbytes: int, reps: int) -> list[Row]:
    """Saving a big array through run() vs np.save + fsync vs joblib.Memory's store."""
    import joblib

    from pipelite import REGISTRY, Pipeline, stage

    REGISTRY.clear()
    stage(outputs="big")(big_output)
    raw_times, pl_times, jl_times, jl_sync_times = [], [], [], []
    for rep in range(reps):
        # raw: np.save to a file, fsync it, and fsync its directory (what a durable write costs)
        arr = np.full(nbytes // 8, float(rep))
        raw_dir = os.path.join(root, "raw")
        os.makedirs(raw_dir, exist_ok=True)
        path = os.path.join(raw_dir, "a.npy")
        settle()
        t0 = time.perf_counter()
        with open(path, "wb") as f:
            np.save(f, arr)
            f.flush()
            os.fsync(f.fileno())
        fsync_dir(raw_dir)
        raw_times.append(time.perf_counter() - t0)
        del arr
        shutil.rmtree(raw_dir)

        # pipelite: run() minus the stage's own compute time
        store = os.path.join(root, "persist-store")
        pipeline = Pipeline(store=store, params={"big_output": {"seed": rep, "nbytes": nbytes}})
        settle()
        t0 = time.perf_counter()
        result = pipeline.run("big_output")
        elapsed = time.perf_counter() - t0
        pl_times.append(elapsed - pipeline.store.latest("big_output").duration)
        assert result.executed == ["big_output"]
        del result
        shutil.rmtree(store)

        # joblib.Memory: a cache miss minus the function's compute time; joblib does not
        # fsync, so also time it with an fsync of what it wrote (like for like)
        jl_root = os.path.join(root, "joblib-persist")
        mem = joblib.Memory(jl_root, verbose=0)
        cached = mem.cache(joblib_big)
        settle()
        t0 = time.perf_counter()
        cached(rep, nbytes)
        t1 = time.perf_counter()
        for folder, _, files in os.walk(jl_root):
            for name in files:
                fd = os.open(os.path.join(folder, name), os.O_RDONLY)
                os.fsync(fd)
                os.close(fd)
            fsync_dir(folder)
        t2 = time.perf_counter()
        jl_times.append(t1 - t0 - COMPUTE["joblib_big"])
        jl_sync_times.append(t2 - t0 - COMPUTE["joblib_big"])
        shutil.rmtree(jl_root)
    size = f"{nbytes / GIB:g} GiB" if nbytes >= GIB else f"{nbytes >> 20} MiB"
    pl = statistics.median(pl_times)
    raw = statistics.median(raw_times)
    jl = statistics.median(jl_times)
    jl_sync = statistics.median(jl_sync_times)
    name = f"persist a {size} array (run() minus compute)"
    return [
        Row(name, pl, "np.save + fsync", raw, "<= 1.3x", pl <= 1.3 * raw),
        Row(name, pl, "joblib.Memory store + fsync of its files", jl_sync, "<= 1x",
            pl <= jl_sync),
        Row(name, pl, "joblib.Memory store, not durable (no fsync)", jl, "(info)", None),
    ]


def bench_fresh_big(root: str, nbytes: int, reps: int) -> list[Row]:
    """A fresh run() returning a big memory-mapped output vs np.load(mmap) vs joblib hit."""
    import joblib

    from pipelite import REGISTRY, Pipeline, stage

    REGISTRY.clear()
    stage(outputs="big")(big_output)
    store = os.path.join(root, "fresh-store")
    params = {"big_output": {"seed": 1, "nbytes": nbytes}}
    pipeline = Pipeline(store=store, params=params)
    pipeline.run("big_output")

    def pl_run():
        out = pipeline.run("big_output")
        assert not out.executed and isinstance(out["big"], np.ndarray)

    pl = median_time(pl_run, reps * 10)
    # a new Pipeline each time (e.g. a fresh kernel reading the record from disk)
    pl_cold = median_time(lambda: Pipeline(store=store, params=params).run("big_output"),
                          reps * 10)

    path = pipeline.store.object_path(pipeline.record("big_output").outputs["big"])
    raw = median_time(lambda: np.load(path, mmap_mode="r"), reps * 10)

    mem = joblib.Memory(os.path.join(root, "joblib-fresh"), mmap_mode="r", verbose=0)
    cached = mem.cache(joblib_big)
    cached(1, nbytes)
    jl = median_time(lambda: cached(1, nbytes), reps * 10)
    size = f"{nbytes / GIB:g} GiB" if nbytes >= GIB else f"{nbytes >> 20} MiB"
    name = f"fresh run() with a {size} output"
    rows = [
        Row(name, pl, "target", None, "<= 10 ms", pl <= 0.010),
        Row(name, pl, "np.load(mmap_mode='r')", raw, "(O(1) floor)", None),
        Row(name, pl, "joblib.Memory hit, mmap_mode='r'", jl, "<= 1x", pl <= jl),
        Row(name + ", new Pipeline each time", pl_cold, "joblib.Memory hit, mmap_mode='r'", jl,
            "<= 1x", pl_cold <= jl),
    ]
    pipeline = None  # let go of its cached records before the folder goes
    shutil.rmtree(store)
    shutil.rmtree(os.path.join(root, "joblib-fresh"))
    return rows


def bench_tiny(root: str, reps: int) -> list[Row]:
    import joblib

    from pipelite import REGISTRY, Pipeline, stage

    REGISTRY.clear()
    stage(tiny)
    pipeline = Pipeline(store=os.path.join(root, "tiny-store"))
    pipeline.run("tiny")
    pl = median_time(lambda: pipeline.run("tiny"), reps * 100)
    mem = joblib.Memory(os.path.join(root, "joblib-tiny"), verbose=0)
    cached = mem.cache(joblib_tiny)
    cached(1)
    jl = median_time(lambda: cached(1), reps * 100)
    return [
        Row("fresh run() of a tiny stage", pl, "target", None, "< 1 ms", pl < 0.001),
        Row("fresh run() of a tiny stage", pl, "joblib.Memory tiny hit", jl, "<= 1x", pl <= jl),
    ]


def bench_status(root: str, reps: int) -> list[Row]:
    import joblib

    from pipelite import REGISTRY, Pipeline

    REGISTRY.clear()
    folder = os.path.join(root, "chain-src")
    os.makedirs(folder)
    sys.path.insert(0, folder)
    try:
        importlib.import_module(write_chain_module(folder, CHAIN))
    finally:
        sys.path.remove(folder)
    store = os.path.join(root, "chain-store")
    pipeline = Pipeline(store=store)
    t0 = time.perf_counter()
    pipeline.run()
    first_run = time.perf_counter() - t0

    def check():
        states = pipeline.status()
        assert len(states) == CHAIN and all(s.state == "fresh" for s in states)

    pl = median_time(check, reps)
    pl_cold = median_time(lambda: Pipeline(store=store).status(), reps)

    mem = joblib.Memory(os.path.join(root, "joblib-chain"), verbose=0)
    cached = mem.cache(joblib_link)
    for i in range(CHAIN):
        cached(i)
    jl = median_time(lambda: all(cached.check_call_in_cache(i) for i in range(CHAIN)), reps)
    name = f"status() of a {CHAIN}-stage chain"
    REGISTRY.clear()
    print(f"(first run of the {CHAIN}-stage chain, storing every link: {first_run:.2f} s)")
    return [
        Row(name, pl, "target", None, "< 100 ms", pl < 0.100),
        Row(name, pl, f"joblib check_call_in_cache x{CHAIN}", jl, "<= 1x", pl <= jl),
        Row(name + ", new Pipeline (records read from disk)", pl_cold,
            f"joblib check_call_in_cache x{CHAIN}", jl, "<= 1x", pl_cold <= jl),
    ]


def bench_status_big(root: str, reps: int) -> list[Row]:
    """status() of a 10,000-stage chain, new Pipeline (records read from disk) and the same
    one again, next to the floor of what any per-stage check must do here: stat the stage's
    record file, look for its failure file, hash one line and build one status object."""
    from dataclasses import dataclass as _dataclass

    from pipelite import REGISTRY, Pipeline

    REGISTRY.clear()
    folder = os.path.join(root, "big-chain-src")
    os.makedirs(folder)
    sys.path.insert(0, folder)
    try:
        importlib.import_module(write_chain_module(folder, BIG_CHAIN, "pipelite_bench_big"))
    finally:
        sys.path.remove(folder)
    store = os.path.join(root, "big-chain-store")
    t0 = time.perf_counter()
    pipeline = Pipeline(store=store)
    pipeline.run()
    print(f"(first run of the {BIG_CHAIN}-stage chain: {time.perf_counter() - t0:.1f} s)")

    def check(p: Pipeline) -> None:
        states = p.status()
        assert len(states) == BIG_CHAIN and all(s.state == "fresh" for s in states)

    cold = median_time(lambda: check(Pipeline(store=store)), reps)
    warm = median_time(lambda: check(pipeline), reps)

    @_dataclass(frozen=True)
    class Status:
        name: str
        state: str
        fingerprint: str

    records = os.path.join(store, "records")
    stages = []
    for name in sorted(os.listdir(records)):
        (rec,) = [f for f in os.listdir(os.path.join(records, name)) if f.endswith(".json")]
        stages.append((name, os.path.join(records, name, rec),
                       os.path.join(records, name, "FAILED.json")))

    def floor() -> None:
        out = []
        for name, rec, failed in stages:
            os.lstat(rec)
            os.access(failed, os.F_OK, follow_symlinks=False)
            out.append(Status(name, "fresh", xxhash.xxh3_128_hexdigest(
                f"reach=fn:{name}\ninputs:{name}=0\noutputs=None".encode())))

    least = median_time(floor, reps)
    REGISTRY.clear()
    name = f"status() of a {BIG_CHAIN}-stage chain"
    return [
        Row(name + ", new Pipeline", cold, "target", None, "< 100 ms", cold < 0.100),
        Row(name + ", new Pipeline", cold, "floor: stat + access + hash + object per stage",
            least, "-", None),
        Row(name + ", same Pipeline", warm, "floor: stat + access + hash + object per stage",
            least, "-", None),
    ]


def bench_hash(nbytes: int, reps: int) -> list[Row]:
    arr = np.full(nbytes // 8, 1.5)
    data = arr.view(np.uint8).data
    t = median_time(lambda: xxhash.xxh3_128(data).hexdigest(), reps)
    gbs = nbytes / t / 1e9
    del arr
    size = f"{nbytes / GIB:g} GiB" if nbytes >= GIB else f"{nbytes >> 20} MiB"
    return [Row(f"xxh3_128 of {size} in memory ({gbs:.1f} GB/s)", t, "(baseline throughput)",
                None, "-", None)]


def bench_global(root: str, nbytes: int, reps: int) -> list[Row]:
    """run() of a stale stage that reads a large global and does almost nothing: its time is
    the hashing of the global, counted in hashes of it (3 before issue 7, 2 now: the check
    before the run, reused by the run itself, and the one after it, which must see in-place
    changes)."""
    from pipelite import REGISTRY, Pipeline, stage
    from pipelite.fingerprint import value_digest

    REGISTRY.clear()
    big = np.full(nbytes // 8, 2.5)
    counter = iter(range(10**9))

    def reads_big(*, k: int = 0) -> float:
        return float(big[k])

    stage(outputs="first_value")(reads_big)
    pipeline = Pipeline(store=os.path.join(root, "global-store"))
    pl = median_time(lambda: pipeline.run("reads_big",
                                          params={"reads_big": {"k": next(counter)}}), reps)
    one = median_time(lambda: value_digest(big), reps)
    big = None  # free the array before the next workload
    size = f"{nbytes / GIB:g} GiB" if nbytes >= GIB else f"{nbytes >> 20} MiB"
    return [Row(f"stale run() of a stage reading a {size} global", pl,
                "one hash of the global", one, "<= 2.2x (was 3x)", pl <= 2.2 * one)]


FRAME_MODULE = """\
import time

import numpy as np
import pandas as pd

from pipelite import stage

COMPUTE = {}


def _frame(seed, nrows):
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({f"f{i}": rng.random(nrows) for i in range(9)})
    df["s"] = pd.Series(rng.integers(0, 10**6, nrows)).astype("str")
    return df


@stage(outputs="frame")
def frame_output(*, seed: int, nrows: int):
    return _frame(seed, nrows)


def joblib_frame(seed, nrows):
    t0 = time.perf_counter()
    df = _frame(seed, nrows)
    COMPUTE["joblib_frame"] = time.perf_counter() - t0
    return df
"""

FRAME_HIT = """\
import pickle, sys, time
kind, where, seed, nrows = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
sys.path.insert(0, sys.argv[5])
import pandas as pd
import pipelite_bench_frames as m
if kind == "pipelite":
    from pipelite import Pipeline
    t0 = time.perf_counter()
    out = Pipeline(store=where, params={"frame_output": {"seed": seed, "nrows": nrows}}).run(
        "frame_output")
    t = time.perf_counter() - t0
    assert not out.executed and out["frame"].shape == (nrows, 10)
elif kind == "pickle":
    t0 = time.perf_counter()
    with open(where, "rb") as f:
        df = pickle.load(f)
    t = time.perf_counter() - t0
else:
    import joblib
    mem = joblib.Memory(where, verbose=0, mmap_mode="r" if kind == "joblib-mmap" else None)
    cached = mem.cache(m.joblib_frame)
    t0 = time.perf_counter()
    df = cached(seed, nrows)
    t = time.perf_counter() - t0
    assert "joblib_frame" not in m.COMPUTE and df.shape == (nrows, 10), (m.COMPUTE, df.shape)
print(t)
"""


def fsync_tree(root: str) -> None:
    for folder, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
        fsync_dir(folder)


def bench_frames(root: str, nrows: int, reps: int) -> list[Row]:
    """A 10M x 10 pandas frame (9 float64 columns, 1 string column), interleaved rep by rep:
    persist (run() minus compute) vs pickle-5 + fsync (the floor) and joblib.Memory; then a
    hit in a fresh process (import time excluded) vs pickle.load and joblib.Memory hits."""
    import pickle
    import subprocess

    import joblib

    from pipelite import REGISTRY, Pipeline

    REGISTRY.clear()
    src = os.path.join(root, "frames-src")
    os.makedirs(src)
    with open(os.path.join(src, "pipelite_bench_frames.py"), "w") as f:
        f.write(FRAME_MODULE)
    with open(os.path.join(src, "hit.py"), "w") as f:
        f.write(FRAME_HIT)
    sys.path.insert(0, src)
    try:
        mod = importlib.import_module("pipelite_bench_frames")
    finally:
        sys.path.remove(src)
    times: dict[str, list[float]] = {k: [] for k in (
        "floor", "pipelite", "joblib", "joblib_sync", "hit_floor", "hit_pipelite", "hit_joblib",
        "hit_joblib_mmap")}
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
         os.environ.get("PYTHONPATH", "")]))

    def hit(kind: str, where: str, seed: int) -> float:
        out = subprocess.run([sys.executable, os.path.join(src, "hit.py"), kind, where,
                              str(seed), str(nrows), src], capture_output=True, text=True,
                             env=env)
        if out.returncode:
            raise RuntimeError(f"the {kind} hit failed: {out.stderr}")
        return float(out.stdout.split()[-1])

    for rep in range(reps):
        # the floor: pickle-5 of the frame to a file, fsync'd with its directory
        df = mod._frame(rep, nrows)
        raw_dir = os.path.join(root, "frame-raw")
        os.makedirs(raw_dir, exist_ok=True)
        path = os.path.join(raw_dir, "frame.pkl")
        settle()
        t0 = time.perf_counter()
        with open(path, "wb") as f:
            pickle.dump(df, f, protocol=5)
            f.flush()
            os.fsync(f.fileno())
        fsync_dir(raw_dir)
        times["floor"].append(time.perf_counter() - t0)
        del df

        store = os.path.join(root, "frame-store")
        pipeline = Pipeline(store=store, params={"frame_output": {"seed": rep, "nrows": nrows}})
        settle()
        t0 = time.perf_counter()
        result = pipeline.run("frame_output")
        elapsed = time.perf_counter() - t0
        assert result.executed == ["frame_output"]
        times["pipelite"].append(elapsed - pipeline.store.latest("frame_output").duration)
        del result, pipeline

        jl_root = os.path.join(root, "joblib-frame")
        cached = joblib.Memory(jl_root, verbose=0).cache(mod.joblib_frame)
        settle()  # (each rep stores a new entry: the seed differs)
        t0 = time.perf_counter()
        cached(rep, nrows)
        t1 = time.perf_counter()
        fsync_tree(jl_root)
        t2 = time.perf_counter()  # (fsyncing the earlier reps' files again is ~free)
        times["joblib"].append(t1 - t0 - mod.COMPUTE["joblib_frame"])
        times["joblib_sync"].append(t2 - t0 - mod.COMPUTE["joblib_frame"])
        gc.collect()

        # hits, each in a new process (after a restart: the files are in the page cache)
        times["hit_floor"].append(hit("pickle", path, rep))
        times["hit_pipelite"].append(hit("pipelite", store, rep))
        times["hit_joblib"].append(hit("joblib", jl_root, rep))
        times["hit_joblib_mmap"].append(hit("joblib-mmap", jl_root, rep))
        for folder in (raw_dir, store):
            shutil.rmtree(folder)
    # (joblib's folder is kept: a process that has checked a function's code once does not
    # write it again, so a new folder would look like changed code to the new process)
    shutil.rmtree(os.path.join(root, "joblib-frame"))
    REGISTRY.clear()
    med = {k: statistics.median(v) for k, v in times.items()}
    best = {k: min(v) for k, v in times.items()}
    for k in times:
        print(f"(frames: {k}: best {fmt_time(best[k])}, median {fmt_time(med[k])} of {reps})")
    rows_m = f"{nrows / 1e6:g}M"
    persist = f"persist a {rows_m} x 10 frame (run() minus compute)"
    hit_name = f"hit of a {rows_m} x 10 frame in a new process"
    pl, pl_hit = med["pipelite"], med["hit_pipelite"]
    return [
        Row(persist, pl, "pickle-5 + fsync (floor)", med["floor"], "<= 1.2x",
            pl <= 1.2 * med["floor"]),
        Row(persist, pl, "joblib.Memory store + fsync of its files", med["joblib_sync"],
            "<= 1x", pl <= med["joblib_sync"]),
        Row(persist, pl, "joblib.Memory store, not durable (no fsync)", med["joblib"],
            "(info)", None),
        Row(hit_name, pl_hit, "joblib.Memory hit, mmap_mode='r'", med["hit_joblib_mmap"],
            "<= 1x", pl_hit <= med["hit_joblib_mmap"]),
        Row(hit_name, pl_hit, "joblib.Memory hit", med["hit_joblib"], "<= 1x",
            pl_hit <= med["hit_joblib"]),
        Row(hit_name, pl_hit, "pickle.load (floor)", med["hit_floor"], "(info)", None),
    ]


# -- report -------------------------------------------------------------------------------------
def machine_info(root: str) -> str:
    import joblib

    import pipelite

    return machine(f"numpy {np.__version__}, joblib {joblib.__version__}, xxhash "
                   f"{xxhash.VERSION}, pipelite {pipelite.__version__}", root)



def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default=None, help="scratch directory (on the disk to measure)")
    ap.add_argument("--reps", type=int, default=5, help="repetitions of the slow measurements")
    ap.add_argument("--quick", action="store_true", help="128 MiB instead of 1 GiB (smoke test)")
    frames = ap.add_mutually_exclusive_group()
    frames.add_argument("--frames", action="store_true",
                        help="only the 10M x 10 frame workload (persist and new-process hit)")
    frames.add_argument("--no-frames", action="store_true", help="leave the frame workload out")
    frames.add_argument("--status-big", action="store_true",
                        help=f"only status() of a {BIG_CHAIN:,}-stage chain, and its floor "
                             "(the first run stores every link: a minute or two)")
    args = ap.parse_args(argv)
    nbytes = GIB // 8 if args.quick else GIB
    root = tempfile.mkdtemp(prefix="pipelite-bench-", dir=args.dir)
    print(machine_info(root))
    print()
    rows: list[Row] = []
    nrows = 10_000_000 // 8 if args.quick else 10_000_000
    try:
        if args.status_big:
            rows += bench_status_big(root, args.reps)
        elif not args.frames:
            rows += bench_persist(root, nbytes, args.reps)
            rows += bench_fresh_big(root, nbytes, args.reps)
            rows += bench_tiny(root, args.reps)
            rows += bench_status(root, args.reps)
            rows += bench_global(root, nbytes, args.reps)
            rows += bench_hash(nbytes, args.reps)
        if not args.no_frames and not args.status_big:
            rows += bench_frames(root, nrows, args.reps)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print()
    print(table(rows))
    missed = [r for r in rows if r.met is False]
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
