"""Runs started from the panel, in a real shell with the extension (issue 10, items 2 and 3):
they run in a thread, so the kernel stays free; Cancel and SIGINT stop them, storing nothing;
the clock ticks with an estimate; each row updates as its stage finishes; and a stage's output
replaces what its cell showed, through display ids."""
from __future__ import annotations

import contextlib
import io
import os
import re
import signal
import threading
import time

import pytest
from IPython.utils.capture import capture_output

import pipelite_ipy

pytest.importorskip("ipywidgets")

from pipelite_ipy.panel import PipelinePanel  # noqa: E402

SLOW = ("%%stage slow\nimport os, time\nprint('waiting for', os.path.basename(FLAG))\n"
        "while not os.path.exists(FLAG):\n    time.sleep(0.02)\nv = N * 2")


def until(predicate, what: str, timeout: float = 30.0) -> None:
    """Wait for ``predicate()`` (a condition, not a fixed time); fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


@pytest.fixture
def shell(ip, tmp_path):
    ip.user_ns["FLAG"] = str(tmp_path / "go")
    ip.user_ns["N"] = 1
    return ip


@pytest.fixture
def panel(shell):
    p = PipelinePanel(pipelite_ipy.current_session(), shell=shell)
    yield p
    if p._background is not None:  # a test that failed half-way: do not leave it running
        open(shell.user_ns["FLAG"], "w").close()
        p.wait()
    p.close()


def run_cell(shell, source: str):
    with capture_output() as cap:
        result = shell.run_cell(source)
    assert result.success, result.error_in_exec
    return cap


def stored_results(name: str) -> int:
    return len(pipelite_ipy.current_session().pipeline.store.records_of(name))


def test_cancel_stops_a_running_stage_stores_nothing_and_keeps_its_state(shell, panel):
    run_cell(shell, "%%stage slow --define\n" + SLOW.split("\n", 1)[1])
    panel.refresh()
    assert panel.row("slow").state == "missing"
    assert panel.run(["slow"], wait=False)  # returns at once: the run is in a thread
    until(lambda: panel.row("slow").state == "running", "the stage to start")
    assert panel.cancel_button.layout.display != "none"
    run_cell(shell, "free = 'the kernel is free meanwhile'")  # a cell runs during the run
    panel.cancel_button.click()
    panel.wait()
    assert "cancelled at" in panel.progress_text.value
    assert "stage 'slow' was stopped; nothing was stored for it" in html_text(panel)
    assert panel.row("slow").state == "missing"  # what it was
    assert panel.row("slow").error.layout.display == "none"  # not a failure
    assert stored_results("slow") == 0
    assert panel.cancel_button.layout.display == "none"
    assert not panel.row("slow").run_button.disabled  # usable again


def test_a_stage_cell_waits_for_the_panels_run_and_says_so(shell, panel):
    run_cell(shell, "%%stage slow --define\n" + SLOW.split("\n", 1)[1])
    panel.run(["slow"], wait=False)
    until(lambda: panel.row("slow").state == "running", "the stage to start")
    out = io.StringIO()

    def release_when_waiting():
        until(lambda: "waiting for the panel's run" in out.getvalue(), "the cell to wait")
        open(shell.user_ns["FLAG"], "w").close()

    helper = threading.Thread(target=release_when_waiting)
    helper.start()
    with contextlib.redirect_stdout(out):
        result = shell.run_cell("%%stage other\nw = 5")
    helper.join()
    assert result.success
    assert "waiting for the panel's run (stage 'slow') to finish" in out.getvalue()
    panel.wait()
    assert shell.user_ns["v"] == 2 and shell.user_ns["w"] == 5


def test_sigint_cancels_a_run_started_from_the_panel(shell, panel):
    """Kernel -> Interrupt sends SIGINT; while idle, ipykernel ignores it, so a run started
    from a button went on. It now stops the run."""
    run_cell(shell, "%%stage slow --define\n" + SLOW.split("\n", 1)[1])
    panel.run(["slow"], wait=False)
    until(lambda: panel.row("slow").state == "running", "the stage to start")
    os.kill(os.getpid(), signal.SIGINT)
    panel.wait()
    assert "cancelled at" in panel.progress_text.value
    assert stored_results("slow") == 0
    # with no run going on, SIGINT is a KeyboardInterrupt again, as before
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)


def test_the_clock_ticks_with_an_estimate_from_the_last_run(shell, panel):
    open(shell.user_ns["FLAG"], "w").close()
    run_cell(shell, SLOW)  # a first run, whose duration is the estimate
    os.remove(shell.user_ns["FLAG"])
    panel.refresh()
    texts: list[str] = []
    panel.progress_text.observe(lambda ch: texts.append(ch["new"]), "value")
    panel.row("slow").force_button.click()

    def ticked() -> bool:
        running = {t for t in texts if "<b>slow</b> running" in t}
        return len(running) >= 3  # the clock moved, twice, while the stage ran

    until(ticked, "the clock to tick")
    open(shell.user_ns["FLAG"], "w").close()
    panel.wait()
    running = [t for t in texts if "<b>slow</b> running" in t]
    assert all(re.search(r"running · [^·]+ of ~[^·]+ · ", t) for t in running)
    assert "running" in "".join(texts) and panel.row("slow").state == "fresh"


def test_each_row_shows_its_stage_done_while_the_run_goes_on(shell, panel):
    run_cell(shell, "%%stage first\nbase = N + 1")
    run_cell(shell, "%%stage slow --define\nimport os, time\n"
                    "while not os.path.exists(FLAG):\n    time.sleep(0.02)\nv = base * 2")
    run_cell(shell, "N = 5")
    panel.refresh()
    assert "global 'N' changed" in panel.row("first").reason.value
    panel.run_all_button.click()
    until(lambda: panel.row("slow").state == "running", "the second stage to start")
    first = panel.row("first")
    assert first.state == "fresh"  # done, while the run goes on
    assert first.reason.layout.display == "none" and first.reason.value == ""
    assert "base (" in first.outputs.text
    assert "running" in panel.row("slow").when.value
    open(shell.user_ns["FLAG"], "w").close()
    panel.wait()
    assert shell.user_ns["v"] == 12


def test_a_panel_run_replaces_the_stage_cells_output(shell, panel):
    pipelite_ipy.current_session().badges = True
    cap = run_cell(shell, "%%stage show\nprint('N is', N)\nshown = N")
    outputs = [o for o in cap.outputs if "pipelite-cell-badge" not in o.data.get("text/html", "")]
    badge_id = next(o.transient["display_id"] for o in cap.outputs
                    if "pipelite-cell-badge" in o.data.get("text/html", ""))
    # what the cell printed went out as a display with an id: a later run can replace it
    (printed,) = outputs
    assert printed.data["text/plain"].startswith("N is 1\n[pipelite] show: ran in")
    own_id = printed.transient["display_id"]
    run_cell(shell, "N = 2")
    panel.refresh()
    with capture_output() as cap:
        panel.row("show").run_button.click()
        panel.wait()
    updates = {o.transient["display_id"]: o.data for o in cap.outputs if o.update}
    assert updates[own_id] == {"text/plain": ""}  # the cell's own output gives way
    badge = updates[badge_id]
    assert re.fullmatch(r"\[pipelite\] show: fresh\n\[pipelite\] output of the run from the "
                        r"panel at \d\d:\d\d:\d\d\nN is 2", badge["text/plain"])
    assert "<pre" in badge["text/html"] and "N is 2" in badge["text/html"]
    assert not [o for o in cap.outputs if not o.update]  # nothing new, in no other place


def test_a_failing_panel_run_shows_its_traceback_in_the_cell(shell, panel):
    pipelite_ipy.current_session().badges = True
    run_cell(shell, "%%stage risky\nif N > 1:\n    raise ValueError('N too big')\nr = N")
    run_cell(shell, "N = 2")
    panel.refresh()
    with capture_output() as cap:
        assert panel.run(["risky"]) is False
    badge = [o.data for o in cap.outputs if o.update][-1]
    assert badge["text/plain"].startswith("[pipelite] risky: failed: ValueError: N too big")
    assert "raise ValueError('N too big')" in badge["text/plain"]  # the user's line
    assert re.search(r"Cell In\[\d+\], line 3", badge["text/plain"])  # named as IPython does
    assert "pipelite/" not in badge["text/plain"]  # none of PipeLite's frames
    assert 'class="pipelite-run-error"' in badge["text/html"]


def html_text(panel: PipelinePanel) -> str:
    return re.sub(r"<[^>]+>", "", panel.progress_text.value).replace("&#x27;", "'")


def test_the_session_summary_counts_the_cells_run_before_the_panel_was_shown(shell):
    """Run All Cells computes every stage cell, then reaches `%pipelite panel`: the panel's
    summary counts the kernel's runs, not only those it saw."""
    run_cell(shell, "%%stage a\nx = 1")
    run_cell(shell, "%%stage b\ny = x + 1")
    panel = PipelinePanel(pipelite_ipy.current_session(), shell=shell)
    try:
        panel.row("b").force_button.click()
        panel.wait()
        assert "this session: 3 stages computed in " in panel.progress_text.value
    finally:
        panel.close()


def test_a_run_that_ends_before_start_returns_leaves_no_run_behind(shell, panel, monkeypatch):
    """A short run may end, and report, before the thread's start() returns: the panel
    must not then keep it as its running run (Cancel shown, wait() on it, busy)."""
    from pipelite_ipy import _background

    real_start = _background.BackgroundRun.start

    def start_and_finish(self):
        real_start(self)
        self.thread.join()  # the run is over before start() returns
        return self

    monkeypatch.setattr(_background.BackgroundRun, "start", start_and_finish)
    run_cell(shell, "%%stage quick --define\nq = 1")
    panel.refresh()
    assert panel.run(["quick"], wait=False)
    assert panel._background is None
    assert panel.row("quick").state == "fresh"
    assert panel.cancel_button.layout.display == "none"
