"""What a cell reads and what it produces, from its code alone."""
from __future__ import annotations

from pipelite import REGISTRY, CellStage
from pipelite._cellcode import analyze


def test_names_read_before_they_are_bound_are_free_and_assignments_are_outputs():
    a = analyze("x = y + 1\ny = 2\nz = x + y\n")
    assert a.free == ("y",)
    assert a.outputs == ("x", "y", "z")


def test_imports_defs_and_private_names_are_not_outputs():
    a = analyze("import numpy as np\ndef f(v):\n    return v + K\n_tmp = 1\nout = f(1)\n")
    assert a.outputs == ("out",)
    assert a.defined == ("np", "f")
    assert a.free == ("K",)  # read inside the function, at call time
    assert a.imports == ("numpy",)


def test_loop_with_and_walrus_targets_are_bound_but_not_outputs():
    a = analyze(
        "for i in range(3):\n    acc = i * 2\n"
        "with open(path) as fh:\n    text = fh.read()\n"
        "if (w := K + 1) > 0:\n    ww = w\n"
        "try:\n    q = 1 / 0\nexcept ZeroDivisionError as e:\n    msg = str(e)\n")
    # builtins' names stay free: whether they are the builtins is decided against the namespace
    assert set(a.free) == {"path", "K", "range", "open", "str", "ZeroDivisionError"}
    assert a.outputs == ("acc", "text", "ww", "q", "msg")


def test_two_cells_with_the_same_loop_variable_do_not_clash():
    ns: dict = {}
    REGISTRY.add(CellStage("s1", "for i in range(3):\n    a = i * 2\n", ns))
    REGISTRY.add(CellStage("s2", "for i in range(5):\n    b = i * 3\n", ns))
    assert REGISTRY.get("s1").outputs == ("a",) and REGISTRY.get("s2").outputs == ("b",)


def test_comprehension_variables_are_local_but_what_they_read_is_free():
    a = analyze("ys = [x * k for x in xs]\n")
    assert set(a.free) == {"xs", "k"} and a.outputs == ("ys",)


def test_names_of_builtins_are_kept_and_host_names_are_not():
    a = analyze("s = format(id(input), 'x')\nget_ipython()\ndisplay(s)\n")
    assert a.free == ("format", "id", "input")


def test_a_name_bound_on_some_paths_only_is_a_maybe_read():
    a = analyze("if FLAG:\n    x = 1\ny = x + 1\n")
    assert a.free == ("FLAG", "x") and a.maybe == ("x",) and a.outputs == ("x", "y")
    for both in ("if F:\n    x = 1\nelse:\n    x = 2\ny = x\n",
                 "if F:\n    raise ValueError\nx = 1\ny = x\n",
                 "if F:\n    raise ValueError\nelse:\n    x = 2\ny = x\n",
                 "try:\n    import x\nexcept ImportError:\n    x = None\ny = x\n",
                 "try:\n    x = f()\nexcept KeyError:\n    raise\ny = x\n",
                 "with open(p) as fh:\n    x = fh.read()\ny = x\n"):
        assert "x" not in analyze(both).free, both


def test_loops_try_match_and_suppress_bind_maybe():
    cases = {
        "for i in r:\n    x = i\ny = x\n": {"x"},
        "while c:\n    x = 1\ny = x\n": {"x"},
        "try:\n    x = f()\nexcept KeyError:\n    pass\ny = x\n": {"x"},
        "match v:\n    case 1:\n        x = 1\ny = x\n": {"x"},
        "with suppress(KeyError):\n    x = d['k']\ny = x\n": {"x"},
        "def g():\n    return x\nif c:\n    x = 1\n": {"x"},  # read inside a function
    }
    for source, maybe in cases.items():
        assert set(analyze(source).maybe) == maybe, source
    total = analyze("match v:\n    case 1:\n        x = 1\n    case _:\n        x = 2\ny = x\n")
    assert "x" not in total.free


def test_code_running_magics_are_analysed_as_their_code():
    def transformed(cell: str) -> str:
        from IPython.core.inputtransformer2 import TransformerManager

        return TransformerManager().transform_cell(cell)

    a = analyze(transformed("%time y = x * 10\n"))
    assert a.free == ("x",) and a.outputs == ("y",) and not a.blind_spots
    a = analyze(transformed("%timeit -n1 -r 3 -q z = w + 1\n"))
    assert a.free == ("w",) and a.outputs == ()  # timeit's code runs in a function
    a = analyze(transformed("%prun -q -s cumulative p = k * 2\n"))
    assert a.free == ("k",) and a.outputs == ("p",)
    a = analyze(transformed("%%timeit -n1 s = setup\nq = s + x\n"))
    assert a.free == ("setup", "x") and a.outputs == ()
    a = analyze(transformed("%%capture out\nb = c\n"))
    assert a.free == ("c",) and a.outputs == ("b",)


def test_shell_commands_and_other_magics_are_blind_spots_at_their_lines():
    from IPython.core.inputtransformer2 import TransformerManager

    a = analyze(TransformerManager().transform_cell(
        "v = 1\n!ls data\nfiles = !ls\n%run prep.py\n%timeit --bad-option x\n"))
    assert [s.split(" (")[0] for s in a.blind_spots] == [
        "`!ls data`", "`!ls`", "`%run prep.py`", "`%timeit --bad-option x`"]
    assert a.blind_lines == (2, 3, 4, 5)
