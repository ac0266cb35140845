"""Ways a changed stage used to look fresh, one class of hole per section (issue 7).

Several scenarios are translated from other caching projects' own test suites: joblib's
hashing tests (values that differ only in type or shape), marimo's cache tests (closures,
lambdas, modules), Hamilton's fingerprinting tests (objects, parameters).
"""
from __future__ import annotations

import collections
import datetime
import decimal
import importlib
import sys
import textwrap
import warnings

import numpy as np
import pytest

from pipelite import Pipeline, PipeliteWarning
from pipelite.fingerprint import value_digest
from tests.helpers import notebook, notebook_main, run_cell


def state(pipeline: Pipeline, name: str):
    (s,) = [s for s in pipeline.status() if s.name == name]
    return s


def write(path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))


@pytest.fixture
def user_dir(tmp_path, monkeypatch):
    """A project folder on sys.path; modules imported from it are forgotten afterwards."""
    folder = tmp_path / "project"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    before = set(sys.modules)
    importlib.invalidate_caches()
    yield folder
    for name in set(sys.modules) - before:
        mod = sys.modules.get(name)
        if str(folder) in str(getattr(mod, "__file__", "") or getattr(mod, "__path__", "")):
            del sys.modules[name]


def restart(*names: str) -> None:
    """Forget modules, as a kernel restart does."""
    for name in list(sys.modules):
        if name in names or name.split(".")[0] in names:
            del sys.modules[name]
    importlib.invalidate_caches()


# -- 1. user code is decided by where it lives, not by its name --------------------------------
def test_a_user_module_named_like_a_standard_module_is_user_code(pipeline, user_dir,
                                                                 monkeypatch):
    monkeypatch.delitem(sys.modules, "colorsys", raising=False)
    write(user_dir / "colorsys.py", "def shade(x):\n    return x + 1\n")
    ns = notebook()
    run_cell("""
        import colorsys
        @stage(outputs="y")
        def f():
            return colorsys.shade(1)
        """, ns)
    assert pipeline.run("f")["y"] == 2
    write(user_dir / "colorsys.py", "def shade(x):\n    return x + 100\n")
    importlib.reload(ns["colorsys"])
    assert state(pipeline, "f").state == "stale"
    assert pipeline.run("f")["y"] == 101


def test_a_namespace_package_module_is_user_code(pipeline, user_dir):
    write(user_dir / "nspkg_plain" / "maths.py", "def twice(x):\n    return 2 * x\n")
    ns = notebook()
    run_cell("""
        import nspkg_plain.maths
        @stage(outputs="y")
        def f():
            return nspkg_plain.maths.twice(1)
        """, ns)
    assert pipeline.run("f")["y"] == 2
    write(user_dir / "nspkg_plain" / "maths.py", "def twice(x):\n    return 3 * x\n")
    importlib.reload(sys.modules["nspkg_plain.maths"])
    assert state(pipeline, "f").state == "stale"


def test_a_submodule_imported_by_a_cell_is_followed_after_a_restart(pipeline, user_dir):
    from pipelite import REGISTRY, CellStage

    write(user_dir / "srcpkg" / "__init__.py", "")
    write(user_dir / "srcpkg" / "features.py", "def build(x):\n    return x + 1\n")
    ns = {"__name__": "__main__"}
    source = "from srcpkg.features import build\ny = build(1)\n"
    REGISTRY.add(CellStage("c", source, ns))
    assert pipeline.run("c")["y"] == 2
    restart("srcpkg")  # a new kernel: the cell is defined again, nothing imported yet
    ns.pop("build")
    REGISTRY.add(CellStage("c", source, ns))
    assert state(pipeline, "c").state == "fresh"
    write(user_dir / "srcpkg" / "features.py", "def build(x):\n    return x + 50\n")
    s = state(pipeline, "c")
    assert s.state == "stale", s.reasons
    assert pipeline.run("c")["y"] == 51


