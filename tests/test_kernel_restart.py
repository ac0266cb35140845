"""Across real kernel restarts, a notebook reloads what is fresh and recomputes exactly what an
edit affects. Each run is a new kernel (nbclient); the stages append their name to ran.log, a
side effect the cache cannot replay, so the log says what really executed."""
from __future__ import annotations

import pathlib
import shutil

import pytest
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell, new_notebook

from tests.helpers import printed

LOAD = "%load_ext pipelite"
HELPERS = '''\
LOG = "ran.log"
SCALE = 2

def normalise(v):
    return v / 10

def make_offset(k):
    def offset(x):
        return x + k
    return offset

offset = make_offset(1)'''
GEN = '''\
%%stage gen_data
import numpy as np
open(LOG, "a").write("gen_data\\n")
train_data = np.arange(12.0).reshape(3, 4) * SCALE'''
TRAIN = '''\
%%stage train_model
open(LOG, "a").write("train_model\\n")
model_weights = normalise(train_data.mean(axis=0))'''
SHIFT = '''\
%%stage shifted
open(LOG, "a").write("shifted\\n")
shifted = offset(model_weights)
print("shifted", shifted.round(2).tolist())'''
LABELS = '''\
%%stage labels
open(LOG, "a").write("labels\\n")
labels = ["a", "b", "c", "d"]'''
CELLS = [LOAD, HELPERS, GEN, TRAIN, SHIFT, LABELS]
ALL = ["gen_data", "train_model", "shifted", "labels"]


def execute(folder: pathlib.Path, cells: list[str]) -> list[str]:
    """Run ``cells`` as a notebook in a new kernel working in ``folder``; each cell's text."""
    nb = new_notebook(cells=[new_code_cell(c) for c in cells])
    NotebookClient(nb, timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(folder)}}).execute()
    texts = []
    for cell in nb.cells:
        texts.append(printed(cell))
    return texts


def log(folder: pathlib.Path) -> list[str]:
    path = folder / "ran.log"
    return path.read_text().split() if path.exists() else []


@pytest.fixture(scope="module")
def first_run(tmp_path_factory) -> pathlib.Path:
    """A folder whose store holds the notebook's first run (all four stages computed)."""
    folder = tmp_path_factory.mktemp("first")
    execute(folder, CELLS)
    assert log(folder) == ALL
    return folder


@pytest.fixture
def restarted(first_run, tmp_path) -> pathlib.Path:
    """A copy of the first run's folder, to be run again in a new kernel."""
    folder = tmp_path / "nb"
    shutil.copytree(first_run, folder)
    return folder


def edited(old: str, new: str) -> list[str]:
    cells = [c.replace(old, new) for c in CELLS]
    assert cells != CELLS, f"{old!r} is not in the notebook"
    return cells


def test_after_a_restart_every_fresh_stage_is_loaded_not_recomputed(restarted):
    texts = execute(restarted, CELLS)
    assert log(restarted) == ALL  # nothing ran a second time
    for cell_text, name in zip(texts[2:], ALL, strict=True):
        assert f"[pipelite] {name}: loaded from store" in cell_text
    assert "shifted [1.8, 2.0, 2.2, 2.4]" in texts[4]  # the print, replayed


def test_after_a_restart_loaded_values_are_bound_and_read_only(restarted):
    texts = execute(restarted, CELLS + [
        "print(model_weights.tolist(), labels)",
        "try:\n    train_data[0, 0] = 1.0\nexcept ValueError as exc:\n    print('refused:', exc)",
    ])
    assert texts[-2].strip() == "[0.8, 1.0, 1.2, 1.4] ['a', 'b', 'c', 'd']"
    assert texts[-1].startswith("refused: assignment destination is read-only")


def test_editing_a_comment_recomputes_nothing(restarted):
    execute(restarted, edited('open(LOG, "a").write("train_model\\n")',
                              '# the mean, scaled\nopen(LOG, "a").write("train_model\\n")  # log'))
    assert log(restarted) == ALL


def test_editing_a_helper_recomputes_its_callers_and_their_dependents(restarted):
    execute(restarted, edited("return v / 10", "return v / 100"))
    assert log(restarted)[4:] == ["train_model", "shifted"]


def test_editing_a_global_constant_recomputes_what_reads_it_and_downstream(restarted):
    execute(restarted, edited("SCALE = 2", "SCALE = 3"))
    assert log(restarted)[4:] == ["gen_data", "train_model", "shifted"]


