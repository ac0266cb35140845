"""The freshness panel: one row per stage, its state, outputs and buttons to run it.

>>> from pipelite_ipy.panel import PipelinePanel
>>> PipelinePanel(pipelite_ipy.current_session())     # what ``%pipelite panel`` displays

The panel listens to :func:`pipelite.subscribe` (every run in the kernel, from a cell, a magic,
a button or another panel) and to IPython's ``post_run_cell`` (a cell may change a global a
stage reads). It never polls. It is the only module of PipeLite that imports ipywidgets.
"""
from __future__ import annotations

import datetime as _dt
import html
import os
import threading
import time
import traceback
from typing import Any, Callable, Sequence

import ipywidgets as widgets

from pipelite import OutputInfo, StageEvent, StageStatus, subscribe
from pipelite.errors import RunCancelled
from pipelite.present import STATE_COLOURS, STATES, human_bytes, human_duration, local_time

__all__ = ["PipelinePanel"]

_NOT_DEFINED = "not defined in this session"

# Layout lives here rather than in inline styles so a user can override it with their own CSS.
_CSS = """
<style>
/* Colours are theme-aware: JupyterLab's variables where they read well, else ours for the
   light theme, replaced under the dark one; every text is 4.5:1 or more against its
   background in both (tests/test_browser.py measures it). */
.pipelite-panel {
  --pl-fg: var(--jp-ui-font-color1, #1a1a1a); --pl-bg: var(--jp-layout-color0, #fff);
  --pl-muted: #57606a; --pl-warn: #7a4d00; --pl-error: #b31d28; --pl-border: #d0d7de;
  --pl-rule: #eef0f2; --pl-error-bg: #fff5f5; --pl-chip-fg: #1a1a1a;
  border: 1px solid var(--pl-border); border-radius: 6px; padding: 6px 10px;
  font-size: 13px; max-width: 1100px; background: var(--pl-bg); color: var(--pl-fg); }
body[data-jp-theme-light="false"] .pipelite-panel {
  --pl-muted: #b1bac4; --pl-warn: #e3b341; --pl-error: #ff8e87; --pl-border: #444c56;
  --pl-rule: #30363d; --pl-error-bg: #2d1a1a; }
.pipelite-panel .widget-html-content, .pipelite-panel code { color: inherit; }
.pipelite-header { border-bottom: 1px solid var(--pl-border); padding-bottom: 2px;
  margin-bottom: 2px; }
.pipelite-header-top { align-items: center; }
.pipelite-title { margin-right: 12px; font-size: 14px; }
.pipelite-store { color: var(--pl-muted); font-size: 12px; }
.pipelite-store code { font-size: 12px; background: none; }
.pipelite-counts .pipelite-chip { margin-right: 4px; }
.pipelite-row { border-bottom: 1px solid var(--pl-rule); padding: 3px 0; }
.pipelite-row-main { align-items: center; }
.pipelite-policies .widget-html-content { line-height: 16px; }
.pipelite-policy { display: inline-block; border-radius: 10px; padding: 0 6px; margin-right: 4px;
  font-size: 11px; line-height: 15px; border: 1px solid #8e8e8e; color: #424242;
  background: #f5f5f5; }
.pipelite-policy-no-cache { border-color: #6a1b9a; color: #6a1b9a; background: #f3e5f5; }
.pipelite-policy-expires { border-color: #ef6c00; color: #e65100; background: #fff3e0; }
.pipelite-chip, .pipelite-badge span { display: inline-block; border-radius: 10px;
  padding: 0 8px; line-height: 20px; font-weight: 600; font-size: 12px; border: 1px solid;
  color: var(--pl-chip-fg); }
.pipelite-badge span { min-width: 56px; text-align: center; }
.pipelite-name b { font-family: var(--jp-code-font-family, monospace); }
.pipelite-name-text { display: inline-block; max-width: 180px; overflow: hidden;
  text-overflow: ellipsis; white-space: nowrap; vertical-align: bottom; }
.pipelite-undefined-tag { color: var(--pl-muted); font-style: italic; font-size: 12px; }
.pipelite-outputs, .pipelite-when { color: var(--pl-fg); font-size: 12px; overflow: hidden;
  text-overflow: ellipsis; }
.pipelite-outputs-line { flex-wrap: wrap; align-items: center; }
.pipelite-panel .pipelite-output-name, .pipelite-panel .pipelite-outputs-toggle {
  height: 22px; line-height: 20px; font-size: 12px; padding: 0 6px; margin: 1px 2px; }
.pipelite-preview { font-size: 12px; border-left: 3px solid var(--pl-border);
  padding-left: 6px; margin: 2px 0; max-height: 260px; overflow: auto; }
.pipelite-preview pre { margin: 2px 0; font-size: 11px; }
.pipelite-preview table { font-size: 11px; border-collapse: collapse; color: inherit; }
.pipelite-preview th, .pipelite-preview td { padding: 1px 6px; text-align: left; }
.pipelite-reason { color: var(--pl-warn); font-size: 12px; padding-left: 92px; }
.pipelite-error, .pipelite-preview-error { color: var(--pl-error); font-size: 12px; }
.pipelite-row .pipelite-error { padding-left: 92px; }
.pipelite-error pre { white-space: pre-wrap; font-size: 11px; max-height: 240px;
  overflow: auto; background: var(--pl-error-bg); padding: 4px; }
.pipelite-progress { align-items: center; }
.pipelite-graph svg, .pipelite-graph img { max-width: 100%; height: auto; }
.pipelite-empty { color: var(--pl-muted); font-style: italic; }
.pipelite-group-toggle { font-size: 12px; }
</style>
"""


