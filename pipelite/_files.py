"""Files and folders as artifacts: ``File`` as an input (a parameter, a global, ``%%stage
--file``) tracked by content, and as an output (``return {"report": File(...)}``) stored in
the store and restored into place on a hit.

An input file is tracked by the same check as the files a stage is seen reading
(``_observe``): its ``stat`` first, its hash only when the stat changed, and hashes
remembered across processes (``_hashcache``). A folder is its files' relative paths and
hashes (every regular file under it, at any depth; symbolic links to folders are not
followed; empty folders count for nothing, as in DVC).

An output file must lie under the current folder (the project), as DVC wants its outputs in
the repository: its record keeps the path relative to it, and a restore writes only there,
never through a symbolic link and never into the store. Restoring copies (a reflink where the
file system has them): a hard link would let an edit of the file change the stored result.
"""
from __future__ import annotations

import mmap
import os
import shutil
import stat as _stat
import tempfile
from typing import Any, Iterator, Sequence

import xxhash

from . import _hashcache, _observe
from .errors import InvalidArgumentError, StageOutputError, UnsafeRestoreError

__all__ = ["File", "file_digest", "LISTED_FILES", "restore", "store_file", "files_in"]

ABSENT = "<absent>"
LISTED_FILES = 200  # a folder with at most this many files keeps its listing, for reasons
_WINDOW = 256 << 20  # mapped at a time: a multiple of every allocation granularity


class File(os.PathLike):
    """A file or folder, tracked by content: ``File("data/raw.csv")``, ``File("data/images/")``.

    As a stage's parameter (or a global it reads) the stage is stale when the content changes,
    with the reason naming the file. Returned as an output, the file is stored and put back in
    place on a hit. It is a path (``os.PathLike``): ``open(f)``, ``pd.read_csv(f)`` work."""

    __slots__ = ("path", "key")
    path: str  # absolute
    key: str  # as reasons and records name it: relative to the current folder when under it

    def __init__(self, path: str | os.PathLike[str]):
        if isinstance(path, File):
            self.path, self.key = path.path, path.key
            return
        try:
            text = os.fspath(path)
        except TypeError:
            text = None
        if not isinstance(text, str) or not text or "\0" in text:
            raise InvalidArgumentError(
                f"File({path!r}): give the path of a file or folder as text, "
                f"e.g. File('data/raw.csv')")
        self.path = os.path.abspath(text)
        self.key = _shown(self.path)

    def __fspath__(self) -> str:
        return self.path

    def __repr__(self) -> str:
        return f"File({self.key!r})"

    def __str__(self) -> str:
        return self.path

    def __eq__(self, other: object) -> bool:
        return isinstance(other, File) and other.path == self.path

    def __hash__(self) -> int:
        return hash(("pipelite.File", self.path))

    def __reduce__(self) -> tuple:
        return (_rebuild, (self.path, self.key))

    def exists(self) -> bool:
        return os.path.exists(self.path)

    def open(self, mode: str = "r", **kwargs: Any) -> Any:
        return open(self.path, mode, **kwargs)

    def read_bytes(self) -> bytes:
        with open(self.path, "rb") as f:
            return f.read()

    def read_text(self, encoding: str = "utf-8") -> str:
        with open(self.path, encoding=encoding) as f:
            return f.read()


def _rebuild(path: str, key: str) -> File:
    f = File.__new__(File)
    f.path, f.key = path, key
    return f


def _shown(path: str, cwd: str | None = None) -> str:
    """A path as reasons and records name it: relative to the current folder when under it
    (with '/' separators), else absolute."""
    cwd = cwd or os.getcwd()
    prefix = cwd.rstrip(os.sep) + os.sep
    if path.startswith(prefix):
        return path[len(prefix):].replace(os.sep, "/")
    return path


# -- inputs ------------------------------------------------------------------------------------
def files_in(value: Any) -> list[File]:
    """The ``File``s in a parameter's value: itself, or the items of a list, tuple or dict."""
    if isinstance(value, File):
        return [value]
    if isinstance(value, (list, tuple)):
        return [v for v in value if isinstance(v, File)]
    if isinstance(value, dict):
        return [v for v in value.values() if isinstance(v, File)]
    return []


