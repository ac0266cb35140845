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
import io
import json
import os
import pickle
import sys
import sysconfig
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


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def warn_user(message: str) -> None:
    """A ``PipeliteWarning`` attributed to the user's line that called into PipeLite."""
    frame, level = sys._getframe(1), 2  # 1 is this function, 2 its caller
    while frame is not None and os.path.dirname(frame.f_code.co_filename) == _PACKAGE_DIR:
        frame, level = frame.f_back, level + 1
    warnings.warn(message, PipeliteWarning, stacklevel=level)


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


# -- the code that is loaded ----------------------------------------------------------------
# A function is fingerprinted by its compiled code (bytecode, names, constants), not by its
# source file: that is what runs, even when the file was edited since it was imported.
# Bytecode carries no comments, blank lines or line numbers; the docstring is left out.
_code_cache: "weakref.WeakKeyDictionary[types.CodeType, tuple]" = weakref.WeakKeyDictionary()


def _code_info(fn: types.FunctionType) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    """(digest of the code, global names it loads, modules it imports), cached per code."""
    code = fn.__code__
    hit = _code_cache.get(code)
    if hit is not None and hit[0] == fn.__doc__:
        return hit[1:]
    h = _hasher()
    _feed_code(h, code, fn.__doc__)
    names, imports = _loads_and_imports(code)
    info = (h.hexdigest(), names, imports)
    _code_cache[code] = (fn.__doc__, *info)
    return info


def _feed_code(h: Any, code: types.CodeType, doc: str | None = None) -> None:
    h.update(code.co_code)
    h.update(b"%d,%d,%d,%d;" % (code.co_argcount, code.co_posonlyargcount,
                                code.co_kwonlyargcount, code.co_flags))
    for names in (code.co_names, code.co_varnames, code.co_freevars, code.co_cellvars):
        h.update(("\x00".join(names) + "\x01").encode())
    for i, const in enumerate(code.co_consts):
        if i == 0 and doc is not None and const == doc:
            h.update(b"<doc>")
        elif isinstance(const, types.CodeType):
            _feed_code(h, const)
        else:  # frozensets hash in a stable order, whatever the hash seed
            _feed_value(h, const, set(), "constant", None)


def _loads_and_imports(code: types.CodeType) -> tuple[tuple[str, ...], tuple[str, ...]]:
    names: list[str] = []
    imports: list[str] = []
    stack = [code]
    while stack:
        co = stack.pop()
        for ins in dis.get_instructions(co):
            if ins.opname in ("LOAD_GLOBAL", "LOAD_NAME") and ins.argval not in names:
                names.append(ins.argval)
            elif ins.opname == "IMPORT_NAME" and ins.argval not in imports:
                imports.append(ins.argval)
        stack.extend(c for c in co.co_consts if isinstance(c, types.CodeType))
    return tuple(names), tuple(imports)


# -- values by content ----------------------------------------------------------------------
_warned_types: set[str] = set()


def value_digest(value: Any) -> str:
    """A content digest of a Python value: numbers, strings, containers, numpy arrays, pandas
    objects by their data; functions and classes by their code; instances of your classes by
    their attributes; other objects by their pickled state; unpicklable ones by type."""
    return value_digest_labelled(value, "value")


def value_digest_labelled(value: Any, label: str, walker: "_Walker | None" = None) -> str:
    h = _hasher()
    _feed_value(h, value, set(), label, walker or _Walker(set()))
    return h.hexdigest()


def _feed_value(h: Any, v: Any, seen: set[int], label: str, walker: "_Walker | None") -> None:
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
    if walker is not None:
        token = walker.token(v)  # functions, classes, modules, wrappers: by their code
        if token is not None:
            h.update(f"code:{token};".encode())
            return
    if id(v) in seen:
        h.update(b"<cycle>")
        return
    seen.add(id(v))
    try:
        _feed_object(h, v, t, seen, label, walker)
    finally:
        seen.discard(id(v))


