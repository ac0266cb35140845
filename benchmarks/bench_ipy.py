"""What a ``%%stage`` cache hit costs, next to a plain cell and ipycache's ``%%cache``.

    python benchmarks/bench_ipy.py [--size-mib 1024] [--repeat 200]

Two cells: a tiny one (``x = 1 + 1``) and one making a 1 GiB numpy array. Each is timed as a
plain cell (it computes), as a ``%%stage`` cache hit (it loads from the store and replays) and,
if ipycache works, as a ``%%cache`` hit. All run through a real ``InteractiveShell.run_cell``,
so IPython's own per-cell cost is in every column; "overhead" subtracts the tiny plain cell's
time. Prints a markdown table.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import io
import os
import shutil
import statistics
import sys
import tempfile
import time


def _timed(ip, cell: str, repeat: int, collect: bool = False) -> float:
    """Median seconds of ``repeat`` runs of ``cell`` (output discarded).

    The garbage collector is off while timing, as in ``timeit``: a full collection in a
    process holding IPython costs several ms and lands on whichever cell happens to trigger
    it. ``collect=True`` leaves it on (what a notebook sees on average).
    """
    times = []
    for _ in range(repeat):
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            if not collect:
                gc.disable()
            try:
                t0 = time.perf_counter()
                result = ip.run_cell(cell)
                times.append(time.perf_counter() - t0)
            finally:
                gc.enable()
        if not result.success:
            raise RuntimeError(f"cell failed: {result.error_in_exec or result.error_before_exec}")
    return statistics.median(times)


def _ipycache_status(ip) -> str | None:
    """None if ipycache's %%cache works here, else why not."""
    try:
        import importlib.metadata as md

        version = md.version("ipycache")
    except Exception:  # noqa: BLE001
        return ("not installed. (ipycache 0.1.4, the newest on PyPI, installs but its module "
                "imports cPickle, so it cannot load on Python 3)")
    try:
        ip.run_line_magic("load_ext", "ipycache")
        import ipycache  # noqa: F401
    except Exception as exc:  # noqa: BLE001
        return f"ipycache {version} installs but does not load on Python " \
               f"{sys.version_info.major}.{sys.version_info.minor}: {type(exc).__name__}: {exc}"
    if ip.find_cell_magic("cache") is None:
        return f"ipycache {version} loaded but registered no %%cache magic"
    return None


def _ms(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds * 1000:.2f} ms"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="big array size (MiB)")
    parser.add_argument("--repeat", type=int, default=200, help="runs of each tiny cell")
    parser.add_argument("--repeat-big", type=int, default=15, help="runs of each big cell")
    args = parser.parse_args()

    from IPython.core.interactiveshell import InteractiveShell

    workdir = tempfile.mkdtemp(prefix="pipelite-bench-")
    os.chdir(workdir)
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "pipelite")
    ip.run_cell("import numpy as np")
    tiny = "x = 1 + 1\n"
    big = f"big = np.ones({args.size_mib} * 2**20, dtype=np.uint8)\n"
    try:
        rows = []
        plain_tiny = _timed(ip, tiny, args.repeat)
        broken = _ipycache_status(ip)
        for label, cell, repeat in ((f"tiny (`{tiny.strip()}`)", tiny, args.repeat),
                                    (f"{args.size_mib} MiB numpy array", big, args.repeat_big)):
            name = "tiny" if cell is tiny else "big"
            plain = plain_tiny if cell is tiny else _timed(ip, cell, repeat)
            first = _timed(ip, f"%%stage {name}\n{cell}", 1)  # computes and stores
            hit = _timed(ip, f"%%stage {name}\n{cell}", repeat)
            hit_gc = _timed(ip, f"%%stage {name}\n{cell}", repeat, collect=True)
            cache_hit = None
            if broken is None:
                path = os.path.join(workdir, f"{name}.pkl")
                var = cell.split("=")[0].strip()
                _timed(ip, f"%%cache {path} {var}\n{cell}", 1)
                cache_hit = _timed(ip, f"%%cache {path} {var}\n{cell}", repeat)
            rows.append((label, plain, first, hit, hit_gc, cache_hit))
            ip.run_cell(f"del {cell.split('=')[0].strip()}")
    finally:
        ip.run_line_magic("unload_ext", "pipelite")
        os.chdir(os.path.expanduser("~"))
        shutil.rmtree(workdir, ignore_errors=True)

    print(f"python {sys.version.split()[0]}, median of {args.repeat} runs (tiny) / "
          f"{args.repeat_big} runs (big), each through InteractiveShell.run_cell; "
          f"GC off while timing (as timeit) except in 'hit with GC on'\n")
    print("| cell | plain cell | %%stage first run (compute + store) | %%stage cache hit | "
          "hit overhead vs tiny plain cell | hit / plain | hit with GC on | "
          "ipycache %%cache hit |")
    print("|---|---|---|---|---|---|---|---|")
    for label, plain, first, hit, hit_gc, cache_hit in rows:
        print(f"| {label} | {_ms(plain)} | {_ms(first)} | {_ms(hit)} | "
              f"{_ms(hit - plain_tiny)} | {hit / plain:.2f}x | {_ms(hit_gc)} | "
              f"{_ms(cache_hit)} |")
    if broken is not None:
        print(f"\nipycache: {broken}; its column is n/a.")
    tiny_overhead = rows[0][3] - plain_tiny
    met = "met" if tiny_overhead < 0.005 else "MISSED"
    print(f"\ntarget: tiny-stage hit overhead < 5 ms: {met}"
          f" ({_ms(tiny_overhead)}); big/tiny hit ratio {rows[1][3] / rows[0][3]:.2f} "
          f"(O(1) in the artifact's size means close to 1)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
