"""Object stores keep the local store's promises (issue 11), against a moto S3 server on
127.0.0.1 (conftest.py's ``moto_s3``): compute-once through a lease in the store itself, the
local copy of an object checked like a local file, ..."""
from __future__ import annotations

import collections
import json
import os
import pickle
import subprocess
import sys
import textwrap
import threading
import time
import uuid
import warnings

import pytest

from pipelite import Pipeline, PipeliteWarning, Store, _lease, events, stage

pytest.importorskip("s3fs")


@pytest.fixture
def s3_url(moto_s3):
    return f"s3://pipelite-test/{uuid.uuid4().hex}"


@pytest.fixture
def options(moto_s3):
    return moto_s3[1]


def test_moto_honours_a_conditional_create(s3_url, options):
    fs = Store(s3_url, storage_options=options)._fs
    assert fs.exclusive_create
    assert fs.create_exclusive("leases/x.json", b"first") is True
    assert fs.create_exclusive("leases/x.json", b"second") is False  # If-None-Match: *
    assert fs.read_bytes("leases/x.json") == b"first"


def test_a_trailing_slash_names_the_same_store(s3_url, options):
    assert Store(s3_url + "/", storage_options=options).url == s3_url
    assert Store(s3_url + "//", storage_options=options).url == s3_url
    assert Store("memory://x/").url == "memory://x"


WORKER = textwrap.dedent("""
    import json, sys, time
    from pipelite import Pipeline, stage

    url, options, log = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]

    @stage(outputs="value")
    def expensive():
        with open(log, "a") as f:
            f.write("computed\\n")
        time.sleep(1.5)  # long enough for the other process to arrive and wait
        return 42

    result = Pipeline(store=url, storage_options=options).run("expensive")
    print(json.dumps({"value": result["value"], "executed": result.executed}))
""")


