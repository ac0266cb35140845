"""Records read back from a store are input: their shape is checked before anything uses them.

A record that fails the check is reported once, by path, as corrupt, and ignored: its stage
recomputes. Object paths are never taken from a record: they derive from the output's hash and
a file extension of a strict form, and must match the path the record names.
"""
from __future__ import annotations

import datetime as _dt
import re
from typing import Any

import xxhash

from .stage import MAX_NAME_LENGTH

__all__ = ["BadRecord", "check_record", "check_failure", "object_rel", "bind", "HEX32",
           "is_fingerprint"]

HEX32 = re.compile(r"[0-9a-f]{32}\Z")
_OBJECT = re.compile(r"objects/([0-9a-f]{2})/([0-9a-f]{32})((?:\.[A-Za-z0-9_-]{1,12}){0,2})\Z")


class BadRecord(ValueError):
    """A record whose content is not what PipeLite writes."""


def is_fingerprint(text: Any) -> bool:
    return isinstance(text, str) and HEX32.match(text) is not None


def bind(name: str, info: dict) -> str:
    """Binds an output's name to its content: swapped or edited entries no longer match."""
    text = f"{name}\0{info['hash']}\0{info['size']}\0{info['format']}"
    return xxhash.xxh3_64_hexdigest(text.encode())


def object_rel(info: dict) -> str:
    """Where an output's object lives in the store, derived from its hash.

    The record's own ``path`` is used only for its file extension, and only if the whole path
    is exactly ``objects/<2 hex>/<hash><ext>`` for this hash."""
    digest, path = info.get("hash"), info.get("path")
    m = _OBJECT.match(path) if isinstance(path, str) else None
    if not is_fingerprint(digest) or m is None or m.group(2) != digest or m.group(1) != digest[:2]:
        raise BadRecord(f"output path {path!r} is not the object path of hash {digest!r}")
    return f"objects/{digest[:2]}/{digest}{m.group(3)}"


def _need(cond: bool, why: str) -> None:
    if not cond:
        raise BadRecord(why)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_time(v: Any) -> bool:
    if not isinstance(v, str):
        return False
    try:
        _dt.datetime.fromisoformat(v)
    except ValueError:
        return False
    return True


def _str_map(v: Any, what: str) -> None:
    _need(isinstance(v, dict) and all(isinstance(k, str) and isinstance(x, str)
                                      for k, x in v.items()), f"{what} is not a map of text")


def _objects(entries: Any, what: str, version: int) -> None:
    _need(isinstance(entries, dict), f"{what} is not a map")
    for name, info in entries.items():
        _need(isinstance(name, str) and name.isidentifier() and len(name) <= MAX_NAME_LENGTH,
              f"{what} name {name!r} is not an artifact name")
        _need(isinstance(info, dict), f"{what} '{name}' is not a map")
        _need(is_fingerprint(info.get("hash")), f"{what} '{name}' has no valid hash")
        _need(_is_int(info.get("size")) and info["size"] >= 0, f"{what} '{name}' has no size")
        _need(isinstance(info.get("format"), str) and info["format"] != "",
              f"{what} '{name}' has no format")
        object_rel(info)
        _need(isinstance(info.get("sample", ""), str), f"{what} '{name}' has a bad sample")
        if version >= 2:
            _need(info.get("bind") == bind(name, info),
                  f"{what} '{name}' does not match its name (swapped or edited)")


def _observed(obs: Any) -> None:
    _need(isinstance(obs, dict), "observed is not a map")
    for kind, key in (("files", "path"), ("modules", "file"), ("listings", "dir")):
        entries = obs.get(kind, [])
        _need(isinstance(entries, list), f"observed {kind} is not a list")
        for e in entries:
            _need(isinstance(e, dict) and isinstance(e.get(key), str),
                  f"an observed {kind[:-1]} has no {key}")
            if kind == "modules":
                _need(isinstance(e.get("name"), str), "an observed module has no name")
            if e.get("absent"):
                continue
            if kind == "listings":
                _need(_is_int(e.get("mtime_ns")) and isinstance(e.get("digest"), str),
                      "an observed listing is incomplete")
            else:
                _need(_is_int(e.get("size")) and _is_int(e.get("mtime_ns"))
                      and isinstance(e.get("hash"), str), f"an observed {kind[:-1]} is incomplete")
                for opt in ("ino", "ctime_ns"):
                    _need(opt not in e or _is_int(e[opt]), f"an observed {kind[:-1]} is incomplete")


def check_record(rec: Any, stage: str, fingerprint: str) -> dict:
    """``rec`` if it is a well-formed record of ``stage`` for ``fingerprint``; else BadRecord."""
    _need(isinstance(rec, dict), f"it holds a {type(rec).__name__}, not a record")
    _need(rec.get("stage") == stage, f"it is not a record of stage '{stage}'")
    _need(rec.get("fingerprint") == fingerprint, "its fingerprint is not its file name")
    version = rec.get("format_version", 1)
    _need(_is_int(version) and version >= 1, "its format_version is not a number")
    _objects(rec.get("outputs"), "output", version)
    _objects(rec.get("attachments", {}), "attachment", version)
    inputs = rec.get("inputs", {})
    _need(isinstance(inputs, dict) and all(
        isinstance(k, str) and isinstance(v, dict) and isinstance(v.get("hash"), str)
        and isinstance(v.get("stage", ""), str) for k, v in inputs.items()),
        "its inputs are malformed")
    _need(_is_time(rec.get("started")), "its start time is not a time")
    _need(_is_number(rec.get("duration")) and rec["duration"] >= 0, "its duration is not a number")
    _str_map(rec.get("params", {}), "its params")
    parts = rec.get("parts", {})
    _need(isinstance(parts, dict), "its parts are not a map")
    for key in ("helpers", "globals", "params", "inputs", "env"):
        if key in parts:
            _str_map(parts[key], f"its parts' {key}")
    for key in ("code", "reach"):
        _need(isinstance(parts.get(key, ""), str), f"its parts' {key} is not text")
    outs = parts.get("outputs")
    _need(outs is None or (isinstance(outs, list) and all(isinstance(o, str) for o in outs)),
          "its parts' outputs are malformed")
    if "observed" in rec:
        _observed(rec["observed"])
    _need(isinstance(rec.get("same_result_as", ""), str), "same_result_as is not text")
    _need(isinstance(rec.get("signature", ""), str), "its signature is not text")
    return rec


def check_failure(info: Any, stage: str) -> dict:
    """``info`` if it is a well-formed FAILED.json of ``stage``; else BadRecord."""
    _need(isinstance(info, dict), f"it holds a {type(info).__name__}, not a failure record")
    _need(info.get("stage", stage) == stage, f"it is not a failure of stage '{stage}'")
    _need(isinstance(info.get("fingerprint"), str), "it names no fingerprint")
    for key in ("error", "traceback"):
        _need(isinstance(info.get(key, ""), str), f"its {key} is not text")
    _need(_is_time(info.get("started", "2000-01-01")), "its start time is not a time")
    _need(_is_number(info.get("duration", 0)), "its duration is not a number")
    return info
