"""File artifacts: a big file output stored and restored, and a big input folder checked.

    python benchmarks/bench_files.py [--dir DIR] [--reps N] [--quick] [--size-gib G] [--files N]

(1) A stage returning ``{"report": File("out/big.bin")}`` for a ``--size-gib`` file it did not
    have to write (written before the clock starts, new content every repetition, so each run
    really stores it): ``run()`` minus the stage's own compute (from its record) next to
    ``shutil.copyfile`` + fsync of the copy and of its folder. Then the file is deleted and
    ``run()`` of the now fresh stage puts it back, next to ``shutil.copyfile`` alone.
(2) A stage whose parameter is ``File("data")``, a folder of ``--files`` files of random bytes
    totalling ``--size-gib`` (real data, not sparse files: a sparse file reads as zeros without
    touching the disk, which flatters every hashing figure), modified a minute before any
    check. ``Pipeline(...).status()`` timed in the checking process (imports excluded):
    (a) a new process, empty hash cache: every file hashed; (b) the same process again;
    (c) a new process, hash cache warm: stat only, the promise; (d) a new process after one
    file changed: one file hashed. Baselines, each in a new process: ``os.walk`` + ``os.stat``
    of every file (the floor of any check) and xxh3-128 of every file (a full re-hash; the
    files are in the page cache, so it is a best case for hashing).

Every side runs interleaved rep by rep (who goes first alternates for (1)), so both see the
same disk and load. Times are medians of ``--reps``; ratios are PipeLite / baseline. The
benchmark uses its own hash cache (``PIPELITE_HASH_CACHE`` in the scratch folder), never
yours. The exit status is 1 if a target is missed.
"""
from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

import xxhash
from _report import Row, machine, table

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)  # measure this checkout, in this process and in the children
GIB = 1 << 30
SUBFOLDERS = 100  # the folder's files are spread over this many subfolders, as datasets are
AGE_NS = 60_000_000_000  # input files last modified a minute before any check: not "racy"

BIG_MODULE = """\
from pipelite import File, stage


@stage
def big_report(*, rep: int):
    return {"report": File("out/big.bin")}
"""

FOLDER_MODULE = """\
from pipelite import File, stage


@stage
def folder_input(*, data=File("data")):
    return {"folder_seen": 1}
"""




def fmt_size(nbytes: float) -> str:
    if nbytes >= GIB:
        return f"{nbytes / GIB:g} GiB"
    if nbytes >= 1 << 20:
        return f"{nbytes / (1 << 20):.0f} MiB"
    return f"{nbytes / 1024:.0f} KiB"


def settle() -> None:
    """Start a timed write from a quiet disk: no write-back of earlier files competing."""
    gc.collect()
    os.sync()


def fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def import_from(folder: str, name: str, text: str) -> None:
    with open(os.path.join(folder, name + ".py"), "w") as f:
        f.write(text)
    sys.path.insert(0, folder)
    try:
        importlib.import_module(name)
    finally:
        sys.path.remove(folder)


# -- (1) a big file output ----------------------------------------------------------------------
def copy_durably(src: str, folder: str) -> float:
    """The floor of a durable store: copy, fsync the copy and its folder."""
    dst = os.path.join(folder, "big.bin")
    settle()
    t0 = time.perf_counter()
    shutil.copyfile(src, dst)
    fsync_path(dst)
    fsync_path(folder)
    elapsed = time.perf_counter() - t0
    os.remove(dst)
    return elapsed


def copy_plainly(src: str, folder: str) -> float:
    """The floor of a restore: a copy (``sendfile`` in the kernel), no fsync."""
    dst = os.path.join(folder, "big.bin")
    settle()
    t0 = time.perf_counter()
    shutil.copyfile(src, dst)
    elapsed = time.perf_counter() - t0
    os.remove(dst)
    return elapsed


def run_storing(pipeline, expected: str) -> float:
    """``run()`` of the stage, which stores its file output, minus the stage's own compute."""
    settle()
    t0 = time.perf_counter()
    result = pipeline.run("big_report")
    elapsed = time.perf_counter() - t0
    record = pipeline.store.latest("big_report")
    assert result.executed == ["big_report"], result.executed
    assert record.outputs["report"].hash == expected, "stored the wrong digest"
    return elapsed - record.duration


def run_restoring(pipeline, src: str, nbytes: int) -> float:
    """``run()`` of the fresh stage whose file output was deleted: it is put back."""
    settle()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "restored out/big.bin from the store": yes
        t0 = time.perf_counter()
        result = pipeline.run("big_report")
        elapsed = time.perf_counter() - t0
    assert not result.executed and os.path.getsize(src) == nbytes
    return elapsed


