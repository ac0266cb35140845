"""Every rule of the fingerprint, each with a test that fails without the rule.

The pattern: define stages the way a notebook does, run them, change one thing, and check
that exactly the stages that depend on it turn stale (and name the reason), and that
changes that do not matter leave them fresh.
"""
from __future__ import annotations

import os
import sys
import textwrap
import warnings

import numpy as np
import pytest

import pipelite._fs
import pipelite._integrity
import pipelite.formats
import pipelite.store
from pipelite import Pipeline, PipeliteWarning, stage
from tests.helpers import notebook, notebook_main, run_cell


def state(pipeline: Pipeline, name: str):
    (s,) = [s for s in pipeline.status() if s.name == name]
    return s


def fresh_after_edit(pipeline, ns, first: str, second: str, name: str = "f"):
    """Define with ``first``, run, redefine with ``second``; return the stage status."""
    run_cell(first, ns)
    pipeline.run(name)
    assert state(pipeline, name).state == "fresh"
    run_cell(second, ns)
    return state(pipeline, name)


# -- normalised code -------------------------------------------------------------------------
def test_editing_a_comment_keeps_the_stage_fresh(pipeline):
    ns = notebook()
    s = fresh_after_edit(pipeline, ns, """
        @stage(outputs="y")
        def f():
            return 1  # one
        """, """
        @stage(outputs="y")
        def f():
            # a new comment line
            return 1  # uno
        """)
    assert s.state == "fresh", s.reasons


def test_blank_lines_and_moving_the_code_keep_the_stage_fresh(pipeline):
    ns = notebook()
    s = fresh_after_edit(pipeline, ns, """
        @stage(outputs="y")
        def f():
            return 1
        """, """


        x_unrelated_line = 0
        @stage(outputs="y")
        def f():

            return 1

        """)
    assert s.state == "fresh", s.reasons


def test_editing_a_docstring_keeps_the_stage_fresh(pipeline):
    ns = notebook()
    s = fresh_after_edit(pipeline, ns, '''
        @stage(outputs="y")
        def f():
            """Old words."""
            return 1
        ''', '''
        @stage(outputs="y")
        def f():
            """New, better words."""
            return 1
        ''')
    assert s.state == "fresh", s.reasons


def test_changing_the_code_makes_the_stage_stale(pipeline):
    ns = notebook()
    s = fresh_after_edit(pipeline, ns, """
        @stage(outputs="y")
        def f():
            return 1
        """, """
        @stage(outputs="y")
        def f():
            return 2
        """)
    assert s.state == "stale"
    assert "its code changed" in s.reasons
    assert pipeline.run("f")["y"] == 2


def test_changing_only_an_operator_makes_the_stage_stale(pipeline):
    ns = notebook()
    s = fresh_after_edit(pipeline, ns, """
        A, B = 5, 3
        @stage(outputs="y")
        def f():
            return A + B
        """, """
        A, B = 5, 3
        @stage(outputs="y")
        def f():
            return A - B
        """)
    assert s.state == "stale" and "its code changed" in s.reasons
    assert pipeline.run("f")["y"] == 2


def test_editing_a_class_stage_method_makes_it_stale(pipeline):
    ns = notebook()
    s = fresh_after_edit(pipeline, ns, """
        @stage("f")
        class F:
            def run(self):
                return {"y": self.helper()}
            def helper(self):
                return 1
        """, """
        @stage("f")
        class F:
            def run(self):
                return {"y": self.helper()}
            def helper(self):
                return 2
        """)
    assert s.state == "stale"
    assert pipeline.run("f")["y"] == 2


# -- reachable helpers -------------------------------------------------------------------------
def test_editing_a_helper_function_makes_the_stage_stale(pipeline):
    ns = notebook()
    run_cell("""
        def clean(x):
            return x + 1
        @stage(outputs="y")
        def f():
            return clean(1)
        @stage(outputs="z")
        def g():
            return 5
        """, ns)
    pipeline.run()
    run_cell("""
        def clean(x):
            return x + 2
        """, ns)
    assert state(pipeline, "f").state == "stale"
    assert "helper 'clean' changed" in state(pipeline, "f").reasons
    assert state(pipeline, "g").state == "fresh"  # does not call clean
    assert pipeline.run("f")["y"] == 3


def test_editing_a_helper_of_a_helper_makes_the_stage_stale(pipeline):
    ns = notebook()
    run_cell("""
        def inner(x):
            return x * 2
        def outer(x):
            return inner(x) + 1
        @stage(outputs="y")
        def f():
            return outer(1)
        """, ns)
    pipeline.run("f")
    run_cell("""
        def inner(x):
            return x * 3
        """, ns)
    s = state(pipeline, "f")
    assert s.state == "stale"
    assert "helper 'inner' changed" in s.reasons