def test_a_module_imported_by_a_user_module_is_followed_before_it_is_loaded(pipeline,
                                                                             user_dir):
    write(user_dir / "mymod_a.py", "from helper2_a import g\ndef f(x):\n    return g(x)\n")
    write(user_dir / "helper2_a.py", "def g(x):\n    return x + 1\n")
    ns = notebook()
    run_cell("""
        @stage(outputs="y")
        def f():
            import mymod_a
            return mymod_a.f(1)
        """, ns)
    assert pipeline.run("f")["y"] == 2
    restart("mymod_a", "helper2_a")
    assert state(pipeline, "f").state == "fresh"
    write(user_dir / "helper2_a.py", "def g(x):\n    return x + 7\n")
    assert state(pipeline, "f").state == "stale"
    assert pipeline.run("f")["y"] == 8


def test_a_module_imported_by_a_loaded_user_module_is_followed(pipeline, user_dir):
    write(user_dir / "mymod_b.py", "import helper2_b\ndef f(x):\n    return helper2_b.g(x)\n")
    write(user_dir / "helper2_b.py", "def g(x):\n    return x + 1\n")
    ns = notebook()
    run_cell("""
        import mymod_b
        @stage(outputs="y")
        def f():
            return mymod_b.f(1)
        """, ns)
    assert pipeline.run("f")["y"] == 2
    write(user_dir / "helper2_b.py", "def g(x):\n    return x + 7\n")
    importlib.reload(sys.modules["helper2_b"])
    assert state(pipeline, "f").state == "stale"


def test_a_user_modules_dunder_values_count(pipeline, user_dir):
    write(user_dir / "versioned_mod.py", "__version__ = '1.0'\n")
    ns = notebook()
    run_cell("""
        import versioned_mod
        @stage(outputs="y")
        def f():
            return versioned_mod.__version__
        """, ns)
    pipeline.run("f")
    sys.modules["versioned_mod"].__version__ = "2.0"
    assert state(pipeline, "f").state == "stale"


def test_a_library_is_still_a_library(pipeline):
    ns = notebook()
    run_cell("""
        import json
        @stage(outputs="y")
        def f():
            return json.dumps([1])
        """, ns)
    pipeline.run("f")
    parts = pipeline.record("f").parts
    assert any(v.startswith("lib:json@") for v in parts["helpers"].values()), parts


# -- 2. helpers are keyed by how the stage reaches them -----------------------------------------
def test_editing_one_of_two_lambdas_makes_the_stage_stale(pipeline):
    ns = notebook()
    run_cell("""
        f1 = lambda x: x + 1
        f2 = lambda x: x * 2
        @stage(outputs="y")
        def f():
            return f1(1) + f2(1)
        """, ns)
    assert pipeline.run("f")["y"] == 4
    run_cell("f1 = lambda x: x + 10", ns)
    s = state(pipeline, "f")
    assert s.state == "stale" and "helper 'f1' changed" in s.reasons, s.reasons
    assert pipeline.run("f")["y"] == 13


def test_two_closures_with_one_qualname_from_different_code_are_each_tracked(pipeline):
    ns = notebook()
    run_cell("""
        def make():
            def inner(x):
                return x + 1
            return inner
        g1 = make()
        def make():
            def inner(x):
                return x * 2
            return inner
        g2 = make()
        @stage(outputs="y")
        def f():
            return g1(1) + g2(1)
        """, ns)
    assert pipeline.run("f")["y"] == 4
    run_cell("""
        def make():
            def inner(x):
                return x + 100
            return inner
        g1 = make()
        """, ns)
    assert state(pipeline, "f").state == "stale"


def test_lambdas_in_a_container_are_each_tracked_with_their_closures(pipeline):
    ns = notebook()
    run_cell("""
        def adder(k):
            return lambda x: x + k
        OPS = {"a": adder(1), "b": adder(2)}
        @stage(outputs="y")
        def f():
            return OPS["a"](0) + OPS["b"](0)
        """, ns)
    assert pipeline.run("f")["y"] == 3
    run_cell('OPS = {"a": adder(1), "b": adder(2)}', ns)  # new closures, the same values
    assert state(pipeline, "f").state == "fresh"
    run_cell('OPS = {"a": adder(5), "b": adder(2)}', ns)
    assert state(pipeline, "f").state == "stale"