def _seconds(s: float | None) -> str:
    if s is None:
        return ""
    return "<1 ms" if s < 0.001 else human_duration(s)


def _when(t: _dt.datetime | None) -> str:
    """A stored (UTC) time in the kernel's local time; the date only when it is not today."""
    if t is None:
        return ""
    local = t.astimezone() if t.tzinfo else t
    today = _dt.datetime.now(local.tzinfo).date()
    return local.strftime("%H:%M:%S" if local.date() == today else "%Y-%m-%d %H:%M")


def _short_store(url: str) -> str:
    """A local store under the working directory as ``./relative``; anything else as is."""
    from pipelite.store import parse_location

    is_remote, path = parse_location(url)
    if is_remote:
        return url
    try:
        rel = os.path.relpath(path)
    except ValueError:  # another drive (Windows)
        return url
    return url if rel.startswith("..") else os.path.join(".", rel)


def _chip(state: str, text: str | None = None) -> str:
    fill, stroke = STATE_COLOURS.get(state, STATE_COLOURS["missing"])
    return (f'<span class="pipelite-chip pipelite-chip-{state}" '
            f'style="background:{fill};border-color:{stroke}">'
            f"{html.escape(text or state)}</span>")


def _error_html(summary: str, detail: str | None = None) -> str:
    body = f"<b>{html.escape(summary, quote=False)}</b>"
    if detail:
        body += ("<details><summary>traceback</summary>"
                 f"<pre>{html.escape(detail, quote=False)}</pre></details>")
    return body


MAX_LISTED_OUTPUTS = 3  # more collapse to "8 outputs · 470 KiB", listed on expand


_POLICY_TIPS = {
    "no-cache": "cache=False: runs every time it is needed, nothing is stored",
    "expires": "expires_after: a result older than that is stale",
    "ignores": "ignore=: these parameters or globals are left out of its fingerprint",
}


def _output_label(o: Any) -> str:
    """``report → out/report.html (12 KiB)`` for a file output, else ``x (8 B)``."""
    if o.format == "file" and (o.summary or "").startswith("file "):
        return f"{o.name} → {o.summary[5:]} ({human_bytes(o.size)})"
    return f"{o.name} ({human_bytes(o.size)})"


class _Outputs(widgets.VBox):
    """A row's outputs: ``a (1.2 KiB), b (8 B)``, each name a button that previews the
    artifact below the row; more than three collapse to ``8 outputs · 470 KiB``, which
    expands to each one's name, type and shape, and size. ``text`` says it in plain text."""

    def __init__(self, on_preview: Callable[[str], None]):
        self._on_preview = on_preview
        self.text = ""
        self._key: tuple | None = None
        self.line = widgets.HBox()
        self.line.add_class("pipelite-outputs-line")
        self.more = widgets.VBox(layout=widgets.Layout(display="none"))
        self.more.add_class("pipelite-outputs-list")
        self.preview = widgets.HTML(layout=widgets.Layout(display="none"))
        self.preview.add_class("pipelite-preview")
        self.previewing: str | None = None
        super().__init__([self.line, self.more, self.preview],
                         layout=widgets.Layout(flex="1 1 auto", width="auto"))
        self.add_class("pipelite-outputs")

    def _button(self, o: Any, label: str) -> widgets.Button:
        b = widgets.Button(description=label, tooltip=f"preview {o.name}: "
                           f"{o.summary or o.format}", layout=widgets.Layout(width="auto"))
        b.add_class("pipelite-output-name")
        b.add_class(f"pipelite-output-{o.name}")
        if o.format == "file":
            b.add_class("pipelite-output-file")
        b.on_click(lambda _b, name=o.name: self._on_preview(name))
        return b

    def show(self, outputs: Sequence[Any], prefix: str = "") -> None:
        key = (prefix, tuple((o.name, o.size, o.summary, o.hash) for o in outputs))
        if key == self._key:
            return
        self._key = key
        for child in [*self.line.children, *self.more.children]:
            _close_tree(child)
        if not outputs:
            self.text = "no outputs yet"
            empty = widgets.HTML('<span class="pipelite-empty">no outputs yet</span>')
            self.line.children, self.more.children = (empty,), ()
            self.show_preview(None, "")
            return
        lead = [widgets.HTML(f'<span class="pipelite-outputs-prefix">{prefix}</span>')] \
            if prefix else []
        if len(outputs) <= MAX_LISTED_OUTPUTS:
            self.text = prefix + ", ".join(_output_label(o) for o in outputs)
            self.line.children = (*lead, *(self._button(o, _output_label(o)) for o in outputs))
            self.more.children = ()
        else:
            total = human_bytes(sum(o.size for o in outputs))
            summary = f"{len(outputs)} outputs · {total}"
            self.text = prefix + summary + "".join(
                f"\n{o.name}: {o.summary or o.format}, {human_bytes(o.size)}" for o in outputs)
            toggle = widgets.Button(description=f"▸ {summary}",
                                    tooltip="list every output", layout=widgets.Layout(
                                        width="auto"))
            toggle.add_class("pipelite-outputs-toggle")

            def flip(_b: Any) -> None:
                shown = self.more.layout.display != "none"
                self.more.layout.display = "none" if shown else None
                toggle.description = f"{'▸' if shown else '▾'} {summary}"

            toggle.on_click(flip)
            self.line.children = (*lead, toggle)
            self.more.children = tuple(
                self._button(o, f"{o.name}: {o.summary or o.format}, {human_bytes(o.size)}")
                for o in outputs)
        if self.previewing is not None and self.previewing not in {o.name for o in outputs}:
            self.show_preview(None, "")

    def show_preview(self, name: str | None, content: str) -> None:
        self.previewing = name
        self.preview.value = content if name is not None else ""
        self.preview.layout.display = None if name is not None else "none"


