"""The artifact store: content-addressed objects and one JSON record per result.

Layout under the store root (local directory or any fsspec URL)::

    objects/ab/ab12...ef.npy        values, named by the xxh3-128 hash of their bytes
    quarantine/                     damaged objects, moved aside (never deleted) when found
    records/<stage>/<fingerprint>.json   one human-readable record per stored result
    records/<stage>/LATEST          the fingerprint of the stage's newest result
    records/<stage>/FAILED.json     the last failed run, until the next success
    tmp/                            files being written (renamed into place when complete)
    trash/                          record folders being removed by invalidate
    locks/                          per-(stage, fingerprint) lock files (local stores)
    used/<stage>/<fingerprint>      when the result was last loaded or reused (a hint for
                                    gc's max_age and max_size; see pipelite._retention)
    .gitignore                      "*", written when the store's root is created

``Store`` works through a ``pipelite._fs.StoreFS`` (a local directory or any fsspec
filesystem): this module keeps the layout and the rules, the filesystem only moves bytes.

A result becomes visible only when its record is written, and the record is written last,
after every object it names is complete on disk: a crash at any point leaves no partial result.

Everything read back is input. Paths come from validated names and hashes only, never from a
record; every path is checked to lie under the store root, and symbolic links are not followed
(a symlinked folder or file inside the store is refused): nothing outside the store is ever
opened, renamed or deleted.
"""
from __future__ import annotations

import contextlib
import datetime
import functools
import json
import os
import pathlib
import re
import stat as _stat
import time
import uuid
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable, Iterator, Mapping

import filelock
import xxhash

from . import _retention
from ._encode import warn_user
from ._files import File, in_place, output_key, restore, target_of
from ._fs import TMP_NAME as _TMP_NAME
from ._fs import FsspecFS, StoreFS, make_local_root, open_fs
from ._fs import fsync_file as _fsync_file
from ._fs import remove_quietly as _remove_quietly
from ._integrity import CHEAP_VERIFY_BYTES, check_content, sample_digest
from ._lease import HEARTBEAT_EVERY, LEASE_TIMEOUT, Lease
from ._location import Location, check_store_location, parse_location, parse_storage_options
from ._records import (
    FORMAT_VERSION,
    BadRecord,
    FailureRecord,
    InputRecord,
    OutputRecord,
    ResultRecord,
    is_fingerprint,
)
from ._retention import StoredResult, UsageMemory, retain
from ._trust import SAFE_FORMATS, is_signed, key_source, signature
from ._units import age_text, parse_duration, parse_size
from .errors import (
    CorruptArtifactError,
    InvalidArgumentError,
    PipeliteError,
    StoreLocationError,
    StoreNotWritableError,
    UnsafeStorePathError,
    UntrustedRecordError,
    limit_error,
)
from .formats import PICKLE, format_for, format_named, hash_file
from .present import human_bytes
from .stage import _STAGE_NAME, MAX_NAME_LENGTH

__all__ = ["Store", "GcReport", "ScrubReport", "ResultRecord", "OutputRecord", "InputRecord",
           "FailureRecord", "FORMAT_VERSION", "Location", "parse_location",
           "parse_storage_options",
           "check_store_location"]

def _record_text(record: dict) -> str:
    """A record as indented JSON, with each observed file, module or listing on one line.

    Indented JSON is written by the json module's pure-Python encoder: for a stage that read
    10,000 files that alone took 0.4 s. Long lists of small entries go through the C encoder,
    one entry a line, which reads as well."""
    observed = record.get("observed")
    if not observed:
        return json.dumps(record, indent=1)
    rest = {k: v for k, v in record.items() if k != "observed"}
    sections = ",\n".join(
        f"  {json.dumps(kind)}: [\n   " + ",\n   ".join(json.dumps(e) for e in entries) + "\n  ]"
        for kind, entries in observed.items())
    head = json.dumps(rest, indent=1)[:-2] + ",\n" if rest else "{\n"
    return head + ' "observed": {\n' + sections + "\n }\n}"


_OBJECT_PREFIX = re.compile(r"[0-9a-f]{2}\Z")
_OBJECT_NAME = re.compile(r"[0-9a-f]{32}(?:\.[A-Za-z0-9_-]{1,12}){0,2}\Z")
GC_GRACE = 3600.0  # seconds: gc never collects a file younger than this


def _bytes_loader(name: str) -> Callable[[bytes], Any] | None:
    """The format's ``loads`` (from bytes), None if it has none or is not registered here."""
    try:
        return format_named(name).loads
    except PipeliteError:  # not registered: load_value's usual path says so
        return None


# Small objects kept in memory once verified (see ``Store._read_verified``): a bound on both
SMALL_CACHE_BYTES = 32 << 20
SMALL_CACHE_FILES = 4096
# Values that nobody can change in place: loaded once from the same verified bytes, the same
# object can be returned again (a tiny stage's metric, a count, a name)
_IMMUTABLE_SCALARS = frozenset({int, float, complex, bool, str, bytes, type(None)})


def _parse_json(data: bytes) -> Any:
    """A record file's JSON; ``BadRecord`` if it is not JSON at all."""
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:  # RecursionError: absurdly deep nesting
        raise BadRecord(f"it is not JSON ({type(exc).__name__})") from None


def _content_stamp(data: bytes) -> tuple:
    """A remote record's version, from its bytes (an object store has no cheap stamp: the
    record is fetched whole, one request, and parsed again only if its bytes changed)."""
    return (len(data), xxhash.xxh3_64_intdigest(data))


def _is_committed_record(name: str) -> bool:
    """A file of a stage's record folder that a writer has committed (not a temporary one)."""
    return name in ("LATEST", "FAILED.json") or (
        name.endswith(".json") and is_fingerprint(name[:-5]))


@functools.lru_cache(maxsize=1 << 16)  # asked for every stage on every check
def _checked_record_rel(stage: str, fingerprint: str) -> str:
    if not _valid_stage_dir(stage) or not is_fingerprint(fingerprint):
        raise UnsafeStorePathError(f"refusing a record of stage {stage!r} for fingerprint "
                                   f"{fingerprint!r}: not a stage name and a fingerprint")
    return f"records/{stage}/{fingerprint}.json"


def _used_rel(stage: str, fingerprint: str) -> str:
    """Where the last use of a result is stamped: from a validated stage name and
    fingerprint only (``UnsafeStorePathError`` otherwise), never from what a listing says."""
    rel = Store._record_rel(stage, fingerprint)  # records/<stage>/<fingerprint>.json
    return f"used/{rel[len('records/'):-len('.json')]}"