def _feed_object(h: Any, v: Any, t: type, seen: set[int], label: str,
                 walker: "_Walker | None") -> None:
    if isinstance(v, (list, tuple)):
        h.update(b"%s%d[" % (t.__qualname__.encode(), len(v)))
        for item in v:
            _feed_value(h, item, seen, label, walker)
        h.update(b"]")
    elif isinstance(v, (dict, types.MappingProxyType)):
        h.update(b"%s%d{" % (t.__qualname__.encode(), len(v)))
        for key, item in v.items():
            _feed_value(h, key, seen, label, walker)
            _feed_value(h, item, seen, label, walker)
        h.update(b"}")
    elif isinstance(v, (set, frozenset)):
        h.update(b"%s%d{" % (t.__qualname__.encode(), len(v)))
        for d in sorted(value_digest_labelled(item, label, walker) for item in v):
            h.update(d.encode())
        h.update(b"}")
    elif isinstance(v, _numpy_types()):
        _feed_numpy(h, v, label)
        return
    elif t.__module__.startswith("pandas"):
        _feed_pandas(h, v, label)
        return
    elif walker is not None and _is_user_object(v, t):
        _feed_state(h, v, t, seen, label, walker)  # your own class: its code and attributes
        return
    else:
        _feed_pickled(h, v, label, walker)
        return
    factory = getattr(v, "default_factory", None)  # collections.defaultdict
    if factory is not None:
        _feed_value(h, factory, seen, label, walker)
    if walker is not None and _is_user_object(v, t):  # a subclass of a container
        _feed_state(h, v, t, seen, label, walker)


def _is_user_object(v: Any, t: type) -> bool:
    if t is types.SimpleNamespace:
        return True
    return not _is_library_module(t.__module__ or "") and not isinstance(v, type)


def _feed_state(h: Any, v: Any, t: type, seen: set[int], label: str, walker: "_Walker") -> None:
    """An instance of a user-defined class: its class's code, then its attributes and slots."""
    h.update(f"obj:{walker.token(t) if t is not types.SimpleNamespace else 'ns'}:".encode())
    if hasattr(v, "__dict__"):
        _feed_value(h, vars(v), seen, label, walker)
    for klass in t.__mro__:
        for slot in getattr(klass, "__slots__", ()) if klass is not object else ():
            if slot not in ("__dict__", "__weakref__"):
                h.update(slot.encode())
                _feed_value(h, getattr(v, slot, "<unset>"), seen, label, walker)


@functools.lru_cache(maxsize=1)
def _numpy_types() -> tuple[type, ...]:
    np = sys.modules.get("numpy")
    return (np.ndarray, np.generic) if np is not None else ()


def _feed_numpy(h: Any, v: Any, label: str) -> None:
    import numpy as np

    if isinstance(v, np.ma.MaskedArray):
        h.update(b"masked:")
        _feed_numpy(h, np.ma.getdata(v), label)
        _feed_numpy(h, np.ma.getmaskarray(v), label)
        h.update(repr(v.fill_value).encode())
    elif isinstance(v, np.ndarray) and v.dtype != object:
        arr = np.ascontiguousarray(v)
        kind = arr.dtype.descr if arr.dtype.fields else arr.dtype.str  # field names and order
        h.update(f"ndarray:{kind}:{arr.shape};".encode())
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
            dtypes = list(v.dtypes) if isinstance(v, pd.DataFrame) else [v.dtype]
            h.update(repr([repr(d) for d in dtypes]).encode())  # categories and their order
            h.update(repr(list(v.columns) if isinstance(v, pd.DataFrame) else v.name).encode())
            index = v if isinstance(v, pd.Index) else v.index
            h.update(repr((list(index.names), type(index).__name__)).encode())
            if isinstance(v, pd.DataFrame):
                h.update(repr(list(v.columns.names)).encode())
            h.update(rows.to_numpy().tobytes())
            return
        except TypeError:  # unhashable cells (lists, dicts): fall back to pickling
            pass
    _feed_pickled(h, v, label)


class _ContentPickler(pickle.Pickler):
    """Pickles an object's state for hashing: functions and classes inside it count by their
    code, sets in a stable order, whatever the hash seed."""

    def __init__(self, file: Any, walker: "_Walker | None"):
        super().__init__(file, protocol=5)
        self.walker = walker

    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, (set, frozenset)):
            return "set:" + ",".join(sorted(value_digest_labelled(x, "set item", self.walker)
                                            for x in obj))
        if self.walker is not None and isinstance(obj, (types.FunctionType, type,
                                                        types.ModuleType)):
            return self.walker.token(obj)
        return None