def _close_tree(w: widgets.Widget) -> None:
    """Close a widget, its children and its layout (``close`` alone leaves them alive)."""
    for child in getattr(w, "children", ()):
        _close_tree(child)
    w.close()


class _StageRow(widgets.VBox):
    """One stage: badge, name, outputs, last run, buttons; below, why it is not fresh."""

    def __init__(self, name: str, on_run: Callable[[str, bool], None],
                 on_preview: Callable[[str, str], None]):
        self.name = name
        self.state: str | None = None
        self.badge = widgets.HTML(layout=widgets.Layout(width="84px", flex="0 0 auto"))
        self.badge.add_class("pipelite-badge")
        self.label = widgets.HTML(layout=widgets.Layout(width="190px", flex="0 0 auto"))
        self.label.add_class("pipelite-name")
        self.outputs = _Outputs(lambda output: on_preview(name, output))
        self.policies = widgets.HTML()  # under the name: the outputs keep the row's width
        self.policies.add_class("pipelite-policies")
        named = widgets.VBox([self.label, self.policies],
                             layout=widgets.Layout(width="190px", flex="0 0 auto"))
        named.add_class("pipelite-named")
        self.when = widgets.HTML(layout=widgets.Layout(width="150px", flex="0 0 auto"))
        self.when.add_class("pipelite-when")
        self.run_button = widgets.Button(
            description="Run", tooltip=f"run '{name}' (and its stale upstream stages)",
            layout=widgets.Layout(width="64px", flex="0 0 auto"))
        self.run_button.add_class("pipelite-run")
        self.force_button = widgets.Button(
            description="Force", tooltip=f"recompute '{name}' even if it is fresh",
            layout=widgets.Layout(width="64px", flex="0 0 auto"))
        self.force_button.add_class("pipelite-force")
        self.run_button.on_click(lambda _b: on_run(name, False))
        self.force_button.on_click(lambda _b: on_run(name, True))
        self.reason = widgets.HTML()
        self.reason.add_class("pipelite-reason")
        self.error = widgets.HTML()
        self.error.add_class("pipelite-error")
        main = widgets.HBox([self.badge, named, self.outputs, self.when,
                             self.run_button, self.force_button],
                            layout=widgets.Layout(width="100%"))
        main.add_class("pipelite-row-main")
        super().__init__([main, self.reason, self.error])
        self.add_class("pipelite-row")
        self.add_class(f"pipelite-row-{name}")
        self.defined = True
        self.failure_detail: str | None = None  # the traceback of a failure seen by this panel
        self._hide(self.reason)
        self._hide(self.error)

    @staticmethod
    def _hide(w: widgets.Widget, hidden: bool = True) -> None:
        w.layout.display = "none" if hidden else None

    def set_state(self, state: str) -> None:
        if state == self.state:
            return
        if self.state is not None:
            self.badge.remove_class(f"pipelite-badge-{self.state}")
            self.remove_class(f"pipelite-state-{self.state}")
        self.state = state
        self.badge.add_class(f"pipelite-badge-{state}")
        self.add_class(f"pipelite-state-{state}")
        fill, stroke = STATE_COLOURS.get(state, STATE_COLOURS["missing"])
        self.badge.value = (f'<span style="background:{fill};border-color:{stroke}">'
                            f"{state}</span>")

    def set_error(self, summary: str | None, detail: str | None = None) -> None:
        self.error.value = _error_html(summary, detail) if summary else ""
        self._hide(self.error, not summary)

    def show(self, s: StageStatus, busy: bool) -> None:
        self.set_state(s.state)
        self.defined = s.defined
        tag = "" if s.defined else f' <span class="pipelite-undefined-tag">{_NOT_DEFINED}</span>'
        # a long name is cut with an ellipsis by the CSS; the whole of it is in the tooltip
        self.label.value = (f'<b class="pipelite-name-text" title="{html.escape(s.name)}">'
                            f"{html.escape(s.name)}</b>{tag}")
        if s.defined:
            self.remove_class("pipelite-undefined")
        else:
            self.add_class("pipelite-undefined")
        self.policies.value = "".join(
            f'<span class="pipelite-policy pipelite-policy-{p.split()[0]}" '
            f'title="{html.escape(_POLICY_TIPS.get(p.split()[0], p))}">{html.escape(p)}</span>'
            for p in s.policies)
        self._hide(self.policies, not s.policies)  # a row without policies stays one line
        prefix = "previous result: " if s.outputs and s.state in ("failed", "stale") else ""
        self.outputs.show(s.outputs, prefix)
        if s.state == "failed" and s.failed_at is not None:  # its error shows below
            self.when.value = (f'<span class="pipelite-failed-at" title="failed '
                               f'{local_time(s.failed_at, full=True)}">failed '
                               f"{_when(s.failed_at)}</span>")
        elif s.last_run is not None:
            self.when.value = (f'<span title="last run {local_time(s.last_run, full=True)}">'
                               f"{_when(s.last_run)} · {_seconds(s.duration)}</span>")
        else:
            self.when.value = '<span class="pipelite-empty">never run</span>'
        reasons = [r for r in s.reasons if not (s.error and r.startswith("last run failed"))]
        # the label says "not defined in this session" already: once is enough
        reasons = [r for r in reasons if not r.startswith(_NOT_DEFINED)]
        show_reasons = bool(reasons) and s.state != "fresh"
        self.reason.value = ("; ".join(html.escape(r, quote=False) for r in reasons)
                             if show_reasons else "")
        self._hide(self.reason, not show_reasons)
        if s.state == "failed" and s.error:
            self.set_error(f"last run failed: {s.error}", self.failure_detail or s.traceback)
        elif s.state != "failed":
            self.failure_detail = None
            self.set_error(None)
        self.set_busy(busy)

    def set_busy(self, busy: bool) -> None:
        self.run_button.disabled = busy or not self.defined
        self.force_button.disabled = busy or not self.defined
        if not self.defined:
            why = f"'{self.name}' is {_NOT_DEFINED}: run the cell that defines it first"
            self.run_button.tooltip = self.force_button.tooltip = why
        else:
            self.run_button.tooltip = f"run '{self.name}' (and its stale upstream stages)"
            self.force_button.tooltip = f"recompute '{self.name}' even if it is fresh"


class _OriginGroup(widgets.VBox):
    """The stages another notebook defined (known from the store here): collapsed under
    "5 stages from train.ipynb", expanded by a click."""

    expanded: bool = False

    def __init__(self, origin: str):
        self.origin = origin
        self.toggle = widgets.Button(layout=widgets.Layout(width="auto"),
                                     tooltip=f"stages that {origin} defined, in the same store")
        self.toggle.add_class("pipelite-group-toggle")
        self.toggle.on_click(lambda _b: self.set_expanded(not self.expanded))
        self.body = widgets.VBox(layout=widgets.Layout(display="none"))
        self.body.add_class("pipelite-group-rows")
        self.expanded = False
        self._count = 0
        super().__init__([self.toggle, self.body])
        self.add_class("pipelite-group")

    def show(self, rows: list[_StageRow]) -> None:
        if list(self.body.children) != rows:
            self.body.children = rows
        self._count = len(rows)
        self._label()

    def set_expanded(self, expanded: bool) -> None:
        self.expanded = expanded
        self.body.layout.display = None if expanded else "none"
        self._label()

    def _label(self) -> None:
        n = self._count
        name = os.path.basename(self.origin)
        arrow = "▾" if self.expanded else "▸"
        self.toggle.description = f"{arrow} {n} stage{'s' if n != 1 else ''} from {name}"


