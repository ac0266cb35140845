"""The artifact store: content-addressed objects and one JSON record per result.

Layout under the store root (local directory or any fsspec URL)::

    objects/ab/ab12...ef.npy        values, named by the xxh3-128 hash of their bytes
    records/<stage>/<fingerprint>.json   one human-readable record per stored result
    records/<stage>/LATEST          the fingerprint of the stage's newest result
    records/<stage>/FAILED.json     the last failed run, until the next success
    tmp/                            files being written (renamed into place when complete)
    locks/                          per-(stage, fingerprint) lock files (local stores)

A result becomes visible only when its record is written, and the record is written last,
after every object it names is complete on disk: a crash at any point leaves no partial result.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from typing import Any

import filelock

from .errors import CorruptArtifactError, PipeliteError
from .humanize import human_bytes
from .formats import PICKLE, format_for, format_named, hash_file

__all__ = ["Store", "GcReport"]

CHEAP_VERIFY_BYTES = 2 << 20  # files up to this size are hashed on every load (~0.3 ms)


class _LocalFS:
    """Direct os calls for a local directory: the fast path."""

    is_local = True

    def __init__(self, root: str):
        self.root = os.path.abspath(os.path.expanduser(root))
        self.url = self.root

    def path(self, rel: str) -> str:
        return os.path.join(self.root, rel)

    def read_bytes(self, rel: str) -> bytes | None:
        try:
            with open(self.path(rel), "rb") as f:
                return f.read()
        except (FileNotFoundError, NotADirectoryError):
            return None

    def write_atomic(self, rel: str, data: bytes) -> None:
        final = self.path(rel)
        folder = os.path.dirname(final)
        os.makedirs(folder, exist_ok=True)
        tmp = os.path.join(folder, f".tmp-{uuid.uuid4().hex}")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
        except BaseException:
            _remove_quietly(tmp)
            raise
        _fsync_dir(folder)

    def exists(self, rel: str) -> bool:
        return os.path.exists(self.path(rel))

    def stamp(self, rel: str) -> tuple | None:
        """Identifies one version of a file (None if absent): a rewrite changes it."""
        try:
            st = os.stat(self.path(rel))
        except (FileNotFoundError, NotADirectoryError):
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def listdir(self, rel: str) -> list[str]:
        try:
            return os.listdir(self.path(rel))
        except (FileNotFoundError, NotADirectoryError):
            return []

    def delete(self, rel: str) -> None:
        _remove_quietly(self.path(rel))

    def size(self, rel: str) -> int | None:
        try:
            return os.stat(self.path(rel)).st_size
        except FileNotFoundError:
            return None

    def tmp_path(self, ext: str) -> str:
        folder = self.path("tmp")
        os.makedirs(folder, exist_ok=True)
        return os.path.join(folder, f"{uuid.uuid4().hex}{ext}")

    def commit(self, local_tmp: str, rel: str) -> None:
        final = self.path(rel)
        os.makedirs(os.path.dirname(final), exist_ok=True)
        os.replace(local_tmp, final)
        _fsync_dir(os.path.dirname(final))

    def local_copy(self, rel: str, expected_hash: str, verify: bool = False) -> str:
        return self.path(rel)  # Store.verify has hashed it already when asked to

    def lock_dir(self) -> str:
        return self.path("locks")

    def local_dirs(self) -> list[str]:
        return [self.root]


class _FsspecFS:
    """Any fsspec filesystem. Objects are cached locally by content hash for loading."""

    is_local = False

    def __init__(self, url: str, storage_options: dict | None = None):
        import fsspec

        self.fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
        self.root = root.rstrip("/")
        self.url = url
        key = __import__("xxhash").xxh3_64_hexdigest(url.encode())
        self._cache = os.path.join(tempfile.gettempdir(), "pipelite-cache", key)

    def path(self, rel: str) -> str:
        return f"{self.root}/{rel}"

    def read_bytes(self, rel: str) -> bytes | None:
        try:
            return self.fs.cat_file(self.path(rel))
        except (FileNotFoundError, OSError):
            return None

    def write_atomic(self, rel: str, data: bytes) -> None:
        # a single object PUT is atomic on object stores; memory:// and local are dict/rename
        self.fs.pipe_file(self.path(rel), data)

    def exists(self, rel: str) -> bool:
        self.fs.invalidate_cache(self.path(rel))
        return self.fs.exists(self.path(rel))

    def stamp(self, rel: str) -> tuple | None:
        # no cheap version stamp on object stores: existence only (a record rewritten by
        # another process is re-read when its observed dependencies look changed)
        return () if self.exists(rel) else None

    def listdir(self, rel: str) -> list[str]:
        try:
            self.fs.invalidate_cache(self.path(rel))
            return [p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(self.path(rel),
                                                                         detail=False)]
        except (FileNotFoundError, OSError):
            return []

    def delete(self, rel: str) -> None:
        try:
            self.fs.rm_file(self.path(rel))
        except (FileNotFoundError, OSError):
            pass

    def size(self, rel: str) -> int | None:
        try:
            return self.fs.size(self.path(rel))
        except (FileNotFoundError, OSError):
            return None

    def tmp_path(self, ext: str) -> str:
        folder = os.path.join(self._cache, "tmp")
        os.makedirs(folder, exist_ok=True)
        return os.path.join(folder, f"{uuid.uuid4().hex}{ext}")

    def commit(self, local_tmp: str, rel: str) -> None:
        self.fs.put_file(local_tmp, self.path(rel))
        # keep the bytes in the local cache: they are content-addressed
        cached = os.path.join(self._cache, rel)
        os.makedirs(os.path.dirname(cached), exist_ok=True)
        os.replace(local_tmp, cached)

    def local_copy(self, rel: str, expected_hash: str, verify: bool = False) -> str:
        """A local file with the object's bytes: the cached copy, or a fresh download.

        With ``verify`` the cached copy is hashed; a wrong one is discarded and fetched again
        (once). A download is always hashed: a wrong one raises ``CorruptArtifactError``."""
        cached = os.path.join(self._cache, rel)
        if os.path.exists(cached):
            if not verify:
                return cached
            try:
                if hash_file(cached) == expected_hash:
                    return cached
            except OSError:
                pass
            _remove_quietly(cached)  # a damaged local copy: fetch the object again
        os.makedirs(os.path.dirname(cached), exist_ok=True)
        tmp = f"{cached}.{uuid.uuid4().hex}.part"
        try:
            self.fs.get_file(self.path(rel), tmp)
        except (FileNotFoundError, OSError):
            _remove_quietly(tmp)
            raise CorruptArtifactError(self.path(rel), "the file is missing") from None
        got = hash_file(tmp)
        if got != expected_hash:
            _remove_quietly(tmp)
            raise CorruptArtifactError(self.path(rel), "its content hash does not match")
        os.replace(tmp, cached)
        return cached

    def lock_dir(self) -> str:
        return os.path.join(self._cache, "locks")

    def local_dirs(self) -> list[str]:
        return [self._cache]


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


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def _fsync_file(path: str) -> None:
    """fsync a file or (where the OS allows it) a directory, by path."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: str) -> None:
    if not sys.platform.startswith("win"):  # Windows cannot open a directory to sync it
        _fsync_file(folder)


