"""Dependencies observed while a stage runs: files it reads, user modules it imports, and
directories it lists.

Static analysis (the fingerprint) cannot see ``open("data.csv")`` or a module imported inside
a library call. While a stage runs, a ``sys.addaudithook`` hook (installed once per process,
the first time a stage runs; it cannot be removed, and returns at once while no stage runs)
records:

* ``open`` events whose flags open the file for reading (``O_RDONLY`` or ``O_RDWR``, without
  ``O_TRUNC``: ``"r"``, ``"rb"``, ``"r+"``, ``"a+"``, ``os.open(p, O_RDONLY)``). Writes (``"w"``,
  ``"a"``, ``"x"``, ``"w+"``) are not dependencies. File descriptors (ints) are ignored.
* ``import`` events: Python raises them only when a module is really loaded (not for one
  already in ``sys.modules``). The module's file is recorded unless it is a library's.
* ``os.listdir`` / ``os.scandir`` events (``glob.glob``, ``os.walk``, ``Path.glob`` and
  ``Path.iterdir`` all list through them), except the import system's own listings.

Files under the store, the interpreter's library locations (sysconfig ``stdlib``,
``platstdlib``, ``purelib``, ``platlib``, ``sys.path`` entries with ``site-packages`` or
``dist-packages``), PipeLite's own packages, ``/proc``, ``/sys`` and ``/dev``, and ``__pycache__``
are never recorded; files in the temp directory (``tempfile.gettempdir()``) are not recorded
unless they are under the current directory (a project that lives in the temp directory).

Attribution: events from the thread running a stage go to that stage (and to a stage that
started it on the same thread); events from a thread that runs no stage, while stages run,
go to every stage running in the process (an over-approximation: a false "stale" is possible,
a false "fresh" is not).

After the stage returns, each file is recorded with its absolute path, size, mtime_ns, inode,
ctime_ns and xxh3-128 hash, as it is after the run (``absent`` if it is gone); each module
with its name and the same for its file; each listing with its directory, mtime_ns and a digest
of its sorted entry names. A process-wide cache keyed by the file's (device, inode, size,
mtime_ns, ctime_ns) avoids hashing an unchanged file twice, as git's index does; a file
modified within ``RACY_NS`` of being hashed is never cached and its record entry is marked
``racy`` (rehashed on every check), since a second write within the same mtime tick would
not change its stat.

Checking (``changes``): an entry whose stat matches the record is unchanged (the fast path);
otherwise the file is rehashed and only a different hash counts.

Turn observation off with the environment variable ``PIPELITE_OBSERVE=0`` (read each time a
stage runs, so it also reaches executor workers that inherit the environment). With it off the
hook is never installed and new records carry no ``observed`` section; records that have one
are still checked.
"""
from __future__ import annotations

import importlib.util
import os
import stat as _stat
import sys
import tempfile
import threading
import time
from typing import Any, Iterable

import xxhash

from . import _hashcache
from ._libraries import library_locations
from .formats import hash_file

__all__ = ["enabled", "start", "Recorder", "changes", "hook_installed"]

ENV = "PIPELITE_OBSERVE"
RACY_NS = 2_000_000_000  # coarse mtime clocks (ext4 ~4 ms, FAT 2 s): trust no younger stat
MAX_REASONS = 5

_O_WRITE_ONLY = os.O_WRONLY
_O_ACC = os.O_WRONLY | os.O_RDWR
_O_TRUNC = getattr(os, "O_TRUNC", 0)

_lock = threading.Lock()
_installed = False
_all: tuple["Recorder", ...] = ()  # every active recorder: empty means the hook returns at once
_by_thread: dict[int, "Recorder"] = {}  # thread ident -> innermost stage running on it
_cwd: str | None = None  # the cwd since recorders became active; None after a chdir seen then
_HASHES: dict[tuple, str] = {}  # (dev, ino, size, mtime_ns, ctime_ns) -> xxh3-128
_HASH_CACHE_MAX = 200_000


def enabled() -> bool:
    """Whether stages record what they read (``PIPELITE_OBSERVE=0`` turns it off)."""
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def hook_installed() -> bool:
    return _installed


