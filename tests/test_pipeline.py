"""Running, status, explanations, loading, invalidation and gc through the public API."""
from __future__ import annotations

import mmap
import os

import numpy as np
import pytest

from pipelite import (
    CycleError,
    MissingInputError,
    Pipeline,
    PipeliteError,
    StaleArtifactError,
    UnknownArtifactError,
    UnknownStageError,
    stage,
)


class Calls:
    """Which stages really ran, logged to a file (a side effect the cache cannot replay)."""

    def __init__(self, path):
        self.path = str(path)

    def log(self, name):
        with open(self.path, "a") as f:
            f.write(name + "\n")

    def __eq__(self, other):
        try:
            return open(self.path).read().split() == other
        except FileNotFoundError:
            return other == []

    def __repr__(self):
        try:
            return repr(open(self.path).read().split())
        except FileNotFoundError:
            return "[]"


@pytest.fixture
def chain(tmp_path):
    """a -> b -> c, each logging its calls."""
    log = str(tmp_path / "calls.log")

    def record(name):
        with open(log, "a") as f:
            f.write(name + "\n")

    @stage(outputs="x")
    def a():
        record("a")
        return 1

    @stage(outputs="y")
    def b(x):
        record("b")
        return x + 1

    @stage(outputs="z")
    def c(y):
        record("c")
        return y * 10

    return Calls(log)


def states(pipeline):
    return {s.name: s.state for s in pipeline.status()}


def test_run_executes_upstream_first_and_returns_the_target_outputs(pipeline, chain):
    result = pipeline.run("c")
    assert dict(result) == {"z": 20}
    assert chain == ["a", "b", "c"]
    assert result.executed == ["a", "b", "c"]


def test_a_second_run_recomputes_nothing(pipeline, chain):
    pipeline.run("c")
    result = pipeline.run("c")
    assert chain == ["a", "b", "c"]
    assert result.executed == [] and result["z"] == 20


def test_run_without_a_target_runs_every_stage(pipeline, chain):
    result = pipeline.run()
    assert chain == ["a", "b", "c"]
    assert dict(result) == {"x": 1, "y": 2, "z": 20}


def test_run_accepts_a_list_of_targets_and_the_decorated_objects(pipeline, chain):
    assert dict(pipeline.run(["a", "b"])) == {"x": 1, "y": 2}
    from pipelite import REGISTRY

    assert pipeline.run(REGISTRY.get("c").fn)["z"] == 20


def test_fresh_upstream_stages_are_not_loaded(pipeline, chain):
    pipeline.run("c")
    # remove a's stored value: running the fresh c must not need it
    rec = pipeline.record("a")
    os.remove(pipeline.store.object_path(rec.outputs["x"]))
    assert pipeline.run("c")["z"] == 20


def test_force_recomputes_the_targets_but_not_their_fresh_upstreams(pipeline, chain):
    pipeline.run("c")
    result = pipeline.run("c", force=True)
    assert result.executed == ["c"]
    assert chain == ["a", "b", "c", "c"]


def test_status_names_every_state(pipeline, chain):
    assert states(pipeline) == {"a": "missing", "b": "missing", "c": "missing"}
    pipeline.run("a")
    s = {x.name: x for x in pipeline.status()}
    assert s["a"].state == "fresh" and s["a"].last_run is not None
    assert s["a"].outputs[0].name == "x" and s["a"].outputs[0].format == "json"
    assert s["b"].state == "missing" and s["b"].reasons == ("no stored result",)
    assert s["c"].reasons == ("upstream stage 'b' is missing: no stored result",)


@pytest.mark.filterwarnings("ignore:stage 'slow' changed what it reads")  # it records `seen`
def test_status_reports_running_while_a_stage_runs(pipeline):
    seen = {}

    @stage(outputs="v")
    def slow():
        seen.update(states(pipeline))
        return 1

    pipeline.run("slow")
    assert seen == {"slow": "running"}
    assert states(pipeline)["slow"] != "running"


def test_a_failing_stage_stores_nothing_keeps_the_previous_result_and_is_failed(pipeline,
                                                                              tmp_path):
    boom = str(tmp_path / "boom")  # a switch outside the fingerprint

    @stage(outputs="v")
    def f():
        if os.path.exists(boom):
            raise ValueError("bad input")
        return 1

    pipeline.run("f")
    before = pipeline.store.stages(), pipeline.store.records_of("f")
    open(boom, "w").close()
    with pytest.raises(ValueError, match="bad input"):
        pipeline.run("f", force=True)
    assert pipeline.store.records_of("f") == before[1]  # nothing new stored
    (s,) = pipeline.status()
    assert s.state == "failed" and s.error == "ValueError: bad input"
    assert s.reasons == ("last run failed: ValueError: bad input",)
    os.remove(boom)
    assert pipeline.run("f").executed == ["f"]  # a failed stage is retried
    assert states(pipeline) == {"f": "fresh"}


def test_keyboard_interrupt_in_a_stage_stores_nothing_and_propagates(pipeline):
    @stage(outputs="v")
    def f():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pipeline.run("f")
    assert pipeline.store.records_of("f") == []
    assert states(pipeline) == {"f": "failed"}


