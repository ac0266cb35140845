"""What a store keeps about a result, as typed records; and their reading, which trusts nothing.

A stage's result is a ``ResultRecord`` (``records/<stage>/<fingerprint>.json``): what ran,
when, on which parameters and inputs, and each output as an ``OutputRecord`` (the object's
hash, size and format). A failed run leaves a ``FailureRecord`` (``FAILED.json``). They are
frozen: a changed record is a new one (``dataclasses.replace``).

Records read back from a store are input: ``from_json`` checks their shape before anything
uses them, and raises ``BadRecord`` otherwise (the store reports the file once, by path, as
corrupt, and ignores it: its stage recomputes). Object paths are never taken from a record:
they derive from the output's hash and a file extension of a strict form, and must match the
path the record names. ``to_json(from_json(data)) == data`` for every record accepted, keys
PipeLite does not know included, so signatures (over the JSON) still verify.

Format versions: 1 (before outputs were bound to their names), 2 (``bind`` per output and a
``signature``; written today). Both are read.
"""
from __future__ import annotations

import datetime as _dt
import functools
import re
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

import xxhash

from .stage import _STAGE_NAME, MAX_NAME_LENGTH

__all__ = ["FORMAT_VERSION", "BadRecord", "FailureRecord", "InputRecord", "OutputRecord",
           "ResultRecord", "bind", "HEX32", "is_fingerprint"]

FORMAT_VERSION = 2
HEX32 = re.compile(r"[0-9a-f]{32}\Z")
_OBJECT = re.compile(r"objects/([0-9a-f]{2})/([0-9a-f]{32})((?:\.[A-Za-z0-9_-]{1,12}){0,2})\Z")


class BadRecord(ValueError):
    """A record whose content is not what PipeLite writes."""


def is_fingerprint(text: Any) -> bool:
    return isinstance(text, str) and HEX32.match(text) is not None


def bind(name: str, hash: str, size: int, format: str) -> str:
    """Binds an output's name to its content: swapped or edited entries no longer match."""
    text = f"{name}\0{hash}\0{size}\0{format}"
    return xxhash.xxh3_64_hexdigest(text.encode())


def _is_stage_name(v: Any) -> bool:
    """A stage name as ``@stage`` allows it: a record naming anything else is not ours."""
    return isinstance(v, str) and len(v) <= MAX_NAME_LENGTH and _STAGE_NAME.match(v) is not None


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


def _optional_text(data: Mapping[str, Any], key: str, why: str) -> str | None:
    value = data.get(key)
    _need(value is None or isinstance(value, str), why)
    return value


def _str_map(v: Any, what: str) -> dict[str, str]:
    if not isinstance(v, dict):
        raise BadRecord(f"{what} is not a map of text")
    for k, x in v.items():
        if not isinstance(k, str) or not isinstance(x, str):
            raise BadRecord(f"{what} is not a map of text")
    return dict(v)


def _provenance(v: Any) -> dict[str, Any] | None:
    """Who ran a result, where, from which commit (``_execute.provenance``): a flat map of
    text to text, a flag or nothing; anything else (a list, a nested map) is not ours."""
    if v is None:
        return None
    _need(isinstance(v, dict), "its provenance is not a map")
    for k, x in v.items():
        _need(isinstance(k, str) and (x is None or isinstance(x, (str, bool))),
              "its provenance is not a map of text")
    return dict(v)


def _accepted(v: Any) -> dict[str, Any] | None:
    """``Pipeline.accept``'s note: the fingerprint adopted from, when, and the reasons."""
    if v is None:
        return None
    _need(isinstance(v, dict) and is_fingerprint(v.get("from")) and _is_time(v.get("at"))
          and isinstance(v.get("reasons", []), list)
          and all(isinstance(r, str) for r in v.get("reasons", [])),
          "its accepted note is malformed")
    return dict(v)


def _unknown(data: Mapping[str, Any], known: frozenset[str]) -> dict[str, Any]:
    """Keys PipeLite does not write (a newer version's): kept, so the JSON round-trips."""
    if data.keys() <= known:  # the usual case, checked at C speed
        return {}
    return {k: v for k, v in data.items() if k not in known}


def _put(out: dict[str, Any], key: str, value: Any) -> None:
    if value is not None:
        out[key] = value


