"""Per-stage cache policies: cache=False, ignore=, expires_after=, and Pipeline.accept."""
from __future__ import annotations

import datetime as dt
import os

import pytest

from pipelite import (
    AcceptRefusedError,
    File,
    Pipeline,
    PipeliteError,
    StageDefinitionError,
    _freshness,
    stage,
)

SCALE = 2
_NOW = dt.datetime.now  # before any test moves the clock


def _log(tag):
    with open("calls.log", "a") as f:
        f.write(tag)


def _calls():
    return open("calls.log").read() if os.path.exists("calls.log") else ""


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


# -- cache=False ----------------------------------------------------------------------------
def _define_volatile(mod=3):
    @stage(outputs="raw", cache=False)
    def fetch(*, mod=mod):
        _log("f")
        return [i % mod for i in range(6)]

    @stage(outputs="total")
    def total(raw):
        _log("t")
        return sum(raw)


def test_a_stage_without_cache_runs_every_time_and_stores_nothing(store_dir):
    _define_volatile()
    p = Pipeline(store=str(store_dir))
    assert p.run("total")["total"] == 6
    assert p.run("fetch")["raw"] == [0, 1, 2, 0, 1, 2]
    assert _calls() == "ftf"
    assert not (store_dir / "records" / "fetch").exists()
    with pytest.raises(PipeliteError, match=r"never stored: stage 'fetch' is not cached.*"
                                            r"Use the value pipeline.run\('fetch'\) returns"):
        p.load("raw")
    with pytest.raises(PipeliteError, match=r"depends on stage 'fetch', which is not cached.*"
                                            r"pipeline.run\('total'\) returns"):
        p.load("total")
    status = {s.name: s for s in p.status()}
    assert status["fetch"].state == "stale"
    assert status["fetch"].reasons == ("not cached (cache=False): it runs every time it is "
                                       "needed",)


def test_downstream_of_an_uncached_stage_is_keyed_by_its_content(store_dir):
    _define_volatile()
    p = Pipeline(store=str(store_dir))
    p.run("total")
    p.run("total")  # fetch reruns, its output is the same: total is an early cut-off
    assert _calls() == "ftf"
    p.run("total", params={"fetch": {"mod": 2}})  # other content: total reruns
    assert _calls() == "ftfft"


def test_an_uncached_stage_on_a_thread_pool_feeds_downstream(store_dir):
    from concurrent.futures import ThreadPoolExecutor

    _define_volatile()
    with ThreadPoolExecutor(2) as pool:
        p = Pipeline(store=str(store_dir), executor=pool)
        assert p.run("total")["total"] == 6
        assert p.run("total")["total"] == 6
    assert _calls() == "ftf"


# -- ignore= ---------------------------------------------------------------------------------
def test_ignored_parameters_do_not_make_a_stage_stale(store_dir):
    @stage(outputs="m", ignore=["verbose", "n_jobs"])
    def model(*, alpha=1.0, verbose=False, n_jobs=1):
        _log("m")
        return alpha * 2

    p = Pipeline(store=str(store_dir))
    p.run("m" if False else "model")
    p.run("model", params={"model": {"verbose": True, "n_jobs": 8}})
    assert _calls() == "m"
    p.run("model", params={"model": {"alpha": 2.0, "verbose": True}})
    assert _calls() == "mm"


def test_an_ignored_global_does_not_make_a_stage_stale(store_dir):
    import types

    ns = types.ModuleType("nb")
    exec("VERBOSE = 0\nFACTOR = 3\n"
         "def g():\n    if VERBOSE:\n        print('x')\n    return FACTOR\n", ns.__dict__)
    stage(outputs="gv", ignore=["VERBOSE"])(ns.g)
    p = Pipeline(store=str(store_dir))
    p.run("g")
    ns.VERBOSE = 1
    assert p.status()[0].state == "fresh"
    ns.FACTOR = 4
    assert p.status()[0].reasons == ("global 'FACTOR' changed",)


def test_ignore_refuses_inputs_and_non_names():
    with pytest.raises(StageDefinitionError, match="names input 'x'"):
        @stage(outputs="y", ignore=["x"])
        def f(x):
            return x
    with pytest.raises(StageDefinitionError, match="not a list of parameter or global names"):
        @stage(outputs="z", ignore=[1])
        def h():
            return 1


# -- expires_after= -----------------------------------------------------------------------------
def _later(monkeypatch, hours):
    when = _NOW(dt.timezone.utc) + dt.timedelta(hours=hours)

    class Later(dt.datetime):
        @classmethod
        def now(cls, tz=None):
            return when

    monkeypatch.setattr(_freshness._dt, "datetime", Later)