def test_editing_a_closures_captured_value_recomputes_its_callers(restarted):
    execute(restarted, edited("offset = make_offset(1)", "offset = make_offset(2)"))
    assert log(restarted)[4:] == ["shifted"]


def test_editing_an_upstream_cell_recomputes_it_and_its_dependents(restarted):
    execute(restarted, edited("reshape(3, 4) * SCALE", "reshape(3, 4) * SCALE + 1"))
    assert log(restarted)[4:] == ["gen_data", "train_model", "shifted"]


def test_running_a_downstream_cell_first_runs_its_stale_upstreams(restarted):
    texts = execute(restarted, [
        LOAD, HELPERS.replace("SCALE = 2", "SCALE = 5"),
        GEN.replace("%%stage gen_data", "%%stage gen_data --define"),
        TRAIN.replace("%%stage train_model", "%%stage train_model --define"),
        SHIFT,
    ])
    assert log(restarted)[4:] == ["gen_data", "train_model", "shifted"]
    assert "[pipelite] running stage 'gen_data' (1/3)" in texts[4]
    assert "[pipelite] running stage 'train_model' (2/3)" in texts[4]
    assert "shifted [3.0, 3.5, 4.0, 4.5]" in texts[4]


# -- freshness across restarts: what a cell reads that is easy to miss ------------------------
FRESH_CELLS = [
    LOAD,
    'LOG = "ran.log"\nx = 10\nFLAG = False\nformat = "csv"',
    '%%stage flagged -o y\nopen(LOG, "a").write("flagged\\n")\nif FLAG:\n    x = 1\ny = x + 1',
    '%%stage shadow\nopen(LOG, "a").write("shadow\\n")\nlabel = format.upper()',
    '%%stage timed\nopen(LOG, "a").write("timed\\n")\n%time t = x * 10',
    '%%stage env --env PIPELITE_KERNEL_TEST\nopen(LOG, "a").write("env\\n")\ne = 1',
    '%%stage gen\nimport numpy as np\nopen(LOG, "a").write("gen\\n")\n'
    'def helper(v):\n    return v * 2\ndata = np.arange(3)',
    'print(helper(np.ones(2)).tolist(), data.tolist(), y, label, t)',
]
FRESH_ALL = ["flagged", "shadow", "timed", "env", "gen"]


def test_after_a_restart_what_cells_read_through_builtins_magics_and_branches_is_tracked(
        tmp_path, monkeypatch):
    monkeypatch.setenv("PIPELITE_KERNEL_TEST", "a")
    execute(tmp_path, FRESH_CELLS)
    assert log(tmp_path) == FRESH_ALL
    # a new kernel, the same notebook: everything loads, and the loaded cell's import and def
    # are bound again for the plain cell that uses them
    texts = execute(tmp_path, FRESH_CELLS)
    assert log(tmp_path) == FRESH_ALL
    assert texts[-1].strip() == "[2.0, 2.0] [0, 1, 2] 11 CSV 100"
    # a new kernel where the notebook's x, its global named like a builtin and the declared
    # environment variable changed: exactly the cells that read them run again
    monkeypatch.setenv("PIPELITE_KERNEL_TEST", "b")
    texts = execute(tmp_path, [c.replace("x = 10", "x = 20").replace('"csv"', '"json"')
                               for c in FRESH_CELLS])
    assert log(tmp_path)[5:] == ["flagged", "shadow", "timed", "env"]
    assert texts[-1].strip() == "[2.0, 2.0] [0, 1, 2] 21 JSON 200"


def test_after_a_restart_a_cell_importing_your_own_module_is_loaded_until_it_changes(tmp_path):
    (tmp_path / "mymod.py").write_text("VALUE = 3\n\ndef value():\n    return VALUE\n")
    stage = '%%stage use\nimport mymod\nopen(LOG, "a").write("use\\n")\nv = mymod.value()'
    # the first session had imported the module before the stage ran; after the restart the
    # stage cell runs first: its import runs before the check, so the module is fingerprinted
    # by what it holds in both sessions (not once by its file), and nothing is recomputed
    execute(tmp_path, [LOAD, 'LOG = "ran.log"', "import mymod", stage])
    cells = [LOAD, 'LOG = "ran.log"', stage, "print(v, mymod.VALUE)"]
    assert execute(tmp_path, cells)[-1].strip() == "3 3"
    assert log(tmp_path) == ["use"]
    (tmp_path / "mymod.py").write_text("VALUE = 4\n\ndef value():\n    return VALUE\n")
    assert execute(tmp_path, cells)[-1].strip() == "4 4"
    assert log(tmp_path) == ["use", "use"]