def test_two_processes_with_their_own_temp_dirs_compute_a_stage_once(s3_url, options,
                                                                      tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    log = tmp_path / "computed.log"
    procs = []
    for i in range(2):  # as two machines: nothing local in common
        env = {**os.environ, "TMPDIR": str(tmp_path / f"tmp{i}"),
               "XDG_CACHE_HOME": str(tmp_path / f"cache{i}")}
        os.makedirs(env["TMPDIR"])
        url = s3_url + ("/" if i else "")  # and one of them with a trailing slash
        procs.append(subprocess.Popen(
            [sys.executable, str(script), url, json.dumps(options), str(log)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        outs.append(json.loads(out.strip().splitlines()[-1]))
    assert log.read_text() == "computed\n"  # once
    assert sorted(o["executed"] == ["expensive"] for o in outs) == [False, True]
    assert all(o["value"] == 42 for o in outs)  # the other loaded it
    fs = Store(s3_url, storage_options=options)._fs
    assert fs.listdir("leases") == []  # released


def _claim(fs, rel: str, heartbeat: float, token: str = "someone-else") -> None:
    fs.write_atomic(rel, json.dumps({"owner": "ghost@elsewhere:1", "token": token,
                                     "started": heartbeat, "heartbeat": heartbeat}).encode())


def _lease_rel(pipeline: Pipeline, name: str) -> str:
    plan = pipeline.plan([name])
    assert plan, "the stage is not stale"
    st = pipeline.registry.get(name)
    from pipelite.fingerprint import fingerprint_of

    fp = fingerprint_of(st, st.resolve_params({}), {})
    return f"leases/{name}-{fp.digest}.json"


def test_a_stale_lease_is_taken_over(s3_url, options):
    @stage(outputs="v")
    def work():
        return 7

    pipeline = Pipeline(store=Store(s3_url, storage_options=options))
    pipeline.store.lease_timeout = 5.0
    rel = _lease_rel(pipeline, "work")
    _claim(pipeline.store._fs, rel, heartbeat=time.time() - 3600)  # its owner died an hour ago
    t0 = time.monotonic()
    assert pipeline.run("work").executed == ["work"]
    assert time.monotonic() - t0 < 30  # taken over, not waited out
    assert pipeline.store._fs.read_bytes(rel) is None  # and released


def test_a_live_lease_is_waited_for_then_the_stage_runs(s3_url, options, monkeypatch):
    started = threading.Event()

    @stage(outputs="v")
    def work():
        started.set()
        return 8

    pipeline = Pipeline(store=Store(s3_url, storage_options=options))
    rel = _lease_rel(pipeline, "work")
    fs = pipeline.store._fs
    _claim(fs, rel, heartbeat=time.time())  # someone computes it right now
    waiting = threading.Event()
    real_sleep = time.sleep

    def sleep(seconds):  # the lease's wait: tell the test it is waiting
        waiting.set()
        real_sleep(min(seconds, 0.05))

    monkeypatch.setattr(_lease.time, "sleep", sleep)
    result: dict = {}
    runner = threading.Thread(target=lambda: result.update(r=pipeline.run("work")))
    runner.start()
    assert waiting.wait(30)
    assert not started.is_set()  # it waits for the other owner instead of computing
    fs.delete(rel)  # the other owner gives up (without a result)
    runner.join(60)
    assert result["r"].executed == ["work"] and started.is_set()


def test_an_owner_renews_its_lease_so_a_slow_stage_is_not_taken_over(s3_url, options):
    release = threading.Event()

    @stage(outputs="v")
    def slow():
        release.wait(30)
        return 9

    store = Store(s3_url, storage_options=options)
    store.lease_timeout, store.lease_heartbeat = 1.0, 0.2
    pipeline = Pipeline(store=store)
    rel = _lease_rel(pipeline, "slow")
    runner = threading.Thread(target=pipeline.run, args=("slow",))
    runner.start()
    deadline = time.monotonic() + 30
    while store._fs.read_bytes(rel) is None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    first = json.loads(store._fs.read_bytes(rel))
    other = _lease.Lease(store._fs, "slow", rel.split("-", 1)[1][:-5], timeout=1.0)
    claim = None
    for _ in range(3):  # across several lease timeouts, the claim stays fresh and its own
        time.sleep(1.0)
        claim = json.loads(store._fs.read_bytes(rel))
        assert claim["token"] == first["token"] and not other._stale(claim)
    assert claim is not None and claim["heartbeat"] > first["heartbeat"]
    release.set()
    runner.join(30)
    assert store._fs.read_bytes(rel) is None


def test_a_store_without_conditional_create_says_so_once(monkeypatch):
    from pipelite._fs import FsspecFS

    monkeypatch.setattr(FsspecFS, "exclusive_create", property(lambda self: False))

    @stage(outputs="a")
    def one():
        return 1

    @stage(outputs="b")
    def two(a):
        return a + 1

    url = f"memory://pipelite-{uuid.uuid4().hex}"
    with pytest.warns(PipeliteWarning, match="has no conditional create") as caught:
        Pipeline(store=url).run("two")
    assert sum("conditional create" in str(w.message) for w in caught) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error", PipeliteWarning)
        Pipeline(store=url).run("two", force=True)


# -- the local copy of a remote object is checked like a local file (item 2) -----------------
def _cached_copy(store: Store, artifact: str) -> str:
    info = next(rec.outputs[artifact] for rec in
                (store.latest(st) for st in store.stages()) if rec and artifact in rec.outputs)
    rel = store._object_rel(info)
    return os.path.join(store._fs._cache, rel)


@pytest.mark.parametrize("n", [1_000, 600_000], ids=["small-hashed-whole", "large-sampled"])
def test_a_damaged_local_copy_is_fetched_again_never_returned(s3_url, options, tmp_path,
                                                             monkeypatch, n):
    np = pytest.importorskip("numpy")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))

    @stage(outputs="arr")
    def make():
        return np.arange(n, dtype=np.float64)

    store = Store(s3_url, storage_options=options)
    pipeline = Pipeline(store=store)
    pipeline.run("make")
    assert pipeline.load("arr")[-1] == n - 1  # the local copy exists now
    cached = _cached_copy(store, "arr")
    with open(cached, "r+b") as f:  # damage the local copy's last bytes (the store's are fine)
        f.seek(-8, os.SEEK_END)
        f.write(b"\xff" * 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PipeliteWarning)  # no false "corrupt" warning
        fresh = Pipeline(store=Store(s3_url, storage_options=options))
        value = fresh.load("arr")
    assert value[-1] == n - 1  # the right bytes, fetched again
    assert fresh.run("make").executed == []  # nothing recomputed, the record stands


# -- gc on an object store (item 3) ----------------------------------------------------------
def _boto(moto_s3):
    import boto3

    return boto3.client("s3", endpoint_url=moto_s3[0], region_name="us-east-1",
                        aws_access_key_id="test", aws_secret_access_key="test")


def test_gc_never_deletes_a_fresh_upload_no_record_names_yet(s3_url, options):
    store = Store(s3_url, storage_options=options)
    info = store.save_value([1, 2, 3], stage="writer")  # a writer's object, its record to come
    report = store.gc()
    assert report.objects == 0
    assert store._fs.exists(store._object_rel(info))
    assert store.gc(grace=0).objects == 1  # unreferenced and old enough (grace 0): collected
    assert not store._fs.exists(store._object_rel(info))


def test_gc_aborts_interrupted_multipart_uploads_of_this_store_only(s3_url, options, moto_s3):
    s3 = _boto(moto_s3)
    prefix = s3_url.split("/", 3)[3]
    mine = s3.create_multipart_upload(Bucket="pipelite-test", Key=f"{prefix}/objects/ab/x.npy")
    theirs = s3.create_multipart_upload(Bucket="pipelite-test", Key="elsewhere/objects/y.npy")
    store = Store(s3_url, storage_options=options)
    # moto dates every upload 2010: the grace rule is checked at the upload's own time
    (upload,) = [u for u in s3.list_multipart_uploads(Bucket="pipelite-test")["Uploads"]
                 if u["UploadId"] == mine["UploadId"]]
    started = upload["Initiated"].timestamp()
    assert store._fs.abort_uploads(started + 60, grace=3600) == 0  # maybe still uploading
    report = store.gc(grace=0)
    assert report.uploads == 1 and "aborted 1 interrupted upload(s)" in str(report)
    left = {u["UploadId"] for u in
            s3.list_multipart_uploads(Bucket="pipelite-test").get("Uploads", [])}
    assert mine["UploadId"] not in left and theirs["UploadId"] in left
    s3.abort_multipart_upload(Bucket="pipelite-test", Key="elsewhere/objects/y.npy",
                              UploadId=theirs["UploadId"])


def test_gc_drops_local_copies_of_objects_another_machine_deleted(s3_url, options, tmp_path,
                                                                  monkeypatch):
    @stage(outputs="v")
    def make():
        return list(range(1000))

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "here"))
    here = Pipeline(store=Store(s3_url, storage_options=options))
    here.run("make")
    cached = _cached_copy(here.store, "v")
    assert os.path.exists(cached)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "there"))
    there = Store(s3_url, storage_options=options)
    there.invalidate("make")
    there.gc(grace=0)  # the other machine deletes the object
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "here"))
    Store(s3_url, storage_options=options).gc(grace=0)
    assert not os.path.exists(cached)  # this machine's copy of it goes too


