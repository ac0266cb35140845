"""Freshness rules through ``%%stage`` in fresh kernel processes: each notebook run is a new
kernel (nbclient), as after a restart; stages append their name to ran.log, a side effect the
cache cannot replay, so the log says what really executed."""
from __future__ import annotations

import pathlib
import textwrap

from tests.test_kernel_restart import execute, log


def write(path: pathlib.Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))


FEATURES = """\
%%stage feats
from src.features import build
open("ran.log", "a").write("feats\\n")
out = build(1)
print("out", out)"""


def test_editing_a_submodule_a_cell_imports_recomputes_it_after_a_restart(tmp_path):
    write(tmp_path / "src" / "__init__.py", "")
    write(tmp_path / "src" / "features.py", "def build(x):\n    return x + 1\n")
    cells = ["%load_ext pipelite", FEATURES]
    assert "out 2" in execute(tmp_path, cells)[1]
    assert "loaded from store" in execute(tmp_path, cells)[1]  # unchanged: loaded
    write(tmp_path / "src" / "features.py", "def build(x):\n    return x + 40\n")
    texts = execute(tmp_path, cells)
    assert "out 41" in texts[1] and log(tmp_path) == ["feats", "feats"]


def test_editing_a_module_imported_by_a_user_module_recomputes_after_a_restart(tmp_path):
    write(tmp_path / "mymod.py", "from helper2 import g\ndef f(x):\n    return g(x)\n")
    write(tmp_path / "helper2.py", "def g(x):\n    return x + 1\n")
    cells = ["%load_ext pipelite",
             '%%stage s\nimport mymod\nopen("ran.log", "a").write("s\\n")\ny = mymod.f(1)\n'
             'print("y", y)']
    assert "y 2" in execute(tmp_path, cells)[1]
    write(tmp_path / "helper2.py", "def g(x):\n    return x + 9\n")
    assert "y 10" in execute(tmp_path, cells)[1]
    assert log(tmp_path) == ["s", "s"]


LAMBDAS = 'f1 = lambda x: x + 1\nf2 = lambda x: x * 2'
USES = '%%stage s\nopen("ran.log", "a").write("s\\n")\ny = f1(1) + f2(1)\nprint("y", y)'


def test_editing_one_of_two_lambdas_recomputes_the_cell_after_a_restart(tmp_path):
    assert "y 4" in execute(tmp_path, ["%load_ext pipelite", LAMBDAS, USES])[2]
    assert "loaded from store" in execute(tmp_path, ["%load_ext pipelite", LAMBDAS, USES])[2]
    edited = LAMBDAS.replace("x + 1", "x + 10")
    assert "y 13" in execute(tmp_path, ["%load_ext pipelite", edited, USES])[2]
    assert log(tmp_path) == ["s", "s"]


def test_a_zero_d_array_becoming_one_d_recomputes_the_cell_after_a_restart(tmp_path):
    use = '%%stage s\nopen("ran.log", "a").write("s\\n")\nd = A.ndim\nprint("ndim", d)'
    assert "ndim 0" in execute(tmp_path, ["%load_ext pipelite",
                                          "import numpy as np\nA = np.array(0)", use])[2]
    assert "ndim 1" in execute(tmp_path, ["%load_ext pipelite",
                                          "import numpy as np\nA = np.array([0])", use])[2]
    assert log(tmp_path) == ["s", "s"]


def test_adding_a_docstring_to_a_helper_recomputes_nothing_after_a_restart(tmp_path):
    helper = "def helper(x=None):\n    return 1 if x is None else x"
    use = '%%stage s\nopen("ran.log", "a").write("s\\n")\ny = helper()'
    execute(tmp_path, ["%load_ext pipelite", helper, use])
    documented = helper.replace("def helper(x=None):\n", 'def helper(x=None):\n    """Doc."""\n')
    texts = execute(tmp_path, ["%load_ext pipelite", documented, use])
    assert "loaded from store" in texts[2] and log(tmp_path) == ["s"]
