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