def _hook(event: str, args: tuple, _ident=threading.get_ident) -> None:
    global _cwd
    if not _all:
        return
    try:
        if event == "open":
            path, _mode, flags = args
            if type(path) is int or flags & _O_ACC == _O_WRITE_ONLY or flags & _O_TRUNC:
                return
            # the path object itself (no allocation) while the cwd is the recorders' own;
            # after a chdir, with the cwd it is relative to
            item = path if _cwd is not None else (os.getcwd(), path)
            r = _by_thread.get(_ident())
            if r is not None:
                r.opens.append(item)
            else:
                for r in _all:
                    r.opens.append(item)
        elif event == "import":
            _deliver("modules", args[0])
        elif event == "os.listdir" or event == "os.scandir":
            path = args[0]
            if type(path) is int:
                return
            # the import system lists sys.path folders to find modules: not the stage's doing
            if sys._getframe(1).f_code.co_filename.startswith("<frozen importlib"):
                return
            _deliver("listings", ("." if path is None else path) if _cwd is not None
                     else (os.getcwd(), path or "."))
        elif event == "os.chdir" or event == "os.fchdir":
            _cwd = None
    except Exception:  # noqa: BLE001 - an audit hook must never break the operation it sees
        pass


def _deliver(kind: str, item: Any) -> None:
    """Give an event to the stage running on this thread, else to every running stage
    (``open``, the hot one, does the same inline)."""
    r = _by_thread.get(threading.get_ident())
    for rec in (r,) if r is not None else _all:
        getattr(rec, kind).append(item)


def _install() -> None:
    global _installed
    if not _installed:
        with _lock:
            if not _installed:
                sys.addaudithook(_hook)
                _installed = True


class Recorder:
    """What one stage run reads. ``start()`` makes one; ``stop()`` ends recording;
    ``collect()`` stats and hashes what was recorded (after the stage returned)."""

    __slots__ = ("opens", "modules", "listings", "parent", "exclude", "cwd", "thread", "stopped")

    def __init__(self, exclude: Iterable[str]):
        self.opens: list = []
        self.modules: list = []
        self.listings: list = []
        self.parent: Recorder | None = None
        self.exclude = tuple(_prefixes(exclude))
        self.cwd = os.getcwd()
        self.thread = threading.get_ident()
        self.stopped = False

    def stop(self) -> None:
        global _all
        if self.stopped:
            return
        self.stopped = True
        with _lock:
            if self.parent is None:
                if _by_thread.get(self.thread) is self:
                    del _by_thread[self.thread]
            else:
                _by_thread[self.thread] = self.parent
            _all = tuple(r for r in _all if r is not self)
        if self.parent is not None:  # a stage run inside a stage: the outer one read it too
            self.parent.opens.extend(self.opens)
            self.parent.modules.extend(self.modules)
            self.parent.listings.extend(self.listings)

    def collect(self, carry_modules: Iterable[str] = ()) -> dict | None:
        """The ``observed`` section of the record (None when nothing was observed).

        ``carry_modules``: modules the previous run of the same stage imported; a rerun in the
        same process finds them loaded already (no ``import`` event), so those still loaded are
        kept (an over-approximation)."""
        self.stop()
        cwd_prefix = self.cwd.rstrip(os.sep) + os.sep
        excluded = (*self.exclude, *_always_excluded())

        def keep(path: str) -> bool:
            slashed = path + os.sep  # the excluded folders themselves too
            if slashed.startswith(excluded):
                return False
            return not slashed.startswith(_temp_prefixes()) or path.startswith(cwd_prefix)

        names = set(self.modules) | {m for m in carry_modules if m in sys.modules}
        paths = {_resolve(self.cwd, item) for item in _unique(self.opens)}
        # importlib.import_module raises no "import" event (only the C import path does), but
        # the loader opens the module's .py (or its __pycache__ .pyc): map those back
        sources = set()
        for p in paths:
            if p.endswith(".py"):
                sources.add(p)
            elif p.endswith(".pyc") and "__pycache__" in p:
                try:
                    sources.add(os.path.normpath(importlib.util.source_from_cache(p)))
                except (ValueError, NotImplementedError):
                    pass
        sources = {p for p in sources if keep(p)}
        if sources:
            for name, mod in list(sys.modules.items()):
                file = getattr(mod, "__file__", None)
                if isinstance(file, str) and os.path.normpath(file) in sources:
                    names.add(name)
        modules: dict[str, str] = {}
        for name in names:
            loaded = sys.modules.get(name)
            file = getattr(loaded, "__file__", None) if loaded is not None else None
            if isinstance(file, str):
                file = _absolute(self.cwd, file)
                if keep(file):
                    modules[name] = file
        module_files = set(modules.values())
        files = sorted(p for p in paths if p not in module_files and keep(p)
                       and "__pycache__" not in p and not p.endswith(".pyc"))
        dirs = sorted({d for d in (_resolve(self.cwd, i) for i in _unique(self.listings))
                       if keep(d)})
        observed: dict[str, list] = {}
        if files:
            observed["files"] = [e for e in (_file_entry(p) for p in files) if e is not None]
        if modules:
            mods = []
            for name in sorted(modules):
                e = _file_entry(modules[name])
                if e is not None:
                    e = {"name": name, "file": e.pop("path"), **e}
                    mods.append(e)
            observed["modules"] = mods
        if dirs:
            observed["listings"] = [_listing_entry(d) for d in dirs]
        observed = {k: v for k, v in observed.items() if v}
        _hashcache.flush()  # what was hashed is remembered for the next process
        return observed or None