@dataclass(frozen=True)
class GcReport:
    """What ``gc`` removed."""

    records: int
    objects: int
    bytes: int

    def __str__(self) -> str:
        return (f"removed {self.records} record(s) and {self.objects} object(s), "
                f"freeing {human_bytes(self.bytes)}")


def _summary(value: Any) -> str:
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


class Store:
    """Records and objects under one location (a local path or an fsspec URL)."""

    def __init__(self, location: str | os.PathLike = ".pipelite",
                 storage_options: dict | None = None):
        """``storage_options`` go to the fsspec filesystem (e.g. S3 credentials, endpoint_url)."""
        if not isinstance(location, (str, os.PathLike)):
            raise PipeliteError(f"store must be a path or an fsspec URL string, not "
                                f"{type(location).__name__}")
        loc = os.fspath(location)
        if not isinstance(loc, str):
            raise PipeliteError(f"store must be a path or an fsspec URL string, not "
                                f"{type(loc).__name__} (from {type(location).__name__})")
        if "://" in loc and not loc.startswith("file://"):
            self._fs: _LocalFS | _FsspecFS = _FsspecFS(loc, storage_options)
        else:
            self._fs = _LocalFS(loc[len("file://"):] if loc.startswith("file://") else loc)
        self._records: dict[str, tuple[tuple, dict]] = {}  # rel -> (file stamp, record)

    @property
    def url(self) -> str:
        """Where the store lives (absolute path or URL)."""
        return self._fs.url

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    # -- records ------------------------------------------------------------------------------
    @staticmethod
    def _record_rel(stage: str, fingerprint: str) -> str:
        return f"records/{stage}/{fingerprint}.json"

    def _read_json(self, rel: str) -> dict | None:
        data = self._fs.read_bytes(rel)
        if data is None:
            return None
        try:
            return json.loads(data)
        except ValueError:
            return None  # a torn record cannot happen with atomic writes; treat as absent

    def record(self, stage: str, fingerprint: str, *, cached: bool = True) -> dict | None:
        """The stored record of ``stage`` for ``fingerprint``, or None.

        Records are cached in memory while their file is unchanged (local stores compare
        inode, size and mtime: a record rewritten by another process is read again);
        ``cached=False`` reads the file regardless."""
        rel = self._record_rel(stage, fingerprint)
        stamp = self._fs.stamp(rel)
        if stamp is None:
            self._records.pop(rel, None)
            return None
        hit = self._records.get(rel)
        if cached and hit is not None and hit[0] == stamp:
            return hit[1]
        rec = self._read_json(rel)
        if rec is not None:
            self._records[rel] = (stamp, rec)
        return rec

    def local_dirs(self) -> list[str]:
        """Local folders the store owns (its root, or its download cache): what a stage reads
        there is PipeLite's doing, not a dependency of the stage."""
        return self._fs.local_dirs()

    def latest(self, stage: str) -> dict | None:
        """The newest stored record of ``stage``, whatever its fingerprint."""
        fp = self._fs.read_bytes(f"records/{stage}/LATEST")
        return self.record(stage, fp.decode().strip()) if fp else None

    def records_of(self, stage: str) -> list[dict]:
        """Every stored record of ``stage``, newest first."""
        recs = []
        for name in self._fs.listdir(f"records/{stage}"):
            if name.endswith(".json") and name != "FAILED.json" and not name.startswith("."):
                rec = self.record(stage, name[:-5])
                if rec is not None:
                    recs.append(rec)
        recs.sort(key=lambda r: r.get("started", ""), reverse=True)
        return recs

    def stages(self) -> list[str]:
        """Names of the stages that have anything stored."""
        return sorted(n for n in self._fs.listdir("records") if not n.startswith("."))

    def write_result(self, stage: str, fingerprint: str, record: dict) -> None:
        """Commit a result: the record (the commit point), then the LATEST pointer."""
        data = _record_text(record).encode()
        rel = self._record_rel(stage, fingerprint)
        self._fs.write_atomic(rel, data)
        stamp = self._fs.stamp(rel)
        if stamp is not None:
            self._records[rel] = (stamp, record)
        self._fs.write_atomic(f"records/{stage}/LATEST", fingerprint.encode())
        self._fs.delete(f"records/{stage}/FAILED.json")

    def drop_record(self, stage: str, fingerprint: str) -> None:
        """Forget one result (e.g. because a file it names is corrupt)."""
        rel = self._record_rel(stage, fingerprint)
        self._records.pop(rel, None)
        self._fs.delete(rel)

    def failure(self, stage: str) -> dict | None:
        """The last failed run of ``stage`` since its last success, or None."""
        rel = f"records/{stage}/FAILED.json"
        if self._fs.is_local and not self._fs.exists(rel):  # the usual case, without raising
            return None
        return self._read_json(rel)

    def write_failure(self, stage: str, info: dict) -> None:
        self._fs.write_atomic(f"records/{stage}/FAILED.json", json.dumps(info, indent=1).encode())

    def invalidate(self, stage: str) -> int:
        """Forget every result of ``stage``; return how many records were removed."""
        names = self._fs.listdir(f"records/{stage}")
        count = 0
        for name in names:
            if name.endswith(".json") and name != "FAILED.json":
                count += 1
            self._records.pop(f"records/{stage}/{name}", None)
            self._fs.delete(f"records/{stage}/{name}")
        return count

    # -- objects ------------------------------------------------------------------------------
    def save_value(self, value: Any) -> dict:
        """Write ``value`` as a content-addressed object; return its output description."""
        fmt = format_for(value)
        tmp = self._fs.tmp_path(fmt.ext)
        try:
            try:
                digest = fmt.save(value, tmp)
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
            _fsync_file(tmp)  # whatever format wrote it (Parquet, a user's format) it is durable
            rel = f"objects/{digest[:2]}/{digest}{fmt.ext}"
            if self._fs.size(rel) == size:
                _remove_quietly(tmp)  # same content is already stored
            else:
                self._fs.commit(tmp, rel)
        except BaseException:
            _remove_quietly(tmp)
            raise
        return {
            "hash": digest,
            "size": size,
            "format": fmt.name,
            "path": rel,
            "type": f"{type(value).__module__}.{type(value).__qualname__}",
            "summary": _summary(value),
        }

    def object_path(self, info: dict) -> str:
        """Where an output's file lives (path or URL)."""
        return self._fs.path(info["path"])

    def verify(self, info: dict, full: bool = True) -> None:
        """Raise ``CorruptArtifactError`` if the object's size (and, if ``full``, hash) is off."""
        rel = info["path"]
        where = self._fs.path(rel)
        size = self._fs.size(rel)
        if size is None:
            raise CorruptArtifactError(where, "the file is missing")
        if size != info["size"]:
            raise CorruptArtifactError(where, f"{size} bytes, expected {info['size']}")
        if full and self._fs.is_local and hash_file(where) != info["hash"]:
            raise CorruptArtifactError(where, "its content hash does not match")

    def load_value(self, info: dict, verify: bool = False) -> Any:
        """Read an output back. Size is always checked; the hash for small files or ``verify``
        (on a remote store: the hash of the local copy that is actually loaded)."""
        full = verify or info["size"] <= CHEAP_VERIFY_BYTES
        self.verify(info, full=full)
        local = self._fs.local_copy(info["path"], info["hash"], verify=full)
        try:
            return format_named(info["format"]).load(local)
        except PipeliteError:
            raise
        except Exception as exc:  # noqa: BLE001 - an unreadable file is a corrupt file
            raise CorruptArtifactError(local, f"it cannot be read: {exc}") from None

    def delete_object(self, info: dict) -> None:
        self._fs.delete(info["path"])

    # -- locks ----------------------------------------------------------------------------------
    def lock(self, stage: str, fingerprint: str) -> filelock.FileLock:
        """A cross-process lock for computing one (stage, fingerprint) result."""
        folder = self._fs.lock_dir()
        os.makedirs(folder, exist_ok=True)
        return filelock.FileLock(os.path.join(folder, f"{stage}-{fingerprint}.lock"))

    # -- garbage collection ---------------------------------------------------------------------
    def gc(self, keep: int = 1, tmp_age: float = 3600.0) -> GcReport:
        """Keep the newest ``keep`` records per stage; delete unreferenced objects."""
        if keep < 1:
            raise PipeliteError(f"gc(keep={keep}): keep must be at least 1 "
                                f"(use invalidate(name) to forget a stage entirely)")
        removed_records = 0
        referenced: set[str] = set()
        for stage in self.stages():
            recs = self.records_of(stage)
            for rec in recs[keep:]:
                self.drop_record(stage, rec["fingerprint"])
                removed_records += 1
            for rec in recs[:keep]:
                referenced.update(o["path"] for o in rec.get("outputs", {}).values())
                referenced.update(o["path"] for o in rec.get("attachments", {}).values())
        removed_objects = freed = 0
        for prefix in self._fs.listdir("objects"):
            for name in self._fs.listdir(f"objects/{prefix}"):
                rel = f"objects/{prefix}/{name}"
                if rel not in referenced:
                    freed += self._fs.size(rel) or 0
                    self._fs.delete(rel)
                    removed_objects += 1
        if self._fs.is_local:
            # leftovers of interrupted writes, and lock files nobody has used for a while
            now = time.time()
            for folder in ("tmp", "locks"):
                for name in self._fs.listdir(folder):
                    p = self._fs.path(f"{folder}/{name}")
                    try:
                        info = os.stat(p)
                        if now - info.st_mtime > tmp_age:
                            freed += info.st_size
                            _remove_quietly(p)
                    except FileNotFoundError:
                        pass
        return GcReport(removed_records, removed_objects, freed)
