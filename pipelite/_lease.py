"""Compute-once across machines: a lease on one (stage, fingerprint), kept in the store itself.

A lock file in a local folder holds only on one machine (or one ``TMPDIR``): two machines that
share an S3 bucket would compute the same stage twice. A lease is a small claim object in the
store, ``leases/STAGE-FINGERPRINT.json``, created with a conditional write (S3's
``If-None-Match: *``, ``O_EXCL`` on a local disk), holding its owner, when it started and a
heartbeat the owner renews while it computes. Others wait, then find the result stored and
load it. A claim whose heartbeat is older than ``timeout`` (its owner crashed, or lost the
network) is taken over: the taker writes its own claim, waits a moment, and owns the lease
if its claim is the one that is there.

Where the filesystem has no conditional create, a ``PipeliteWarning`` says so once per store:
two machines may then both start the stage (their results are the same; one is kept).
"""
from __future__ import annotations

import getpass
import json
import os
import socket
import threading
import time
import uuid
from typing import Any

from ._fs import StoreFS
from .fingerprint import warn_user

__all__ = ["Lease", "LEASE_TIMEOUT", "HEARTBEAT_EVERY"]

LEASE_TIMEOUT = 60.0  # seconds without a heartbeat after which a claim is taken over
HEARTBEAT_EVERY = 10.0  # seconds between an owner's renewals
SETTLE = 0.5  # seconds a taker waits before reading back whose claim won
_WARNED: set[str] = set()  # stores already told they have no conditional create


def user_and_host() -> tuple[str, str]:
    """Who runs this process, and where ("?" for what cannot be told): a lease's owner, and
    a record's provenance."""
    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001 - no login name (a container without passwd entry)
        user = "?"
    try:
        host = socket.gethostname()
    except OSError:
        host = "?"
    return user, host


def _owner() -> str:
    user, host = user_and_host()
    return f"{user}@{host}:{os.getpid()}"


class Lease:
    """``acquire()`` blocks until this process owns the claim; ``release()`` gives it up.

    The same interface as a ``filelock.FileLock``, so the runner takes either.
    """

    def __init__(self, fs: StoreFS, stage: str, fingerprint: str,
                 timeout: float = LEASE_TIMEOUT, heartbeat: float = HEARTBEAT_EVERY):
        self.fs = fs
        self.rel = f"leases/{stage}-{fingerprint}.json"
        self.timeout = timeout
        self.heartbeat = heartbeat
        self.token = uuid.uuid4().hex
        self.owner = _owner()
        self.started = 0.0
        self.lost = False  # another process took it over while we held it
        self.waited = 0.0  # seconds spent waiting for another owner
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    # -- the claim -----------------------------------------------------------------------------
    def _claim(self) -> bytes:
        return json.dumps({"owner": self.owner, "token": self.token, "started": self.started,
                           "heartbeat": time.time()}).encode()

    def _read(self) -> dict[str, Any] | None:
        """The claim there now; an unreadable one counts as {} (taken over once stale)."""
        try:
            data = self.fs.read_bytes(self.rel)
        except OSError:
            return {}
        if data is None:
            return None
        try:
            claim = json.loads(data)
        except ValueError:
            return {}
        return claim if isinstance(claim, dict) else {}

    def _stale(self, claim: dict[str, Any]) -> bool:
        beat = claim.get("heartbeat")
        if isinstance(beat, bool) or not isinstance(beat, (int, float)):
            return True  # a claim that says nothing usable: nobody renews it
        return time.time() - float(beat) > self.timeout

    # -- taking and giving up ------------------------------------------------------------------
    def acquire(self) -> None:
        if not self.fs.exclusive_create and self.fs.url not in _WARNED:
            _WARNED.add(self.fs.url)
            warn_user(f"the store {self.fs.url} has no conditional create: two machines may "
                      f"compute the same stage at the same time (each result is kept; the "
                      f"cost is the duplicated work)")
        t0 = time.monotonic()
        pause = 0.05
        while True:
            self.started = time.time()
            if self.fs.create_exclusive(self.rel, self._claim()):
                break
            claim = self._read()
            if claim is None:
                continue  # released between our create and our read: try again now
            if self._stale(claim) and self._take_over():
                break
            time.sleep(pause)
            pause = min(pause * 1.5, 1.0)
        self.waited = time.monotonic() - t0
        self._stop.clear()
        self._beat = threading.Thread(target=self._renew, name="pipelite-lease", daemon=True)
        self._beat.start()

    def _take_over(self) -> bool:
        """Replace a stale claim with ours; ours if it is still the one there after a moment
        (two takers may write at once: the last write wins, the other goes back to waiting)."""
        self.fs.write_atomic(self.rel, self._claim())
        time.sleep(SETTLE)
        claim = self._read()
        return claim is not None and claim.get("token") == self.token

    def _renew(self) -> None:
        while not self._stop.wait(self.heartbeat):
            claim = self._read()
            if not claim or claim.get("token") != self.token:
                self.lost = True  # taken over: we were too slow to renew; finish anyway
                return
            try:
                self.fs.write_atomic(self.rel, self._claim())
            except OSError:  # a network blip: the next beat tries again
                continue

    def release(self) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
            self._beat = None
        claim = self._read()
        if claim and claim.get("token") == self.token:
            self.fs.delete(self.rel)

    def __enter__(self) -> "Lease":
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()
