"""The filesystems a store lives on: what ``Store`` asks of one (``StoreFS``) and the two that
do it, a local directory (``LocalFS``) and any fsspec filesystem (``FsspecFS``).

``Store`` knows the layout (records, objects, trash) and the rules (what is committed when);
a filesystem only moves bytes, under one root, by store-relative paths made of plain names
(``objects/ab/ab12...ef.npy``). Every such path is checked before it is used.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import re
import stat as _stat
import sys
import threading
import uuid
from typing import Any, Iterable, Iterator, Mapping, NamedTuple, Protocol

import xxhash

from ._integrity import check_content
from ._location import parse_location
from .errors import CorruptArtifactError, UnsafeStorePathError
from .formats import hash_file

__all__ = ["GITIGNORE", "TMP_NAME", "FileStat", "FsspecFS", "LocalFS", "StoreFS", "check_rel",
           "fsync_file", "make_local_root", "open_fs", "remove_quietly"]

TMP_NAME = re.compile(r"\.tmp-[0-9a-f]{32}\Z")  # LocalFS.write_atomic's temporary files
# in a new store's root, as joblib's cache has one: `git add .` never adds the store
GITIGNORE = ".gitignore"
GITIGNORE_TEXT = b"# a PipeLite store: a cache, not source (made by PipeLite)\n*\n"

_REL_PART = re.compile(r"[A-Za-z0-9_.-]{1,255}\Z")


def check_rel(rel: str) -> str:
    """A store-relative path made of plain names: no '..', no absolute path, no separators
    other than '/', nothing but letters, digits, '_', '-' and '.'."""
    parts = rel.split("/") if isinstance(rel, str) else [None]
    if not all(isinstance(p, str) and _REL_PART.match(p) and p not in (".", "..")
               for p in parts):
        raise UnsafeStorePathError(f"refusing the store path {rel!r}: not a plain relative path")
    return rel


class FileStat(NamedTuple):
    """One entry of the store, as ``StoreFS.stat`` sees it."""

    mtime: float | None  # seconds since the epoch; None when the filesystem does not say
    size: int
    kind: str  # "file", "dir", "link" (never followed) or "other"


class StoreFS(Protocol):
    """What ``Store`` needs of the filesystem under its root.

    Paths (``rel``) are relative to the root and made of plain names (``check_rel``); one that
    is not, or that would pass through a symbolic link, raises ``UnsafeStorePathError``: nothing
    outside the store is opened, renamed or deleted. Methods that say "None if absent" return
    None for a missing file instead of raising.
    """

    url: str
    """Where the store lives, as shown to the user: an absolute path or the URL given."""

    root: str
    """The root as the filesystem names it (a path, or a URL without its protocol)."""

    @property
    def local_root(self) -> str | None:
        """The local directory the store's files are in, when they are plain local files that
        ``Store`` may work on in place: hash an object where it lies (no download), look for a
        file with a cheap stat, clean up the temporary, trash and lock files interrupted writes
        leave there. None when the files live elsewhere (their content is checked on the
        local copy that ``local_copy`` gives)."""
        ...

    @property
    def renames_folders(self) -> bool:
        """Whether ``move`` renames a whole folder in one atomic step (a reader finds all of it
        at the old place or all of it at the new one). Without it ``invalidate`` deletes the
        committed records one by one."""
        ...

    def path(self, rel: str) -> str:
        """The full path or URL of ``rel``, to name it in a message (or, with ``local_root``,
        to open it)."""
        ...

    def read_bytes(self, rel: str, fresh: bool = False) -> bytes | None:
        """The whole content of the file, or None if absent. ``fresh``: as the store has it
        now, never from a metadata snapshot (``FsspecFS.snapshot_begin``)."""
        ...

    def write_atomic(self, rel: str, data: bytes) -> None:
        """Put ``data`` at ``rel``, replacing what is there, all or nothing: a reader sees the
        old content or the new, never a part. Creates the folders on the way. The bytes are on
        disk when it returns (fsync'ed, on a local disk)."""
        ...

    def write_hints(self, files: Mapping[str, bytes]) -> None:
        """Put small files whose loss costs nothing (gc's usage stamps): each all or nothing,
        as ``write_atomic``, but not fsync'ed, and several at once where the filesystem can.
        Stops at the first ``OSError`` and raises it (the caller decides to ignore it)."""
        ...

    def read_small(self, rels: Iterable[str], limit: int) -> dict[str, bytes]:
        """The content of each of ``rels`` that is a plain file of at most ``limit`` bytes.
        One that is absent, larger, a symbolic link (or under one), not a plain file, or
        unreadable is left out: never followed, never read whole."""
        ...

    def make_root(self) -> None:
        """Create the store's root if it is missing, before a first write that does not go
        through this interface (a local store's lock files). A local root this creates gets
        the ``.gitignore`` (``make_local_root``); an object store has no folders to make."""
        ...

    def exists(self, rel: str) -> bool:
        """Whether something is at ``rel`` now (never an answer cached from before)."""
        ...

    def create_exclusive(self, rel: str, data: bytes) -> bool:
        """Put ``data`` at ``rel`` only if nothing is there, in one step no other writer can
        come between (``O_EXCL``; S3's ``If-None-Match: *``): True if this call created it,
        False if it was there. See ``exclusive_create`` for how far that holds."""
        ...

    @property
    def exclusive_create(self) -> bool:
        """Whether ``create_exclusive`` is atomic against other machines on this filesystem
        (False: it checks, then writes, and two writers may both succeed)."""
        ...

    def stamp(self, rel: str) -> tuple | None:
        """A token for the version of the file at ``rel`` (None if absent): rewriting the file
        changes it where the filesystem can tell (a local file); elsewhere it only says the
        file is there (``()``), and a caller that caches by stamp rereads by other means."""
        ...

    def stat(self, rel: str) -> FileStat | None:
        """Modification time, size and kind of the entry at ``rel`` (a symbolic link is
        described, not followed), or None if absent."""
        ...

    def size(self, rel: str) -> int | None:
        """The size in bytes of the file at ``rel`` (a symbolic link is refused), or None if
        absent."""
        ...

    def listdir(self, rel: str) -> list[str]:
        """The names in the folder ``rel`` (not paths), or [] if it is absent."""
        ...

    def delete(self, rel: str) -> None:
        """Remove the file at ``rel`` (a symbolic link: the link, never its target) and any
        local copy of it; nothing if it is absent already."""
        ...

    def remove_empty_folder(self, rel: str) -> None:
        """Remove the folder ``rel`` if it is empty; ``OSError`` if it is not (or is gone)."""
        ...

    def move(self, rel: str, dest_rel: str) -> None:
        """Rename a file (or, with ``renames_folders``, a folder) to ``dest_rel``, creating
        its folder; ``FileNotFoundError`` if ``rel`` is gone."""
        ...

    def tmp_path(self, ext: str) -> str:
        """A new local file path, ending in ``ext``, for writing an object before ``commit``:
        on the same disk as the store when it is local, so that commit is a rename."""
        ...

    def commit(self, local_tmp: str, rel: str) -> None:
        """Make the complete file ``local_tmp`` (from ``tmp_path``, fsync'ed by the caller) the
        object at ``rel``, all or nothing, creating its folder; ``local_tmp`` is gone
        afterwards. On a local disk the rename itself is durable (the folder is fsync'ed) when
        it returns: before any record names the object."""
        ...

    def reuse(self, rel: str, digest: str, sample: str | None) -> bool:
        """Whether the object already at ``rel`` (of the right size: the caller checked) can
        stand for new bytes with this content hash instead of writing them again. A True
        answer also keeps it from gc until the record naming it is written."""
        ...

    def local_copy(self, rel: str, expected_hash: str, verify: bool = False) -> str:
        """A local file holding the object's bytes, to load from. On a local store the object
        itself (its content is the caller's to check); elsewhere a cached download, hashed when
        fetched and, with ``verify``, when taken from the cache (a wrong copy is fetched again);
        a missing or wrong download raises ``CorruptArtifactError``."""
        ...

    def lock_dir(self) -> str:
        """The local folder for this store's cross-process lock files."""
        ...

    def local_dirs(self) -> list[str]:
        """The local folders the store owns (its root, or its download cache)."""
        ...


def open_fs(location: str, storage_options: dict | None = None) -> StoreFS:
    """The filesystem for a store location: a local path (``file://`` taken off) or an fsspec
    URL, which gets ``storage_options``."""
    is_remote, where = parse_location(location)
    if is_remote:
        return FsspecFS(where, storage_options)
    return LocalFS(where)


_ACCESS_NOFOLLOW = os.access in os.supports_follow_symlinks  # not on Windows


def make_local_root(root: str) -> None:
    """Create the local store folder ``root`` (and its parents) if it is missing. A root this
    call creates gets a ``.gitignore`` holding ``*``, so that ``git add .`` in a project never
    adds its store; a folder that exists already (a store made before PipeLite wrote one, or
    by another process just now) is left as it is. The ``.gitignore`` is best effort."""
    if os.path.isdir(root):
        return
    parent = os.path.dirname(root)
    if parent:
        os.makedirs(parent, exist_ok=True)
    try:
        os.mkdir(root)
    except FileExistsError:
        return  # made meanwhile: its maker writes the file
    try:
        fd = os.open(os.path.join(root, GITIGNORE),
                     os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(GITIGNORE_TEXT)
    except OSError:
        pass  # the store works without it


class LocalFS(StoreFS):
    """Direct os calls for a local directory: the fast path. Every path is checked to lie under
    the root, through no symbolic link (``_abs``); files are opened without following one."""

    renames_folders = True

    def __init__(self, root: str):
        self.root = os.path.abspath(os.path.expanduser(root))
        self.url = self.root
        self._real = os.path.realpath(self.root)
        self._safe_dirs: set[str] = set()
        self._checked: dict[str, str] = {}  # rel -> absolute path, already checked
        self._root_made = False

    @property
    def local_root(self) -> str:
        return self.root

    def make_root(self) -> None:
        if not self._root_made:  # one stat per process and store: every write comes here
            make_local_root(self.root)
            self._root_made = True

    def _abs(self, rel: str) -> str:
        """The absolute path of ``rel`` after checking that its folder is really inside the
        store: resolving it (symlinks included) must give the same place under the root."""
        found = self._checked.get(rel)
        if found is not None:
            return found
        check_rel(rel)
        folder = rel.rpartition("/")[0]
        if folder and folder not in self._safe_dirs:
            self._check_folder(folder)
        path = os.path.join(self.root, rel)
        if len(self._checked) > 100_000:
            self._checked.clear()
        self._checked[rel] = path
        return path

    def _check_folder(self, folder: str) -> None:
        """Every folder from the root down to ``folder`` is a plain folder (or not made yet):
        a symbolic link among them is refused. Folders found plain are remembered."""
        done = ""
        for part in folder.split("/"):
            done = f"{done}/{part}" if done else part
            if done in self._safe_dirs:
                continue
            path = os.path.join(self._real, done)
            try:
                st = os.lstat(path)
            except (FileNotFoundError, NotADirectoryError):
                return  # not made yet: whatever makes it makes a plain folder
            if _stat.S_ISLNK(st.st_mode):
                raise UnsafeStorePathError(
                    f"refusing {os.path.join(self.root, done)}: a symbolic link inside the store "
                    f"(to {os.path.realpath(path)}); move it out of the store")
            self._safe_dirs.add(done)

    def path(self, rel: str) -> str:
        return self._abs(rel)

    def read_bytes(self, rel: str, fresh: bool = False) -> bytes | None:
        path = self._abs(rel)  # (always fresh: a local store keeps no snapshot)
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            if os.path.islink(path):
                raise UnsafeStorePathError(f"refusing {path}: a symbolic link inside the "
                                           f"store") from None
            raise exc
        with os.fdopen(fd, "rb") as f:
            return f.read()

    def write_atomic(self, rel: str, data: bytes) -> None:
        final = self._abs(rel)
        folder = os.path.dirname(final)
        self.make_root()
        for attempt in (1, 2, 3):
            tmp = os.path.join(folder, f".tmp-{uuid.uuid4().hex}")
            try:
                os.makedirs(folder, exist_ok=True)
                with open(tmp, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, final)
                _fsync_dir(folder)
                return
            except (FileNotFoundError, FileExistsError):
                # another process's invalidate moved the folder away mid-write (or while it
                # was being made): write again into a new folder; the bytes are all here
                remove_quietly(tmp)
                if attempt == 3:
                    raise
            except BaseException:
                remove_quietly(tmp)
                raise

    exclusive_create = True

    def write_hints(self, files: Mapping[str, bytes]) -> None:
        self.make_root()
        for rel, data in files.items():
            final = self._abs(rel)
            folder = os.path.dirname(final)
            tmp = os.path.join(folder, f".tmp-{uuid.uuid4().hex}")
            try:
                os.makedirs(folder, exist_ok=True)
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL
                             | getattr(os, "O_NOFOLLOW", 0), 0o644)
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                os.replace(tmp, final)  # a link there is replaced itself, never followed
            except BaseException:
                try:
                    remove_quietly(tmp)
                except OSError:
                    pass
                raise

    def read_small(self, rels: Iterable[str], limit: int) -> dict[str, bytes]:
        found: dict[str, bytes] = {}
        for rel in rels:
            try:
                if self._lstat(rel) is None:  # refuses a link, and a path through one
                    continue
                # O_NONBLOCK: a FIFO put in its place does not hang the open
                fd = os.open(self._abs(rel), os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
                             | getattr(os, "O_NONBLOCK", 0))
            except (UnsafeStorePathError, OSError):
                continue
            try:
                st = os.fstat(fd)
                if _stat.S_ISREG(st.st_mode) and st.st_size <= limit:
                    data = os.read(fd, limit + 1)
                    if len(data) <= limit:
                        found[rel] = data
            except OSError:
                pass
            finally:
                os.close(fd)
        return found

    def create_exclusive(self, rel: str, data: bytes) -> bool:
        path = self._abs(rel)
        self.make_root()
        os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL
                         | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return True

    def exists(self, rel: str) -> bool:
        # lexists without raising and catching an exception for the usual "no" (a failure
        # file, looked for on every check): a symbolic link counts, its target does not
        if _ACCESS_NOFOLLOW:
            return os.access(self._abs(rel), os.F_OK, follow_symlinks=False)
        return os.path.lexists(self._abs(rel))

    def _lstat(self, rel: str) -> os.stat_result | None:
        """The file's own stat (a symbolic link is refused, not followed); None if absent."""
        path = self._abs(rel)
        try:
            st = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        if _stat.S_ISLNK(st.st_mode):
            raise UnsafeStorePathError(f"refusing {path}: a symbolic link inside the store")
        return st

    def stamp(self, rel: str) -> tuple | None:
        st = self._lstat(rel)
        # the change time too: restoring a modification time (touch -d, rsync -t) changes it
        return None if st is None else (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def stat(self, rel: str) -> FileStat | None:
        try:
            st = os.lstat(self._abs(rel))
        except (FileNotFoundError, NotADirectoryError):
            return None
        mode = st.st_mode
        kind = ("link" if _stat.S_ISLNK(mode) else "file" if _stat.S_ISREG(mode)
                else "dir" if _stat.S_ISDIR(mode) else "other")
        return FileStat(st.st_mtime, st.st_size, kind)

    def listdir(self, rel: str) -> list[str]:
        path = self._abs(rel + "/x")[:-2]  # the folder itself, checked like a file's folder
        if os.path.islink(path):
            raise UnsafeStorePathError(f"refusing {path}: a symbolic link inside the store")
        try:
            return os.listdir(path)
        except (FileNotFoundError, NotADirectoryError):
            return []

    def delete(self, rel: str) -> None:
        remove_quietly(self._abs(rel))  # a symbolic link is removed itself, never its target

    def remove_empty_folder(self, rel: str) -> None:
        os.rmdir(self._abs(rel))

    def reuse(self, rel: str, digest: str, sample: str | None) -> bool:
        """The object must be intact (hashed whole when small, its sampled blocks when large),
        and it is touched, so that gc's grace period covers it until its record lands."""
        path = self._abs(rel)
        try:
            check_content(path, digest, os.lstat(path).st_size, sample, "sampled")
            os.utime(path)
        except (CorruptArtifactError, OSError):
            return False  # damaged or gone: the new bytes replace it
        return True

    def move(self, rel: str, dest_rel: str) -> None:
        src, dest = self._abs(rel), self._abs(dest_rel)
        self.make_root()
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        os.replace(src, dest)

    def size(self, rel: str) -> int | None:
        st = self._lstat(rel)
        return None if st is None else st.st_size

    def tmp_path(self, ext: str) -> str:
        path = self._abs(f"tmp/{uuid.uuid4().hex}{ext}")
        self.make_root()
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return path

    def commit(self, local_tmp: str, rel: str) -> None:
        final = self._abs(rel)
        self.make_root()
        os.makedirs(os.path.dirname(final), exist_ok=True)
        os.replace(local_tmp, final)
        _fsync_dir(os.path.dirname(final))

    def local_copy(self, rel: str, expected_hash: str, verify: bool = False) -> str:
        return self.path(rel)  # Store.verify has hashed it already when asked to

    def lock_dir(self) -> str:
        path = self._abs("locks/x")[:-2]
        if os.path.islink(path):
            raise UnsafeStorePathError(f"refusing {path}: a symbolic link inside the store")
        return path

    def local_dirs(self) -> list[str]:
        return [self.root]


_MD5_ETAG = re.compile(r"[0-9a-f]{32}")
_TOKEN = re.compile(r"[0-9a-f]{32}")  # a generation token (uuid4().hex)
_GENERATION = "index/generation"
# metadata files this process wrote to remote stores, newest last: (store url, rel) -> bytes
_WRITTEN: dict[tuple[str, str], bytes] = {}
_WRITTEN_LOCK = threading.Lock()
_REMEMBERED = 20_000  # records are 1-2 KB  # a single-part S3 object's ETag: its content's MD5
BULK_METADATA = True  # snapshots on (benchmarks turn it off to measure the difference)

# filesystems whose "create" write is atomic against other writers: S3 (and moto) honour
# If-None-Match: *, memory:// is one process's dict, local files use O_EXCL
_EXCLUSIVE_PROTOCOLS = frozenset(("s3", "s3a", "memory", "file", "local"))


class FsspecFS(StoreFS):
    """Any fsspec filesystem. Objects are cached locally by content hash for loading."""

    local_root = None
    renames_folders = False

    def __init__(self, url: str, storage_options: dict | None = None):
        import fsspec

        self.fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
        self.root = root.rstrip("/")
        self.url = url
        key = xxhash.xxh3_64_hexdigest(url.encode())
        # in your own cache folder, not the shared temp dir, where another user could plant
        # files or links for this store's objects
        base = os.path.join(os.path.expanduser(os.environ.get("XDG_CACHE_HOME") or "~/.cache"),
                            "pipelite")
        os.makedirs(base, mode=0o700, exist_ok=True)
        self._cache = os.path.join(base, key)
        self.cache_limit = cache_limit_from_env()  # bytes of local copies kept (LRU)
        self._cached_bytes: int | None = None  # what the cache holds, once counted
        self._snaps = {}
        self._batches: dict[int, list[Any]] = {}  # thread id -> [depth, changed]
        # s3fs asks for an object's size (a HEAD) before reading it, to split big reads: a
        # metadata file is small, so it is read in one GET
        self._s3 = "s3" in self._protocols and hasattr(self.fs, "call_s3")
        self._small_read: dict[str, Any] = {"max_concurrency": 1} if self._s3 else {}

    def path(self, rel: str) -> str:
        return f"{self.root}/{check_rel(rel)}"

    def __getstate__(self) -> dict[str, Any]:
        # sent to a worker without the client's snapshot (a run holds one while it runs)
        state = self.__dict__.copy()
        state.update(_snaps={}, _batches={})
        return state

    # -- metadata in bulk: one listing, parallel reads ------------------------------------------
    _snap_prefix = "records/"
    _snaps: dict[int, list[Any]]  # thread id -> [depth, {rel: its bytes} or None]

    @property
    def _snap(self) -> dict[str, bytes | None] | None:
        """This thread's snapshot (rel -> its bytes, None until fetched), while one is on. A
        snapshot belongs to the thread that took it: a run in a background thread (the
        panel's) holds one for its whole length, and a status() elsewhere reads anew."""
        entry = self._snaps.get(threading.get_ident())
        return None if entry is None else entry[1]

    def snapshot_begin(self, prefix: str = "records") -> None:
        """Read every metadata file under ``prefix`` at once. Until ``snapshot_end``, reads,
        stamps and listings under ``prefix`` in this thread are answered from it: a check of
        500 stages makes a few requests instead of ~2,000. A file written meanwhile by another
        process is not seen (the state is a moment old); this thread's own writes are.

        The index (``index/records.json``) holds every file's content as of one generation
        (``index/generation``, a token every change under ``prefix`` replaces). When it is
        the generation there now, two small reads are the whole check; otherwise one
        recursive listing (1,000 keys a request on S3) says what is there, the index's
        content is kept where the listing's ETag (the content's MD5) vouches for it, the rest
        is fetched in parallel (``fs.cat`` of many paths), and the index is written anew."""
        entry = self._snaps.get(threading.get_ident())
        if entry is not None:
            entry[0] += 1
            return
        if not BULK_METADATA:
            self._snaps[threading.get_ident()] = [1, None]
            return
        self._snap_prefix = prefix.rstrip("/") + "/"
        generation = self._read_generation()  # before the listing: a change after it shows
        index = self._read_index(prefix)
        if generation is not None and index.get("generation") == generation:
            snap = self._from_index(index)
        else:
            snap = self._from_listing(prefix, index, generation or self._bump())
            if generation is None and not snap:
                self._mark_new_store()
        self._snaps[threading.get_ident()] = [1, snap]

    def _from_index(self, index: dict[str, Any]) -> dict[str, bytes | None]:
        """The snapshot an index of the current generation gives. Its names are checked like
        any path read from the store; a file whose content it does not hold is read when
        asked for."""
        snap: dict[str, bytes | None] = {}
        for rel, text in index["files"].items():
            if not isinstance(rel, str) or not rel.startswith(self._snap_prefix):
                continue
            try:
                check_rel(rel)
            except UnsafeStorePathError:
                continue
            snap[rel] = text.encode() if isinstance(text, str) else None
        return snap

    def _from_listing(self, prefix: str, index: dict[str, Any], generation: str | None
                      ) -> dict[str, bytes | None]:
        base = self.path(prefix)
        try:
            self.fs.invalidate_cache(base)
            found = self.fs.find(base, detail=True)
        except (FileNotFoundError, OSError):
            found = {}
        start = len(self.root) + 1
        etags: dict[str, str] = {}
        snap: dict[str, bytes | None] = {}
        for path, info in found.items():
            if not path.startswith(self.root + "/"):
                continue
            rel = path[start:]
            snap[rel] = None
            etag = str(info.get("ETag") or "").strip('"')
            if _MD5_ETAG.fullmatch(etag):
                etags[rel] = etag
        # what the index or this process's own writes remember, for the files whose ETag
        # (the MD5 of their content, on S3) is the one listed now: read no further
        remembered = index["files"]
        for rel, etag in etags.items():
            for known in (_WRITTEN.get((self.url, rel)), remembered.get(rel)):
                data = known.encode() if isinstance(known, str) else known
                if isinstance(data, bytes) and \
                        hashlib.md5(data, usedforsecurity=False).hexdigest() == etag:
                    snap[rel] = data
                    break
        missing = [self.path(rel) for rel, data in snap.items() if data is None]
        if missing:
            try:
                fetched = self.fs.cat(missing, on_error="omit", **self._small_read)
            except (FileNotFoundError, OSError):
                fetched = {}
            for path, content in fetched.items():
                rel = path[start:] if path.startswith(self.root + "/") else ""
                if rel in snap and isinstance(content, bytes):
                    snap[rel] = content
        if missing or index.get("generation") != generation:
            self._write_index(prefix, snap, generation)
        return snap

    def _index_rel(self, prefix: str) -> str:
        return f"index/{prefix.strip('/')}.json"

    def _read_index(self, prefix: str) -> dict[str, Any]:
        """``{"generation": token, "files": {rel: text or None}}`` as the last snapshot
        wrote it, or an empty one if there is none (or it is not an index)."""
        try:
            data = self.fs.cat_file(self.path(self._index_rel(prefix)), **self._small_read)
            index = json.loads(data)
        except (FileNotFoundError, OSError, ValueError):
            index = None
        if not isinstance(index, dict) or not isinstance(index.get("files"), dict):
            return {"generation": None, "files": {}}
        return index

    def _write_index(self, prefix: str, contents: dict[str, bytes | None],
                     generation: str | None) -> None:
        if generation is None:
            return  # the generation cannot be told: an index would never be used
        files: dict[str, str | None] = {}
        for rel, data in contents.items():
            try:
                files[rel] = data.decode() if data is not None else None
            except UnicodeDecodeError:
                files[rel] = None  # not text: read when asked for
        try:  # best effort: a change since the listing has replaced the generation already
            self.fs.pipe_file(self.path(self._index_rel(prefix)),
                              json.dumps({"generation": generation, "files": files}).encode())
        except OSError:
            pass

    # -- the generation: replaced after every change under records/ --------------------------
    def _read_generation(self) -> str | None:
        try:
            data = self.fs.cat_file(self.path(_GENERATION), **self._small_read)
        except (FileNotFoundError, OSError):
            return None
        token = data.decode("ascii", "replace").strip()
        return token if _TOKEN.fullmatch(token) else None

    def _bump(self) -> str | None:
        """A new generation: an index written before this change is no longer used. None if
        it could not be written (then every check lists)."""
        token = uuid.uuid4().hex
        try:
            self.fs.pipe_file(self.path(_GENERATION), token.encode())
        except OSError:
            try:  # an index that cannot be outdated must not stay
                self.fs.rm_file(self.path(self._index_rel(self._snap_prefix)))
            except (FileNotFoundError, OSError):
                pass
            return None
        return token

    def _changed(self, rel: str) -> None:
        """After a write, delete or move under records/: a new generation, now or, within
        ``changes()``, once at its end."""
        if not rel.startswith(self._snap_prefix):
            return
        batch = self._batches.get(threading.get_ident())
        if batch is not None:
            batch[1] = True
        else:
            self._bump()

    @contextlib.contextmanager
    def changes(self) -> Iterator[None]:
        """Several changes under records/ (a result's record, its LATEST pointer, its
        FAILED.json) make one new generation, at the end (also when one of them fails)."""
        me = threading.get_ident()
        batch = self._batches.setdefault(me, [0, False])
        batch[0] += 1
        try:
            yield
        finally:
            batch[0] -= 1
            if batch[0] == 0:
                del self._batches[me]
                if batch[1]:
                    self._bump()

    def snapshot_end(self) -> None:
        me = threading.get_ident()
        entry = self._snaps.get(me)
        if entry is not None:
            entry[0] -= 1
            if entry[0] <= 0:
                del self._snaps[me]

    def read_bytes(self, rel: str, fresh: bool = False) -> bytes | None:
        snap = self._snap
        snapped = snap is not None and rel.startswith(self._snap_prefix)
        if snapped and not fresh:
            assert snap is not None
            if rel not in snap:
                return None
            data = snap[rel]
            if data is not None:
                return data
        try:
            data = self.fs.cat_file(self.path(rel), **self._small_read)
        except (FileNotFoundError, OSError):
            data = None
        if snapped and fresh:  # what is there now: the snapshot knows it too
            assert snap is not None
            if data is None:
                snap.pop(rel, None)
            else:
                snap[rel] = data
        return data

    def write_atomic(self, rel: str, data: bytes) -> None:
        # a single object PUT is atomic on object stores; memory:// and local are dict/rename
        self.fs.pipe_file(self.path(rel), data)
        if rel.startswith(self._snap_prefix):
            self._remember(rel, data)
        self._changed(rel)
        snap = self._snap
        if snap is not None and rel.startswith(self._snap_prefix):
            snap[rel] = data  # this thread's own writes stay visible

    def write_hints(self, files: Mapping[str, bytes]) -> None:
        if files:  # one call: an async filesystem (s3fs) sends the PUTs concurrently
            self.fs.pipe({self.path(rel): data for rel, data in files.items()})

    def read_small(self, rels: Iterable[str], limit: int) -> dict[str, bytes]:
        wanted = {self.path(rel): rel for rel in rels}
        if not wanted:
            return {}
        # one listing of the top folders they are in says which exist, and their sizes
        sizes: dict[str, int] = {}
        for top in {rel.split("/", 1)[0] for rel in wanted.values()}:
            try:
                self.fs.invalidate_cache(self.path(top))
                found = self.fs.find(self.path(top), detail=True)
            except (FileNotFoundError, OSError):
                continue
            for path, info in found.items():
                size = info.get("size")
                if path in wanted and info.get("type") != "directory" and \
                        isinstance(size, int) and 0 <= size <= limit:
                    sizes[path] = size
        if not sizes:
            return {}
        try:
            fetched = self.fs.cat(list(sizes), on_error="omit", **self._small_read)
        except (FileNotFoundError, OSError):
            return {}
        return {wanted[path]: data for path, data in fetched.items()
                if path in wanted and isinstance(data, bytes) and len(data) <= limit}

    def make_root(self) -> None:
        pass  # no folders: the .gitignore of a new store is written by its first snapshot

    def _mark_new_store(self) -> None:
        """A store with no records and no generation yet is new: give it its .gitignore
        (one small write, best effort; it matters only where the bucket is a git checkout's
        folder, e.g. a file-backed filesystem)."""
        try:  # a plain PUT (any filesystem has it): two first writers write the same bytes
            self.fs.pipe_file(self.path(GITIGNORE), GITIGNORE_TEXT)
        except OSError:
            pass

    @property
    def _protocols(self) -> tuple[str, ...]:
        protocol = self.fs.protocol
        return tuple(protocol) if isinstance(protocol, (tuple, list)) else (protocol,)

    @property
    def exclusive_create(self) -> bool:
        return any(p in _EXCLUSIVE_PROTOCOLS for p in self._protocols)

    def create_exclusive(self, rel: str, data: bytes) -> bool:
        path = self.path(rel)
        try:
            self.fs.pipe_file(path, data, mode="create")
        except FileExistsError:
            return False
        finally:
            self.fs.invalidate_cache(path)
        return True

    def exists(self, rel: str) -> bool:
        snap = self._snap
        if snap is not None and rel.startswith(self._snap_prefix):
            folder = rel.rstrip("/") + "/"
            return rel in snap or any(k.startswith(folder) for k in snap)
        self.fs.invalidate_cache(self.path(rel))
        return self.fs.exists(self.path(rel))

    def stamp(self, rel: str) -> tuple | None:
        # no cheap version stamp on object stores: existence only (a record rewritten by
        # another process is re-read when its observed dependencies look changed)
        return () if self.exists(rel) else None

    def stat(self, rel: str) -> FileStat | None:
        try:
            info = self.fs.info(self.path(rel))
        except (FileNotFoundError, OSError):
            return None
        return FileStat(_mtime_of(info), info.get("size") or 0,
                        "dir" if info.get("type") == "directory" else "file")

    def listdir(self, rel: str) -> list[str]:
        snap = self._snap
        if snap is not None and (rel.rstrip("/") + "/").startswith(self._snap_prefix):
            folder = rel.rstrip("/") + "/"
            return sorted({k[len(folder):].split("/", 1)[0] for k in snap
                           if k.startswith(folder)})
        try:
            self.fs.invalidate_cache(self.path(rel))
            return [p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(self.path(rel),
                                                                         detail=False)]
        except (FileNotFoundError, OSError):
            return []

    def delete(self, rel: str) -> None:
        snap = self._snap
        if snap is not None and rel.startswith(self._snap_prefix):
            snap.pop(rel, None)
        with _WRITTEN_LOCK:
            _WRITTEN.pop((self.url, rel), None)
        try:
            self.fs.rm_file(self.path(rel))
        except (FileNotFoundError, OSError):
            pass
        finally:
            self._changed(rel)
        remove_quietly(os.path.join(self._cache, check_rel(rel)))

    def remove_empty_folder(self, rel: str) -> None:
        self.fs.rmdir(self.path(rel))

    def reuse(self, rel: str, digest: str, sample: str | None) -> bool:
        return True  # content-addressed and written whole by one PUT: the size says enough

    def move(self, rel: str, dest_rel: str) -> None:
        with _WRITTEN_LOCK:
            _WRITTEN.pop((self.url, rel), None)
        try:
            self.fs.mv(self.path(rel), self.path(dest_rel))
        finally:
            self._changed(rel if rel.startswith(self._snap_prefix) else dest_rel)
        remove_quietly(os.path.join(self._cache, check_rel(rel)))

    def _remember(self, rel: str, data: bytes) -> None:
        """This process wrote ``data`` at ``rel``: the next listing (by any ``Store`` of this
        URL in this process) that shows it with that content's ETag need not fetch it."""
        key = (self.url, rel)
        with _WRITTEN_LOCK:
            _WRITTEN.pop(key, None)
            _WRITTEN[key] = data
            while len(_WRITTEN) > _REMEMBERED:
                del _WRITTEN[next(iter(_WRITTEN))]

    def size(self, rel: str) -> int | None:
        path = self.path(rel)
        try:
            if self._s3:  # one HEAD; fs.size would also list the key as a folder when absent
                bucket, key, _ = self.fs.split_path(path)
                return int(self.fs.call_s3("head_object", Bucket=bucket, Key=key)
                           ["ContentLength"])
            return self.fs.size(path)
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
        self._added_to_cache(cached)

    def local_copy(self, rel: str, expected_hash: str, verify: bool = False) -> str:
        cached = os.path.join(self._cache, check_rel(rel))
        if os.path.exists(cached):
            _touch(cached)  # recently used: the last to be evicted
            if not verify:
                return cached
            try:
                if hash_file(cached) == expected_hash:
                    return cached
            except OSError:
                pass
            remove_quietly(cached)  # a damaged local copy: fetch the object again
        os.makedirs(os.path.dirname(cached), exist_ok=True)
        tmp = f"{cached}.{uuid.uuid4().hex}.part"
        try:
            self.fs.get_file(self.path(rel), tmp)
        except (FileNotFoundError, OSError):
            remove_quietly(tmp)
            raise CorruptArtifactError(self.path(rel), "the file is missing") from None
        got = hash_file(tmp)
        if got != expected_hash:
            remove_quietly(tmp)
            raise CorruptArtifactError(self.path(rel), "its content hash does not match")
        os.replace(tmp, cached)
        self._added_to_cache(cached)
        return cached

    # -- the local cache: its size limit and what gc removes from it ----------------------------
    def _cache_files(self) -> list[tuple[float, int, str]]:
        """(last used, size, path) of every cached object copy."""
        out = []
        objects = os.path.join(self._cache, "objects")
        for folder, _dirs, files in os.walk(objects):
            for name in files:
                path = os.path.join(folder, name)
                try:
                    st = os.lstat(path)
                except FileNotFoundError:
                    continue
                out.append((st.st_mtime, st.st_size, path))
        return out

    def _added_to_cache(self, path: str) -> None:
        try:
            size = os.path.getsize(path)
        except OSError:
            return
        if self._cached_bytes is None:
            self._cached_bytes = sum(size for _, size, _ in self._cache_files())
        else:
            self._cached_bytes += size
        if self._cached_bytes > self.cache_limit:
            self.trim_cache(keep=path)

    def trim_cache(self, keep: str | None = None) -> int:
        """Delete the least recently used local copies until the cache is within its limit
        (``keep``, the copy just fetched, stays whatever its size); returns the bytes freed."""
        files = sorted(self._cache_files())
        total = sum(size for _, size, _ in files)
        freed = 0
        for _used, size, path in files:
            if total - freed <= self.cache_limit:
                break
            if path == keep:
                continue
            remove_quietly(path)
            freed += size
        self._cached_bytes = total - freed
        return freed

    def gc_local(self, referenced: set[str], now: float, grace: float) -> int:
        """Remove local copies of objects no record names any more (deleted here or by another
        machine's gc), and downloads abandoned for ``grace`` seconds; the bytes freed."""
        freed = 0
        for used, size, path in self._cache_files():
            rel = os.path.relpath(path, self._cache).replace(os.sep, "/")
            partial = path.endswith(".part")
            if (partial and now - used >= grace) or (not partial and rel not in referenced):
                remove_quietly(path)
                freed += size
        tmp = os.path.join(self._cache, "tmp")
        for name in os.listdir(tmp) if os.path.isdir(tmp) else ():
            path = os.path.join(tmp, name)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            if now - st.st_mtime >= grace:
                remove_quietly(path)
                freed += st.st_size
        self._cached_bytes = None
        return freed

    def abort_uploads(self, now: float, grace: float) -> int:
        """Abort multipart uploads under the store's root started ``grace`` seconds ago or
        more (an interrupted upload of a large object: invisible in listings, but billed);
        the number aborted. Only S3 has them."""
        if not any(p in ("s3", "s3a") for p in self._protocols):
            return 0
        bucket, _, prefix = self.root.partition("/")
        aborted = 0
        for upload in self.fs.list_multipart_uploads(bucket):
            key, started = upload.get("Key", ""), upload.get("Initiated")
            if not key.startswith(prefix + "/" if prefix else ""):
                continue  # another store's, or not a store's at all: not ours
            age = now - started.timestamp() if hasattr(started, "timestamp") else 0.0
            if age >= grace:
                self.fs.abort_mpu(bucket, key, upload["UploadId"])
                aborted += 1
        return aborted

    def lock_dir(self) -> str:
        return os.path.join(self._cache, "locks")

    def local_dirs(self) -> list[str]:
        return [self._cache]


def _mtime_of(info: dict) -> float | None:
    """A remote file's modification time from fsspec's ``info`` (its keys differ by backend);
    None when none is known."""
    for key in ("mtime", "LastModified", "last_modified", "updated", "modified", "created"):
        value: Any = info.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if value is not None and hasattr(value, "timestamp"):
            return float(value.timestamp())
        if isinstance(value, str):
            try:
                return _dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
            except ValueError:
                continue
    return None


DEFAULT_CACHE_LIMIT = 5 * 2**30  # bytes of local copies of a remote store's objects


def cache_limit_from_env() -> int:
    """``PIPELITE_CACHE_LIMIT`` (bytes, or with a unit: ``500M``, ``5G``), else 5 GiB."""
    text = os.environ.get("PIPELITE_CACHE_LIMIT", "").strip().upper().removesuffix("B")
    if not text:
        return DEFAULT_CACHE_LIMIT
    scale = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}.get(text[-1:], 1)
    try:
        return max(0, int(float(text[:-1] if scale != 1 else text) * scale))
    except ValueError:
        return DEFAULT_CACHE_LIMIT


def _touch(path: str) -> None:
    try:
        os.utime(path)
    except OSError:
        pass


def remove_quietly(path: str) -> None:
    """Remove a local file; nothing if it is gone already."""
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def fsync_file(path: str) -> None:
    """fsync a file or (where the OS allows it) a directory, by path."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: str) -> None:
    if not sys.platform.startswith("win"):  # Windows cannot open a directory to sync it
        fsync_file(folder)
