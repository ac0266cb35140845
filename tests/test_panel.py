"""The freshness panel, driven through the widget API: a real Pipeline on a temporary store, a
real namespace, buttons clicked with ``button.click()``."""
from __future__ import annotations

import re
import textwrap

import pytest

from pipelite import REGISTRY, CellStage, Pipeline
from pipelite.present import STATE_COLOURS

widgets = pytest.importorskip("ipywidgets")

from pipelite_ipy.panel import PipelinePanel  # noqa: E402

STAGES = {
    "numbers": "numbers = list(range(1, 5))",
    "scaled": "scaled = [n * SCALE for n in numbers]",
    "total": "total = sum(scaled)",
}


class NamespaceSession:
    """The smallest real session: cell stages in a namespace dict, runs bind their outputs."""

    def __init__(self, store: str, namespace: dict | None = None):
        self.namespace = {} if namespace is None else namespace
        self.pipeline = Pipeline(store=store)
        self.runs: list[tuple[list[str] | None, bool]] = []

    def define(self, name: str, source: str) -> None:
        """Like ``%%stage NAME``: the cell's free names that are artifacts are its inputs."""
        from pipelite._cellcode import analyze

        produced = {o for st in REGISTRY for o in (st.outputs or ())}
        inputs = [n for n in analyze(source).free if n in produced]
        REGISTRY.add(CellStage(name, textwrap.dedent(source), self.namespace, inputs=inputs))

    def run(self, names: list[str] | None = None, force: bool = False) -> dict:
        self.runs.append((names, force))
        result = self.pipeline.run(names, force=force)
        self.namespace.update(result)
        return result


@pytest.fixture
def session(store_dir):
    s = NamespaceSession(str(store_dir), {"SCALE": 2})
    for name, source in STAGES.items():
        s.define(name, source)
    return s


@pytest.fixture
def panels():
    made: list[PipelinePanel] = []

    def make(session, **kw) -> PipelinePanel:
        p = PipelinePanel(session, **kw)
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()


def badge(panel: PipelinePanel, name: str) -> str:
    return panel.row(name).state


def classes(w) -> list[str]:
    return list(w._dom_classes)


def test_the_panel_is_a_vbox_with_one_row_per_stage_upstream_first(session, panels):
    panel = panels(session)
    assert isinstance(panel, widgets.VBox)
    assert "pipelite-panel" in classes(panel)
    rows = [c for c in panel.rows.children if "pipelite-row" in classes(c)]
    assert [r.name for r in rows] == ["numbers", "scaled", "total"]
    assert "pipelite-row-scaled" in classes(panel.row("scaled"))


def test_a_stage_never_run_shows_a_missing_badge_in_its_colour(session, panels):
    panel = panels(session)
    row = panel.row("numbers")
    assert row.state == "missing"
    assert "pipelite-badge-missing" in classes(row.badge)
    fill, stroke = STATE_COLOURS["missing"]
    assert fill in row.badge.value and ">missing<" in row.badge.value
    assert "never run" in row.when.value


def test_the_header_shows_the_store_and_the_counts_per_state(session, panels, store_dir,
                                                            monkeypatch):
    monkeypatch.chdir(store_dir.parent)
    panel = panels(session)
    assert "<code title=\"" + session.pipeline.store.url in panel.store_label.value
    assert ">./store</code>" in panel.store_label.value
    assert "3 missing" in panel.counts.value
    session.run(["numbers"])
    assert "1 fresh" in panel.counts.value and "2 missing" in panel.counts.value


def test_run_button_runs_the_stage_with_its_upstreams_and_binds_its_outputs(session, panels):
    panel = panels(session)
    panel.row("total").run_button.click()
    assert session.runs == [(["total"], False)]
    assert [badge(panel, n) for n in STAGES] == ["fresh", "fresh", "fresh"]
    assert session.namespace["total"] == 20
    assert "total (" in panel.row("total").outputs.text
    assert "ms" in panel.row("total").when.value or " s" in panel.row("total").when.value


def test_force_button_recomputes_a_fresh_stage_only(session, panels):
    panel = panels(session)
    session.run(["total"])
    ran = []
    from pipelite import subscribe

    unsubscribe = subscribe(lambda ev: ev.kind == "started" and ran.append(ev.stage))
    try:
        panel.row("total").force_button.click()
    finally:
        unsubscribe()
    assert ran == ["total"]
    assert session.runs[-1] == (["total"], True)
    assert badge(panel, "total") == "fresh"