def start(exclude: Iterable[str] = ()) -> Recorder:
    """Begin recording for the stage about to run on this thread."""
    global _all, _cwd
    _install()
    rec = Recorder(exclude)
    with _lock:
        rec.parent = _by_thread.get(rec.thread)
        _by_thread[rec.thread] = rec
        if not _all:  # while recorders are active a chdir keeps _cwd None until all stop
            _cwd = rec.cwd
        _all = _all + (rec,)
    return rec


# -- locations ----------------------------------------------------------------------------------
def _unique(items: list) -> Iterable:
    try:
        return set(items)
    except TypeError:  # an unhashable path-like object
        return items


def _resolve(cwd: str, item: Any) -> str:
    """A recorded item: a path relative to the recorder's cwd, or (cwd, path) after a chdir."""
    if type(item) is tuple:
        return _absolute(item[0], item[1])
    return _absolute(cwd, item)


def _absolute(cwd: str, path: Any) -> str:
    try:
        path = os.fsdecode(os.fspath(path))
    except TypeError:
        path = str(path)
    return os.path.normpath(os.path.join(cwd, path))


def _prefixes(dirs: Iterable[str]) -> list[str]:
    out: list[str] = []
    for d in dirs:
        if not d:
            continue
        for form in {os.path.normpath(os.path.abspath(d)), os.path.realpath(d)}:
            out.append(form.rstrip(os.sep) + os.sep)
    return out


_LIBRARY: tuple[str, ...] | None = None
_TEMP: tuple[str, ...] | None = None


def library_dirs() -> list[str]:
    """The interpreter's library locations and PipeLite's own packages."""
    dirs = library_locations()
    here = os.path.dirname(os.path.abspath(__file__))
    dirs += [here, os.path.join(os.path.dirname(here), "pipelite_ipy")]
    return dirs


def _always_excluded() -> tuple[str, ...]:
    global _LIBRARY
    if _LIBRARY is None:
        pseudo = ["/proc", "/sys", "/dev"] if os.name == "posix" else []
        _LIBRARY = tuple(_prefixes(library_dirs() + pseudo))
    return _LIBRARY


def _temp_prefixes() -> tuple[str, ...]:
    global _TEMP
    if _TEMP is None:
        _TEMP = tuple(_prefixes([tempfile.gettempdir()]))
    return _TEMP


# -- hashing ------------------------------------------------------------------------------------
def _key(st: os.stat_result) -> tuple:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _racy(st: os.stat_result, now_ns: int) -> bool:
    return st.st_mtime_ns >= now_ns - RACY_NS


def _hash(path: str, st: os.stat_result) -> str:
    """The file's xxh3-128, from the process cache when its stat is unchanged, else from the
    machine's hash cache (``_hashcache``: a new kernel checks an unchanged 10 GiB folder by
    ``stat`` alone), else read and hashed."""
    key = _key(st)
    found = _HASHES.get(key)
    if found is not None:
        return found
    found = _hashcache.lookup(path, key)
    if found is not None:
        _HASHES[key] = found
        return found
    now = time.time_ns()
    digest = _hash_small(path, st.st_size) if st.st_size <= _SMALL else hash_file(path)
    if not _racy(st, now):
        if len(_HASHES) >= _HASH_CACHE_MAX:
            _HASHES.clear()
        _HASHES[key] = digest
        _hashcache.remember(path, key, digest)
    return digest


def remember_hashes(known: dict[tuple, str]) -> None:
    """Add hashes by stat key (from the machine's cache) to this process's."""
    if len(_HASHES) + len(known) > _HASH_CACHE_MAX:
        _HASHES.clear()
    _HASHES.update(known)


_SMALL = 1 << 20