@dataclass(frozen=True)
class OutputRecord:
    """One stored object: an output (or attachment) of a result."""

    hash: str
    size: int
    format: str
    path: str  # objects/<2 hex>/<hash><ext>: only its extension is ever used (see ``rel``)
    type: str | None = None  # the value's module.qualname, for messages
    summary: str | None = None  # "ndarray float64 (1000, 3)", for status tables
    sample: str | None = None  # digest of 64 blocks of a large file, checked on every load
    bind: str | None = None  # binds the entry to its name (format 2)
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    _KEYS = frozenset(("hash", "size", "format", "path", "type", "summary", "sample", "bind"))

    @functools.cached_property  # checked once per record object: it is frozen
    def rel(self) -> str:
        """Where the object lives in the store, derived from its hash.

        The record's own ``path`` is used only for its file extension, and only if the whole
        path is exactly ``objects/<2 hex>/<hash><ext>`` for this hash."""
        m = _OBJECT.match(self.path) if isinstance(self.path, str) else None
        digest = self.hash
        if not is_fingerprint(digest) or m is None or m.group(2) != digest or \
                m.group(1) != digest[:2]:
            raise BadRecord(f"output path {self.path!r} is not the object path of hash "
                            f"{digest!r}")
        return f"objects/{digest[:2]}/{digest}{m.group(3)}"

    def bound(self, name: str) -> "OutputRecord":
        """This entry with its ``bind`` digest for ``name``."""
        return replace(self, bind=bind(name, self.hash, self.size, self.format))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"hash": self.hash, "size": self.size, "format": self.format,
                               "path": self.path}
        for key in ("type", "summary", "sample", "bind"):
            _put(out, key, getattr(self, key))
        out.update(self.extra)
        return out

    @classmethod
    def from_json(cls, name: Any, data: Any, what: str, version: int) -> "OutputRecord":
        # read for every output of every record a cold status reads: each message is made
        # only when its check fails
        if not (isinstance(name, str) and name.isidentifier() and len(name) <= MAX_NAME_LENGTH):
            raise BadRecord(f"{what} name {name!r} is not an artifact name")
        if not isinstance(data, dict):
            raise BadRecord(f"{what} '{name}' is not a map")
        digest: Any = data.get("hash")
        size: Any = data.get("size")
        fmt: Any = data.get("format")
        path: Any = data.get("path")
        if not is_fingerprint(digest):
            raise BadRecord(f"{what} '{name}' has no valid hash")
        if not (_is_int(size) and size >= 0):
            raise BadRecord(f"{what} '{name}' has no size")
        if not (isinstance(fmt, str) and fmt != ""):
            raise BadRecord(f"{what} '{name}' has no format")
        if not isinstance(path, str):
            raise BadRecord(f"{what} '{name}' has no path")
        optional: dict[str, Any] = {"type": data.get("type"), "summary": data.get("summary"),
                                    "sample": data.get("sample"), "bind": data.get("bind")}
        for key, value in optional.items():
            if value is not None and not isinstance(value, str):
                raise BadRecord(f"{what} '{name}' has a bad {key}")
        out = cls(hash=digest, size=size, format=fmt, path=path, **optional,
                  extra=_unknown(data, cls._KEYS))
        out.rel  # noqa: B018 - refuses a path that is not this hash's object path
        if version >= 2 and out.bind != bind(name, digest, size, fmt):
            raise BadRecord(f"{what} '{name}' does not match its name (swapped or edited)")
        return out


_INPUT_KEYS = frozenset(("hash", "stage"))


@dataclass(frozen=True)
class InputRecord:
    """An input a result was made from: the content hash it had, and its producer."""

    hash: str
    stage: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"hash": self.hash}
        _put(out, "stage", self.stage)
        out.update(self.extra)
        return out

    @classmethod
    def from_json(cls, data: Any) -> "InputRecord":
        stage = data.get("stage") if isinstance(data, dict) else None
        _need(isinstance(data, dict) and isinstance(data.get("hash"), str)
              and (stage is None or _is_stage_name(stage)), "its inputs are malformed")
        return cls(data["hash"], data.get("stage"), _unknown(data, _INPUT_KEYS))


def _objects(entries: Any, what: str, version: int) -> dict[str, OutputRecord]:
    if not isinstance(entries, dict):
        raise BadRecord(f"{what} is not a map")
    return {name: OutputRecord.from_json(name, info, what, version)
            for name, info in entries.items()}