def test_changing_a_global_shows_the_stage_stale_with_the_words_of_explain(session, panels):
    panel = panels(session)
    session.run(["total"])
    session.namespace["SCALE"] = 3
    panel.refresh()
    row = panel.row("scaled")
    assert row.state == "stale"
    assert "global 'SCALE' changed" in row.reason.value
    assert "global 'SCALE' changed" in session.pipeline.explain("scaled")
    assert row.reason.layout.display != "none"
    assert "upstream stage 'scaled' is stale" in panel.row("total").reason.value
    assert panel.row("numbers").reason.layout.display == "none"


def test_run_all_stale_brings_every_stage_up_to_date(session, panels):
    panel = panels(session)
    session.run(["total"])
    session.namespace["SCALE"] = 10
    panel.refresh()
    assert panel.run_all_button.description == "Run all stale (2)"
    panel.run_all_button.click()
    assert [badge(panel, n) for n in STAGES] == ["fresh", "fresh", "fresh"]
    assert session.namespace["total"] == 100
    assert panel.run_all_button.disabled


def test_the_panel_refreshes_when_a_stage_runs_outside_it(session, panels):
    panel = panels(session)
    session.pipeline.run("numbers")
    assert badge(panel, "numbers") == "fresh"
    Pipeline(store=session.pipeline.store.url).run("total")  # another pipeline, same store
    assert badge(panel, "total") == "fresh"


def test_a_run_from_one_panel_refreshes_another(session, panels):
    first, second = panels(session), panels(session)
    first.row("scaled").run_button.click()
    assert badge(second, "scaled") == "fresh"
    assert badge(second, "total") == "missing"


def test_runs_against_another_store_are_ignored(session, panels, tmp_path):
    panel = panels(session)
    seen = []
    panel.rows.observe(lambda ch: seen.append(ch), "children")
    Pipeline(store=str(tmp_path / "other")).run("numbers")
    assert badge(panel, "numbers") == "missing"


def test_invalidating_a_stage_refreshes_the_panel(session, panels):
    panel = panels(session)
    session.run(["numbers"])
    session.pipeline.invalidate("numbers")
    assert badge(panel, "numbers") == "missing"


def test_progress_shows_stage_i_of_n_the_running_stage_and_elapsed_time(session, panels):
    panel = panels(session)
    texts: list[str] = []
    panel.progress_text.observe(lambda ch: texts.append(ch["new"]), "value")
    panel.row("total").run_button.click()
    running = [t for t in texts if "running" in t]
    assert [re.sub(r"running · .*", "running", t) for t in running] == [
        "stage 1 of 3: <b>numbers</b> running",
        "stage 2 of 3: <b>scaled</b> running",
        "stage 3 of 3: <b>total</b> running",
    ]
    # how long the stage has run, then the whole run (no estimate: never ran before)
    assert all(re.fullmatch(r".* running · [^·]+ · [^·]+ elapsed", t) for t in running)
    assert panel.progress_text.value.startswith("last run: 3 stages computed in")
    assert panel.progress_bar.layout.display == "none"


def test_a_long_name_is_cut_with_its_whole_in_a_tooltip_and_many_outputs_collapse(
        session, panels):
    long = "prepare_the_training_features_for_the_gradient_boosted_model_v2"
    session.define(long, "\n".join(f"out_{i} = [{i}] * {i + 1}" for i in range(8)))
    panel = panels(session)
    panel.row(long).run_button.click()
    row = panel.row(long)
    assert f'<b class="pipelite-name-text" title="{long}">{long}</b>' in row.label.value
    assert "text-overflow: ellipsis" in panel.children[0].value  # the CSS that cuts it
    (toggle,) = row.outputs.line.children
    assert re.fullmatch(r"▸ 8 outputs · \d+ B", toggle.description)
    assert row.outputs.more.layout.display == "none"  # collapsed
    toggle.click()
    assert row.outputs.more.layout.display is None
    assert toggle.description.startswith("▾ 8 outputs")
    listed = [b.description for b in row.outputs.more.children]
    assert len(listed) == 8 and re.fullmatch(r"out_7: list of length 8, \d+ B", listed[-1])
    short = panel.row("numbers")  # three outputs or fewer: listed as they are
    panel.row("numbers").run_button.click()
    assert [b.description for b in short.outputs.line.children] == [
        f"numbers ({short.outputs.text.split('(')[1]}"]
    assert short.outputs.more.children == ()