def file_digest(f: File, memo: dict | None = None) -> tuple[str, dict[str, str] | None]:
    """(digest, listing) of a file's or folder's content now: a file's xxh3-128; a folder's
    digest of its files' relative paths and hashes, with that listing ({rel: hash}); ABSENT
    for a path that does not exist. ``memo`` (a check's) walks each folder once a check."""
    if memo is not None:
        hit = memo.get(("file", f.path))
        if hit is not None:
            return hit
    try:
        st = os.stat(f.path)
    except OSError:
        found: tuple[str, dict[str, str] | None] = (ABSENT, None)
    else:
        if _stat.S_ISDIR(st.st_mode):
            listing = dict(_walk(f.path))
            h = xxhash.xxh3_128()
            for rel in sorted(listing):
                h.update(f"{rel}\0{listing[rel]}\n".encode("utf-8", "surrogateescape"))
            found = ("dir:" + h.hexdigest(), listing)
            _hashcache.flush()
        elif _stat.S_ISREG(st.st_mode):
            try:
                found = (_observe._hash(f.path, st), None)
            except OSError:
                found = (ABSENT, None)
        else:
            found = (f"special:{_stat.S_IFMT(st.st_mode)}", None)
    if memo is not None:
        memo[("file", f.path)] = found
    return found


def _walk(root: str) -> Iterator[tuple[str, str]]:
    """(relative path with '/', hash) of every regular file under ``root``. What the
    machine's hash cache remembers under it is read in one query first."""
    known = _hashcache.under(root)
    if known:
        _observe.remember_hashes(known)
    stack = [("", root)]
    while stack:
        rel, folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for e in entries:
            name = f"{rel}{e.name}"
            try:
                if e.is_dir(follow_symlinks=False):
                    stack.append((name + "/", e.path))
                elif e.is_file():  # a link to a file counts by the file's content
                    yield name, _observe._hash(e.path, e.stat())
            except OSError:
                continue  # vanished meanwhile: it is not there


def file_reasons(key: str, before: str | None, now: str | None,
                 old: dict[str, str] | None, new: dict[str, str] | None) -> list[str]:
    """Why input file or folder ``key`` no longer matches, in words."""
    if before is None:
        return [f"now reads file '{key}'"]
    if now is None:
        return [f"no longer reads file '{key}'"]
    if now == ABSENT:
        return [f"file '{key}' was removed"]
    if before == ABSENT:
        return [f"file '{key}' was created"]
    if not now.startswith("dir:") or not before.startswith("dir:"):
        return [f"file '{key}' changed"]
    folder = key.rstrip("/") + "/"
    if old is None or new is None:
        return [f"folder '{folder}' changed"]
    out = []
    for rel in sorted(set(old) | set(new)):
        if rel not in old:
            out.append(f"file '{folder}{rel}' was added")
        elif rel not in new:
            out.append(f"file '{folder}{rel}' was removed")
        elif old[rel] != new[rel]:
            out.append(f"file '{folder}{rel}' changed")
    return out or [f"folder '{folder}' changed"]


# -- outputs -----------------------------------------------------------------------------------
def output_key(f: File, stage: str, name: str, store_dirs: Sequence[str] = ()) -> str:
    """Where an output file is restored to, as its record keeps it: relative to the current
    folder. A folder, a missing file, a path outside the current folder or inside the store
    (``store_dirs``) is refused."""
    if not os.path.isfile(f.path):
        what = "a folder" if os.path.isdir(f.path) else "missing"
        raise StageOutputError(
            f"stage '{stage}', output '{name}': {f!r} is {what}: a file output must be a "
            f"file the stage wrote (store a folder's files one by one, or as an archive)")
    cwd = os.getcwd()
    key = _shown(f.path, cwd)
    if os.path.isabs(key) or not _restorable(key):
        raise StageOutputError(
            f"stage '{stage}', output '{name}': {f.path} is outside the current folder "
            f"({cwd}): file outputs are restored relative to the project folder, so write it "
            f"under it")
    try:
        target_of(key, list(store_dirs))
    except UnsafeRestoreError as exc:
        raise StageOutputError(
            f"stage '{stage}', output '{name}': {f.key} cannot be a file output: "
            f"{str(exc).replace('refusing to restore ', '')}; write it elsewhere in the "
            f"project folder") from None
    return key


def _restorable(key: Any) -> bool:
    """A relative path of plain names: no '..', no absolute part, no empty name, no NUL."""
    if not isinstance(key, str) or not key or "\0" in key or "\\" in key or len(key) > 4096:
        return False
    if key.startswith("/") or (len(key) > 1 and key[1] == ":"):
        return False
    return all(part not in ("", ".", "..") for part in key.split("/"))


def store_file(src: str, tmp: str) -> str:
    """Copy ``src`` to ``tmp`` (a new file in the store) and return the xxh3-128 hex digest of
    the copy. The kernel copies (``shutil.copyfile``: ``sendfile`` on Linux), then the copy is
    hashed through memory maps of its cached pages, so no byte passes through a buffer of
    ours. Hashing the copy, which nothing else writes, digests exactly the bytes stored even if
    the source changes meanwhile. The read/hash/write loop this replaces copied every byte
    twice in user space: for 1 GiB on the 2-core VM it took 2.6 s with the fsync and 1.4 s of
    CPU, this 1.6 s and 0.7 s, a bare copy + fsync 2.0 s and 0.9 s (benchmarks/README.md)."""
    shutil.copyfile(src, tmp)
    return _mapped_digest(tmp)


