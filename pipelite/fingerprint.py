"""Fingerprints: what a stage's result depends on, reduced to one digest and its named parts.

A fingerprint covers the stage's normalised code, every user-defined function and class it
reaches (transitively, with their closures and defaults), library modules and functions by
name and version, the content of the non-artifact globals it reads, its parameters, and the
content hashes of its inputs. Its parts are kept so that a changed one can be named.
"""
from __future__ import annotations

import dis
import functools
import importlib.metadata
import inspect
import json
import os
import pickle
import sys
import sysconfig
import textwrap
import types
import warnings
import weakref
from dataclasses import dataclass, field
from typing import Any, Mapping

import xxhash

from ._cellcode import normalize_source
from .stage import Artifact, CellStage, Stage

__all__ = ["Fingerprint", "fingerprint_of", "value_digest", "PipeliteWarning"]


class PipeliteWarning(UserWarning):
    """Something PipeLite cannot track precisely (it still runs)."""


def _hasher() -> "xxhash.xxh3_128":
    return xxhash.xxh3_128()


def digest_text(text: str) -> str:
    """xxh3-128 hex digest of ``text``."""
    return xxhash.xxh3_128_hexdigest(text.encode("utf-8", "surrogatepass"))


@dataclass(frozen=True)
class Fingerprint:
    """A stage's fingerprint: ``digest`` identifies the result; ``parts`` say what went in."""

    digest: str
    parts: dict = field(hash=False, compare=False)


# -- what is user code and what is a library --------------------------------------------------
def _library_roots() -> tuple[str, ...]:
    roots = set()
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        p = sysconfig.get_paths().get(key)
        if p:
            roots.add(os.path.realpath(p))
    for p in sys.path:
        if p and ("site-packages" in p or "dist-packages" in p):
            roots.add(os.path.realpath(p))
    roots.add(os.path.realpath(os.path.dirname(os.path.dirname(__file__))) + os.sep + "pipelite")
    return tuple(sorted(roots))


_LIB_ROOTS = _library_roots()


@functools.lru_cache(maxsize=None)
def _is_library_module(modname: str) -> bool:
    if modname == "__main__" or not modname:  # a notebook or a script: user code
        return False
    top = modname.split(".")[0]
    if top in ("pipelite", "pipelite_ipy", "builtins") or modname in sys.builtin_module_names:
        return True
    if top in sys.stdlib_module_names:
        return True
    mod = sys.modules.get(modname) or sys.modules.get(top)
    path = getattr(mod, "__file__", None)
    if not path:
        return modname != "__main__" and mod is not None and not modname.startswith("__")
    path = os.path.realpath(path)
    return any(path.startswith(root) for root in _LIB_ROOTS)


@functools.lru_cache(maxsize=None)
def _version(top: str) -> str:
    if top in sys.stdlib_module_names or top == "builtins":
        return "python-" + ".".join(map(str, sys.version_info[:3]))
    mod = sys.modules.get(top)
    v = getattr(mod, "__version__", None)
    if isinstance(v, str):
        return v
    try:
        for dist in importlib.metadata.packages_distributions().get(top, []):
            return importlib.metadata.version(dist)
    except Exception:  # noqa: BLE001 - metadata is best effort
        pass
    return "unknown"


def _library_token(modname: str, qualname: str = "") -> str:
    top = modname.split(".")[0]
    return f"lib:{modname}{'.' + qualname if qualname else ''}@{_version(top)}"


# -- normalised code ------------------------------------------------------------------------
_code_cache: "weakref.WeakKeyDictionary[types.CodeType, tuple[str, tuple[str, ...]]]" = (
    weakref.WeakKeyDictionary()
)


def _code_info(fn: types.FunctionType) -> tuple[str, tuple[str, ...]]:
    """(digest of the normalised source, global names the code loads), cached per code object."""
    code = fn.__code__
    hit = _code_cache.get(code)
    if hit is not None:
        return hit
    digest = None
    if fn.__name__ != "<lambda>":
        try:
            digest = digest_text(normalize_source(textwrap.dedent(inspect.getsource(fn))))
        except (OSError, TypeError, SyntaxError, IndentationError):
            digest = None
    if digest is None:  # no source (exec'd code) or a lambda inside a larger line
        h = _hasher()
        _feed_code(h, code)
        digest = h.hexdigest()
    info = (digest, _global_loads(code))
    _code_cache[code] = info
    return info


