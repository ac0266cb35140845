"""The pipeline: the public face over resolution, freshness and execution.

``Pipeline`` holds a store, a registry of stages, default parameters and an executor. Each
public method is short: it resolves its targets (``pipelite._resolve``), checks them
(``pipelite._freshness.check``) and, for ``run``, hands the verdicts to the runner
(``pipelite._execute``).
"""
from __future__ import annotations

import dataclasses
import datetime
import difflib
import functools
import os
import threading
from dataclasses import dataclass
from typing import Any, Mapping

from . import events
from ._execute import Runner, RunResult, as_removed
from ._freshness import (
    LARGE,
    NOT_CACHED,
    STATES,
    Check,
    OutputInfo,
    StageStatus,
    check,
    diff,
    short_repr,
    status_of,
)
from ._gcpause import collector_paused
from ._integrity import check_level
from ._resolve import Graph
from ._units import parse_duration, parse_size
from .errors import (
    AcceptRefusedError,
    CorruptArtifactError,
    InvalidArgumentError,
    ParameterError,
    PipeliteError,
    StageNotDefinedError,
    StaleArtifactError,
    StoreLocationError,
    UnknownArtifactError,
    UnknownStageError,
    at_the_call,
    limit_error,
)
from .fingerprint import warn_user
from .present import explain_text
from .stage import REGISTRY, Registry, Stage, artifact_name, stage_of, validate_stage_name
from .store import GC_GRACE, GcReport, ResultRecord, Store

__all__ = ["Pipeline", "StageStatus", "OutputInfo", "PlannedStage", "RunResult", "STATES"]


@dataclass(frozen=True)
class PlannedStage:
    """A stage that ``run`` would execute, and why."""

    name: str
    reasons: tuple[str, ...]


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
        except Exception as exc:
            missing = _credentials_error(exc, args[0] if args else None)
            if missing is None:
                raise
            raise at_the_call(missing) from None

    return call


_NO_CREDENTIALS = ("NoCredentialsError", "PartialCredentialsError")


