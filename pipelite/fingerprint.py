"""Fingerprints: what a stage's result depends on, reduced to one digest and its named parts.

A fingerprint covers the stage's normalised code and everything it reaches (``_reach``: user
functions, classes and modules, transitively, with their closures, defaults and the globals
they read; libraries by name and version, ``_libraries``), the content of the globals it reads
(``_encode``), its parameters (walked the same way), declared environment variables, and the
content hashes of its inputs. Its parts are kept so that a changed one can be named; the
digest itself is computed from the walk's digests, never from the names chosen for reasons.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Mapping

import xxhash

from ._cellcode import normalize_source
from ._encode import PipeliteWarning, warn_user
from ._files import ABSENT, LISTED_FILES, File, file_digest, files_in
from ._reach import Reach, _functions_of, code_digest, leaf_token
from .stage import CellStage, Stage

__all__ = ["Fingerprint", "fingerprint_of", "value_digest", "PipeliteWarning", "warn_user",
           "code_digest", "digest_text"]


def digest_text(text: str) -> str:
    """xxh3-128 hex digest of ``text``."""
    return xxhash.xxh3_128_hexdigest(text.encode("utf-8", "surrogatepass"))


@dataclass(frozen=True)
class Fingerprint:
    """A stage's fingerprint: ``digest`` identifies the result; ``parts`` say what went in."""

    digest: str
    parts: dict = field(hash=False, compare=False)


def value_digest(value: Any) -> str:
    """A content digest of a Python value: numbers, strings, containers, numpy arrays, pandas
    objects by their data, type and shape; functions and classes by everything their code
    reaches; instances of your classes by their class and attributes; other objects by their
    pickled state; unpicklable ones by type."""
    return Reach().encoder.digest(value, "value")


# -- the fingerprint --------------------------------------------------------------------------
_WARNED_ABSENT: set[tuple[str, str]] = set()  # (stage, path) said once per process
_WARNED_IGNORE: set[tuple[str, frozenset]] = set()


def _check_ignored(st: Stage, walker: Reach) -> None:
    """Warn once when ``ignore=`` names something the stage neither takes nor reads (a
    typo would otherwise leave the name counted, silently)."""
    unknown = st.ignore - set(st.params) - walker.ignored_seen
    key = (st.name, frozenset(unknown))
    if unknown and key not in _WARNED_IGNORE:
        _WARNED_IGNORE.add(key)
        warn_user(f"stage '{st.name}': ignore= names {sorted(unknown)}, which it takes as no "
                  f"parameter and reads as no global: check the spelling")


def code_parts(st: Stage, memo: dict | None = None
               ) -> tuple[str, str, dict[str, str], dict[str, str]]:
    """(digest of all the stage reaches, digest of its own code, helpers, globals), as its
    code stands now. The first decides freshness; the others say in words what changed."""
    if st.ignore:  # a walk that leaves names out must not share its tokens with others
        memo = {}
    if isinstance(st, CellStage):
        # a cell reads its inputs as globals: skip them
        walker = Reach(st.inputs, memo, ignore=st.ignore)
        code = digest_text(normalize_source(st.source))
        ns = st.namespace
        b = ns.get("__builtins__", {})
        root = [code]
        for name in st.reads:
            if name in st.ignore:
                continue
            if name in ns:
                root.append(f"{name}={walker.read(name, ns[name])}")
            elif not (name in b if isinstance(b, dict) else hasattr(b, name)):
                walker._note("global", name, "", "<undefined>")
                root.append(f"{name}=<undefined>")
        for modname in st.analysis.imports:
            token = walker.import_token(modname)
            walker._note("helper", f"imported module '{modname}'", "", token)
            root.append(f"import {modname}={token}")
        helpers, globals_ = walker.parts()
        return digest_text("\n".join(root)), code, helpers, globals_
    objs = st.code_objects()
    if len(objs) == 1 and (leaf := leaf_token(objs[0])) is not None:
        if st.ignore:
            _check_ignored(st, Reach())  # it reads no global: only parameters can be ignored
        return leaf, code_digest(objs[0].__code__), {}, {}  # reaches nothing: no walk needed
    walker = Reach((), memo, ignore=st.ignore, params_of=st.param_code())
    reach, own = [], []
    for obj in objs:
        reach.append(walker.stage_token(obj))
        own.append(_own_code(obj))
    if st.ignore:
        _check_ignored(st, walker)
    helpers, globals_ = walker.parts()
    if len(reach) == 1:
        return reach[0], own[0], helpers, globals_
    return digest_text("|".join(reach)), digest_text("|".join(own)), helpers, globals_


