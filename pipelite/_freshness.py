"""Freshness: is each stage's stored result still valid, and if not, why (in words).

``check`` walks stages upstream first and gives each a ``Verdict``: fresh (a stored result
matches its fingerprint and every file it observed is unchanged), stale, missing, failed or
running. Checking never runs a stage and never rehashes stored data: inputs are compared by
their recorded hashes. ``diff`` turns two fingerprints into reasons.
"""
from __future__ import annotations

import datetime as _dt
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from . import _observe
from ._files import file_reasons
from ._gcpause import collector_paused
from ._resolve import Graph
from ._units import age_text
from .errors import ParameterError
from .fingerprint import Fingerprint, fingerprint_of
from .present import STATES
from .stage import Stage
from .store import FailureRecord, ResultRecord, Store

__all__ = ["STATES", "Check", "OutputInfo", "StageStatus", "Verdict", "check", "checked_record",
           "diff", "short_repr", "stored"]

NOT_CACHED = "not cached (cache=False): it runs every time it is needed"
RUNNING: set[tuple[str, str]] = set()  # (store url, stage) running in this process

Params = Mapping[str, Mapping[str, Any]]
LARGE = 64  # stages from which a check pauses the garbage collector (see _gcpause)


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
    failed_at: _dt.datetime | None = None  # when that failed run started, when failed
    # the notebook that defines it (``Stage.origin``), or for a stage known only from the
    # store, the one its latest stored result came from; None when unknown
    origin: str | None = None
    # its cache policies in words, for badges: "no-cache", "expires in 5 h", "ignores verbose"
    policies: tuple[str, ...] = ()

    @property
    def fresh(self) -> bool:
        return self.state == "fresh"


@dataclass
class Verdict:
    """One stage's state, why, and what was found for it in the store."""

    name: str
    state: str
    reasons: list[str]
    stage: Stage | None
    record: ResultRecord | None = None  # the stored result for the current fingerprint
    latest: ResultRecord | None = None
    fingerprint: Fingerprint | None = None
    failure: FailureRecord | None = None
    # (stage, state, first reason) of what makes this stage not fresh at the root: itself, or
    # the furthest upstream stage it waits on; a downstream reason names it
    root: tuple[str, str, str] | None = None


@dataclass
class Check:
    """The verdicts for ``order`` (the targets and what they need, upstream first)."""

    graph: Graph
    order: list[str]
    verdicts: dict[str, Verdict]
    cycles: dict[str, str] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Verdict:
        return self.verdicts[name]

    def statuses(self) -> list[StageStatus]:
        return [status_of(self.verdicts[n]) for n in self.order]


def stage_params(base: Params, extra: Params | None, name: str) -> dict[str, Any]:
    """The parameters given for stage ``name``: the pipeline's, overridden by the call's."""
    merged = dict(base.get(name, {}))
    merged.update((extra or {}).get(name, {}))
    return merged


def check(graph: Graph, targets: list[str], base: Params, params: Params | None = None, *,
          cut_cycles: bool = False, memo: dict | None = None) -> Check:
    """The verdict of every stage ``targets`` need. A cycle raises ``CycleError`` unless
    ``cut_cycles``: then its stages are checked on their own, stale with the cycle as reason.
    ``memo`` keeps digests across checks while no user code runs (see ``fingerprint_of``)."""
    cycles: dict[str, str] | None = {} if cut_cycles else None
    verdicts: dict[str, Verdict] = {}
    memo = {} if memo is None else memo
    with collector_paused(len(graph.registry) >= LARGE or len(targets) >= LARGE):
        order = graph.order(targets, cycles)
        for name in order:
            if cycles and name in cycles:
                verdicts[name] = _in_cycle(graph, name, cycles[name])
            elif graph.registry.get(name) is None:
                verdicts[name] = _store_only(graph.store, name)
            else:
                verdicts[name] = _defined(graph, name, verdicts,
                                          stage_params(base, params, name), memo)
            if (graph.store.url, name) in RUNNING:
                verdicts[name].state = "running"
    return Check(graph, order, verdicts, cycles or {})