def _credentials_error(exc: BaseException, pipeline: Any) -> StoreLocationError | None:
    """A one-line ``StoreLocationError`` for an object store's missing credentials (botocore's
    ``NoCredentialsError``, somewhere in the chain), naming what to set; None otherwise."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return None
        if type(seen).__name__ in _NO_CREDENTIALS:
            break
        seen = seen.__cause__ or seen.__context__
    else:
        return None
    store = getattr(getattr(pipeline, "store", None), "url", "the store")
    return StoreLocationError(
        f"no credentials for {store} ({type(seen).__name__}: {seen}): set AWS_ACCESS_KEY_ID "
        f"and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), or give them as storage options: "
        f"Pipeline(storage_options={{'key': ..., 'secret': ...}}), %pipelite store URL "
        f"--option key=... --option secret=..., or pipelite --storage-option key=...")


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

    # -- the one check every method goes through --------------------------------------------
    def _graph(self) -> Graph:
        return Graph(self.registry, self.store)

    def _check(self, targets: list[str] | None = None,
               params: Mapping[str, Mapping[str, Any]] | None = None, *,
               graph: Graph | None = None) -> Check:
        """The verdict of every stage ``targets`` need (all stages, registered or known from
        the store, when None: then a cycle marks its stages stale instead of raising)."""
        with self.store.metadata_snapshot():  # a remote store: its records read in bulk
            graph = graph or self._graph()
            if targets is None:
                return check(graph, graph.names(), self.params, params, cut_cycles=True)
            return check(graph, targets, self.params, params)

    def _check_param_stages(self, params: Mapping[str, Any] | None) -> None:
        """Parameters for a stage nobody knows are a typo, not something to ignore."""
        for name in (*self.params, *(params or {})):
            if name not in self.registry and name not in self.store.stages():
                known = self._graph().names()
                hint = difflib.get_close_matches(name, known, n=1)
                raise ParameterError(
                    f"parameters given for stage '{name}', but there is no such stage"
                    + (f"; did you mean '{hint[0]}'?" if hint
                       else f"; known stages: {', '.join(known) or 'none'}")
                )

    # -- freshness ----------------------------------------------------------------------------
    @_user_facing
    def status(self, *, params: Mapping[str, Mapping[str, Any]] | None = None
               ) -> list[StageStatus]:
        """Every stage (registered, or known from the store) and its state, upstream first.

        Checking never rehashes stored data: inputs are compared by their recorded hashes.
        """
        __tracebackhide__ = True
        params = _checked_params(params, "status")
        with collector_paused(len(self.registry) >= LARGE):  # builds a status of every stage
            return self._check(None, params).statuses()

    @_user_facing
    def explain(self, name: Any) -> str:
        """Why a stage is in its state, in words."""
        __tracebackhide__ = True
        graph = self._graph()
        stage_name = graph.stage_name(name)
        verdict = self._check([stage_name], graph=graph)[stage_name]
        shown = verdict.record if verdict.record is not None else verdict.latest
        return explain_text(status_of(verdict), getattr(verdict.stage, "blind_spots", ()),
                            shown.provenance if shown is not None else None,
                            shown.accepted if shown is not None else None,
                            self._file_output_notes(shown))

    def _file_output_notes(self, record: ResultRecord | None) -> list[str]:
        """What differs between a result's file outputs and the files in place (put back on
        the next hit: a run that skips the stage, a load, its cell)."""
        from ._files import in_place

        notes = []
        for name, info in (record.outputs.items() if record is not None else ()):
            if info.format != "file":
                continue
            try:
                target = self.store.file_target(info)
            except PipeliteError as exc:
                notes.append(f"file output '{name}' will not be restored: {exc}")
                continue
            if not os.path.lexists(target):
                notes.append(f"file output {info.extra.get('file')} was deleted: the next "
                             f"run or load puts it back from the store")
            elif not in_place(target, info.hash, info.size):
                notes.append(f"file output {info.extra.get('file')} was changed: the next "
                             f"run or load puts the stored one back (yours kept beside it)")
        return notes

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
        graph = self._graph()
        targets = graph.targets(target)
        found = self._check(targets, params, graph=graph)
        planned = []
        for name in found.order:
            verdict = found[name]
            if force and name in targets and verdict.state == "fresh":
                planned.append(PlannedStage(name, ("forced",)))
            elif verdict.state != "fresh":
                planned.append(PlannedStage(name, tuple(verdict.reasons)))
        return planned

    # -- running ------------------------------------------------------------------------------
    @_user_facing
    def run(self, target: Any = None, *, force: bool = False,
            params: Mapping[str, Mapping[str, Any]] | None = None,
            cancel: threading.Event | None = None) -> RunResult:
        """Run ``target`` (a stage name, a list of them, or None for all) and what it needs.

        Fresh stages are skipped and nothing is loaded for them unless needed; ``force=True``
        recomputes the targets themselves. Returns the targets' outputs by artifact name.
        ``cancel`` (a ``threading.Event``), once set, stops the run before its next stage
        with ``RunCancelled``; results stored before stay.
        """
        __tracebackhide__ = True
        _checked_bool(force, "run", "force")
        params = _checked_params(params, "run")
        graph = self._graph()
        targets = graph.targets(target)
        self._check_param_stages(params)
        for name in targets:
            if name not in self.registry:
                raise StageNotDefinedError(
                    f"stage '{name}' is known only from the store (not defined in this "
                    f"session): run the cell or import the module that defines it first"
                )
        if cancel is not None and not callable(getattr(cancel, "is_set", None)):
            raise InvalidArgumentError(
                f"run(cancel={cancel!r}): cancel is a threading.Event (set it to stop the run)")
        return Runner(graph, self.params, self.executor, cancel).run(targets, force, params)

    # -- results ------------------------------------------------------------------------------
    @_user_facing
    def load(self, artifact: Any, *, version: str | None = None, verify: bool = False) -> Any:
        """The stored value of an artifact (a name or an ``Artifact`` class), if it is fresh.

        Numpy arrays come back read-only and memory-mapped. ``verify=True`` rehashes the file.
        ``version``: a run id (``pipelite log STAGE`` lists them), or a unique prefix of at
        least 6 characters: the value that run stored, from the producer's history, with no
        freshness check. History lasts until ``gc(keep=N)`` keeps only the newest N results.
        """
        __tracebackhide__ = True
        if not _is_bool(verify):
            raise InvalidArgumentError(
                f"load(verify={verify!r}): verify is True (hash the whole file now) or False "
                f"(the pipeline's verify level); for a level, use Pipeline(verify='always')")
        name = artifact_name(artifact)
        graph = self._graph()
        producer = graph.producers.get(name)
        if producer is None:
            known = sorted(graph.producers.all())
            hint = difflib.get_close_matches(name, known, n=1)
            raise UnknownArtifactError(
                f"no stage produces artifact '{name}'"
                + (f"; did you mean '{hint[0]}'?" if hint else
                   f"; known artifacts: {', '.join(known) or 'none'}")
            )
        if version is not None:
            return self._load_version(name, producer, version, verify)
        for attempt in range(2):
            verdict = self._check([producer], graph=graph)[producer]
            record = verdict.record
            if verdict.stage is not None and not verdict.stage.cache:
                raise StaleArtifactError(
                    f"artifact '{name}' is never stored: stage '{producer}' is not cached "
                    f"(cache=False). Use the value pipeline.run('{producer}') returns")
            root = verdict.root
            if root is not None and root[2] == NOT_CACHED:
                raise StaleArtifactError(
                    f"artifact '{name}' depends on stage '{root[0]}', which is not cached "
                    f"(cache=False): whether '{producer}' is up to date is known only by "
                    f"running it. Use the value pipeline.run('{producer}') returns")
            if verdict.state != "fresh" or record is None or name not in record.outputs:
                why = "; ".join(verdict.reasons) or verdict.state
                raise StaleArtifactError(
                    f"artifact '{name}' is not up to date: stage '{producer}' is "
                    f"{verdict.state} ({why}). Run pipeline.run('{producer}') first"
                )
            info = record.outputs[name]
            try:
                value = self.store.load_value(info, verify=verify, record=record)
            except CorruptArtifactError as exc:
                removed = as_removed(self.store, info, exc)
                if removed is not None and attempt == 0:
                    # deleted by another process after its record was read: read it again
                    warn_user(f"{removed.path} was removed by another process while it was "
                              f"being loaded; reading stage '{producer}' again")
                    continue
                self.store.drop_record(producer, record.fingerprint)
                if removed is not None:
                    raise removed from None  # nothing to quarantine
                # move the bad file aside (into quarantine/): the recompute writes the same
                # content-addressed path, and an object of the right size there would be kept
                self.store.quarantine(info)
                raise
            self.store.mark_used(producer, record.fingerprint)  # for gc's max_age, max_size
            return value
        raise AssertionError("unreachable")  # pragma: no cover

    def _load_version(self, name: str, producer: str, version: Any, verify: bool) -> Any:
        """``name`` as stored by the producer's run ``version`` (an id or a prefix of it)."""
        if not isinstance(version, str) or len(version) < 6:
            raise InvalidArgumentError(
                f"load(version={short_repr(version)}): version is a run id, or a unique prefix "
                f"of at least 6 characters of one (pipelite log {producer} lists them)")
        history = self.store.records_of(producer)  # newest first
        ids = list(dict.fromkeys(r.run_id for r in history if r.run_id))
        found = [i for i in ids if i.startswith(version)]
        if len(found) != 1:
            listed = ", ".join(ids[:5]) + (", ..." if len(ids) > 5 else "")
            why = (f"{len(found)} runs of stage '{producer}' start with '{version}': give "
                   f"more of it" if found else
                   f"no stored result of stage '{producer}' has run id '{version}'")
            raise InvalidArgumentError(
                f"load('{name}', version='{version}'): {why}; "
                + (f"stored runs, newest first: {listed}" if ids else
                   "none of its stored results has a run id (stored before PipeLite kept one)"))
        record = next((r for r in history if r.run_id == found[0] and name in r.outputs),
                      None)
        if record is None:
            raise UnknownArtifactError(
                f"run '{found[0]}' of stage '{producer}' did not produce artifact '{name}'")
        value = self.store.load_value(record.outputs[name], verify=verify, record=record)
        self.store.mark_used(producer, record.fingerprint)
        return value

    @_user_facing
    def attachment(self, stage: Any, name: str, *, record: ResultRecord | None = None) -> Any:
        """A stored side value of a stage's fresh result (e.g. a cell's captured output).

        Pass the stage's ``record`` (from ``RunResult.records``) to skip the freshness check.
        """
        if record is None:
            graph = self._graph()
            stage_name = graph.stage_name(stage)
            verdict = self._check([stage_name], graph=graph)[stage_name]
            record = verdict.record if verdict.state == "fresh" else None
        info = ((record.attachments if record is not None else None) or {}).get(name)
        if info is None:
            return None
        # a cell's captured output can carry HTML and JavaScript: only from a signed record
        self.store.require_trust(record, f"attachment '{name}'")
        return self.store.load_value(info, record=record)

    @_user_facing
    def producers(self) -> dict[str, str]:
        """Every known artifact and the stage that produces it, including stages known only
        from the store (e.g. after a kernel restart, before their cell has run again)."""
        return self._graph().producers.all()

    @_user_facing
    def record(self, stage: Any) -> ResultRecord | None:
        """The stored record of a stage's current result, or its newest one."""
        graph = self._graph()
        stage_name = graph.stage_name(stage)
        verdict = self._check([stage_name], graph=graph)[stage_name]
        return verdict.record if verdict.record is not None else verdict.latest

    @_user_facing
    def origin_of(self, name: Any) -> str | None:
        """The notebook that last ran stage ``name`` (a name, a ``Stage`` or a decorated
        function or class), as recorded by its newest stored run, failed or not; None when
        unknown (never run, or run from a script). Cheap: it reads the stage's failure, if
        any, and its newest record, and checks no freshness. The notebook extension asks
        before it registers a cell's stage, to warn that another notebook uses the name."""
        __tracebackhide__ = True
        st = stage_of(name) or (name if isinstance(name, Stage) else None)
        stage_name = st.name if st is not None else validate_stage_name(name)
        failure = self.store.failure(stage_name)  # newer than any result, when there is one
        if failure is not None and failure.origin is not None:
            return failure.origin
        latest = self.store.latest(stage_name)
        return latest.origin if latest is not None else None

    @_user_facing
    def invalidate(self, name: Any) -> int:
        """Forget every stored result of a stage (or of an artifact's producer)."""
        __tracebackhide__ = True
        graph = self._graph()
        try:
            stage_name = graph.stage_name(name)
        except UnknownStageError:
            art = artifact_name(name) if isinstance(name, (str, type)) else name
            producer = graph.producers.get(art)
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
        events.emit("invalidated", stage_name, self.store.url)
        return count

    @_user_facing
    def accept(self, name: Any, *,
               params: Mapping[str, Mapping[str, Any]] | None = None) -> ResultRecord:
        """Adopt the current fingerprint for a stage's latest stored result, without running
        it: after a refactor you know did not change the result (code, helpers, globals,
        parameters). The record gains an ``accepted`` note (the fingerprint it was computed
        for, when, and what had changed), shown by ``explain``.

        Refused (``AcceptRefusedError``) when anything else changed: an input's content, a
        file it reads, an environment variable, its outputs; when an upstream stage is not
        fresh, the stage is not cached, its result expired, or it has no stored result.
        Returns the record now stored for the current fingerprint."""
        __tracebackhide__ = True
        params = _checked_params(params, "accept")
        graph = self._graph()
        stage_name = graph.stage_name(name)
        st = self.registry.get(stage_name)
        if st is None:
            raise StageNotDefinedError(
                f"stage '{stage_name}' is known only from the store: define it (run its cell) "
                f"before accepting its result")
        verdict = self._check([stage_name], params, graph=graph)[stage_name]
        if verdict.state == "fresh" and verdict.record is not None:
            return verdict.record  # nothing to accept
        fp, latest = verdict.fingerprint, verdict.latest
        refuse = f"cannot accept the stored result of stage '{stage_name}'"
        if not st.cache:
            raise AcceptRefusedError(f"{refuse}: it is not cached (cache=False)")
        if latest is None:
            raise AcceptRefusedError(f"{refuse}: it has no stored result to accept. Run it: "
                                     f"pipeline.run('{stage_name}')")
        if fp is None:
            blocked = "; ".join(verdict.reasons)
            raise AcceptRefusedError(f"{refuse}: {blocked}. Run what it needs first: "
                                     f"pipeline.run('{stage_name}')")
        if verdict.state == "failed":
            error = verdict.failure.error if verdict.failure else verdict.reasons[0]
            raise AcceptRefusedError(f"{refuse}: its last run failed ({error}). Fix the error "
                                     f"and run it")
        if latest.fingerprint == fp.digest:  # the same fingerprint: a file changed, or expiry
            raise AcceptRefusedError(
                f"{refuse}: {'; '.join(verdict.reasons)}: only changes to its code, globals "
                f"and parameters can be accepted; run it")
        if st.outputs is not None and set(st.outputs) != set(latest.outputs):
            raise AcceptRefusedError(
                f"{refuse}: its outputs changed ({sorted(latest.outputs)} -> "
                f"{sorted(st.outputs)}). Only changes to its code, globals and parameters "
                f"that keep its outputs can be accepted: run it")
        before, now = latest.parts, fp.parts
        changed = [label for key, label in (("inputs", "input artifacts' content"),
                                            ("files", "input files"),
                                            ("env", "environment variables"),
                                            ("outputs", "outputs"))
                   if (before.get(key) or {}) != (now.get(key) or {})]
        observed = _observed_changes(latest)
        if changed or observed:
            found = diff(before, latest.params, fp, {}, graph.producers)
            why = [r for r in found if r.startswith(("input ", "file ", "now reads file",
                                                       "no longer reads", "environment",
                                                       "now depends", "its outputs",
                                                       "and "))] + observed
            raise AcceptRefusedError(
                f"{refuse}: {'; '.join(why or changed)}. Only changes to its code, globals "
                f"and parameters can be accepted: run it")
        resolved = st.resolve_params(dict(self.params.get(stage_name, {}),
                                          **(params or {}).get(stage_name, {})))
        reasons = diff(before, latest.params, fp, resolved, graph.producers)
        self.store.require_trust(latest, "result (accepting it signs it with your key)")
        record = dataclasses.replace(
            latest, fingerprint=fp.digest, parts=fp.parts,
            params={k: short_repr(v) for k, v in resolved.items()},
            same_result_as=None,
            accepted={"from": latest.fingerprint,
                      "at": datetime.datetime.now(datetime.timezone.utc).isoformat(
                          timespec="milliseconds"),
                      "reasons": reasons})
        stored = self.store.write_result(record)
        events.emit("accepted", stage_name, self.store.url)
        return stored

    @_user_facing
    def gc(self, keep: int = 1, *, max_size: int | str | None = None,
           max_age: float | str | datetime.timedelta | None = None,
           grace: float = GC_GRACE) -> GcReport:
        """Delete stored results by ``keep``, ``max_age`` and ``max_size``, and the files no
        result needs once older than ``grace`` seconds (default one hour: files other
        processes are writing stay).

        - ``keep``: the newest ``keep`` results per stage stay, older ones go.
        - ``max_age`` (``"30d"``, ``"12h"``, seconds or a ``timedelta``): results not used
          (loaded, or reused by a run) for that long go, even among the newest ``keep``:
          ``keep`` only limits how many stay.
        - ``max_size`` (``"20 GiB"``, ``"500MB"`` or bytes): the least recently used results
          go until the objects the rest name (each counted once, however many results share
          it) total at most ``max_size``.

        A result a fresh stage needs is never deleted by any rule: the current result of
        every fresh stage defined in this session, and of every stage known only from the
        store that ``status()`` shows fresh (its result, with every file it read unchanged,
        is what its cell or module will load when it is defined again). When those alone
        exceed ``max_size``, gc stops there and its report says so. The report counts the
        results each rule removed."""
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
        size = None if max_size is None else parse_size(max_size, "max_size")
        age = None if max_age is None else parse_duration(max_age, "max_age")
        found = self._check(None)
        fresh = {(name, v.record.fingerprint) for name, v in found.verdicts.items()
                 if v.record is not None}
        try:
            return self.store.gc(keep=keep, max_size=size, max_age=age, protect=fresh,
                                 grace=grace)
        except OSError as exc:
            err = limit_error(exc, self.store.url, action="collect garbage (gc)")
            if err is None:
                raise
            raise err from exc

    @_user_facing
    def graph(self, format: str = "mermaid", *, artifacts: bool = False) -> str:
        """The stage graph coloured by state: ``mermaid`` or ``dot`` text, or ``svg``.

        Stages only, edges labelled with the artifacts they carry, and a legend of the state
        colours; ``artifacts=True`` draws every artifact as a node of its own."""
        from .graph import render

        _checked_bool(artifacts, "graph", "artifacts")
        return render(self.status(), format, artifacts)


