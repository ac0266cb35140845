"""Checking a store location before it is used: a mistake in it is said up front, naming the
path or URL, instead of surfacing later as an OSError (or a ValueError from fsspec) from deep
inside a run."""
from __future__ import annotations

import errno
import os
from collections.abc import Mapping
from typing import Any, NamedTuple

from .errors import StoreLocationError

__all__ = ["Location", "check_store_location", "parse_location"]

_EXAMPLE = "e.g. '.pipelite' (the default), '/data/pipelite' or 's3://bucket/prefix'"


class Location(NamedTuple):
    """A store location read as remote (an fsspec URL) or local (a path)."""

    is_remote: bool
    path_or_url: str  # the URL whole; the path as given (relative, '~'), 'file://' taken off


def parse_location(location: str | os.PathLike[str]) -> Location:
    """Whether ``location`` is an fsspec URL or a local path, and which: the one rule every
    part of PipeLite reads a store location by.

    A URL of any protocol but ``file`` is remote, chains included (``simplecache::s3://b/p``,
    ``memory://x``); anything else is a local path, ``file://`` taken off
    (``file:///data/store`` is ``/data/store``). ``os.PathLike`` objects are read as their
    path. Nothing is checked here (``check_store_location`` does that)."""
    loc = os.fspath(location)
    if "://" in loc and not loc.startswith("file://"):
        # one store, one URL: s3://b/x/ is s3://b/x (its locks, cache and events are shared)
        head, sep, rest = loc.rpartition("://")
        return Location(True, head + sep + (rest.rstrip("/") or rest))
    return Location(False, loc.removeprefix("file://"))


def check_store_location(location: Any, storage_options: Any = None) -> None:
    """Raise ``StoreLocationError`` if ``location`` (a path or an fsspec URL) cannot be a store,
    or ``storage_options`` is not a mapping. Nothing is created: a missing local directory
    is created by the first write, as before; here it is only checked that it could be."""
    if storage_options is not None and not isinstance(storage_options, Mapping):
        raise StoreLocationError(
            f"storage_options must be a mapping of fsspec options (e.g. "
            f"{{'endpoint_url': 'http://localhost:9000'}}), not {type(storage_options).__name__} "
            f"{storage_options!r}")
    if not isinstance(location, (str, os.PathLike)):
        return  # Store says what it accepts
    loc = os.fspath(location)
    if not isinstance(loc, str):
        return
    is_remote, path = parse_location(loc)
    if is_remote:
        _check_protocols(loc)
        return
    if not path.strip():
        raise StoreLocationError(
            f"the store path is empty ({loc!r}): pass a directory or an fsspec URL, {_EXAMPLE}")
    _check_local_dir(loc, os.path.abspath(os.path.expanduser(path)))


def _check_local_dir(given: str, path: str) -> None:
    if os.path.isdir(path):
        return
    if os.path.lexists(path):
        raise StoreLocationError(
            f"store {given} is not a directory (it is a file or other non-directory): pick a "
            f"directory path for the store, {_EXAMPLE}")
    # the nearest part of the path that exists must be a directory we can create folders in
    missing = path
    parent = os.path.dirname(missing)
    while parent != missing and not os.path.lexists(parent):
        missing, parent = parent, os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise StoreLocationError(
            f"store {given} cannot be created: {parent} is not a directory. Pick a directory "
            f"path for the store, {_EXAMPLE}")
    # try it: some file systems (/proc, read-only mounts) refuse folders whatever the
    # permission bits say. The probe folder is removed at once; the first write creates it.
    try:
        os.mkdir(missing)
    except FileExistsError:
        return  # created meanwhile (another process): fine
    except OSError as exc:
        why = exc.strerror or str(exc)
        if exc.errno in (errno.EACCES, errno.EPERM):
            why += f" (no permission to create folders in {parent})"
        elif exc.errno == errno.ENOENT:
            why += f" ({parent} does not allow new folders)"
        raise StoreLocationError(
            f"store {given} cannot be created: {why}. Pick a directory you can write to, "
            f"{_EXAMPLE}") from None
    try:
        os.rmdir(missing)
    except OSError:
        pass  # someone started using it meanwhile: leave it


def _check_protocols(url: str) -> None:
    """Every protocol of ``url`` (``simplecache::s3://...`` has two) must be known to fsspec
    and installed."""
    try:
        import fsspec
        from fsspec.registry import known_implementations, registry
    except ImportError:  # pragma: no cover - fsspec is a dependency
        raise StoreLocationError(
            f"store {url} is a URL, which needs fsspec: pip install fsspec") from None
    for part in url.split("::"):
        if "://" not in part:
            continue
        protocol = part.split("://", 1)[0]
        if protocol in registry:
            continue
        known = known_implementations.get(protocol)
        if known is None:
            raise StoreLocationError(
                f"store {url}: unknown storage protocol '{protocol}' (fsspec has no "
                f"filesystem of that name): check the spelling; common ones are file, memory, "
                f"s3 (pip install s3fs, or pipelite[s3]), gcs (pip install gcsfs), "
                f"abfs (pip install adlfs), sftp (pip install paramiko)")
        try:
            fsspec.get_filesystem_class(protocol)
        except ImportError as exc:
            package = known.get("class", "").split(".", 1)[0] or protocol
            hint = f"pip install {package}" + (" (or pipelite[s3])" if protocol in ("s3", "s3a")
                                               else "")
            detail = known.get("err") or str(exc)
            raise StoreLocationError(
                f"store {url}: the '{protocol}' filesystem is not installed ({detail}): "
                f"{hint}") from None


def parse_storage_options(pairs: Any) -> dict[str, Any]:
    """``["key=KEY", "client_kwargs.endpoint_url=http://127.0.0.1:9000", "anon=true"]`` as
    fsspec ``storage_options``: a dotted key makes nested mappings, a value is read as JSON
    when it is JSON (``true``, ``3``, ``{"a": 1}``), else kept as text. The same for
    ``%pipelite store URL --option`` and ``pipelite --storage-option``."""
    import json

    options: dict[str, Any] = {}
    for pair in pairs or ():
        key, sep, text = str(pair).partition("=")
        if not sep or not key.strip() or any(not part for part in key.strip().split(".")):
            raise StoreLocationError(
                f"storage option {pair!r} is not KEY=VALUE: e.g. key=AKIA..., "
                f"client_kwargs.endpoint_url=http://127.0.0.1:9000")
        try:
            value: Any = json.loads(text)
        except ValueError:
            value = text
        *parents, last = key.strip().split(".")
        where = options
        for part in parents:
            inner = where.setdefault(part, {})
            if not isinstance(inner, dict):
                raise StoreLocationError(f"storage option {pair!r}: {part!r} is given a value "
                                         f"and nested options both")
            where = inner
        where[last] = value
    return options