def test_mutually_recursive_helpers_are_tracked_from_either_entry(pipeline):
    ns = notebook()
    src = """
        def even(n):
            return True if n == 0 else odd(n - 1)
        def odd(n):
            return False if n == 0 else even(n - 1){tweak}
        @stage(outputs="b")
        def via_odd():
            return odd(3)
        @stage(outputs="a")
        def via_even():
            return even(3)
        """
    run_cell(src.format(tweak=""), ns)
    pipeline.run()
    run_cell(src.format(tweak=""), ns)  # the same code defined again: nothing changed
    assert {s.state for s in pipeline.status()} == {"fresh"}
    run_cell(src.format(tweak=" and True"), ns)
    for name in ("via_odd", "via_even"):
        s = state(pipeline, name)
        assert s.state == "stale" and s.reasons == ("helper 'odd' changed",), s.reasons


# -- 3. values that hash alike but differ -------------------------------------------------------
class _Str(str):
    pass


class _Int(int):
    pass


class _Float(float):
    pass


@pytest.mark.parametrize("a, b", [
    (np.array(0), np.array([0])),
    (np.array([[1, 2]]), np.array([1, 2])),
    (np.array([1, 2]), np.matrix([1, 2])),
    (b"ab", bytearray(b"ab")),
    (_Str("a"), _Str("b")),
    (_Int(1), _Int(2)),
    (_Float(1.0), _Float(2.0)),
    (_Str("a"), "a"),
    (1, True),
    (1, 1.0),
    ((1, 2), [1, 2]),
    (np.float64(1.0), 1.0),
], ids=["0d-vs-1d", "2d-vs-1d", "matrix-vs-ndarray", "bytes-vs-bytearray", "str-subclass",
        "int-subclass", "float-subclass", "subclass-vs-base", "int-vs-bool", "int-vs-float",
        "tuple-vs-list", "numpy-vs-python-float"])
def test_values_that_differ_have_different_digests(a, b):
    assert value_digest(a) != value_digest(b)


def test_equal_values_have_equal_digests():
    assert value_digest(_Str("a")) == value_digest(_Str("a"))
    assert value_digest(np.array(0)) == value_digest(np.array(0))
    assert value_digest(np.arange(6).reshape(2, 3).T.copy()) == value_digest(
        np.asfortranarray(np.arange(6).reshape(2, 3).T))


def test_pandas_attrs_are_part_of_a_frame():
    import pandas as pd

    a, b = pd.DataFrame({"x": [1]}), pd.DataFrame({"x": [1]})
    a.attrs["unit"], b.attrs["unit"] = "m", "km"
    assert value_digest(a) != value_digest(b)
    s1, s2 = pd.Series([1]), pd.Series([1])
    s1.attrs["unit"] = "m"
    assert value_digest(s1) != value_digest(s2)


@pytest.mark.parametrize("a, b", [([1], ["1"]), ([None], [float("nan")]), ([1], [1.0])],
                         ids=["int-vs-str", "none-vs-nan", "int-vs-float"])
def test_python_objects_in_pandas_count_by_value_and_type(a, b):
    import pandas as pd

    assert value_digest(pd.Series(a, dtype=object)) != value_digest(pd.Series(b, dtype=object))
    assert value_digest(pd.DataFrame({"c": a}, dtype=object)) != value_digest(
        pd.DataFrame({"c": b}, dtype=object))
    assert value_digest(pd.Series([0], index=pd.Index(a, dtype=object))) != value_digest(
        pd.Series([0], index=pd.Index(b, dtype=object)))
    assert value_digest(pd.Series(a, dtype=object)) == value_digest(pd.Series(a, dtype=object))


def test_a_zero_d_global_changing_shape_makes_the_stage_stale(pipeline):
    ns = notebook()
    run_cell("""
        import numpy as np
        A = np.array(0)
        @stage(outputs="y")
        def f():
            return A.ndim
        """, ns)
    assert pipeline.run("f")["y"] == 0
    run_cell("A = np.array([0])", ns)
    assert state(pipeline, "f").state == "stale"
    assert pipeline.run("f")["y"] == 1


# -- 4. code that is reached but not walked ----------------------------------------------------
def test_editing_a_metaclass_method_makes_the_stage_stale(pipeline):
    ns = notebook()
    src = """
        class Meta(type):
            def scale(cls):
                return {k}
        class Model(metaclass=Meta):
            pass
        """
    run_cell(src.format(k=1), ns)
    run_cell("""
        @stage(outputs="y")
        def f():
            return Model.scale()
        """, ns)
    assert pipeline.run("f")["y"] == 1
    run_cell(src.format(k=2), ns)
    assert state(pipeline, "f").state == "stale"
    assert pipeline.run("f")["y"] == 2