def test_a_result_older_than_expires_after_is_stale_and_reruns(store_dir, monkeypatch):
    @stage(outputs="prices", expires_after="1d")
    def pull():
        _log("p")
        return [1, 2]

    p = Pipeline(store=str(store_dir))
    p.run("pull")
    _later(monkeypatch, 23)
    assert p.status()[0].state == "fresh"
    p.run("pull")
    _later(monkeypatch, 26)
    s = p.status()[0]
    assert s.state == "stale" and s.reasons == ("result expired (stored 26 h ago)",)
    p.run("pull")
    assert _calls() == "pp"


def test_expires_after_takes_durations_only():
    with pytest.raises(PipeliteError, match="is not a duration"):
        @stage(outputs="q", expires_after="soon")
        def q():
            return 1


# -- accept ------------------------------------------------------------------------------------
def _define_pair():
    @stage(outputs="x")
    def src(*, n=3):
        return list(range(n))

    @stage(outputs="y")
    def scaled(x, *, k=1):
        _log("s")
        return [v * SCALE for v in x]


def _refactor():
    @stage(outputs="y")
    def scaled(x, *, k=1):
        _log("s")
        out = [v * SCALE for v in x]  # the same result, written differently
        return out


def test_accept_adopts_a_refactor_without_running(store_dir):
    _define_pair()
    p = Pipeline(store=str(store_dir))
    p.run()
    _refactor()
    assert p.status()[1].reasons == ("its code changed",)
    record = p.accept("scaled")
    assert record.accepted["reasons"] == ["its code changed"]
    assert p.status()[1].state == "fresh"
    p.run()
    assert _calls() == "s"
    text = p.explain("scaled")
    assert "accepted:" in text and record.accepted["from"][:12] in text
    assert "its code changed" in text


def test_accept_takes_parameter_changes(store_dir):
    _define_pair()
    p = Pipeline(store=str(store_dir))
    p.run()
    p.params = {"scaled": {"k": 2}}
    p.accept("scaled")
    assert p.status()[1].state == "fresh"
    assert p.store.latest("scaled").params == {"k": "2"}


def test_accept_refuses_a_changed_input(store_dir):
    _define_pair()
    p = Pipeline(store=str(store_dir))
    p.run()
    p.params = {"src": {"n": 4}}
    with pytest.raises(AcceptRefusedError, match="upstream stage 'src' is stale"):
        p.accept("scaled")
    p.run("src")
    with pytest.raises(AcceptRefusedError, match="input 'x' changed.*Only changes to its code"):
        p.accept("scaled")
    assert p.status()[1].state == "stale"


def test_accept_refuses_a_changed_file(store_dir):
    with open("in.txt", "w") as f:
        f.write("1")

    @stage(outputs="c")
    def count(*, path=File("in.txt")):
        return path.read_text()

    p = Pipeline(store=str(store_dir))
    p.run()
    with open("in.txt", "w") as f:
        f.write("2")
    with pytest.raises(AcceptRefusedError, match="file 'in.txt' changed"):
        p.accept("count")


def test_accept_refuses_what_has_no_result_or_is_not_cached(store_dir):
    _define_pair()
    p = Pipeline(store=str(store_dir))
    with pytest.raises(AcceptRefusedError, match="no stored result|is missing"):
        p.accept("scaled")

    @stage(outputs="v", cache=False)
    def volatile():
        return 1

    with pytest.raises(AcceptRefusedError, match="not cached"):
        p.accept("volatile")


@stage(outputs="reading", cache=False)
def sensor():
    with open("sensor.pids", "a") as f:
        f.write(f"{os.getpid()}\n")
    return [1.5, 2.5]


@stage(outputs="doubled")
def double(reading):
    with open("double.pids", "a") as f:
        f.write(f"{os.getpid()}\n")
    return [2 * r for r in reading]


def test_an_uncached_stage_feeds_a_dask_worker_from_the_client(store_dir):
    """Its outputs live in the calling process only: it runs there, and what it made is sent
    with the downstream stage to the worker (never through the store)."""
    distributed = pytest.importorskip("distributed")
    import sys

    from pipelite import REGISTRY

    main = sys.modules["__main__"]
    if not hasattr(main, "__spec__"):  # as tests/test_executor.py: a shell left one without
        main.__spec__ = None
    for fn in (sensor, double):
        REGISTRY.add(fn.__pipelite_stage__)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                  dashboard_address=None, host="127.0.0.1") as cluster, \
            distributed.Client(cluster) as client:
        p = Pipeline(store=str(store_dir), executor=client)
        assert p.run("double")["doubled"] == [3.0, 5.0]
        assert p.run("double")["doubled"] == [3.0, 5.0]
        (worker,) = client.run(os.getpid).values()
    sensor_pids = open("sensor.pids").read().split()
    assert sensor_pids == [str(os.getpid())] * 2
    assert open("double.pids").read().split() == [str(worker)]  # once: then a hit
    assert not (store_dir / "records" / "sensor").exists()