_USAGE = UsageMemory()  # what this process stamped, for every store


def _is_stage_dir(name: Any) -> bool:
    return isinstance(name, str) and _valid_stage_dir(name)


@functools.lru_cache(maxsize=1 << 16)
def _valid_stage_dir(name: str) -> bool:
    return len(name) <= MAX_NAME_LENGTH and _STAGE_NAME.match(name) is not None


@dataclass(frozen=True)
class GcReport:
    """What ``gc`` removed: ``records`` in all, of which ``beyond_keep`` by ``keep``,
    ``unused`` by ``max_age`` and ``least_used`` by ``max_size``. ``above_max_size``: the
    bytes the results of fresh stages (never removed) still name when that alone is more
    than ``max_size`` (0 otherwise)."""

    records: int
    objects: int
    bytes: int
    uploads: int = 0  # interrupted multipart uploads aborted (S3)
    beyond_keep: int = 0
    unused: int = 0
    least_used: int = 0
    keep: int = 1
    max_age: float | None = None
    max_size: int | None = None
    above_max_size: int = 0

    def __str__(self) -> str:
        text = (f"removed {self.records} record(s) and {self.objects} object(s), "
                f"freeing {human_bytes(self.bytes)}")
        rules = []
        if self.beyond_keep:
            rules.append(f"{self.beyond_keep} beyond the newest {self.keep} per stage")
        if self.unused and self.max_age is not None:
            rules.append(f"{self.unused} unused for over {age_text(self.max_age)} (max_age)")
        if self.least_used and self.max_size is not None:
            rules.append(f"{self.least_used} least recently used (max_size "
                         f"{human_bytes(self.max_size)})")
        if rules:
            text += "; records: " + ", ".join(rules)
        if self.above_max_size and self.max_size is not None:
            text += (f"; {human_bytes(self.above_max_size)} still used by fresh stages, above "
                     f"max_size {human_bytes(self.max_size)}")
        if self.uploads:
            text += f"; aborted {self.uploads} interrupted upload(s)"
        return text


@dataclass(frozen=True)
class ScrubReport:
    """What ``Store.scrub`` (``pipelite verify``) checked and found."""

    records: int
    objects: int
    bytes: int
    damaged: tuple[tuple[str, str, str | None], ...]  # (path, what is wrong, moved to)
    missing: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.damaged and not self.missing

    def __str__(self) -> str:
        lines = [f"checked {self.objects} object(s) ({human_bytes(self.bytes)}) named by "
                 f"{self.records} record(s): "
                 + ("all intact" if self.ok else
                    f"{len(self.damaged)} damaged, {len(self.missing)} missing")]
        lines += [f"  damaged: {path} ({why})" + (f", moved to {moved}" if moved else "")
                  for path, why, moved in self.damaged]
        lines += [f"  missing: {path}" for path in self.missing]
        if not self.ok:
            lines.append("  the stages whose results named them will recompute on their next run")
        return "\n".join(lines)


def _summary(value: Any) -> str:
    if isinstance(value, File):
        return f"file {value.key}"
    shape = getattr(value, "shape", None)
    dtype = getattr(value, "dtype", None)
    name = type(value).__name__
    if shape is not None and dtype is not None:
        return f"{name} {dtype} {tuple(shape)}"
    if shape is not None:
        return f"{name} {tuple(shape)}"
    if isinstance(value, (list, dict, tuple, set, str, bytes)):
        return f"{name} of length {len(value)}"
    return name


def _decoded(load: Callable[[Any], Any], source: Any, where: str) -> Any:
    """``load(source)`` (a path or the file's bytes); a file its format cannot read is a
    corrupt file: ``CorruptArtifactError`` naming ``where``."""
    try:
        return load(source)
    except PipeliteError:
        raise
    except Exception as exc:  # noqa: BLE001 - an unreadable file is a corrupt file
        raise CorruptArtifactError(where, f"it cannot be read: {exc}") from None


