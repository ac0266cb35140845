"""pipelite.present: the one place the command line, the magics, the panel and the graph take
their words, colours and units from."""
from __future__ import annotations

import datetime as dt
import linecache

import pytest

from pipelite import OutputInfo, Pipeline, StageStatus, UnknownStageError, stage
from pipelite.present import (
    STATE_COLOURS,
    STATES,
    calling_frames,
    explain_text,
    human_bytes,
    human_duration,
    local_time,
    status_table,
    user_frames,
)


def status(name, state="fresh", *, reasons=(), outputs=(), last_run=None, duration=None,
           defined=True):
    return StageStatus(name=name, state=state, reasons=tuple(reasons), outputs=tuple(outputs),
                       inputs=(), last_run=last_run, duration=duration, fingerprint=None,
                       defined=defined)


WHEN = dt.datetime(2024, 5, 17, 9, 30, 12, tzinfo=dt.timezone.utc)
WEIGHTS = OutputInfo("model_weights", 8128, "npy", "ndarray float64 (10,)", "0" * 32)


@pytest.fixture
def in_india(monkeypatch):
    """This machine's local time is UTC+5:30 (IST) for the test."""
    import time

    monkeypatch.setenv("TZ", "Asia/Kolkata")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_every_time_shown_is_local_with_the_zone_where_it_is_full(in_india):
    """One convention (issue 10, item 6): local time; the zone where the whole timestamp is
    shown; records keep UTC ISO."""
    from pipelite_ipy.magics import StatusTable

    assert local_time(WHEN) == "2024-05-17 15:00"
    assert local_time(WHEN, full=True) == "2024-05-17 15:00:12 IST"
    assert local_time(WHEN.isoformat()) == "2024-05-17 15:00"  # as a record keeps it
    assert local_time(None) == "-"
    s = status("train", last_run=WHEN, duration=2.0, outputs=[WEIGHTS])
    assert "2024-05-17 15:00" in status_table([s])
    assert "last run: 2024-05-17 15:00:12 IST, took 2.0 s" in explain_text(s)
    html = StatusTable([s])._repr_html_()
    assert '<td style="white-space:nowrap">2024-05-17 15:00</td>' in html
    assert '<td style="white-space:nowrap">2.0 s</td>' in html
    assert 'th style="text-align:left"' in html


def test_every_state_has_a_colour_and_every_colour_is_a_state():
    assert list(STATE_COLOURS) == list(STATES)


def test_the_states_are_defined_once():
    import pipelite.pipeline

    assert pipelite.pipeline.STATES is STATES


def test_the_graph_draws_every_state_in_its_colour():
    from pipelite.graph import render

    text = render([status("a", "stale")], "mermaid")
    for state, (fill, stroke) in STATE_COLOURS.items():
        assert f"classDef {state} fill:{fill},stroke:{stroke},color:#000" in text


@pytest.mark.parametrize("n, text", [(0, "0 B"), (208, "208 B"), (8128, "7.9 KiB"),
                                     (5 * 2**20, "5.0 MiB"), (2**30, "1.0 GiB"),
                                     (3 * 2**40, "3072.0 GiB")])
def test_sizes_read_in_binary_units(n, text):
    assert human_bytes(n) == text


@pytest.mark.parametrize("seconds, text", [(0.000338, "338 µs"), (0.012, "12 ms"),
                                           (3.42, "3.4 s"), (125, "2 min 5 s")])
def test_durations_read_in_the_unit_that_fits(seconds, text):
    assert human_duration(seconds) == text


def test_the_status_table_lines_up_its_columns_and_marks_store_only_stages():
    table = status_table([
        status("gen_data", outputs=[WEIGHTS], last_run=WHEN, duration=0.012),
        status("train_model", "stale", reasons=["its code changed", "global 'EPOCHS' changed"]),
        status("old", last_run=WHEN, duration=3.42, defined=False,
               reasons=["not defined in this session (stored result from 2024-05-17 09:30)"]),
    ])
    assert table == (
        "STAGE        STATE  LAST RUN          TOOK   OUTPUTS                  WHY\n"
        "gen_data     fresh  2024-05-17 09:30  12 ms  model_weights (7.9 KiB)  -\n"
        "train_model  stale  -                 -      -                        its code "
        "changed; global 'EPOCHS' changed\n"
        "old *        fresh  2024-05-17 09:30  3.4 s  -                        not defined in "
        "this session (stored result from 2024-05-17 09:30)\n"
        "* known from the store only (not defined in this session)")