def test_editing_a_helper_class_method_makes_the_stage_stale(pipeline):
    ns = notebook()
    src = """
        class Scaler:
            factor = 2
            def apply(self, x):
                return x * {k}
        @stage(outputs="y")
        def f():
            return Scaler().apply(3)
        """
    run_cell(src.format(k="self.factor"), ns)
    pipeline.run("f")
    run_cell(src.format(k="self.factor + 1"), ns)
    s = state(pipeline, "f")
    assert s.state == "stale" and "helper 'Scaler' changed" in s.reasons


def test_changing_a_helper_class_attribute_makes_the_stage_stale(pipeline):
    ns = notebook()
    src = """
        class Scaler:
            factor = {k}
        @stage(outputs="y")
        def f():
            return Scaler.factor
        """
    run_cell(src.format(k=2), ns)
    pipeline.run("f")
    run_cell(src.format(k=3), ns)
    assert state(pipeline, "f").state == "stale"


def test_changing_a_value_captured_by_a_closure_makes_the_stage_stale(pipeline):
    ns = notebook()
    run_cell("""
        def make_scaler(k):
            def scale(x):
                return x * k
            return scale
        scale = make_scaler(2)
        @stage(outputs="y")
        def f():
            return scale(10)
        """, ns)
    pipeline.run("f")
    run_cell("scale = make_scaler(2)", ns)
    assert state(pipeline, "f").state == "fresh"  # same captured value: no false stale
    run_cell("scale = make_scaler(3)", ns)
    s = state(pipeline, "f")
    assert s.state == "stale"
    assert s.reasons == ("closure 'k' of scale changed",)
    assert pipeline.run("f")["y"] == 30


@pytest.mark.parametrize("signature", ["x, hi=LIMIT", "x, *, hi=LIMIT"])
def test_changing_a_helper_default_argument_makes_the_stage_stale(pipeline, signature):
    # the default is evaluated when the helper is defined: its source does not change
    ns = notebook()
    src = f"""
        def clip({signature}):
            return min(x, hi)
        @stage(outputs="y")
        def f():
            return clip(100)
        """
    run_cell("LIMIT = 5", ns)
    run_cell(src, ns)
    pipeline.run("f")
    run_cell("LIMIT = 7\n", ns)
    assert state(pipeline, "f").state == "fresh"  # clip still has hi=5
    run_cell(src, ns)
    s = state(pipeline, "f")
    assert s.state == "stale"
    assert any("defaults of clip" in r for r in s.reasons), s.reasons
    assert pipeline.run("f")["y"] == 7