def test_downstream_of_a_failed_stage_is_not_fresh(pipeline):
    @stage(outputs="x")
    def a():
        raise RuntimeError("nope")

    @stage(outputs="y")
    def b(x):
        return x

    with pytest.raises(RuntimeError):
        pipeline.run("b")
    s = {x.name: x for x in pipeline.status()}
    assert s["a"].state == "failed" and s["b"].reasons == (
        "upstream stage 'a' is failed: last run failed: RuntimeError: nope",)


def test_explain_says_why_in_words(pipeline, chain):
    pipeline.run("c")
    assert "is fresh" in pipeline.explain("c")
    pipeline.invalidate("a")
    text = pipeline.explain("c")
    assert "stage 'c' is stale" in text
    # the root cause, two stages up, and the direct parent it comes through
    assert "upstream stage 'a' is missing: no stored result (via 'b')" in text


def test_plan_lists_what_run_would_execute_without_running_it(pipeline, chain):
    plan = pipeline.plan("c")
    assert [p.name for p in plan] == ["a", "b", "c"]
    assert plan[0].reasons == ("no stored result",)
    assert chain == [] and states(pipeline)["a"] == "missing"
    pipeline.run("c")
    assert pipeline.plan("c") == []
    assert [p.name for p in pipeline.plan("c", force=True)] == ["c"]


def test_load_returns_the_stored_value_read_only_and_memory_mapped(pipeline):
    @stage(outputs="arr")
    def f():
        return np.arange(10.0)

    pipeline.run("f")
    arr = pipeline.load("arr")
    base = arr
    while base is not None and not isinstance(base, (mmap.mmap, np.memmap)):
        base = getattr(base, "base", None) if not isinstance(base, memoryview) else base.obj
    assert base is not None, "not backed by a memory map"
    assert not arr.flags.writeable
    with pytest.raises(ValueError):
        arr[0] = 5


def test_load_refuses_a_stale_artifact(pipeline):
    ns = {"K": 1}

    @stage(outputs="v")
    def f():
        return ns["K"]

    pipeline.run("f")
    global K_SETTING
    K_SETTING = 1

    @stage(outputs="w")
    def g():
        return K_SETTING

    pipeline.run("g")
    K_SETTING = 2
    with pytest.raises(StaleArtifactError, match=r"stage 'g' is stale.*pipeline.run\('g'\)"):
        pipeline.load("w")


def test_load_of_an_unknown_artifact_suggests_a_close_name(pipeline, chain):
    pipeline.run("a")
    with pytest.raises(UnknownArtifactError, match="did you mean 'x'"):
        pipeline.load("x_")


def test_an_unknown_stage_suggests_a_close_name(pipeline, chain):
    with pytest.raises(UnknownStageError, match="did you mean 'a'"):
        pipeline.run("aa")


def test_a_missing_input_says_which_artifact_and_how_to_fix(pipeline):
    @stage(outputs="y")
    def needs(nothing_makes_this):
        return 1

    with pytest.raises(MissingInputError, match="needs artifact 'nothing_makes_this'"):
        pipeline.run("needs")


def test_a_cycle_is_reported_with_its_stages(pipeline):
    @stage(outputs="p")
    def one(q):
        return q

    @stage(outputs="q")
    def two(p):
        return p

    with pytest.raises(CycleError, match="cycle"):
        pipeline.run("one")
    # status and the graph still work, and say where the cycle is
    states = {s.name: s for s in pipeline.status()}
    assert states["one"].state == "missing" and "part of a cycle" in states["one"].reasons[0]
    assert 's0["one"]' in pipeline.graph()


def test_invalidate_forgets_a_stage_and_its_dependents_become_stale(pipeline, chain):
    pipeline.run()
    assert pipeline.invalidate("b") == 1
    assert states(pipeline) == {"a": "fresh", "b": "missing", "c": "stale"}
    pipeline.invalidate("x")  # an artifact name invalidates its producer
    assert states(pipeline)["a"] == "missing"


def test_a_flipped_byte_in_a_small_file_is_detected_and_recomputed(pipeline, chain):
    pipeline.run("a")
    info = pipeline.record("a").outputs["x"]
    path = pipeline.store.object_path(info)
    data = bytearray(open(path, "rb").read())
    data[0] ^= 0xFF
    open(path, "wb").write(bytes(data))
    with pytest.warns(UserWarning, match=rf"{path}.*corrupt.*recomputing stage 'a'"):
        assert pipeline.run("a")["x"] == 1
    assert chain == ["a", "a"]


def test_stage_names_cannot_escape_the_store(pipeline, tmp_path):
    with pytest.raises(ValueError):
        stage("../../evil")
    # artifact names never become paths: objects are named by their content hash
    @stage(outputs="v")
    def f():
        return 1

    pipeline.run("f")
    inside = {p.name for p in tmp_path.rglob("*")}
    assert "v" not in inside


