"""Freshness holes of ``%%stage`` cells, closed: builtin-named globals and artifacts, magics in a
cell, names bound on some paths only, loaded cells' imports and defs, ``--env``. Each test runs
cells through a real InteractiveShell; the cells append their name to a log, a side effect the
cache cannot replay, so the log says what really executed."""
from __future__ import annotations

import warnings

import pytest
from test_ipy_magics import ok, ran, run

import pipelite
from pipelite import REGISTRY


def stage_cell(name: str, body: str, flags: str = "") -> str:
    return f'%%stage {name} {flags}\nopen(LOG, "a").write("{name}\\n")\n{body}'


# -- 1. names of builtins ---------------------------------------------------------------------
@pytest.mark.parametrize("builtin", ["format", "input", "id", "filter"])
def test_a_global_named_like_a_builtin_is_tracked(ip, tmp_path, builtin):
    cell = stage_cell("s", f"out = {builtin} * 2")
    ok(ip, f"{builtin} = 3")
    ok(ip, cell)
    ok(ip, f"{builtin} = 4")
    ok(ip, cell)
    assert ip.user_ns["out"] == 8
    assert ran(tmp_path) == ["s", "s"]


def test_a_builtin_that_is_not_shadowed_is_not_tracked(ip, tmp_path):
    cell = stage_cell("s", "out = len(format(12, 'x')) + sum(filter(None, [1, 2]))")
    ok(ip, cell)
    assert "[pipelite] s: loaded from store" in ok(ip, cell).stdout
    # nor are the builtins IPython itself puts in the namespace (its own ``open``)
    assert not {"len", "format", "sum", "filter", "open"} & set(REGISTRY.get("s").reads)
    assert ran(tmp_path) == ["s"]


def test_shadowing_a_builtin_then_deleting_the_global_recomputes(ip, tmp_path):
    cell = stage_cell("s", "out = str(format)")
    ok(ip, "format = 'csv'")
    ok(ip, cell)
    ok(ip, "del format")
    ok(ip, cell)
    assert ip.user_ns["out"].startswith("<built-in function format")
    assert ran(tmp_path) == ["s", "s"]


def test_an_artifact_named_like_a_builtin_is_an_input(ip, tmp_path):
    ok(ip, stage_cell("make", "input = [1, 2, 3]"))
    use = stage_cell("use", "total = sum(input)")
    ok(ip, use)
    assert REGISTRY.get("use").inputs == ("input",)
    assert ip.user_ns["total"] == 6
    ok(ip, stage_cell("make", "input = [1, 2, 3, 4]", "--define"))
    ok(ip, use)  # runs the changed upstream first, then itself
    assert ip.user_ns["total"] == 10
    assert ran(tmp_path) == ["make", "use", "make", "use"]


# -- 2. magics in a stage cell ----------------------------------------------------------------
def test_a_time_magic_line_counts_as_the_code_it_runs(ip, tmp_path):
    cell = stage_cell("s", "%time y = x * 10")
    ok(ip, "x = 2")
    ok(ip, cell)
    assert REGISTRY.get("s").outputs == ("y",) and "x" in REGISTRY.get("s").reads
    ok(ip, "x = 3")
    ok(ip, cell)
    assert ip.user_ns["y"] == 30
    assert ran(tmp_path) == ["s", "s"]


def test_timeit_with_options_reads_globals_and_binds_nothing(ip, tmp_path):
    cell = stage_cell("s", "%timeit -n1 -r1 z = x + 1\ndone = True")
    ok(ip, "x = 2")
    ok(ip, cell)
    st = REGISTRY.get("s")
    assert st.outputs == ("done",)  # timeit runs its code in a function of its own
    assert "x" in st.reads
    ok(ip, "x = 3")
    ok(ip, cell)
    assert ran(tmp_path) == ["s", "s"]


def test_prun_and_cell_time_magics_count_as_their_code(ip, tmp_path):
    ok(ip, "x = 2")
    ok(ip, "%%stage p\n%prun -q -l 1 w = x + 2")
    assert REGISTRY.get("p").outputs == ("w",) and ip.user_ns["w"] == 4
    ok(ip, "%%stage t\n%%time\na = x * 3\n")
    assert REGISTRY.get("t").outputs == ("a",) and ip.user_ns["a"] == 6
    ok(ip, "x = 5")
    ok(ip, "%%stage t\n%%time\na = x * 3\n")
    assert ip.user_ns["a"] == 15