def _checked_params(params: Any, where: str) -> dict[str, dict[str, Any]]:
    """``params`` as ``{stage name: {parameter: value}}`` (copied), or an error that shows the
    shape expected."""
    if params is None:
        return {}
    example = "params={'train_model': {'epochs': 5}}"
    if not isinstance(params, Mapping):
        raise ParameterError(
            f"{where}(params=...) must map stage names to their parameters, e.g. {example}; "
            f"got {type(params).__name__} {short_repr(params)}")
    checked: dict[str, dict[str, Any]] = {}
    for name, values in params.items():
        if not isinstance(name, str):
            st = stage_of(name)
            hint = f": use its name, '{st.name}'" if st is not None else ""
            raise ParameterError(
                f"{where}(params=...): keys are stage names (strings), not "
                f"{type(name).__name__} {short_repr(name)}{hint}; e.g. {example}")
        if not isinstance(values, Mapping):
            raise ParameterError(
                f"{where}(params=...): the parameters of stage '{name}' must be a mapping of "
                f"parameter names to values, e.g. params={{'{name}': {{'epochs': 5}}}}; got "
                f"{type(values).__name__} {short_repr(values)}")
        for pname in values:
            if not isinstance(pname, str):
                raise ParameterError(
                    f"{where}(params=...): parameter names of stage '{name}' are strings, not "
                    f"{type(pname).__name__} {short_repr(pname)}; e.g. "
                    f"params={{'{name}': {{'epochs': 5}}}}")
        checked[name] = dict(values)
    return checked


def _is_bool(value: Any) -> bool:
    return isinstance(value, bool) or type(value).__name__ == "bool_"  # numpy's bool too


def _observed_changes(record: ResultRecord) -> list[str]:
    from . import _observe

    return _observe.changes(record.observed)


def _checked_bool(value: Any, where: str, what: str) -> None:
    """A flag given as something other than True/False ('no' is true) is refused."""
    if not _is_bool(value):
        raise InvalidArgumentError(
            f"{where}({what}={short_repr(value)}): {what} must be True or False, not "
            f"{type(value).__name__}")