def _feed_code(h: Any, code: types.CodeType) -> None:
    h.update(code.co_code)
    h.update(repr(code.co_names).encode())
    h.update(repr(code.co_varnames).encode())
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            _feed_code(h, const)
        else:
            h.update(repr(const).encode())


def _global_loads(code: types.CodeType) -> tuple[str, ...]:
    names: list[str] = []
    stack = [code]
    while stack:
        co = stack.pop()
        for ins in dis.get_instructions(co):
            if ins.opname in ("LOAD_GLOBAL", "LOAD_NAME") and ins.argval not in names:
                names.append(ins.argval)
        stack.extend(c for c in co.co_consts if isinstance(c, types.CodeType))
    return tuple(names)


# -- values by content ----------------------------------------------------------------------
_warned_types: set[str] = set()


def value_digest(value: Any) -> str:
    """A content digest of a Python value: numbers, strings, containers, numpy arrays, pandas
    objects by their data; other objects by their pickled state; unpicklable ones by type."""
    h = _hasher()
    _feed_value(h, value, set(), "value")
    return h.hexdigest()


def _feed_value(h: Any, v: Any, seen: set[int], label: str) -> None:
    t = type(v)
    if v is None or t in (bool, int, float, complex):
        h.update(f"{t.__name__}:{v!r};".encode())
        return
    if t is str:
        b = v.encode("utf-8", "surrogatepass")
        h.update(b"s%d:" % len(b))
        h.update(b)
        return
    if t in (bytes, bytearray):
        h.update(b"b%d:" % len(v))
        h.update(v)
        return
    if id(v) in seen:
        h.update(b"<cycle>")
        return
    seen.add(id(v))
    try:
        if t in (list, tuple):
            h.update(b"%s%d[" % (t.__name__.encode(), len(v)))
            for item in v:
                _feed_value(h, item, seen, label)
            h.update(b"]")
        elif t in (dict,) or (isinstance(v, dict) and t.__module__ == "collections"):
            h.update(b"%s%d{" % (t.__name__.encode(), len(v)))
            for key, item in v.items():
                _feed_value(h, key, seen, label)
                _feed_value(h, item, seen, label)
            h.update(b"}")
        elif t in (set, frozenset):
            h.update(b"%s%d{" % (t.__name__.encode(), len(v)))
            for d in sorted(value_digest(item) for item in v):
                h.update(d.encode())
            h.update(b"}")
        elif t.__module__ == "numpy" or isinstance(v, _numpy_types()):
            _feed_numpy(h, v, label)
        elif t.__module__.startswith("pandas"):
            _feed_pandas(h, v, label)
        else:
            _feed_pickled(h, v, label)
    finally:
        seen.discard(id(v))


@functools.lru_cache(maxsize=1)
def _numpy_types() -> tuple[type, ...]:
    np = sys.modules.get("numpy")
    return (np.ndarray, np.generic) if np is not None else ()


def _feed_numpy(h: Any, v: Any, label: str) -> None:
    import numpy as np

    if isinstance(v, np.ndarray) and v.dtype != object:
        arr = np.ascontiguousarray(v)
        h.update(f"ndarray:{arr.dtype.str}:{arr.shape};".encode())
        h.update(arr.reshape(-1).view(np.uint8))
    elif isinstance(v, np.generic) and not isinstance(v, np.object_):
        h.update(f"npscalar:{v.dtype.str}:".encode())
        h.update(v.tobytes())
    else:
        _feed_pickled(h, v, label)


def _feed_pandas(h: Any, v: Any, label: str) -> None:
    import pandas as pd

    if isinstance(v, (pd.DataFrame, pd.Series, pd.Index)):
        try:
            rows = pd.util.hash_pandas_object(v, index=not isinstance(v, pd.Index))
            h.update(f"{type(v).__name__}:{v.shape};".encode())
            h.update(repr(v.dtypes if isinstance(v, pd.DataFrame) else v.dtype).encode())
            h.update(repr(list(v.columns) if isinstance(v, pd.DataFrame) else v.name).encode())
            h.update(rows.to_numpy().tobytes())
            return
        except TypeError:  # unhashable cells (lists, dicts): fall back to pickling
            pass
    _feed_pickled(h, v, label)


