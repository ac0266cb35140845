"""The extension's session (pipelite_ipy/session.py), driven through its own methods in a real
InteractiveShell with the extension loaded: its store, defining cell stages, running them and
binding their outputs, loading and replaying a cell, progress, and closing."""
from __future__ import annotations

import re
import textwrap

import pytest
from IPython.utils.capture import capture_output

import pipelite_ipy
from pipelite_ipy.session import ReassignedInputError


@pytest.fixture
def session(ip):  # noqa: F811 - the fixture imported above
    return pipelite_ipy.current_session()


def define(session, name: str, source: str, inputs=None, outputs=None):
    """What ``%%stage NAME`` does before it runs the cell."""
    return session.define_cell(name, f"%%stage {name}", textwrap.dedent(source), inputs, outputs)


@pytest.fixture
def two_cells(session):
    """gen -> use, with a plain global the second one reads."""
    session.shell.user_ns["OFFSET"] = 10
    define(session, "gen", 'print("generating")\ndata = [1, 2, 3]')
    define(session, "use", "total = sum(data) + OFFSET")
    return session


# -- the store ---------------------------------------------------------------------------------
def test_store_defaults_to_dot_pipelite_in_the_working_directory(ip, tmp_path):  # noqa: F811
    assert pipelite_ipy.current_session().pipeline.store.url == str(tmp_path / ".pipelite")


def test_store_can_be_configured_with_traitlets(ip, tmp_path):  # noqa: F811
    ip.run_line_magic("unload_ext", "pipelite")
    ip.config.PipeliteSession.store = str(tmp_path / "configured")
    ip.run_line_magic("load_ext", "pipelite")
    assert pipelite_ipy.current_session().pipeline.store.url == str(tmp_path / "configured")


def test_a_new_store_gives_a_new_pipeline_that_keeps_the_parameters(session, tmp_path):
    session.pipeline.params["gen"] = {"n": 1}
    session.store = str(tmp_path / "elsewhere")
    assert session.pipeline.store.url == str(tmp_path / "elsewhere")
    assert session.pipeline.params == {"gen": {"n": 1}}


# -- defining cell stages ----------------------------------------------------------------------
def test_define_cell_registers_a_stage_without_running_it(session):
    st = define(session, "gen", "data = [1, 2, 3]")
    assert session.pipeline.registry.get("gen") is st and st.outputs == ("data",)
    assert [(s.name, s.state) for s in session.pipeline.status()] == [("gen", "missing")]
    assert "data" not in session.shell.user_ns


def test_a_cells_inputs_are_its_free_names_that_other_stages_produce(two_cells):
    assert two_cells.pipeline.registry.get("use").inputs == ("data",)  # OFFSET: a global


def test_known_artifacts_names_each_artifact_with_its_producer(two_cells):
    assert two_cells.known_artifacts() == {"data": "gen", "total": "use"}
    assert two_cells.known_artifacts(exclude="use") == {"data": "gen"}


def test_a_cell_that_reassigns_its_input_is_refused_when_it_is_defined(two_cells):
    with pytest.raises(ReassignedInputError, match=r"stage 'bump' assigns 'data', which stage "
                                                   r"'gen' produces.*e\.g\. data2 = data \+ \[4\]"):
        define(two_cells, "bump", "data = data + [4]")
    assert two_cells.pipeline.registry.get("bump") is None


# -- running -----------------------------------------------------------------------------------
def test_run_binds_the_targets_outputs_into_the_user_namespace(two_cells):
    result = two_cells.run(["use"])
    assert result.executed == ["gen", "use"]
    assert two_cells.shell.user_ns["total"] == 16


def test_a_cell_stage_is_computed_first_then_loaded_with_its_output_replayed(two_cells):
    with capture_output() as first:
        outcome = two_cells.run_cell_stage("gen")
    assert outcome.computed and outcome.executed == ["gen"]
    assert outcome.values["data"] == [1, 2, 3]
    assert first.stdout.startswith("generating\n[pipelite] gen: ran in ")
    assert first.stdout.rstrip().endswith(
        ": no stored result; stored data (list of length 3, 7 B)")  # why, and what it stored
    del two_cells.shell.user_ns["data"]
    with capture_output() as again:
        outcome = two_cells.run_cell_stage("gen")
    assert not outcome.computed and outcome.record.stage == "gen"
    # the cell's own output, replayed, then the line saying so: where a run says it ran
    assert again.stdout.startswith("generating\n[pipelite] gen: loaded from store (run ")
    assert two_cells.shell.user_ns["data"] == [1, 2, 3]


def test_a_cell_says_why_it_ran_again(two_cells):
    two_cells.run_cell_stage("use")
    two_cells.shell.user_ns["OFFSET"] = 11
    with capture_output() as cap:
        two_cells.run_cell_stage("use")
    (line,) = [x for x in cap.stdout.splitlines() if x.startswith("[pipelite] use:")]
    assert re.fullmatch(r"\[pipelite\] use: ran in \S+ \S+: global 'OFFSET' changed; "
                        r"stored total \(int, 2 B\)", line), line
    with capture_output() as cap:
        two_cells.run_cell_stage("use", force=True)
    assert ": forced; stored total" in cap.stdout


def test_progress_is_printed_for_the_upstream_stages_a_cell_runs(two_cells):
    with capture_output() as cap:
        two_cells.run_cell_stage("use")
    lines = [line for line in cap.stdout.splitlines() if line.startswith("[pipelite]")]
    assert lines[0] == "[pipelite] running stage 'gen' (1/2): no stored result"
    assert lines[1].startswith("[pipelite] gen: ran in ") and lines[1].endswith(", stored")
    assert not any("running stage 'use'" in line for line in lines)  # its own cell: no line


def test_a_later_run_from_outside_a_cell_gives_no_stale_reasons(two_cells):
    """The reasons a cell's run printed belong to that run: a later one (a panel button)
    says its own reason, never an old one."""
    two_cells.run_cell_stage("use")  # gen ran then: "no stored result"
    with capture_output() as cap:
        two_cells.run(["gen"], force=True)
    assert "[pipelite] running stage 'gen' (1/1): forced\n" in cap.stdout
    assert "no stored result" not in cap.stdout


def test_runs_the_session_did_not_start_print_no_progress(two_cells):
    with capture_output() as cap:
        two_cells.pipeline.run(["use"])  # e.g. from a script or a panel of another store
    assert "[pipelite]" not in cap.stdout


# -- closing -----------------------------------------------------------------------------------
def test_a_closed_session_stops_listening_and_closing_again_is_harmless(session):
    from pipelite import events

    session.close()
    assert session._on_event not in events._listeners
    session.close()