def _feed_pickled(h: Any, v: Any, label: str, walker: "_Walker | None" = None) -> None:
    try:
        buf = io.BytesIO()
        _ContentPickler(buf, walker).dump(v)
        data = buf.getvalue()
    except Exception:  # noqa: BLE001 - any object may refuse to pickle
        try:
            import cloudpickle

            data = cloudpickle.dumps(v, protocol=5)
        except Exception:  # noqa: BLE001
            tname = f"{type(v).__module__}.{type(v).__qualname__}"
            if tname not in _warned_types:
                _warned_types.add(tname)
                warn_user(
                    f"{label} of type {tname} cannot be hashed by content: PipeLite tracks only "
                    f"its type, so changing it will not make stages stale. Pass it as a "
                    f"parameter or an artifact to track it."
                )
            h.update(f"<unhashable {tname}>".encode())
            return
    h.update(b"p%d:" % len(data))
    h.update(data)


# -- reachable code ----------------------------------------------------------------------------
_SKIP_CLASS_KEYS = frozenset({"__dict__", "__weakref__", "__module__", "__doc__", "__qualname__",
                              "__pipelite_stage__", "__annotations__", "__firstlineno__",
                              "__static_attributes__"})


def _helper_key(obj: Any) -> str:
    module = getattr(obj, "__module__", None)
    qual = getattr(obj, "__qualname__", repr(obj))
    key = qual if module in (None, "__main__") else f"{module}.{qual}"
    code = getattr(obj, "__code__", None)
    if code is not None and code.co_name != obj.__name__:  # a functools.wraps wrapper
        key += f" [{code.co_name}]"
    return key