def test_shell_commands_and_unknown_magics_are_blind_spots_said_once_per_definition(ip):
    cell = "%%stage s\n!echo hello\nlisting = !echo hi\n%cd .\n%time v = 1\n"
    for _ in range(2):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("default")
            ok(ip, cell)
        said = [w for w in caught if issubclass(w.category, pipelite.PipeliteWarning)]
        assert len(said) == 1, [str(w.message) for w in said]
        message = str(said[0].message)
        assert "`!echo hello`" in message and "`!echo hi`" in message and "`%cd .`" in message
        assert "%time" not in message
    st = REGISTRY.get("s")
    assert len(st.blind_spots) == 3 and st.outputs == ("listing", "v")
    explained = ok(ip, "%pipelite explain s").stdout
    assert "blind spot: `!echo hello` (a shell command)" in explained
    assert "blind spot: `%cd .` (a magic)" in explained


def test_a_cell_without_blind_spots_warns_nothing(ip):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ok(ip, "%%stage s\n%time v = 1\n")
    assert not [w for w in caught if issubclass(w.category, pipelite.PipeliteWarning)]
    assert REGISTRY.get("s").blind_spots == ()


# -- 3. names bound on some paths only --------------------------------------------------------
FLAGGED = stage_cell("s", "if FLAG:\n    x = 1\ny = x + 1")


def test_a_name_bound_only_in_a_branch_not_taken_is_read_from_the_notebook(ip, tmp_path):
    ok(ip, "x = 10\nFLAG = False")
    ok(ip, FLAGGED)
    assert ip.user_ns["y"] == 11
    ok(ip, "x = 20")
    ok(ip, FLAGGED)
    assert ip.user_ns["y"] == 21
    assert ran(tmp_path) == ["s", "s"]