def _feed_pickled(h: Any, v: Any, label: str) -> None:
    try:
        data = pickle.dumps(v, protocol=5)
    except Exception:  # noqa: BLE001 - any object may refuse to pickle
        try:
            import cloudpickle

            data = cloudpickle.dumps(v, protocol=5)
        except Exception:  # noqa: BLE001
            tname = f"{type(v).__module__}.{type(v).__qualname__}"
            if tname not in _warned_types:
                _warned_types.add(tname)
                warnings.warn(
                    f"{label} of type {tname} cannot be hashed by content: PipeLite tracks only "
                    f"its type, so changing it will not make stages stale. Pass it as a "
                    f"parameter or an artifact to track it.",
                    PipeliteWarning,
                    stacklevel=2,
                )
            h.update(f"<unhashable {tname}>".encode())
            return
    h.update(b"p%d:" % len(data))
    h.update(data)


# -- reachable code ----------------------------------------------------------------------------
class _Walker:
    """Collects the helpers and globals reachable from a stage's code."""

    def __init__(self, skip: set[str]):
        self.skip = skip  # names that are inputs: tracked by content hash, not as globals
        self.helpers: dict[str, str] = {}
        self.globals: dict[str, str] = {}
        self._visited: set[int] = set()

    def reference(self, name: str, value: Any, owner: str, scope_is_stage: bool) -> None:
        """``owner``'s code reads global ``name`` bound to ``value``."""
        if scope_is_stage and name in self.skip:
            return
        token = self.token(value)
        if token is not None:
            self.helpers.setdefault(name if owner == "" else f"{name}", token)
            return
        key = name if owner == "" or scope_is_stage else f"{name} (read by {owner})"
        self.globals[key] = value_digest_labelled(value, f"global '{name}'")
        cls = type(value)
        if not _is_library_module(cls.__module__):  # its methods are code the stage may call
            self.visit_class(cls)

    def token(self, value: Any) -> str | None:
        """A digest for code-like values (functions, classes, modules), else None."""
        if isinstance(value, type) and issubclass(value, Artifact):
            return f"artifact:{value.name}"
        if isinstance(value, types.ModuleType):
            return self._module_token(value)
        if isinstance(value, types.FunctionType):
            if _is_library_module(value.__module__ or ""):
                return _library_token(value.__module__, value.__qualname__)
            return self.visit_function(value)
        if isinstance(value, type):
            if _is_library_module(value.__module__):
                return _library_token(value.__module__, value.__qualname__)
            return self.visit_class(value)
        if isinstance(value, (types.BuiltinFunctionType, types.MethodType)) or (
            callable(value) and _is_library_module(type(value).__module__)
            and not hasattr(value, "__dict__") and hasattr(value, "__name__")
        ):
            if isinstance(value, types.MethodType) and isinstance(value.__func__,
                                                                  types.FunctionType):
                return self.token(value.__func__)
            mod = getattr(value, "__module__", None) or type(value).__module__
            return _library_token(mod, getattr(value, "__qualname__", value.__name__))
        if isinstance(value, functools.partial):
            return f"partial:{self.token(value.func)}:{value_digest((value.args, value.keywords))}"
        return None

    def _module_token(self, mod: types.ModuleType) -> str:
        if _is_library_module(mod.__name__):
            return _library_token(mod.__name__)
        path = getattr(mod, "__file__", None)
        if path and os.path.exists(path):
            with open(path, "rb") as f:
                return f"module:{mod.__name__}:{xxhash.xxh3_128_hexdigest(f.read())}"
        return f"module:{mod.__name__}"

    def visit_function(self, fn: types.FunctionType, as_stage: bool = False) -> str:
        code_digest, names = _code_info(fn)
        qual = fn.__qualname__
        if id(fn) in self._visited:
            return f"fn:{code_digest}"
        self._visited.add(id(fn))
        if not as_stage:
            self.helpers[qual] = f"fn:{code_digest}"
        owner = "" if as_stage else qual
        g = fn.__globals__
        b = g.get("__builtins__", {})
        for name in names:
            if name in g:
                self.reference(name, g[name], owner, as_stage)
            elif not (name in b if isinstance(b, dict) else hasattr(b, name)):
                self.globals.setdefault(name if as_stage else f"{name} (read by {qual})",
                                        "<undefined>")
        if fn.__closure__:
            for var, cell in zip(fn.__code__.co_freevars, fn.__closure__):
                try:
                    val = cell.cell_contents
                except ValueError:
                    continue
                label = f"closure '{var}' of {qual}"
                tok = self.token(val)
                self.globals[label] = tok if tok is not None else value_digest_labelled(val,
                                                                                        label)
        if fn.__defaults__ and not as_stage:
            self.globals[f"defaults of {qual}"] = value_digest_labelled(
                fn.__defaults__, f"defaults of {qual}")
        if fn.__kwdefaults__ and not as_stage:
            self.globals[f"keyword defaults of {qual}"] = value_digest_labelled(
                fn.__kwdefaults__, f"keyword defaults of {qual}")
        return f"fn:{code_digest}"

    def visit_class(self, cls: type, as_stage: bool = False) -> str:
        """A class digest from its members: methods by normalised code, attributes by value."""
        if id(cls) in self._visited:
            return f"class:{cls.__qualname__}"
        self._visited.add(id(cls))
        h = _hasher()
        h.update(cls.__qualname__.encode())
        for base in cls.__bases__:
            h.update((self.token(base) or "").encode())
        for key, member in sorted(vars(cls).items()):
            if key in ("__dict__", "__weakref__", "__module__", "__doc__", "__qualname__",
                       "__pipelite_stage__", "__annotations__", "__firstlineno__",
                       "__static_attributes__"):
                continue
            h.update(key.encode())
            for fn in _functions_of(member):
                h.update(_code_info(fn)[0].encode())
                self._visited.discard(id(fn))
                self.visit_function(fn, as_stage=as_stage)
                if not as_stage:
                    self.helpers.pop(fn.__qualname__, None)  # counted in the class digest
            if not _functions_of(member):
                h.update((self.token(member) or value_digest_labelled(
                    member, f"attribute '{key}' of {cls.__qualname__}")).encode())
        digest = f"class:{h.hexdigest()}"
        if not as_stage:
            self.helpers[cls.__qualname__] = digest
        return digest


