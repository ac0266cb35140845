"""The `pipelite` command line (pipelite/cli.py): status, graph, gc and their errors; where
--store goes; a missing store; the status table; `pipelite run NOTEBOOK`."""
from __future__ import annotations

import subprocess
import sys

import pytest

from pipelite import Pipeline, stage
from pipelite.cli import main


def test_cli_status_graph_and_gc_read_the_store(store_dir, two_stages, capsys):
    Pipeline(store_dir).run()
    assert main(["--store", str(store_dir), "status"]) == 0
    out = capsys.readouterr().out
    assert "STAGE" in out and "a" in out and "fresh" in out
    assert main(["--store", str(store_dir), "graph", "--format", "dot"]) == 0
    assert capsys.readouterr().out.startswith("digraph")
    assert main(["--store", str(store_dir), "graph"]) == 0
    assert "shape=ellipse" not in (out := capsys.readouterr().out) and "flowchart LR" in out
    assert main(["--store", str(store_dir), "graph", "--artifacts", "--format", "dot"]) == 0
    assert capsys.readouterr().out.count("shape=ellipse") == 2  # x and y
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


# -- --store before or after the command -----------------------------------------------------
@pytest.fixture
def stored(store_dir):
    """A store holding one result of stage 'a' (defined only while it ran)."""
    from pipelite import REGISTRY

    @stage(outputs="x")
    def a():
        return 1

    Pipeline(store_dir).run()
    REGISTRY.clear()  # like the command line: no stage is defined, all come from the store
    return store_dir


@pytest.mark.parametrize("command, expect", [
    (["status"], "STAGE"),
    (["graph", "--format", "dot"], "digraph"),
    (["gc", "--keep", "1"], "removed 0 record(s)"),
])
def test_store_is_accepted_after_every_command_and_before_it(stored, capsys, command, expect):
    from pipelite.cli import main

    for argv in (["--store", str(stored), *command], [*command, "--store", str(stored)],
                 [command[0], "--store", str(stored), *command[1:]]):
        assert main(argv) == 0, argv
        out = capsys.readouterr().out
        assert expect in out, argv
        if command == ["status"]:
            assert out.splitlines()[1].split()[0] == "a"


def test_run_passes_a_store_given_after_the_command_to_the_notebook(tmp_path, monkeypatch):
    import nbformat

    from pipelite import cli

    seen = []
    monkeypatch.setattr(cli, "_run_notebook", lambda args: seen.append(args.store) or 0)
    assert cli.main(["run", "nb.ipynb", "--store", "elsewhere"]) == 0
    assert cli.main(["--store", "before", "run", "nb.ipynb"]) == 0
    assert cli.main(["run", "nb.ipynb"]) == 0
    assert seen == ["elsewhere", "before", None]
    nb = cli.prepare_notebook(nbformat.v4.new_notebook(), [], str(tmp_path / "s"))
    assert nb.cells[0].source == f"%load_ext pipelite\n%pipelite store {tmp_path / 's'}"
    nb = cli.prepare_notebook(nbformat.v4.new_notebook(), [], None)
    assert nb.cells[0].source == "%load_ext pipelite"  # the notebook's own store


# -- a store that does not exist ---------------------------------------------------------------
@pytest.mark.parametrize("command", [["status"], ["graph"], ["gc"]])
def test_a_missing_local_store_is_an_error_not_an_empty_table(tmp_path, capsys, command):
    from pipelite.cli import main

    missing = tmp_path / "no-such-store"
    for argv in ([*command, "--store", str(missing)], ["--store", str(missing), *command]):
        assert main(argv) == 2
        captured = capsys.readouterr()
        assert captured.err == f"pipelite: error: no PipeLite store at {missing}\n"
        assert captured.out == ""
    assert not missing.exists()  # and nothing was created there


def test_an_existing_empty_store_directory_has_no_stages_yet(tmp_path, capsys):
    from pipelite.cli import main

    assert main(["status", "--store", str(tmp_path)]) == 0
    assert capsys.readouterr().out.startswith("no stages yet")