def test_the_local_cache_keeps_to_its_size_limit_least_recently_used_first(
        s3_url, options, tmp_path, monkeypatch):
    np = pytest.importorskip("numpy")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("PIPELITE_CACHE_LIMIT", "150K")
    for i in range(3):
        fn = eval(f"lambda: {{'a{i}': np.full(8000, {i}.0)}}",  # noqa: S307 - test stages
                  {"np": np})
        fn.__name__ = fn.__qualname__ = f"s{i}"
        stage(outputs=[f"a{i}"])(fn)
    pipeline = Pipeline(store=Store(s3_url, storage_options=options))
    assert pipeline.store.cache_limit == 150 * 1024
    pipeline.run()  # three 64 KiB arrays: more than the limit
    files = pipeline.store._fs._cache_files()
    assert sum(size for _, size, _ in files) <= 150 * 1024
    reader = Pipeline(store=Store(s3_url, storage_options=options))
    assert [float(reader.load(f"a{i}")[0]) for i in range(3)] == [0.0, 1.0, 2.0]
    assert float(reader.load("a0")[0]) == 0.0  # evicted copies are fetched again
    assert sum(size for _, size, _ in reader.store._fs._cache_files()) <= 150 * 1024
    assert Store("memory://x").cache_limit is not None  # remote: it has one
    with pytest.raises(Exception, match="a number of bytes"):
        reader.store.cache_limit = -1


