"""How PipeLite shows things to people: state names and colours, sizes and durations (and
reading them as people write them: ``parse_duration("1d")``, ``parse_size("20 GiB")``), the
status table, the explain text, and which frames of a traceback are the user's.

The command line, the magics, the panel and the graph all draw from here, so they agree.

>>> from pipelite import Pipeline
>>> from pipelite.present import status_table
>>> print(status_table(Pipeline().status()))      # the table ``%pipelite status`` shows
"""
from __future__ import annotations

import datetime as _dt
import os
import sys
import types
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from ._units import age_text, parse_duration, parse_size

if TYPE_CHECKING:
    from ._records import ResultRecord
    from .pipeline import StageStatus

__all__ = [
    "STATES",
    "STATE_COLOURS",
    "human_bytes",
    "human_duration",
    "local_time",
    "status_table",
    "explain_text",
    "provenance_text",
    "changed_parts",
    "log_text",
    "user_frames",
    "calling_frames",
    "error_view",
    "age_text",
    "parse_duration",
    "parse_size",
]

# What StageStatus.state can be, in the order counts are shown.
STATES = ("fresh", "stale", "missing", "failed", "running")

# fill, stroke per state: the graph, the panel and the status table's HTML
STATE_COLOURS = {
    "fresh": ("#d1f2d9", "#2e7d32"),
    "stale": ("#fff1c2", "#b26a00"),
    "missing": ("#e8e8e8", "#616161"),
    "failed": ("#ffd6d6", "#c62828"),
    "running": ("#d6e6ff", "#1565c0"),
}


