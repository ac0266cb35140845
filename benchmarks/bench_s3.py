"""Metadata speed on an object store (issue 11, item 4): ``status()`` and a fresh ``run()`` of
500 stages on S3 (a moto server on 127.0.0.1, started and stopped here), next to a local store,
in one run; the S3 figures with bulk metadata reads off ("before") and on ("after").

    python benchmarks/bench_s3.py [--stages N] [--reps N]

Target: ``status()`` of 500 stages on moto within 5x of the local store. Loopback moto answers
in about a millisecond a request; real S3 takes 10-50 ms, so the request count matters more
there than these times show (it is printed too).
"""
from __future__ import annotations

import argparse
import os
import pathlib
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid


def start_moto() -> tuple[subprocess.Popen, str]:
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
    from tests.helpers import start_moto as start  # the tests' fixture starts it the same way

    return start("pipelite-bench")


def define(n: int) -> None:
    from pipelite import stage

    for i in range(n):
        fn = eval(f"lambda: {{'out{i}': {i}}}")  # noqa: S307 - generated benchmark stages
        fn.__name__ = fn.__qualname__ = f"stage{i}"
        stage(outputs=[f"out{i}"])(fn)


class Requests:
    """Counts the HTTP requests botocore sends (its before-send event)."""

    def __init__(self) -> None:
        self.count = 0

    def attach(self, store) -> None:
        fs = store._fs.fs
        client = fs.s3 if getattr(fs, "_s3", None) is not None else None
        if client is None:
            fs.connect()
            client = fs.s3
        # fsspec reuses one filesystem (one client) per URL and options: register once
        client.meta.events.register("before-send.s3", self._seen,
                                    unique_id=f"pipelite-bench-{id(self)}")

    def _seen(self, **_kw) -> None:
        self.count += 1


def measure(make_pipeline, reps: int, requests: Requests | None = None
            ) -> tuple[float, float, float, int | None, int | None]:
    """(first run of every stage, the first status() after it, the median cold status()
    after that, requests of one status(), requests of the first run). The first status
    after a run lists the records and rewrites the index; later ones read the index."""
    pipeline = make_pipeline()
    if requests is not None:
        requests.attach(pipeline.store)
        requests.count = 0
    t0 = time.perf_counter()
    pipeline.run()
    first_run = time.perf_counter() - t0
    run_requests = requests.count if requests is not None else None
    t0 = time.perf_counter()
    make_pipeline().status()
    first_status = time.perf_counter() - t0
    times = []
    counted = None
    for _ in range(reps):
        fresh = make_pipeline()  # a new Pipeline: nothing in its memory
        if requests is not None:
            requests.attach(fresh.store)
            requests.count = 0
        t0 = time.perf_counter()
        statuses = fresh.status()
        times.append(time.perf_counter() - t0)
        assert all(s.state == "fresh" for s in statuses), "the benchmark's stages must be fresh"
        if requests is not None:
            counted = requests.count
    return first_run, first_status, statistics.median(times), counted, run_requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", type=int, default=500)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()

    from pipelite import Pipeline, Store, _fs

    proc, endpoint = start_moto()
    options = {"key": "test", "secret": "test",
               "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"}}
    os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="pipelite-bench-cache-")
    try:
        define(args.stages)
        local_dir = tempfile.mkdtemp(prefix="pipelite-bench-local-")
        local = measure(lambda: Pipeline(store=local_dir), args.reps)
        rows = [("local store", local)]
        for label, bulk in (("S3 (moto), before: one request per file", False),
                            ("S3 (moto), after: one listing, an index, parallel reads", True)):
            _fs.BULK_METADATA = bulk
            url = f"s3://pipelite-bench/{uuid.uuid4().hex}"
            rows.append((label, measure(
                lambda url=url: Pipeline(store=Store(url, storage_options=options)),
                args.reps, Requests())))
        _fs.BULK_METADATA = True
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)

    base_status = local[2]
    print(f"{args.stages} stages; status() in a new Pipeline each time: the first after the "
          f"run, then the median of {args.reps}; python {sys.version.split()[0]}\n")
    print("| store | first run() | requests a stage in it | first status() | status() | "
          "x local | requests per status() |")
    print("|---|---|---|---|---|---|---|")
    for label, (first, first_status, status, requests, run_requests) in rows:
        per_stage = f"{run_requests / args.stages:.1f}" if run_requests is not None else "-"
        print(f"| {label} | {first:.2f} s | {per_stage} | {first_status * 1000:.0f} ms | "
              f"{status * 1000:.0f} ms | {status / base_status:.1f}x | "
              f"{requests if requests is not None else '-'} |")

if __name__ == "__main__":
    main()