class _Walker:
    """Collects the helpers and globals reachable from a stage's code."""

    def __init__(self, skip: set[str], memo: dict | None = None):
        self.skip = skip  # names that are inputs: tracked by content hash, not as globals
        self.memo = memo  # id -> (array or frame, digest), shared by one status() check
        self.helpers: dict[str, str] = {}
        self.globals: dict[str, str] = {}
        self._visited: dict[int, str] = {}

    def reference(self, name: str, value: Any, owner: str, scope_is_stage: bool) -> None:
        """``owner``'s code reads global ``name`` bound to ``value``."""
        if scope_is_stage and name in self.skip:
            return
        token = self.token(value)
        if token is not None:
            if not isinstance(value, (types.FunctionType, type)) or token.startswith("lib:"):
                self.helpers[name] = token  # user functions and classes are listed already
            return
        key = name if owner == "" or scope_is_stage else f"{name} (read by {owner})"
        self.globals[key] = self._data_digest(value, f"global '{name}'")

    def _data_digest(self, value: Any, label: str) -> str:
        # A large array or frame read by many stages is hashed once per check. Only pure data:
        # a value holding code adds helpers as it is hashed, which a memo would skip.
        memo = self.memo
        if memo is None or not (isinstance(value, _numpy_types()) or
                                type(value).__module__.startswith("pandas")):
            return value_digest_labelled(value, label, self)
        hit = memo.get(id(value))
        if hit is None or hit[0] is not value:
            hit = memo[id(value)] = (value, value_digest_labelled(value, label, self))
        return hit[1]

    def token(self, value: Any) -> str | None:
        """A digest for code-like values (functions, classes, modules, wrappers), else None."""
        if isinstance(value, type):
            if issubclass(value, Artifact):
                return f"artifact:{value.name}"
            if _is_library_module(value.__module__ or ""):
                return _library_token(value.__module__, value.__qualname__)
            return self.visit_class(value)
        if isinstance(value, types.FunctionType):
            if _is_library_module(value.__module__ or ""):
                return _library_token(value.__module__ or "", value.__qualname__)
            return self.visit_function(value)
        if isinstance(value, types.ModuleType):
            return self.module_token(value)
        if isinstance(value, types.MethodType):
            return (f"method:{self.token(value.__func__)}:"
                    f"{value_digest_labelled(value.__self__, 'bound object', self)}")
        if isinstance(value, functools.partial):
            return (f"partial:{self.token(value.func)}:"
                    f"{value_digest_labelled((value.args, value.keywords), 'partial', self)}")
        wrapped = getattr(value, "__wrapped__", None) if callable(value) else None
        if wrapped is not None and not isinstance(value, types.BuiltinFunctionType):
            # functools.lru_cache / cache and other callable wrappers: the wrapped code counts
            kind = type(value)
            return f"wrapped:{kind.__module__}.{kind.__qualname__}:{self.token(wrapped)}"
        if isinstance(value, types.BuiltinFunctionType) or (
            callable(value) and _is_library_module(type(value).__module__)
            and hasattr(value, "__name__") and not hasattr(value, "__dict__")
        ):
            mod = getattr(value, "__module__", None) or type(value).__module__
            token = _library_token(mod or "builtins",
                                   getattr(value, "__qualname__", value.__name__))
            bound = getattr(value, "__self__", None)
            if bound is not None and not isinstance(bound, (types.ModuleType, type)):
                # RATES.get, pattern.findall, "{:.2f}".format: the object it is bound to counts
                token += ":" + value_digest_labelled(bound, "bound object", self)
            return token
        return None

    def module_token(self, mod: types.ModuleType) -> str:
        """A library module by name and version; your own module by what it holds now."""
        if _is_library_module(mod.__name__):
            return _library_token(mod.__name__)
        if id(mod) in self._visited:
            return self._visited[id(mod)]
        self._visited[id(mod)] = f"module:{mod.__name__}:<cycle>"
        h = _hasher()
        for key, member in sorted(vars(mod).items()):
            if key.startswith("__") and key.endswith("__"):
                continue
            h.update(key.encode())
            h.update((self.token(member) or value_digest_labelled(
                member, f"'{key}' of module {mod.__name__}", self)).encode())
        digest = f"module:{mod.__name__}:{h.hexdigest()}"
        self._visited[id(mod)] = digest
        return digest

    def import_token(self, name: str) -> str:
        """A module the code imports: loaded, by its content; not loaded yet, by its file."""
        mod = sys.modules.get(name)
        if mod is not None:
            return self.module_token(mod)
        top = name.split(".")[0]
        if top in sys.stdlib_module_names:
            return _library_token(name)
        import importlib.machinery

        try:  # PathFinder finds without importing anything
            spec = importlib.machinery.PathFinder.find_spec(top)
        except (ImportError, ValueError):
            spec = None
        origin = getattr(spec, "origin", None)
        if not origin or not os.path.exists(origin):
            return f"module:{name}:<not found>"
        if any(os.path.realpath(origin).startswith(root) for root in _LIB_ROOTS):
            return _library_token(name)
        with open(origin, "rb") as f:
            return f"module-file:{name}:{xxhash.xxh3_128_hexdigest(f.read())}"

    def visit_function(self, fn: types.FunctionType, as_stage: bool = False) -> str:
        code_digest, names, imports = _code_info(fn)
        token = f"fn:{code_digest}"
        if id(fn) in self._visited:
            return token
        self._visited[id(fn)] = token
        key = _helper_key(fn)
        if not as_stage:
            self.helpers[key] = token
        owner = "" if as_stage else key
        g = fn.__globals__
        b = g.get("__builtins__", {})
        for name in names:
            if name in g:
                self.reference(name, g[name], owner, as_stage)
            elif not (name in b if isinstance(b, dict) else hasattr(b, name)):
                self.globals.setdefault(name if as_stage else f"{name} (read by {key})",
                                        "<undefined>")
        for modname in imports:
            self.helpers[f"imported module '{modname}'"] = self.import_token(modname)
        if fn.__closure__:
            for var, cell in zip(fn.__code__.co_freevars, fn.__closure__):
                try:
                    val = cell.cell_contents
                except ValueError:  # not assigned yet
                    continue
                label = f"closure '{var}' of {key}"
                self._put(label, value_digest_labelled(val, label, self))
        attributes = {k: v for k, v in vars(fn).items()  # bound methods there are plumbing
                      if not k.startswith("__") and not _is_bound_method(v)}
        if attributes:  # e.g. a singledispatch function's registry of implementations
            self._put(f"attributes of {key}", value_digest_labelled(
                attributes, f"attributes of {key}", self))
        # defaults are evaluated once, when the function is defined: not part of its code
        if fn.__defaults__:
            self._put(f"defaults of {key}", value_digest_labelled(
                fn.__defaults__, f"defaults of {key}", self))
        if fn.__kwdefaults__:
            self._put(f"keyword defaults of {key}", value_digest_labelled(
                fn.__kwdefaults__, f"keyword defaults of {key}", self))
        return token

    def _put(self, label: str, digest: str) -> None:
        """Record a global-like value; functions sharing a name (closures made by one factory,
        lambdas) each keep their own entry."""
        key, n = label, 1
        while key in self.globals and self.globals[key] != digest:
            n += 1
            key = f"{label} #{n}"
        self.globals[key] = digest

    def visit_class(self, cls: type, as_stage: bool = False) -> str:
        """A class digest from its members: methods by their code, attributes by value."""
        if id(cls) in self._visited:
            return self._visited[id(cls)]
        self._visited[id(cls)] = f"class:{cls.__qualname__}:<cycle>"
        h = _hasher()
        h.update(cls.__qualname__.encode())
        for base in cls.__bases__:
            h.update((self.token(base) or "").encode())
        for key, member in sorted(vars(cls).items()):
            if key in _SKIP_CLASS_KEYS:
                continue
            h.update(key.encode())
            fns = _functions_of(member)
            for fn in fns:
                h.update(self.visit_function(fn, as_stage=as_stage).encode())
                if not as_stage:
                    self.helpers.pop(_helper_key(fn), None)  # counted in the class digest
            if not fns:
                h.update((self.token(member) or value_digest_labelled(
                    member, f"attribute '{key}' of {cls.__qualname__}", self)).encode())
        digest = f"class:{h.hexdigest()}"
        self._visited[id(cls)] = digest
        if not as_stage:
            self.helpers[_helper_key(cls)] = digest
        return digest