# -- the status table ----------------------------------------------------------------------------
def test_cli_status_shows_stored_results_as_stored_without_a_why(stored, capsys):
    from pipelite.cli import main

    assert main(["status", "--store", str(stored)]) == 0
    out = capsys.readouterr().out
    header, row = out.splitlines()[:2]
    assert header.split() == ["STAGE", "STATE", "LAST", "RUN", "TOOK", "OUTPUTS", "WHY"]
    assert row.split()[:2] == ["a", "stored"]
    assert row.split()[-1] == "-"
    assert "not defined in this session" not in out and "fresh" not in out
    assert "*" not in out  # every stage is from the store here: no footnote needed


def test_the_api_status_is_unchanged(stored):
    s = Pipeline(stored).status()[0]
    assert s.state == "fresh" and not s.defined
    assert "not defined in this session (stored result from" in s.reasons[0]


# -- pipelite run NOTEBOOK STAGE ---------------------------------------------------------------
def _notebook(path, *sources):
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# demo")]
    nb.cells += [nbformat.v4.new_code_cell(src) for src in sources]
    nbformat.write(nb, path)


def _pipelite(cwd, *args):
    import subprocess

    return subprocess.run(["pipelite", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def test_run_with_stage_names_skips_plain_cells_that_read_stage_outputs(tmp_path):
    _notebook(
        tmp_path / "demo.ipynb",
        "import numpy as np\n"
        "def log(name):\n"
        "    open('calls.log', 'a').write(name + '\\n')",
        "%%stage gen\nlog('gen')\ntrain_data = np.arange(10)",
        "print(train_data.shape)",  # cell 4 (after the markdown): reads a stage output
        "%%stage double\nlog('double')\ndoubled = train_data * 2",
        "print(doubled.sum())",
        "helper_ok = 1",
    )
    done = _pipelite(tmp_path, "run", "demo.ipynb", "double", "--store", "elsewhere")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "calls.log").read_text().split() == ["gen", "double"]
    assert ("pipelite: skipped cell 4 (reads a stage output that is not loaded in this mode): "
            "NameError: name 'train_data' is not defined") in done.stderr
    assert "skipped cell 6 (reads a stage output" in done.stderr
    assert "cell 7" not in done.stderr and "Traceback" not in done.stderr
    assert (tmp_path / "elsewhere" / "records" / "double").is_dir()  # --store after `run`
    assert not (tmp_path / ".pipelite").exists()


def test_run_with_stage_names_fails_when_the_stage_fails(tmp_path):
    _notebook(
        tmp_path / "boom.ipynb",
        "%%stage boom\nvalue = 1 / 0",
        "print(value)",
    )
    done = _pipelite(tmp_path, "run", "boom.ipynb", "boom")
    assert done.returncode == 1
    assert "skipped cell 3 (reads a stage output" in done.stderr
    assert "pipelite: a cell of boom.ipynb failed" in done.stderr
    assert "ZeroDivisionError" in done.stderr and "%pipelite run boom" in done.stderr


def test_run_with_stage_names_fails_when_a_stage_cell_cannot_be_defined(tmp_path):
    _notebook(
        tmp_path / "bad.ipynb",
        "%%stage 9lives\nvalue = 1",
        "%%stage ok\nfine = 1",
    )
    done = _pipelite(tmp_path, "run", "bad.ipynb", "ok")
    assert done.returncode == 1
    assert "pipelite: a cell of bad.ipynb failed" in done.stderr
    assert "invalid stage name '9lives'" in done.stderr


def test_run_uses_the_store_beside_the_notebook_force_and_exit_1(tmp_path):
    (tmp_path / "nbs").mkdir()
    _notebook(tmp_path / "nbs" / "demo.ipynb",
              "%%stage gen\nopen('calls.log', 'a').write('gen\\n')\ndata = 1",
              "raise RuntimeError('plain cell fails')")

    def run(*args):
        return _pipelite(tmp_path, "run", *args)

    assert run("nbs/demo.ipynb").returncode == 1          # without stage names: any cell
    assert (tmp_path / "nbs" / ".pipelite" / "records" / "gen").is_dir()
    assert not (tmp_path / ".pipelite").exists()           # beside the notebook, not cwd
    assert run("nbs/demo.ipynb", "gen", "--force").returncode == 0
    assert (tmp_path / "nbs" / "calls.log").read_text().split() == ["gen", "gen"]


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


# -- issue 11: the command line's promises ---------------------------------------------------
def test_run_force_without_stage_names_recomputes_every_stage(tmp_path):
    _notebook(tmp_path / "demo.ipynb",
              "%%stage a\nopen('calls.log', 'a').write('a\\n')\nx = 1",
              "%%stage b\nopen('calls.log', 'a').write('b\\n')\ny = x + 1")
    assert _pipelite(tmp_path, "run", "demo.ipynb").returncode == 0
    assert _pipelite(tmp_path, "run", "demo.ipynb").returncode == 0  # fresh: loaded
    assert (tmp_path / "calls.log").read_text().split() == ["a", "b"]
    done = _pipelite(tmp_path, "run", "demo.ipynb", "--force")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "calls.log").read_text().split() == ["a", "b", "a", "b"]