def bench_file_output(root: str, nbytes: int, reps: int) -> list[Row]:
    """Storing a file output through run() vs copyfile + fsync; restoring it vs copyfile."""
    from pipelite import Pipeline

    out = os.path.join(root, "out")
    raw_dir = os.path.join(root, "raw")
    os.makedirs(out)
    os.makedirs(raw_dir)
    os.makedirs(os.path.join(root, "src"), exist_ok=True)
    import_from(os.path.join(root, "src"), "pipelite_bench_big", BIG_MODULE)
    src = os.path.join(out, "big.bin")
    content = bytearray(os.urandom(nbytes))
    times: dict[str, list[float]] = {k: [] for k in ("raw", "store", "copy", "restore")}
    for rep in range(reps):
        content[:8] = rep.to_bytes(8, "little")  # new content: a real store, not a dedupe hit
        with open(src, "wb") as f:
            f.write(content)
        expected = xxhash.xxh3_128_hexdigest(content)
        store = os.path.join(root, "file-store")
        pipeline = Pipeline(store=store, params={"big_report": {"rep": rep}})
        sides = [("raw", lambda: copy_durably(src, raw_dir)),
                 ("store", lambda p=pipeline, e=expected: run_storing(p, e))]
        for key, measure in sides if rep % 2 == 0 else sides[::-1]:
            times[key].append(measure())

        obj = pipeline.store.object_path(pipeline.store.latest("big_report").outputs["report"])
        os.remove(src)
        sides = [("copy", lambda o=obj: copy_plainly(o, raw_dir)),
                 ("restore", lambda p=pipeline: run_restoring(p, src, nbytes))]
        for key, measure in sides if rep % 2 == 0 else sides[::-1]:
            times[key].append(measure())
        with open(src, "rb") as f:
            assert xxhash.xxh3_128_hexdigest(f.read()) == expected, "restored the wrong bytes"
        os.remove(src)
        pipeline = sides = None  # let go of its records before the store goes
        shutil.rmtree(store)
    del content
    med = {k: statistics.median(v) for k, v in times.items()}
    size = fmt_size(nbytes)
    return [
        Row(f"store a {size} file output (run() minus compute)", med["store"],
            "shutil.copyfile + fsync (+ dir fsync)", med["raw"], "<= 1.3x",
            med["store"] <= 1.3 * med["raw"]),
        Row("restore it after deletion (run() of the fresh stage)", med["restore"],
            "shutil.copyfile", med["copy"], "(info)", None),
    ]