def test_outside_a_session_a_stage_known_from_the_store_is_stored_and_has_no_why():
    table = status_table([status("old", last_run=WHEN, duration=3.42, defined=False,
                                 reasons=["not defined in this session"])], in_session=False)
    assert table == ("STAGE  STATE   LAST RUN          TOOK   OUTPUTS  WHY\n"
                     "old    stored  2024-05-17 09:30  3.4 s  -        -")


def test_the_explain_text_gives_state_reasons_blind_spots_last_run_and_outputs():
    text = explain_text(status("s", "stale", reasons=["its code changed"], outputs=[WEIGHTS],
                               last_run=WHEN, duration=0.012),
                        ["`!ls` (a shell command)"])
    assert text == ("stage 's' is stale\n"
                    "  - its code changed\n"
                    "  - blind spot: `!ls` (a shell command)\n"
                    "last run: 2024-05-17 09:30:12 UTC, took 12 ms\n"
                    "outputs: model_weights (ndarray float64 (10,), 7.9 KiB)")


def test_a_fresh_stage_is_explained_as_matching_its_stored_result():
    assert explain_text(status("s")) == (
        "stage 's' is fresh: its code, parameters, globals and inputs match the stored result")
    assert explain_text(status("s", defined=False)) == (
        "stage 's' is fresh (not defined in this session)")


def test_pipeline_explain_is_the_explain_text_of_the_stage_status(pipeline):
    @stage(outputs="n")
    def numbers():
        return [1, 2, 3]

    pipeline.run("numbers")
    [s] = pipeline.status()
    provenance = pipeline.record("numbers").provenance
    assert pipeline.explain("numbers") == explain_text(s, provenance=provenance)


def test_the_command_line_prints_the_status_table(store_dir, capsys):
    from pipelite.cli import main

    @stage(outputs="n")
    def numbers():
        return [1, 2, 3]

    pipeline = Pipeline(store=str(store_dir))
    pipeline.run("numbers")
    assert main(["status", "--store", str(store_dir)]) == 0
    assert capsys.readouterr().out == status_table(pipeline.status(), in_session=False) + "\n"


def test_status_in_a_notebook_shows_the_same_table_as_text():
    from pipelite_ipy.magics import StatusTable

    statuses = [status("gen_data", outputs=[WEIGHTS], last_run=WHEN, duration=0.012),
                status("old", defined=False)]
    assert repr(StatusTable(statuses)) == status_table(statuses)
    assert repr(StatusTable([])) == "no stages yet"


def _names(tb):
    names = []
    while tb is not None:
        names.append(tb.tb_frame.f_code.co_name)
        tb = tb.tb_next
    return names


def _last(exc):
    tb = exc.__traceback__
    while tb.tb_next is not None:
        tb = tb.tb_next
    return tb


def test_the_users_frames_start_where_pipelite_called_the_users_code(pipeline):
    def helper():
        raise ValueError("deep problem")

    @stage(outputs="n")
    def broken():
        return helper()

    with pytest.raises(ValueError) as info:
        pipeline.run("broken")
    assert _names(user_frames(info.value.__traceback__)) == ["broken", "helper"]


def test_an_error_of_pipelite_itself_keeps_every_frame(pipeline):
    with pytest.raises(UnknownStageError) as info:
        pipeline.run("nope")
    tb = info.value.__traceback__
    assert user_frames(tb) is tb


# -- the extension shows what the core says ---------------------------------------------------
def test_the_panel_lists_the_stages_in_the_order_of_status(pipeline):
    pytest.importorskip("ipywidgets")
    from pipelite_ipy.panel import PipelinePanel

    @stage(outputs="a_out")
    def a(c_out):  # defined before the stage it needs
        return c_out

    @stage(outputs="b_out")
    def b():
        return 1

    @stage(outputs="c_out")
    def c():
        return 1

    class Session:
        pass

    session = Session()
    session.pipeline = pipeline
    panel = PipelinePanel(session)
    try:
        order = [s.name for s in pipeline.status()]
        assert order == ["c", "a", "b"]  # each stage right after what it needs
        assert [row.name for row in panel.rows.children] == order
    finally:
        panel.close()


def test_a_session_defines_its_cells_in_its_own_pipelines_registry(tmp_path, monkeypatch):
    from IPython.core.interactiveshell import InteractiveShell

    from pipelite import REGISTRY, Registry
    from pipelite_ipy.session import PipeliteSession

    monkeypatch.chdir(tmp_path)
    shell = InteractiveShell.instance()
    session = PipeliteSession(shell)
    try:
        registry = Registry()
        session.pipeline = Pipeline(store=str(tmp_path / "store"), registry=registry)
        session.define_cell("numbers", "%%stage numbers", "numbers = [1, 2]\n", None, None)
        assert "numbers" in registry and "numbers" not in REGISTRY
        session.run(["numbers"])
        assert shell.user_ns["numbers"] == [1, 2]
        session.store = str(tmp_path / "other")  # another store, the same stages
        assert session.pipeline.registry is registry
    finally:
        session.close()