def _observed(obs: Any) -> dict[str, Any]:
    """The files, modules and listings a run observed (their meaning is ``_observe``'s)."""
    _need(isinstance(obs, dict), "observed is not a map")
    for kind, key in (("files", "path"), ("modules", "file"), ("listings", "dir")):
        entries = obs.get(kind, [])
        _need(isinstance(entries, list), f"observed {kind} is not a list")
        incomplete = f"an observed {kind[:-1]} is incomplete"  # once per kind, not per entry
        for e in entries:
            if not (isinstance(e, dict) and isinstance(e.get(key), str)):
                raise BadRecord(f"an observed {kind[:-1]} has no {key}")
            if kind == "modules":
                _need(isinstance(e.get("name"), str), "an observed module has no name")
            if e.get("absent"):
                continue
            if kind == "listings":
                _need(_is_int(e.get("mtime_ns")) and isinstance(e.get("digest"), str),
                      incomplete)
            else:
                _need(_is_int(e.get("size")) and _is_int(e.get("mtime_ns"))
                      and isinstance(e.get("hash"), str), incomplete)
                for opt in ("ino", "ctime_ns"):
                    _need(opt not in e or _is_int(e[opt]), incomplete)
    return obs


_PARTS_MAPS = tuple((key, f"its parts' {key}")
                    for key in ("helpers", "globals", "params", "inputs", "env", "files"))


def _parts(parts: Any) -> dict[str, Any]:
    """The fingerprint's parts (their meaning is ``fingerprint``'s): only shapes are checked."""
    _need(isinstance(parts, dict), "its parts are not a map")
    for key, what in _PARTS_MAPS:
        if key in parts:
            _str_map(parts[key], what)
    for key in ("code", "reach"):
        if not isinstance(parts.get(key, ""), str):
            raise BadRecord(f"its parts' {key} is not text")
    listings = parts.get("listings", {})
    _need(isinstance(listings, dict), "its parts' listings are not a map")
    for key, listing in listings.items():
        _need(isinstance(key, str), "its parts' listings are not a map")
        _str_map(listing, "its parts' listings")
    outs = parts.get("outputs")
    _need(outs is None or (isinstance(outs, list) and all(isinstance(o, str) for o in outs)),
          "its parts' outputs are malformed")
    return parts