def test_editing_a_pandas_accessor_makes_the_stage_stale(pipeline):
    import pandas as pd

    ns = notebook()
    src = """
        import pandas as pd
        @pd.api.extensions.register_dataframe_accessor("pltest")
        class Acc:
            def __init__(self, df):
                self.df = df
            def total(self):
                return int(self.df.sum().sum()) + {k}
        DF = pd.DataFrame({{"a": [1, 2]}})
        """
    try:
        run_cell(src.format(k=0), ns)
        run_cell("""
            @stage(outputs="y")
            def f():
                return DF.pltest.total()
            """, ns)
        assert pipeline.run("f")["y"] == 3
        run_cell(src.format(k=10), ns)
        s = state(pipeline, "f")
        assert s.state == "stale" and "accessor 'pltest' changed" in s.reasons, s.reasons
        assert pipeline.run("f")["y"] == 13
    finally:
        if hasattr(pd.DataFrame, "pltest"):
            del pd.DataFrame.pltest
            pd.DataFrame._accessors.discard("pltest")


@pytest.fixture
def fake_library(tmp_path, monkeypatch):
    """A module that lies in a library location, as an installed package's would."""
    from pipelite import _libraries

    lib = tmp_path / "site-packages"
    write(lib / "wraplib_fake.py", """
        class Wrapper:
            '''Holds a user function under a private name; not picklable (holds a lock).'''
            def __init__(self, fn):
                import threading
                self._target = fn
                self._lock = threading.Lock()
            def __call__(self, *a):
                return self._target(*a)
        """)
    monkeypatch.syspath_prepend(str(lib))
    monkeypatch.setattr(_libraries, "LIBRARY_ROOTS",
                        _libraries.LIBRARY_ROOTS + (str(lib.resolve()),))
    _libraries.forget()
    yield
    sys.modules.pop("wraplib_fake", None)
    _libraries.forget()


def test_a_user_function_inside_any_library_callable_is_walked(pipeline, fake_library,
                                                               monkeypatch):
    ns = notebook_main(monkeypatch)
    src = """
        import wraplib_fake
        def base(x):
            return x + {k}
        W = wraplib_fake.Wrapper(base)
        """
    run_cell(src.format(k=1), ns)
    run_cell("""
        @stage(outputs="y")
        def f():
            return W(1)
        """, ns)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PipeliteWarning)  # walked, not "cannot be hashed"
        assert pipeline.run("f")["y"] == 2
        run_cell(src.format(k=5), ns)
        assert state(pipeline, "f").state == "stale"


@pytest.mark.parametrize("field", ["co_exceptiontable", "co_flags", "co_names", "co_varnames",
                                   "co_posonlyargcount"])
def test_every_part_of_a_code_object_that_changes_behaviour_counts(field):
    from pipelite.fingerprint import code_digest

    def f(a, b=1):
        try:
            return len(a)
        except TypeError:
            return b
    code = f.__code__
    value = {
        "co_exceptiontable": bytes(len(code.co_exceptiontable)),  # where errors are caught
        "co_flags": code.co_flags ^ 0x20,  # CO_GENERATOR: calling it makes a generator
        "co_names": tuple(n + "_x" for n in code.co_names),  # which globals it loads
        "co_varnames": tuple(n + "_x" for n in code.co_varnames),  # keyword argument names
        "co_posonlyargcount": 1,  # f(a=...) is no longer allowed
    }[field]
    changed = code.replace(**{field: value})
    assert code_digest(f.__code__) != code_digest(changed)


# -- 5. parameters are hashed as deep as globals -------------------------------------------------
def test_a_closure_passed_as_a_parameter_counts_with_its_captured_values(store_dir):
    ns = notebook()
    run_cell("""
        def make_mult(k):
            def mult(x):
                return x * k
            return mult
        @stage(outputs="y")
        def f(*, fn):
            return fn(10)
        """, ns)
    p = Pipeline(store=str(store_dir), params={"f": {"fn": ns["make_mult"](2)}})
    assert p.run("f")["y"] == 20
    p = Pipeline(store=str(store_dir), params={"f": {"fn": ns["make_mult"](3)}})
    s = state(p, "f")
    assert s.state == "stale"
    assert not any("0x" in r for r in s.reasons), s.reasons  # no memory addresses
    assert p.run("f")["y"] == 30