class Store:
    """Records and objects under one location (a local path or an fsspec URL)."""

    def __init__(self, location: str | os.PathLike = ".pipelite",
                 storage_options: Mapping[str, Any] | None = None):
        """``storage_options`` go to the fsspec filesystem (e.g. S3 credentials, endpoint_url)."""
        if not isinstance(location, (str, os.PathLike)):
            raise StoreLocationError(f"store must be a path or an fsspec URL string, not "
                                     f"{type(location).__name__}")
        loc = os.fspath(location)
        if not isinstance(loc, str):
            raise StoreLocationError(f"store must be a path or an fsspec URL string, not "
                                     f"{type(loc).__name__} (from {type(location).__name__})")
        check_store_location(loc, storage_options)  # an empty path, a file, no such protocol
        self._fs: StoreFS = open_fs(loc, dict(storage_options or {}))
        self._records: dict[str, tuple[tuple, ResultRecord]] = {}  # rel -> (stamp, record)
        self._reported: set[tuple] = set()  # corrupt records already reported
        # small verified objects: (rel, hash, size) -> (stamp, bytes), oldest first
        self._small: dict[tuple, tuple[tuple, bytes]] = {}
        self._small_bytes = 0
        self._scalars: dict[str, tuple[bytes, Any]] = {}  # hash -> (those bytes, their value)
        self.verify_level = "sampled"  # see pipelite._integrity

    @property
    def url(self) -> str:
        """Where the store lives (absolute path or URL)."""
        return self._fs.url

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    # -- records ------------------------------------------------------------------------------
    @staticmethod
    def _record_rel(stage: str, fingerprint: str) -> str:
        if type(stage) is str and type(fingerprint) is str:
            return _checked_record_rel(stage, fingerprint)
        raise UnsafeStorePathError(f"refusing a record of stage {stage!r} for fingerprint "
                                   f"{fingerprint!r}: not a stage name and a fingerprint")

    def _read_json(self, rel: str) -> Any:
        """The JSON in ``rel``, or None if absent; ``BadRecord`` if it is not JSON at all."""
        data = self._fs.read_bytes(rel)
        return None if data is None else _parse_json(data)

    def _report(self, rel: str, why: str, stamp: Any = None) -> None:
        """Say once per version of the file that a record is corrupt and ignored."""
        key = (rel, stamp)
        if key in self._reported:
            return
        self._reported.add(key)
        from ._encode import warn_user

        warn_user(f"ignoring the corrupt record {self._fs.root}/{rel}: {why}. Its stage will "
                  f"recompute; delete the file to make this warning go away")

    def record(self, stage: str, fingerprint: str, *, cached: bool = True,
               fresh: bool = False) -> ResultRecord | None:
        """The stored record of ``stage`` for ``fingerprint``, or None (also when the record is
        malformed: reported once, and ignored).

        Records are cached in memory while their file is unchanged (local stores compare
        inode, size and mtime: a record rewritten by another process is read again);
        ``cached=False`` reads the file regardless. ``fresh``: as the store has it now, not as
        a metadata snapshot taken earlier in this run saw it (a remote store; a local one is
        always read as it is now)."""
        rel = self._record_rel(stage, fingerprint)
        stamp = None
        try:
            data = None
            if self._fs.local_root is None:  # an object store: one GET says whether and what
                data = self._fs.read_bytes(rel, fresh=fresh)
                stamp = None if data is None else _content_stamp(data)
            else:
                stamp = self._fs.stamp(rel)
            if stamp is None:
                self._records.pop(rel, None)
                return None
            hit = self._records.get(rel)
            if cached and hit is not None and hit[0] == stamp:
                return hit[1]
            if data is None:
                data = self._fs.read_bytes(rel)
            rec = ResultRecord.from_json(None if data is None else _parse_json(data),
                                         stage, fingerprint)
        except (BadRecord, UnsafeStorePathError) as exc:
            self._records.pop(rel, None)
            self._report(rel, str(exc), stamp)
            return None
        self._records[rel] = (stamp, rec)
        return rec

    @contextlib.contextmanager
    def metadata_snapshot(self) -> Iterator[None]:
        """Within it, a remote store answers record reads from one listing and one parallel
        fetch of ``records/`` (see ``FsspecFS.snapshot_begin``); a local store needs none."""
        fs = self._fs
        if not isinstance(fs, FsspecFS):
            yield
            return
        fs.snapshot_begin("records")
        try:
            yield
        finally:
            fs.snapshot_end()

    def _changes(self) -> contextlib.AbstractContextManager[None]:
        """Several changes to records as one: a remote store's readers learn of them once
        (``FsspecFS.changes``)."""
        fs = self._fs
        return fs.changes() if isinstance(fs, FsspecFS) else contextlib.nullcontext()

    def local_dirs(self) -> list[str]:
        """Local folders the store owns (its root, or its download cache): what a stage reads
        there is PipeLite's doing, not a dependency of the stage."""
        return self._fs.local_dirs()

    @staticmethod
    def check_writable(location: str) -> None:
        """Raise the ``OSError`` that writing a store at the local directory ``location``
        would meet: the directory (and its parents) is created if missing, and a temporary
        file is written in it and removed. A directory it creates is a new store's root and
        gets the store's ``.gitignore``.

        A static method: it checks a location before a ``Store`` is made for it, as
        ``%pipelite store PATH`` does before switching, so that a store you cannot write to
        fails there and not in a later run. A remote (fsspec) store is checked by its first
        write."""
        import tempfile

        make_local_root(os.path.abspath(location))  # a new store's root: its .gitignore
        with tempfile.TemporaryFile(dir=location):
            pass

    def origin_for(self, path: str | os.PathLike) -> str:
        """How records name the notebook (or script) at ``path`` (``Stage.origin``): relative
        to the folder that holds this store when it is under it (``analysis/train.ipynb`` for
        a store at ``./.pipelite``; with ``/``, whatever the system), else its absolute path
        (also for a store that is not a local folder)."""
        if not isinstance(path, (str, os.PathLike)) or not isinstance(os.fspath(path), str):
            raise InvalidArgumentError(
                f"origin_for({path!r}): pass the path of a notebook or script, as a string")
        full = os.path.abspath(os.path.expanduser(os.fspath(path)))
        root = self._fs.local_root
        if root is None:
            return full
        base = os.path.dirname(os.path.abspath(root))
        try:
            under = os.path.commonpath([full, base]) == base
        except ValueError:  # another drive (Windows)
            under = False
        return pathlib.PurePath(os.path.relpath(full, base)).as_posix() if under else full

    def latest(self, stage: str) -> ResultRecord | None:
        """The newest stored record of ``stage``, whatever its fingerprint.

        ``LATEST`` names it; when that pointer is missing or bad (a crash between committing
        the record and writing it, or a damaged store), the newest record is looked up."""
        if not _is_stage_dir(stage):
            return None
        rel = f"records/{stage}/LATEST"
        try:
            data = self._fs.read_bytes(rel)
        except UnsafeStorePathError as exc:
            self._report(rel, str(exc))
            data = None
        text = data.decode("ascii", "replace").strip() if data else ""
        if text and is_fingerprint(text):
            rec = self.record(stage, text)
            if rec is not None:
                return rec
        elif text:
            self._report(rel, "it does not hold a fingerprint")
        recs = self.records_of(stage)
        return recs[0] if recs else None

    def records_of(self, stage: str) -> list[ResultRecord]:
        """Every (well-formed) stored record of ``stage``, newest first."""
        if not _is_stage_dir(stage):
            return []
        recs = []
        try:
            names = self._fs.listdir(f"records/{stage}")
        except UnsafeStorePathError as exc:
            self._report(f"records/{stage}", str(exc))
            return []
        for name in names:
            if name.endswith(".json") and is_fingerprint(name[:-5]):
                rec = self.record(stage, name[:-5])
                if rec is not None:
                    recs.append(rec)
        recs.sort(key=lambda r: r.started, reverse=True)
        return recs

    def stages(self) -> list[str]:
        """Names of the stages that have anything stored (folders named like stages only)."""
        try:
            names = self._fs.listdir("records")
        except UnsafeStorePathError as exc:
            self._report("records", str(exc))
            return []
        return sorted(n for n in names if _is_stage_dir(n))

    def write_result(self, record: ResultRecord) -> ResultRecord:
        """Commit a result: the record (the commit point), then the LATEST pointer. Returns
        the record as stored.

        Each output's entry gets a ``bind`` digest of its name and content, so entries swapped
        or edited by hand are caught when the record is read; the record is signed with your
        key (you wrote it: your key vouches for it)."""
        stage, fingerprint = record.stage, record.fingerprint
        record = replace(
            record, format_version=FORMAT_VERSION, signature=None,
            outputs={n: o.bound(n) for n, o in record.outputs.items()},
            attachments=None if record.attachments is None else
            {n: o.bound(n) for n, o in record.attachments.items()})
        body = record.to_json()
        ResultRecord.from_json(body, stage, fingerprint)  # never write what cannot be read back
        record = replace(record, signature=signature(body))
        data = _record_text(record.to_json()).encode()
        with self._changes():
            return self._commit_record(record, data)

    def _commit_record(self, record: ResultRecord, data: bytes) -> ResultRecord:
        stage, fingerprint = record.stage, record.fingerprint
        rel = self._record_rel(stage, fingerprint)
        try:
            self._fs.write_atomic(rel, data)
        except OSError as exc:
            err = limit_error(exc, self.url, stage=stage, needed=len(data), what="the record")
            if err is not None:
                raise err from exc
            raise
        stamp = self._fs.stamp(rel) if self._fs.local_root is not None else _content_stamp(data)
        if stamp is not None:
            self._records[rel] = (stamp, record)
        # the record is the commit point: failing the LATEST hint (latest() then lists the
        # records) or clearing FAILED.json does not unstore the result, so it only warns
        from ._encode import warn_user

        try:
            self._fs.write_atomic(f"records/{stage}/LATEST", fingerprint.encode())
        except OSError as exc:
            try:  # an older pointer would name an older result: without one, latest() lists
                self._fs.delete(f"records/{stage}/LATEST")
            except OSError:
                pass
            warn_user(f"stage '{stage}': its result is stored in {self.url}, but the LATEST "
                      f"pointer could not be written ({exc}); the result is still found")
        try:
            self._fs.delete(f"records/{stage}/FAILED.json")
        except OSError as exc:
            warn_user(f"stage '{stage}': its result is stored in {self.url}, but its last "
                      f"failure (FAILED.json) could not be cleared ({exc}); it may run again")
        return record

    def drop_record(self, stage: str, fingerprint: str) -> None:
        """Forget one result (e.g. because a file it names is corrupt)."""
        rel = self._record_rel(stage, fingerprint)
        self._records.pop(rel, None)
        self._fs.delete(rel)

    # -- use: when each result was last loaded or reused (for gc's policies) -------------------
    def mark_used(self, stage: str, fingerprint: str, when: float | None = None) -> None:
        """Note that the result of ``stage`` for ``fingerprint`` was used (loaded or reused)
        now, or at ``when`` (seconds since the epoch). See ``mark_all_used``."""
        self.mark_all_used([(stage, fingerprint)], when)

    def mark_all_used(self, results: Iterable[tuple[str, str]],
                      when: float | None = None) -> None:
        """Stamp each (stage, fingerprint) result as used now (or at ``when``), in
        ``used/<stage>/<fingerprint>``: what gc's ``max_age`` and ``max_size`` go by.

        A hint, so it never fails the load that asked for it: a stamp that cannot be written
        (a read-only store, a full disk, a refused path) is skipped. Without ``when``, a
        result is stamped at most once an hour per process (the process remembers what it
        stamped), and several stamps go out together."""
        if when is not None and (isinstance(when, bool) or not isinstance(when, (int, float))):
            raise InvalidArgumentError(f"mark_all_used(when={when!r}): when is a time in "
                                       f"seconds since the epoch, e.g. time.time()")
        at = _retention.now() if when is None else float(when)
        files: dict[str, bytes] = {}
        for stage, fingerprint in results:
            try:
                rel = _used_rel(stage, fingerprint)
            except UnsafeStorePathError:
                continue
            if _USAGE.due(self.url, stage, fingerprint, at, forced=when is not None):
                files[rel] = _retention.stamp_bytes(at)
        if not files:
            return
        try:
            self._fs.write_hints(files)
        except (OSError, PipeliteError):
            pass  # a hint: the result counts as used when its run ended

    def _last_used(self, records: list[ResultRecord], at: float
                   ) -> dict[tuple[str, str], float]:
        """When each record's result was last used, by (stage, fingerprint): its stamp if
        that is one, else (and at least) when its run ended. The stamps are read in one go
        (a remote store: one listing of used/ and one parallel fetch)."""
        used = {(r.stage, r.fingerprint): _used_rel(r.stage, r.fingerprint) for r in records}
        stamps = self._fs.read_small(used.values(), _retention.STAMP_LIMIT)
        return {(r.stage, r.fingerprint): _retention.last_used(
                    r, _retention.parse_stamp(stamps.get(used[r.stage, r.fingerprint]), at))
                for r in records}

    def failure(self, stage: str) -> FailureRecord | None:
        """The last failed run of ``stage`` since its last success, or None (also when the
        file is malformed: reported once, and ignored)."""
        if not _is_stage_dir(stage):
            return None
        rel = f"records/{stage}/FAILED.json"
        try:
            if self._fs.local_root is not None and not self._fs.exists(rel):  # the usual case
                return None
            info = self._read_json(rel)
            return None if info is None else FailureRecord.from_json(info, stage)
        except (BadRecord, UnsafeStorePathError) as exc:
            self._report(rel, str(exc))
            return None

    def write_failure(self, failure: FailureRecord) -> None:
        stage = failure.stage
        data = json.dumps(failure.to_json(), indent=1).encode()
        try:
            self._fs.write_atomic(f"records/{stage}/FAILED.json", data)
        except OSError as exc:
            err = limit_error(exc, self.url, stage=stage, needed=len(data), what="FAILED.json")
            if err is not None:
                raise err from exc
            raise

    def invalidate(self, stage: str) -> int:
        """Forget every result of ``stage``; return how many records were removed.

        Atomic on a local store: the stage's record folder is renamed into ``trash/`` in one
        step (a reader sees every result or none), then the committed records there
        (``<fingerprint>.json``, ``LATEST``, ``FAILED.json``) are deleted. Another process's
        record being written (a ``.tmp-*`` file) is put back where it is writing, never
        deleted; if it then commits, its result is kept in a fresh folder."""
        if not _is_stage_dir(stage):
            return 0
        folder = f"records/{stage}"
        names = self._fs.listdir(folder)  # refuses a symbolic link before anything moves
        for key in [k for k in self._records if k.startswith(folder + "/")]:
            self._records.pop(key, None)
        if not self._fs.renames_folders:  # an object store: committed files only, one by one
            count = 0
            with self._changes():
                for name in names:
                    if _is_committed_record(name):
                        count += name != "FAILED.json" and name != "LATEST"
                        self._fs.delete(f"{folder}/{name}")
            return count
        if not names:
            return 0
        trash = f"trash/{stage}.{uuid.uuid4().hex}"
        try:
            self._fs.move(folder, trash)
        except FileNotFoundError:
            return 0  # invalidated by another process meanwhile
        names = self._fs.listdir(trash)
        for name in names:  # first: in-flight writes go back before their writer renames them
            if _TMP_NAME.match(name):
                try:
                    self._fs.move(f"{trash}/{name}", f"{folder}/{name}")
                except FileNotFoundError:
                    pass
        count = 0
        for name in names:
            if _is_committed_record(name):
                count += name != "FAILED.json" and name != "LATEST"
                self._fs.delete(f"{trash}/{name}")
        try:
            self._fs.remove_empty_folder(trash)
        except OSError:
            pass  # something not ours was in the folder: gc empties trash/ later
        return count

    # -- objects ------------------------------------------------------------------------------
    def save_value(self, value: Any, *, stage: str | None = None,
                   created: list[str] | None = None, name: str | None = None) -> OutputRecord:
        """Write ``value`` as a content-addressed object; return its record.

        A full disk raises ``StoreFullError`` (naming ``stage``), a read-only store
        ``StoreNotWritableError``; no temporary file is left. ``created``, a list, gets the
        object's path if this call added it (so a failed run can take it back)."""
        fmt = format_for(value)
        extra: dict[str, Any] = {}
        if isinstance(value, File):  # where it goes back on a hit (refused if not a file
            extra["file"] = output_key(value, stage or "?", name or "?",  # under the cwd)
                                       self.local_dirs())
        tmp = size = None
        try:
            tmp = self._fs.tmp_path(fmt.ext)
            try:
                digest = fmt.save(value, tmp)
            except OSError:
                raise  # a full or read-only disk: retrying as pickle would only write again
            except Exception as exc:
                if not fmt.falls_back_to_pickle(exc, tmp):  # only a built-in format's refusal
                    raise
                # e.g. a frame Parquet cannot hold (mixed-type object columns): pickle it
                _remove_quietly(tmp)
                fmt = PICKLE
                tmp = self._fs.tmp_path(fmt.ext)
                digest = fmt.save(value, tmp)
            digest = digest or hash_file(tmp)
            size = os.path.getsize(tmp)
            sample = sample_digest(tmp, size) if size > CHEAP_VERIFY_BYTES else None
            _fsync_file(tmp)  # whatever format wrote it (Parquet, a user's format) it is durable
            rel = f"objects/{digest[:2]}/{digest}{fmt.ext}"
            if self._fs.size(rel) == size and self._fs.reuse(rel, digest, sample):
                _remove_quietly(tmp)  # the same content is stored already, intact
            else:
                self._fs.commit(tmp, rel)
                if created is not None:
                    created.append(rel)
        except BaseException as exc:
            if tmp is not None:
                _remove_quietly(tmp)
            needed = size if size is not None else getattr(value, "nbytes", None)  # when known
            err = limit_error(exc, self.url, stage=stage,
                              needed=needed if isinstance(needed, int) else None,
                              what=f"an output ({type(value).__name__})")
            if err is not None:
                raise err from exc
            raise
        return OutputRecord(
            hash=digest, size=size, format=fmt.name, path=rel,
            type=f"{type(value).__module__}.{type(value).__qualname__}",
            summary=_summary(value),
            sample=sample,  # 64 blocks, checked on every load of a large file
            extra=extra,
        )

    def discard_objects(self, rels: list[str]) -> None:
        """Delete objects a failed run added (``save_value(created=...)``): nothing partial
        is left taking space. Best effort: what cannot be deleted is left to ``gc``."""
        for rel in rels:
            try:
                self._fs.delete(rel)
            except (OSError, PipeliteError):
                pass

    def object_path(self, info: OutputRecord) -> str:
        """Where an output's file lives (path or URL), derived from its hash."""
        return self._fs.path(info.rel)

    def verify(self, info: OutputRecord, full: bool = True, level: str | None = None) -> None:
        """Raise ``CorruptArtifactError`` if the object's size, or its content at ``level``
        (``"always"``: the whole hash; ``"sampled"``: whole for small files, 64 blocks for
        large ones; ``"never"``: size only) is off. ``full=True`` means ``"always"``."""
        level = "always" if full else (level or self.verify_level)
        rel = self._object_rel(info)
        where = self._fs.path(rel)
        try:
            size = self._fs.size(rel)
        except UnsafeStorePathError as exc:
            raise CorruptArtifactError(where, str(exc)) from None
        if size is None:
            raise CorruptArtifactError(where, "the file is missing")
        if size != info.size:
            raise CorruptArtifactError(where, f"{size} bytes, expected {info.size}")
        if self._fs.local_root is None:
            return  # remote objects are checked on the local copy that is loaded
        check_content(where, info.hash, info.size, info.sample, level)

    def _object_rel(self, info: OutputRecord) -> str:
        try:
            return info.rel
        except BadRecord as exc:
            raise CorruptArtifactError(f"{self.url}/objects", str(exc)) from None

    def load_value(self, info: OutputRecord, verify: bool = False,
                   record: ResultRecord | None = None) -> Any:
        """Read an output back, checked at the store's ``verify_level`` (``verify=True``: the
        whole hash); on a remote store the check is of the local copy that is loaded.

        A format that can run code when loaded (pickle, a user format) needs ``record``, the
        record naming it, signed with your key (``UntrustedRecordError`` otherwise), and is
        always hashed whole first: its bytes are exactly the ones that were signed."""
        level = "always" if verify else self.verify_level
        reread = level == "always"  # asked for: hash the file now, whatever was read before
        if info.format == "file":
            return self._file_output(info, record, verify)
        if info.format not in SAFE_FORMATS:
            self.require_trust(record, f"output in format '{info.format}'")
            level = "always"
        if (level != "never" and info.size <= CHEAP_VERIFY_BYTES
                and self._fs.local_root is not None):
            loads = _bytes_loader(info.format)
            if loads is not None:  # a small file is hashed whole: read it once, load those bytes
                data = self._read_verified(info, reread)
                hit = self._scalars.get(info.hash)
                if hit is not None and hit[0] is data:  # the same verified bytes as last time
                    return hit[1]
                value = _decoded(loads, data, self._fs.path(info.rel))
                if type(value) in _IMMUTABLE_SCALARS:  # safe to hand out again
                    if len(self._scalars) >= SMALL_CACHE_FILES:
                        self._scalars.clear()
                    self._scalars[info.hash] = (data, value)
                return value
        self.verify(info, level=level, full=False)
        rel = self._object_rel(info)
        if self._fs.local_root is not None:  # checked in place by verify() above
            local = self._fs.local_copy(rel, info.hash)
        else:
            full = level == "always" or (level == "sampled" and info.size <= CHEAP_VERIFY_BYTES)
            local = self._fs.local_copy(rel, info.hash, verify=full)
            if not full and level == "sampled":
                try:
                    check_content(local, info.hash, info.size, info.sample, level)
                except CorruptArtifactError:
                    # the local copy is damaged, not (as far as we know) the store's object:
                    # fetch it again, hashed whole; only a bad download is a corrupt object
                    local = self._fs.local_copy(rel, info.hash, verify=True)
        return _decoded(format_named(info.format).load, local, local)

    def file_target(self, info: OutputRecord) -> str:
        """Where a file output goes back to (``UnsafeRestoreError`` for a place PipeLite does
        not write to: see ``_files.target_of``)."""
        return target_of(info.extra.get("file"), self.local_dirs())

    def _file_output(self, info: OutputRecord, record: ResultRecord | None,
                     verify: bool = False) -> File:
        """A file output, in its place: left alone when it holds the stored content (checked
        by its stat, as input files are), else restored from the store; a changed file is
        kept beside it. Writing into the project needs a record signed with your key, as
        loading a pickle does (a file put in place may be code that runs later)."""
        target = self.file_target(info)
        if verify:
            self.verify(info)
        if in_place(target, info.hash, info.size):
            return File(target)
        self.require_trust(record, "file output")
        rel = self._object_rel(info)
        if self._fs.local_root is not None:
            self.verify(info)
            local = self._fs.local_copy(rel, info.hash)
        else:
            local = self._fs.local_copy(rel, info.hash, verify=True)
        try:
            done = restore(local, target, info.hash, info.size)
        except OSError as exc:
            raise StoreNotWritableError(
                f"file output {info.extra.get('file')} could not be restored from the store "
                f"to {target}: {exc}. Make its folder writable, or load it elsewhere with "
                f"pipeline.store.object_path(...)") from exc
        if done:
            warn_user(done)
        return File(target)

    def _read_verified(self, info: OutputRecord, reread: bool = False) -> bytes:
        """The bytes of a small local object, checked as ``verify`` checks it at any level but
        "never" (present, its size, its whole hash); ``CorruptArtifactError`` otherwise.

        Bytes that passed are kept in memory while the file's stamp (inode, size, modification
        and change times) stays the same, like records: a cached hit then costs one ``lstat``
        instead of reading and hashing the file. Any write, rename, delete or ``touch`` of the
        file changes its stamp, so it is read and hashed again. ``reread`` skips the memory."""
        rel = self._object_rel(info)
        try:
            stamp = self._fs.stamp(rel)
        except UnsafeStorePathError as exc:
            raise CorruptArtifactError(self._fs.path(rel), str(exc)) from None
        key = (rel, info.hash, info.size)
        hit = self._small.pop(key, None)  # a hit goes back in as the newest; a miss is dropped
        if hit is not None:
            self._small_bytes -= len(hit[1])
            if not reread and stamp is not None and hit[0] == stamp:
                self._keep_small(key, *hit)
                return hit[1]
        where = self._fs.path(rel)
        try:
            data = self._fs.read_bytes(rel)
        except UnsafeStorePathError as exc:
            raise CorruptArtifactError(where, str(exc)) from None
        if data is None:
            raise CorruptArtifactError(where, "the file is missing")
        if len(data) != info.size:
            raise CorruptArtifactError(where, f"{len(data)} bytes, expected {info.size}")
        if xxhash.xxh3_128_hexdigest(data) != info.hash:
            raise CorruptArtifactError(where, "its content hash does not match")
        if stamp is not None:
            self._keep_small(key, stamp, data)
        return data

    def _keep_small(self, key: tuple, stamp: tuple, data: bytes) -> None:
        """Keep ``data`` (not in the cache now) as the newest; the oldest go past the bounds."""
        small = self._small
        small[key] = (stamp, data)
        self._small_bytes += len(data)
        while self._small_bytes > SMALL_CACHE_BYTES or len(small) > SMALL_CACHE_FILES:
            oldest = next(iter(small))
            self._small_bytes -= len(small.pop(oldest)[1])

    def require_trust(self, record: ResultRecord | None, what: str) -> None:
        """Raise ``UntrustedRecordError`` unless ``record`` is signed with your key."""
        if record is not None and is_signed(record.to_json()):
            return
        stage = record.stage if record is not None else "?"
        raise UntrustedRecordError(
            f"stage '{stage}': refusing to load its {what} from {self.url}: its record is not "
            f"signed with your key ({key_source()}), and loading it could run code. If you "
            f"trust whoever wrote this store, run: pipelite trust {self.url}")

    def trust(self) -> int:
        """Sign every record in the store with your key (``pipelite trust STORE``): accept
        its pickles and replayed outputs as yours. Returns how many records were signed."""
        count = 0
        for stage in self.stages():
            for rec in self.records_of(stage):
                data = rec.to_json()
                if is_signed(data):
                    continue
                data["signature"] = signature(data)
                rel = self._record_rel(stage, rec.fingerprint)
                self._fs.write_atomic(rel, _record_text(data).encode())
                self._records.pop(rel, None)
                count += 1
        return count

    def quarantine(self, info: OutputRecord) -> str | None:
        """Move a damaged object aside, into ``quarantine/`` in the store (never deleted, and
        never anything outside the store); return where it went, None if it was gone."""
        try:
            rel = info.rel
        except BadRecord:
            return None  # not an object path: nothing of ours to move
        dest = f"quarantine/{rel.rsplit('/', 1)[1]}.{uuid.uuid4().hex[:8]}"
        try:
            self._fs.move(rel, dest)
        except (FileNotFoundError, UnsafeStorePathError):
            return None
        except OSError:
            return None
        return self._fs.path(dest)

    # -- scrub --------------------------------------------------------------------------------
    def scrub(self, jobs: int | None = None,
              progress: Callable[[int, int, int], None] | None = None) -> "ScrubReport":
        """Hash every object every record names, in parallel. A damaged object is moved to
        ``quarantine/`` and the records naming it are dropped (their stages recompute); a
        missing one drops its records too. ``progress(done, total, bytes_done)`` is called as
        objects are checked."""
        from concurrent.futures import ThreadPoolExecutor

        users: dict[str, tuple[OutputRecord, list[tuple[str, str]]]] = {}
        records = 0
        for stage in self.stages():
            for rec in self.records_of(stage):
                records += 1
                for info in rec.objects():
                    users.setdefault(info.rel, (info, []))[1].append((stage, rec.fingerprint))

        def check(rel: str) -> tuple[str, str | None]:
            info = users[rel][0]
            try:
                if self._fs.local_root is not None:
                    self.verify(info, full=True)
                else:
                    self.verify(info, full=False, level="never")
                    self._fs.local_copy(rel, info.hash, verify=True)
            except CorruptArtifactError as exc:
                return rel, exc.detail
            return rel, None

        damaged: list[tuple[str, str, str | None]] = []
        missing: list[str] = []
        done = nbytes = 0
        with ThreadPoolExecutor(max_workers=jobs or min(8, (os.cpu_count() or 2))) as pool:
            for rel, problem in pool.map(check, sorted(users)):
                done += 1
                nbytes += users[rel][0].size
                if progress is not None:
                    progress(done, len(users), nbytes)
                if problem is None:
                    continue
                if problem == "the file is missing":
                    missing.append(self._fs.path(rel))
                else:
                    damaged.append((self._fs.path(rel), problem, self.quarantine(users[rel][0])))
                for stage, fingerprint in users[rel][1]:
                    self.drop_record(stage, fingerprint)
        return ScrubReport(records, len(users), nbytes, tuple(damaged), tuple(missing))

    # -- locks ----------------------------------------------------------------------------------
    @property
    def cache_limit(self) -> int | None:
        """Bytes of local copies a remote store keeps (least recently used go first; default
        5 GiB, or ``PIPELITE_CACHE_LIMIT``); None for a local store, which needs none."""
        return self._fs.cache_limit if isinstance(self._fs, FsspecFS) else None

    @cache_limit.setter
    def cache_limit(self, limit: int) -> None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise InvalidArgumentError(f"cache_limit={limit!r}: a number of bytes, 0 or more")
        if isinstance(self._fs, FsspecFS):
            self._fs.cache_limit = limit
            self._fs.trim_cache()

    lease_timeout: float = LEASE_TIMEOUT  # seconds without a heartbeat: a claim is stale
    lease_heartbeat: float = HEARTBEAT_EVERY

    def lock(self, stage: str, fingerprint: str) -> filelock.FileLock | Lease:
        """A lock for computing one (stage, fingerprint) result, across processes: a lock file
        in a local store, a lease (a claim object with a heartbeat) in a remote one, so that
        two machines, or two ``TMPDIR``s, sharing a bucket compute it once."""
        if self._fs.local_root is None:
            return Lease(self._fs, stage, fingerprint, timeout=self.lease_timeout,
                         heartbeat=self.lease_heartbeat)
        folder = self._fs.lock_dir()
        self._fs.make_root()  # often a new store's first write: its root gets a .gitignore
        os.makedirs(folder, exist_ok=True)
        return filelock.FileLock(os.path.join(folder, f"{stage}-{fingerprint}.lock"))

    # -- garbage collection ---------------------------------------------------------------------
    def gc(self, keep: int = 1, *, max_size: int | str | None = None,
           max_age: float | str | datetime.timedelta | None = None,
           protect: Iterable[tuple[str, str]] = (),
           grace: float = GC_GRACE) -> GcReport:
        """Remove stored results by the rules below, then every object no record names.

        The rules, in order: ``keep`` (the newest ``keep`` results per stage stay, the rest
        go); ``max_age`` (``"30d"``, seconds or a ``timedelta``: results not used for that
        long go, also among the newest ``keep``: keep limits the count, it does not shield);
        ``max_size`` (``"20 GiB"`` or bytes: the least recently used results go until the
        objects the remaining ones name, each counted once however many records share it,
        total at most ``max_size``). A result is used when it is loaded or reused (see
        ``mark_all_used``); one never used counts as used when its run ended. The results
        in ``protect``, (stage, fingerprint) pairs, are never removed by any rule
        (``Pipeline.gc`` protects the results of fresh stages); if they alone exceed
        ``max_size``, gc stops there and its report says by how much.

        Safe while other processes write and read: nothing younger than ``grace`` seconds is
        collected (an object is written before the record that names it, so for a moment it
        has none; an object a removed record named is deleted once it is that old), no object
        named by any record is collected, and a lock file is removed only when this process
        could take the lock itself. Leftovers of interrupted writes (``tmp/``,
        ``records/*/.tmp-*``, ``trash/``) older than ``grace`` are deleted, and the use
        stamps of results that are gone."""
        if keep < 1:
            raise InvalidArgumentError(f"gc(keep={keep}): keep must be at least 1 "
                                       f"(use invalidate(name) to forget a stage entirely)")
        if isinstance(grace, bool) or not isinstance(grace, (int, float)) or not grace >= 0:
            raise InvalidArgumentError(f"gc(grace={grace!r}): grace must be a number of "
                                       f"seconds, at least 0")
        size_limit = None if max_size is None else parse_size(max_size, "max_size")
        age_limit = None if max_age is None else parse_duration(max_age, "max_age")
        protected = set(protect)
        now = time.time()
        with self._changes():
            kept = self._retention(keep, age_limit, size_limit, protected)
            for result in kept.removed:
                self.drop_record(result.stage, result.fingerprint)
            for stage in sorted({r.stage for r in kept.removed}):
                self._unpoint(stage, {r.fingerprint for r in kept.removed if r.stage == stage})
        removed_records = len(kept.removed)
        for result in kept.removed:  # their use stamps: nothing to say about a removed result
            self._forget_use(_used_rel(result.stage, result.fingerprint))
        # Objects are listed before the records are read: a record committed after that names
        # objects written after the listing or within the grace period, never collected here.
        removed_objects = freed = 0
        candidates: list[tuple[str, int]] = []
        for prefix in self._fs.listdir("objects"):
            if not _OBJECT_PREFIX.match(prefix):
                continue  # not a folder PipeLite made: not ours to delete
            for name in self._fs.listdir(f"objects/{prefix}"):
                if not _OBJECT_NAME.match(name) or not name.startswith(prefix):
                    continue
                rel = f"objects/{prefix}/{name}"
                found = self._gc_stat(rel, now)
                if found is None:
                    continue  # gone meanwhile
                age, size, kind = found
                if kind == "link":  # never written by PipeLite: the link goes, its target stays
                    self._fs.delete(rel)
                    removed_objects += 1
                elif kind == "file" and age >= grace:
                    candidates.append((rel, size))
        referenced: set[str] = set()
        stored: set[tuple[str, str]] = set()
        for stage in self.stages():
            for rec in self.records_of(stage):
                referenced.update(o.rel for o in rec.objects())
                stored.add((stage, rec.fingerprint))
        for rel, size in candidates:
            if rel not in referenced:
                self._fs.delete(rel)
                removed_objects += 1
                freed += size
        uploads = 0
        if isinstance(self._fs, FsspecFS):  # a remote store: its uploads and local copies
            uploads = self._fs.abort_uploads(now, grace)
            freed += self._fs.gc_local(referenced, now, grace)
        # leftovers of interrupted writes (records' temporary files are local-only)
        for stage in self.stages() if self._fs.local_root is not None else ():
            for name in self._fs.listdir(f"records/{stage}"):
                if _TMP_NAME.match(name):
                    freed += self._gc_leftover(f"records/{stage}/{name}", now, grace)
        if self._fs.local_root is not None:
            for name in self._fs.listdir("tmp"):
                freed += self._gc_leftover(f"tmp/{name}", now, grace)
            for name in self._fs.listdir("trash"):
                rel = f"trash/{name}"
                found = self._gc_stat(rel, now)
                if found is not None and found[2] == "dir":
                    for inner in self._fs.listdir(rel):
                        freed += self._gc_leftover(f"{rel}/{inner}", now, grace)
                    try:
                        self._fs.remove_empty_folder(rel)
                    except OSError:
                        pass  # not empty yet
                else:
                    freed += self._gc_leftover(rel, now, grace)
            freed += self._gc_locks(now, grace)
        freed += self._gc_used(stored, now, grace)
        return GcReport(removed_records, removed_objects, freed, uploads,
                        beyond_keep=len(kept.beyond_keep), unused=len(kept.unused),
                        least_used=len(kept.least_used), keep=keep, max_age=age_limit,
                        max_size=size_limit, above_max_size=kept.above_max_size)

    def _retention(self, keep: int, max_age: float | None, max_size: int | None,
                   protected: set[tuple[str, str]]) -> _retention.Retention:
        """What the rules remove of the results stored now (``pipelite._retention``)."""
        records = [(rank, rec) for stage in self.stages()
                   for rank, rec in enumerate(self.records_of(stage))]
        at = _retention.now()
        used = ({} if max_age is None and max_size is None  # keep alone needs no stamps
                else self._last_used([rec for _, rec in records], at))
        results = [StoredResult(rec.stage, rec.fingerprint, rank,
                                used.get((rec.stage, rec.fingerprint), 0.0),
                                {o.rel: o.size for o in rec.objects()},
                                (rec.stage, rec.fingerprint) in protected)
                   for rank, rec in records]
        return retain(results, keep, max_age, max_size, at)

    def _unpoint(self, stage: str, removed: set[str]) -> None:
        """After gc removed results of ``stage``: a ``LATEST`` naming one of them goes
        (``latest()`` then lists the records; rewriting it could name an older result than
        one another process commits meanwhile), and a local record folder left empty goes,
        so the stage is no longer listed."""
        rel = f"records/{stage}/LATEST"
        try:
            data = self._fs.read_bytes(rel)
        except UnsafeStorePathError:
            return
        if data is not None and data.decode("ascii", "replace").strip() in removed:
            self._fs.delete(rel)
        if self._fs.local_root is not None:
            try:
                self._fs.remove_empty_folder(f"records/{stage}")
            except OSError:
                pass  # results (or a failure, or a write in flight) are still in it

    def _forget_use(self, rel: str) -> None:
        """Delete a use stamp, best effort (a stamp left behind is collected later)."""
        try:
            self._fs.delete(rel)
        except (OSError, PipeliteError):
            pass

    def _gc_used(self, stored: set[tuple[str, str]], now: float, grace: float) -> int:
        """Delete use stamps older than ``grace`` of results not ``stored`` (forgotten by
        invalidate, or another process's gc) and leftovers of interrupted stamp writes; the
        bytes freed. A name that is not a stage and a fingerprint (or ``.tmp-*``) is not
        ours: it stays, like a symbolic link to a folder (never listed through)."""
        freed = 0
        try:
            stages = [n for n in self._fs.listdir("used") if _is_stage_dir(n)]
        except UnsafeStorePathError:
            return 0
        for stage in stages:
            try:
                names = self._fs.listdir(f"used/{stage}")
            except UnsafeStorePathError:
                continue
            for name in names:
                if is_fingerprint(name) and (stage, name) not in stored:
                    rel = _used_rel(stage, name)
                elif _TMP_NAME.match(name):
                    rel = f"used/{stage}/{name}"
                else:
                    continue
                freed += self._gc_leftover(rel, now, grace)
        return freed

    def _gc_stat(self, rel: str, now: float) -> tuple[float, int, str] | None:
        """(age in seconds, size, kind: "file", "dir", "link" or "other") of a store path, or
        None if it is gone. The age of a remote file without a known modification time is 0:
        too young to collect unless ``grace`` is 0."""
        found = self._fs.stat(rel)
        if found is None:
            return None
        age = 0.0 if found.mtime is None else now - found.mtime
        return age, found.size, found.kind

    def _gc_leftover(self, rel: str, now: float, grace: float) -> int:
        """Delete a leftover file older than ``grace`` (a symbolic link: the link itself, never
        its target); return the bytes freed."""
        found = self._gc_stat(rel, now)
        if found is None or found[2] not in ("file", "link"):
            return 0
        age, size, kind = found
        if kind == "file" and age < grace:
            return 0
        self._fs.delete(rel)
        return size if kind == "file" else 0

    def _gc_locks(self, now: float, grace: float) -> int:
        """Delete lock files unused for ``grace`` seconds, each only while holding it: a lock
        another process holds (or waits on and then takes) is never removed."""
        folder = self._fs.lock_dir()
        try:
            names = os.listdir(folder)
        except (FileNotFoundError, NotADirectoryError):
            return 0
        freed = 0
        for name in names:
            path = os.path.join(folder, name)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            if _stat.S_ISLNK(st.st_mode):
                _remove_quietly(path)  # never made by PipeLite; the link goes, its target stays
                continue
            if not _stat.S_ISREG(st.st_mode) or now - st.st_mtime < grace:
                continue
            lock = filelock.FileLock(path)
            try:
                lock.acquire(blocking=False)
            except (filelock.Timeout, OSError):
                continue  # held by another process (or not ours to take): kept
            try:
                _remove_quietly(path)  # a waiter that takes the old file then finds it
                freed += st.st_size    # unlinked and opens the new one (filelock checks)
            finally:
                lock.release()
        return freed

    def object_exists(self, info: OutputRecord) -> bool:
        """Whether the output's object file is in the store (whatever its content)."""
        try:
            return self._fs.exists(info.rel)
        except (BadRecord, UnsafeStorePathError):
            return True  # there, but not something to load: the caller's error stands