def test_an_uncached_output_without_content_to_hash_always_reruns_downstream(store_dir):
    """A value PipeLite can only track by its type (a generator) must not look unchanged."""
    @stage(outputs="rows", cache=False)
    def stream():
        return (i for i in range(3))

    @stage(outputs="n")
    def consume(rows):
        _log("c")
        return sum(rows)

    p = Pipeline(store=str(store_dir))
    assert p.run("consume")["n"] == 3
    assert p.run("consume")["n"] == 3
    assert _calls() == "cc"


def test_policies_hold_for_async_stages(store_dir, monkeypatch):
    import asyncio

    @stage(outputs="feed", cache=False)
    async def poll():
        await asyncio.sleep(0)
        _log("p")
        return [1, 2]

    @stage(outputs="daily", expires_after="1d")
    async def summarise(feed):
        await asyncio.sleep(0)
        _log("s")
        return sum(feed)

    p = Pipeline(store=str(store_dir))
    assert p.run("summarise")["daily"] == 3
    assert p.run("summarise")["daily"] == 3
    assert _calls() == "psp"
    _later(monkeypatch, 25)
    p.run("summarise")  # the same input, but its result expired: it runs again
    assert _calls() == "psp" + "ps"


def test_accept_refuses_outputs_inferred_differently(store_dir):
    """Outputs inferred from ``return {...}`` are not in the fingerprint: accept must still
    see that the refactor changed them."""
    @stage
    def outs():
        return {"o1": 1}

    p = Pipeline(store=str(store_dir))
    p.run()

    @stage  # noqa: F811 - the notebook's cell, edited
    def outs():  # noqa: F811
        return {"o1": 1, "o2": 2}

    with pytest.raises(AcceptRefusedError, match=r"its outputs changed \(\['o1'\] -> "
                                                 r"\['o1', 'o2'\]\)"):
        p.accept("outs")


def test_accept_says_what_to_do_for_a_never_run_or_failed_stage(store_dir):
    @stage(outputs="never")
    def fresh_one():
        return 1

    @stage(outputs="boom")
    def breaks(*, n=1):
        raise ValueError("boom")

    p = Pipeline(store=str(store_dir))
    with pytest.raises(AcceptRefusedError, match=r"no stored result to accept. Run it: "
                                                 r"pipeline.run\('fresh_one'\)"):
        p.accept("fresh_one")
    with pytest.raises(ValueError):
        p.run("breaks")
    with pytest.raises(AcceptRefusedError, match=r"no stored result"):
        p.accept("breaks")


def test_a_misspelt_ignore_or_a_missing_input_file_is_said(store_dir):
    @stage(outputs="m2", ignore=["verbos"])
    def model2(*, alpha=1.0, verbose=False):
        return alpha

    @stage(outputs="r", ignore=["SCALE"])
    def reads_scale(*, path=File("no-such-file.csv")):
        return SCALE

    p = Pipeline(store=str(store_dir))
    with pytest.warns(Warning) as caught:
        p.status()
    said = [str(w.message) for w in caught]
    assert any("ignore= names ['verbos']" in m and "check the spelling" in m for m in said)
    assert any("input file 'no-such-file.csv' does not exist" in m for m in said)
    assert not any("'SCALE'" in m for m in said)  # a global it reads: rightly ignored


def test_a_cell_cannot_ignore_a_name_it_does_not_read():
    from pipelite import CellStage

    with pytest.raises(StageDefinitionError, match="--ignore VERBSOE: the cell reads no "
                                                   "global of that name"):
        CellStage("c", "y = 2 * x\nif VERBOSE:\n    print(y)", {}, ignore=["VERBSOE"])


def test_changing_a_policy_alone_reruns_nothing(store_dir):
    def define(**policies):
        @stage(outputs="p", **policies)
        def priced(*, rate=2):
            _log("p")
            return 10 * rate

    define()
    p = Pipeline(store=str(store_dir))
    p.run("priced")
    define(expires_after="1h")
    assert p.status()[0].state == "fresh"
    define(expires_after="1h", ignore=["rate"])  # counted before: its fingerprint changes once
    p.run("priced")
    p.run("priced", params={"priced": {"rate": 3}})
    assert _calls() == "pp"


def test_a_class_stage_can_ignore_a_constructor_argument(store_dir):
    @stage("fit", ignore=["verbose"])
    class Fit:
        def __init__(self, alpha=1.0, verbose=False):
            self.alpha, self.verbose = alpha, verbose

        def run(self):
            _log("f")
            return {"coef": self.alpha}

    p = Pipeline(store=str(store_dir))
    p.run("fit")
    p.run("fit", params={"fit": {"verbose": True}})
    p.run("fit", params={"fit": {"alpha": 2.0}})
    assert _calls() == "ff"