def test_a_function_parameter_counts_with_the_globals_it_reads(store_dir):
    ns = notebook()
    run_cell("""
        OFFSET = 1
        def shift(x):
            return x + OFFSET
        @stage(outputs="y")
        def f(*, fn):
            return fn(10)
        """, ns)
    p = Pipeline(store=str(store_dir), params={"f": {"fn": ns["shift"]}})
    assert p.run("f")["y"] == 11
    run_cell("OFFSET = 5", ns)
    assert state(p, "f").state == "stale"
    assert p.run("f")["y"] == 15


def test_an_object_parameter_counts_with_its_class_code(store_dir):
    ns = notebook()
    src = """
        class Scaler:
            def __init__(self, k):
                self.k = k
            def __call__(self, x):
                return x * self.k + {extra}
        """
    run_cell(src.format(extra=0), ns)
    run_cell("""
        @stage(outputs="y")
        def f(*, scaler):
            return scaler(10)
        """, ns)
    p = Pipeline(store=str(store_dir), params={"f": {"scaler": ns["Scaler"](2)}})
    assert p.run("f")["y"] == 20
    run_cell(src.format(extra=1), ns)
    p = Pipeline(store=str(store_dir), params={"f": {"scaler": ns["Scaler"](2)}})
    s = state(p, "f")
    assert s.state == "stale" and not any("0x" in r for r in s.reasons), s.reasons


# -- 7. a stage fresh before a run is checked again before its result is used -------------------
def test_a_stage_is_rechecked_after_an_earlier_stage_of_the_run_changes_its_global(pipeline):
    ns = notebook()
    run_cell("""
        CONFIG = {"k": 1}
        @stage(outputs="a")
        def first(*, v=1):
            CONFIG["k"] = v
            return v
        @stage(outputs="b")
        def second():
            return CONFIG["k"] * 100
        """, ns)
    pipeline.run(["first", "second"])
    assert pipeline.load("b") == 100
    # first reruns (new parameter) and, as it runs, changes what second reads
    result = pipeline.run(["first", "second"], params={"first": {"v": 2}})
    assert result["b"] == 200
    assert "second" in result.executed


# -- 9. no false stale, no noise --------------------------------------------------------------
@pytest.mark.parametrize("before, after", [
    ("def helper():\n    return 1\n", 'def helper():\n    """Now documented."""\n    return 1\n'),
    ('def helper():\n    """Documented."""\n    return 1\n', "def helper():\n    return 1\n"),
    ('def helper():\n    def inner():\n        return 1\n    return inner()\n',
     'def helper():\n    def inner():\n        """Doc."""\n        return 1\n    return inner()\n'),
], ids=["add", "remove", "nested"])
def test_adding_or_removing_a_helper_docstring_keeps_the_stage_fresh(pipeline, before, after):
    ns = notebook()
    run_cell(before, ns)
    run_cell("""
        @stage(outputs="y")
        def f():
            return helper()
        """, ns)
    pipeline.run("f")
    run_cell(after, ns)
    s = state(pipeline, "f")
    assert s.state == "fresh", s.reasons


def test_abc_classes_and_cached_properties_raise_no_warning_and_are_tracked(pipeline):
    ns = notebook()
    src = """
        import abc, functools
        class Base(abc.ABC):
            @abc.abstractmethod
            def value(self): ...
        class Impl(Base):
            def value(self):
                return {k}
            @functools.cached_property
            def doubled(self):
                return self.value() * 2
        """
    run_cell(src.format(k=1), ns)
    run_cell("""
        @stage(outputs="y")
        def f():
            return Impl().doubled
        """, ns)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PipeliteWarning)
        assert pipeline.run("f")["y"] == 2
        assert state(pipeline, "f").state == "fresh"
        run_cell(src.format(k=3), ns)
        assert state(pipeline, "f").state == "stale"


