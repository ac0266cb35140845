"""Execution: run the stages a check found not fresh, store their outputs, commit records.

``Runner.run`` walks the stages upstream first. A stage fresh at the start is reused while no
stage has run in this process; otherwise it is checked again just before it would run (an
earlier stage may have changed what it reads). ``compute`` runs one stage: load its inputs,
call it, save each output as an object, write the record last. On an executor each stage is
computed under a per-(stage, fingerprint) lock by ``compute_locked``, which any worker can run.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import graphlib
import os
import queue
import re
import subprocess
import sys
import threading
import time
import traceback
import uuid
from dataclasses import replace
from typing import Any, Callable, Iterator, Mapping

from . import _observe, events
from ._files import File
from ._freshness import RUNNING, Check, Params, check, diff, short_repr, stage_params, stored
from ._resolve import Graph
from .errors import (
    ArtifactRemovedError,
    CorruptArtifactError,
    FormatSaveError,
    MissingInputError,
    PipeliteError,
    RunCancelled,
    StageOutputError,
    StageSubmitError,
    StoreLocationError,
    limit_error,
)
from .fingerprint import Fingerprint, fingerprint_of, input_files, warn_user
from .formats import VOLATILE, format_named
from .present import user_frames
from .stage import REQUIRED, CellStage, Stage
from .store import FailureRecord, InputRecord, OutputRecord, ResultRecord, Store

__all__ = ["RunResult", "Runner", "compute", "compute_locked", "run_facts"]

Upstream = dict[str, tuple[str, ResultRecord]]  # input artifact -> (producer, its record)


class RunResult(dict):
    """The target stages' outputs by artifact name; ``executed`` lists the stages that ran,
    ``records`` holds each target stage's stored record."""

    def __init__(self, values: Mapping[str, Any], executed: list[str], skipped: list[str],
                 records: Mapping[str, ResultRecord] | None = None,
                 elsewhere: Mapping[str, dict[str, Any]] | None = None):
        super().__init__(values)
        self.executed = executed
        self.skipped = skipped
        self.records = dict(records or {})
        # notebook cells that an executor ran in another process: {stage: {artifact: value}},
        # for the kernel to bind as if the cell had run there
        self.elsewhere = dict(elsewhere or {})


class CorruptInput(Exception):
    """A stored input turned out corrupt: drop its record and plan again."""

    def __init__(self, stage: str, record: ResultRecord, info: OutputRecord,
                 error: CorruptArtifactError):
        super().__init__(stage, record, info, error)  # all in args: survives pickling
        self.stage, self.record, self.info, self.error = stage, record, info, error

    @property
    def removed(self) -> bool:
        """The file was deleted by another process, not damaged: nothing to quarantine."""
        return isinstance(self.error, ArtifactRemovedError)


