"""The graph in mermaid, DOT and SVG; the `pipelite` command line."""
from __future__ import annotations

import subprocess
import sys

import pytest

from pipelite import GraphvizNotFoundError, Pipeline, PipeliteError, stage
from pipelite.cli import main


@pytest.fixture
def two_stages():
    @stage(outputs="x")
    def a():
        return 1

    @stage(outputs="y")
    def b(x):
        return x + 1


def test_mermaid_colours_nodes_by_state(pipeline, two_stages):
    pipeline.run("a")
    text = pipeline.graph()
    assert text.startswith("flowchart LR")
    assert 's_a["a"]:::fresh' in text and 's_b["b"]:::missing' in text
    assert "s_a --> a_x" in text and "a_x --> s_b" in text
    for state in ("fresh", "stale", "missing", "failed"):
        assert f"classDef {state} " in text


def test_dot_output_is_a_digraph_with_states(pipeline, two_stages):
    text = pipeline.graph("dot")
    assert text.startswith("digraph pipelite {") and '"s_a" -> "a_x"' in text
    assert "(missing)" in text


def test_svg_output_uses_graphviz(pipeline, two_stages):
    svg = pipeline.graph("svg")
    assert "<svg" in svg and ">a</text>" in svg


def test_svg_without_graphviz_says_how_to_get_it(pipeline, two_stages, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no `dot` on the PATH
    with pytest.raises(GraphvizNotFoundError, match="install Graphviz"):
        pipeline.graph("svg")


def test_an_unknown_graph_format_is_a_clear_error(pipeline, two_stages):
    with pytest.raises(PipeliteError, match="use 'mermaid', 'dot' or 'svg'"):
        pipeline.graph("png")


def test_cli_status_graph_and_gc_read_the_store(store_dir, two_stages, capsys):
    Pipeline(store_dir).run()
    assert main(["--store", str(store_dir), "status"]) == 0
    out = capsys.readouterr().out
    assert "STAGE" in out and "a" in out and "fresh" in out
    assert main(["--store", str(store_dir), "graph", "--format", "dot"]) == 0
    assert capsys.readouterr().out.startswith("digraph")
    assert main(["--store", str(store_dir), "gc", "--keep", "1"]) == 0
    assert "removed 0 record(s)" in capsys.readouterr().out


def test_cli_reports_user_errors_without_a_traceback(store_dir, capsys):
    assert main(["--store", str(store_dir), "gc", "--keep", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pipelite: error: ") and "Traceback" not in err


def test_the_console_script_is_installed():
    done = subprocess.run(["pipelite", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "status" in done.stdout


def test_the_core_never_imports_ipython():
    code = ("import sys, pipelite, pipelite.cli, pipelite.graph; "
            "bad = [m for m in ('IPython', 'ipywidgets', 'ipykernel') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cli_run_executes_a_notebook_with_the_same_cache(tmp_path):
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(
            "import numpy as np\n"
            "def log(name):\n"
            "    open('calls.log', 'a').write(name + '\\n')"),
        nbformat.v4.new_code_cell("%%stage gen\nlog('gen')\ndata = np.arange(10)"),
        nbformat.v4.new_code_cell("%%stage double\nlog('double')\ndoubled = data * 2"),
        nbformat.v4.new_code_cell("%%stage other\nlog('other')\nunrelated = 1"),
    ]
    nbformat.write(nb, tmp_path / "demo.ipynb")
    log = tmp_path / "calls.log"

    def pipelite(*args):
        return subprocess.run(["pipelite", *args], cwd=tmp_path, capture_output=True,
                              text=True, timeout=300)

    done = pipelite("run", "demo.ipynb", "double")
    assert done.returncode == 0, done.stderr
    assert log.read_text().split() == ["gen", "double"]  # 'other' is only defined
    done = pipelite("run", "demo.ipynb", "--output", "out.ipynb")
    assert done.returncode == 0, done.stderr
    assert log.read_text().split() == ["gen", "double", "other"]  # gen, double from the store
    assert "gen: loaded from store" in done.stdout
    assert (tmp_path / "out.ipynb").exists()
    status = pipelite("status").stdout
    assert all(name in status for name in ("gen", "double", "other"))
    bad = pipelite("run", "missing.ipynb")
    assert bad.returncode == 2 and "no notebook at missing.ipynb" in bad.stderr