def test_an_array_mutated_in_place_by_an_earlier_stage_of_the_run_is_rehashed(pipeline):
    ns = notebook()
    run_cell("""
        import numpy as np
        ARR = np.zeros(1000)
        @stage(outputs="a")
        def first(*, v=1.0):
            ARR[0] = v
            return v
        @stage(outputs="b")
        def second():
            return float(ARR.sum())
        """, ns)
    pipeline.run(["first", "second"])
    assert pipeline.load("b") == 1.0
    result = pipeline.run(["first", "second"], params={"first": {"v": 5.0}})
    assert result["b"] == 5.0 and "second" in result.executed


def test_a_run_hashes_a_large_global_once_before_and_once_after_the_stage(pipeline,
                                                                          monkeypatch):
    from pipelite._encode import Encoder

    ns = notebook()
    run_cell("""
        import numpy as np
        BIG = np.arange(200_000.0)
        @stage(outputs="y")
        def f(*, k=1):
            return float(BIG[k])
        """, ns)
    calls, real = [], Encoder._feed_numpy
    monkeypatch.setattr(Encoder, "_feed_numpy", lambda self, h, v: (
        calls.append(1) if v is ns["BIG"] else None) or real(self, h, v))
    pipeline.run("f")
    # the check before the run and the one after it (which must see in-place changes)
    assert len(calls) == 2


def test_pickling_an_instance_does_not_change_its_class_digest(pipeline, monkeypatch):
    ns = notebook_main(monkeypatch)
    run_cell("""
        class Touchy:
            def __eq__(self, other):
                return isinstance(other, Touchy)
        X = Touchy()
        @stage(outputs="z")
        def f():
            return X
        """, ns)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PipeliteWarning)  # "changed what it reads" would raise
        pipeline.run("f")  # storing the output pickles a Touchy: copyreg caches on the class
        assert state(pipeline, "f").state == "fresh"


# -- found by a review: data a value holds outside its __dict__, and dtypes ---------------------
class _History(collections.deque):
    pass


class _Day(datetime.date):
    pass


class _Money(decimal.Decimal):
    pass


@pytest.mark.parametrize("a, b", [
    (_History([1, 2]), _History([1, 2, 100])),
    (_Day(2024, 1, 1), _Day(2030, 5, 5)),
    (_Money("1.5"), _Money("9")),
], ids=["deque-subclass", "date-subclass", "decimal-subclass"])
def test_your_subclass_of_a_library_type_counts_by_the_data_the_library_holds(a, b):
    assert value_digest(a) != value_digest(b)
    assert value_digest(a) == value_digest(type(a)(a) if not isinstance(a, _Day)
                                           else _Day(a.year, a.month, a.day))


def test_your_ndarray_subclass_counts_with_its_own_attributes():
    class Tagged(np.ndarray):
        def __array_finalize__(self, obj):
            self.unit = getattr(obj, "unit", "m")

    a, b = np.arange(3.0).view(Tagged), np.arange(3.0).view(Tagged)
    b.unit = "km"
    assert value_digest(a) != value_digest(b)


def test_an_index_time_zone_and_the_sign_of_zero_count_in_pandas_values():
    import pandas as pd

    s = pd.Series([1.0, 2.0], index=pd.date_range("2024-01-01", periods=2, freq="h", tz="UTC"))
    assert value_digest(s) != value_digest(s.tz_convert("Asia/Tokyo"))
    assert value_digest(pd.Series([0.0, 1.0])) != value_digest(pd.Series([-0.0, 1.0]))
    assert value_digest(pd.Series([1], index=pd.Index([1], dtype="int32"))) != value_digest(
        pd.Series([1], index=pd.Index([1], dtype="int64")))


@pytest.mark.parametrize("make", [
    lambda: np.array(["a", "bb"], dtype=np.dtypes.StringDType()),
    lambda: np.array([(1, "x")], dtype=[("i", "i8"), ("o", object)]),
], ids=["StringDType", "object-field"])
def test_arrays_holding_references_are_hashed_by_value_not_a_crash(pipeline, make):
    a = make()
    b = a.copy()
    b[0] = b[1] if a.dtype.kind == "T" else (1, "y")
    assert value_digest(a) != value_digest(b) and value_digest(a) == value_digest(a.copy())
    ns = notebook()
    ns["LABELS"] = a
    run_cell("""
        @stage(outputs="n")
        def n_labels():
            return len(LABELS)
        """, ns)
    assert pipeline.status()[0].state == "missing"  # checking it does not raise
    assert pipeline.run("n_labels")["n"] == len(a)