def test_gc_max_size_on_an_object_store_removes_the_least_recently_used_first(
        s3_url, options, tmp_path, monkeypatch):
    """Issue 12: use stamps live in the bucket outside records/ (a load does not outdate the
    records' index), are read in one listing, and max_size goes by them there too."""
    np = pytest.importorskip("numpy")
    from pipelite import _retention

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))

    @stage(outputs="v")
    def f(*, n=0):
        return np.full(1000, n)

    pipe = Pipeline(store=Store(s3_url, storage_options=options), params={"f": {"n": 2}})
    for n in range(3):  # n=2 is the current, fresh result
        pipe.run("f", params={"f": {"n": n}})
    fs = pipe.store._fs
    assert fs.read_bytes(".gitignore").splitlines()[-1] == b"*"  # a new store's first write
    generation = fs.read_bytes("index/generation")
    tomorrow = time.time() + 86400
    monkeypatch.setattr(_retention, "now", lambda: tomorrow)
    assert pipe.run("f", params={"f": {"n": 0}}).executed == []  # n=0 used; n=1 never
    assert fs.read_bytes("index/generation") == generation
    records = {int(r.params["n"]): r for r in pipe.store.records_of("f")}
    assert fs.listdir("used/f") == [records[0].fingerprint]
    size = records[0].outputs["v"].size
    report = pipe.gc(keep=5, max_size=2 * size, grace=0)
    assert {int(r.params["n"]) for r in pipe.store.records_of("f")} == {0, 2}
    assert (report.least_used, report.records, report.objects) == (1, 1, 1)
    assert not fs.exists(records[1].outputs["v"].rel)
    assert pipe.run("f", params={"f": {"n": 0}}).executed == []


# -- storage options: the magic, IPython config, the CLI, AWS_* (item 5) ---------------------
def _flags(endpoint: str) -> list[str]:
    return ["key=test", "secret=test", f"client_kwargs.endpoint_url={endpoint}",
            "client_kwargs.region_name=us-east-1"]


def test_storage_options_are_parsed_from_key_value_pairs():
    from pipelite.store import parse_storage_options

    assert parse_storage_options(["key=K", "anon=false", "client_kwargs.endpoint_url=http://h:1",
                                  "config_kwargs.retries={\"max_attempts\": 2}"]) == {
        "key": "K", "anon": False, "client_kwargs": {"endpoint_url": "http://h:1"},
        "config_kwargs": {"retries": {"max_attempts": 2}}}
    for bad in ("novalue", "=x", "a..b=1"):
        with pytest.raises(Exception, match="is not KEY=VALUE"):
            parse_storage_options([bad])


