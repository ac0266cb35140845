"""The pipeline: resolve dependencies, decide what is fresh, run what is not, explain why."""
from __future__ import annotations

import contextlib
import datetime as _dt
import difflib
import functools
import graphlib
import queue
import re
import sys
import time
import traceback
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Mapping

from . import _observe, events
from .errors import (
    ArtifactRemovedError,
    CorruptArtifactError,
    CycleError,
    FormatSaveError,
    InvalidArgumentError,
    MissingInputError,
    ParameterError,
    PipeliteError,
    StageNotDefinedError,
    StageOutputError,
    StaleArtifactError,
    StoreLocationError,
    UnknownArtifactError,
    UnknownStageError,
    at_the_call,
    limit_error,
)
from ._integrity import check_level
from .present import STATES, explain_text
from .present import user_frames as _user_frames
from .fingerprint import Fingerprint, fingerprint_of, warn_user
from .stage import REGISTRY, REQUIRED, Registry, Stage, artifact_name, stage_of
from .store import GC_GRACE, GcReport, Store

__all__ = ["Pipeline", "StageStatus", "OutputInfo", "PlannedStage", "RunResult", "STATES"]

_RUNNING: set[tuple[str, str]] = set()  # (store url, stage) running in this process


@dataclass(frozen=True)
class OutputInfo:
    """One stored output of a stage."""

    name: str
    size: int
    format: str
    summary: str
    hash: str


@dataclass(frozen=True)
class StageStatus:
    """Where a stage stands: ``state`` is one of fresh, stale, missing, failed, running."""

    name: str
    state: str
    reasons: tuple[str, ...]
    outputs: tuple[OutputInfo, ...]
    inputs: tuple[str, ...]
    last_run: _dt.datetime | None
    duration: float | None
    fingerprint: str | None
    defined: bool = True
    error: str | None = None
    produces: tuple[str, ...] = ()  # artifact names, known before the first run where possible
    traceback: str | None = None  # of the last failed run, when failed

    @property
    def fresh(self) -> bool:
        return self.state == "fresh"


@dataclass(frozen=True)
class PlannedStage:
    """A stage that ``run`` would execute, and why."""

    name: str
    reasons: tuple[str, ...]


class RunResult(dict):
    """The target stages' outputs by artifact name; ``executed`` lists the stages that ran,
    ``records`` holds each target stage's stored record."""

    def __init__(self, values: Mapping[str, Any], executed: list[str], skipped: list[str],
                 records: Mapping[str, dict] | None = None):
        super().__init__(values)
        self.executed = executed
        self.skipped = skipped
        self.records = dict(records or {})


@dataclass
class _Eval:
    name: str
    state: str
    reasons: list[str]
    stage: Stage | None
    record: dict | None = None  # the stored result for the current fingerprint
    latest: dict | None = None
    fingerprint: Fingerprint | None = None
    failure: dict | None = None