def test_checking_a_store_location_creates_it_and_leaves_nothing_in_it(tmp_path):
    from pipelite import Store

    Store.check_writable(str(tmp_path / "new" / "store"))
    # nothing but the .gitignore a new store gets (tests/test_gc_policies.py)
    assert [p.name for p in (tmp_path / "new" / "store").iterdir()] == [".gitignore"]


def test_checking_a_store_location_that_cannot_be_written_raises_the_os_error(tmp_path):
    from pipelite import Store

    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(OSError):
        Store.check_writable(str(blocker / "store"))


# -- tracebacks: shown with the user's frames only, PipeLite's kept for debugging ---------------
def test_a_pipelite_error_is_shown_from_the_public_call(pipeline):
    import traceback

    with pytest.raises(UnknownStageError) as info:
        pipeline.run("nope")
    assert _names(info.value.__traceback__) == [
        "test_a_pipelite_error_is_shown_from_the_public_call", "call"]
    shown = "".join(traceback.format_exception(info.value))
    assert shown.count('File "') == 2 and "_stage_name" not in shown


def test_a_pipelite_error_keeps_pipelites_frames_for_debugging(pipeline):
    with pytest.raises(UnknownStageError) as info:
        pipeline.run("nope")
    where = info.value.__context__  # hidden from display, kept for introspection (PEP 415)
    assert info.value.__suppress_context__
    raised_at = _last(where)  # the raise statement, deep in PipeLite
    code = raised_at.tb_frame.f_code
    assert code.co_name != "call" and "pipelite" in code.co_filename
    assert "UnknownStageError(" in linecache.getline(code.co_filename, raised_at.tb_lineno)


def test_the_calling_frames_are_the_users_up_to_the_call_into_pipelite(pipeline):
    def helper():
        pipeline.run("nope")

    with pytest.raises(UnknownStageError) as info:
        helper()
    tb = info.value.__traceback__
    assert _names(calling_frames(tb)) == [
        "test_the_calling_frames_are_the_users_up_to_the_call_into_pipelite", "helper"]
    assert _names(tb)[-1] == "call"  # the traceback itself is left as it is


@pytest.fixture
def shell(pipeline):
    from IPython.core.interactiveshell import InteractiveShell

    ip = InteractiveShell.instance()
    ip.run_line_magic("colors", "nocolor")
    ip.user_ns["pipeline"] = pipeline
    return ip


def shown(shell, cell):
    from IPython.utils.capture import capture_output

    with capture_output() as cap:
        shell.run_cell(cell)
    return cap.stdout + cap.stderr


def test_ipython_shows_a_pipelite_error_as_the_users_frames_and_one_line(shell):
    text = shown(shell, "def helper():\n    pipeline.run('nope')\n\nhelper()\n")
    assert "----> 4 helper()" in text and "----> 2     pipeline.run('nope')" in text
    assert "pipelite/" not in text
    assert text.rstrip().endswith("UnknownStageError: no stage named 'nope'; known stages: none")


def test_ipython_shows_a_mistake_outside_any_pipeline_call_without_pipelites_frames(shell):
    text = shown(shell, "from pipelite import stage\n\n@stage('9lives')\ndef f():\n    pass\n")
    assert "----> 3 @stage('9lives')" in text and "pipelite/" not in text
    assert text.rstrip().endswith("InvalidNameError: invalid stage name '9lives': use letters, "
                                  "digits, '_' and '-', starting with a letter or '_'")


def test_ipython_shows_an_error_of_pipelite_itself_with_pipelites_frames(shell, monkeypatch):
    import pipelite.graph

    def broken(statuses, format="mermaid", artifacts=False):
        raise RuntimeError("a bug in PipeLite")

    monkeypatch.setattr(pipelite.graph, "render", broken)
    text = shown(shell, "pipeline.graph()")
    assert "pipelite/pipeline.py" in text and "RuntimeError: a bug in PipeLite" in text


def test_a_mistake_in_a_stage_declaration_keeps_pipelites_frames_for_debugging():
    from pipelite import StageDefinitionError

    with pytest.raises(StageDefinitionError) as info:
        stage(42)
    assert _names(info.value.__traceback__)[-1] == "decorate_or_raise"  # the public call
    assert _names(info.value.__context__.__traceback__)[-1] == "decorate"  # where it was raised