# -- sizes and durations in words people read ---------------------------------------------
def human_bytes(n: float) -> str:
    """``208 B``, ``7.9 KiB``, ``1.0 GiB``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover - unreachable


def human_duration(seconds: float) -> str:
    """``338 µs``, ``12 ms``, ``3.4 s``, ``2 min 5 s``."""
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    return f"{int(seconds // 60)} min {seconds % 60:.0f} s"


# -- times: one convention everywhere -------------------------------------------------------
def local_time(when: _dt.datetime | str | None, full: bool = False) -> str:
    """A stored time (records keep UTC ISO) as people read it: in this machine's local time,
    ``2026-11-27 14:05``; ``full`` adds the seconds and the zone, ``2026-11-27 14:05:09 CET``.
    Every time PipeLite shows goes through here: cell messages, the panel, status, explain and
    the command line."""
    if when is None:
        return "-"
    if isinstance(when, str):
        try:
            moment = _dt.datetime.fromisoformat(when)
        except ValueError:
            return when
    else:
        moment = when
    local = moment.astimezone() if moment.tzinfo else moment
    if not full:
        return local.strftime("%Y-%m-%d %H:%M")
    return local.strftime("%Y-%m-%d %H:%M:%S ") + (local.tzname() or local.strftime("%z"))


# -- texts --------------------------------------------------------------------------------
def status_table(statuses: Sequence[StageStatus], in_session: bool = True) -> str:
    """A plain-text table of ``Pipeline.status()``: what ``pipelite status`` prints and
    ``%pipelite status`` shows as text.

    ``in_session=False`` (the command line, where no stage is defined): a stage known from the
    store only is ``stored`` rather than ``fresh``, and the WHY column is left to LAST RUN.
    """
    rows = [("STAGE", "STATE", "LAST RUN", "TOOK", "OUTPUTS", "WHY")]
    for s in statuses:
        outs = ", ".join(f"{o.name} ({human_bytes(o.size)})" for o in s.outputs)
        state, why = s.state, "; ".join(s.reasons) or "-"
        if not in_session and not s.defined:
            state = "stored" if state == "fresh" else state
            # a failure is worth its line; other reasons need the code, which is not here
            why = (s.error or "-").splitlines()[0] if state == "failed" else "-"
        rows.append((
            s.name + ("" if s.defined or not in_session else " *"),
            state,
            local_time(s.last_run),
            human_duration(s.duration) if s.duration is not None else "-",
            outs or "-",
            why,
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    # the last column (WHY) is not padded: zip stops at the widths
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1]
             for r in rows]
    if in_session and any(not s.defined for s in statuses):
        lines.append("* known from the store only (not defined in this session)")
    return "\n".join(line.rstrip() for line in lines)


def explain_text(status: StageStatus, blind_spots: Iterable[str] = (),
                 provenance: Mapping[str, Any] | None = None,
                 accepted: Mapping[str, Any] | None = None,
                 notes: Iterable[str] = ()) -> str:
    """Why a stage is in its state, in words: what ``Pipeline.explain`` returns.

    ``blind_spots`` are what PipeLite cannot see in the stage's code (a shell command in a
    cell), listed after the reasons. ``provenance``: of the current (or last) stored result,
    shown as ``run: ID on USER@HOST, git COMMIT (dirty)``."""
    s = status
    lines = [f"stage '{s.name}' is {s.state}" + ("" if s.defined else
                                               " (not defined in this session)")]
    if s.state == "fresh" and s.defined:
        lines[0] += ": its code, parameters, globals and inputs match the stored result"
    lines += [f"  - {r}" for r in s.reasons]
    lines += [f"  - blind spot: {b}" for b in blind_spots]
    if s.origin:
        lines.append(f"defined in: {s.origin}")
    if s.last_run:
        lines.append(f"last run: {local_time(s.last_run, full=True)}, took "
                     f"{human_duration(s.duration or 0.0)}")
    if provenance:
        lines.append(f"run: {provenance_text(provenance)}")
    if accepted:
        why = "; ".join(accepted.get("reasons") or ()) or "no change named"
        lines.append(f"accepted: {local_time(accepted.get('at'), full=True)}, without running, "
                     f"in place of the result for fingerprint {str(accepted.get('from'))[:12]} "
                     f"({why})")
    if s.outputs:
        lines.append("outputs: " + ", ".join(f"{o.name} ({o.summary}, {human_bytes(o.size)})"
                                              for o in s.outputs))
    lines += [f"note: {n}" for n in notes]
    return "\n".join(lines)


def provenance_text(provenance: Mapping[str, Any] | None) -> str:
    """A record's provenance in one line: ``ID on USER@HOST, git 1a2b3c4d5e6f (dirty)``."""
    p = provenance or {}
    if not p:
        return "unknown (recorded before PipeLite kept provenance)"
    text = f"{p.get('run_id') or '?'} on {p.get('user') or '?'}@{p.get('host') or '?'}"
    commit = p.get("git_commit")
    if isinstance(commit, str):
        text += f", git {commit[:12]}" + (" (dirty)" if p.get("git_dirty") else "")
    return text


_PART_LABELS = (("helpers", "helper"), ("globals", "global"), ("params", "parameter"),
                ("inputs", "input"), ("env", "environment variable"), ("files", "file"))


def changed_parts(older: Mapping[str, Any], newer: Mapping[str, Any]) -> list[str]:
    """The names of the fingerprint parts (``ResultRecord.parts``) that differ between two
    results: ``code``, ``global 'EPOCHS'``, ``parameter 'n'``, ``input 'x'``..."""
    out: list[str] = []
    if older.get("code") != newer.get("code"):
        out.append("code")
    for key, label in _PART_LABELS:
        b, n = older.get(key) or {}, newer.get(key) or {}
        if not (isinstance(b, Mapping) and isinstance(n, Mapping)):
            continue
        for k in sorted(set(b) | set(n)):
            if b.get(k) != n.get(k):
                out.append(k if " " in k else f"{label} '{k}'")
    # listings only detail "files" (which file of a folder): not a change of their own
    labelled = {"code", "reach", "listings", *(key for key, _ in _PART_LABELS)}
    for key in sorted((set(older) | set(newer)) - labelled):
        if older.get(key) != newer.get(key):
            out.append(key)
    # "reach" digests all the code and globals reached: named only when nothing else says it
    if not out and older.get("reach") != newer.get("reach"):
        out.append("code it reaches")
    return out


