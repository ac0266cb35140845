"""Which stored results gc keeps: the policies (``keep=``, ``max_age=``, ``max_size=``) and
when each result was last used.

A result is *used* when it is loaded or reused: a ``run()`` that skips its stage because the
stored record matches, ``Pipeline.load``, a ``%%stage`` cell loading its outputs. The store
keeps one small file per result, ``used/<stage>/<fingerprint>``, holding that time (seconds
since the epoch, as text). It lives outside ``records/`` on purpose: a remote store replaces
its generation token on every change under ``records/`` (``FsspecFS._changed``), and a stamp
written on every read would make every reader list the records again. Stamps are hints:
written at most once an hour per result per process (``UsageMemory``), never fsync'ed, and a
stamp that cannot be written (a read-only store, a full disk) is skipped silently. A stamp
that is not one (garbage, too large, in the future, a symbolic link) counts as no stamp, and
a result never stamped counts as used when its run ended (its record's start + duration).

This module decides; ``Store.gc`` reads the store and deletes.
"""
from __future__ import annotations

import math
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from ._records import ResultRecord

__all__ = ["STAMP_LIMIT", "USED_EVERY", "Retention", "StoredResult", "UsageMemory",
           "last_used", "now", "parse_stamp", "retain", "stamp_bytes"]

USED_EVERY = 3600.0  # seconds: a result's stamp is rewritten at most this often per process
STAMP_LIMIT = 32  # bytes: a stamp is one number; anything longer is not one of ours
_FUTURE_SLACK = 86400.0  # seconds of clock skew between machines a stamp may be ahead by
_STAMP = re.compile(rb"\s*(\d{1,12}(?:\.\d{1,9})?)\s*\Z")


def now() -> float:
    """The time uses are stamped and judged by (a function, so tests can move it)."""
    return time.time()


def stamp_bytes(when: float) -> bytes:
    return f"{when:.3f}\n".encode()


def parse_stamp(data: bytes | None, at: float) -> float | None:
    """The time in a stamp file's bytes, or None when they are not a stamp (absent, not a
    plain number, or later than ``at`` beyond clock skew: a stamp from the future would keep
    its result forever)."""
    if data is None or len(data) > STAMP_LIMIT:
        return None
    m = _STAMP.match(data)
    if m is None:
        return None
    when = float(m.group(1))
    return when if math.isfinite(when) and when <= at + _FUTURE_SLACK else None


def finished_at(record: ResultRecord) -> float:
    """When the record's run ended (its start + duration), 0 if that cannot be told."""
    try:
        started = record.started_at.timestamp()
    except (ValueError, OverflowError, OSError):
        return 0.0
    duration = record.duration
    if isinstance(duration, (int, float)) and math.isfinite(duration) and duration > 0:
        started += duration
    return started


def last_used(record: ResultRecord, stamp: float | None) -> float:
    """When a result was last used: its stamp, or when its run ended if that is later (a
    result recomputed for the same fingerprint is new again) or there is no stamp."""
    ended = finished_at(record)
    return ended if stamp is None else max(stamp, ended)


class UsageMemory:
    """What this process stamped, so a result is stamped at most once per ``USED_EVERY``
    (a loop loading an artifact writes one small file, not one per load). Shared by every
    ``Store`` of a URL in the process."""

    LIMIT = 100_000  # results remembered; past it the memory starts again (one more stamp each)

    def __init__(self) -> None:
        self._stamped: dict[tuple[str, str, str], float] = {}
        self._lock = threading.Lock()

    def due(self, url: str, stage: str, fingerprint: str, when: float, forced: bool) -> bool:
        """Whether to write a stamp at ``when`` (``forced``: an explicit time, always);
        it is remembered as written either way: a stamp that failed is not retried each
        load."""
        key = (url, stage, fingerprint)
        with self._lock:
            last = self._stamped.get(key)
            if not forced and last is not None and 0 <= when - last < USED_EVERY:
                return False
            if len(self._stamped) >= self.LIMIT:
                self._stamped.clear()
            self._stamped[key] = when
            return True


@dataclass(frozen=True)
class StoredResult:
    """One stored result as the policies see it."""

    stage: str
    fingerprint: str
    rank: int  # 0 for its stage's newest result (by start time), 1 for the next, ...
    last_used: float  # seconds since the epoch
    sizes: Mapping[str, int] = field(default_factory=dict)  # object path -> bytes
    protected: bool = False  # a fresh stage's current result: never removed


@dataclass(frozen=True)
class Retention:
    """What the policies decided: the results each rule removes (each result under the
    first rule that removes it) and, with ``max_size``, the bytes the kept results name."""

    beyond_keep: tuple[StoredResult, ...] = ()
    unused: tuple[StoredResult, ...] = ()  # last used longer than max_age ago
    least_used: tuple[StoredResult, ...] = ()  # removed, least recently used first, for max_size
    kept_bytes: int | None = None  # None without max_size
    above_max_size: int = 0  # kept_bytes when protected results alone exceed max_size

    @property
    def removed(self) -> tuple[StoredResult, ...]:
        return self.beyond_keep + self.unused + self.least_used


def retain(results: Sequence[StoredResult], keep: int, max_age: float | None,
           max_size: int | None, at: float) -> Retention:
    """Apply the rules in order: ``keep`` (the newest ``keep`` per stage stay), ``max_age``
    (results last used more than ``max_age`` seconds before ``at`` go, whatever their rank),
    ``max_size`` (the least recently used go until the objects the rest name, each counted
    once, total at most ``max_size`` bytes). A protected result is never removed; when the
    protected results alone name more than ``max_size``, ``above_max_size`` says how much."""
    beyond_keep = [r for r in results if r.rank >= keep and not r.protected]
    kept = [r for r in results if r.rank < keep or r.protected]
    unused: list[StoredResult] = []
    if max_age is not None:
        unused = [r for r in kept if not r.protected and at - r.last_used > max_age]
        kept = [r for r in kept if r.protected or at - r.last_used <= max_age]
    if max_size is None:
        return Retention(tuple(beyond_keep), tuple(unused))
    refs: Counter[str] = Counter()
    sizes: dict[str, int] = {}
    for r in kept:
        for rel, size in r.sizes.items():
            refs[rel] += 1
            sizes[rel] = max(size, sizes.get(rel, 0))
    total = sum(sizes.values())
    dropped: list[StoredResult] = []
    order = sorted((r for r in kept if not r.protected),
                   key=lambda r: (r.last_used, r.stage, r.fingerprint))
    for r in order:
        if total <= max_size:
            break
        dropped.append(r)
        for rel in r.sizes:
            refs[rel] -= 1
            if refs[rel] == 0:
                total -= sizes[rel]
    # a result whose every object stays (a result kept names it too) frees nothing: keep it
    least_used = tuple(r for r in dropped if not all(refs[rel] > 0 for rel in r.sizes))
    return Retention(tuple(beyond_keep), tuple(unused), least_used, total,
                     total if total > max_size else 0)