def test_clicking_an_output_previews_it_and_a_second_click_hides_it(session, panels):
    session.define("frame", "import numpy as np\nmatrix = np.arange(40.0).reshape(10, 4)\n"
                            "label = 'x' * 5000")
    panel = panels(session)
    panel.row("frame").run_button.click()
    outputs = panel.row("frame").outputs
    matrix, label = outputs.line.children
    matrix.click()
    text = outputs.preview.value
    assert outputs.preview.layout.display is None
    assert "<code>matrix</code>: numpy.ndarray, shape (10, 4), dtype float64" in text
    assert "[[ 0.  1.  2.  3.]" in text and "5 more rows" in text  # the first rows only
    label.click()  # another output: the preview follows
    assert "<code>label</code>: str, length 5000" in outputs.preview.value
    assert len(outputs.preview.value) < 1000  # the repr is cut
    label.click()
    assert outputs.preview.layout.display == "none" and outputs.previewing is None


def test_a_preview_of_a_table_shows_its_first_rows(session, panels):
    pytest.importorskip("pandas")
    session.define("table", "import pandas as pd\n"
                            "df = pd.DataFrame({'a': range(100), 'b': ['<i>x</i>'] * 100})")
    panel = panels(session)
    panel.row("table").run_button.click()
    panel.row("table").outputs.line.children[0].click()
    text = panel.row("table").outputs.preview.value
    assert "pandas.DataFrame, shape (100, 2), 2 columns" in text
    assert text.count("<tr") == 1 + 5  # the header and the first five rows
    assert "&lt;i&gt;x&lt;/i&gt;" in text and "<i>x</i>" not in text  # escaped


def test_the_panel_sums_up_every_run_of_the_session_with_a_time(session, panels):
    """Run All Cells runs one stage per cell: "last run" shows the last cell's, and the
    session's total says what all of them computed (issue 10, item 7)."""
    panel = panels(session)
    for name in STAGES:  # one run per cell, as Run All Cells does
        session.run([name])
    text = panel.progress_text.value
    assert text.startswith("last run: 1 stage computed in")
    assert re.search(r", at \d\d:\d\d:\d\d · this session: 3 stages computed in ", text), text
    session.run(["total"])  # fresh: nothing computed, the total stays
    assert panel.progress_text.value.startswith("last run: everything was fresh")
    assert "this session: 3 stages computed in " in panel.progress_text.value


def test_a_row_shows_running_while_its_stage_runs(session, panels):
    panel = panels(session)
    seen = []
    session.define("probe", "probe = numbers[0]")
    panel.refresh()
    from pipelite import subscribe

    def look(ev):
        if ev.kind == "started" and ev.stage == "probe":
            seen.append((panel.row("probe").state, panel.row("probe").run_button.disabled))

    unsubscribe = subscribe(look)
    try:
        panel.row("probe").run_button.click()
    finally:
        unsubscribe()
    assert seen == [("running", True)]
    assert badge(panel, "probe") == "fresh"


def test_a_failing_stage_shows_its_error_in_the_panel_and_does_not_raise(session, panels):
    session.define("broken", "broken = numbers[99]")
    panel = panels(session)
    panel.row("broken").run_button.click()  # must not raise
    row = panel.row("broken")
    assert row.state == "failed"
    assert "pipelite-badge-failed" in classes(row.badge)
    assert "IndexError: list index out of range" in row.error.value
    # it never succeeded, but it did run: when it failed, not "never run"
    assert "never run" not in row.when.value and "failed " in row.when.value
    assert re.search(r"failed \d\d:\d\d:\d\d</span>", row.when.value)
    assert row.error.layout.display != "none"
    assert "pipelite-error" in classes(row.error)
    assert "<summary>traceback</summary><pre>Traceback (most recent call last)" in row.error.value
    assert panel.error.layout.display == "none"  # the row says it all
    assert badge(panel, "numbers") == "fresh"  # its upstream ran and was kept
    assert panel.progress_text.value.startswith("last run: 1 stage computed, broken failed in")
    assert not panel.row("total").run_button.disabled  # the panel is usable again


def test_an_error_that_is_no_stage_failure_is_shown_in_the_panel_header(session, panels):
    session.define("lonely", "lonely = undefined_artifact")
    session.namespace["undefined_artifact"] = 1
    panel = panels(session)
    REGISTRY.get("lonely").inputs = ("nobody_makes_this",)
    panel.row("lonely").run_button.click()
    assert "nobody_makes_this" in panel.error.value
    assert panel.error.layout.display != "none"
    assert "pipelite-panel-error" in classes(panel.error)


def test_fixing_a_failed_stage_clears_its_error(session, panels):
    session.define("broken", "broken = numbers[99]")
    panel = panels(session)
    panel.row("broken").run_button.click()
    session.define("broken", "broken = numbers[0]")
    panel.row("broken").run_button.click()
    assert badge(panel, "broken") == "fresh"
    assert panel.row("broken").error.layout.display == "none"
    assert panel.error.layout.display == "none"
    assert session.namespace["broken"] == 1


def test_after_a_restart_stages_known_only_from_the_store_are_listed_but_not_runnable(
        session, panels, store_dir):
    session.run(["total"])
    REGISTRY.clear()  # a new kernel: nothing defined yet
    fresh_session = NamespaceSession(str(store_dir))
    panel = panels(fresh_session)
    assert [s.name for s in panel.statuses] == ["numbers", "scaled", "total"]
    for name in STAGES:
        row = panel.row(name)
        assert not row.defined and "pipelite-undefined" in classes(row)
        assert "not defined in this session" in row.label.value
        shown = row.label.value + row.reason.value + row.when.value + row.outputs.text
        assert shown.count("not defined in this session") == 1  # said once, by the label
        assert row.run_button.disabled and row.force_button.disabled
        assert "total (" in panel.row("total").outputs.text
    assert panel.run_all_button.disabled
    fresh_session.define("numbers", STAGES["numbers"])
    panel.refresh()
    assert not panel.row("numbers").run_button.disabled
    assert panel.row("total").run_button.disabled


def test_a_closed_panel_stops_listening(session, panels):
    panel = panels(session)
    panel.close()
    session.pipeline.run("numbers")
    assert badge(panel, "numbers") == "missing"


def test_the_graph_toggle_shows_the_graph_coloured_by_state(session, panels):
    panel = panels(session)
    session.run(["numbers"])
    assert panel.graph.layout.display == "none"
    panel.graph_toggle.value = True
    assert panel.graph.layout.display != "none"
    (out,) = panel.graph.outputs
    text = out["data"].get("image/svg+xml") or out["data"]["text/markdown"]
    assert "numbers" in text and "scaled" in text
    assert STATE_COLOURS["fresh"][0] in text and STATE_COLOURS["missing"][0] in text
    panel.graph_toggle.value = False
    assert panel.graph.layout.display == "none" and panel.graph.outputs == ()


def test_the_graph_falls_back_to_mermaid_without_graphviz(session, panels, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    panel = panels(session)
    panel.graph_toggle.value = True
    (out,) = panel.graph.outputs
    assert out["data"]["text/markdown"].startswith("```mermaid\nflowchart LR")


def test_a_stage_defined_later_gets_a_row(session, panels):
    panel = panels(session)
    session.define("extra", "extra = total + 1")
    session.pipeline.run("extra")
    assert [r.name for r in panel.rows.children] == ["numbers", "scaled", "total", "extra"]
    assert badge(panel, "extra") == "fresh"


def test_the_panel_refreshes_after_a_cell_changes_a_global(store_dir, panels):
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    shell.user_ns["SCALE"] = 2
    s = NamespaceSession(str(store_dir), shell.user_ns)
    for name, source in STAGES.items():
        s.define(name, source)
    panel = panels(s, shell=shell)
    s.run(["total"])
    shell.run_cell("SCALE = 5")
    assert badge(panel, "scaled") == "stale"
    panel.close()
    shell.run_cell("SCALE = 2")
    assert badge(panel, "scaled") == "stale"  # closed: no longer listening


def test_a_stage_failing_outside_the_panel_shows_failed_with_its_error(session, panels):
    session.define("broken", "broken = numbers[99]")
    panel = panels(session)
    with pytest.raises(IndexError):
        session.pipeline.run("broken")
    row = panel.row("broken")
    assert row.state == "failed"
    assert "last run failed: IndexError: list index out of range" in row.error.value


@pytest.fixture
def ip(tmp_path, monkeypatch):
    """A real shell with the extension loaded, working in a temporary directory."""
    from IPython.core.interactiveshell import InteractiveShell

    monkeypatch.chdir(tmp_path)
    shell = InteractiveShell.instance()
    shell.reset(new_session=False)
    shell.run_line_magic("load_ext", "pipelite")
    yield shell
    if "pipelite" in shell.extension_manager.loaded:
        shell.run_line_magic("unload_ext", "pipelite")


def run_cell(shell, source: str) -> None:
    from IPython.utils.capture import capture_output

    with capture_output():
        result = shell.run_cell(textwrap.dedent(source))
    assert result.success, result.error_in_exec or result.error_before_exec


def test_pipelite_panel_magic_shows_a_live_panel_over_the_extensions_session(ip):
    from IPython.utils.capture import capture_output
    from ipywidgets.widgets.widget import _instances

    run_cell(ip, "SCALE = 2")
    run_cell(ip, "%%stage numbers\nnumbers = [1, 2, 3]")
    run_cell(ip, "%%stage scaled\nscaled = [n * SCALE for n in numbers]")
    with capture_output() as cap:
        ip.run_line_magic("pipelite", "panel")
    (shown,) = [o.data for o in cap.outputs]
    panel = _instances[shown["application/vnd.jupyter.widget-view+json"]["model_id"]]
    try:
        assert isinstance(panel, PipelinePanel)
        assert [badge(panel, n) for n in ("numbers", "scaled")] == ["fresh", "fresh"]

        run_cell(ip, "SCALE = 3")  # no stage ran: the panel learns it after the cell
        assert badge(panel, "scaled") == "stale"
        assert "global 'SCALE' changed" in panel.row("scaled").reason.value

        panel.row("scaled").run_button.click()  # runs in a thread: the kernel stays free
        panel.wait()
        assert badge(panel, "scaled") == "fresh"
        assert ip.user_ns["scaled"] == [3, 6, 9]  # bound by the session

        run_cell(ip, "%%stage scaled\nscaled = [n * SCALE * 10 for n in numbers]")
        assert badge(panel, "scaled") == "fresh"
        assert ip.user_ns["scaled"] == [30, 60, 90]
    finally:
        panel.close()


def test_a_pipeline_without_stages_says_how_to_define_one(store_dir, panels):
    panel = panels(NamespaceSession(str(store_dir)))
    (only,) = panel.rows.children
    assert "pipelite-empty" in classes(only) and "%%stage NAME" in only.value
    assert panel.counts.value == "" and panel.run_all_button.disabled


def test_a_cycle_is_reported_in_the_panel_until_it_is_fixed(session, panels):
    panel = panels(session)
    REGISTRY.add(CellStage("numbers", "numbers = list(total)", session.namespace,
                           inputs=["total"]))
    panel.refresh()
    # the rows stay, and say where the cycle is
    assert "part of a cycle" in panel.row("numbers").reason.value
    assert badge(panel, "numbers") == "missing"
    session.define("numbers", STAGES["numbers"])
    panel.refresh()
    assert "cycle" not in panel.row("numbers").reason.value
    assert badge(panel, "numbers") == "missing"


def test_policy_badges_and_file_outputs_show_in_their_rows(store_dir, panels, tmp_path,
                                                           monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = NamespaceSession(str(store_dir))
    REGISTRY.add(CellStage("live", "feed = 1", s.namespace, cache=False))
    s.namespace["VERBOSE"] = 0
    REGISTRY.add(CellStage("daily", "prices = [1]\nif VERBOSE:\n    print(prices)",
                           s.namespace, expires_after="1d", ignore=["VERBOSE"]))
    REGISTRY.add(CellStage("report", "open('report.txt', 'w').write('hi')", s.namespace,
                           outputs=(), out_files={"report": "report.txt"}))
    panel = panels(s)
    assert "pipelite-policy-no-cache" in panel.row("live").policies.value
    daily = panel.row("daily").policies.value
    assert ">expires after 24 h<" in daily and ">ignores VERBOSE<" in daily
    assert panel.row("report").policies.value == ""
    s.run()
    assert ">expires in 24 h<" in panel.row("daily").policies.value
    (button,) = panel.row("report").outputs.line.children
    assert "pipelite-output-file" in classes(button)
    assert button.description == "report → report.txt (2 B)"