def _in_cycle(graph: Graph, name: str, cycle: str) -> Verdict:
    latest = graph.store.latest(name)
    return Verdict(name, "stale" if latest else "missing",
                   [f"part of a cycle ({cycle}): split one of these stages"],
                   graph.registry.get(name), latest=latest)


def _store_only(store: Store, name: str) -> Verdict:
    """A stage known only from the store: fresh while the files it read are unchanged."""
    latest = store.latest(name)
    if latest is None:
        return Verdict(name, "missing", ["not defined in this session"], None)
    when = latest.started[:16].replace("T", " ")
    changed = _observe.changes(latest.observed)
    return Verdict(name, "stale" if changed else "fresh",
                   [f"not defined in this session (stored result from {when})", *changed],
                   None, latest=latest, record=None if changed else latest)


def _defined(graph: Graph, name: str, verdicts: Mapping[str, Verdict], params: dict[str, Any],
             memo: dict) -> Verdict:
    st = graph.registry.get(name)
    assert st is not None
    store = graph.store
    verdict = Verdict(name, "missing", [], st)
    input_hashes: dict[str, str] = {}
    blocked: list[str] = []
    for i in st.inputs:
        p = graph.producers.get(i)
        if p is None or p == name:
            blocked.append(f"needs artifact '{i}', which no stage produces")
            continue
        up = verdicts[p]
        if up.state != "fresh" or up.record is None:
            blocked.append(_upstream_reason(p, up))
            verdict.root = verdict.root or _root_of(p, up)
        elif i not in up.record.outputs:
            blocked.append(f"upstream stage '{p}' did not produce '{i}'")
        else:
            input_hashes[i] = up.record.outputs[i].hash
    if blocked:
        verdict.latest = store.latest(name)
        verdict.state = "stale" if verdict.latest else "missing"
        verdict.reasons = list(dict.fromkeys(blocked))
        return verdict
    try:
        resolved = st.resolve_params(params)
    except ParameterError as exc:
        verdict.latest = store.latest(name)
        verdict.state, verdict.reasons = "stale" if verdict.latest else "missing", [str(exc)]
        return verdict
    fp = fingerprint_of(st, resolved, input_hashes, memo)
    verdict.fingerprint = fp
    verdict.record, observed = checked_record(store, name, fp.digest)
    failure = store.failure(name)
    if failure is not None and failure.fingerprint == fp.digest:
        verdict.state, verdict.failure = "failed", failure
        verdict.latest = store.latest(name)
        verdict.reasons = [f"last run failed: {failure.error}"]
    elif not st.cache:
        verdict.state, verdict.record = "stale", None
        verdict.reasons = [NOT_CACHED]
    elif observed:  # the same fingerprint, but a file it read has changed
        verdict.state, verdict.latest, verdict.reasons = "stale", observed[0], observed[1]
    elif verdict.record is not None and (why := expired(st, verdict.record)):
        verdict.state, verdict.latest, verdict.reasons = "stale", verdict.record, [why]
        verdict.record = None
    elif verdict.record is not None:
        verdict.state = "fresh"
        _LAST_FRESH[(store.url, name)] = verdict.record
    elif (latest := _last_fresh(store, name) or store.latest(name)) is not None:
        verdict.state, verdict.latest = "stale", latest
        verdict.reasons = diff(latest.parts, latest.params, fp, resolved, graph.producers)
    else:
        verdict.reasons = ["no stored result"]
    return verdict


# the result each stage was last found fresh on in this process, by (store, stage): what
# changed is said against it (the store's newest result may be another one: a file put back
# as it was made an older result fresh again)
_LAST_FRESH: dict[tuple[str, str], ResultRecord] = {}


def _last_fresh(store: Store, name: str) -> ResultRecord | None:
    rec = _LAST_FRESH.get((store.url, name))
    if rec is None:
        return None
    if store.record(name, rec.fingerprint) is None:  # gone (gc, invalidate): not a reference
        _LAST_FRESH.pop((store.url, name), None)
        return None
    return rec


def _root_of(name: str, verdict: Verdict) -> tuple[str, str, str]:
    if verdict.root is not None:
        return verdict.root
    return name, verdict.state, verdict.reasons[0] if verdict.reasons else ""