def _is_bound_method(value: Any) -> bool:
    bound = getattr(value, "__self__", None)
    return callable(value) and bound is not None and not isinstance(bound, types.ModuleType)


def _functions_of(member: Any) -> list[types.FunctionType]:
    if isinstance(member, (staticmethod, classmethod)):
        member = member.__func__
    if isinstance(member, property):
        return [f for f in (member.fget, member.fset, member.fdel)
                if isinstance(f, types.FunctionType)]
    return [member] if isinstance(member, types.FunctionType) else []


# -- the fingerprint --------------------------------------------------------------------------
def code_parts(st: Stage, memo: dict | None = None
               ) -> tuple[str, dict[str, str], dict[str, str]]:
    """(own code digest, helpers, globals) of a stage as its code stands now."""
    walker = _Walker(set(st.inputs), memo)
    if isinstance(st, CellStage):
        code = digest_text(normalize_source(st.source))
        ns = st.namespace
        b = ns.get("__builtins__", {})
        for name in st.reads:
            if name in ns:
                walker.reference(name, ns[name], "", True)
            elif not (name in b if isinstance(b, dict) else hasattr(b, name)):
                walker.globals[name] = "<undefined>"
        for modname in st.analysis.imports:
            walker.helpers[f"imported module '{modname}'"] = walker.import_token(modname)
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


def fingerprint_of(st: Stage, params: Mapping[str, Any], input_hashes: Mapping[str, str],
                   memo: dict | None = None) -> Fingerprint:
    """The fingerprint of running ``st`` with these parameters on inputs with these hashes.

    ``memo`` (a dict shared across the stages of one check) hashes each large array or frame
    global once; values must not change while it is in use."""
    code, helpers, globs = code_parts(st, memo)
    parts = {
        "code": code,
        "helpers": dict(sorted(helpers.items())),
        "globals": dict(sorted(globs.items())),
        "params": canonical_params(params),
        "inputs": dict(sorted(input_hashes.items())),
        "outputs": sorted(st.declared_outputs) if st.declared_outputs is not None else None,
    }
    if st.env:  # values are secrets as often as not: only their digests are kept
        parts["env"] = {var: (digest_text(os.environ[var]) if var in os.environ else "<unset>")
                        for var in sorted(st.env)}
    digest = digest_text(json.dumps(parts, sort_keys=True))
    return Fingerprint(digest, parts)
