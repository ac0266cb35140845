"""The extension's state in one kernel: the shell, its pipeline, and running stages from cells."""
from __future__ import annotations

import ast
import asyncio
import contextlib
import contextvars
import datetime as _dt
import json
import os
import re
import sys
import threading
import time
import traceback
import uuid
import warnings
from typing import Any, Callable, Iterator

from traitlets import Bool, Dict, Unicode, default, observe
from traitlets.config import Configurable

from pipelite import (
    CellStage,
    Pipeline,
    PipeliteError,
    PipeliteWarning,
    RunResult,
    StageEvent,
    subscribe,
)
from pipelite.errors import DuplicateProducerError, UntrustedRecordError
from pipelite.formats import VOLATILE
from pipelite.present import human_bytes, human_duration, local_time, user_frames
from pipelite.store import ResultRecord

from ._background import BackgroundRun, await_on_loop, interrupt_cancels
from .badge import Badge
from .cell import CompiledCell, OutputCapture, replay
from .slots import EMPTY, LiveOutput, composite

__all__ = ["PipeliteSession", "StageOutcome", "ReassignedInputError"]

STORAGE_OPTIONS_ENV = "PIPELITE_STORAGE_OPTIONS"  # set by pipelite run --storage-option
OUTPUTS_ATTACHMENT = "outputs"  # the captured stdout/stderr/displays of a cell stage


class ReassignedInputError(DuplicateProducerError):
    """A cell stage assigns a name it reads from another stage (``a = a + 1``): the cell
    would become a second producer of that artifact, and its own input."""


class StageOutcome:
    """What running one cell stage did: ``computed`` or ``loaded`` (with its record)."""

    def __init__(self, name: str, computed: bool, values: dict, record: ResultRecord | None,
                 executed: list[str]):
        self.name = name
        self.computed = computed
        self.values = values
        self.record = record
        self.executed = executed


class _CellView:
    """What one stage's cell shows: its badge (a display id), the display ids of its output,
    and the output of a later run started elsewhere (the panel), drawn under the badge."""

    def __init__(self, badge_id: str):
        self.badge_id = badge_id
        self.output_ids: list[str] = []  # the cell's own output (emptied by a later run)
        self.shown: str | None = None  # what the badge display shows now
        self.note = ""  # "output of the run from the panel at 10:32:05"
        self.body: dict | None = None  # that run's output
        self.own_error_at: str | None = None  # when the cell's own run failed (its traceback
        # is an error output, which no update can replace)