def test_run_output_into_a_missing_folder_is_refused_before_the_notebook_runs(tmp_path):
    _notebook(tmp_path / "demo.ipynb", "%%stage a\nopen('calls.log', 'a').write('a\\n')\nx = 1")
    done = _pipelite(tmp_path, "run", "demo.ipynb", "--output", "no/such/folder/out.ipynb")
    assert done.returncode == 2
    assert "its folder" in done.stderr and "does not exist" in done.stderr
    assert not (tmp_path / "calls.log").exists()  # nothing ran


def test_a_stage_failing_in_a_plain_cell_fails_a_targeted_run(tmp_path):
    """`pipelite run NB STAGE`: plain cells that fail are skipped with a note, but a stage
    that fails makes the command exit 1, whatever cell ran it."""
    _notebook(tmp_path / "demo.ipynb",
              "%%stage broken\nvalue = 1 / 0",
              "%%stage fine\nok = 1",
              "import pipelite_ipy\npipelite_ipy.current_session().run(['broken'])")
    done = _pipelite(tmp_path, "run", "demo.ipynb", "fine")
    assert done.returncode == 1
    assert "pipelite: stage 'broken' failed: ZeroDivisionError: division by zero" in done.stderr


def test_the_command_lines_store_wins_over_the_notebooks(tmp_path):
    _notebook(tmp_path / "demo.ipynb",
              "%pipelite store ./in-notebook\nimport os",
              "%%stage a\nx = 1")
    done = _pipelite(tmp_path, "run", "demo.ipynb", "--store", "cli-store")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "cli-store" / "records" / "a").is_dir()
    assert not (tmp_path / "in-notebook").exists()


def test_status_shows_a_failed_stage_with_its_errors_first_line(store_dir, capsys):
    @stage(outputs="v")
    def shaky():
        raise ValueError("the source is down\nmore detail")

    with pytest.raises(ValueError):
        Pipeline(store=str(store_dir)).run("shaky")
    assert main(["status", "--store", str(store_dir)]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("shaky"))
    assert "failed" in line and line.endswith("ValueError: the source is down")
    assert main(["graph", "--store", str(store_dir)]) == 0
    assert ":::failed" in capsys.readouterr().out  # the same state in the graph


def test_the_graph_says_stored_where_status_does(stored, capsys):
    assert main(["status", "--store", str(stored)]) == 0
    assert " stored " in capsys.readouterr().out
    assert main(["graph", "--store", str(stored)]) == 0
    text = capsys.readouterr().out
    assert ":::stored" in text and ":::fresh" not in text.split("subgraph")[0]
    assert 'legend_stored["stored"]:::stored' in text