class Runner:
    """Runs the stages of ``graph`` with ``base`` parameters, here or on ``executor``."""

    def __init__(self, graph: Graph, base: Params, executor: Any = None,
                 cancel: threading.Event | None = None):
        self.cancel = cancel  # set: no further stage starts (RunCancelled)
        self.graph = graph
        self.store = graph.store
        self.registry = graph.registry
        self.base = base
        self.executor = executor
        self.run_id: str | None = None  # one per run() call, in every record it writes
        self._facts: dict[str, Any] | None = None  # the run's provenance, once a stage runs
        self._sent: dict[str, Stage] = {}  # stages sent to the executor in another form
        self._files: dict[str, dict[str, Any]] = {}  # file outputs a hit of this run put back

    def facts(self) -> dict[str, Any]:
        """The run's part of each record's provenance (its id, the git commit): worked out
        once, when the first stage is about to run; a run of fresh stages never needs it."""
        if self._facts is None:
            self._facts = run_facts(self.run_id or uuid.uuid4().hex)
        return self._facts

    def run(self, targets: list[str], force: bool, params: Params | None) -> RunResult:
        """Run ``targets`` and what they need. A stored input found corrupt (or deleted by
        another process) while loading is dropped and the run planned again."""
        __tracebackhide__ = True
        self.run_id, self._facts = uuid.uuid4().hex, None
        try:
            return self._run_retrying(targets, force, params)
        finally:
            forget_run(self.run_id)  # what cache=False stages held for this run

    def _run_retrying(self, targets: list[str], force: bool, params: Params | None
                      ) -> RunResult:
        __tracebackhide__ = True
        last: CorruptInput | None = None
        reread: set[tuple[str, str]] = set()
        for _attempt in range(4):
            try:
                # a remote store's records read in bulk, once, and this run's own writes kept
                # in that snapshot: what a stage finds under its lock is read anew
                with self.store.metadata_snapshot():
                    return self._run(targets, force, params)
            except CorruptInput as bad:
                last = bad
                key = (bad.stage, bad.record.fingerprint)
                if bad.removed and key not in reread:
                    # deleted by another process (gc, invalidate) after its record was read:
                    # read the record again once (it may be gone, or name other files)
                    reread.add(key)
                    warn_user(f"{bad.error.path} was removed by another process while it was "
                              f"being loaded; reading stage '{bad.stage}' again")
                    continue
                self.store.drop_record(*key)
                if bad.removed:  # its record still names a file that is gone: recompute
                    warn_user(f"{bad.error}; recomputing stage '{bad.stage}'")
                    continue
                moved = self.store.quarantine(bad.info)
                warn_user(f"{bad.error}" + (f"; moved to {moved}" if moved else "")
                          + f"; recomputing stage '{bad.stage}'")
        assert last is not None
        raise last.error

    def _run(self, targets: list[str], force: bool, params: Params | None) -> RunResult:
        __tracebackhide__ = True
        # One memo of digests for the whole run, valid while no user code runs: emptied when a
        # stage executes here, refilled by the check after it (which must see in-place changes)
        memo: dict = {}
        self.graph = Graph(self.registry, self.store)  # a retry sees the store anew
        first = check(self.graph, targets, self.base, params, memo=memo)
        order = first.order
        total = sum(1 for n in order
                    if first[n].state != "fresh" or (force and n in targets))
        url = self.store.url
        events.emit("run_started", None, url, 0, total)
        done: dict[str, ResultRecord] = {}
        computed: dict[str, dict[str, Any]] = {}  # a target's outputs, as it returned them
        executed: list[str] = []
        skipped: list[str] = []
        elsewhere: dict[str, ResultRecord] = {}  # notebook cells that ran in another process
        self._sent.clear()
        self._files.clear()
        try:
            if self.executor is None:
                self._run_here(first, targets, force, params, memo, total, done, executed,
                               skipped, computed)
            else:
                self._run_on_executor(first, targets, force, params, memo, total, done,
                                      executed, skipped, elsewhere)
            values = {}
            for name in targets:
                mine = computed.get(name, {})  # filled only if the stage ran here
                for out, info in done[name].outputs.items():
                    if out in mine and (info.format == VOLATILE
                                        or format_named(info.format).returns_computed):
                        values[out] = mine[out]  # saved, and the file would give it back
                    elif out in self._files.get(name, {}):  # put in place by this run
                        values[out] = self._files[name][out]
                    else:  # arrays (read-only maps), other processes' results, hits
                        values[out] = load_input(self.store, name, done[name], info)
            cells = {name: {out: values[out] if name in targets and out in values
                            else load_input(self.store, name, rec, info)
                            for out, info in rec.outputs.items()}
                     for name, rec in elsewhere.items()}
        finally:
            # the results this run reused were used: gc's max_age and max_size go by that
            self.store.mark_all_used((n, done[n].fingerprint) for n in skipped if n in done)
            events.emit("run_finished", None, url, len(executed), total)
        return RunResult(values, executed, skipped, {t: done[t] for t in targets}, cells)

    def _run_here(self, first: Check, targets: list[str], force: bool, params: Params | None,
                  memo: dict, total: int, done: dict[str, ResultRecord], executed: list[str],
                  skipped: list[str], computed: dict[str, dict[str, Any]]) -> None:
        """Run in this process, one stage after another in the check's order (upstream
        first): no scheduler, queue or thread is needed for that. ``computed`` gets the
        outputs of each target that runs, as the stage returned them."""
        __tracebackhide__ = True
        ran_here = False  # once a stage ran, a stage fresh before may no longer be
        for name in first.order:
            forced = force and name in targets
            job = self._job(first, name, done, params, forced, memo, ran_here)
            if isinstance(job, ResultRecord):  # a stored result matches: nothing to run
                self._skip(name, job, done, skipped)
                continue
            st, fp, resolved, upstream = job
            self._check_cancel(name)
            index = len(executed) + 1
            keep = computed.setdefault(name, {}) if name in targets else None
            rec, ran = self._execute_here(st, fp, resolved, upstream, forced, index,
                                          max(total, index), memo, keep,
                                          _why(first, name, forced))
            ran_here = ran_here or ran
            done[name] = rec
            (executed if ran else skipped).append(name)

    def _check_cancel(self, name: str) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise RunCancelled(f"the run was cancelled before stage '{name}'", stage=None)

    def _job(self, first: Check, name: str, done: Mapping[str, ResultRecord],
             params: Params | None, forced: bool, memo: dict, ran_here: bool) -> Any:
        """A stored record to reuse, or (stage, fingerprint, params, upstream) to run."""
        verdict = first[name]
        if verdict.state == "fresh" and verdict.record is not None and not forced \
                and not ran_here:
            return verdict.record  # fresh, every upstream fresh and unchanged, no code ran since
        # check again: an earlier stage may have changed what this one reads
        return self._prepare(name, done, params, forced, memo)

    def _skip(self, name: str, record: ResultRecord, done: dict[str, ResultRecord],
              skipped: list[str]) -> None:
        self._files[name] = restore_files(self.store, name, record)
        done[name] = record
        skipped.append(name)
        events.emit("skipped", name, self.store.url)

    def _run_on_executor(self, first: Check, targets: list[str], force: bool,
                         params: Params | None, memo: dict, total: int,
                         done: dict[str, ResultRecord], executed: list[str],
                         skipped: list[str], elsewhere: dict[str, ResultRecord]) -> None:
        """Submit each stage to the executor once what it needs is done; several may run
        at once. ``elsewhere`` gets the records of the notebook cells that ran in another
        process (their outputs are not in the kernel's namespace yet)."""
        __tracebackhide__ = True
        url = self.store.url
        if total and _is_dask(self.executor):
            check_workers_see(self.store, self.executor)
        ran_here = False  # once a stage ran, a stage fresh before may no longer be
        sorter = graphlib.TopologicalSorter({n: self.graph.deps(n) for n in first.order})
        sorter.prepare()
        finished: queue.Queue = queue.Queue()
        running: dict[str, tuple[Stage, int]] = {}
        error: BaseException | None = None
        while sorter.is_active():
            for name in sorter.get_ready() if error is None else ():
                forced = force and name in targets
                job = self._job(first, name, done, params, forced, memo, ran_here)
                if isinstance(job, ResultRecord):  # a stored result matches: nothing to run
                    self._skip(name, job, done, skipped)
                    sorter.done(name)
                    continue
                st, fp, resolved, upstream = job
                try:
                    self._check_cancel(name)
                except RunCancelled as exc:  # in-flight stages end first, as for an error
                    error = exc
                    break
                index = len(executed) + len(running) + 1
                if not st.cache and not _in_process(self.executor):
                    # its outputs are held in this process's memory: it runs here
                    try:
                        rec, _ = self._execute_here(st, fp, resolved, upstream, forced, index,
                                                    max(total, index), None, None,
                                                    _why(first, name, forced))
                    except BaseException as exc:  # noqa: BLE001 - in-flight stages end first
                        error = exc
                        break
                    ran_here = True
                    memo.clear()
                    done[name] = rec
                    executed.append(name)
                    sorter.done(name)
                    continue
                try:
                    self._submit(st, fp, resolved, upstream, forced, index, max(total, index),
                                 finished, _why(first, name, forced))
                except StageSubmitError as exc:  # in-flight stages end first, as for an error
                    error = exc
                    break
                running[name] = (st, index)
            if not running:
                if error is not None:
                    break
                continue
            name, future = finished.get()  # woken by the future's done-callback
            st, index = running.pop(name)
            memo.clear()  # a thread of this process may have run user code
            ran_here = True
            try:
                try:
                    rec, ran = future.result()
                except Exception as exc:
                    sending = submit_error(self._sent.get(name, st), {}, exc,
                                           only_pickling=True)
                    if sending is None:
                        _note_worker_frames(exc, st)
                        raise
                    raise sending from exc  # it could not be sent (pickled) to the worker
                if ran:
                    self.registry.learn_outputs(st, rec.outputs)
                    if name in self._sent and isinstance(st, CellStage):
                        elsewhere[name] = rec
            except BaseException as exc:  # noqa: BLE001 - re-raised once in-flight work ends
                RUNNING.discard((url, name))
                if isinstance(exc, RunCancelled):
                    events.emit("cancelled", name, url, index, total)
                else:
                    events.emit("failed", name, url, index, total, error=_summary(exc))
                error = error or exc
                continue
            RUNNING.discard((url, name))
            done[name] = rec
            (executed if ran else skipped).append(name)
            events.emit("finished" if ran else "skipped", name, url, index, total,
                        duration=rec.duration)
            sorter.done(name)
        if error is not None:
            raise error

    def _prepare(self, name: str, done: Mapping[str, ResultRecord], params: Params | None,
                 forced: bool, memo: dict | None = None) -> Any:
        """A stored record that matches, or (stage, fingerprint, params, upstream) to run."""
        st = self.registry.get(name)
        if st is None:
            rec = self.store.latest(name)
            if rec is None:
                raise MissingInputError(f"stage '{name}' has no stored result and is not "
                                        f"defined in this session: define it first")
            return rec
        producers = self.graph.producers
        upstream: Upstream = {}
        for i in st.inputs:
            p = producers.get(i)
            if p is None or p == name:
                raise MissingInputError(self._missing_input_message(st, i))
            if i not in done[p].outputs:
                raise MissingInputError(
                    f"stage '{name}' needs artifact '{i}', but stage '{p}' did not "
                    f"produce it (it produced: {', '.join(done[p].outputs) or 'nothing'})"
                )
            upstream[i] = (p, done[p])
        resolved = st.resolve_params(stage_params(self.base, params, name))
        fp = fingerprint_of(st, resolved, _input_hashes(upstream), memo)
        rec = stored(self.store, name, fp, forced, st=st)
        return rec if rec is not None else (st, fp, resolved, upstream)

    def _missing_input_message(self, st: Stage, artifact: str) -> str:
        text = (f"stage '{st.name}' needs artifact '{artifact}', which no stage produces: "
                f"define a stage that returns {{'{artifact}': ...}} (or run its cell)")
        default = st.input_defaults.get(artifact, REQUIRED)
        if default is not REQUIRED:
            text += (f". If '{artifact}' is meant as a parameter, make it keyword-only: "
                     f"def {st.name}(..., *, {artifact}={default!r})")
        unknown = [s.name for s in self.registry.with_unknown_outputs()]
        if unknown:
            text += (f". Stages whose outputs are not known until they first run: "
                     f"{', '.join(unknown)} (declare them with @stage(outputs=...))")
        return text

    def _execute_here(self, st: Stage, fp: Fingerprint, params: dict, upstream: Upstream,
                      forced: bool, index: int, total: int, memo: dict | None = None,
                      keep: dict[str, Any] | None = None, reason: str | None = None
                      ) -> tuple[ResultRecord, bool]:
        __tracebackhide__ = True
        url = self.store.url
        with stage_lock(self.store, st.name, fp.digest):
            # another process may have computed it while we waited for the lock
            rec = stored(self.store, st.name, fp, forced, fresh=True, st=st)
            if rec is not None:
                return rec, False
            RUNNING.add((url, st.name))
            try:
                events.emit("started", st.name, url, index, total, reason=reason)
                rec = compute(self.store, st, fp, params, upstream, self.registry.learn_outputs,
                              memo, keep, run=self.facts())
            except CorruptInput:
                raise
            except RunCancelled as exc:
                exc.stage = exc.stage or st.name
                events.emit("cancelled", st.name, url, index, total)
                raise
            except BaseException as exc:
                events.emit("failed", st.name, url, index, total, error=_summary(exc))
                raise
            finally:
                RUNNING.discard((url, st.name))
        events.emit("finished", st.name, url, index, total, duration=rec.duration)
        return rec, True

    def _submit(self, st: Stage, fp: Fingerprint, params: dict, upstream: Upstream,
                forced: bool, index: int, total: int, finished: queue.Queue,
                reason: str | None = None) -> None:
        """Run one stage on the executor; its future reports to ``finished`` when done."""
        url = self.store.url
        RUNNING.add((url, st.name))
        events.emit("started", st.name, url, index, total, reason=reason)
        # dask would otherwise dedupe "identical" calls by key: every submission is a new run
        extra = {"pure": False} if _is_dask(self.executor) else {}
        sent = st if _in_process(self.executor) else st.for_worker()
        try:
            future = self.executor.submit(compute_locked, self.store, sent, fp, params,
                                          upstream, forced, self.facts(),
                                          in_memory_values(upstream), **extra)
        except Exception as exc:  # noqa: BLE001 - a shut-down pool, an unpicklable global
            RUNNING.discard((url, st.name))  # not left "running" forever
            err = submit_error(sent, params, exc)
            assert err is not None  # (only_pickling=False always gives one)
            events.emit("failed", st.name, url, index, total, error=str(err))
            raise err from exc
        if sent is not st:
            self._sent[st.name] = sent
        future.add_done_callback(lambda f, name=st.name: finished.put((name, f)))