def _upstream_reason(name: str, up: Verdict) -> str:
    """``upstream stage 'load' is stale: global 'SEED' changed``, naming the root cause, and
    the direct parent when the root is further up (``... (via 'clean')``)."""
    root, state, why = _root_of(name, up)
    text = f"upstream stage '{root}' is {state}" + (f": {why}" if why else "")
    return text if root == name else f"{text} (via '{name}')"


def stored(store: Store, name: str, fp: Fingerprint, forced: bool, fresh: bool = False,
           st: Stage | None = None) -> ResultRecord | None:
    """The stored result for this fingerprint, unless forced, its last run there failed, a
    file, module or directory it observed has changed since, it has expired (``st``'s
    ``expires_after``) or the stage is not cached. ``fresh``: the record as the store has it
    now (under the stage's lock: another machine may have stored it since this run's
    metadata snapshot)."""
    if forced or (st is not None and not st.cache):
        return None
    failure = store.failure(name)
    if failure is not None and failure.fingerprint == fp.digest:
        return None  # its last run at this fingerprint failed: try again
    rec = checked_record(store, name, fp.digest, fresh)[0]
    if rec is not None and st is not None and expired(st, rec):
        return None
    return rec


def expired(st: Stage, rec: ResultRecord) -> str | None:
    """``result expired (stored 26 h ago)`` if the stage's ``expires_after`` has passed since
    the result was stored; else None."""
    if st.expires_after is None:
        return None
    when = rec.started_at
    if when.tzinfo is None:
        when = when.replace(tzinfo=_dt.timezone.utc)
    age = (_dt.datetime.now(_dt.timezone.utc) - when).total_seconds() - rec.duration
    if age < st.expires_after:
        return None
    return f"result expired (stored {age_text(age)} ago)"


def checked_record(store: Store, name: str, digest: str, fresh: bool = False
                   ) -> tuple[ResultRecord | None, tuple[ResultRecord, list[str]] | None]:
    """The stored record for (stage, fingerprint) if its observed dependencies (files read,
    modules imported, directories listed while it ran) are unchanged; else (None, (record,
    reasons)). The one place every freshness check (status, explain, plan, run, load, and
    executor workers) validates observed dependencies."""
    rec = store.record(name, digest, fresh=fresh)
    if rec is None or not rec.observed:
        return rec, None
    reasons = _observe.changes(rec.observed)
    if reasons:
        # another process may have rerun it since this process cached the record
        again = store.record(name, digest, cached=False, fresh=True)
        if again is not None and again is not rec and again != rec:
            rec = again
            reasons = _observe.changes(rec.observed)
    return (None, (rec, reasons)) if reasons else (rec, None)


def diff(before: Mapping[str, Any], shown: Mapping[str, str], fp: Fingerprint,
         params: Mapping[str, Any], producers: Mapping[str, str]) -> list[str]:
    """Why a result stored for fingerprint parts ``before`` (with parameters ``shown`` as
    recorded) does not match the fingerprint ``fp``, in words."""
    now = fp.parts
    reasons: list[str] = []
    if before.get("code") != now["code"]:
        reasons.append("its code changed")
    reasons += _named_changes(before, now)
    b, n = before.get("params", {}), now["params"]
    for k in sorted(set(b) | set(n)):
        if b.get(k) != n.get(k):
            reasons.append(f"parameter '{k}' changed: {shown.get(k, '(unset)')} -> "
                           f"{short_repr(params[k]) if k in params else '(unset)'}")
    b, n = before.get("inputs", {}), now["inputs"]
    for k in sorted(set(b) | set(n)):
        if b.get(k) != n.get(k):
            src = producers.get(k)
            reasons.append(f"input '{k}' changed" + (f" (new content from stage '{src}')"
                                                     if src else ""))
    reasons += _file_changes(before, now)
    reasons += _env_changes(before.get("env", {}), now.get("env", {}))
    if before.get("outputs") != now["outputs"]:
        reasons.append(f"its outputs changed: {before.get('outputs')} -> {now['outputs']}")
    return reasons or ["its fingerprint changed (a newer PipeLite or Python)"]


