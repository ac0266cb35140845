"""One store, several notebooks (issue 10, item 4): records say which notebook defined a
stage, a name another notebook already uses is warned about before anything runs, and the
panel shows this notebook's stages first and another notebook's collapsed."""
from __future__ import annotations

import os
import warnings

import pytest
from IPython.utils.capture import capture_output
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell, new_notebook

import pipelite_ipy
from pipelite import PipeliteWarning

pytest.importorskip("ipywidgets")

from pipelite_ipy.panel import PipelinePanel  # noqa: E402


def in_notebook(ip, tmp_path, name: str) -> None:
    """Be the kernel of notebook ``name``: Jupyter tells a kernel its notebook's path in
    ``__session__`` (from ``JPY_SESSION_NAME``)."""
    ip.user_ns["__session__"] = str(tmp_path / name)


def run_cell(ip, source: str):
    with capture_output() as cap:
        result = ip.run_cell(source)
    assert result.success, result.error_in_exec
    return cap


def forget_definitions(*names: str) -> None:
    """As in another kernel: the stages are known from the store only."""
    registry = pipelite_ipy.current_session().pipeline.registry
    for name in names:
        registry.remove(name)


def test_a_stage_records_the_notebook_that_defined_it(ip, tmp_path):
    in_notebook(ip, tmp_path, "analysis/train.ipynb")
    run_cell(ip, "%%stage train\nw = 2")
    session = pipelite_ipy.current_session()
    assert session.notebook == "analysis/train.ipynb"  # relative to the store's folder
    assert session.pipeline.origin_of("train") == "analysis/train.ipynb"
    assert "defined in: analysis/train.ipynb" in session.pipeline.explain("train")


def test_no_notebook_no_origin(ip):
    run_cell(ip, "%%stage plain\np = 1")
    session = pipelite_ipy.current_session()
    assert session.notebook is None
    assert session.pipeline.origin_of("plain") is None


def test_a_name_another_notebook_uses_is_warned_about_before_it_runs(ip, tmp_path):
    in_notebook(ip, tmp_path, "train.ipynb")
    run_cell(ip, "%%stage train\nw = 2")
    forget_definitions("train")
    in_notebook(ip, tmp_path, "report.ipynb")
    store = pipelite_ipy.current_session().pipeline.store
    with pytest.warns(PipeliteWarning) as caught:
        run_cell(ip, "%%stage train --define\nw = 3")
    (warning,) = [w for w in caught if "also defined in" in str(w.message)]
    text = str(warning.message)
    assert "stage 'train' is also defined in train.ipynb" in text
    assert "with report.ipynb" in text and "%%stage train_report" in text
    assert len(store.records_of("train")) == 1  # warned before anything ran
    with warnings.catch_warnings():
        warnings.simplefilter("error", PipeliteWarning)  # once is enough
        run_cell(ip, "%%stage train --define\nw = 3")
        run_cell(ip, "%%stage train\nw = 3")


def test_the_same_notebook_redefining_its_stage_is_not_warned(ip, tmp_path):
    in_notebook(ip, tmp_path, "train.ipynb")
    run_cell(ip, "%%stage train\nw = 2")
    forget_definitions("train")  # e.g. after a kernel restart
    with warnings.catch_warnings():
        warnings.simplefilter("error", PipeliteWarning)
        run_cell(ip, "%%stage train\nw = 2")


def test_the_panel_shows_this_notebooks_stages_first_and_others_collapsed(ip, tmp_path):
    in_notebook(ip, tmp_path, "train.ipynb")
    run_cell(ip, "%%stage load\nraw = [1, 2]")
    run_cell(ip, "%%stage fit\nmodel = sum(raw)")
    forget_definitions("fit", "load")
    in_notebook(ip, tmp_path, "report.ipynb")
    run_cell(ip, "%%stage summary\nline = 'ok'")
    panel = PipelinePanel(pipelite_ipy.current_session(), shell=ip)
    try:
        first, group = panel.rows.children
        assert first is panel.row("summary")
        assert group.toggle.description == "▸ 2 stages from train.ipynb"
        assert group.body.layout.display == "none"  # collapsed
        assert [r.name for r in group.body.children] == ["load", "fit"]  # in pipeline order
        assert panel.counts.value.count("pipelite-chip ") == 1  # counts this notebook's
        assert "1 fresh" in panel.counts.value
        group.toggle.click()
        assert group.body.layout.display is None
        assert group.toggle.description.startswith("▾ 2 stages")
        panel.refresh()  # stays open across refreshes
        assert panel.rows.children[1] is group and group.expanded
    finally:
        panel.close()


def test_a_notebook_kernel_records_its_notebook(tmp_path):
    """In a real kernel started the way Jupyter starts it (JPY_SESSION_NAME)."""
    nb = new_notebook(cells=[new_code_cell(c) for c in [
        "%load_ext pipelite", "%%stage prep\nclean = [1]",
        "import pipelite_ipy\nprint(pipelite_ipy.current_session().pipeline.origin_of('prep'))"]])
    NotebookClient(nb, timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute(
        env={**os.environ, "JPY_SESSION_NAME": str(tmp_path / "nb" / "prep.ipynb")})
    assert nb.cells[2].outputs[0]["text"] == "nb/prep.ipynb\n"
