"""The example notebooks run top to bottom in a real kernel and match their saved outputs."""
from __future__ import annotations

import pathlib
import subprocess
import sys

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
SANITIZE = NOTEBOOKS / "nbval-sanitize.cfg"
NAMES = ["quickstart.ipynb", "tour.ipynb"]


def _text(output: dict) -> str:
    if output["output_type"] == "stream":
        return output["text"]
    if output["output_type"] == "error":
        return f"{output['ename']}: {output['evalue']}\n" + "\n".join(output["traceback"])
    return "\n".join(str(v) for v in output.get("data", {}).values())


@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_top_to_bottom_without_errors(name, tmp_path):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    # a kernel error fails the run, except in cells tagged raises-exception
    NotebookClient(nb, timeout=180, kernel_name="python3", allow_errors=False,
                   resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    text = "\n".join(_text(o) for o in outputs)
    assert "UsageError" not in text  # e.g. "Cell magic `%%stage` not found"
    assert "loaded from store" in text
    for cell in nb.cells:
        if "raises-exception" in cell.get("metadata", {}).get("tags", []):
            errors = [o for o in cell.outputs if o["output_type"] == "error"]
            assert errors, f"cell tagged raises-exception did not raise:\n{cell.source}"
            assert "pipelite/" not in "\n".join(errors[0]["traceback"])


@pytest.mark.parametrize("name", NAMES)
def test_notebook_has_committed_outputs(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code), "run the notebook before committing"
    assert any(c.outputs for c in code)


def test_notebooks_match_their_saved_outputs_under_nbval():
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--nbval", "--nbval-sanitize-with", str(SANITIZE),
         "-p", "no:cacheprovider", "-q", *(str(NOTEBOOKS / n) for n in NAMES)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and "failed" not in done.stdout