# -- (2) a big input folder ---------------------------------------------------------------------
def make_folder(folder: str, nfiles: int, total: int) -> list[str]:
    """``nfiles`` files of random bytes, ``total`` in all, in subfolders; modified in the past."""
    per_file = max(1, total // nfiles)
    subfolders = max(1, min(SUBFOLDERS, nfiles // 100))
    past = time.time_ns() - AGE_NS
    paths = []
    for i in range(nfiles):
        sub = os.path.join(folder, f"part-{i % subfolders:03d}")
        os.makedirs(sub, exist_ok=True)
        path = os.path.join(sub, f"{i:06d}.bin")
        with open(path, "wb") as f:
            f.write(os.urandom(per_file))
        os.utime(path, ns=(past, past))
        paths.append(path)
    return paths


def child(kind: str, root: str, expect: str) -> None:
    """One measurement in a new process; prints its times as JSON (imports excluded)."""
    os.chdir(root)
    if kind == "floor":
        t0 = time.perf_counter()
        n = 0
        for folder, _, names in os.walk("data"):
            for name in names:
                os.stat(os.path.join(folder, name))
                n += 1
        print(json.dumps({"t": time.perf_counter() - t0, "files": n}))
        return
    if kind == "rehash":
        t0 = time.perf_counter()
        n = 0
        for folder, _, names in os.walk("data"):
            for name in names:
                with open(os.path.join(folder, name), "rb") as f:
                    xxhash.xxh3_128_hexdigest(f.read())
                n += 1
        print(json.dumps({"t": time.perf_counter() - t0, "files": n}))
        return
    sys.path.insert(0, os.path.join(root, "src"))
    importlib.import_module("pipelite_bench_folder")
    from pipelite import Pipeline

    store = os.path.join(root, "folder-store")
    times = []
    for _ in range(2 if kind == "cold" else 1):  # cold: then again in the same process
        t0 = time.perf_counter()
        (status,) = Pipeline(store=store).status()
        times.append(time.perf_counter() - t0)
        assert status.state == expect, (status.state, status.reasons)
    print(json.dumps({"t": times[0], "again": times[-1], "reasons": list(status.reasons)}))


def bench_folder(root: str, nfiles: int, total: int, reps: int) -> list[Row]:
    from pipelite import Pipeline

    t0 = time.perf_counter()
    paths = make_folder(os.path.join(root, "data"), nfiles, total)
    os.sync()
    print(f"(wrote {nfiles:,} files, {fmt_size(total)}, in {time.perf_counter() - t0:.1f} s)")
    os.makedirs(os.path.join(root, "src"), exist_ok=True)
    import_from(os.path.join(root, "src"), "pipelite_bench_folder", FOLDER_MODULE)
    store = os.path.join(root, "folder-store")
    warm_cache = os.environ["PIPELITE_HASH_CACHE"]
    Pipeline(store=store).run("folder_input")  # hashes every file: the hash cache is warm
    cache_bytes = sum(os.path.getsize(p) for p in (warm_cache, warm_cache + "-wal")
                      if os.path.exists(p))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]))

    def measure(kind: str, expect: str = "fresh", cache: str = warm_cache) -> dict:
        done = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--child", kind, "--dir", root,
             "--expect", expect], env=dict(env, PIPELITE_HASH_CACHE=cache),
            capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"the {kind} check failed:\n{done.stderr}")
        return json.loads(done.stdout.strip().splitlines()[-1])

    times: dict[str, list[float]] = {
        k: [] for k in ("floor", "rehash", "cold", "again", "warm", "changed")}
    for rep in range(reps):
        cold_cache = os.path.join(root, f"cold-{rep}.sqlite3")
        kinds = ["floor", "warm", "cold", "rehash"]
        for kind in kinds[rep % 4:] + kinds[:rep % 4]:
            if kind == "cold":
                got = measure("cold", cache=cold_cache)
                times["again"].append(got["again"])
            else:
                got = measure(kind)
            times[kind].append(got["t"])
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(cold_cache + suffix):
                os.remove(cold_cache + suffix)
        # (d): one file changes (same size, new bytes, modified in the past but later than
        # before); then an untimed run here makes the stage fresh again for the next rep
        changed = paths[(rep * 7919) % nfiles]
        with open(changed, "wb") as f:
            f.write(os.urandom(os.path.getsize(changed)))
        past = time.time_ns() - AGE_NS // 2
        os.utime(changed, ns=(past, past))
        got = measure("changed", expect="stale")
        # past LISTED_FILES files a folder's record keeps its digest only: "folder changed"
        assert len(got["reasons"]) == 1, got
        times["changed"].append(got["t"])
        Pipeline(store=store).run("folder_input")
    med = {k: statistics.median(v) for k, v in times.items()}
    name = f"status() of a stage with a {nfiles:,}-file, {fmt_size(total)} folder input"
    floor_name = "new process: os.walk + os.stat of every file (floor)"
    print(f"(hash cache after the first check: {cache_bytes / 1e6:.1f} MB for {nfiles:,} files, "
          f"{cache_bytes / nfiles:.0f} bytes a file)")
    return [
        Row(name + ": (a) new process, empty hash cache", med["cold"],
            "new process: xxh3-128 of every file (full re-hash)", med["rehash"], "(info)", None),
        Row(name + ": (b) same process again", med["again"], floor_name, med["floor"],
            "(info)", None),
        Row(name + ": (c) new process, hash cache warm (stat only)", med["warm"], floor_name,
            med["floor"], "<= 3x", med["warm"] <= 3 * med["floor"]),
        Row(name + ": (c) new process, hash cache warm (stat only)", med["warm"],
            "new process: xxh3-128 of every file (full re-hash)", med["rehash"], "(info)",
            None),
        Row(name + ": (d) new process, one file changed", med["changed"], floor_name,
            med["floor"], "(info)", None),
    ]


# -- report -------------------------------------------------------------------------------------
def machine_info(root: str) -> str:
    import pipelite

    return machine(f"xxhash {xxhash.VERSION}, pipelite {pipelite.__version__}", root)



def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default=None, help="scratch directory (on the disk to measure)")
    ap.add_argument("--reps", type=int, default=5, help="repetitions of each measurement")
    ap.add_argument("--quick", action="store_true",
                    help="1/8 of the size and 1/10 of the files (a smoke test, not the targets)")
    ap.add_argument("--size-gib", type=float, default=1.0,
                    help="size of the file output, and total of the folder's files (default 1)")
    ap.add_argument("--files", type=int, default=10_000, help="files in the input folder")
    ap.add_argument("--child", choices=("floor", "rehash", "cold", "warm", "changed"),
                    help=argparse.SUPPRESS)
    ap.add_argument("--expect", default="fresh", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args.child, args.dir, args.expect)
        return 0
    nbytes = int(args.size_gib * GIB) // (8 if args.quick else 1)
    nfiles = args.files // 10 if args.quick else args.files
    root = os.path.realpath(tempfile.mkdtemp(prefix="pipelite-bench-files-", dir=args.dir))
    os.environ["PIPELITE_HASH_CACHE"] = os.path.join(root, "hash-cache.sqlite3")
    print(machine_info(root))
    print()
    cwd = os.getcwd()
    os.chdir(root)  # file outputs live under the current folder
    rows: list[Row] = []
    try:
        rows += bench_file_output(root, nbytes, args.reps)
        rows += bench_folder(root, nfiles, nbytes, args.reps)
    finally:
        os.chdir(cwd)
        shutil.rmtree(root, ignore_errors=True)
    print()
    print(table(rows))
    return 1 if any(r.met is False for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