def _named_changes(before: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """Helpers and globals the stage now uses, no longer uses, or that changed."""
    reasons: list[str] = []
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
    return reasons


def _file_changes(before: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """Input files (``File`` parameters, ``--file``) that changed, by name: for a folder
    with a kept listing, which of its files."""
    b, n = before.get("files", {}), now.get("files", {})
    bl, nl = before.get("listings", {}), now.get("listings", {})
    reasons: list[str] = []
    for k in sorted(set(b) | set(n)):
        if b.get(k) != n.get(k):
            reasons += file_reasons(k, b.get(k), n.get(k), bl.get(k), nl.get(k))
    if len(reasons) > _observe.MAX_REASONS:
        more = len(reasons) - _observe.MAX_REASONS + 1
        reasons = reasons[: _observe.MAX_REASONS - 1] + [f"and {more} more files changed"]
    return reasons


def _env_changes(b: Mapping[str, str], n: Mapping[str, str]) -> list[str]:
    reasons: list[str] = []
    for k in sorted(set(b) | set(n)):
        if k not in b:
            reasons.append(f"now depends on environment variable '{k}'")
        elif k not in n:
            reasons.append(f"no longer depends on environment variable '{k}'")
        elif b[k] != n[k]:
            reasons.append(f"environment variable '{k}' changed" + (
                " (now unset)" if n[k] == "<unset>" else
                " (was unset)" if b[k] == "<unset>" else ""))
    return reasons


def _started(failure: FailureRecord | None) -> _dt.datetime | None:
    if failure is None or not failure.started:
        return None
    try:
        return _dt.datetime.fromisoformat(failure.started)
    except ValueError:  # checked when the record was read; never a traceback for it
        return None


def status_of(verdict: Verdict) -> StageStatus:
    rec = verdict.record if verdict.record is not None else verdict.latest
    stored_outputs = rec.outputs if rec is not None else {}
    outputs = tuple(OutputInfo(k, v.size, v.format, v.summary or "", v.hash)
                    for k, v in stored_outputs.items())
    st = verdict.stage
    inputs = st.inputs if st else tuple(rec.inputs if rec is not None else ())
    produces = tuple((st.outputs if st else None) or stored_outputs)
    if st is not None:
        origin = st.origin
    else:
        latest = verdict.latest if verdict.latest is not None else verdict.record
        origin = latest.origin if latest is not None else None
    return StageStatus(
        name=verdict.name,
        state=verdict.state,
        reasons=tuple(verdict.reasons),
        outputs=outputs,
        inputs=tuple(inputs),
        last_run=rec.started_at if rec is not None else None,
        duration=rec.duration if rec is not None else None,
        fingerprint=verdict.fingerprint.digest if verdict.fingerprint else None,
        defined=st is not None,
        error=verdict.failure.error if verdict.failure else None,
        produces=produces,
        traceback=verdict.failure.traceback if verdict.failure else None,
        failed_at=_started(verdict.failure),
        origin=origin,
        policies=_policies(st, verdict.record),
    )


def _policies(st: Stage | None, record: ResultRecord | None) -> tuple[str, ...]:
    """A stage's cache policies in a few words each (the panel shows them as badges)."""
    if st is None:
        return ()
    out = []
    if not st.cache:
        out.append("no-cache")
    if st.expires_after is not None:
        if record is not None:
            when = record.started_at
            if when.tzinfo is None:
                when = when.replace(tzinfo=_dt.timezone.utc)
            age = (_dt.datetime.now(_dt.timezone.utc) - when).total_seconds() - record.duration
            out.append(f"expires in {age_text(max(0.0, st.expires_after - age))}")
        else:
            out.append(f"expires after {age_text(st.expires_after)}")
    if st.ignore:
        out.append("ignores " + ", ".join(sorted(st.ignore)))
    return tuple(out)


_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def short_repr(value: Any, limit: int = 60) -> str:
    """A parameter as the user wrote it, without memory addresses (they change every run and
    say nothing about what changed)."""
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - a broken __repr__ must not break a status
        text = f"<{type(value).__qualname__}>"
    text = _ADDRESS.sub("", text)
    return text if len(text) <= limit else text[: limit - 3] + "..."