def log_text(stage: str, records: Sequence[ResultRecord]) -> str:
    """The stored results of ``stage`` (``records`` newest first), one block each: what
    ``pipelite log STAGE`` prints. Each block says what changed since the next older one."""
    if not records:
        return f"stage '{stage}' has no stored results"
    blocks = []
    for i, rec in enumerate(records):
        p = rec.provenance or {}
        lines = [f"run {rec.run_id or '-'}  (result {rec.fingerprint[:12]})",
                 f"  time:     {local_time(rec.started, full=True)}, took "
                 f"{human_duration(rec.duration)}"]
        if p:
            lines.append(f"  by:       {p.get('user') or '?'}@{p.get('host') or '?'}")
            commit = p.get("git_commit")
            if isinstance(commit, str):
                lines.append(f"  git:      {commit}" + (" (dirty)" if p.get("git_dirty") else ""))
        else:
            lines.append("  by:       unknown (recorded before PipeLite kept provenance)")
        if rec.params:
            lines.append("  params:   " + ", ".join(f"{k}={v}" for k, v in rec.params.items()))
        if i + 1 < len(records):
            changed = changed_parts(records[i + 1].parts, rec.parts)
            lines.append("  changed:  " + (", ".join(changed) if changed else "nothing"))
        else:
            lines.append("  changed:  (oldest stored result)")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


# -- tracebacks: the user's frames, not PipeLite's -----------------------------------------
_CORE = os.path.dirname(os.path.abspath(__file__))
# PipeLite's own code: the core and, beside it in the same distribution, the extension
_INTERNAL_DIRS = (_CORE + os.sep,
                  os.path.join(os.path.dirname(_CORE), "pipelite_ipy") + os.sep)


def _internal(node: types.TracebackType) -> bool:
    return os.path.abspath(node.tb_frame.f_code.co_filename).startswith(_INTERNAL_DIRS)


# plumbing between PipeLite's frames and the user's: an executor's (Dask rebuilds the
# worker's frames, PipeLite's among them, under its own Future.result), and the event loop
# that runs an async stage's coroutine
_PLUMBING = tuple(os.sep + os.path.join(*parts) + os.sep for parts in (
    ("distributed",), ("concurrent", "futures"), ("asyncio",)))


def _plumbing(node: types.TracebackType) -> bool:
    return any(part in node.tb_frame.f_code.co_filename for part in _PLUMBING)


def user_frames(tb: types.TracebackType | None) -> types.TracebackType | None:
    """The part of ``tb`` that is the user's code that PipeLite called (a stage, a cell):
    from the first frame outside PipeLite that follows one of PipeLite's.

    Without such a frame (the error came from PipeLite itself) ``tb`` is returned whole."""
    seen_internal = False
    node = tb
    while node is not None:
        if _internal(node):
            seen_internal = True
        elif seen_internal and not _plumbing(node):
            return node
        node = node.tb_next
    return tb


def calling_frames(tb: types.TracebackType | None) -> types.TracebackType | None:
    """The frames of ``tb`` before PipeLite's first: the user's code that called PipeLite.

    A new traceback (``tb`` is left as it is); None when PipeLite's frame comes first,
    ``tb`` itself when it has none of PipeLite's."""
    outside: list[types.TracebackType] = []
    node = tb
    while node is not None and not _internal(node):
        outside.append(node)
        node = node.tb_next
    if node is None:
        return tb
    head = None
    for frame in reversed(outside):
        head = types.TracebackType(head, frame.tb_frame, frame.tb_lasti, frame.tb_lineno)
    return head


def error_view(exc: BaseException) -> list[str]:
    """How IPython shows a ``PipeliteError`` (its ``_render_traceback_``): the user's frames
    that called PipeLite, then the error in one line; PipeLite's frames are left out (a
    ``__cause__`` is shown above it, as IPython always does).

    Outside a running IPython, just the one line. IPython is never imported here: only a
    shell that is running calls this."""
    line = f"{type(exc).__name__}: {exc}"
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    tb = calling_frames(exc.__traceback__)
    if shell is None or tb is None:
        return [line]
    return shell.InteractiveTB.structured_traceback(type(exc), exc, tb)
