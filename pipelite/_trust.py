"""A store is code: who can write it can run code where it is loaded. Records are signed.

Stored pickles run code when they are loaded, and a cell's replayed output can carry HTML and
JavaScript. So, as Jupyter signs notebooks, PipeLite signs every record it writes with an HMAC
(SHA-256) under a key of yours:

- ``PIPELITE_KEY`` (the key itself, any text: a team shares one this way, e.g. on Dask
  workers), else the file ``PIPELITE_KEY_FILE``, else ``<jupyter data dir>/pipelite/signing.key``,
  created on first use with 32 random bytes, readable by you only.

A record not signed with your key still loads its safe formats (npy, Arrow IPC, Parquet, JSON:
data only);
pickles, user formats and replayed cell output are refused with ``UntrustedRecordError`` until
you accept the store with ``pipelite trust STORE`` (which signs its records with your key).
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from typing import Any

__all__ = ["SAFE_FORMATS", "signature", "is_signed", "key_source"]

SAFE_FORMATS = frozenset({"npy", "arrow-pandas", "arrow-polars", "parquet-pandas", "parquet-polars",
                          "json"})
ENV_KEY = "PIPELITE_KEY"
ENV_KEY_FILE = "PIPELITE_KEY_FILE"

_cached: tuple[tuple, bytes] | None = None


def _key_file() -> str:
    path = os.environ.get(ENV_KEY_FILE)
    if path:
        return os.path.expanduser(path)
    try:
        from jupyter_core.paths import jupyter_data_dir

        base = jupyter_data_dir()
    except ImportError:  # the core does not need Jupyter: its default place, by hand
        base = os.path.join(os.environ.get("XDG_DATA_HOME") or os.path.expanduser(
            "~/.local/share"), "jupyter")
    return os.path.join(base, "pipelite", "signing.key")


def key_source() -> str:
    """Where the signing key comes from, in words (for messages)."""
    return f"${ENV_KEY}" if os.environ.get(ENV_KEY) else _key_file()


def _key() -> bytes:
    global _cached
    env = os.environ.get(ENV_KEY)
    where = (env, None) if env else (None, _key_file())
    if _cached is not None and _cached[0] == where:
        return _cached[1]
    if env:
        key = env.encode()
    else:
        path = where[1]
        assert path is not None
        try:
            with open(path, "rb") as f:
                key = f.read().strip()
        except FileNotFoundError:
            key = _create(path)
    _cached = (where, key)
    return key


def _create(path: str) -> bytes:
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    key = secrets.token_hex(32).encode()
    tmp = f"{path}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key)
    try:
        os.link(tmp, path)  # never replaces a key another process made meanwhile
    except FileExistsError:
        pass
    finally:
        os.remove(tmp)
    with open(path, "rb") as f:
        return f.read().strip()


def signature(record: dict) -> str:
    """The HMAC of a record (everything in it but its signature) under your key."""
    body = {k: v for k, v in record.items() if k != "signature"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hmac.new(_key(), text.encode(), hashlib.sha256).hexdigest()


def is_signed(record: Any) -> bool:
    """Whether the record carries a valid signature under your key."""
    sig = record.get("signature") if isinstance(record, dict) else None
    return isinstance(sig, str) and hmac.compare_digest(sig, signature(record))