def _mapped_digest(path: str) -> str:
    h = xxhash.xxh3_128()
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        for offset in range(0, size, _WINDOW):
            with mmap.mmap(f.fileno(), min(_WINDOW, size - offset), offset=offset,
                           access=mmap.ACCESS_READ) as window:
                h.update(window)
    return h.hexdigest()


def target_of(key: Any, store_dirs: Sequence[str]) -> str:
    """The absolute path a recorded output file goes back to; ``UnsafeRestoreError`` if the
    record names anything but a plain relative path under the current folder, or a place
    inside the store, or one reached through a symbolic link."""
    cwd = os.path.realpath(os.getcwd())
    if not _restorable(key):
        raise UnsafeRestoreError(f"refusing to restore a file output to {key!r}: not a plain "
                                 f"path under the current folder")
    target = os.path.join(cwd, *key.split("/"))
    existing = os.path.dirname(target)
    while not os.path.lexists(existing):  # the folders to create: checked from the one there
        existing = os.path.dirname(existing)
    if os.path.realpath(existing) != existing:
        raise UnsafeRestoreError(f"refusing to restore {key}: its folder is reached through a "
                                 f"symbolic link")
    if os.path.islink(target):
        raise UnsafeRestoreError(f"refusing to restore {key}: it is a symbolic link")
    for folder in store_dirs:
        root = os.path.realpath(folder).rstrip(os.sep) + os.sep
        if (target + os.sep).startswith(root):
            raise UnsafeRestoreError(f"refusing to restore {key}: it is inside the store")
    return target


def in_place(target: str, digest: str, size: int) -> bool:
    """Whether ``target`` holds exactly that content (its stat first, as every file check)."""
    try:
        st = os.stat(target)
    except OSError:
        return False
    if not _stat.S_ISREG(st.st_mode) or st.st_size != size:
        return False
    try:
        return _observe._hash(target, st) == digest
    except OSError:
        return False
    finally:
        _hashcache.flush()


def restore(source: str, target: str, digest: str, size: int) -> str | None:
    """Put the stored object ``source`` at ``target`` unless it holds that content already.
    A changed file there is kept beside it (``NAME.~pipelite~``), never lost. Returns what
    happened in words (None if nothing was needed)."""
    if in_place(target, digest, size):
        return None
    folder = os.path.dirname(target)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".pipelite-", dir=folder)
    os.close(fd)
    try:
        _clone_or_copy(source, tmp)
        kept = None
        if os.path.lexists(target):
            kept = _backup_name(target)
            os.replace(target, kept)
        os.replace(tmp, target)
    except BaseException:
        _observe_remove(tmp)
        raise
    shown = _shown(target)
    if kept is not None:
        return f"restored {shown} from the store (it had changed; the changed file is " \
               f"kept as {_shown(kept)})"
    return f"restored {shown} from the store"


def _backup_name(target: str) -> str:
    """Where a changed file goes before the stored one takes its place: ``NAME.~pipelite~``,
    else the first free ``NAME.~pipelite-2~``, ``-3``...: an earlier backup is never
    overwritten."""
    candidate, n = f"{target}.~pipelite~", 1
    while os.path.lexists(candidate):
        n += 1
        candidate = f"{target}.~pipelite-{n}~"
    return candidate


def _clone_or_copy(source: str, target: str) -> None:
    """Fill ``target`` (an empty file just created) with ``source``'s bytes: a reflink
    (copy-on-write: instant, no space) where the file system has them, else the kernel copies
    (``sendfile``). The file is opened once, without truncating it: ext4 flushes a file
    truncated and rewritten on close (its ``auto_da_alloc``), which made a restore wait for the
    disk."""
    with open(source, "rb") as fin, open(target, "r+b") as fout:
        try:
            import fcntl

            fcntl.ioctl(fout.fileno(), 0x40049409, fin.fileno())  # FICLONE (Linux)
            return
        except (ImportError, OSError):
            pass
        try:
            offset, size = 0, os.fstat(fin.fileno()).st_size
            while offset < size:
                sent = os.sendfile(fout.fileno(), fin.fileno(), offset, min(size - offset,
                                                                           1 << 30))
                if not sent:
                    break
                offset += sent
            return
        except (AttributeError, OSError):  # no sendfile to a file here: copy in user space
            fin.seek(0)
            fout.seek(0)
            fout.truncate()
    shutil.copyfile(source, target)


def _observe_remove(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass
