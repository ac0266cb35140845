"""Cells the way JupyterLab runs them: each execute request carries the cell's id in its
metadata (``cellId``), which ipykernel hands to IPython (issue 10, item 7); runs started from
the panel, stopped by Kernel -> Interrupt, and their output in the stage's cell (items 2, 3)."""
from __future__ import annotations

import re
import time

import pytest
from jupyter_client.manager import start_new_kernel
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell, new_notebook

from tests.helpers import outcome, send


@pytest.fixture
def kernel(kernel_manager):
    return kernel_manager[1]


def run(kc, code: str, cell_id: str) -> tuple[str, str]:
    """Execute ``code`` as cell ``cell_id``: (status, everything it printed)."""
    return outcome(kc, send(kc, code, cell_id))


def test_renaming_a_stage_cell_in_a_kernel_replaces_its_stage(kernel):
    assert run(kernel, "%load_ext pipelite", "c0")[0] == "ok"
    assert run(kernel, "%%stage prep\nclean = [1, 2]\n", "c1")[0] == "ok"
    status, text = run(kernel, "%%stage prepare\nclean = [1, 2, 3]\n", "c1")
    assert status == "ok", text
    assert "this cell defined stage 'prep', now 'prepare'" in text
    status, text = run(kernel, "%%stage other\nclean = [0]\n", "c2")
    assert status == "error" and "DuplicateProducerError" in text and "'prepare'" in text


SLOW = ("%%stage slow\nimport os, time\nwhile not os.path.exists('go'):\n"
        "    time.sleep(0.02)\nv = N")


def test_kernel_interrupt_stops_a_run_started_from_the_panel(kernel_manager):
    """ipykernel ignores SIGINT while idle, so Kernel -> Interrupt did not reach a run a
    button started; now it cancels it: nothing is stored, the stage is as it was."""
    km, kc = kernel_manager
    assert run(kc, "%load_ext pipelite\nN = 3", "c0")[0] == "ok"
    assert run(kc, SLOW.replace("%%stage slow", "%%stage slow --define"), "c1")[0] == "ok"
    status, text = run(kc, "import pipelite_ipy\nfrom pipelite_ipy.panel import PipelinePanel\n"
                           "p = PipelinePanel(pipelite_ipy.current_session())\n"
                           "p.run(['slow'], wait=False)  # as the Run button does", "c2")
    assert status == "ok", text
    deadline = time.monotonic() + 30
    while run(kc, "print(p.row('slow').state)", "c3")[1].strip() != "running":
        assert time.monotonic() < deadline, "the stage did not start"
    km.interrupt_kernel()  # the kernel is idle: the run is in the panel's thread
    status, text = run(kc, "import time\nt = time.monotonic()\n"  # (bounded: fail, not hang)
                           "while p._background is not None and time.monotonic() - t < 20:\n"
                           "    time.sleep(0.05)\n"
                           "print(p.row('slow').state, '|', p.progress_text.value)\n"
                           "print(len(p.session.pipeline.store.records_of('slow')))", "c4")
    assert status == "ok", text
    state, progress = text.splitlines()[0].split(" | ")
    assert state == "missing" and "cancelled at" in progress
    assert text.splitlines()[1] == "0"  # nothing stored


def test_a_panel_run_replaces_the_stage_cells_output_in_the_saved_notebook(tmp_path):
    """What nbclient saves is what JupyterLab shows: the stage cell's own prints, displays and
    error are replaced by the panel run's output, under its badge."""
    stage = ("%%stage show\nimport sys\nprint('n is', N)\nprint('careful', file=sys.stderr)\n"
             "from IPython.display import HTML\ndisplay(HTML('<b>bold</b>'))\n"
             "if N == 3:\n    raise ValueError('three')\nv = N")
    nb = new_notebook(cells=[new_code_cell(c) for c in [
        "%load_ext pipelite", "N = 3", stage, "N = 4",
        "import pipelite_ipy\nfrom pipelite_ipy.panel import PipelinePanel\n"
        "p = PipelinePanel(pipelite_ipy.current_session())\n"
        "print(p.run(['show']), p.row('show').state)"]])
    NotebookClient(nb, timeout=120, kernel_name="python3", allow_errors=True,
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = nb.cells[2].outputs
    assert nb.cells[4].outputs[0]["text"] == "True fresh\n"
    badge = outputs[0]["data"]
    lines = badge["text/plain"].splitlines()
    assert lines[0] == "[pipelite] show: fresh"
    assert lines[1].startswith("[pipelite] output of the run from the panel at ")
    assert lines[1].endswith("(the error below is from the cell's own run at "
                             + lines[1].rsplit(" at ", 1)[1])
    assert lines[2:] == ["n is 4", "careful", "<IPython.core.display.HTML object>"]
    assert "<b>bold</b>" in badge["text/html"]
    assert 'class="pipelite-run-stderr"' in badge["text/html"]
    # the cell's own prints, display and stderr were emptied; its error cannot be (no id)
    assert [o["data"] for o in outputs[1:-1]] == [{"text/plain": ""}] * 3
    assert outputs[-1]["output_type"] == "error" and outputs[-1]["evalue"] == "three"


def test_a_failing_stage_cells_traceback_names_its_own_prompt_number(tmp_path):
    """`Cell In[3]` for the cell shown as [3] (issue 10, item 7), in a real kernel."""
    nb = new_notebook(cells=[new_code_cell(c) for c in [
        "%load_ext pipelite", "x = 1", "%%stage boom\ny = x + 1\nraise ValueError('no')"]])
    NotebookClient(nb, timeout=120, kernel_name="python3", allow_errors=True,
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    cell = nb.cells[2]
    (error,) = [o for o in cell.outputs if o["output_type"] == "error"]
    text = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(error["traceback"]))  # no colours
    assert f"Cell In[{cell.execution_count}], line 3" in text
    assert f"Cell In[{cell.execution_count + 1}]" not in text


def test_files_and_policies_across_a_kernel_restart(tmp_path):
    """In real kernels: a --file input stays fresh after a restart (its hash remembered),
    a deleted --out-file comes back from the store, a --no-cache cell runs again."""
    import os

    (tmp_path / "raw.csv").write_text("1,2,3")
    os.utime(tmp_path / "raw.csv", (1e9, 1e9))  # old enough to be remembered (not racy)
    cells = [
        "%load_ext pipelite",
        "%%stage load --file raw.csv\nopen('ran.log', 'a').write('load ')\n"
        "rows = open('raw.csv').read().split(',')",
        "%%stage report --out-file out/report.txt\nimport os\n"
        "open('ran.log', 'a').write('report ')\nos.makedirs('out', exist_ok=True)\n"
        "open('out/report.txt', 'w').write(str(len(rows)))",
        "%%stage now --no-cache\nopen('ran.log', 'a').write('now ')\nstamp = 1",
    ]
    for attempt in range(2):
        km, kc = start_new_kernel(kernel_name="python3", cwd=str(tmp_path))
        try:
            for i, code in enumerate(cells):
                status, text = run(kc, code, f"c{i}")
                assert status == "ok", text
        finally:
            kc.stop_channels()
            km.shutdown_kernel(now=True)
        if attempt == 0:
            os.remove(tmp_path / "out" / "report.txt")
    assert (tmp_path / "ran.log").read_text().split() == ["load", "report", "now", "now"]
    assert (tmp_path / "out" / "report.txt").read_text() == "3"
