"""The state badge at the top of each ``%%stage`` cell's output (issue 10, item 1): shown with
a display id when the cell runs, and updated in place whenever the stage's state changes."""
from __future__ import annotations

import pytest
from IPython.utils.capture import capture_output
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell, new_notebook

import pipelite_ipy


@pytest.fixture
def badged(ip):
    pipelite_ipy.current_session().badges = True
    ip.run_cell("EPOCHS = 3")
    return ip


def displays(cap) -> list[tuple[str, str, bool]]:
    """(display id, text, is an update) of each badge display captured."""
    return [((o.transient or {}).get("display_id"), o.data["text/plain"], o.update)
            for o in cap.outputs if "pipelite-cell-badge" in o.data.get("text/html", "")]


TRAIN = "%%stage train\nw = EPOCHS * 2\nprint('trained', w)"


def test_a_stage_cell_starts_with_a_badge_that_follows_its_state(badged):
    ip = badged
    with capture_output() as cap:
        ip.run_cell(TRAIN)
    shown = displays(cap)
    did = shown[0][0]
    assert shown == [(did, "[pipelite] train: running", False),
                     (did, "[pipelite] train: fresh", True)]
    assert cap.outputs[0].data["text/plain"] == "[pipelite] train: running"  # comes first
    with capture_output() as cap:
        ip.run_cell("EPOCHS = 4")  # another cell changes a global the stage reads
    assert displays(cap) == [(did, "[pipelite] train: stale: global 'EPOCHS' changed", True)]
    with capture_output() as cap:
        ip.run_cell("x = 1")  # nothing changed: nothing is sent
    assert displays(cap) == []
    with capture_output() as cap:  # run from outside the cell, as a panel button does
        pipelite_ipy.current_session().run(["train"])
    assert displays(cap)[-1] == (did, "[pipelite] train: fresh", True)
    assert "trained 8" in cap.stdout  # printed where the run was started
    with capture_output() as cap:
        ip.run_line_magic("pipelite", "invalidate train")
    assert displays(cap)[-1][1].startswith("[pipelite] train: missing")


def test_a_cache_hit_shows_a_new_badge_and_replays_no_old_one(badged):
    ip = badged
    ip.run_cell(TRAIN)
    with capture_output() as cap:
        ip.run_cell(TRAIN)
    shown = displays(cap)
    assert [text for _, text, _ in shown] == ["[pipelite] train: running",
                                              "[pipelite] train: fresh"]
    assert len({did for did, _, _ in shown}) == 1  # one badge: none replayed from the store
    # the stored output is replayed through display ids (a later run can replace it)
    replayed = [o.data["text/plain"] for o in cap.outputs if "pipelite-cell-badge"
                not in o.data.get("text/html", "")]
    assert replayed[0].startswith("trained 6\n[pipelite] train: loaded from store")
    assert cap.stdout == ""


def test_a_failed_stage_shows_its_error_on_the_badge(badged):
    with capture_output() as cap:
        badged.run_cell("%%stage boom\nraise ValueError('bad input')")
    assert displays(cap)[-1][1] == "[pipelite] boom: failed: ValueError: bad input"


def test_badges_are_off_in_a_terminal_shell_unless_asked_for(ip):
    with capture_output() as cap:
        ip.run_cell("%%stage quiet\nq = 1")
    assert displays(cap) == []


def test_badges_in_a_notebook_kernel_end_on_the_latest_state(tmp_path):
    """In a real kernel (on by default there), the badge in a stage cell's saved output is
    replaced when a later cell makes the stage stale."""
    nb = new_notebook(cells=[new_code_cell(c) for c in [
        "%load_ext pipelite", "EPOCHS = 3", TRAIN, "EPOCHS = 4"]])
    NotebookClient(nb, timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    badges = [o for o in nb.cells[2].outputs
              if "pipelite-cell-badge" in o.get("data", {}).get("text/html", "")]
    assert len(badges) == 1
    assert badges[0]["data"]["text/plain"] == "[pipelite] train: stale: global 'EPOCHS' changed"
    assert 'data-state="stale"' in badges[0]["data"]["text/html"]


def test_a_stage_cell_checks_the_badges_once(badged, monkeypatch):
    """A cell's own runs are followed by one badge check, after the cell (not one per run)."""
    session = pipelite_ipy.current_session()
    calls = []
    real = session.pipeline.status
    monkeypatch.setattr(session.pipeline, "status", lambda *a, **k: calls.append(1) or real())
    with capture_output():
        badged.run_cell(TRAIN + "\nimport pipelite_ipy\npipelite_ipy.current_session().run()")
    assert len(calls) == 1