def _hash_small(path: str, size: int) -> str:
    """A small file's digest in one read, without a file object (most observed files are)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    try:
        chunks: list[bytes] = []
        while True:  # to the end, even if it grew since the stat
            chunk = os.read(fd, size + 1 if not chunks else 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(fd)
    return xxhash.xxh3_128_hexdigest(b"".join(chunks))


def _file_entry(path: str) -> dict | None:
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return {"path": path, "absent": True}
    except OSError:
        return None
    if not _stat.S_ISREG(st.st_mode):  # a directory, FIFO or device: nothing to hash
        return None
    try:
        digest = _hash(path, st)
    except OSError:
        return None
    entry = {"path": path, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "hash": digest,
             "ino": st.st_ino, "ctime_ns": st.st_ctime_ns}
    if _racy(st, time.time_ns()):
        entry["racy"] = True
    return entry


def _listing_digest(folder: str) -> str:
    names = sorted(os.listdir(folder))
    return xxhash.xxh3_128_hexdigest("\0".join(names).encode("utf-8", "surrogateescape"))


def _listing_entry(folder: str) -> dict:
    try:
        st = os.stat(folder)
        digest = _listing_digest(folder)
    except OSError:
        return {"dir": folder, "absent": True}
    entry = {"dir": folder, "mtime_ns": st.st_mtime_ns, "digest": digest}
    if _racy(st, time.time_ns()):
        entry["racy"] = True
    return entry


# -- checking -----------------------------------------------------------------------------------
def _shown(path: str, cwd: str) -> str:
    prefix = cwd.rstrip(os.sep) + os.sep
    return path[len(prefix):] if path.startswith(prefix) else path


def _file_changed(entry: dict, path: str) -> str | None:
    """None if unchanged, else "changed", "was removed" or "was created"."""
    try:
        st = os.stat(path)
    except OSError:
        return None if entry.get("absent") else "was removed"
    if entry.get("absent"):
        return "was created"
    if not _stat.S_ISREG(st.st_mode):
        return "changed"
    if (not entry.get("racy") and st.st_size == entry["size"]
            and st.st_mtime_ns == entry["mtime_ns"] and st.st_ino == entry.get("ino", st.st_ino)
            and st.st_ctime_ns == entry.get("ctime_ns", st.st_ctime_ns)):
        return None  # the fast path: the same stat as when it was hashed
    if st.st_size != entry["size"]:
        return "changed"
    try:
        return None if _hash(path, st) == entry["hash"] else "changed"
    except OSError:
        return "was removed"


def changes(observed: dict | None, cwd: str | None = None) -> list[str]:
    """Why the observed dependencies of a record no longer hold, in words ([] if they do)."""
    if not observed:
        return []
    cwd = cwd or os.getcwd()
    reasons: list[str] = []
    stat, regular = os.stat, _stat.S_ISREG
    for entry in observed.get("files", ()):
        path = entry["path"]
        try:  # the fast path, inline: thousands of files are checked per status()
            st = stat(path)
            if (st.st_mtime_ns == entry.get("mtime_ns") and st.st_size == entry["size"]
                    and st.st_ino == entry.get("ino", st.st_ino)
                    and st.st_ctime_ns == entry.get("ctime_ns", st.st_ctime_ns)
                    and "racy" not in entry and regular(st.st_mode)):
                continue
        except OSError:
            pass
        what = _file_changed(entry, path)
        if what:
            reasons.append(f"file '{_shown(path, cwd)}' {what}")
    for entry in observed.get("modules", ()):
        what = _file_changed(entry, entry["file"])
        if what == "changed":
            reasons.append(f"module '{entry['name']}' changed")
        elif what:
            reasons.append(f"module '{entry['name']}' {what} ({_shown(entry['file'], cwd)})")
    for entry in observed.get("listings", ()):
        folder = entry["dir"]
        try:
            st = os.stat(folder)
        except OSError:
            if not entry.get("absent"):
                reasons.append(f"directory '{_shown(folder, cwd)}' was removed")
            continue
        if entry.get("absent"):
            reasons.append(f"directory '{_shown(folder, cwd)}' was created")
            continue
        if not entry.get("racy") and st.st_mtime_ns == entry["mtime_ns"]:
            continue
        try:
            same = _listing_digest(folder) == entry["digest"]
        except OSError:
            same = False
        if not same:
            reasons.append(f"directory '{_shown(folder, cwd)}' listing changed")
    if len(reasons) > MAX_REASONS:
        more = len(reasons) - MAX_REASONS + 1
        reasons = reasons[: MAX_REASONS - 1] + [f"and {more} more observed dependencies changed"]
    _hashcache.flush()
    return reasons