class PipelinePanel(widgets.VBox):
    """A live view of a session's pipeline: one row per stage, with Run and Force buttons.

    >>> panel = PipelinePanel(session)   # session: .pipeline and .run(names, force=False)
    >>> panel                            # displays; refreshes itself whenever a stage runs
    >>> panel.close()                    # stops listening

    ``session.run(names, force=...)`` runs the stages and binds their outputs into the user's
    namespace; the panel calls it for its buttons and shows any error it raises.
    """

    def __init__(self, session: Any, *, shell: Any = None):
        self.session = session
        self._busy = False
        self._run_depth = 0
        self._run_t0 = 0.0
        self._failed_in_run: list[str] = []
        # every run this panel saw, added up (a run per cell: "last run" alone shows one cell)
        self._session_computed = 0
        self._session_failed = 0
        self._session_seconds = 0.0
        self._rows: dict[str, _StageRow] = {}
        self._mine: list[str] = []  # the stages of this notebook (or session), in order
        self._groups: dict[str, _OriginGroup] = {}  # another notebook's stages, collapsed
        self._statuses: list[StageStatus] = []
        self._closed = False
        self._status_failed = False
        self._background: Any = None  # the BackgroundRun started by this panel, while it runs
        self._last_ok = False
        # the stage running now, for the ticking clock: (name, index, total, started)
        self._running: tuple[str, int, int, float] | None = None
        self._ticker: threading.Thread | None = None
        self._tick_stop = threading.Event()

        style = widgets.HTML(_CSS, layout=widgets.Layout(display="none"))
        self.title = widgets.HTML()
        self.title.add_class("pipelite-title")
        self.counts = widgets.HTML()
        self.counts.add_class("pipelite-counts")
        self.refresh_button = widgets.Button(description="Refresh",
                                             tooltip="check every stage again",
                                             layout=widgets.Layout(width="80px"))
        self.refresh_button.add_class("pipelite-refresh")
        self.refresh_button.on_click(lambda _b: self.refresh())
        self.graph_toggle = widgets.ToggleButton(description="Graph", value=False,
                                                 tooltip="show the stage graph, coloured by state",
                                                 layout=widgets.Layout(width="80px"))
        self.graph_toggle.add_class("pipelite-graph-toggle")
        self.graph_toggle.observe(self._on_graph_toggle, "value")
        self.run_all_button = widgets.Button(description="Run all stale",
                                             layout=widgets.Layout(width="150px"))
        self.run_all_button.add_class("pipelite-run-all")
        self.run_all_button.on_click(lambda _b: self.run_all_stale())
        self.store_label = widgets.HTML()
        self.store_label.add_class("pipelite-store")
        spacer = widgets.HTML(layout=widgets.Layout(flex="1 1 auto"))
        top = widgets.HBox([self.title, self.counts, spacer, self.refresh_button,
                            self.graph_toggle, self.run_all_button],
                           layout=widgets.Layout(width="100%"))
        top.add_class("pipelite-header-top")
        header = widgets.VBox([top, self.store_label], layout=widgets.Layout(width="100%"))
        header.add_class("pipelite-header")

        self.progress_bar = widgets.IntProgress(value=0, min=0, max=1,
                                                layout=widgets.Layout(width="200px"))
        self.progress_bar.add_class("pipelite-progress-bar")
        self.progress_text = widgets.HTML()
        self.progress_text.add_class("pipelite-progress-text")
        self.cancel_button = widgets.Button(description="Cancel",
                                            tooltip="stop this run: the stage running now is "
                                                    "interrupted and nothing is stored for it",
                                            layout=widgets.Layout(width="80px",
                                                                  display="none"))
        self.cancel_button.add_class("pipelite-cancel")
        self.cancel_button.on_click(lambda _b: self.cancel())
        self.progress = widgets.HBox([self.progress_bar, self.progress_text, self.cancel_button])
        self.progress.add_class("pipelite-progress")
        self.progress.layout.display = "none"

        self.error = widgets.HTML(layout=widgets.Layout(display="none"))
        self.error.add_class("pipelite-error")
        self.error.add_class("pipelite-panel-error")
        self.rows = widgets.VBox()
        self.rows.add_class("pipelite-rows")
        self._empty = widgets.HTML("no stages yet: define one with <code>%%stage NAME</code> "
                                   "or <code>@stage</code>")
        self._empty.add_class("pipelite-empty")
        self.graph = widgets.Output(layout=widgets.Layout(display="none"))
        self.graph.add_class("pipelite-graph")

        super().__init__([style, header, self.progress, self.error, self.rows, self.graph])
        self.add_class("pipelite-panel")

        self._unsubscribe: Callable[[], None] | None = subscribe(self._on_event)
        self._shell = shell if shell is not None else self._find_shell(session)
        if self._shell is not None:
            self._shell.events.register("post_run_cell", self._after_cell)
        self.refresh()

    @staticmethod
    def _find_shell(session: Any) -> Any:
        shell = getattr(session, "shell", None)
        if shell is not None and hasattr(shell, "events"):
            return shell
        try:
            from IPython import get_ipython
        except ImportError:  # pragma: no cover - ipywidgets needs IPython
            return None
        return get_ipython()

    # -- lifecycle ------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop listening to stage events and cell runs, and remove the widget."""
        if not self._closed:
            self._closed = True
            self._tick_stop.set()
            if self._unsubscribe is not None:
                self._unsubscribe()
                self._unsubscribe = None
            if self._shell is not None:
                try:
                    self._shell.events.unregister("post_run_cell", self._after_cell)
                except ValueError:
                    pass
            for child in self.children:
                _close_tree(child)
            for row in self._rows.values():  # rows not shown at the moment
                _close_tree(row)
            _close_tree(self._empty)
        super().close()

    @property
    def statuses(self) -> list[StageStatus]:
        """The stage statuses shown, as of the last refresh."""
        return list(self._statuses)

    def row(self, name: str) -> _StageRow:
        """The row of stage ``name`` (for tests and scripting)."""
        return self._rows[name]

    # -- refreshing -----------------------------------------------------------------------------
    def _store_url(self) -> str:
        return self.session.pipeline.store.url

    def refresh(self) -> None:
        """Check every stage's state again and redraw."""
        if self._closed:
            return
        pipeline = self.session.pipeline
        url = pipeline.store.url
        self.title.value = "<b>PipeLite</b>"
        self.store_label.value = (f'store <code title="{html.escape(url)}">'
                                  f"{html.escape(_short_store(url), quote=False)}</code>")
        try:
            statuses = pipeline.status()
        except Exception as exc:  # noqa: BLE001 - e.g. a cycle: say so in the panel
            self._status_failed = True
            self._show_panel_error(f"cannot check the stages: {exc}")
            return
        if self._status_failed:
            self._status_failed = False
            self._show_panel_error(None)
        self._statuses = statuses
        names = [s.name for s in statuses]
        for s in statuses:
            row = self._rows.get(s.name)
            if row is None:
                row = self._rows[s.name] = _StageRow(s.name, self._run_from_button,
                                                     self._preview)
            row.show(s, self._busy)
        # this notebook's stages first; those only another notebook defined, collapsed
        mine = getattr(self.session, "notebook", None)
        by_origin: dict[str, list[str]] = {}
        self._mine = []
        for s in statuses:
            if not s.defined and s.origin is not None and s.origin != mine:
                by_origin.setdefault(s.origin, []).append(s.name)
            else:
                self._mine.append(s.name)
        children: list[widgets.Widget] = [self._rows[n] for n in self._mine] or [self._empty]
        for origin in sorted(by_origin):
            group = self._groups.get(origin)
            if group is None:
                group = self._groups[origin] = _OriginGroup(origin)
            group.show([self._rows[n] for n in by_origin[origin]])
            children.append(group)
        if list(self.rows.children) != children:
            self.rows.children = children
        for gone in set(self._groups) - set(by_origin):
            group = self._groups.pop(gone)
            group.body.children = ()  # its rows live on elsewhere, or are closed below
            _close_tree(group)
        for gone in set(self._rows) - set(names):  # e.g. invalidated and no longer defined
            _close_tree(self._rows.pop(gone))
        self._show_counts()
        if self.graph_toggle.value:
            self._draw_graph()

    def _show_counts(self) -> None:
        """Count this notebook's stages (another notebook's are counted in their group)."""
        by_state = {st: 0 for st in STATES}
        for row in (self._rows[n] for n in self._mine if n in self._rows):
            by_state[row.state or "missing"] = by_state.get(row.state or "missing", 0) + 1
        self.counts.value = (" ".join(_chip(st, f"{n} {st}") for st, n in by_state.items() if n)
                             or "")
        todo = self._stale_names()
        self.run_all_button.description = (f"Run all stale ({len(todo)})" if todo
                                           else "Run all stale")
        self.run_all_button.tooltip = (
            "run every stage that is not fresh: " + ", ".join(todo) if todo
            else "every stage defined in this session is fresh")
        self.run_all_button.disabled = self._busy or not todo

    def _stale_names(self) -> list[str]:
        return [s.name for s in self._statuses
                if s.defined and self._rows[s.name].state in ("stale", "missing", "failed")]

    def _after_cell(self, *_args: Any) -> None:
        # a cell may have redefined a stage or changed a global it reads: no event says so
        if self._run_depth == 0 and not self._busy:
            self.refresh()

    def _on_event(self, ev: StageEvent) -> None:
        if self._closed:
            return
        try:
            url = self._store_url()
        except Exception:  # noqa: BLE001 - a half-configured session: ignore
            return
        if ev.store != url:
            return
        row = self._rows.get(ev.stage) if ev.stage else None
        if ev.kind == "run_started":
            self._run_depth += 1
            if self._run_depth == 1:
                self._run_t0 = ev.time
                self._failed_in_run = []
                self._progress(f"checking {ev.total} stage{'s' if ev.total != 1 else ''}…",
                               0, max(ev.total, 1))
        elif ev.kind == "started" and ev.stage is not None:
            if row is None:  # a stage this panel has not seen yet
                self.refresh()
                row = self._rows.get(ev.stage)
            if row is not None:
                row.set_state("running")
                row.set_error(None)
                row.reason.value = ""
                row._hide(row.reason)
                self._show_counts()
            total = max(ev.total, ev.index, 1)
            self._running = (ev.stage, ev.index, total, ev.time)
            self._tick()
            self._start_ticker()
        elif ev.kind in ("finished", "failed", "cancelled") and self._run_depth > 0:
            self._running = None
            if ev.kind == "failed" and ev.stage:
                self._failed_in_run.append(ev.stage)
                self._session_failed += 1
            elif ev.kind == "finished":
                self._session_computed += 1
                self._session_seconds += ev.duration or 0.0
            if row is not None:
                if ev.kind == "finished":
                    self._show_finished(row, ev)
                elif ev.kind == "failed":
                    row.set_state("failed")
                    row.set_error(f"last run failed: {ev.error}")
                else:  # cancelled: back to what it was
                    before = self._status_of(row.name)
                    if before is not None:
                        row.show(before, True)
                self._show_counts()
            total = max(ev.total, ev.index, 1)
            verb = {"finished": "done", "failed": "failed", "cancelled": "cancelled"}[ev.kind]
            took = f" in {_seconds(ev.duration)}" if ev.kind == "finished" else ""
            self._progress(f"stage {ev.index} of {total}: <b>{html.escape(ev.stage or '')}</b> "
                           f"{verb}{took} · "
                           f"{_seconds(ev.time - self._run_t0)} elapsed", ev.index, total)
        elif ev.kind == "run_finished":
            self._run_depth = max(0, self._run_depth - 1)
            self._running = None
            if self._run_depth == 0:
                n, failed = ev.index, self._failed_in_run
                done = f"{n} stage{'s' if n != 1 else ''} computed" if n else ""
                if failed:
                    done += (", " if done else "") + f"{', '.join(failed)} failed"
                self.progress_bar.layout.display = "none"
                last = (f"last run: {done} in {_seconds(ev.time - self._run_t0)}" if done else
                        "last run: everything was fresh, nothing computed")
                clock = _dt.datetime.fromtimestamp(ev.time).strftime("%H:%M:%S")
                self.progress_text.value = f"{last}, at {clock} · {self._session_summary()}"
                self.refresh()
        elif ev.kind == "skipped":
            pass
        elif self._run_depth == 0:  # invalidated, or a stage event outside a run
            self.refresh()

    def _session_summary(self) -> str:
        """What every run of the session computed (the kernel's, counted from its start when
        the session keeps count; else every run this panel saw): one cell at a time (Run All
        Cells) adds up here, where "last run" shows only the last cell's."""
        totals = getattr(self.session, "totals", None)
        n, seconds, failed = (totals() if callable(totals) else
                              (self._session_computed, self._session_seconds,
                               self._session_failed))
        text = (f"this session: {n} stage{'s' if n != 1 else ''} computed in "
                f"{_seconds(seconds)}")
        if failed:
            text += f", {failed} failed"
        return text

    def _progress(self, text: str, value: int, total: int) -> None:
        self.progress.layout.display = None
        self.progress_bar.layout.display = None
        self.progress_bar.max = max(total, 1)
        self.progress_bar.value = min(max(value, 0), self.progress_bar.max)
        self.progress_text.value = text

    # -- acting ---------------------------------------------------------------------------------
    def _run_from_button(self, name: str, force: bool) -> None:
        self.run([name], force=force, wait=False)

    def run_all_stale(self, wait: bool = False) -> None:
        """Run every stage defined in this session that is not fresh."""
        self.refresh()
        names = self._stale_names()
        if names:
            self.run(names, wait=wait)

    def run(self, names: Sequence[str] | None, force: bool = False, wait: bool = True) -> bool:
        """Run stages through the session (binding their outputs); show any error in the panel.

        The run happens in a thread (``session.start_run``) so that Cancel and Kernel ->
        Interrupt can stop it; ``wait=False`` returns at once (the buttons do). Returns
        whether the run succeeded (with ``wait``). Never raises for a failing stage: the
        error is shown in the panel and the kernel stays usable.
        """
        if self._busy:
            return False
        self._set_busy(True)
        self._show_panel_error(None)
        self._failed_in_run = []
        self._last_ok = False
        target = list(names) if names is not None else None
        start = getattr(self.session, "start_run", None)
        if start is None:  # a session that runs only here and now
            try:
                self.session.run(target, force=force)
                self._last_ok = True
            except BaseException as exc:  # noqa: BLE001 - shown in the panel
                self._report(exc, target)
            finally:
                self._run_ended()
            return self._last_ok
        self.cancel_button.disabled = False
        self.cancel_button.description = "Cancel"
        self.cancel_button.layout.display = None
        self._background = start(target, force, on_done=lambda run: self._ended(run, target),
                                 start=False)
        self._background.start()  # kept first: a short run may end before start() returns
        if wait:
            self.wait()
            return self._last_ok
        return True

    def wait(self) -> None:
        """Wait for the run started from this panel, if any, to end."""
        run = self._background
        if run is not None:
            run.join()

    def cancel(self) -> None:
        """Stop the panel's run: no further stage starts, the running one is interrupted
        (nothing is stored for it, and its state is what it was)."""
        run = self._background
        if run is None:
            return
        self.cancel_button.disabled = True
        self.cancel_button.description = "Cancelling…"
        run.cancel()

    def _ended(self, run: Any, names: list[str] | None) -> None:
        """The background run ended (called in its thread)."""
        try:
            if run.error is None:
                self._last_ok = True
            else:
                self._report(run.error, names, cancelled=run.cancelled)
        finally:
            self._background = None
            self.cancel_button.layout.display = "none"
            self._run_ended()

    def _report(self, exc: BaseException, names: list[str] | None,
                cancelled: bool = False) -> None:
        if isinstance(exc, RunCancelled) or (cancelled and isinstance(exc, KeyboardInterrupt)):
            stopped = getattr(exc, "stage", None) or (self._running or ("",))[0]
            what = f"stage '{stopped}' was stopped" if stopped else "no stage had started"
            clock = _dt.datetime.now().strftime("%H:%M:%S")
            self.progress.layout.display = None
            self.progress_bar.layout.display = "none"
            self.progress_text.value = (f'<span class="pipelite-cancelled">cancelled at {clock}: '
                                        f"{html.escape(what)}; nothing was stored for it</span>"
                                        f" · {self._session_summary()}")
            return
        if isinstance(exc, KeyboardInterrupt):
            self._show_panel_error("interrupted")
            return
        summary = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        detail = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        failed = self._rows.get(self._failed_in_run[-1]) if self._failed_in_run else None
        if failed is not None:  # a stage raised: its row shows the error and the stored
            failed.failure_detail = None  # traceback, which holds only the user's frames
        else:  # e.g. a missing input or parameter: not one stage's failure
            what = ", ".join(names) if names else "all stages"
            self._show_panel_error(f"running {what} failed: {summary}", detail)

    def _run_ended(self) -> None:
        self._running = None
        self._set_busy(False)
        self._run_depth = 0
        self.refresh()

    def _preview(self, stage: str, output: str) -> None:
        """Show (or hide, on a second click) output ``output`` of ``stage`` under its row."""
        row = self._rows.get(stage)
        if row is None:
            return
        if row.outputs.previewing == output:
            row.outputs.show_preview(None, "")
            return
        from .preview import preview_html

        try:
            store = self.session.pipeline.store
            record = store.latest(stage)
            if record is None or output not in record.outputs:
                raise LookupError(f"'{output}' is no longer stored")
            content = preview_html(output, store.load_value(record.outputs[output],
                                                            record=record))
        except Exception as exc:  # noqa: BLE001 - say why in the preview, keep the panel
            content = (f'<span class="pipelite-preview-error">cannot preview '
                       f"{html.escape(output)}: {html.escape(str(exc) or type(exc).__name__)}"
                       f"</span>")
        row.outputs.show_preview(output, content)

    # -- the ticking clock ----------------------------------------------------------------------
    def _status_of(self, name: str) -> StageStatus | None:
        return next((s for s in self._statuses if s.name == name), None)

    def _tick(self) -> None:
        """Say which stage runs, for how long, and how long it took last time."""
        running = self._running
        if running is None or self._closed:
            return
        name, index, total, started = running
        elapsed = max(time.time() - started, 0.0)
        before = self._status_of(name)
        estimate = (f" of ~{human_duration(before.duration)}"
                    if before is not None and before.duration else "")
        self._progress(f"stage {index} of {total}: <b>{html.escape(name)}</b> running · "
                       f"{human_duration(elapsed)}{estimate} · "
                       f"{_seconds(time.time() - self._run_t0)} elapsed", index - 1, total)
        row = self._rows.get(name)
        if row is not None:
            row.when.value = (f'<span class="pipelite-running-for">running '
                              f"{human_duration(elapsed)}{estimate}</span>")

    def _start_ticker(self) -> None:
        if self._ticker is not None and self._ticker.is_alive():
            return

        def loop() -> None:
            while not self._tick_stop.wait(1.0):
                if self._running is None or self._closed:
                    return
                self._tick()

        self._ticker = threading.Thread(target=loop, name="pipelite-panel-clock", daemon=True)
        self._ticker.start()

    def _show_finished(self, row: _StageRow, ev: StageEvent) -> None:
        """A stage of a longer run is done: its row says so now, not when the run ends."""
        row.set_state("fresh")
        row.set_error(None)
        row.reason.value = ""
        row._hide(row.reason)
        clock = _dt.datetime.fromtimestamp(ev.time).strftime("%H:%M:%S")
        row.when.value = f"<span>{clock} · {_seconds(ev.duration)}</span>"
        try:
            record = self.session.pipeline.store.latest(row.name)
        except Exception:  # noqa: BLE001 - the refresh after the run shows them
            record = None
        if record is not None and record.outputs:
            row.outputs.show([OutputInfo(k, v.size, v.format, v.summary or "", v.hash)
                              for k, v in record.outputs.items()])

    def _set_busy(self, busy: bool) -> None:
        self._busy = busy
        for row in self._rows.values():
            row.set_busy(busy)
        self.run_all_button.disabled = busy or not self._stale_names()
        self.refresh_button.disabled = busy

    def _show_panel_error(self, summary: str | None, detail: str | None = None) -> None:
        self.error.value = _error_html(summary, detail) if summary else ""
        self.error.layout.display = None if summary else "none"

    # -- the graph ------------------------------------------------------------------------------
    def _on_graph_toggle(self, change: dict) -> None:
        if change["new"]:
            self.graph.layout.display = None
            self._draw_graph()
        else:
            self.graph.layout.display = "none"
            self.graph.outputs = ()

    def _draw_graph(self) -> None:
        from pipelite.graph import render

        # SVG when Graphviz is installed (works in every frontend); else mermaid, which
        # JupyterLab 4 and Notebook 7 render from markdown natively.
        try:
            data = {"image/svg+xml": render(self._statuses, "svg")}
        except Exception:  # noqa: BLE001 - no Graphviz, or dot failed: fall back to mermaid
            text = render(self._statuses, "mermaid")
            data = {"text/markdown": f"```mermaid\n{text}```\n", "text/plain": text}
        self.graph.outputs = ({"output_type": "display_data", "data": data, "metadata": {}},)
