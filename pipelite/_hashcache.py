"""This machine's memory of file hashes, kept across processes, as git's index and DVC's state
database keep theirs: a file whose (path, device, inode, size, mtime_ns, ctime_ns) is unchanged
since it was hashed has the same content, so a new kernel checks an unchanged 10 GiB folder of
inputs by ``stat`` alone.

One SQLite file (``$XDG_CACHE_HOME/pipelite/file-hashes.sqlite3``, else ``~/.cache/...``; the
environment variable ``PIPELITE_HASH_CACHE`` names another file, or ``off`` turns it off).
It is a cache: any failure to open, read or write it (a read-only home, a locked or damaged
file) only means files are hashed again; a value that is not a hash is ignored. Files
modified within ``_observe.RACY_NS`` of being hashed are never remembered (a second write in
the same clock tick would not change their stat). Writes are batched: a folder of 10,000 new
files costs one transaction, not 10,000.
"""
from __future__ import annotations

import atexit
import os
import re
import sqlite3
import threading
from typing import Any

__all__ = ["lookup", "remember", "flush", "location"]

ENV = "PIPELITE_HASH_CACHE"
MAX_ROWS = 1_000_000  # about 150 MB; past it the oldest half goes
_BATCH = 2_000
_HEX = re.compile(r"[0-9a-f]{32}\Z")

_lock = threading.Lock()
_conn: sqlite3.Connection | None = None
_conn_pid: int | None = None
_conn_path: str | None = None
_broken: str | None = None  # the path that failed: not tried again in this process
_pending: list[tuple] = []


_WHERE: tuple[tuple[str, str | None], str | None] | None = None  # (env, XDG), location


def location() -> str | None:
    """The cache file, or None when turned off (worked out again only when the environment
    variables it depends on change: it is asked once a file)."""
    global _WHERE
    env = (os.environ.get(ENV, ""), os.environ.get("XDG_CACHE_HOME"))
    if _WHERE is not None and _WHERE[0] == env:
        return _WHERE[1]
    found = _location()
    _WHERE = (env, found)
    return found


def _location() -> str | None:
    value = os.environ.get(ENV, "").strip()
    if value.lower() in ("0", "off", "false", "no"):
        return None
    if value:
        return os.path.abspath(os.path.expanduser(value))
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "pipelite", "file-hashes.sqlite3")


def _connection() -> sqlite3.Connection | None:
    """The open cache for this process (reopened after a fork or a change of location)."""
    global _conn, _conn_pid, _conn_path, _broken
    path = location()
    if path is None or path == _broken:
        return None
    if _conn is not None and _conn_pid == os.getpid() and _conn_path == path:
        return _conn
    _pending.clear()  # a forked child's copy of its parent's batch is the parent's to write
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        conn = sqlite3.connect(path, timeout=2.0, check_same_thread=False,
                               isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("CREATE TABLE IF NOT EXISTS hashes (path TEXT, dev INTEGER, ino INTEGER, "
                     "size INTEGER, mtime_ns INTEGER, ctime_ns INTEGER, hash TEXT, "
                     "PRIMARY KEY (path, dev, ino, size, mtime_ns, ctime_ns))")
    except (sqlite3.Error, OSError):
        _broken = path
        return None
    _conn, _conn_pid, _conn_path = conn, os.getpid(), path
    return conn


def lookup(path: str, key: tuple) -> str | None:
    """The remembered hash of ``path`` at stat ``key`` (dev, ino, size, mtime_ns, ctime_ns)."""
    with _lock:
        conn = _connection()
        if conn is None:
            return None
        try:
            row = conn.execute(
                "SELECT hash FROM hashes WHERE path=? AND dev=? AND ino=? AND size=? AND "
                "mtime_ns=? AND ctime_ns=?", (path, *key)).fetchone()
        except (sqlite3.Error, OverflowError):
            return None
    value: Any = row[0] if row else None
    return value if isinstance(value, str) and _HEX.match(value) else None


PRELOAD_MAX = 100_000  # rows of one folder loaded at once; a bigger one is looked up by file


def under(folder: str) -> dict[tuple, str]:
    """Every remembered hash of a file under ``folder``, by its stat key (dev, ino, size,
    mtime_ns, ctime_ns): one query for a folder instead of one a file. Empty when there are
    more than ``PRELOAD_MAX`` (then each file is looked up as it comes)."""
    prefix = folder.rstrip(os.sep) + os.sep
    upper = prefix[:-1] + chr(ord(os.sep) + 1)
    with _lock:
        conn = _connection()
        if conn is None:
            return {}
        try:
            rows = conn.execute(
                "SELECT dev, ino, size, mtime_ns, ctime_ns, hash FROM hashes WHERE path >= ? "
                "AND path < ? LIMIT ?", (prefix, upper, PRELOAD_MAX + 1)).fetchall()
        except sqlite3.Error:
            return {}
    if len(rows) > PRELOAD_MAX:
        return {}
    return {tuple(r[:5]): r[5] for r in rows if isinstance(r[5], str) and _HEX.match(r[5])}


def remember(path: str, key: tuple, digest: str) -> None:
    """Keep ``digest`` for ``path`` at stat ``key`` (written with the next batch)."""
    with _lock:
        if location() is None:
            return
        _pending.append((path, *key, digest))
        if len(_pending) >= _BATCH:
            _write()


def flush() -> None:
    """Write what ``remember`` keeps (after a check, a folder walk, and at exit)."""
    with _lock:
        _write()


def _write() -> None:
    if not _pending:
        return
    conn = _connection()
    batch = list(_pending)
    _pending.clear()
    if conn is None:
        return
    try:
        conn.execute("BEGIN")
        conn.executemany("INSERT OR REPLACE INTO hashes VALUES (?, ?, ?, ?, ?, ?, ?)", batch)
        conn.execute("COMMIT")
        if (conn.execute("SELECT max(rowid) FROM hashes").fetchone()[0] or 0) > MAX_ROWS:
            rows = conn.execute("SELECT count(*) FROM hashes").fetchone()[0]
            if rows > MAX_ROWS:
                conn.execute("DELETE FROM hashes WHERE rowid IN (SELECT rowid FROM hashes "
                             "ORDER BY rowid LIMIT ?)", (rows // 2,))
    except (sqlite3.Error, OverflowError):
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass


def _after_fork_in_child() -> None:
    """A forked worker (a process pool) starts with a fresh lock and no connection: another
    thread of the parent may have held the lock at the fork, and an SQLite connection must
    not cross a fork."""
    global _lock, _conn, _conn_pid
    _lock = threading.Lock()
    _conn, _conn_pid = None, None
    _pending.clear()


atexit.register(flush)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