def quietly(shell, cell: str):
    """Run a cell that must succeed without a PipeliteWarning; its captured output."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cap = ok(shell, cell)
    said = [str(w.message) for w in caught if issubclass(w.category, pipelite.PipeliteWarning)]
    assert not said, said
    return cap


@pytest.mark.parametrize("before", ["", "x = 10"], ids=["unbound-before", "bound-before"])
def test_a_cell_that_binds_what_it_may_read_does_not_make_itself_stale(ip, tmp_path, before):
    ok(ip, f"{before}\nFLAG = True")
    quietly(ip, FLAGGED)  # its own x is not "a global it changed while running"
    for _ in range(2):  # after computing, and after loading
        assert "[pipelite] s: loaded from store" in quietly(ip, FLAGGED).stdout
    assert ip.user_ns["y"] == 2
    assert ran(tmp_path) == ["s"]


def test_a_loop_variable_read_after_the_loop_keeps_the_cell_fresh(ip, tmp_path):
    cell = stage_cell("s", "for i in range(n):\n    acc = i * 2\nlast = acc")
    ok(ip, "n = 3")
    quietly(ip, cell)
    assert "[pipelite] s: loaded from store" in quietly(ip, cell).stdout
    ok(ip, "n = 4")
    quietly(ip, cell)
    assert ip.user_ns["last"] == 6 and ran(tmp_path) == ["s", "s"]


def test_a_maybe_bound_name_another_stage_produces_is_an_input(ip, tmp_path):
    ok(ip, stage_cell("make", "x = 10"))
    ok(ip, "FLAG = False")
    cell = stage_cell("s", "if FLAG:\n    x = 1\ny = x + 1", "-o y")
    ok(ip, cell)
    assert REGISTRY.get("s").inputs == ("x",) and ip.user_ns["y"] == 11
    ok(ip, stage_cell("make", "x = 20", "--define"))
    ok(ip, cell)
    assert ip.user_ns["y"] == 21
    assert ran(tmp_path) == ["make", "s", "make", "s"]


def test_freshness_never_compares_user_objects_with_eq(ip, tmp_path):
    # (from marimo's cache tests: an object whose __eq__ must not be called by the cache)
    ok(ip, "class Touchy:\n    def __eq__(self, other):\n        raise RuntimeError('compared')"
           "\n    __hash__ = object.__hash__\nx = Touchy()\nFLAG = False")
    cell = stage_cell("s", "if FLAG:\n    x = 1\ny = type(x).__name__", "-o y")
    ok(ip, cell)
    assert "[pipelite] s: loaded from store" in ok(ip, cell).stdout


# -- 4. a loaded cell's imports and definitions -----------------------------------------------
DEFS = stage_cell("g", '''\
import numpy as np
from dataclasses import dataclass

def helper(v):
    return v + 1

@dataclass
class Point:
    x: int = 0

out = helper(np.zeros(2)).tolist()''')


def test_a_loaded_cell_rebinds_its_imports_defs_and_classes(ip, tmp_path):
    ok(ip, DEFS)
    ok(ip, "del np, dataclass, helper, Point, out")
    assert "[pipelite] g: loaded from store" in ok(ip, DEFS).stdout
    ok(ip, "check = (np.ones(1) + helper(1)).tolist(), Point(3).x, out")
    assert ip.user_ns["check"] == ([3.0], 3, [1.0, 1.0])
    assert ran(tmp_path) == ["g"]


def test_a_loaded_cell_whose_def_cannot_be_rerun_warns_and_still_loads(ip, tmp_path):
    cell = stage_cell("g", "_k = 2\ndef f(v=_k):\n    return v\nout = f()")
    ok(ip, cell)
    ok(ip, "del _k, f")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ok(ip, cell)
    said = [str(w.message) for w in caught if issubclass(w.category, pipelite.PipeliteWarning)]
    assert any("re-running `def f` failed (NameError" in m for m in said), said
    assert ip.user_ns["out"] == 2 and ran(tmp_path) == ["g"]


# -- 5. --env ---------------------------------------------------------------------------------
def test_env_option_makes_the_stage_depend_on_environment_variables(ip, tmp_path, monkeypatch):
    monkeypatch.setenv("PIPELITE_TEST_A", "one")
    monkeypatch.delenv("PIPELITE_TEST_B", raising=False)
    cell = stage_cell("s", "import os\nv = os.environ['PIPELITE_TEST_A']",
                      "--env PIPELITE_TEST_A PIPELITE_TEST_B")
    ok(ip, cell)
    assert REGISTRY.get("s").env == ("PIPELITE_TEST_A", "PIPELITE_TEST_B")
    assert "[pipelite] s: loaded from store" in ok(ip, cell).stdout
    monkeypatch.setenv("PIPELITE_TEST_A", "two")
    assert "environment variable 'PIPELITE_TEST_A' changed" in ok(
        ip, "%pipelite explain s").stdout
    ok(ip, cell)
    assert ip.user_ns["v"] == "two"
    monkeypatch.setenv("PIPELITE_TEST_B", "set")
    ok(ip, cell)
    assert ran(tmp_path) == ["s", "s", "s"]


def test_env_option_with_a_bad_name_is_a_one_line_error(ip):
    result, cap = run(ip, "%%stage s --env A=B\nv = 1")
    assert not result.success
    assert "'A=B' is not an environment variable name" in cap.stdout + cap.stderr


# -- scenarios from marimo's cell-cache tests, in %%stage terms --------------------------------
@pytest.mark.parametrize("before, after", [("v = 1", "v = '1'"), ("v = 1; w = 23",
                                                                   "v = 12; w = 3")],
                         ids=["constant-type", "constant-boundaries"])
def test_distinct_cell_code_recomputes(ip, tmp_path, before, after):
    ok(ip, stage_cell("s", before))
    ok(ip, stage_cell("s", after))
    assert ran(tmp_path) == ["s", "s"]


@pytest.mark.parametrize("before, after, expression", [
    ("np.zeros(1, dtype='int64')", "np.zeros(1, dtype='float64')", "str(g.dtype)"),
    ("np.arange(6).reshape(2, 3)", "np.arange(6).reshape(2, 1, 3)", "g.shape"),
    ("np.arange(4).reshape(2, 2)", "np.arange(4).reshape(2, 2).T", "g.tolist()"),
    ("True", "1", "type(g).__name__"),
    ("{'a': 1, 'b': 2}", "{'b': 2, 'a': 1}", "list(g)"),
], ids=["array-dtype", "array-shape", "array-transpose", "bool-int", "dict-order"])
def test_a_global_changed_in_a_way_the_cell_can_see_recomputes(ip, tmp_path, before, after,
                                                                 expression):
    cell = stage_cell("s", f"result = {expression}")
    ok(ip, f"import numpy as np\ng = {before}")
    ok(ip, cell)
    ok(ip, f"g = {after}")
    ok(ip, cell)
    ok(ip, f"expected = {expression}")
    assert ip.user_ns["result"] == ip.user_ns["expected"]
    assert ran(tmp_path) == ["s", "s"]


def test_a_module_alias_pointing_elsewhere_recomputes(ip, tmp_path):
    cell = stage_cell("s", "r = type(operation.sqrt(4)).__name__")
    ok(ip, "import math as operation")
    ok(ip, cell)
    ok(ip, "import cmath as operation")
    ok(ip, cell)
    assert ip.user_ns["r"] == "complex" and ran(tmp_path) == ["s", "s"]


def test_a_global_changed_back_reuses_the_first_result(ip, tmp_path):
    cell = stage_cell("s", "a = x + 1")
    for value in (1, 2, 1):
        ok(ip, f"x = {value}")
        ok(ip, cell)
    assert ip.user_ns["a"] == 2 and ran(tmp_path) == ["s", "s"]