@dataclass(frozen=True)
class ResultRecord:
    """A stored result of one stage for one fingerprint. Written last: it is the commit."""

    stage: str
    fingerprint: str
    started: str  # ISO 8601, UTC
    duration: float  # seconds the stage ran
    outputs: dict[str, OutputRecord]
    inputs: dict[str, InputRecord] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)  # as the user wrote them (reprs)
    parts: dict[str, Any] = field(default_factory=dict)  # the fingerprint's parts
    attachments: dict[str, OutputRecord] | None = None  # side values (a cell's output)
    kind: str | None = None  # "function", "class", "cell"
    origin: str | None = None  # the notebook that defined the stage (``Stage.origin``)
    save_duration: float | None = None
    versions: dict[str, str] | None = None  # Python, PipeLite and library versions
    observed: dict[str, Any] | None = None  # files, modules, listings read while it ran
    same_result_as: str | None = None  # stored for the state after its run: the first digest
    # run id, user, host, git commit, distributions digest: never part of the fingerprint
    provenance: dict[str, Any] | None = None
    # ``Pipeline.accept``: this result was adopted for a new fingerprint without running:
    # {"from": the fingerprint it was computed for, "at": when, "reasons": what had changed}
    accepted: dict[str, Any] | None = None
    signature: str | None = None  # HMAC under the writer's key (see ``_trust``)
    format_version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    _KEYS = frozenset(("format_version", "stage", "kind", "origin", "fingerprint", "started",
                       "duration", "save_duration", "params", "inputs", "outputs", "attachments",
                       "parts", "versions", "observed", "same_result_as", "provenance",
                       "accepted", "signature"))

    @property
    def started_at(self) -> _dt.datetime:
        return _dt.datetime.fromisoformat(self.started)

    @property
    def run_id(self) -> str | None:
        """The id of the run that computed it (``Runner.run``); None for older records."""
        value = (self.provenance or {}).get("run_id")
        return value if isinstance(value, str) else None

    def objects(self) -> list[OutputRecord]:
        """Every object the record names (outputs and attachments)."""
        return [*self.outputs.values(), *(self.attachments or {}).values()]

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"format_version": self.format_version, "stage": self.stage}
        _put(out, "kind", self.kind)
        _put(out, "origin", self.origin)
        out.update(fingerprint=self.fingerprint, started=self.started, duration=self.duration)
        _put(out, "save_duration", self.save_duration)
        out["params"] = dict(self.params)
        out["inputs"] = {k: v.to_json() for k, v in self.inputs.items()}
        out["outputs"] = {k: v.to_json() for k, v in self.outputs.items()}
        if self.attachments is not None:
            out["attachments"] = {k: v.to_json() for k, v in self.attachments.items()}
        out["parts"] = self.parts
        for key in ("versions", "observed", "same_result_as", "provenance", "accepted",
                    "signature"):
            _put(out, key, getattr(self, key))
        out.update(self.extra)
        return out

    @classmethod
    def from_json(cls, data: Any, stage: str, fingerprint: str) -> "ResultRecord":
        """``data`` as the record of ``stage`` for ``fingerprint``; else ``BadRecord``."""
        if not isinstance(data, dict):
            raise BadRecord(f"it holds a {type(data).__name__}, not a record")
        if data.get("stage") != stage:
            raise BadRecord(f"it is not a record of stage '{stage}'")
        _need(data.get("fingerprint") == fingerprint, "its fingerprint is not its file name")
        version = data.get("format_version", 1)
        _need(_is_int(version) and version >= 1, "its format_version is not a number")
        outputs = _objects(data.get("outputs"), "output", version)
        attachments = (_objects(data["attachments"], "attachment", version)
                       if "attachments" in data else None)
        inputs = data.get("inputs", {})
        _need(isinstance(inputs, dict) and all(isinstance(k, str) for k in inputs),
              "its inputs are malformed")
        _need(_is_time(data.get("started")), "its start time is not a time")
        _need(_is_number(data.get("duration")) and data["duration"] >= 0,
              "its duration is not a number")
        save = data.get("save_duration")
        _need(save is None or _is_number(save), "its save_duration is not a number")
        versions = data.get("versions")
        _need(versions is None or isinstance(versions, dict), "its versions are not a map")
        return cls(
            stage=stage, fingerprint=fingerprint, started=data["started"],
            duration=data["duration"], outputs=outputs,
            inputs={k: InputRecord.from_json(v) for k, v in inputs.items()},
            params=_str_map(data.get("params", {}), "its params"),
            parts=_parts(data.get("parts", {})),
            attachments=attachments,
            kind=_optional_text(data, "kind", "its kind is not text"),
            origin=_optional_text(data, "origin", "its origin is not text"),
            save_duration=save,
            versions=versions,
            observed=_observed(data["observed"]) if "observed" in data else None,
            same_result_as=_optional_text(data, "same_result_as", "same_result_as is not text"),
            provenance=_provenance(data.get("provenance")),
            accepted=_accepted(data.get("accepted")),
            signature=_optional_text(data, "signature", "its signature is not text"),
            format_version=version,
            extra=_unknown(data, cls._KEYS),
        )


@dataclass(frozen=True)
class FailureRecord:
    """The last failed run of a stage since its last success (``FAILED.json``)."""

    stage: str
    fingerprint: str
    error: str = ""
    traceback: str = ""
    started: str | None = None
    duration: float | None = None
    origin: str | None = None  # the notebook that defined the stage (``Stage.origin``)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"stage": self.stage, "fingerprint": self.fingerprint,
                               "error": self.error, "traceback": self.traceback}
        _put(out, "started", self.started)
        _put(out, "duration", self.duration)
        _put(out, "origin", self.origin)
        return out

    @classmethod
    def from_json(cls, data: Any, stage: str) -> "FailureRecord":
        """``data`` as a FAILED.json of ``stage``; else ``BadRecord``."""
        _need(isinstance(data, dict), f"it holds a {type(data).__name__}, not a failure record")
        _need(data.get("stage", stage) == stage, f"it is not a failure of stage '{stage}'")
        _need(isinstance(data.get("fingerprint"), str), "it names no fingerprint")
        for key in ("error", "traceback"):
            _need(isinstance(data.get(key, ""), str), f"its {key} is not text")
        _need(_is_time(data.get("started", "2000-01-01")), "its start time is not a time")
        _need(_is_number(data.get("duration", 0)), "its duration is not a number")
        return cls(stage, data["fingerprint"], data.get("error", ""), data.get("traceback", ""),
                   data.get("started"), data.get("duration"),
                   _optional_text(data, "origin", "its origin is not text"))