def _own_code(obj: Any) -> str:
    """A stage's own code, without what it reaches: to say "its code changed"."""
    if isinstance(obj, type):
        return digest_text(obj.__qualname__ + "|" + "|".join(
            f"{key}:{code_digest(fn.__code__)}" for key, member in sorted(vars(obj).items())
            for fn in _functions_of(member)))
    return code_digest(obj.__code__)


def canonical_params(params: Mapping[str, Any], memo: dict | None = None) -> dict[str, str]:
    """Each parameter's digest, walked as deep as a global: a function by all it reaches, an
    object by its class's code and its attributes (its display form is kept in the record)."""
    if not params:
        return {}
    walker = Reach((), memo)  # (an ignored parameter never gets here: see fingerprint_of)
    return {k: _file_param(v) or walker.token(v) or walker.encoder.digest(v, f"parameter '{k}'")
            for k, v in sorted(params.items())}


def _file_param(value: Any) -> str | None:
    """A parameter that is a ``File`` (or a list of them) by its path: its content is in the
    fingerprint's "files", so that a changed file is named as such."""
    files = files_in(value)
    if not files or (not isinstance(value, File) and len(files) != len(value)):
        return None
    return "file:" + "|".join(f.key for f in files)


def input_files(st: Stage, params: Mapping[str, Any]) -> list[File]:
    """The files a stage declares it reads: its parameters that are ``File``s (or lists of
    them) and, for a cell, its ``--file`` paths."""
    found = list(getattr(st, "files", ()))
    for value in params.values():
        found += files_in(value)
    return list(dict.fromkeys(found))


def fingerprint_of(st: Stage, params: Mapping[str, Any], input_hashes: Mapping[str, str],
                   memo: dict | None = None) -> Fingerprint:
    """The fingerprint of running ``st`` with these parameters on inputs with these hashes.

    ``memo`` (a dict shared across the stages of one check) digests each large value and each
    function once; it is valid only while no user code runs."""
    reach, code, helpers, globs = code_parts(st, memo)
    outputs = sorted(st.declared_outputs) if st.declared_outputs is not None else None
    parts: dict[str, Any] = {
        "reach": reach,
        "code": code,
        "helpers": dict(sorted(helpers.items())) if helpers else {},
        "globals": dict(sorted(globs.items())) if globs else {},
        "params": canonical_params({k: v for k, v in params.items() if k not in st.ignore}
                                   if st.ignore else params, memo),
        "inputs": dict(sorted(input_hashes.items())) if input_hashes else {},
        "outputs": outputs,
    }
    # the names in "helpers" and "globals" are for reasons only: what decides is the walk
    decisive = [f"reach={reach}"]
    decisive += [f"params:{k}={v}" for k, v in parts["params"].items()]
    decisive += [f"inputs:{k}={v}" for k, v in parts["inputs"].items()]
    if st.env:  # values are secrets as often as not: only their digests are kept
        parts["env"] = {var: (digest_text(os.environ[var]) if var in os.environ else "<unset>")
                        for var in sorted(st.env)}
        decisive += [f"env:{k}={v}" for k, v in parts["env"].items()]
    files = input_files(st, params)
    if files:
        parts["files"], listings = {}, {}
        for f in files:
            digest, listing = file_digest(f, memo)
            parts["files"][f.key] = digest
            if digest == ABSENT and (st.name, f.path) not in _WARNED_ABSENT:
                _WARNED_ABSENT.add((st.name, f.path))
                warn_user(f"stage '{st.name}': its input file '{f.key}' does not exist "
                          f"({f.path}): check the path (the stage is stale until it exists)")
            if listing is not None and len(listing) <= LISTED_FILES:
                listings[f.key] = dict(sorted(listing.items()))
        if listings:
            parts["listings"] = listings  # for reasons only: which file of a folder changed
        decisive += [f"files:{k}={v}" for k, v in sorted(parts["files"].items())]
    decisive.append(f"outputs={outputs!r}")
    return Fingerprint(digest_text("\n".join(decisive)), parts)