class _Producers(Mapping[str, str]):
    """Artifact -> producing stage: registered stages first; the store is listed only when a
    name is not found there (so a run of fresh stages never lists the store)."""

    def __init__(self, registered: Mapping[str, str], pipeline: "Pipeline"):
        self._registered = registered
        self._extra: dict[str, str] | None = None
        self._pipeline = pipeline

    def _store_only(self) -> dict[str, str]:
        if self._extra is None:
            self._extra = {k: v for k, v in self._pipeline._store_only_producers().items()
                           if k not in self._registered}
        return self._extra

    def get(self, key: str, default: Any = None) -> Any:
        found = self._registered.get(key)
        return found if found is not None else self._store_only().get(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self._registered or key in self._store_only()

    def __getitem__(self, key: str) -> str:
        found = self.get(key)
        if found is None:
            raise KeyError(key)
        return found

    def all(self) -> dict[str, str]:
        return {**self._store_only(), **self._registered}

    def __iter__(self) -> Iterator[str]:
        return iter(self.all())

    def __len__(self) -> int:
        return len(self.all())


class _CorruptInput(Exception):
    """A stored input turned out corrupt: drop its record and plan again."""

    def __init__(self, stage: str, record: dict, info: dict, error: CorruptArtifactError):
        super().__init__(stage, record, info, error)  # all in args: survives pickling
        self.stage, self.record, self.info, self.error = stage, record, info, error

    @property
    def removed(self) -> bool:
        """The file was deleted by another process, not damaged: nothing to quarantine."""
        return isinstance(self.error, ArtifactRemovedError)


def _user_facing(method):
    """Raise a PipeliteError from the public call itself: the user sees their own frames and
    one line of PipeLite, not its internals. PipeLite's frames are kept on the error (see
    ``errors.at_the_call``), for debugging PipeLite."""

    @functools.wraps(method)
    def call(*args, **kwargs):
        __tracebackhide__ = True
        try:
            return method(*args, **kwargs)
        except PipeliteError as exc:
            raise at_the_call(exc) from exc.__cause__

    return call


_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def _short_repr(value: Any, limit: int = 60) -> str:
    """A parameter as the user wrote it, without memory addresses (they change every run and
    say nothing about what changed)."""
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - a broken __repr__ must not break a status
        text = f"<{type(value).__qualname__}>"
    text = _ADDRESS.sub("", text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _parse_time(text: str | None) -> _dt.datetime | None:
    return _dt.datetime.fromisoformat(text) if text else None


def _versions() -> dict[str, str]:
    from . import __version__

    out = {"python": sys.version.split()[0], "pipelite": __version__}
    for mod in ("numpy", "pandas", "pyarrow", "polars"):
        if mod in sys.modules:
            out[mod] = getattr(sys.modules[mod], "__version__", "unknown")
    return out


class Pipeline:
    """Runs registered stages against a store, recomputing only what is not fresh.

    >>> Pipeline().run("gen_data")              # runs gen_data unless it is fresh
    >>> Pipeline(params={"train_model": {"epochs": 5}}).run("train_model")

    ``store`` is a local path (default ``./.pipelite``) or an fsspec URL (``memory://x``,
    ``s3://bucket/prefix``; ``storage_options`` go to fsspec, e.g. credentials or an
    ``endpoint_url``). ``params`` maps stage names to parameter values. ``verify`` says how
    much of a stored file is checked on every load: ``"sampled"`` (the default), ``"always"``
    (the whole hash) or ``"never"`` (size only); see ``pipelite._integrity``.
    """

    def __init__(
        self,
        store: str | Store = ".pipelite",
        params: Mapping[str, Mapping[str, Any]] | None = None,
        executor: Any = None,
        registry: Registry | None = None,
        *,
        storage_options: Mapping[str, Any] | None = None,
        verify: str = "sampled",
    ):
        __tracebackhide__ = True
        try:
            if isinstance(store, Store):
                if storage_options is not None:
                    raise StoreLocationError(
                        "storage_options are for a store given as a path or URL; this store "
                        "is a Store object already: pass them to Store(url, storage_options=...)")
                self.store = store
            else:
                self.store = Store(store, storage_options)
            self.store.verify_level = check_level(verify)
            self.params: dict[str, dict[str, Any]] = _checked_params(params, "Pipeline")
            if executor is not None and not callable(getattr(executor, "submit", None)):
                raise InvalidArgumentError(
                    f"executor must have a submit() method (a concurrent.futures executor or a "
                    f"dask.distributed.Client), not {type(executor).__name__} {executor!r}; "
                    f"pass executor=None to run stages in this process")
            if registry is not None and not isinstance(registry, Registry):
                raise InvalidArgumentError(
                    f"registry must be a pipelite.Registry, not {type(registry).__name__}; "
                    f"leave it out to use the stages declared with @stage")
        except PipeliteError as exc:
            raise at_the_call(exc) from exc.__cause__
        self.executor = executor
        self.registry = REGISTRY if registry is None else registry

    def __repr__(self) -> str:
        return f"Pipeline(store={self.store.url!r}, stages={self.registry.names()})"

    # -- the graph ----------------------------------------------------------------------------
    def _producers(self) -> "_Producers":
        for st in self.registry.with_unknown_outputs():
            if st.outputs is None:  # not run in this session: learn its outputs from the store
                latest = self.store.latest(st.name)
                if latest is not None:
                    try:
                        self.registry.learn_outputs(st, latest["outputs"])
                    except PipeliteError:
                        pass
        return _Producers(self.registry.producers(), self)

    def _store_only_producers(self) -> dict[str, str]:
        """Artifacts of stages known only from the store (e.g. after a kernel restart)."""
        found: dict[str, str] = {}
        for name in self.store.stages():
            if name not in self.registry:
                for out in (self.store.latest(name) or {}).get("outputs", {}):
                    found.setdefault(out, name)
        return found

    def _deps(self, name: str, producers: Mapping[str, str]) -> list[str]:
        st = self.registry.get(name)
        if st is None:  # known from the store only: its record says what it was made from
            inputs = (self.store.latest(name) or {}).get("inputs", {})
            return [i["stage"] for i in inputs.values() if i.get("stage") not in (None, name)]
        return [producers[i] for i in st.inputs if i in producers and producers[i] != name]

    def _order(self, roots: Iterable[str], producers: Mapping[str, str],
               cycles: dict[str, str] | None = None) -> list[str]:
        """Stages needed for ``roots``, upstream first. A cycle raises ``CycleError``, unless
        ``cycles`` is given: then its stages are cut loose and listed there (for status)."""
        graph: dict[str, list[str]] = {}
        stack = list(roots)
        while stack:
            name = stack.pop()
            if name in graph:
                continue
            graph[name] = self._deps(name, producers)
            stack.extend(graph[name])
        # upstream first; among stages ready at the same time, the order they were defined in
        rank = {name: i for i, name in enumerate(self.registry.names())}
        while True:
            try:
                graphlib.TopologicalSorter(graph).prepare()  # finds cycles
            except graphlib.CycleError as exc:
                members = exc.args[1]
                text = " -> ".join(members)
                if cycles is None:
                    raise CycleError(
                        f"stages form a cycle ({text}): an artifact cannot depend on itself; "
                        f"split one of these stages"
                    ) from None
                for node in members:
                    cycles[node] = text
                    graph[node] = [d for d in graph[node] if d not in members]
                continue
            # depth first, in definition order: each stage right after what it needs, so a
            # notebook's stages keep the order of its cells
            def key(n: str) -> tuple:
                return (rank.get(n, len(rank)), n)

            order: list[str] = []
            placed: set[str] = set()
            for root in sorted(graph, key=key):
                walk = [(root, iter(sorted(graph[root], key=key)))]  # no recursion limit
                while walk:
                    node, deps = walk[-1]
                    if node in placed:
                        walk.pop()
                        continue
                    dep = next((d for d in deps if d not in placed), None)
                    if dep is None:
                        placed.add(node)
                        order.append(node)
                        walk.pop()
                    else:
                        walk.append((dep, iter(sorted(graph[dep], key=key))))
            return order

    def _all_names(self) -> list[str]:
        names = self.registry.names()
        return names + [n for n in self.store.stages() if n not in self.registry]

    def _stage_name(self, ref: Any) -> str:
        st = stage_of(ref)
        if st is not None:
            return st.name
        if isinstance(ref, Stage):
            return ref.name
        if not isinstance(ref, str):
            raise UnknownStageError(f"{ref!r} is not a stage: pass a stage name")
        if ref in self.registry:
            return ref
        known = self._all_names()
        if ref in known:
            return ref
        hint = difflib.get_close_matches(ref, known, n=1)
        raise UnknownStageError(
            f"no stage named '{ref}'"
            + (f"; did you mean '{hint[0]}'?" if hint else f"; known stages: {', '.join(known) or 'none'}")
        )

    def _targets(self, target: Any) -> list[str]:
        if target is None:
            return self.registry.names()
        if isinstance(target, (list, tuple, set)):
            return [self._stage_name(t) for t in target]
        return [self._stage_name(target)]

    def _check_param_stages(self, params: Mapping[str, Any] | None) -> None:
        """Parameters for a stage nobody knows are a typo, not something to ignore."""
        for name in (*self.params, *(params or {})):
            if name not in self.registry and name not in self.store.stages():
                known = self._all_names()
                hint = difflib.get_close_matches(name, known, n=1)
                raise ParameterError(
                    f"parameters given for stage '{name}', but there is no such stage"
                    + (f"; did you mean '{hint[0]}'?" if hint
                       else f"; known stages: {', '.join(known) or 'none'}")
                )

    def _params_for(self, name: str, extra: Mapping[str, Mapping[str, Any]] | None) -> dict:
        merged = dict(self.params.get(name, {}))
        merged.update((extra or {}).get(name, {}))
        return merged

    # -- freshness ----------------------------------------------------------------------------
    def _evaluate(self, order: list[str], producers: Mapping[str, str],
                  params: Mapping[str, Mapping[str, Any]] | None,
                  cycles: Mapping[str, str] | None = None,
                  memo: dict | None = None) -> dict[str, _Eval]:
        evals: dict[str, _Eval] = {}
        memo = {} if memo is None else memo
        for name in order:
            if cycles and name in cycles:
                latest = self.store.latest(name)
                evals[name] = _Eval(name, "stale" if latest else "missing",
                                    [f"part of a cycle ({cycles[name]}): split one of these "
                                     f"stages"], self.registry.get(name), latest=latest)
                continue
            st = self.registry.get(name)
            if st is None:
                latest = self.store.latest(name)
                when = latest.get("started", "?")[:16].replace("T", " ") if latest else None
                changed = _observe.changes(latest.get("observed")) if latest else []
                evals[name] = _Eval(
                    name, "stale" if changed else "fresh" if latest else "missing",
                    [f"not defined in this session (stored result from {when})"] if latest
                    else ["not defined in this session"], None, latest=latest,
                    record=None if changed else latest)
                evals[name].reasons += changed  # a file it read changed: not to be used
                continue
            ev = _Eval(name, "missing", [], st)
            evals[name] = ev
            input_hashes: dict[str, str] = {}
            blocked: list[str] = []
            for i in st.inputs:
                p = producers.get(i)
                if p is None or p == name:
                    blocked.append(f"needs artifact '{i}', which no stage produces")
                    continue
                up = evals[p]
                if up.state != "fresh" or up.record is None:
                    blocked.append(f"upstream stage '{p}' is {up.state}")
                elif i not in up.record["outputs"]:
                    blocked.append(f"upstream stage '{p}' did not produce '{i}'")
                else:
                    input_hashes[i] = up.record["outputs"][i]["hash"]
            if blocked:
                ev.latest = self.store.latest(name)
                ev.state = "stale" if ev.latest else "missing"
                ev.reasons = list(dict.fromkeys(blocked))
            else:
                try:
                    stage_params = st.resolve_params(self._params_for(name, params))
                except ParameterError as exc:
                    ev.latest = self.store.latest(name)
                    ev.state, ev.reasons = "stale" if ev.latest else "missing", [str(exc)]
                else:
                    fp = fingerprint_of(st, stage_params, input_hashes, memo)
                    ev.fingerprint = fp
                    ev.record, observed = _checked_record(self.store, name, fp.digest)
                    failure = self.store.failure(name)
                    if failure is not None and failure.get("fingerprint") == fp.digest:
                        ev.state, ev.failure = "failed", failure
                        ev.latest = self.store.latest(name)
                        ev.reasons = [f"last run failed: {failure.get('error')}"]
                    elif observed:  # the same fingerprint, but a file it read has changed
                        ev.state, ev.latest, ev.reasons = "stale", observed[0], observed[1]
                    elif ev.record is not None:
                        ev.state = "fresh"
                    elif (latest := self.store.latest(name)) is not None:
                        ev.state, ev.latest = "stale", latest
                        ev.reasons = self._diff(latest, fp, stage_params, producers)
                    else:
                        ev.reasons = ["no stored result"]
            if (self.store.url, name) in _RUNNING:
                ev.state = "running"
        return evals

    @staticmethod
    def _diff(old: dict, fp: Fingerprint, params: Mapping[str, Any],
              producers: Mapping[str, str]) -> list[str]:
        """Why a stored result does not match the fingerprint, in words."""
        before, now = old.get("parts", {}), fp.parts
        reasons: list[str] = []
        if before.get("code") != now["code"]:
            reasons.append("its code changed")
        for key, label in (("helpers", "helper"), ("globals", "global")):
            b, n = before.get(key, {}), now[key]
            for k in sorted(set(b) | set(n)):
                what = k if (" " in k) else f"{label} '{k}'"
                if k not in b:
                    reasons.append(f"now uses {what}")
                elif k not in n:
                    reasons.append(f"no longer uses {what}")
                elif b[k] != n[k]:
                    if n[k] == "<undefined>":
                        reasons.append(f"{what} is no longer defined")
                    elif b[k].startswith("lib:") and n[k].startswith("lib:"):
                        reasons.append(f"library '{k}' changed ({b[k][4:]} -> {n[k][4:]})")
                    else:
                        reasons.append(f"{what} changed")
        b, n = before.get("params", {}), now["params"]
        shown = old.get("params", {})
        for k in sorted(set(b) | set(n)):
            if b.get(k) != n.get(k):
                reasons.append(f"parameter '{k}' changed: {shown.get(k, '(unset)')} -> "
                               f"{_short_repr(params[k]) if k in params else '(unset)'}")
        b, n = before.get("inputs", {}), now["inputs"]
        for k in sorted(set(b) | set(n)):
            if b.get(k) != n.get(k):
                src = producers.get(k)
                reasons.append(f"input '{k}' changed" + (f" (new content from stage '{src}')"
                                                         if src else ""))
        b, n = before.get("env", {}), now.get("env", {})
        for k in sorted(set(b) | set(n)):
            if k not in b:
                reasons.append(f"now depends on environment variable '{k}'")
            elif k not in n:
                reasons.append(f"no longer depends on environment variable '{k}'")
            elif b[k] != n[k]:
                reasons.append(f"environment variable '{k}' changed" + (
                    " (now unset)" if n[k] == "<unset>" else
                    " (was unset)" if b[k] == "<unset>" else ""))
        if before.get("outputs") != now["outputs"]:
            reasons.append(f"its outputs changed: {before.get('outputs')} -> {now['outputs']}")
        return reasons or ["its fingerprint changed (a newer PipeLite or Python)"]

    def _status_of(self, ev: _Eval) -> StageStatus:
        rec = ev.record if ev.record is not None else ev.latest
        outputs = tuple(
            OutputInfo(k, v["size"], v["format"], v.get("summary", ""), v["hash"])
            for k, v in (rec or {}).get("outputs", {}).items()
        )
        st = ev.stage
        inputs = st.inputs if st else tuple((rec or {}).get("inputs", {}))
        produces = tuple((st.outputs if st else None) or (rec or {}).get("outputs", {}))
        return StageStatus(
            name=ev.name,
            state=ev.state,
            reasons=tuple(ev.reasons),
            outputs=outputs,
            inputs=tuple(inputs),
            last_run=_parse_time(rec.get("started")) if rec else None,
            duration=rec.get("duration") if rec else None,
            fingerprint=ev.fingerprint.digest if ev.fingerprint else None,
            defined=st is not None,
            error=ev.failure.get("error") if ev.failure else None,
            produces=produces,
            traceback=ev.failure.get("traceback") if ev.failure else None,
        )

    @_user_facing
    def status(self, *, params: Mapping[str, Mapping[str, Any]] | None = None
               ) -> list[StageStatus]:
        """Every stage (registered, or known from the store) and its state, upstream first.

        Checking never rehashes stored data: inputs are compared by their recorded hashes.
        """
        __tracebackhide__ = True
        params = _checked_params(params, "status")
        producers = self._producers()
        cycles: dict[str, str] = {}
        order = self._order(self._all_names(), producers, cycles)
        evals = self._evaluate(order, producers, params, cycles)
        return [self._status_of(evals[n]) for n in order]

    @_user_facing
    def explain(self, name: Any) -> str:
        """Why a stage is in its state, in words."""
        __tracebackhide__ = True
        stage_name = self._stage_name(name)
        producers = self._producers()
        evals = self._evaluate(self._order([stage_name], producers), producers, None)
        return explain_text(self._status_of(evals[stage_name]),
                            getattr(evals[stage_name].stage, "blind_spots", ()))

    @_user_facing
    def plan(self, target: Any = None, *, force: bool = False,
             params: Mapping[str, Mapping[str, Any]] | None = None) -> list[PlannedStage]:
        """The stages ``run(target)`` would execute, in order, and why (nothing is run).

        A stage listed only because an upstream stage reruns may still be skipped if that
        upstream's outputs come out unchanged (early cut-off).
        """
        __tracebackhide__ = True
        _checked_bool(force, "plan", "force")
        params = _checked_params(params, "plan")
        targets = self._targets(target)
        producers = self._producers()
        order = self._order(targets, producers)
        evals = self._evaluate(order, producers, params)
        planned = []
        for name in order:
            ev = evals[name]
            if force and name in targets and ev.state == "fresh":
                planned.append(PlannedStage(name, ("forced",)))
            elif ev.state != "fresh":
                planned.append(PlannedStage(name, tuple(ev.reasons)))
        return planned

    # -- running ------------------------------------------------------------------------------
    @_user_facing
    def run(self, target: Any = None, *, force: bool = False,
            params: Mapping[str, Mapping[str, Any]] | None = None) -> RunResult:
        """Run ``target`` (a stage name, a list of them, or None for all) and what it needs.

        Fresh stages are skipped and nothing is loaded for them unless needed; ``force=True``
        recomputes the targets themselves. Returns the targets' outputs by artifact name.
        """
        __tracebackhide__ = True
        _checked_bool(force, "run", "force")
        params = _checked_params(params, "run")
        targets = self._targets(target)
        self._check_param_stages(params)
        for name in targets:
            if name not in self.registry:
                raise StageNotDefinedError(
                    f"stage '{name}' is known only from the store (not defined in this "
                    f"session): run the cell or import the module that defines it first"
                )
        last: _CorruptInput | None = None
        reread: set[tuple[str, str]] = set()
        for _attempt in range(4):
            try:
                return self._run(targets, force, params)
            except _CorruptInput as bad:
                last = bad
                key = (bad.stage, bad.record["fingerprint"])
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

    def _run(self, targets: list[str], force: bool,
             params: Mapping[str, Mapping[str, Any]] | None) -> RunResult:
        __tracebackhide__ = True
        producers = self._producers()
        order = self._order(targets, producers)
        # One memo of digests for the whole run, valid while no user code runs: emptied when a
        # stage executes here, refilled by the check after it (which must see in-place changes)
        memo: dict = {}
        first = self._evaluate(order, producers, params, memo=memo)
        ran_here = False  # once a stage ran, a stage fresh before may no longer be
        total = sum(1 for n in order
                    if first[n].state != "fresh" or (force and n in targets))
        url = self.store.url
        events.emit(events.StageEvent("run_started", None, url, 0, total))
        done: dict[str, dict] = {}
        executed: list[str] = []
        skipped: list[str] = []
        sorter = graphlib.TopologicalSorter({n: self._deps(n, producers) for n in order})
        sorter.prepare()
        finished: queue.Queue = queue.Queue()
        running: dict[str, tuple[Stage, int]] = {}
        error: BaseException | None = None
        try:
            while sorter.is_active():
                for name in sorter.get_ready() if error is None else ():
                    if (first[name].state == "fresh" and not (force and name in targets)
                            and not ran_here):
                        # fresh, every upstream fresh and unchanged, and no code ran since
                        job: Any = first[name].record
                    else:  # check again: an earlier stage may have changed what it reads
                        job = self._prepare(name, producers, done, params,
                                            force and name in targets, memo)
                    if isinstance(job, dict):  # a stored result matches: nothing to run
                        done[name] = job
                        skipped.append(name)
                        events.emit(events.StageEvent("skipped", name, url))
                        sorter.done(name)
                        continue
                    st, fp, stage_params, upstream = job
                    index = len(executed) + len(running) + 1
                    if self.executor is None:
                        rec, ran = self._execute_here(st, fp, stage_params, upstream,
                                                      force and name in targets, index,
                                                      max(total, index), memo)
                        ran_here = ran_here or ran
                        done[name] = rec
                        (executed if ran else skipped).append(name)
                        sorter.done(name)
                    else:
                        self._submit(st, fp, stage_params, upstream, force and name in targets,
                                     index, max(total, index), finished)
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
                    rec, ran = future.result()
                    if ran:
                        self.registry.learn_outputs(st, rec["outputs"])
                except BaseException as exc:  # noqa: BLE001 - re-raised once in-flight work ends
                    _RUNNING.discard((url, name))
                    events.emit(events.StageEvent("failed", name, url, index, total,
                                                  error=_summary(exc)))
                    error = error or exc
                    continue
                _RUNNING.discard((url, name))
                done[name] = rec
                (executed if ran else skipped).append(name)
                events.emit(events.StageEvent("finished" if ran else "skipped", name, url,
                                              index, total, duration=rec.get("duration")))
                sorter.done(name)
            if error is not None:
                raise error
            values = {}
            for name in targets:
                for out, info in done[name]["outputs"].items():
                    values[out] = _load_input(self.store, name, done[name], info)
        finally:
            events.emit(events.StageEvent("run_finished", None, url, len(executed), total))
        return RunResult(values, executed, skipped, {t: done[t] for t in targets})

    def _prepare(self, name: str, producers: Mapping[str, str], done: Mapping[str, dict],
                 params: Mapping[str, Mapping[str, Any]] | None, forced: bool,
                 memo: dict | None = None):
        """A stored record that matches, or (stage, fingerprint, params, upstream) to run."""
        st = self.registry.get(name)
        if st is None:
            rec = self.store.latest(name)
            if rec is None:
                raise MissingInputError(f"stage '{name}' has no stored result and is not "
                                        f"defined in this session: define it first")
            return rec
        upstream = {}
        for i in st.inputs:
            p = producers.get(i)
            if p is None or p == name:
                raise MissingInputError(self._missing_input_message(st, i))
            if i not in done[p]["outputs"]:
                raise MissingInputError(
                    f"stage '{name}' needs artifact '{i}', but stage '{p}' did not "
                    f"produce it (it produced: {', '.join(done[p]['outputs']) or 'nothing'})"
                )
            upstream[i] = (p, done[p])
        stage_params = st.resolve_params(self._params_for(name, params))
        fp = fingerprint_of(st, stage_params,
                            {i: r["outputs"][i]["hash"] for i, (_, r) in upstream.items()}, memo)
        rec = _stored(self.store, name, fp, forced)
        return rec if rec is not None else (st, fp, stage_params, upstream)

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

    def _execute_here(self, st: Stage, fp: Fingerprint, params: dict, upstream: dict,
                      forced: bool, index: int, total: int,
                      memo: dict | None = None) -> tuple[dict, bool]:
        __tracebackhide__ = True
        url = self.store.url
        with _stage_lock(self.store, st.name, fp.digest):
            # another process may have computed it while we waited for the lock
            rec = _stored(self.store, st.name, fp, forced)
            if rec is not None:
                return rec, False
            _RUNNING.add((url, st.name))
            events.emit(events.StageEvent("started", st.name, url, index, total))
            try:
                rec = _compute(self.store, st, fp, params, upstream, self.registry.learn_outputs,
                               memo)
            except _CorruptInput:
                raise
            except BaseException as exc:
                events.emit(events.StageEvent("failed", st.name, url, index, total,
                                              error=_summary(exc)))
                raise
            finally:
                _RUNNING.discard((url, st.name))
        events.emit(events.StageEvent("finished", st.name, url, index, total,
                                      duration=rec["duration"]))
        return rec, True

    def _submit(self, st: Stage, fp: Fingerprint, params: dict, upstream: dict, forced: bool,
                index: int, total: int, finished: queue.Queue) -> None:
        """Run one stage on the executor; its future reports to ``finished`` when done."""
        url = self.store.url
        _RUNNING.add((url, st.name))
        events.emit(events.StageEvent("started", st.name, url, index, total))
        # dask would otherwise dedupe "identical" calls by key: every submission is a new run
        extra = {"pure": False} if _is_dask(self.executor) else {}
        future = self.executor.submit(_compute_locked, self.store, st, fp, params, upstream,
                                      forced, **extra)
        future.add_done_callback(lambda f, name=st.name: finished.put((name, f)))

    # -- results ------------------------------------------------------------------------------
    @_user_facing
    def load(self, artifact: Any, *, verify: bool = False) -> Any:
        """The stored value of an artifact (a name or an ``Artifact`` class), if it is fresh.

        Numpy arrays come back read-only and memory-mapped. ``verify=True`` rehashes the file.
        """
        __tracebackhide__ = True
        if not _is_bool(verify):
            raise InvalidArgumentError(
                f"load(verify={verify!r}): verify is True (hash the whole file now) or False "
                f"(the pipeline's verify level); for a level, use Pipeline(verify='always')")
        name = artifact_name(artifact)
        producers = self._producers()
        producer = producers.get(name)
        if producer is None:
            known = sorted(producers.all())
            hint = difflib.get_close_matches(name, known, n=1)
            raise UnknownArtifactError(
                f"no stage produces artifact '{name}'"
                + (f"; did you mean '{hint[0]}'?" if hint else
                   f"; known artifacts: {', '.join(known) or 'none'}")
            )
        for attempt in range(2):
            evals = self._evaluate(self._order([producer], producers), producers, None)
            ev = evals[producer]
            if ev.state != "fresh" or ev.record is None or name not in ev.record["outputs"]:
                why = "; ".join(ev.reasons) or ev.state
                raise StaleArtifactError(
                    f"artifact '{name}' is not up to date: stage '{producer}' is {ev.state} "
                    f"({why}). Run pipeline.run('{producer}') first"
                )
            info = ev.record["outputs"][name]
            try:
                return self.store.load_value(info, verify=verify, record=ev.record)
            except CorruptArtifactError as exc:
                removed = _as_removed(self.store, info, exc)
                if removed is not None and attempt == 0:
                    # deleted by another process after its record was read: read it again
                    warn_user(f"{removed.path} was removed by another process while it was "
                              f"being loaded; reading stage '{producer}' again")
                    continue
                self.store.drop_record(producer, ev.record["fingerprint"])
                if removed is not None:
                    raise removed from None  # nothing to quarantine
                # move the bad file aside (into quarantine/): the recompute writes the same
                # content-addressed path, and an object of the right size there would be kept
                self.store.quarantine(info)
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    @_user_facing
    def attachment(self, stage: Any, name: str, *, record: dict | None = None) -> Any:
        """A stored side value of a stage's fresh result (e.g. a cell's captured output).

        Pass the stage's ``record`` (from ``RunResult.records``) to skip the freshness check.
        """
        if record is None:
            stage_name = self._stage_name(stage)
            producers = self._producers()
            ev = self._evaluate(self._order([stage_name], producers), producers,
                                None)[stage_name]
            record = ev.record if ev.state == "fresh" else None
        info = (record or {}).get("attachments", {}).get(name)
        if info is None:
            return None
        # a cell's captured output can carry HTML and JavaScript: only from a signed record
        self.store.require_trust(record, f"attachment '{name}'")
        return self.store.load_value(info, record=record)

    @_user_facing
    def producers(self) -> dict[str, str]:
        """Every known artifact and the stage that produces it, including stages known only
        from the store (e.g. after a kernel restart, before their cell has run again)."""
        return self._producers().all()

    @_user_facing
    def record(self, stage: Any) -> dict | None:
        """The stored record (as JSON data) of a stage's current result, or its newest one."""
        stage_name = self._stage_name(stage)
        producers = self._producers()
        ev = self._evaluate(self._order([stage_name], producers), producers, None)[stage_name]
        return ev.record if ev.record is not None else ev.latest

    @_user_facing
    def invalidate(self, name: Any) -> int:
        """Forget every stored result of a stage (or of an artifact's producer)."""
        __tracebackhide__ = True
        try:
            stage_name = self._stage_name(name)
        except UnknownStageError:
            art = artifact_name(name) if isinstance(name, (str, type)) else name
            producer = self._producers().get(art)
            if producer is None:
                raise
            stage_name = producer
        try:
            count = self.store.invalidate(stage_name)
        except OSError as exc:
            err = limit_error(exc, self.store.url, action=f"invalidate stage '{stage_name}'")
            if err is None:
                raise
            raise err from exc
        events.emit(events.StageEvent("invalidated", stage_name, self.store.url))
        return count

    @_user_facing
    def gc(self, keep: int = 1, *, grace: float = GC_GRACE) -> GcReport:
        """Delete all but the newest ``keep`` results per stage, and unreferenced files older
        than ``grace`` seconds (default one hour: files other processes are writing stay)."""
        __tracebackhide__ = True
        if isinstance(keep, bool) or not hasattr(type(keep), "__index__"):
            raise InvalidArgumentError(
                f"gc(keep={keep!r}): keep must be a whole number of results to keep per stage, "
                f"1 or more (got {type(keep).__name__}); e.g. gc(keep=1)")
        keep = int(keep)
        if keep < 1:
            raise InvalidArgumentError(
                f"gc(keep={keep}): keep must be at least 1 (use invalidate(name) to forget a "
                f"stage entirely)")
        try:
            return self.store.gc(keep=keep, grace=grace)
        except OSError as exc:
            err = limit_error(exc, self.store.url, action="collect garbage (gc)")
            if err is None:
                raise
            raise err from exc

    @_user_facing
    def graph(self, format: str = "mermaid") -> str:
        """The stage graph coloured by state: ``mermaid`` or ``dot`` text, or ``svg``."""
        from .graph import render

        return render(self.status(), format)




def _checked_params(params: Any, where: str) -> dict[str, dict[str, Any]]:
    """``params`` as ``{stage name: {parameter: value}}`` (copied), or an error that shows the
    shape expected."""
    if params is None:
        return {}
    example = "params={'train_model': {'epochs': 5}}"
    if not isinstance(params, Mapping):
        raise ParameterError(
            f"{where}(params=...) must map stage names to their parameters, e.g. {example}; "
            f"got {type(params).__name__} {_short_repr(params)}")
    checked: dict[str, dict[str, Any]] = {}
    for name, values in params.items():
        if not isinstance(name, str):
            st = stage_of(name)
            hint = f": use its name, '{st.name}'" if st is not None else ""
            raise ParameterError(
                f"{where}(params=...): keys are stage names (strings), not "
                f"{type(name).__name__} {_short_repr(name)}{hint}; e.g. {example}")
        if not isinstance(values, Mapping):
            raise ParameterError(
                f"{where}(params=...): the parameters of stage '{name}' must be a mapping of "
                f"parameter names to values, e.g. params={{'{name}': {{'epochs': 5}}}}; got "
                f"{type(values).__name__} {_short_repr(values)}")
        for pname in values:
            if not isinstance(pname, str):
                raise ParameterError(
                    f"{where}(params=...): parameter names of stage '{name}' are strings, not "
                    f"{type(pname).__name__} {_short_repr(pname)}; e.g. "
                    f"params={{'{name}': {{'epochs': 5}}}}")
        checked[name] = dict(values)
    return checked


def _is_bool(value: Any) -> bool:
    return isinstance(value, bool) or type(value).__name__ == "bool_"  # numpy's bool too


def _checked_bool(value: Any, where: str, what: str) -> None:
    """A flag given as something other than True/False ('no' is true) is refused."""
    if not _is_bool(value):
        raise InvalidArgumentError(
            f"{where}({what}={_short_repr(value)}): {what} must be True or False, not "
            f"{type(value).__name__}")




@contextlib.contextmanager
def _stage_lock(store: Store, stage: str, digest: str):
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


def _is_dask(executor: Any) -> bool:
    return type(executor).__module__.startswith("distributed")


def _summary(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _stored(store: Store, name: str, fp: Fingerprint, forced: bool) -> dict | None:
    """The stored result for this fingerprint, unless forced, its last run there failed, or
    a file, module or directory it observed has changed since."""
    if forced:
        return None
    failure = store.failure(name)
    if failure is not None and failure.get("fingerprint") == fp.digest:
        return None  # its last run at this fingerprint failed: try again
    return _checked_record(store, name, fp.digest)[0]


def _checked_record(store: Store, name: str, digest: str
                    ) -> tuple[dict | None, tuple[dict, list[str]] | None]:
    """The stored record for (stage, fingerprint) if its observed dependencies (files read,
    modules imported, directories listed while it ran) are unchanged; else (None, (record,
    reasons)). The one place every freshness check (status, explain, plan, run, load, and
    executor workers) validates observed dependencies."""
    rec = store.record(name, digest)
    if rec is None or not rec.get("observed"):
        return rec, None
    reasons = _observe.changes(rec["observed"])
    if reasons:
        # another process may have rerun it since this process cached the record
        again = store.record(name, digest, cached=False)
        if again is not None and again is not rec and again != rec:
            rec = again
            reasons = _observe.changes(rec.get("observed"))
    return (None, (rec, reasons)) if reasons else (rec, None)


def _load_input(store: Store, stage: str, record: dict, info: dict) -> Any:
    try:
        return store.load_value(info, record=record)
    except CorruptArtifactError as exc:
        raise _CorruptInput(stage, record, info, _as_removed(store, info, exc) or exc) from None


def _as_removed(store: Store, info: dict, exc: CorruptArtifactError
                ) -> ArtifactRemovedError | None:
    """``exc`` as an ``ArtifactRemovedError`` if the file is absent rather than damaged (gc or
    invalidate in another process deleted it after its record was read); else None."""
    if isinstance(exc, ArtifactRemovedError):
        return exc
    # "the file is missing" is Store.verify's (and a remote download's) word for an absent file
    if exc.detail == "the file is missing" or not store.object_exists(info):
        return ArtifactRemovedError(exc.path)
    return None


def _compute_locked(store: Store, st: Stage, fp: Fingerprint, params: dict, upstream: dict,
                    forced: bool) -> tuple[dict, bool]:
    """On an executor's worker: compute once per (stage, fingerprint) across processes."""
    with _stage_lock(store, st.name, fp.digest):
        rec = _stored(store, st.name, fp, forced)
        if rec is not None:
            return rec, False
        return _compute(store, st, fp, params, upstream, None), True


def _compute(store: Store, st: Stage, fp: Fingerprint, params: dict, upstream: dict,
             learn: Any, memo: dict | None = None) -> dict:
    """Load the inputs, run the stage, store its outputs, commit the record (last).

    ``memo``, the run's digests, is emptied before the stage's code runs and refilled by the
    check after it."""
    __tracebackhide__ = True
    inputs = {i: _load_input(store, p, rec, rec["outputs"][i]) for i, (p, rec) in upstream.items()}
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
        infos = {name: _save_output(store, st, name, value, created)
                 for name, value in outputs.items()}
        attachments = {k: store.save_value(v, stage=st.name, created=created)
                       for k, v in st.take_attachments().items()}
        observed = None
        if recorder is not None:
            carried = (previous or {}).get("observed", {}).get("modules", ())
            observed = recorder.collect(carry_modules=[m["name"] for m in carried])
    except BaseException as exc:
        store.discard_objects(created)
        _record_failure(store, st, fp, exc, started, time.perf_counter() - t0)
        raise
    record = {
        "format_version": 1,
        "stage": st.name,
        "kind": st.kind,
        "fingerprint": fp.digest,
        "started": started.isoformat(timespec="milliseconds"),
        "duration": round(duration, 6),
        "save_duration": round(time.perf_counter() - t0 - duration, 6),
        "params": {k: _short_repr(v) for k, v in params.items()},
        "inputs": {i: {"hash": rec["outputs"][i]["hash"], "stage": p}
                   for i, (p, rec) in upstream.items()},
        "outputs": infos,
        "attachments": attachments,
        "parts": fp.parts,
        "versions": _versions(),
    }
    if observed:
        record["observed"] = observed
    try:
        store.write_result(st.name, fp.digest, record)
    except BaseException:  # no record, so no result: its objects would only take space
        if store.record(st.name, fp.digest, cached=False) is None:  # (a warning raised as an
            store.discard_objects(created)  # error comes after the commit: keep them then)
        raise
    # A stage may change what it reads while it runs (a memo cache in a helper's default, an
    # import inside it, a global it appends to): store the result for the state after the run
    # too, or the stage would look stale right after running.
    after = fingerprint_of(st, params, {i: rec["outputs"][i]["hash"]
                                        for i, (_, rec) in upstream.items()}, memo)
    if after.digest != fp.digest:
        changed = Pipeline._diff({"parts": fp.parts, "params": record["params"]}, after,
                                 params, {})
        record = dict(record, fingerprint=after.digest, parts=after.parts,
                      same_result_as=fp.digest)
        try:
            store.write_result(st.name, after.digest, record)
        except PipeliteError as exc:  # full or read-only: the result is stored all the same
            warn_user(f"stage '{st.name}': its result is stored, but not for the state after "
                      f"its run ({exc}); it will run again next time")
        if fp.parts["globals"] != after.parts["globals"]:
            warn_user(
                f"stage '{st.name}' changed what it reads while running ({'; '.join(changed)}): "
                f"its result is stored for the state before and after the run. If that state "
                f"matters to the result, pass it as a parameter or an artifact instead")
    return record


def _save_output(store: Store, st: Stage, name: str, value: Any,
                 created: list[str] | None = None) -> dict:
    try:
        return store.save_value(value, stage=st.name, created=created)
    except FormatSaveError as exc:  # the user's format: say which output it was saving
        raise FormatSaveError(f"stage '{st.name}', output '{name}': {exc}") from exc.__cause__
    except (KeyboardInterrupt, PipeliteError, OSError):
        raise
    except Exception as exc:  # noqa: BLE001 - an unstorable value is the stage's mistake
        raise StageOutputError(
            f"stage '{st.name}': output '{name}' ({type(value).__name__}) cannot be stored: "
            f"{exc}. Return picklable values, or pipelite.register_format() for its type"
        ) from exc


def _record_failure(store: Store, st: Stage, fp: Fingerprint, exc: BaseException,
                    started: _dt.datetime, elapsed: float) -> None:
    """Write FAILED.json. The stage's own error matters more: if the file cannot be written
    (a full or read-only disk), that is a warning and ``exc`` still propagates unchanged."""
    try:
        store.write_failure(st.name, {
            "stage": st.name,
            "fingerprint": fp.digest,
            "error": _summary(exc),
            "traceback": "".join(traceback.format_exception(type(exc), exc,
                                                            _user_frames(exc.__traceback__))),
            "started": started.isoformat(timespec="milliseconds"),
            "duration": round(elapsed, 6),
        })
    except Exception as write_error:  # noqa: BLE001 - never replaces the stage's own error
        warn_user(f"stage '{st.name}' failed ({_summary(exc)}), and its failure could not be "
                  f"recorded in {store.url}: {write_error}")
    if hasattr(exc, "add_note") and not isinstance(exc, PipeliteError):
        exc.add_note(f"(PipeLite: stage '{st.name}' failed; nothing was stored)")