def test_an_imported_user_module_counts_as_loaded_not_as_on_disk(pipeline, tmp_path,
                                                                   monkeypatch):
    import importlib

    mod = tmp_path / "my_helpers_mod.py"
    mod.write_text("def clean(x):\n    return x + 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    ns = notebook()
    run_cell("""
        import my_helpers_mod
        @stage(outputs="y")
        def f():
            return my_helpers_mod.clean(1)
        """, ns)
    try:
        assert pipeline.run("f")["y"] == 2
        mod.write_text("def clean(x):\n    return x + 5\n")
        # edited on disk but not reloaded: Python still runs the old code, so the stored
        # result is still the one this code gives
        assert state(pipeline, "f").state == "fresh"
        importlib.reload(ns["my_helpers_mod"])
        s = state(pipeline, "f")
        assert s.state == "stale" and "helper 'np' changed" not in s.reasons
        assert pipeline.run("f")["y"] == 6
    finally:
        sys.modules.pop("my_helpers_mod", None)


def test_a_module_imported_inside_the_stage_is_tracked(pipeline, tmp_path, monkeypatch):
    mod = tmp_path / "late_mod.py"
    mod.write_text("def f(x):\n    return x + 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    ns = notebook()
    run_cell("""
        @stage(outputs="y")
        def apply(*, x=1):
            import late_mod
            return late_mod.f(x)
        """, ns)
    try:
        assert pipeline.run("apply")["y"] == 2
        assert state(pipeline, "apply").state == "fresh"  # importing it changed nothing
        sys.modules.pop("late_mod")  # as after a restart, before anything imports it
        assert state(pipeline, "apply").state == "fresh"
        mod.write_text("def f(x):\n    return x + 1000\n")
        s = state(pipeline, "apply")
        assert s.state == "stale" and "imported module 'late_mod' changed" in s.reasons
        assert pipeline.run("apply")["y"] == 1001
    finally:
        sys.modules.pop("late_mod", None)


def test_runtime_state_of_a_user_module_is_tracked(pipeline, tmp_path, monkeypatch):
    mod = tmp_path / "scaling_mod.py"
    mod.write_text("FACTOR = 2\ndef scale(x):\n    return x * FACTOR\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    ns = notebook()
    run_cell("""
        import scaling_mod
        @stage(outputs="y")
        def f():
            return scaling_mod.scale(1)
        """, ns)
    try:
        assert pipeline.run("f")["y"] == 2
        ns["scaling_mod"].FACTOR = 5
        assert state(pipeline, "f").state == "stale"
        assert pipeline.run("f")["y"] == 5
    finally:
        sys.modules.pop("scaling_mod", None)


def test_library_functions_are_tracked_by_module_and_version_not_source(pipeline):
    ns = notebook()
    run_cell("""
        import numpy as np
        from json import dumps
        @stage(outputs="y")
        def f():
            return dumps([float(np.sum(np.arange(3)))])
        """, ns)
    pipeline.run("f")
    helpers = pipeline.record("f").parts["helpers"]
    assert helpers["np"] == f"lib:numpy@{np.__version__}"
    assert helpers["dumps"].startswith("lib:json.dumps@python-")


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
        s = state(pipeline, "f")
        assert s.state == "stale"
        assert s.reasons == (f"library 'np' changed ({old} -> numpy@0.0.1)",)
    finally:
        _libraries.forget()


# -- globals by content -------------------------------------------------------------------------
@pytest.mark.parametrize("before, after", [
    ("3", "4"),
    ("'a'", "'b'"),
    ("[1, 2, {'k': (1, 2)}]", "[1, 2, {'k': (1, 3)}]"),
    ("{1, 2}", "{1, 3}"),
    ("np.zeros(5)", "np.ones(5)"),
    ("np.zeros(5)", "np.zeros(5, dtype=np.float32)"),
    ("pd.DataFrame({'a': [1, 2]})", "pd.DataFrame({'a': [1, 3]})"),
    ("pd.DataFrame({'a': [1, 2]})", "pd.DataFrame({'b': [1, 2]})"),
])
def test_changing_a_global_value_makes_the_stage_stale(pipeline, before, after):
    ns = notebook()
    run_cell(f"""
        import numpy as np, pandas as pd
        SETTING = {before}
        @stage(outputs="y")
        def f():
            return repr(SETTING)
        """, ns)
    pipeline.run("f")
    run_cell(f"SETTING = {before}", ns)  # an equal value rebuilt: still fresh
    assert state(pipeline, "f").state == "fresh"
    run_cell(f"SETTING = {after}", ns)
    s = state(pipeline, "f")
    assert s.state == "stale"
    assert "global 'SETTING' changed" in s.reasons


def test_mutating_a_global_in_place_makes_the_stage_stale(pipeline):
    ns = notebook()
    run_cell("""
        CONFIG = {"lr": 0.1}
        @stage(outputs="y")
        def f():
            return CONFIG["lr"]
        """, ns)
    pipeline.run("f")
    ns["CONFIG"]["lr"] = 0.2
    assert state(pipeline, "f").state == "stale"


def test_changing_a_global_the_stage_does_not_read_keeps_it_fresh(pipeline):
    ns = notebook()
    run_cell("""
        USED, UNUSED = 1, 1
        @stage(outputs="y")
        def f():
            return USED
        """, ns)
    pipeline.run("f")
    run_cell("UNUSED = 2", ns)
    assert state(pipeline, "f").state == "fresh"


def test_a_global_read_by_a_helper_is_tracked(pipeline):
    ns = notebook()
    run_cell("""
        THRESHOLD = 0.5
        def keep(x):
            return x > THRESHOLD
        @stage(outputs="y")
        def f():
            return keep(0.7)
        """, ns)
    pipeline.run("f")
    run_cell("THRESHOLD = 0.9", ns)
    s = state(pipeline, "f")
    assert s.state == "stale"
    assert "THRESHOLD (read by keep) changed" in s.reasons, s.reasons
    assert pipeline.run("f")["y"] is False


def test_an_unhashable_global_warns_once_naming_it_and_is_tracked_by_type(pipeline):
    ns = notebook()
    run_cell("""
        GEN = (i for i in range(3))
        @stage(outputs="y")
        def f():
            return GEN is not None
        """, ns)
    with pytest.warns(PipeliteWarning, match="builtins.generator"):
        pipeline.run("f")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second warning would raise
        assert state(pipeline, "f").state == "fresh"
    run_cell("GEN = (i for i in range(5))", ns)
    assert state(pipeline, "f").state == "fresh"  # only its type is known


def test_a_lock_is_plumbing_not_data_and_raises_no_warning(pipeline):
    ns = notebook()
    run_cell("""
        import threading
        LOCK = threading.Lock()
        @stage(outputs="y")
        def f():
            with LOCK:
                return 1
        """, ns)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PipeliteWarning)
        pipeline.run("f")
        assert state(pipeline, "f").state == "fresh"


def test_an_array_read_by_many_stages_is_hashed_once_per_check(pipeline, monkeypatch):
    from pipelite._encode import Encoder
    ns = notebook()
    run_cell("import numpy as np\nARR = np.arange(100_000.0)", ns)
    for i in range(5):
        run_cell(f"@stage(outputs='y{i}')\ndef s{i}():\n    return float(ARR[{i}])\n", ns)
    pipeline.run()
    calls, real = [], Encoder._feed_numpy
    monkeypatch.setattr(Encoder, "_feed_numpy",
                        lambda self, h, v: (calls.append(1) if v is ns["ARR"] else None)
                        or real(self, h, v))
    assert {s.state for s in pipeline.status()} == {"fresh"}
    assert len(calls) == 1


# -- parameters -------------------------------------------------------------------------------
def test_changing_a_parameter_makes_the_stage_stale_and_says_old_and_new(store_dir):
    ns = notebook()
    run_cell("""
        @stage("train")
        class Train:
            def __init__(self, epochs: int, lr: float = 0.1):
                self.epochs, self.lr = epochs, lr
            def run(self):
                return {"w": self.epochs * self.lr}
        """, ns)
    Pipeline(store_dir, params={"train": {"epochs": 5}}).run("train")
    p = Pipeline(store_dir, params={"train": {"epochs": 10}})
    s = state(p, "train")
    assert s.state == "stale"
    assert "parameter 'epochs' changed: 5 -> 10" in s.reasons
    assert state(Pipeline(store_dir, params={"train": {"epochs": 5, "lr": 0.1}}),
                 "train").state == "fresh"  # passing the default explicitly is the same


def test_function_stage_keyword_parameters_are_parameters(pipeline):
    ns = notebook()
    run_cell("""
        @stage(outputs="y")
        def f(*, scale: float = 1.0):
            return 2 * scale
        """, ns)
    assert pipeline.run("f")["y"] == 2.0
    assert pipeline.run("f", params={"f": {"scale": 3.0}})["y"] == 6.0
    assert pipeline.run("f", params={"f": {"scale": 3.0}}).executed == []


# -- inputs by content --------------------------------------------------------------------------
CHAIN = """
    @stage(outputs="raw")
    def load():
        return [1, 2, 3]{tweak}
    @stage(outputs="total")
    def summarize(raw):
        return sum(raw)
    """


def test_new_input_content_makes_the_downstream_stale(pipeline):
    ns = notebook()
    run_cell(CHAIN.format(tweak=""), ns)
    pipeline.run()
    run_cell(CHAIN.format(tweak=" + [4]"), ns)
    s = state(pipeline, "summarize")
    assert s.state == "stale" and s.reasons == ("upstream stage 'load' is stale: its code changed",)
    result = pipeline.run("summarize")
    assert result["total"] == 10 and result.executed == ["load", "summarize"]


def test_a_downstream_reason_names_the_root_cause_and_the_parent_it_comes_through(pipeline):
    ns = notebook()
    run_cell(textwrap.dedent("""
        SEED = 1

        @stage(outputs="raw")
        def load_data():
            return [SEED]

        @stage(outputs="cleaned")
        def clean(raw):
            return raw

        @stage(outputs="model")
        def train(cleaned):
            return cleaned
    """), ns)
    pipeline.run()
    ns["SEED"] = 2
    assert state(pipeline, "clean").reasons == (
        "upstream stage 'load_data' is stale: global 'SEED' changed",)
    assert state(pipeline, "train").reasons == (
        "upstream stage 'load_data' is stale: global 'SEED' changed (via 'clean')",)


def test_byte_identical_upstream_output_leaves_the_downstream_fresh(pipeline):
    ns = notebook()
    run_cell(CHAIN.format(tweak=""), ns)
    pipeline.run()
    # a different computation with the same result: early cut-off
    run_cell(CHAIN.format(tweak="[:3]"), ns)
    result = pipeline.run("summarize")
    assert result.executed == ["load"]
    assert result["total"] == 6


def test_checking_freshness_never_rehashes_or_loads_stored_data(pipeline, monkeypatch):
    ns = notebook()
    run_cell("""
        import numpy as np
        @stage(outputs="big")
        def make():
            return np.ones(3_000_000)
        @stage(outputs="s")
        def use(big):
            return float(big[0])
        """, ns)
    pipeline.run()

    def forbidden(*args, **kwargs):
        raise AssertionError("stored data was read while checking freshness")

    monkeypatch.setattr(pipelite.store, "hash_file", forbidden)
    monkeypatch.setattr(pipelite._fs, "hash_file", forbidden)
    monkeypatch.setattr(pipelite._integrity, "hash_file", forbidden)
    monkeypatch.setattr(pipelite.formats, "hash_file", forbidden)
    monkeypatch.setattr(pipelite.store.Store, "load_value", forbidden)
    assert [s.state for s in pipeline.status()] == ["fresh", "fresh"]
    assert pipeline.plan() == []


def test_the_record_keeps_every_part_of_the_fingerprint(pipeline):
    ns = notebook()
    run_cell(textwrap.dedent("""
        K = 3
        def helper(x):
            return x + K
        @stage(outputs="out")
        def f(*, p=1):
            return helper(p)
        """), ns)
    pipeline.run("f")
    parts = pipeline.record("f").parts
    assert set(parts) == {"reach", "code", "helpers", "globals", "params", "inputs", "outputs"}
    assert "helper" in parts["helpers"] and "K (read by helper)" in parts["globals"]
    assert "p" in parts["params"]


def test_editing_the_class_of_a_global_instance_makes_the_stage_stale(pipeline):
    ns = notebook()
    src = """
        class Model:
            def __init__(self, w):
                self.w = w
            def predict(self, x):
                return x * self.w{tweak}
        MODEL = Model(2)
        @stage(outputs="y")
        def f():
            return MODEL.predict(3)
        """
    run_cell(src.format(tweak=""), ns)
    pipeline.run("f")
    run_cell(src.format(tweak=" + 1"), ns)
    s = state(pipeline, "f")
    assert s.state == "stale" and s.reasons == ("global 'MODEL' changed",)
    assert pipeline.run("f")["y"] == 7


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
    s = state(pipeline, "f")
    assert s.state == "stale" and s.reasons == ("global 'M' changed",)
    assert pipeline.run("f")["y"] == 3


@pytest.mark.parametrize("holder", ["[clean]", "{'t': clean}", "SimpleNamespace(t=clean)",
                                    "Config(clean)"])
def test_functions_held_in_containers_and_objects_are_tracked_by_code(pipeline, holder):
    ns = notebook()
    src = """
        from types import SimpleNamespace
        from dataclasses import dataclass
        @dataclass
        class Config:
            t: object
        def clean(x):
            return x + {k}
        HOLDER = {holder}
        @stage(outputs="y")
        def apply():
            return len(repr(HOLDER)) > 0
        """
    run_cell(src.format(k=1, holder=holder), ns)
    pipeline.run("apply")
    run_cell(src.format(k=1, holder=holder), ns)
    assert state(pipeline, "apply").state == "fresh"
    run_cell(src.format(k=100, holder=holder), ns)
    assert state(pipeline, "apply").state == "stale"


@pytest.mark.parametrize("decorator", ["functools.lru_cache(maxsize=None)", "functools.cache",
                                       "twice"])
def test_decorated_helpers_are_tracked_by_the_code_they_run(pipeline, decorator):
    ns = notebook()
    src = """
        import functools
        def twice(f):
            @functools.wraps(f)
            def wrapper(x):
                return f(x) * {w}
            return wrapper
        @{decorator}
        def helper(x):
            return x + {k}
        @stage(outputs="y")
        def apply():
            return helper(1)
        """
    run_cell(src.format(decorator=decorator, k=1, w=2), ns)
    first = pipeline.run("apply")["y"]
    run_cell(src.format(decorator=decorator, k=100, w=2), ns)
    assert state(pipeline, "apply").state == "stale"
    if decorator == "twice":  # the wrapper's own code counts too
        pipeline.run("apply")
        run_cell(src.format(decorator=decorator, k=100, w=3), ns)
        assert state(pipeline, "apply").state == "stale"
    assert pipeline.run("apply")["y"] != first


def test_defaults_of_a_class_stage_method_are_tracked(pipeline):
    ns = notebook()
    run_cell("""
        K = 2
        @stage("apply")
        class Apply:
            def scale(self, x, k=K):
                return x * k
            def run(self):
                return {"y": self.scale(3)}
        """, ns)
    assert pipeline.run("apply")["y"] == 6
    run_cell("""
        K = 7
        @stage("apply")
        class Apply:
            def scale(self, x, k=K):
                return x * k
            def run(self):
                return {"y": self.scale(3)}
        """, ns)
    assert state(pipeline, "apply").state == "stale"
    assert pipeline.run("apply")["y"] == 21


@pytest.mark.parametrize("before, after", [
    ("np.ma.masked_array([1, 2, 3], mask=[0, 0, 0])",
     "np.ma.masked_array([1, 2, 3], mask=[0, 0, 1])"),
    ("pd.DataFrame({'a': [1]}, index=pd.Index([0], name='id'))",
     "pd.DataFrame({'a': [1]}, index=pd.Index([0], name='row'))"),
])
def test_masks_and_index_names_are_part_of_a_global_value(pipeline, before, after):
    ns = notebook()
    run_cell(f"""
        import numpy as np, pandas as pd
        DATA = {before}
        @stage(outputs="y")
        def f():
            return repr(DATA)
        """, ns)
    pipeline.run("f")
    run_cell(f"DATA = {after}", ns)
    assert state(pipeline, "f").state == "stale"


def test_a_helper_that_memoises_into_its_default_does_not_make_its_stage_stale(pipeline):
    ns = notebook()
    run_cell("""
        def slow_square(x, _cache={}):
            if x not in _cache:
                _cache[x] = x * x
            return _cache[x]
        @stage(outputs="y")
        def apply(*, x=3):
            return slow_square(x)
        """, ns)
    with pytest.warns(PipeliteWarning, match="changed what it reads while running"):
        assert pipeline.run("apply").executed == ["apply"]
    assert state(pipeline, "apply").state == "fresh"
    assert pipeline.run("apply").executed == []


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
    assert state(pipeline, "app").state == "fresh"
    assert pipeline.run("app").executed == []


def test_fingerprints_do_not_depend_on_the_hash_seed(tmp_path):
    import subprocess

    script = tmp_path / "fp.py"
    script.write_text(textwrap.dedent("""
        from types import SimpleNamespace
        from pipelite import stage, REGISTRY
        from pipelite.fingerprint import fingerprint_of
        TAGS = SimpleNamespace(tags={"alpha", "beta", "gamma", "delta", "eps"})
        is_ok = lambda t: t in {"alpha", "beta", "gamma", "delta", "eps"}
        @stage(outputs="y")
        def f(*, x="beta"):
            return is_ok(x) and x in TAGS.tags
        print(fingerprint_of(REGISTRY.get("f"), {"x": "beta"}, {}).digest)
        """))
    digests = {
        subprocess.run([sys.executable, str(script)], capture_output=True, text=True, check=True,
                       env={**os.environ, "PYTHONHASHSEED": seed}).stdout
        for seed in ("1", "2", "3", "4")
    }
    assert len(digests) == 1


@pytest.mark.parametrize("setup, change", [
    ("RATES = {'a': 1}\nlookup = RATES.get", "RATES['a'] = 99"),
    ("import re\nlookup = re.compile(r'\\d+').findall", "lookup = re.compile(r'\\d').findall"),
    ("lookup = '{:.2f}'.format", "lookup = '{:.4f}'.format"),
])
def test_a_builtin_method_counts_with_the_object_it_is_bound_to(pipeline, setup, change):
    ns = notebook()
    run_cell(setup, ns)
    run_cell("""
        @stage(outputs="y")
        def f():
            return repr(lookup)
        """, ns)
    pipeline.run("f")
    run_cell(change, ns)
    assert state(pipeline, "f").state == "stale"


def test_closures_made_by_one_factory_are_each_tracked(pipeline):
    ns = notebook()
    run_cell("""
        def make(k):
            def scale(x):
                return x * k
            return scale
        f2, f3 = make(2), make(3)
        MULT = [lambda x, k=k: x * k for k in (1, 2, 3)]
        @stage(outputs="y")
        def apply():
            return f2(1) + f3(1) + sum(m(1) for m in MULT)
        """, ns)
    assert pipeline.run("apply")["y"] == 11
    run_cell("f2 = make(5)", ns)
    assert state(pipeline, "apply").state == "stale"
    assert pipeline.run("apply")["y"] == 14
    run_cell("MULT = [lambda x, k=k: x * k for k in (5, 2, 3)]", ns)
    assert state(pipeline, "apply").state == "stale"
    assert pipeline.run("apply")["y"] == 18


def test_changing_a_helper_signature_makes_the_stage_stale(pipeline):
    ns = notebook()
    src = """
        def count(*xs):
            return len(xs)
        @stage(outputs="y")
        def f():
            return count([1, 2, 3])
        """
    run_cell(src, ns)
    assert pipeline.run("f")["y"] == 1
    run_cell(src.replace("*xs", "xs"), ns)
    assert state(pipeline, "f").state == "stale"
    assert pipeline.run("f")["y"] == 3


@pytest.mark.parametrize("definition, instance", [
    ("class P(NamedTuple):\n    v: int\n    def scaled(self):\n        return self.v * {k}",
     "P(3)"),
    ("@dataclass(slots=True)\nclass P:\n    v: int\n    def scaled(self):\n"
     "        return self.v * {k}", "P(3)"),
])
def test_instances_without_a_dict_count_with_their_class_code(pipeline, definition, instance):
    ns = notebook()
    run_cell("from typing import NamedTuple\nfrom dataclasses import dataclass", ns)
    run_cell(definition.format(k=2) + f"\nPT = {instance}", ns)
    run_cell("""
        @stage(outputs="y")
        def f():
            return PT.scaled()
        """, ns)
    assert pipeline.run("f")["y"] == 6
    run_cell(definition.format(k=10) + f"\nPT = {instance}", ns)
    assert state(pipeline, "f").state == "stale"
    assert pipeline.run("f")["y"] == 30


@pytest.mark.parametrize("setup, use", [
    ("import numpy as np\nvf = np.vectorize(base)", "list(vf([0, 1]))"),
    ("import functools\n@functools.singledispatch\ndef conv(x):\n    return x\n"
     "conv.register(int)(base)", "conv(0)"),
    ("import collections\nDD = collections.defaultdict(base_factory)", "DD.default_factory()"),
])
def test_your_functions_inside_library_wrappers_are_tracked(pipeline, setup, use, monkeypatch):
    ns = notebook_main(monkeypatch)
    src = """
        def base(x):
            return x + {k}
        def base_factory():
            return {k}
        """
    run_cell(src.format(k=1), ns)
    run_cell(setup, ns)
    run_cell(f"""
        @stage(outputs="y")
        def f():
            return repr({use})
        """, ns)
    pipeline.run("f")
    run_cell(src.format(k=100), ns)
    run_cell(setup, ns)
    assert state(pipeline, "f").state == "stale"


def test_numpy_structured_field_names_are_part_of_the_content(pipeline):
    ns = notebook()
    run_cell("""
        import numpy as np
        ARR = np.array([(1, 2)], dtype=[('a', '<i4'), ('b', '<i4')])
        @stage(outputs="y")
        def f():
            return int(ARR['a'][0])
        """, ns)
    assert pipeline.run("f")["y"] == 1
    run_cell("ARR = np.array([(1, 2)], dtype=[('b', '<i4'), ('a', '<i4')])", ns)
    assert state(pipeline, "f").state == "stale"


def test_categorical_categories_and_their_order_are_part_of_a_frame(pipeline):
    ns = notebook()
    src = """
        import pandas as pd
        DF = pd.DataFrame({{"c": pd.Categorical(["a", "b"], categories={cats}, ordered=True)}})
        @stage(outputs="y")
        def f():
            return list(DF.sort_values("c")["c"])
        """
    run_cell(src.format(cats='["a", "b"]'), ns)
    assert pipeline.run("f")["y"] == ["a", "b"]
    run_cell(src.format(cats='["b", "a"]'), ns)
    assert state(pipeline, "f").state == "stale"
    assert pipeline.run("f")["y"] == ["b", "a"]


def test_pickled_objects_holding_sets_hash_the_same_under_any_hash_seed(tmp_path):
    import subprocess

    script = tmp_path / "fp2.py"
    script.write_text(textwrap.dedent("""
        import argparse
        import numpy as np
        from pipelite.fingerprint import value_digest
        print(value_digest(argparse.Namespace(tags={"alpha", "beta", "gamma", "delta"})),
              value_digest(np.array([{"a", "b", "c", "d"}, "x"], dtype=object)))
        """))
    digests = {
        subprocess.run([sys.executable, str(script)], capture_output=True, text=True, check=True,
                       env={**os.environ, "PYTHONHASHSEED": seed}).stdout
        for seed in ("1", "2", "3", "4")
    }
    assert len(digests) == 1


def test_one_check_hashes_a_frame_read_by_many_stages_once(pipeline, monkeypatch):
    import pandas as pd

    ns = notebook()
    run_cell("""
        import pandas as pd
        DF = pd.DataFrame({"a": range(1000)})
        """, ns)
    for i in range(5):
        run_cell(f"""
            @stage(outputs="y{i}")
            def s{i}():
                return int(DF["a"].sum()) + {i}
            """, ns)
    pipeline.run()
    calls = []
    real = pd.util.hash_pandas_object
    monkeypatch.setattr(pd.util, "hash_pandas_object",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    assert {s.state for s in pipeline.status()} == {"fresh"}
    assert len(calls) == 1


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
    s = state(pipeline, "summarize")
    assert s.state == "stale"
    assert s.reasons == ("input 'raw' changed (new content from stage 'load')",)


# -- environment variables -------------------------------------------------------------------
def test_a_declared_environment_variable_counts_by_value(pipeline, monkeypatch):
    monkeypatch.setenv("PIPELITE_TEST_MODE", "a")
    ns = notebook()
    run_cell("""
        import os
        @stage(outputs="y", env=["PIPELITE_TEST_MODE"])
        def f():
            return os.environ.get("PIPELITE_TEST_MODE")
        """, ns)
    assert pipeline.run("f")["y"] == "a"
    assert state(pipeline, "f").state == "fresh"
    monkeypatch.setenv("PIPELITE_TEST_MODE", "b")
    s = state(pipeline, "f")
    assert s.state == "stale"
    assert s.reasons == ("environment variable 'PIPELITE_TEST_MODE' changed",)
    assert pipeline.run("f")["y"] == "b"
    monkeypatch.delenv("PIPELITE_TEST_MODE")
    s = state(pipeline, "f")
    assert s.reasons == ("environment variable 'PIPELITE_TEST_MODE' changed (now unset)",)


def test_an_undeclared_environment_variable_does_not_count(pipeline, monkeypatch):
    monkeypatch.setenv("PIPELITE_TEST_OTHER", "a")
    ns = notebook()
    run_cell("""
        @stage(outputs="y", env=["PIPELITE_TEST_MODE"])
        def f():
            return 1
        """, ns)
    pipeline.run("f")
    monkeypatch.setenv("PIPELITE_TEST_OTHER", "b")
    assert state(pipeline, "f").state == "fresh"


def test_environment_variable_values_are_not_stored(pipeline, monkeypatch, store_dir):
    monkeypatch.setenv("PIPELITE_TEST_SECRET", "hunter2-secret-value")
    ns = notebook()
    run_cell("""
        @stage(outputs="y", env=["PIPELITE_TEST_SECRET"])
        def f():
            return 1
        """, ns)
    pipeline.run("f")
    text = "".join(p.read_text() for p in store_dir.rglob("*.json"))
    assert "PIPELITE_TEST_SECRET" in text and "hunter2" not in text


def test_a_bad_environment_variable_name_is_refused(pipeline):
    from pipelite import PipeliteError, stage

    with pytest.raises(PipeliteError, match="not an environment variable name"):
        @stage(outputs="y", env=["A=B"])
        def f():
            return 1


def test_code_digests_cached_by_identity_never_mix_up_code_freed_and_made_again():
    """Code digests are cached by the code object's id (issue 13), holding the code so that
    no other code object can take its id: code made and freed in a loop, where CPython
    reuses ids, still gets a digest of its own."""
    from pipelite.fingerprint import code_digest

    digests = []
    for i in range(300):
        code = compile(f"result = {i} * 2", "<cell>", "exec")
        digests.append(code_digest(code))
        del code
    assert len(set(digests)) == 300
    assert code_digest(compile("result = 7 * 2", "<cell>", "exec")) == digests[7]


def test_a_function_given_other_code_gets_another_fingerprint(store_dir):
    def f():
        return 1

    def g():
        return 2

    stage(outputs="v")(f)
    p = Pipeline(store=str(store_dir))
    assert p.run("f")["v"] == 1
    f.__code__ = g.__code__  # same function object, new (immutable) code
    assert p.status()[0].state == "stale"
    assert p.run("f")["v"] == 2


# -- functions that reach nothing: their token without a walk (issue 13) ---------------------
def _leaf():
    return {"v": 42}


def _reads_a_global():
    return {"v": THRESHOLD}  # noqa: F821 - resolved (or not) when called


def _with_default(k=1):
    return {"v": k}


def _calls_a_method(x):
    return {"v": x.copy()}


def _imports():
    import json  # noqa: F401

    return {"v": 1}


def _closure_over(n):
    def inner():
        return {"v": n}

    return inner


def _with_attribute():
    return {"v": 1}


_with_attribute.setting = 3  # type: ignore[attr-defined]


def test_a_function_that_reaches_nothing_gets_the_token_the_full_walk_gives():
    """The shortcut for a function whose code reads no global, imports nothing, touches no
    attribute and has no closure, default or attribute of its own gives exactly the walk's
    token (so stored fingerprints stay valid), and every function that reaches something
    takes the walk."""
    from pipelite._reach import Reach, leaf_token

    assert leaf_token(_leaf) == Reach().stage_token(_leaf)
    for fn in (_reads_a_global, _with_default, _calls_a_method, _imports, _closure_over(2),
               _with_attribute):
        assert leaf_token(fn) is None, fn


def test_a_function_that_reaches_nothing_turns_stale_when_it_gains_something(store_dir):
    """Each way a function can start reaching something (a default, an attribute of its
    own) after it was stored as reaching nothing changes its fingerprint. (Its keyword-only
    defaults are its parameters, captured when it was declared and counted as resolved: a
    later ``__kwdefaults__`` changes neither what it is called with nor its fingerprint.)"""
    def f():
        return {"v": 1}

    stage(f)
    p = Pipeline(store=str(store_dir))
    p.run("f")
    before = p.status()[0].fingerprint
    for change, undo in [
        (lambda: setattr(f, "__defaults__", (5,)), lambda: setattr(f, "__defaults__", None)),
        (lambda: setattr(f, "scale", 2), lambda: delattr(f, "scale")),
    ]:
        change()
        assert p.status()[0].state == "stale"
        undo()
        assert p.status()[0].fingerprint == before and p.status()[0].state == "fresh"