def test_the_store_magic_takes_storage_options(ip, s3_url, moto_s3):
    import pipelite_ipy

    opts = " ".join(f"--option {f}" for f in _flags(moto_s3[0]))
    ip.run_line_magic("pipelite", f"store {s3_url} {opts}")
    session = pipelite_ipy.current_session()
    assert session.pipeline.store.url == s3_url
    assert session.storage_options["client_kwargs"]["endpoint_url"] == moto_s3[0]
    result = ip.run_cell("%%stage remote\nanswer = 41 + 1")
    assert result.success, result.error_in_exec
    assert session.pipeline.store.records_of("remote")  # written to the bucket
    from IPython.core.error import UsageError

    with pytest.raises(UsageError, match="is not KEY=VALUE"):
        ip.run_line_magic("pipelite", f"store {s3_url} --option nonsense")


def test_ipython_config_gives_the_store_and_its_storage_options(ip, s3_url, moto_s3):
    import pipelite_ipy
    from pipelite.store import parse_storage_options

    ip.run_line_magic("unload_ext", "pipelite")
    ip.config.PipeliteSession.store = s3_url
    ip.config.PipeliteSession.storage_options = parse_storage_options(_flags(moto_s3[0]))
    ip.run_line_magic("load_ext", "pipelite")
    session = pipelite_ipy.current_session()
    assert session.pipeline.store.url == s3_url
    result = ip.run_cell("%%stage configured\nv = 1")
    assert result.success, result.error_in_exec
    assert session.pipeline.store.records_of("configured")


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "pipelite.cli", *args], capture_output=True,
                          text=True, timeout=120, env=env)


@pytest.fixture
def filled(s3_url, options):
    @stage(outputs="x")
    def filled_stage():
        return 1

    Pipeline(store=Store(s3_url, storage_options=options)).run("filled_stage")
    return s3_url


def _no_aws_env(tmp_path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
               AWS_CONFIG_FILE=str(tmp_path / "none"), AWS_EC2_METADATA_DISABLED="true")
    return env