class _Frame:
    """A run of a stage started outside its cell: its output is drawn under the cell's badge
    (replacing what the cell showed), as it comes; the same interface as ``LiveOutput``."""

    REDRAW_EVERY = 0.25
    error: str | None = None  # the traceback, when the run failed

    def __init__(self, session: "PipeliteSession", name: str, view: _CellView, label: str):
        self.session = session
        self.name = name
        self.view = view
        self.events: list[dict] = []
        self._drawn = 0.0
        when = _dt.datetime.now().strftime("%H:%M:%S")
        note = f"output of the run {label} at {when}"
        if view.own_error_at:
            note += f" (the error below is from the cell's own run at {view.own_error_at})"
        view.note, view.body = note, {"text/html": "", "text/plain": ""}
        for did in view.output_ids:  # the cell's own output gives way to this run's
            session._publish(EMPTY, {}, did, True)
        view.output_ids = []
        self._draw(force=True)

    def stream(self, name: str, text: str) -> None:
        last = self.events[-1] if self.events else {}
        if last.get("stream") == name:
            last["text"] += text
        else:
            self.events.append({"stream": name, "text": text})
        self._draw()

    def display(self, data: dict, metadata: dict | None = None,
                display_id: str | None = None) -> str:
        self.events.append({"display": {"data": data, "metadata": metadata or {}}})
        self._draw()
        return display_id or ""

    def clear(self) -> None:
        self.events.append({"clear": False})
        self._draw()

    def fail(self, exc: BaseException) -> None:
        text = "".join(traceback.format_exception(type(exc), exc,
                                                  user_frames(exc.__traceback__)))
        self.error = _cell_names(self.session.shell, text)
        self._draw(force=True)

    def close(self) -> None:
        self._draw(force=True)

    def _draw(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._drawn < self.REDRAW_EVERY:
            return
        self._drawn = now
        self.view.body = composite(self.events, self.error)
        self.session._show(self.name, Badge(self.name, "running", "", self.view.note,
                                            self.view.body))


class PipeliteSession(Configurable):
    """One pipeline bound to an IPython shell's user namespace.

    >>> session = pipelite_ipy.current_session()
    >>> session.run(["train_model"])            # runs what is stale, binds its outputs

    The store is ``./.pipelite`` unless configured (``c.PipeliteSession.store = "..."``, or
    ``--PipeliteSession.store=...`` on the kernel command line) or changed with
    ``%pipelite store PATH``.
    """

    store = Unicode(".pipelite", help="Where stage results are stored: a path or an fsspec "
                    "URL. Relative paths are resolved against the working directory at the "
                    "time it is set.").tag(config=True)

    storage_options = Dict(help="fsspec storage options for a remote store (credentials, "
                           "client_kwargs={'endpoint_url': ...}); %pipelite store URL --option "
                           "KEY=VALUE sets them too").tag(config=True)

    @default("storage_options")
    def _storage_options_from_env(self) -> dict:
        """``pipelite run NB --storage-option K=V`` gives the kernel its options through
        ``PIPELITE_STORAGE_OPTIONS`` (JSON), not through the notebook's text: credentials
        never land in the executed notebook."""
        text = os.environ.get(STORAGE_OPTIONS_ENV)
        if not text:
            return {}
        try:
            options = json.loads(text)
        except ValueError:
            options = None
        if not isinstance(options, dict):
            warnings.warn(f"{STORAGE_OPTIONS_ENV} is not a JSON object: ignored (it gives "
                          f"the store's storage options, e.g. '{{\"key\": \"...\"}}')",
                          PipeliteWarning, stacklevel=2)
            return {}
        return options

    badges = Bool(None, allow_none=True, help="Show a state badge at the top of each %%stage "
                  "cell's output, kept current as states change (default: in a notebook "
                  "kernel, not in a terminal)").tag(config=True)

    def __init__(self, shell: Any, **kwargs: Any):
        super().__init__(parent=shell, **kwargs)
        self.shell = shell
        self.pipeline = Pipeline(store=self.store, storage_options=self._options_for(self.store))
        self._active = 0  # >0 while this session runs stages: then it reports progress
        self._current: str | None = None  # the stage whose own cell is running
        self._why: str | None = None  # why the cell's own stage ran (its started event)
        self._computed, self._compute_seconds, self._failed = 0, 0.0, 0  # this kernel's runs
        self._unsubscribe: Callable[[], None] | None = subscribe(self._on_event)
        # Which stage each notebook cell defined, by the cell's id (JupyterLab and VS Code send
        # one with every execution; a terminal shell has none): a cell run again under a new
        # name replaces its own old stage instead of clashing with it
        self._cell_id: str | None = None
        self._in_cell = False  # between pre_run_cell and post_run_cell
        self._stage_of_cell: dict[str, str] = {}
        self.shell.events.register("pre_run_cell", self._before_cell)
        self._views: dict[str, _CellView] = {}  # stage -> what its cell shows (badges on)
        self._live: LiveOutput | None = None  # the running cell's own stage's output
        self._live_thread: int | None = None  # the thread running that cell
        # A run holds the lock: a cell that runs stages while the panel runs some waits
        self._lock = threading.RLock()
        self.background: BackgroundRun | None = None  # the panel's run, while it runs
        self._runs: dict[int, BackgroundRun] = {}  # thread -> the run in it (panel, await)
        self._loops: dict[int, asyncio.AbstractEventLoop] = {}  # thread -> where its run's
        # cells with a top-level await run: the loop that awaits the run (see
        # run_cell_stage_async)
        self._run_label: dict[int, str] = {}  # thread -> where its run was started from
        self._warned_collisions: set[tuple[str, str]] = set()  # (stage, other notebook)
        self.shell.events.register("post_run_cell", self._after_cell)

    @observe("store", "storage_options")
    def _store_changed(self, change: dict) -> None:
        old = getattr(self, "pipeline", None)  # config is applied before __init__ ends
        if old is None:
            return  # __init__ makes the first pipeline, with both traits set
        self.pipeline = Pipeline(store=self.store, params=old.params, registry=old.registry,
                                 storage_options=self._options_for(self.store),
                                 executor=old.executor)  # the cluster stays

    def _options_for(self, store: str) -> dict | None:
        """The storage options, for a remote store only (a local path takes none)."""
        from pipelite.store import parse_location

        return dict(self.storage_options) if self.storage_options and \
            parse_location(store).is_remote else None

    def close(self) -> None:
        """Stop listening to stage events (the extension is being unloaded)."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        for event, hook in (("pre_run_cell", self._before_cell),
                            ("post_run_cell", self._after_cell)):
            try:
                self.shell.events.unregister(event, hook)
            except ValueError:  # already gone
                pass

    def _before_cell(self, info: Any = None) -> None:
        self._cell_id = getattr(info, "cell_id", None) or None
        self._in_cell = True

    def _after_cell(self, result: Any = None) -> None:
        self._in_cell = False
        self.refresh_badges()  # the cell may have changed a global a stage reads

    # -- badges ------------------------------------------------------------------------------
    def badges_on(self) -> bool:
        if self.badges is not None:
            return bool(self.badges)
        return type(self.shell).__name__ == "ZMQInteractiveShell"  # a notebook's kernel

    def show_badge(self, name: str, state: str = "running") -> None:
        """Start the output of stage ``name``'s cell with its badge (a new display)."""
        if not self.badges_on():
            return
        did = f"pipelite-badge-{name}-{uuid.uuid4().hex[:12]}"
        view = self._views[name] = _CellView(did)
        badge = Badge(name, state)
        view.shown = repr(badge)
        self._publish_obj(badge, did, update=False)

    def refresh_badges(self, states: dict[str, Any] | None = None) -> None:
        """Bring every badge shown up to date (only those whose text changed are sent)."""
        if not self._views:
            return
        if states is None:
            try:
                states = {s.name: s for s in self.pipeline.status()}
            except Exception:  # noqa: BLE001 - a badge never breaks a cell; the cell reports
                return
        for name, view in list(self._views.items()):
            status = states.get(name)
            if status is None:
                continue
            badge = (Badge.of(status, view.note, view.body) if status.defined
                     else Badge(name, status.state, "not defined in this session", view.note,
                                view.body))
            self._show(name, badge)

    def _show(self, name: str, badge: Badge) -> None:
        """Update stage ``name``'s badge display to ``badge``, if it shows something else."""
        view = self._views.get(name)
        if view is None:
            return
        text = repr(badge)
        if view.shown != text:
            view.shown = text
            self._publish_obj(badge, view.badge_id, update=True)

    def _badge_running(self, name: str) -> None:
        view = self._views.get(name)
        if view is not None:
            self._show(name, Badge(name, "running", "", view.note, view.body))

    def _publish(self, data: dict, metadata: dict, display_id: str, update: bool) -> None:
        """Send a display (or an update of one) past any capture that is active: the class's
        own ``publish``, not one an ``OutputCapture`` put on the instance."""
        pub = self.shell.display_pub
        type(pub).publish(pub, data=data, metadata=metadata,
                          transient={"display_id": display_id}, update=update)

    def _publish_obj(self, obj: Any, display_id: str, update: bool) -> None:
        data, metadata = self.shell.display_formatter.format(obj)
        self._publish(data, metadata, display_id, update)

    def _renamed(self, name: str) -> str | None:
        """The stage this very cell defined before under another name, if still registered
        as a cell stage: the cell is being renamed."""
        old = self._stage_of_cell.get(self._cell_id) if self._cell_id else None
        if old is None or old == name:
            return None
        return old if isinstance(self.pipeline.registry.get(old), CellStage) else None

    # -- running ---------------------------------------------------------------------------
    def run(self, names: list[str] | None = None, force: bool = False, *,
            cancel: threading.Event | None = None, quiet: bool = False) -> RunResult:
        """Run the named stages (all when None) and what they need; bind their outputs.

        Fresh stages are loaded, not recomputed; ``force`` recomputes the named stages.
        A loaded cell stage also re-runs its top-level imports, ``def`` and ``class``
        statements, so the namespace is as if the cell had run (only outputs are stored).
        Stage errors propagate unchanged (the magics present them). ``cancel`` stops the run
        when set (``RunCancelled``); ``quiet`` prints no progress (the panel shows it).
        """
        target = list(names) if names else None
        with self._exclusive():
            if not quiet:
                self._active += 1
            try:
                result = self.pipeline.run(target, force=force, cancel=cancel)
            finally:
                if not quiet:
                    self._active -= 1
            registry = self.pipeline.registry
            loaded = [st for st in (registry.get(n) for n in (target or registry.names()))
                      if isinstance(st, CellStage) and st.name not in result.executed
                      and st.user_ns is self.shell.user_ns
                      and all(o in result for o in st.declared_outputs or ())]
            # cells a cluster ran: their outputs come from the store, as for a loaded cell
            remote = [st for st in (registry.get(n) for n in result.elsewhere)
                      if isinstance(st, CellStage) and st.user_ns is self.shell.user_ns]
            loaded += remote
            before = {st.name: st.snapshot() for st in loaded}
            for st in remote:
                self.bind(result.elsewhere[st.name])
            self.bind(result)
            for st in loaded:
                self._rerun_definitions(st)
                st.settle(before[st.name])
        return result

    def start_run(self, names: list[str] | None, force: bool = False, *,
                  on_done: Callable[[BackgroundRun], None] | None = None,
                  label: str = "from the panel", start: bool = True) -> BackgroundRun:
        """Run stages in a thread (the panel's buttons): the kernel stays free, so a Cancel
        click or Kernel -> Interrupt can stop it (``BackgroundRun.cancel``). A stage of a cell
        shows its output under that cell's badge."""
        def work(cancel: threading.Event) -> RunResult:
            me = threading.get_ident()
            self._run_label[me], self._runs[me] = label, run
            try:
                return self.run(names, force=force, cancel=cancel, quiet=True)
            finally:
                self._run_label.pop(me, None)
                self._runs.pop(me, None)

        def done(run: BackgroundRun) -> None:
            if self.background is run:
                self.background = None
            if on_done is not None:
                on_done(run)

        run = BackgroundRun(work, done, shell=self.shell)
        self.background = run
        # start=False: the caller keeps the run before it starts (a short run may end, and
        # call on_done, before start() returns)
        return run.start() if start else run

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """Hold the session's run lock; if the panel's run holds it, say so and wait."""
        if not self._lock.acquire(blocking=False):
            run = self.background
            what = (f"the panel's run{f' (stage {run.stage!r})' if run and run.stage else ''}"
                    if run is not None else "another run")
            print(f"[pipelite] waiting for {what} to finish: cancel it in the panel, or "
                  f"interrupt the kernel")
            sys.stdout.flush()
            self._lock.acquire()
        try:
            yield
        finally:
            self._lock.release()

    def bind(self, values: dict) -> None:
        """Put artifact values into the user namespace."""
        if values:
            self.shell.push(dict(values), interactive=True)

    def define_cell(self, name: str, header: str, source: str, inputs: list[str] | None,
                    outputs: list[str] | None, env: list[str] | None = None,
                    **options: Any) -> CellStage:
        """Register the cell ``source`` as stage ``name`` (replacing an older definition).

        ``inputs`` default to the cell's free names that other stages produce (a name the
        cell may read: also one named like a builtin, or one it binds on some paths only).
        ``env`` names environment variables the cell's result depends on. A cell with shell
        commands or magics PipeLite cannot see into gets one ``PipeliteWarning`` saying so.
        ``options``: ``files`` (input files, ``--file``), ``out_files`` ({name: path},
        ``--out-file``), and the policies ``cache``, ``ignore``, ``expires_after``.
        """
        with self._exclusive():
            return self._define_cell(name, header, source, inputs, outputs, env, options)

    def _define_cell(self, name: str, header: str, source: str, inputs: list[str] | None,
                     outputs: list[str] | None, env: list[str] | None,
                     options: dict[str, Any]) -> CellStage:
        compiled = CompiledCell(self.shell, header, source)
        ns = self.shell.user_ns
        hidden = getattr(self.shell, "user_ns_hidden", None)
        probe = CellStage(name, source, ns, inputs=(), outputs=outputs, hidden=hidden)
        renamed = self._renamed(name)
        produced = {art: by for art, by in self.known_artifacts(exclude=name).items()
                    if by != renamed}
        if inputs is None:
            inputs = [n for n in probe.analysis.free if n in produced]
        _check_no_reassigned_input(name, source, probe, inputs, produced)
        st = CellStage(name, source, ns, inputs=inputs, outputs=outputs,
                       execute=self._executor(name, compiled), filename=compiled.filename,
                       env=env or (), hidden=hidden, analysis=probe.analysis, **options)
        st.compiled = (compiled.body, compiled.last)  # as sent to a cluster's worker
        st.output_attachment = OUTPUTS_ATTACHMENT
        st.origin = self.notebook
        self._warn_if_another_notebooks(name)
        st.inherit(self.pipeline.registry.get(name))
        if renamed is not None:
            old_stage = self.pipeline.registry.get(renamed)
            self.pipeline.registry.remove(renamed)
            try:
                self.pipeline.registry.add(st)
            except BaseException:
                self.pipeline.registry.add(old_stage)  # type: ignore[arg-type]  # as it was
                raise
            print(f"[pipelite] this cell defined stage '{renamed}', now '{name}': "
                  f"'{renamed}' is no longer defined in this session (its stored results "
                  f"stay in the store)")
        else:
            self.pipeline.registry.add(st)
        if self._cell_id:
            self._stage_of_cell[self._cell_id] = name
        if st.blind_spots:
            _warn_blind_spots(st, compiled.filename)
        return st

    @property
    def notebook(self) -> str | None:
        """The notebook this kernel runs, as records name it (``Stage.origin``): relative to
        the folder holding the store when under it. Jupyter tells the kernel its notebook's
        path (``__session__``, from ``JPY_SESSION_NAME``); a script or a terminal has none."""
        path = self.shell.user_ns.get("__session__") or os.environ.get("JPY_SESSION_NAME")
        if not isinstance(path, str) or not path.strip():
            return None
        try:
            return self.pipeline.store.origin_for(path)
        except PipeliteError:
            return None

    def _warn_if_another_notebooks(self, name: str) -> None:
        """Warn, before a stage of that name runs here, when another notebook's records use
        it: both notebooks share the store, and each run would replace the other's result
        as the stage's current one."""
        mine = self.notebook
        current = self.pipeline.registry.get(name)
        if mine is None or (current is not None and current.origin == mine):
            return  # not in Jupyter, or this notebook defined it already (warned then)
        try:
            other = self.pipeline.origin_of(name)
        except PipeliteError:  # an unreadable record: status() reports it
            return
        if other is None or other == mine or (name, other) in self._warned_collisions:
            return
        self._warned_collisions.add((name, other))
        warnings.warn(
            f"stage '{name}' is also defined in {other}, which shares this store "
            f"({self.pipeline.store.url}) with {mine}: each notebook's run of '{name}' "
            f"replaces the other's as its current result. Give one of them another name "
            f"(e.g. %%stage {name}_{_stem(mine)}) unless they are meant to be the same stage",
            PipeliteWarning, stacklevel=2)

    def import_before_check(self, st: CellStage) -> None:
        """Run the cell's top-level imports before its freshness is checked, so a module of
        your own that it imports is fingerprinted by what it holds when loaded, the same
        before and after a restart. A failing import is left for the cell's run to report."""
        for stmt in st.definitions():
            if isinstance(stmt, (ast.Import, ast.ImportFrom)):
                try:
                    exec(self._compile_statement(st, stmt), self.shell.user_ns)
                except Exception:  # noqa: BLE001 - the cell raises it when it really runs
                    pass

    def _rerun_definitions(self, st: CellStage) -> None:
        """Re-run a loaded cell's top-level imports, defs and classes, in source order."""
        for stmt in st.definitions():
            try:
                exec(self._compile_statement(st, stmt), self.shell.user_ns)
            except Exception as exc:  # noqa: BLE001 - the outputs are loaded: say, go on
                what = _described(stmt)
                warnings.warn_explicit(
                    f"stage '{st.name}' was loaded from the store, but re-running "
                    f"`{what}` failed ({type(exc).__name__}: {exc}): it is not defined",
                    PipeliteWarning, st.filename, stmt.lineno + 1)

    def _compile_statement(self, st: CellStage, stmt: ast.stmt) -> Any:
        module = ast.increment_lineno(ast.Module(body=[stmt], type_ignores=[]), 1)
        # (the %%stage line is line 1 of the cell, as in CompiledCell)
        flags = getattr(self.shell.compile, "flags", 0)
        return compile(module, st.filename, "exec", flags=flags, dont_inherit=True)

    async def run_cell_stage_async(self, name: str, force: bool = False) -> StageOutcome:
        """``run_cell_stage`` for a cell with a top-level ``await``, awaited by IPython in its
        running event loop (the kernel's, in Jupyter).

        The run (checks, stale upstream stages, loading or storing) happens in a thread while
        this coroutine waits, so the loop stays free; the cell's own code is sent back to the
        loop to run there (``await_on_loop``). So what the cell awaits may belong to this
        loop: a client session, a queue, a future made by an earlier cell. Kernel -> Interrupt,
        Ctrl-C, or cancelling this coroutine cancels the run as the panel's Cancel does:
        before its next stage, and the stage running now (the cell's task on this loop too).
        The run's error is raised here, once its thread has ended."""
        loop = asyncio.get_running_loop()
        ended = loop.create_future()

        def work(cancel: threading.Event) -> StageOutcome:
            me = threading.get_ident()
            self._loops[me], self._runs[me] = loop, run
            try:
                return self.run_cell_stage(name, force, cancel=cancel)
            finally:
                self._loops.pop(me, None)
                self._runs.pop(me, None)

        def settle() -> None:
            if not ended.done():
                ended.set_result(None)

        def done(_: BackgroundRun) -> None:
            try:
                loop.call_soon_threadsafe(settle)
            except RuntimeError:  # the loop has closed: nobody waits for this run any more
                pass

        run = BackgroundRun(work, done, shell=self.shell, name="pipelite-cell-run")
        run.start()
        try:
            with interrupt_cancels(run):
                await ended
        except BaseException:  # this task was cancelled
            run.cancel()
            while run.running:  # the loop runs on meanwhile: the cell's task ends on it
                await asyncio.sleep(0.01)
            if run.error is not None:
                raise run.error from None
            raise
        if run.error is not None:
            raise run.error
        return run.result

    def run_cell_stage(self, name: str, force: bool = False,
                       cancel: threading.Event | None = None) -> StageOutcome:
        """Run a registered cell stage from its own cell: compute it, or load and replay it.

        With badges on (a notebook), what the cell prints and shows goes out through display
        ids (``LiveOutput``), so that a later run from the panel can replace it. ``cancel``
        stops the run when set (``RunCancelled``)."""
        view = self._views.get(name)
        live = None
        if view is not None:
            context = contextvars.copy_context()  # its flush thread keeps this cell's parent
            live = LiveOutput(self._publish, lambda fn: context.run(fn))
        self._current, self._live = name, live
        self._live_thread = threading.get_ident()
        st = self.pipeline.registry.get(name)
        if isinstance(st, CellStage):
            self.import_before_check(st)
        self._why = None
        try:
            outcome = self._run_own_stage(name, force, live, cancel)
        except BaseException:
            if view is not None:
                view.own_error_at = _dt.datetime.now().strftime("%H:%M:%S")
            raise
        finally:
            self._current, self._live = None, None
            if live is not None:
                live.close()
                assert view is not None
                view.output_ids = list(live.ids)
        sys.stdout.flush()
        return outcome

    def _replay(self, name: str, record: ResultRecord | None, live: LiveOutput | None,
                say: Callable[[str], None]) -> None:
        """Show what the stage's cell printed and displayed when it ran, from its record."""
        try:
            events = self.pipeline.attachment(name, OUTPUTS_ATTACHMENT, record=record)
        except UntrustedRecordError as exc:  # the values loaded; only the replay is held
            say(f"[pipelite] {name}: not replaying its stored output: {exc}")
            events = None
        replay(self.shell, events or [], live)

    def _run_own_stage(self, name: str, force: bool, live: LiveOutput | None,
                       cancel: threading.Event | None = None) -> StageOutcome:
        def say(line: str) -> None:
            if live is not None:
                live.stream("stdout", line + "\n")
            else:
                print(line)

        result = self.run([name], force=force, cancel=cancel)
        computed = name in result.executed
        record = result.records.get(name)
        if computed and name in result.elsewhere:  # what it printed on the worker, shown here
            self._replay(name, record, live, say)
            took = _seconds(record.duration) if record else "?"
            because = f": {self._why}" if self._why else ""
            say(f"[pipelite] {name}: ran on the executor's worker in {took}{because}; "
                f"{_stored(record)}")
        elif computed:  # after the cell's own output, where a hit says it was loaded
            took = _seconds(record.duration) if record else "?"
            because = f": {self._why}" if self._why else ""
            say(f"[pipelite] {name}: ran in {took}{because}; {_stored(record)}")
        else:
            self._replay(name, record, live, say)
            when = local_time(record.started) if record else "?"
            saved = record.duration if record else 0.0
            say(f"[pipelite] {name}: loaded from store (run {when}, saved "
                f"{_seconds(saved)} of compute)")
        return StageOutcome(name, computed, dict(result), record, list(result.executed))

    def _executor(self, name: str, compiled: CompiledCell) -> Callable[[str, dict], Any]:
        """How the cell stage ``name`` runs its code: its output captured (and shown where
        the run was started from); a cell with a top-level ``await`` on the loop that awaits
        its run (``run_cell_stage_async``), else as a coroutine PipeLite runs to completion
        as it does an ``async def`` stage's (a panel run, ``%pipelite run``, autoawait off)."""
        def execute(source: str, namespace: dict) -> Any:
            live: Any = None
            frame: _Frame | None = None
            label = self._run_label.get(threading.get_ident())
            if label is not None and name in self._views:
                # a run from the panel: its output replaces what the stage's cell shows
                live = frame = _Frame(self, name, self._views[name], label)
            elif self._live is not None and threading.get_ident() == self._live_thread:
                live = self._live  # the running cell's (its own stage, or one it needs)
            capture = OutputCapture(self.shell, live=live)
            if not compiled.is_async:
                with _reported(frame), capture.active():
                    compiled.run(namespace)
                return {OUTPUTS_ATTACHMENT: capture.events}

            async def run_awaiting() -> dict:
                # entered where the code runs: the capture takes that thread's output
                with _reported(frame), capture.active():
                    await compiled.run_async(namespace)
                return {OUTPUTS_ATTACHMENT: capture.events}

            me = threading.get_ident()
            loop = self._loops.get(me)
            if loop is None:
                return run_awaiting()
            return await_on_loop(loop, run_awaiting(), self._runs.get(me))

        return execute

    # -- what the store and the registry know ----------------------------------------------
    def known_artifacts(self, exclude: str | None = None) -> dict[str, str]:
        """Every artifact a stage other than ``exclude`` produces: ``{artifact: stage}``.

        Stages defined in this session count with their current outputs; stages known only
        from the store (e.g. after a restart, before their cell ran) with their last result's.
        """
        return {art: st for art, st in self.pipeline.producers().items() if st != exclude}

    # -- progress ----------------------------------------------------------------------------
    def totals(self) -> tuple[int, float, int]:
        """Stages computed in this kernel (any store), their compute time, and failures."""
        return self._computed, self._compute_seconds, self._failed

    def _on_event(self, event: StageEvent) -> None:
        if event.kind == "finished":
            self._computed += 1
            self._compute_seconds += event.duration or 0.0
        elif event.kind == "failed":
            self._failed += 1
        if event.store != self.pipeline.store.url:
            return
        run = self._runs.get(threading.get_ident())
        if run is not None:
            if event.kind == "started":
                run.stage = event.stage  # a cancel now interrupts it
            elif event.kind in ("finished", "failed", "cancelled"):
                run.stage = None
        if event.kind == "started" and event.stage is not None:
            self._badge_running(event.stage)
        elif event.kind in ("run_finished", "invalidated", "accepted") and not (self._in_cell and (
                threading.current_thread() is threading.main_thread()
                or threading.get_ident() in self._loops)):
            # a panel button or a script (a cell's own runs, an awaiting cell's in its thread
            # too, are seen once, after the cell)
            self.refresh_badges()
        if not self._active:
            return
        if event.stage == self._current:
            if event.kind == "started":
                self._why = event.reason  # said by its own cell, after the cell's output
            return
        if event.kind == "started":
            self._say(f"[pipelite] running stage '{event.stage}' ({event.index}/{event.total})"
                      + (f": {event.reason}" if event.reason else ""))
        elif event.kind == "finished":
            st = self.pipeline.registry.get(event.stage) if event.stage else None
            done = "not stored (cache=False)" if st is not None and not st.cache else "stored"
            self._say(f"[pipelite] {event.stage}: ran in {_seconds(event.duration or 0.0)}, "
                      f"{done}")

    def _say(self, line: str) -> None:
        """A progress line, in the running cell's output (its displays, when it has them)."""
        if self._live is not None:
            self._live.stream("stdout", line + "\n")
        else:
            print(line)


_seconds = human_duration


@contextlib.contextmanager
def _reported(frame: _Frame | None) -> Iterator[None]:
    """A run from the panel (``frame``): its error, and its end, drawn under the cell's badge."""
    if frame is None:
        yield
        return
    try:
        yield
    except BaseException as exc:
        frame.fail(exc)
        raise
    finally:
        frame.close()


def _cell_names(shell: Any, text: str) -> str:
    """A traceback's cell files named as IPython names them: ``Cell In[5], line 2``."""
    compiler = getattr(shell, "compile", None)
    name = getattr(compiler, "format_code_name", None)
    if name is None:
        return text

    def label(match: Any) -> str:
        known = name(match.group(1))
        return f"{known[0]} {known[1]}, line" if known else match.group(0)

    return re.sub(r'File "([^"]+)", line', label, text)


def _stem(path: str) -> str:
    """``train`` for ``analysis/train.ipynb``, as a stage name can use it."""
    stem = os.path.splitext(os.path.basename(path))[0]
    return "".join(c if c.isalnum() or c in "_-" else "_" for c in stem) or "notebook"


def _described(stmt: ast.stmt) -> str:
    """A top-level definition in a word or a line: ``class Model``, ``def helper``, or the
    import statement itself."""
    if isinstance(stmt, ast.ClassDef):
        return f"class {stmt.name}"
    if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return f"def {stmt.name}"
    return ast.unparse(stmt).splitlines()[0]


def _warn_blind_spots(st: CellStage, filename: str) -> None:
    """One ``PipeliteWarning`` per definition of a cell with blind spots, at its first one.

    A warning, not a printed note: it goes to stderr apart from the cell's own (captured and
    replayed) output, and a notebook that means it can silence it with
    ``warnings.filterwarnings("ignore", category=pipelite.PipeliteWarning)``.
    """
    spots = "; ".join(st.blind_spots)
    warnings.warn_explicit(
        f"stage '{st.name}': {spots}. Its stored result is reused while its code, globals and "
        f"inputs are unchanged, whatever these do (--force recomputes; --env VAR tracks an "
        f"environment variable)", PipeliteWarning, filename, st.analysis.blind_lines[0] + 1)


def _check_no_reassigned_input(name: str, source: str, probe: CellStage, inputs: list[str],
                               produced: dict[str, str]) -> None:
    """Refuse a cell whose outputs include a name it reads from another stage.

    Registering it would make the cell a second producer of the artifact (the registry would
    suggest removing the upstream stage, which is not the fix): say what is.
    """
    for out in probe.declared_outputs or ():
        if out not in inputs and not (out in probe.analysis.free and out in produced):
            continue
        owner = produced.get(out)
        where = (f"which stage '{owner}' produces" if owner
                 else "which it also reads as an input")
        raise ReassignedInputError(
            f"stage '{name}' assigns '{out}', {where}: assign the result to a new name "
            f"(e.g. {_renamed_example(source, out)}), or choose the cell's outputs with -o")


def _renamed_example(source: str, name: str, limit: int = 40) -> str:
    """``a2 = a + 1`` for a cell that does ``a = a + 1`` (or ``a += 1``): the suggested fix."""
    new = f"{name}2"
    value = None
    try:
        tree = ast.parse(source)
    except SyntaxError:
        tree = None
    for node in getattr(tree, "body", []):
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name) and node.targets[0].id == name):
            value = ast.unparse(node.value)
        elif (isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Name)
                and node.target.id == name):
            value = ast.unparse(ast.BinOp(ast.Name(name), node.op, node.value))
    if value is None or len(value) > limit:
        value = "..."
    return f"{new} = {value}"


def _stored(record: ResultRecord | None) -> str:
    """What a run stored, in a few words: ``stored clean (list of length 4, 12 B)``."""
    outputs = record.outputs if record is not None else {}
    if any(o.format == VOLATILE for o in outputs.values()):
        return "nothing stored (--no-cache)"
    if not outputs:
        return "stored no output"
    total = human_bytes(sum(o.size for o in outputs.values()))
    if len(outputs) > 3:
        return f"stored {len(outputs)} outputs ({total})"
    return "stored " + ", ".join(f"{name} ({o.summary or o.format}, {human_bytes(o.size)})"
                                 for name, o in outputs.items())