_SEEN_BY: set[tuple[int, str]] = set()  # (executor, store) pairs whose workers see the store


def read_probe(path: str) -> bytes | None:
    """On a worker: the probe file's bytes, or None if this machine has no such file."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


def check_workers_see(store: Store, executor: Any) -> None:
    """Before a cluster runs stages on a local-path store: a probe file written here must be
    readable by a worker, or the workers write results nobody here can see (and read inputs
    that are not there). Raises ``StoreLocationError`` saying so; checked once per executor
    and store. An object store (s3://...) is the same for everyone: not checked."""
    root = store._fs.local_root
    key = (id(executor), store.url)
    if root is None or key in _SEEN_BY:
        return
    token = uuid.uuid4().hex.encode()
    rel = f"tmp/probe-{token.decode()}"
    store._fs.write_atomic(rel, token)
    try:
        seen = executor.submit(read_probe, store._fs.path(rel), pure=False).result()
    finally:
        store._fs.delete(rel)
    if seen != token:
        raise StoreLocationError(
            f"the executor's workers cannot see the store {store.url}: it is a folder of "
            f"this machine, and a probe file written there was not found by a worker. Use a "
            f"store they share: a network filesystem path mounted at the same place, or an "
            f"object store URL (Pipeline(store='s3://bucket/prefix'))")
    _SEEN_BY.add(key)


def _local_code(st: Stage, name: str, lineno: int) -> Any:
    """The code object, among the stage's functions and what they reach, that has function
    ``name`` and line ``lineno``: cloudpickle sends notebook code without its file name
    ("<dynamic-code>"), so a worker's frame is found again here, by name and line."""
    import inspect

    seen: set[int] = set()
    todo: list[Any] = []
    for fn in st.code_objects():
        code = getattr(fn, "__code__", None)
        if code is not None:
            todo.append(code)
        for value in getattr(fn, "__globals__", {}).values():
            if inspect.isfunction(value):
                todo.append(value.__code__)
    while todo:
        code = todo.pop()
        if id(code) in seen:
            continue
        seen.add(id(code))
        if code.co_name == name and lineno in {line for *_, line in code.co_lines()}:
            return code
        todo.extend(c for c in code.co_consts if inspect.iscode(c))
    return None


def _note_worker_frames(exc: BaseException, st: Stage) -> None:
    """Add to an error raised on a worker where it happened in the user's code: the file (or
    notebook cell) and line, with the line as this process knows it (linecache)."""
    import linecache

    frames = getattr(exc, "__pipelite_frames__", None)
    if not frames or not hasattr(exc, "add_note"):
        return
    lines = ["Where it failed, on the worker (most recent call last):"]
    for filename, lineno, name in frames:
        if filename.startswith("<") and lineno:
            code = _local_code(st, name, lineno)
            filename = code.co_filename if code is not None else filename
        lines.append(f'  File "{filename}", line {lineno}, in {name}')
        text = linecache.getline(filename, lineno).strip() if lineno else ""
        if text:
            lines.append(f"    {text}")
    exc.add_note("\n".join(lines))


def _is_pickling_error(exc: BaseException) -> bool:
    import pickle

    text = f"{type(exc).__name__}: {exc}".lower()
    return isinstance(exc, pickle.PicklingError) or "pickl" in text or "serializ" in text


def _unsendable(st: Stage, params: dict) -> str | None:
    """What of the stage cannot be pickled, in words: a global its code reads, a parameter,
    or the stage itself; None if everything pickles (then the pool itself refused)."""
    import cloudpickle

    def fails(value: Any) -> bool:
        try:
            cloudpickle.dumps(value)
        except Exception:  # noqa: BLE001 - any failure means it cannot be sent
            return True
        return False

    for fn in st.code_objects():
        code = getattr(fn, "__code__", None)
        namespace = getattr(fn, "__globals__", {})
        for name in getattr(code, "co_names", ()):
            if name in namespace and fails(namespace[name]):
                value = namespace[name]
                return f"global '{name}' ({type(value).__name__})"
        cells = getattr(fn, "__closure__", None) or ()
        for name, cell in zip(getattr(code, "co_freevars", ()), cells, strict=False):
            try:
                value = cell.cell_contents
            except ValueError:  # an empty cell
                continue
            if fails(value):
                return f"closure variable '{name}' ({type(value).__name__})"
    for name, value in getattr(st, "values", {}).items():  # a notebook cell's globals
        if fails(value):
            return f"global '{name}' ({type(value).__name__})"
    for key, value in params.items():
        if fails(value):
            return f"parameter '{key}' ({type(value).__name__})"
    return "the stage itself" if fails(st) else None


def submit_error(st: Stage, params: dict, exc: BaseException,
                 only_pickling: bool = False) -> PipeliteError | None:
    """The ``StageSubmitError`` for a stage an executor would not take: naming the stage and
    the object that could not be sent. ``only_pickling``: None unless it is a pickling error
    (a stage's own error, raised on the worker, is not this)."""
    if only_pickling and not _is_pickling_error(exc):
        return None
    what = _unsendable(st, params) if _is_pickling_error(exc) else None
    if only_pickling and what is None:
        if getattr(exc, "__pipelite_frames__", None) is not None:
            return None  # raised by the stage's own code, on the worker
        # cloudpickle sends it all, but this executor pickles with the standard pickle
        return StageSubmitError(
            f"stage '{st.name}' could not be sent to the executor ({type(exc).__name__}: "
            f"{exc}): it pickles with the standard pickle, which cannot send a function "
            f"defined inside another function, a lambda or notebook code. Define the stage "
            f"in a module, or use a Dask client (it sends such code by value)")
    if what is not None and what.startswith("the stage itself"):
        return StageSubmitError(
            f"stage '{st.name}' could not be sent to the executor: the stage itself "
            f"({type(st).__name__}) cannot be pickled ({type(exc).__name__}: {exc}): run it "
            f"without an executor (Pipeline(executor=None))")
    if what is not None:
        return StageSubmitError(
            f"stage '{st.name}' could not be sent to the executor: its {what} cannot be "
            f"pickled ({type(exc).__name__}: {exc}). Make it an input, a parameter, or create "
            f"it inside the stage; or run without an executor")
    return StageSubmitError(
        f"stage '{st.name}' could not be sent to the executor ({type(exc).__name__}: {exc}): "
        f"is it shut down? Give the Pipeline a running executor, or executor=None")


def _input_hashes(upstream: Upstream) -> dict[str, str]:
    return {i: rec.outputs[i].hash for i, (_, rec) in upstream.items()}


@contextlib.contextmanager
def stage_lock(store: Store, stage: str, digest: str) -> Iterator[Any]:
    """Hold the (stage, fingerprint) lock. Taken only to compute, so a store that cannot be
    written fails here, before the stage runs: ``StoreNotWritableError``, not a raw OSError."""
    try:
        lock = store.lock(stage, digest)
        lock.acquire()
    except OSError as exc:
        err = limit_error(exc, store.url, stage=stage, what="its lock file",
                          action=f"run stage '{stage}'")
        if err is None:
            raise
        raise err from exc
    try:
        yield lock
    finally:
        lock.release()


def _why(first: Check, name: str, forced: bool) -> str:
    """Why a stage runs, in words: the run's check said it, or it was forced; a stage found
    fresh by that check runs only because a stage before it ran and changed what it reads."""
    if forced:
        return "forced"
    reasons = first[name].reasons
    return reasons[0] if reasons else "a stage it reads from ran and changed its inputs"


def _in_process(executor: Any) -> bool:
    """Whether the executor runs stages in this process (a thread pool): a notebook cell then
    runs in the kernel's namespace itself, as without an executor."""
    from concurrent.futures import ThreadPoolExecutor

    return isinstance(executor, ThreadPoolExecutor)


def _is_dask(executor: Any) -> bool:
    return type(executor).__module__.startswith("distributed")


def _summary(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _files_changed_while_running(st: Stage, params: dict, fp: Fingerprint,
                                 memo: dict | None) -> list[str]:
    """The declared input files (``File`` parameters, ``--file``) whose content is not what
    the fingerprint saw before the stage ran. ``memo`` (the run's, emptied when the stage
    started) keeps each digest for the check after the run (``_store_after_run``)."""
    before = fp.parts.get("files")
    if not before:
        return []
    from ._files import file_digest

    return [f"file '{f.key}'" for f in input_files(st, params)
            if before.get(f.key) != file_digest(f, memo)[0]]


# -- cache=False: results kept in memory for the run that computed them ----------------------
_IN_MEMORY: dict[str, dict[str, Any]] = {}  # run id -> {content digest: value}
_IN_MEMORY_LOCK = threading.Lock()


def _in_memory(st: Stage, fp: Fingerprint, params: dict, upstream: Upstream,
               outputs: dict[str, Any], started: _dt.datetime, duration: float,
               run: Mapping[str, Any] | None, keep: dict[str, Any] | None) -> ResultRecord:
    """The record of a ``cache=False`` run, never written: each output by its content digest
    (so a downstream stage whose inputs come out the same is still a hit), the values held
    for the rest of the run."""
    from ._reach import Reach

    prov = provenance(run)
    values = {}
    infos = {}
    for name, value in outputs.items():
        encoder = Reach().encoder
        encoder.warns = False
        digest = encoder.digest(value, f"output '{name}'")
        if encoder.unhashable:  # no content to compare: downstream must not take it as same
            digest = uuid.uuid4().hex
        values[digest] = value
        infos[name] = OutputRecord(hash=digest, size=int(getattr(value, "nbytes", 0) or 0),
                                   format=VOLATILE, path=f"objects/{digest[:2]}/{digest}",
                                   type=f"{type(value).__module__}.{type(value).__qualname__}")
    with _IN_MEMORY_LOCK:
        _IN_MEMORY.setdefault(prov["run_id"], {}).update(values)
    if keep is not None:
        keep.update(outputs)
    return ResultRecord(
        stage=st.name, kind=st.kind, origin=st.origin, fingerprint=fp.digest,
        started=started.isoformat(timespec="milliseconds"), duration=round(duration, 6),
        params={k: short_repr(v) for k, v in params.items()},
        inputs={i: InputRecord(rec.outputs[i].hash, p) for i, (p, rec) in upstream.items()},
        outputs=infos, parts=fp.parts, provenance=prov)


def in_memory_values(upstream: Upstream) -> dict[str, Any]:
    """The values of a stage's inputs that a ``cache=False`` stage made in this run (for a
    worker in another process: they are sent with the stage)."""
    out: dict[str, Any] = {}
    for i, (_, rec) in upstream.items():
        info = rec.outputs[i]
        if info.format == VOLATILE:
            held = _IN_MEMORY.get(rec.run_id or "", {})
            if info.hash in held:
                out[info.hash] = held[info.hash]
    return out


def forget_run(run_id: str | None) -> None:
    """Drop what ``cache=False`` stages of a finished run held in memory."""
    with _IN_MEMORY_LOCK:
        _IN_MEMORY.pop(run_id or "", None)


def restore_files(store: Store, stage: str, record: ResultRecord) -> dict[str, Any]:
    """A hit puts the stage's file outputs back in place if they were deleted or changed;
    returns them (``File``s) by artifact."""
    return {name: load_input(store, stage, record, info)
            for name, info in record.outputs.items() if info.format == "file"}


def load_input(store: Store, stage: str, record: ResultRecord, info: OutputRecord) -> Any:
    """A stored value; a corrupt or vanished file raises ``CorruptInput`` (run() retries).
    An output of a ``cache=False`` stage comes from memory: it exists for the run that made
    it only."""
    if info.format == VOLATILE:
        held = _IN_MEMORY.get(record.run_id or "", {})
        if info.hash not in held:
            raise MissingInputError(
                f"the output of stage '{stage}' (cache=False) is no longer in memory: it is "
                f"kept for the run that computed it only; run its stage again")
        return held[info.hash]
    try:
        return store.load_value(info, record=record)
    except CorruptArtifactError as exc:
        raise CorruptInput(stage, record, info, as_removed(store, info, exc) or exc) from None


def as_removed(store: Store, info: OutputRecord, exc: CorruptArtifactError
               ) -> ArtifactRemovedError | None:
    """``exc`` as an ``ArtifactRemovedError`` if the file is absent rather than damaged (gc or
    invalidate in another process deleted it after its record was read); else None."""
    if isinstance(exc, ArtifactRemovedError):
        return exc
    # "the file is missing" is Store.verify's (and a remote download's) word for an absent file
    if exc.detail == "the file is missing" or not store.object_exists(info):
        return ArtifactRemovedError(exc.path)
    return None


def compute_locked(store: Store, st: Stage, fp: Fingerprint, params: dict, upstream: Upstream,
                   forced: bool, run: Mapping[str, Any] | None = None,
                   held: Mapping[str, Any] | None = None) -> tuple[ResultRecord, bool]:
    """On an executor's worker: compute once per (stage, fingerprint) across processes.
    ``run``: the client's ``Runner.facts()`` (its run id and git commit). ``held``: inputs
    that ``cache=False`` stages made in this run, by content digest (never in the store)."""
    try:
        with stage_lock(store, st.name, fp.digest):
            rec = stored(store, st.name, fp, forced, fresh=True, st=st)
            if rec is not None:
                return rec, False
            return compute(store, st, fp, params, upstream, None, run=run, held=held), True
    except BaseException as exc:
        # where it failed, as the worker saw it: the client maps it back to the cell or file
        # (a traceback sent back by Dask names notebook code "<dynamic-code>", without lines)
        frames = traceback.extract_tb(user_frames(exc.__traceback__))
        try:
            exc.__pipelite_frames__ = [  # type: ignore[attr-defined]
                (f.filename, f.lineno, f.name) for f in frames]
        except (AttributeError, TypeError):  # an exception type that takes no attributes
            pass
        raise


def compute(store: Store, st: Stage, fp: Fingerprint, params: dict, upstream: Upstream,
            learn: Callable[[Stage, Any], None] | None, memo: dict | None = None,
            keep: dict[str, Any] | None = None, *,
            run: Mapping[str, Any] | None = None,
            held: Mapping[str, Any] | None = None) -> ResultRecord:
    """Load the inputs, run the stage, store its outputs, commit the record (last).

    ``memo``, the run's digests, is emptied before the stage's code runs and refilled by the
    check after it. ``keep``, a dict, gets the outputs as computed, once the record is
    committed (the caller may return them instead of reading the files back). ``run``: the
    run's provenance (``run_facts``; a run of its own when None), completed here with this
    process's user, host and installed distributions. ``held``: inputs made by ``cache=False``
    stages, by content digest, sent along to a worker."""
    __tracebackhide__ = True
    inputs = {i: held[rec.outputs[i].hash]
              if held and rec.outputs[i].format == VOLATILE and rec.outputs[i].hash in held
              else load_input(store, p, rec, rec.outputs[i]) for i, (p, rec) in upstream.items()}
    started = _dt.datetime.now(_dt.timezone.utc)
    # files read, modules imported, directories listed while it runs (see _observe)
    recorder = _observe.start(store.local_dirs()) if _observe.enabled() else None
    # a rerun (forced, or a file changed) does not load again a module its last run imported
    previous = store.record(st.name, fp.digest) if recorder is not None else None
    t0 = time.perf_counter()
    if memo is not None:
        memo.clear()
    created: list[str] = []  # objects this run added: taken back if it stores no record
    try:
        try:
            outputs = st.normalize_result(st.call(inputs, params))
            duration = time.perf_counter() - t0
        finally:
            if recorder is not None:
                recorder.stop()
        if learn is not None:
            learn(st, outputs)
        changed = _files_changed_while_running(st, params, fp, memo)
        if changed:
            warn_user(f"stage '{st.name}': {', '.join(changed)} changed while it ran: which "
                      f"content it read cannot be known, so its result is not stored (it "
                      f"runs again next time)")
        if not st.cache or changed:  # nothing stored: downstream gets the values, by content
            return _in_memory(st, fp, params, upstream, outputs, started, duration, run, keep)
        infos = {name: _save_output(store, st, name, value, created)
                 for name, value in outputs.items()}
        attachments = {k: store.save_value(v, stage=st.name, created=created)
                       for k, v in st.take_attachments().items()}
        observed = None
        if recorder is not None:
            carried = ((previous.observed if previous is not None else None) or {}).get(
                "modules", ())
            observed = _untracked(recorder.collect(carry_modules=[m["name"] for m in carried]),
                                  [*input_files(st, params),
                                   *(v for v in inputs.values() if isinstance(v, File))])
    except BaseException as exc:
        store.discard_objects(created)
        if not isinstance(exc, RunCancelled):  # a cancelled stage is back where it was
            _record_failure(store, st, fp, exc, started, time.perf_counter() - t0)
        raise
    record = ResultRecord(
        stage=st.name,
        kind=st.kind,
        origin=st.origin,
        fingerprint=fp.digest,
        started=started.isoformat(timespec="milliseconds"),
        duration=round(duration, 6),
        save_duration=round(time.perf_counter() - t0 - duration, 6),
        params={k: short_repr(v) for k, v in params.items()},
        inputs={i: InputRecord(rec.outputs[i].hash, p) for i, (p, rec) in upstream.items()},
        outputs=infos,
        attachments=attachments,
        parts=fp.parts,
        versions=_versions(),
        observed=observed or None,
        provenance=provenance(run),
    )
    try:
        record = store.write_result(record)
    except BaseException:  # no record, so no result: its objects would only take space
        if store.record(st.name, fp.digest, cached=False, fresh=True) is None:  # (a warning as an
            store.discard_objects(created)  # error comes after the commit: keep them then)
        raise
    record = _store_after_run(store, st, fp, params, upstream, record, memo)
    if keep is not None:
        keep.update(outputs)
    return record


def _store_after_run(store: Store, st: Stage, fp: Fingerprint, params: dict,
                     upstream: Upstream, record: ResultRecord, memo: dict | None
                     ) -> ResultRecord:
    """A stage may change what it reads while it runs (a memo cache in a helper's default, an
    import inside it, a global it appends to): store the result for the state after the run
    too, or the stage would look stale right after running."""
    if not st.rechecks_after_run:
        return record
    after = fingerprint_of(st, params, _input_hashes(upstream), memo)
    if after.digest == fp.digest:
        return record
    changed = diff(fp.parts, record.params, after, params, {})
    record = replace(record, fingerprint=after.digest, parts=after.parts,
                     same_result_as=fp.digest)
    try:
        record = store.write_result(record)
    except PipeliteError as exc:  # full or read-only: the result is stored all the same
        warn_user(f"stage '{st.name}': its result is stored, but not for the state after "
                  f"its run ({exc}); it will run again next time")
    if fp.parts["globals"] != after.parts["globals"]:
        warn_user(
            f"stage '{st.name}' changed what it reads while running ({'; '.join(changed)}): "
            f"its result is stored for the state before and after the run. If that state "
            f"matters to the result, pass it as a parameter or an artifact instead")
    return record


# -- provenance: who ran a result, where, from what (never part of the fingerprint) ---------
_GIT_TIMEOUT = 3.0  # seconds per git command: a slow repository costs at most this, once a run


def _git(*args: str) -> str | None:
    """What ``git ARGS`` prints in the current directory; None if it fails or git is absent."""
    try:
        done = subprocess.run(
            ["git", *args], capture_output=True, text=True, timeout=_GIT_TIMEOUT,
            stdin=subprocess.DEVNULL, env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"})
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    return done.stdout if done.returncode == 0 else None


def git_facts() -> dict[str, Any]:
    """``git_commit`` and ``git_dirty`` (tracked files changed) of the work tree the current
    directory is in; empty outside a git work tree, without commits, or without git."""
    head = _git("rev-parse", "--is-inside-work-tree", "--verify", "HEAD")
    lines = head.split() if head else []
    if len(lines) != 2 or lines[0] != "true":
        return {}
    out: dict[str, Any] = {"git_commit": lines[1]}
    status = _git("status", "--porcelain", "--untracked-files=no")
    if status is not None:
        out["git_dirty"] = bool(status.strip())
    return out


def run_facts(run_id: str) -> dict[str, Any]:
    """A run's part of its records' provenance: its id and, in a git work tree, the commit."""
    return {"run_id": run_id, **git_facts()}


@functools.lru_cache(maxsize=1)
def process_facts() -> tuple[tuple[str, str], ...]:
    """This process's part of the provenance (once per process): user, host, and a digest of
    the installed distributions (``name==version``, sorted)."""
    import importlib.metadata

    import xxhash

    from ._lease import user_and_host

    user, host = user_and_host()
    found = (_distribution(d) for d in importlib.metadata.distributions())
    names = {n for n in found if n is not None}
    digest = xxhash.xxh3_64_hexdigest("\n".join(sorted(names)).encode())
    return (("user", user), ("host", host), ("distributions", digest))


_DIST_INFO = re.compile(r"([^-]+)-([^-]+)\.dist-info\Z")


def _distribution(dist: Any) -> str | None:
    """``name==version`` of an installed distribution, the name normalised. Read from its
    ``NAME-VERSION.dist-info`` folder when it has one: parsing every METADATA file costs a
    fifth of a second in a typical environment, the folder names almost nothing."""
    match = _DIST_INFO.match(os.path.basename(str(getattr(dist, "_path", ""))))
    try:
        name, version = (match.group(1), match.group(2)) if match else \
            (dist.metadata["Name"], dist.version)
    except Exception:  # noqa: BLE001 - a broken installation's metadata: skip it
        return None
    if not isinstance(name, str) or not isinstance(version, str):
        return None
    return f"{re.sub(r'[-_.]+', '_', name).lower()}=={version}"


def provenance(run: Mapping[str, Any] | None) -> dict[str, Any]:
    """A record's ``provenance``: the run's facts (a run of its own when None) and this
    process's. Cheap after the first stage of a process: both are worked out once."""
    facts = dict(run) if run is not None else run_facts(uuid.uuid4().hex)
    return {**facts, **dict(process_facts())}


def _versions() -> dict[str, str]:
    from . import __version__

    out = {"python": sys.version.split()[0], "pipelite": __version__}
    for mod in ("numpy", "pandas", "pyarrow", "polars"):
        if mod in sys.modules:
            out[mod] = getattr(sys.modules[mod], "__version__", "unknown")
    return out


def _save_output(store: Store, st: Stage, name: str, value: Any,
                 created: list[str] | None = None) -> OutputRecord:
    try:
        return store.save_value(value, stage=st.name, created=created, name=name)
    except FormatSaveError as exc:  # the user's format: say which output it was saving
        raise FormatSaveError(f"stage '{st.name}', output '{name}': {exc}") from exc.__cause__
    except (KeyboardInterrupt, PipeliteError, OSError):
        raise
    except Exception as exc:  # noqa: BLE001 - an unstorable value is the stage's mistake
        raise StageOutputError(
            f"stage '{st.name}': output '{name}' ({type(value).__name__}) cannot be stored: "
            f"{exc}. Return picklable values, or pipelite.register_format() for its type"
        ) from exc


def _untracked(observed: dict | None, files: list[File]) -> dict | None:
    """What a run observed, less the files it declares (``File`` parameters, ``--file``,
    file artifacts): those are tracked by content already (a declared folder: everything
    under it, its listings too)."""
    if not observed or not files:
        return observed
    exact = {f.path for f in files}
    under = tuple(f.path.rstrip(os.sep) + os.sep for f in files)

    def tracked(path: str) -> bool:
        return path in exact or path.startswith(under)

    out = dict(observed)
    if "files" in out:
        out["files"] = [e for e in out["files"] if not tracked(e["path"])]
    if "listings" in out:
        out["listings"] = [e for e in out["listings"] if not tracked(e["dir"])]
    out = {k: v for k, v in out.items() if v}
    return out or None


def _record_failure(store: Store, st: Stage, fp: Fingerprint, exc: BaseException,
                    started: _dt.datetime, elapsed: float) -> None:
    """Write FAILED.json. The stage's own error matters more: if the file cannot be written
    (a full or read-only disk), that is a warning and ``exc`` still propagates unchanged."""
    try:
        store.write_failure(FailureRecord(
            stage=st.name,
            fingerprint=fp.digest,
            error=_summary(exc),
            traceback="".join(traceback.format_exception(type(exc), exc,
                                                         user_frames(exc.__traceback__))),
            started=started.isoformat(timespec="milliseconds"),
            duration=round(elapsed, 6),
            origin=st.origin,
        ))
    except Exception as write_error:  # noqa: BLE001 - never replaces the stage's own error
        warn_user(f"stage '{st.name}' failed ({_summary(exc)}), and its failure could not be "
                  f"recorded in {store.url}: {write_error}")
    if hasattr(exc, "add_note") and not isinstance(exc, PipeliteError):
        exc.add_note(f"(PipeLite: stage '{st.name}' failed; nothing was stored)")