def test_the_cli_takes_storage_options(filled, moto_s3, tmp_path):
    flags = [a for f in _flags(moto_s3[0]) for a in ("--storage-option", f)]
    done = _cli("status", "--store", filled, *flags, env=_no_aws_env(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "filled_stage" in done.stdout


def test_the_cli_reads_the_usual_aws_variables(filled, moto_s3, tmp_path):
    env = _no_aws_env(tmp_path)
    env.update(AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test",
               AWS_ENDPOINT_URL=moto_s3[0], AWS_DEFAULT_REGION="us-east-1")
    done = _cli("status", "--store", filled, env=env)
    assert done.returncode == 0, done.stderr
    assert "filled_stage" in done.stdout


def test_pipelite_run_gives_the_kernel_its_storage_options(s3_url, moto_s3, tmp_path):
    """``pipelite run NB --store s3://... --storage-option ...`` with no AWS configuration at
    all: the kernel's session gets the options (not through the notebook's text: the
    executed notebook written with --output holds no credential)."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("%%stage remote_cli\nanswer = 41 + 1")]
    path = tmp_path / "remote.ipynb"
    nbformat.write(nb, path)
    flags = [a for f in _flags(moto_s3[0]) for a in ("--storage-option", f)]
    out = tmp_path / "ran.ipynb"
    done = _cli("run", str(path), "--store", s3_url, *flags, "--output", str(out),
                env=_no_aws_env(tmp_path))
    assert done.returncode == 0, done.stderr
    assert Store(s3_url, storage_options=moto_s3[1]).records_of("remote_cli")  # in the bucket
    assert "secret=test" not in out.read_text() and '"test"' not in out.read_text()
    env = _no_aws_env(tmp_path)
    env["PIPELITE_STORAGE_OPTIONS"] = "[1, 2]"  # by hand, and wrong: said, then ignored
    script = ("from IPython.core.interactiveshell import InteractiveShell\n"
              "ip = InteractiveShell.instance()\nip.run_line_magic('load_ext', 'pipelite')\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "PIPELITE_STORAGE_OPTIONS is not a JSON object" in done.stderr


def test_no_credentials_is_one_line_naming_what_to_set(filled, moto_s3, tmp_path):
    env = _no_aws_env(tmp_path)
    env["AWS_ENDPOINT_URL"] = moto_s3[0]
    done = _cli("status", "--store", filled, env=env)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and "botocore" not in done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"pipelite: error: no credentials for {filled}")
    assert "AWS_ACCESS_KEY_ID" in line and "--storage-option" in line


# -- metadata in bulk (item 4) ---------------------------------------------------------------
def _many(n: int, fail: str | None = None) -> None:
    for i in range(n):
        body = f"raise ValueError('boom {i}')" if f"m{i}" == fail else f"return {{'o{i}': {i}}}"
        src = f"def m{i}():\n    {body}\n"
        ns: dict = {}
        exec(src, ns)  # noqa: S102 - generated test stages
        stage(outputs=[f"o{i}"])(ns[f"m{i}"])


def _s3_requests(store: Store) -> list[str]:
    fs = store._fs.fs
    fs.connect()
    seen: list[str] = []
    fs.s3.meta.events.register("before-send.s3",
                               lambda request, **_: seen.append(request.method))
    return seen


def _states(pipeline: Pipeline) -> list[tuple]:
    return [(s.name, s.state, s.reasons, s.defined, tuple(o.hash for o in s.outputs))
            for s in pipeline.status()]


def test_a_status_of_many_stages_reads_the_store_in_a_few_requests(s3_url, options,
                                                                   monkeypatch):
    from pipelite import _fs

    _many(50, fail="m7")
    with pytest.raises(ValueError):
        Pipeline(store=Store(s3_url, storage_options=options)).run()
    Pipeline(store=Store(s3_url, storage_options=options)).run(
        [f"m{i}" for i in range(50) if i != 7])
    Pipeline(store=Store(s3_url, storage_options=options)).status()  # writes the index
    pipeline = Pipeline(store=Store(s3_url, storage_options=options))
    seen = _s3_requests(pipeline.store)
    bulk = _states(pipeline)
    assert len(seen) <= 2, seen  # the generation and the index: not ~4 per stage
    monkeypatch.setattr(_fs, "BULK_METADATA", False)
    plain = Pipeline(store=Store(s3_url, storage_options=options))
    seen = _s3_requests(plain.store)
    assert _states(plain) == bulk  # the same answer, file by file
    assert len(seen) > 100
    assert dict((n, s) for n, s, *_ in bulk)["m7"] == "failed"


def test_the_index_is_trusted_only_where_the_listing_vouches_for_it(s3_url, options):
    """An index not of the store's current generation (here: written by hand) is trusted
    per file, only where the listing's ETag is the MD5 of the content it holds."""
    _many(3)
    Pipeline(store=Store(s3_url, storage_options=options)).run()
    truth = _states(Pipeline(store=Store(s3_url, storage_options=options)))  # index written
    fs = Store(s3_url, storage_options=options)._fs
    index = json.loads(fs.read_bytes("index/records.json"))
    forged = dict(index["files"])
    for rel, text in forged.items():  # another content under each file's name
        if rel.endswith(".json"):
            forged[rel] = text.replace('"size": ', '"size": 1')  # claims other sizes
    fs.write_atomic("index/records.json", json.dumps({"files": forged}).encode())
    assert _states(Pipeline(store=Store(s3_url, storage_options=options))) == truth
    fs.write_atomic("index/records.json", b"not json")
    assert _states(Pipeline(store=Store(s3_url, storage_options=options))) == truth


def test_a_record_written_after_the_index_is_seen(s3_url, options):
    _many(2)
    Pipeline(store=Store(s3_url, storage_options=options)).run("m0")
    first = dict((n, s) for n, s, *_ in _states(
        Pipeline(store=Store(s3_url, storage_options=options))))
    assert first == {"m0": "fresh", "m1": "missing"}
    Pipeline(store=Store(s3_url, storage_options=options)).run("m1")  # another process, later
    later = dict((n, s) for n, s, *_ in _states(
        Pipeline(store=Store(s3_url, storage_options=options))))
    assert later == {"m0": "fresh", "m1": "fresh"}


def test_changes_by_another_machine_after_the_index_are_seen(s3_url, options):
    """Every change under records/ (a failure, an invalidate, gc dropping old results)
    replaces the generation, so the index written before it is not used as it is."""
    _many(3, fail="m2")
    Pipeline(store=Store(s3_url, storage_options=options)).run(["m0", "m1"])

    def states() -> dict:
        return dict((n, s) for n, s, *_ in _states(
            Pipeline(store=Store(s3_url, storage_options=options))))

    assert states() == {"m0": "fresh", "m1": "fresh", "m2": "missing"}  # the index is written
    with pytest.raises(ValueError):
        Pipeline(store=Store(s3_url, storage_options=options)).run("m2")
    assert states()["m2"] == "failed"
    Pipeline(store=Store(s3_url, storage_options=options)).invalidate("m0")
    assert states()["m0"] == "missing"
    _many(3)  # m1 computes something else now: a second result, then gc keeps the newest
    Pipeline(store=Store(s3_url, storage_options=options)).run("m1")
    assert states()["m1"] == "fresh"
    Store(s3_url, storage_options=options).gc(keep=1)
    assert states() == {"m0": "missing", "m1": "fresh", "m2": "missing"}


def test_an_index_of_the_current_generation_names_only_records(s3_url, options):
    """The index's names are read from the store: anything but a plain path under records/
    is left out of the snapshot, never opened."""
    _many(1)
    Pipeline(store=Store(s3_url, storage_options=options)).run()
    Pipeline(store=Store(s3_url, storage_options=options)).status()  # writes the index
    fs = Store(s3_url, storage_options=options)._fs
    index = json.loads(fs.read_bytes("index/records.json"))
    for hostile in ("records/../../../etc/passwd", "objects/aa/x.json", "/records/a",
                    "records/a/../../b"):
        index["files"][hostile] = "{}"
    index["files"][7] = "{}"
    fs.fs.pipe_file(fs.path("index/records.json"), json.dumps(index).encode())
    fs.snapshot_begin()
    try:
        assert fs._snap is not None
        assert sorted(fs._snap) == sorted(k for k in index["files"]
                                          if isinstance(k, str) and k.startswith("records/m0/"))
    finally:
        fs.snapshot_end()


def test_the_first_status_after_a_run_reads_no_record_it_wrote_itself(s3_url, options):
    """The run's records are new to the index, but this process wrote them: a listing whose
    ETags match what it wrote is enough, nothing is fetched again."""
    _many(20)
    Pipeline(store=Store(s3_url, storage_options=options)).run()
    pipeline = Pipeline(store=Store(s3_url, storage_options=options))
    seen = _s3_requests(pipeline.store)
    assert {s for _, s, *_ in _states(pipeline)} == {"fresh"}
    # the generation, the index, one listing, the new index: not 40 reads of records
    assert len(seen) <= 5, collections.Counter(seen)


def test_a_first_run_makes_a_few_requests_a_stage(s3_url, options):
    """Metadata reads in a run: the records come from the run's one snapshot, a record or a
    claim is read in one GET (s3fs would first HEAD it for its size), an object's size in one
    HEAD (fs.size would also list the key as a folder when it is absent)."""
    _many(20)
    pipeline = Pipeline(store=Store(s3_url, storage_options=options))
    seen = _s3_requests(pipeline.store)
    pipeline.run()
    # per stage: lease create, record re-read under it, object HEAD + PUT, record + LATEST
    # PUT, FAILED.json DELETE, one new generation, lease read + DELETE; and the snapshot's
    # few, once
    assert len(seen) <= 20 * 10 + 8, collections.Counter(seen)
    assert dict((n, s) for n, s, *_ in _states(pipeline)) == {f"m{i}": "fresh"
                                                                for i in range(20)}


def test_a_result_stored_elsewhere_after_the_runs_snapshot_is_found_under_the_lease(
        s3_url, options):
    """The run reads the records once, at its start; a machine that stores a stage's result
    after that must not make this run compute it again: under the lease, the record is read
    as the store has it now."""
    @stage(outputs="v")
    def shared():
        return 7

    elsewhere = Pipeline(store=Store(s3_url, storage_options=options))
    started: list[str] = []
    nested: list[bool] = []

    def meanwhile(event):  # the run has read the records: another machine stores the result
        if event.kind == "started":
            started.append(event.stage)
        if event.kind == "run_started" and not nested:
            nested.append(True)
            elsewhere.run("shared")

    unsubscribe = events.subscribe(meanwhile)
    try:
        result = Pipeline(store=Store(s3_url, storage_options=options)).run("shared")
    finally:
        unsubscribe()
    assert started == ["shared"]  # computed once, by the other machine
    assert result["v"] == 7


def test_a_snapshot_belongs_to_the_thread_that_took_it(s3_url, options):
    """A run in the panel's thread holds a snapshot for its whole length: a status() in the
    kernel's thread meanwhile must see what other machines stored since, and a store sent to
    a worker carries none."""
    store = Store(s3_url, storage_options=options)
    fs = store._fs
    fs.write_atomic("records/a/LATEST", b"old")
    taken, release = threading.Event(), threading.Event()

    def holder():
        with store.metadata_snapshot():
            taken.set()
            release.wait(10)
            assert fs.read_bytes("records/a/LATEST") == b"old"  # its own view, kept

    t = threading.Thread(target=holder)
    t.start()
    taken.wait(10)
    try:
        Store(s3_url, storage_options=options)._fs.write_atomic("records/a/LATEST", b"new")
        assert fs.read_bytes("records/a/LATEST") == b"new"  # this thread: as it is now
        sent = pickle.loads(pickle.dumps(fs))
        assert sent._snaps == {}
        assert sent.read_bytes("records/a/LATEST") == b"new"
    finally:
        release.set()
        t.join(10)


def test_switching_the_store_keeps_the_sessions_executor(ip, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    import pipelite_ipy

    session = pipelite_ipy.current_session()
    with ThreadPoolExecutor(2) as pool:
        session.pipeline.executor = pool
        ip.run_line_magic("pipelite", f"store {tmp_path / 'other'}")
        assert session.pipeline.store.url == str(tmp_path / "other")
        assert session.pipeline.executor is pool  # the cluster stays


def test_a_file_output_round_trips_through_s3(s3_url, options, tmp_path, monkeypatch):
    """A file output's bytes go to the bucket; deleted here, it comes back from there (its
    object downloaded and hashed, then copied into place)."""
    import warnings

    from pipelite import File, stage

    monkeypatch.chdir(tmp_path)

    @stage
    def render():
        (tmp_path / "out").mkdir(exist_ok=True)
        (tmp_path / "out" / "plot.svg").write_text("<svg>" + "x" * 5000 + "</svg>")
        return {"plot": File("out/plot.svg")}

    p = Pipeline(store=s3_url, storage_options=options)
    p.run("render")
    (tmp_path / "out" / "plot.svg").unlink()
    p.store.cache_limit = 0  # no local copy left: the restore downloads the object
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = Pipeline(store=s3_url, storage_options=options).run("render")
    assert again.executed == []
    assert (tmp_path / "out" / "plot.svg").read_text().startswith("<svg>xxx")
    assert any("restored out/plot.svg" in str(w.message) for w in caught)