def _functions_of(member: Any) -> list[types.FunctionType]:
    if isinstance(member, (staticmethod, classmethod)):
        member = member.__func__
    if isinstance(member, property):
        return [f for f in (member.fget, member.fset, member.fdel)
                if isinstance(f, types.FunctionType)]
    return [member] if isinstance(member, types.FunctionType) else []


def value_digest_labelled(value: Any, label: str) -> str:
    h = _hasher()
    _feed_value(h, value, set(), label)
    return h.hexdigest()


# -- the fingerprint --------------------------------------------------------------------------
def code_parts(st: Stage) -> tuple[str, dict[str, str], dict[str, str]]:
    """(own code digest, helpers, globals) of a stage as its code stands now."""
    walker = _Walker(set(st.inputs))
    if isinstance(st, CellStage):
        code = digest_text(normalize_source(st.source))
        ns = st.namespace
        b = ns.get("__builtins__", {})
        for name in st.reads:
            if name in ns:
                walker.reference(name, ns[name], "", True)
            elif not (name in b if isinstance(b, dict) else hasattr(b, name)):
                walker.globals[name] = "<undefined>"
        return code, walker.helpers, walker.globals
    digests = []
    for obj in st.code_objects():
        if isinstance(obj, type):
            digests.append(walker.visit_class(obj, as_stage=True))
        else:
            digests.append(walker.visit_function(obj, as_stage=True))
    return digest_text("|".join(digests)), walker.helpers, walker.globals


def canonical_params(params: Mapping[str, Any]) -> dict[str, str]:
    """Each parameter's content digest (its display form is kept apart, in the record)."""
    return {k: value_digest_labelled(v, f"parameter '{k}'") for k, v in sorted(params.items())}


def fingerprint_of(st: Stage, params: Mapping[str, Any], input_hashes: Mapping[str, str]
                   ) -> Fingerprint:
    """The fingerprint of running ``st`` with these parameters on inputs with these hashes."""
    code, helpers, globs = code_parts(st)
    parts = {
        "code": code,
        "helpers": dict(sorted(helpers.items())),
        "globals": dict(sorted(globs.items())),
        "params": canonical_params(params),
        "inputs": dict(sorted(input_hashes.items())),
        "outputs": sorted(st.declared_outputs) if st.declared_outputs is not None else None,
    }
    digest = digest_text(json.dumps(parts, sort_keys=True))
    return Fingerprint(digest, parts)