def test_a_user_mistake_shows_no_pipelite_internals(tmp_path):
    import subprocess
    import sys

    script = tmp_path / "script.py"
    script.write_text(
        "from pipelite import stage, Pipeline\n"
        "@stage('t')\n"
        "class T:\n"
        "    def __init__(self, epochs): pass\n"
        "    def run(self): return {'w': 1}\n"
        f"Pipeline({str(tmp_path / 'store')!r}).run('t')\n"
    )
    err = subprocess.run([sys.executable, str(script)], capture_output=True, text=True).stderr
    frames = [line for line in err.splitlines() if line.strip().startswith("File ")]
    assert "ParameterError: stage 't' needs parameter 'epochs'" in err
    assert len(frames) == 2 and "script.py" in frames[0]  # the user's line, then the raise


def test_after_a_restart_stages_known_only_from_the_store_are_listed_and_used(store_dir,
                                                                              chain):
    from pipelite import REGISTRY

    Pipeline(store_dir).run()
    REGISTRY.remove("a")  # as after a kernel restart, before a's cell has run again
    REGISTRY.remove("b")
    p = Pipeline(store_dir)
    s = {x.name: x for x in p.status()}
    assert not s["a"].defined and s["a"].state == "fresh"
    assert "not defined in this session" in s["a"].reasons[0]
    assert s["c"].defined and s["c"].state == "fresh"
    assert p.run("c").executed == [] and p.load("y") == 2
    with pytest.raises(PipeliteError, match="not defined in this session"):
        p.run("a")


def test_run_result_carries_the_target_records_and_producers_lists_every_artifact(pipeline,
                                                                                  chain):
    result = pipeline.run("b")
    assert set(result.records) == {"b"}
    assert result.records["b"].outputs["y"].hash == pipeline.record("b").outputs["y"].hash
    assert pipeline.producers() == {"x": "a", "y": "b", "z": "c"}


def test_status_lists_stages_in_definition_order_each_after_what_it_needs(pipeline):
    @stage(outputs="z_out")
    def zeta():
        return 1

    @stage(outputs="m_out")
    def mid(z_out, a_out):  # defined before one of its inputs' producers
        return 1

    @stage(outputs="a_out")
    def alpha():
        return 1

    @stage(outputs="b_out")
    def beta():
        return 1

    assert [s.name for s in pipeline.status()] == ["zeta", "alpha", "mid", "beta"]


def test_a_failed_stage_status_carries_its_traceback(pipeline):
    @stage(outputs="v")
    def broken():
        raise ValueError("deep problem")

    with pytest.raises(ValueError):
        pipeline.run("broken")
    (s,) = pipeline.status()
    assert "deep problem" in s.traceback and "in broken" in s.traceback
    assert "pipelite/pipeline.py" not in s.traceback  # the user's frames only


def test_status_reports_duration_and_output_size(pipeline):
    @stage(outputs="arr")
    def f():
        return np.zeros(10)
    pipeline.run()
    (s,) = pipeline.status()
    assert s.duration is not None and s.duration >= 0
    assert s.outputs[0].size == pipeline.record("f").outputs["arr"].size > 80
    assert s.outputs[0].format == "npy"


def test_parameters_for_a_stage_that_does_not_exist_are_an_error(pipeline, chain):
    from pipelite import ParameterError

    with pytest.raises(ParameterError, match="no such stage; did you mean 'b'"):
        pipeline.run("b", params={"bb": {"k": 3}})


def test_a_positional_input_with_a_default_hints_at_keyword_only(pipeline):
    @stage(outputs="y")
    def posdef(extra=5):
        return extra

    with pytest.raises(MissingInputError,
                       match=r"make it keyword-only: def posdef\(\.\.\., \*, extra=5\)"):
        pipeline.run("posdef")


def test_a_missing_input_names_stages_whose_outputs_are_not_known_yet(pipeline):
    @stage
    def up():
        d = {"a": 1}
        return d

    @stage(outputs="y")
    def down(a):
        return a

    with pytest.raises(MissingInputError, match=r"not known until they first run: up"):
        pipeline.run("down")


def test_a_deleted_global_is_reported_as_no_longer_defined(pipeline):
    ns = {"__name__": "__main__", "stage": stage}
    from tests.helpers import run_cell

    run_cell("""
        THRESH = 1
        @stage(outputs="y")
        def f():
            return THRESH
        """, ns)
    pipeline.run("f")
    del ns["THRESH"]
    (s,) = pipeline.status()
    assert s.state == "stale" and s.reasons == ("global 'THRESH' is no longer defined",)


def test_a_long_chain_defined_downstream_first_is_ordered_without_recursion_limits(pipeline):
    ns = {"__name__": "__main__", "stage": stage}
    n = 1500  # deeper than Python's default recursion limit
    for i in reversed(range(n)):
        src = (f"@stage(outputs='a{i}')\ndef s{i}(a{i - 1}):\n    return a{i - 1} + 1\n" if i
               else "@stage(outputs='a0')\ndef s0():\n    return 0\n")
        exec(src, ns)
    names = [s.name for s in pipeline.status()]
    assert names == [f"s{i}" for i in range(n)]
