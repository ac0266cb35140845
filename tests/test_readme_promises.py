"""Promises the README makes, each checked (found missing by an audit of README vs tests)."""
import os
import numpy as np
import pytest
from pipelite import PipeliteWarning, stage, subscribe
from tests.helpers import notebook, run_cell


def _state(p, name):
    (s,) = [s for s in p.status() if s.name == name]
    return s


def test_library_version_change_is_named(pipeline, monkeypatch):
    from pipelite import _libraries
    ns = notebook()
    run_cell("""
        import numpy as np
        @stage(outputs="y")
        def f():
            return float(np.sum(np.arange(3)))
        """, ns)
    pipeline.run("f")
    old = pipeline.record("f").parts["helpers"]["np"][4:]  # e.g. numpy@2.4.6
    monkeypatch.setattr(np, "__version__", "0.0.1")
    _libraries.forget()
    try:
        s = _state(pipeline, "f")
        assert s.state == "stale"
        assert s.reasons == (f"library 'np' changed ({old} -> numpy@0.0.1)",)
    finally:
        _libraries.forget()


def test_input_changed_reason_names_the_producer(pipeline):
    ns = notebook()
    src = """
        @stage(outputs="raw")
        def load():
            return {v}
        @stage(outputs="total")
        def summarize(raw):
            return sum(raw)
        """
    run_cell(src.format(v="[1, 2, 3]"), ns)
    pipeline.run()
    run_cell(src.format(v="[1, 2, 3, 4]"), ns)
    pipeline.run("load")  # only the upstream reruns
    s = _state(pipeline, "summarize")
    assert s.state == "stale"
    assert s.reasons == ("input 'raw' changed (new content from stage 'load')",)


def test_a_stage_exception_carries_a_nothing_stored_note_and_a_failed_event(pipeline):
    @stage(outputs="v")
    def bad():
        raise ValueError("x")
    seen = []
    unsubscribe = subscribe(lambda e: seen.append((e.kind, e.stage)))
    try:
        with pytest.raises(ValueError) as err:
            pipeline.run("bad")
    finally:
        unsubscribe()
    assert any("nothing was stored" in n for n in err.value.__notes__)
    assert ("failed", "bad") in seen and ("finished", "bad") not in seen


def test_a_global_the_stage_mutates_is_named_in_a_warning_and_stays_fresh(pipeline):
    ns = notebook()
    run_cell("""
        SEEN = []
        @stage(outputs="y")
        def app():
            SEEN.append(1)
            return len(SEEN)
        """, ns)
    with pytest.warns(PipeliteWarning, match="global 'SEEN' changed"):
        assert pipeline.run("app").executed == ["app"]
    assert _state(pipeline, "app").state == "fresh"
    assert pipeline.run("app").executed == []


def test_parquet_objects_are_fsynced_before_rename(pipeline, monkeypatch):
    pd = pytest.importorskip("pandas")
    synced, real = [], os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}")) or real(fd))

    @stage(outputs="df")
    def mk():
        return pd.DataFrame({"a": [1, 2]})

    pipeline.run()
    assert any(p.endswith(".parquet") for p in synced), synced


def test_instance_attribute_mutation_makes_stage_stale(pipeline):
    ns = notebook()
    run_cell("""
        class Model:
            def __init__(self, w):
                self.w = w
        M = Model(2)
        @stage(outputs="y")
        def f():
            return M.w
        """, ns)
    pipeline.run("f")
    ns["M"].w = 3
    s = _state(pipeline, "f")
    assert s.state == "stale" and s.reasons == ("global 'M' changed",)
    assert pipeline.run("f")["y"] == 3


def test_an_array_read_by_many_stages_is_hashed_once_per_check(pipeline, monkeypatch):
    from pipelite._encode import Encoder
    ns = notebook()
    run_cell("import numpy as np\nARR = np.arange(100_000.0)", ns)
    for i in range(5):
        run_cell(f"@stage(outputs='y{i}')\ndef s{i}():\n    return float(ARR[{i}])\n", ns)
    pipeline.run()
    calls, real = [], Encoder._feed_numpy
    monkeypatch.setattr(Encoder, "_feed_numpy",
                        lambda self, h, v: (calls.append(1) if v is ns["ARR"] else None) or real(self, h, v))
    assert {s.state for s in pipeline.status()} == {"fresh"}
    assert len(calls) == 1


def test_status_reports_duration_and_output_size(pipeline):
    @stage(outputs="arr")
    def f():
        return np.zeros(10)
    pipeline.run()
    (s,) = pipeline.status()
    assert s.duration is not None and s.duration >= 0
    assert s.outputs[0].size == pipeline.record("f").outputs["arr"].size > 80
    assert s.outputs[0].format == "npy"
