"""The code a stage reaches, walked transitively, each piece by a digest of all it reaches.

A function's digest (its *token*) covers its normalised code, the globals it reads (values by
content; functions, classes and modules by their own tokens), its closure, defaults and
attributes, the modules it imports, and the user classes it reaches through registered
accessors. So a function met anywhere (a global, a parameter, a list, an object, a library
wrapper) counts with everything it depends on, and two functions that share a name can never
share a digest. Cycles (mutual recursion, modules importing each other) are cut where the walk
meets a function it is inside of; such partial digests are only reused within that walk.

Alongside the digests, the walk lists what it met by how the stage reaches it (``helpers``
and ``globals``), only to say in words what changed.
"""
from __future__ import annotations

import ast
import dis
import functools
import os
import sys
import types
from typing import Any, Callable, Iterable, Mapping

import xxhash

from ._encode import Encoder, hasher
from ._libraries import is_library_module, is_library_path, library_token, module_location
from .stage import Artifact

__all__ = ["Reach", "code_digest"]

_SKIP_CLASS_KEYS = frozenset({"__dict__", "__weakref__", "__module__", "__doc__", "__qualname__",
                              "__pipelite_stage__", "__annotations__", "__firstlineno__",
                              "__static_attributes__", "_abc_impl",
                              "__slotnames__"})  # copyreg's cache, set by the first pickle
# Module attributes that are the import system's bookkeeping, not what the module holds.
_MODULE_PLUMBING = frozenset({"__builtins__", "__loader__", "__spec__", "__cached__", "__file__",
                              "__name__", "__package__", "__path__", "__doc__"})


# -- code objects ------------------------------------------------------------------------------
class _CodeInfo:
    __slots__ = ("digest", "globals", "imports", "attributes", "leaf_token")

    def __init__(self, digest: str, globals_: tuple, imports: tuple, attributes: frozenset):
        self.digest, self.globals, self.imports, self.attributes = (
            digest, globals_, imports, attributes)
        # The token of a function with this code that reaches nothing else (no global read,
        # import or attribute access that could name one of your accessors): what
        # ``Reach._function_token`` computes for it, known once per code object.
        self.leaf_token: str | None = None
        if not globals_ and not imports and not attributes:
            h = hasher()
            h.update(b"fn:" + digest.encode())
            self.leaf_token = "fn:" + h.hexdigest()


# Code objects are immutable, so their digests are cached by identity: id -> (code, info), the
# code held so that its id cannot be reused by another object while the entry lives (a
# WeakKeyDictionary hashed and compared the code's content on every lookup). A function's
# globals, defaults and closure are not immutable: they are walked on every check.
_code_cache: dict[int, tuple[types.CodeType, _CodeInfo]] = {}
_CODE_CACHE_MAX = 50_000  # cleared when full: notebooks redefine functions all day
_CONST_OPS = frozenset(dis.hasconst)
_GLOBAL_OPS = frozenset(dis.opmap[n] for n in ("LOAD_GLOBAL", "LOAD_NAME") if n in dis.opmap)
_ATTR_OPS = frozenset(dis.opmap[n] for n in ("LOAD_ATTR", "LOAD_METHOD", "STORE_ATTR")
                      if n in dis.opmap)
_IMPORT_OP = dis.opmap["IMPORT_NAME"]


def code_digest(code: types.CodeType) -> str:
    """The digest of what a code object does: its instructions, with each constant it loads
    by value (so a docstring, which no instruction loads, does not count, and adding one does
    not shift anything), its names, signature counts, flags and exception table."""
    return _code_info(code).digest


def _code_info(code: types.CodeType) -> _CodeInfo:
    hit = _code_cache.get(id(code))
    if hit is not None and hit[0] is code:
        return hit[1]
    h = hasher()
    globals_: list[str] = []
    imports: list[str] = []
    attributes: set[str] = set()
    consts = Encoder()
    _feed_code(h, code, consts, globals_, imports, attributes)
    info = _CodeInfo(h.hexdigest(), tuple(dict.fromkeys(globals_)),
                     tuple(dict.fromkeys(imports)), frozenset(attributes))
    if len(_code_cache) >= _CODE_CACHE_MAX:
        _code_cache.clear()
    _code_cache[id(code)] = (code, info)
    return info


def _feed_code(h: Any, code: types.CodeType, consts: Encoder, globals_: list, imports: list,
               attributes: set) -> None:
    h.update(b"%d,%d,%d,%d;" % (code.co_argcount, code.co_posonlyargcount,
                                code.co_kwonlyargcount, code.co_flags))
    for names in (code.co_names, code.co_varnames, code.co_freevars, code.co_cellvars):
        h.update(("\x00".join(names) + "\x01").encode())
    h.update(getattr(code, "co_exceptiontable", b""))
    h.update(b"|")
    for ins in dis.get_instructions(code):
        op = ins.opcode
        if op in _CONST_OPS:
            value = ins.argval
            if isinstance(value, types.CodeType):
                h.update(b"C<")
                _feed_code(h, value, consts, globals_, imports, attributes)
                h.update(b">")
            else:
                h.update(b"C" + consts.digest(value, "constant").encode())
            continue
        h.update(b"%d:%d;" % (op, ins.arg or 0))
        if op in _GLOBAL_OPS:
            globals_.append(ins.argval)
        elif op in _ATTR_OPS:
            attributes.add(ins.argval)
        elif op == _IMPORT_OP:
            imports.append(ins.argval)


def leaf_token(fn: Any) -> str | None:
    """The token of a plain function that reaches nothing beyond its own code (no global
    read, import, closure, default or attribute of its own), without a walk; else None. Such a
    function's token depends on its code object alone, which is immutable."""
    if type(fn) is not types.FunctionType or fn.__closure__ is not None \
            or fn.__defaults__ is not None or fn.__kwdefaults__ is not None:
        return None
    for key in fn.__dict__:
        if not key.startswith("__"):
            return None
    return _code_info(fn.__code__).leaf_token


# -- members of classes ------------------------------------------------------------------------
def _functions_of(member: Any) -> list[types.FunctionType]:
    """The functions a class member runs: methods, static and class methods, properties.
    Other descriptors (``cached_property``...) count by their state, code inside by reach."""
    if isinstance(member, (staticmethod, classmethod)):
        member = member.__func__
    if isinstance(member, property):
        return [f for f in (member.fget, member.fset, member.fdel)
                if isinstance(f, types.FunctionType)]
    return [member] if isinstance(member, types.FunctionType) else []


def _is_bound_method(value: Any) -> bool:
    bound = getattr(value, "__self__", None)
    return callable(value) and bound is not None and not isinstance(bound, types.ModuleType)


def _registered_accessors() -> dict[str, type]:
    """Your classes registered into libraries as accessors (``df.myacc``), by name."""
    found: dict[str, type] = {}
    pd = sys.modules.get("pandas")
    if pd is not None:
        for owner in (pd.DataFrame, pd.Series, pd.Index):
            for name in getattr(owner, "_accessors", ()):
                cls = getattr(vars(owner).get(name), "_accessor", None)
                if isinstance(cls, type):
                    found.setdefault(name, cls)
    pl = sys.modules.get("polars")
    if pl is not None:
        for owner in (pl.DataFrame, pl.Series, pl.LazyFrame, pl.Expr):
            for name in getattr(owner, "_accessors", ()):
                cls = getattr(vars(owner).get(name), "_ns", None)
                if isinstance(cls, type):
                    found.setdefault(name, cls)
    return {k: v for k, v in found.items() if not is_library_module(v.__module__ or "")}


# -- the walk ----------------------------------------------------------------------------------
class Reach:
    """One walk of the code a stage reaches.

    ``skip``: names the stage's own scope reads that are its inputs (a cell's artifacts).
    ``memo``: shared by the stages of one check: digests of large values and tokens of code,
    valid while no user code runs.
    """

    def __init__(self, skip: Iterable[str] = (), memo: dict | None = None,
                 ignore: Iterable[str] = (), params_of: Mapping[Any, bool] | None = None):
        """``ignore``: globals left out (``@stage(ignore=...)``; give such a walk a memo of its
        own). ``params_of``: code objects whose defaults are the stage's parameters (covered
        by their resolved values): code -> whether positional defaults are parameters too."""
        self.skip = frozenset(skip)
        self.ignore = frozenset(ignore)
        self.ignored_seen: set[str] = set()  # ignored names the walk met
        self.params_of = dict(params_of or {})
        self.memo: dict = memo if memo is not None else {}
        self.encoder = Encoder(self.token, self.memo)
        self._stack: list[Any] = []
        self._pos: dict[int, int] = {}
        self._low = sys.maxsize
        self._partial: dict[int, tuple] = {}  # tokens that depend on a function still open
        self._entries: list[list[tuple[str, str, str, str]]] = [[]]

    # -- what was met, for reasons -----------------------------------------------------------
    def _note(self, kind: str, name: str, reader: str, digest: str) -> None:
        self._entries[-1].append((kind, name, reader, digest))

    def parts(self) -> tuple[dict[str, str], dict[str, str]]:
        """(helpers, globals): what the walk met, by how the stage reaches it."""
        helpers: dict[str, str] = {}
        globals_: dict[str, str] = {}
        for kind, name, reader, digest in self._entries[0]:
            if kind == "helper":
                key = name if name not in helpers or helpers[name] == digest or not reader \
                    else f"{name} (read by {reader})"
                target = helpers
            else:
                key = name if not reader else f"{name} (read by {reader})"
                target = globals_
            n, base = 1, key
            while key in target and target[key] != digest:
                n += 1
                key = f"{base} #{n}"
            target[key] = digest
        return helpers, globals_

    # -- entry points ------------------------------------------------------------------------
    def stage_token(self, obj: Any) -> str:
        """The token of a function or class stage's own code (never reused across stages)."""
        compute = self._class_token if isinstance(obj, type) else self._function_token
        return self._visit(obj, compute, "", memoize=False)

    def read(self, name: str, value: Any, reader: str = "") -> str:
        """``reader``'s code reads global ``name`` bound to ``value``: its digest, noted."""
        if not reader and name in self.skip:
            return "<input>"
        if name in self.ignore:
            self.ignored_seen.add(name)
            return "<ignored>"
        token = self.token(value, name)
        if token is not None:
            # for reasons, a function by its own code: what it reaches is noted on its own
            own = (f"code:{_code_info(value.__code__).digest}"
                   if isinstance(value, types.FunctionType) and not token.startswith("lib:")
                   else token)
            self._note("helper", name, reader, own)
            return token
        digest = self.encoder.digest(value, f"global '{name}'")
        self._note("global", name, reader, digest)
        return digest

    def token(self, value: Any, name: str | None = None) -> str | None:
        """A digest for code-like values (functions, classes, modules, wrappers), else None."""
        if isinstance(value, type):
            if issubclass(value, Artifact):
                return f"artifact:{value.name}"
            if is_library_module(value.__module__ or ""):
                return library_token(value.__module__, value.__qualname__)
            return self._visit(value, self._class_token, name or value.__qualname__)
        if isinstance(value, types.FunctionType):
            module = value.__module__
            if module and is_library_module(module):
                return library_token(module, value.__qualname__)
            return self._visit(value, self._function_token, name or value.__qualname__)
        if isinstance(value, types.ModuleType):
            return self.module_token(value)
        if isinstance(value, types.MethodType):
            return (f"method:{self.token(value.__func__)}:"
                    f"{self.encoder.digest(value.__self__, 'bound object')}")
        if isinstance(value, functools.partial):
            return (f"partial:{self.token(value.func)}:"
                    f"{self.encoder.digest((value.args, value.keywords), 'partial')}")
        if isinstance(value, (staticmethod, classmethod)):
            return f"{type(value).__name__}:{self.token(value.__func__)}"
        wrapped = getattr(value, "__wrapped__", None) if callable(value) else None
        if wrapped is not None and not isinstance(value, types.BuiltinFunctionType):
            # functools.lru_cache / cache and other callable wrappers: the wrapped code counts
            kind = type(value)
            return f"wrapped:{kind.__module__}.{kind.__qualname__}:{self.token(wrapped)}"
        if isinstance(value, types.BuiltinFunctionType) or (
            callable(value) and is_library_module(type(value).__module__)
            and hasattr(value, "__name__") and not hasattr(value, "__dict__")
        ):
            mod = getattr(value, "__module__", None) or type(value).__module__
            token = library_token(mod or "builtins",
                                  getattr(value, "__qualname__", value.__name__))
            bound = getattr(value, "__self__", None)
            if bound is not None and not isinstance(bound, (types.ModuleType, type)):
                # RATES.get, pattern.findall, "{:.2f}".format: the object it is bound to counts
                token += ":" + self.encoder.digest(bound, "bound object")
            return token
        return None

    # -- memoised visits, cut at cycles ------------------------------------------------------
    def _visit(self, obj: Any, compute: Callable[[Any, str], str], name: str,
               memoize: bool = True, merge: bool = True) -> str:
        key = id(obj)
        if memoize:
            hit = self.memo.get(("token", key))
            if hit is not None and hit[0] is obj:
                if merge:
                    self._entries[-1].extend(hit[2])
                return hit[1]
            hit = self._partial.get(key)
            if hit is not None and hit[0] is obj:
                self._low = min(self._low, hit[2])
                if merge:
                    self._entries[-1].extend(hit[3])
                return hit[1]
        pos = self._pos.get(key)
        if pos is not None:  # a function we are inside of: cut the cycle here
            self._low = min(self._low, pos)
            return f"<cycle {pos}>"
        mine = len(self._stack)
        self._stack.append(obj)
        self._pos[key] = mine
        outer_low, self._low = self._low, mine
        mark = len(self._partial)
        self._entries.append([])
        try:
            token = compute(obj, name)
        finally:
            self._stack.pop()
            del self._pos[key]
            entries = self._entries.pop()
            low = self._low
            self._low = min(outer_low, low)
        if merge:
            self._entries[-1].extend(entries)
        if memoize:
            if low >= mine:  # depends on nothing still open: valid for the whole check
                self.memo[("token", key)] = (obj, token, entries if merge else [])
                for k in list(self._partial)[mark:]:
                    del self._partial[k]
            else:
                self._partial[key] = (obj, token, low, entries if merge else [])
        return token

    # -- functions ---------------------------------------------------------------------------
    def _function_token(self, fn: types.FunctionType, name: str) -> str:
        info = _code_info(fn.__code__)
        shown = name or fn.__qualname__
        h = hasher()
        h.update(b"fn:" + info.digest.encode())
        g = fn.__globals__
        b = g.get("__builtins__", {})
        for gname in info.globals:
            if gname in g:
                h.update(f"{gname}={self.read(gname, g[gname], name)};".encode())
            elif not (gname in b if isinstance(b, dict) else hasattr(b, gname)):
                self._note("global", gname, name, "<undefined>")
                h.update(f"{gname}=<undefined>;".encode())
        for modname in info.imports:
            token = self.import_token(modname)
            self._note("helper", f"imported module '{modname}'", "", token)
            h.update(f"import {modname}={token};".encode())
        if info.attributes:
            accessors = self.memo.get("accessors")
            if accessors is None:  # once per check
                accessors = self.memo["accessors"] = _registered_accessors()
            for attr in sorted(info.attributes & accessors.keys()):
                token = self.token(accessors[attr], attr) or ""
                self._note("helper", f"accessor '{attr}'", "", token)
                h.update(f"accessor {attr}={token};".encode())
        if fn.__closure__:
            for var, cell in zip(fn.__code__.co_freevars, fn.__closure__, strict=True):
                try:
                    value = cell.cell_contents
                except ValueError:  # not assigned yet
                    continue
                label = f"closure '{var}' of {shown}"
                digest = self.token(value, var) or self.encoder.digest(value, label)
                self._note("global", label, "", digest)
                h.update(f"closure {var}={digest};".encode())
        attributes = {k: v for k, v in vars(fn).items()  # bound methods there are plumbing
                      if not k.startswith("__") and not _is_bound_method(v)}
        # defaults are evaluated once, when the function is defined: not part of its code.
        # A stage's own parameters' defaults are not walked: their values, as resolved, are
        # its parameters (and an ignored parameter's default must not count)
        positional = self.params_of.get(fn.__code__)
        for what, value in (("attributes", attributes),
                            ("defaults", None if positional else fn.__defaults__),
                            ("keyword defaults",
                             None if positional is not None else fn.__kwdefaults__)):
            if value:
                label = f"{what} of {shown}"
                digest = self.encoder.digest(value, label)
                self._note("global", label, "", digest)
                h.update(f"{label}={digest};".encode())
        return "fn:" + h.hexdigest()

    # -- classes -----------------------------------------------------------------------------
    def _class_token(self, cls: type, name: str) -> str:
        """A class from its members (methods by their tokens, attributes by value), its bases
        and its metaclass."""
        h = hasher()
        h.update(cls.__qualname__.encode())
        meta = type(cls)
        if meta is not type:
            h.update(f"meta:{self.token(meta)};".encode())
        for base in cls.__bases__:
            h.update((self.token(base) or "").encode())
        for key, member in sorted(vars(cls).items()):
            if key in _SKIP_CLASS_KEYS:
                continue
            h.update(key.encode())
            fns = _functions_of(member)
            for fn in fns:
                inner = f"{name}.{key}" if name else ""
                h.update(self._visit(fn, self._function_token, inner,
                                     memoize=fn.__code__ not in self.params_of).encode())
            if not fns:
                h.update((self.token(member) or self.encoder.digest(
                    member, f"attribute '{key}' of {cls.__qualname__}")).encode())
        return "class:" + h.hexdigest()

    # -- modules -----------------------------------------------------------------------------
    def module_token(self, mod: types.ModuleType) -> str:
        """A library module by name and version; your own module by what it holds now."""
        if is_library_module(mod.__name__):
            return library_token(mod.__name__)
        return self._visit(mod, self._module_token, mod.__name__, merge=False)

    def _module_token(self, mod: types.ModuleType, name: str) -> str:
        h = hasher()
        for key, member in sorted(vars(mod).items()):
            if key in _MODULE_PLUMBING:
                continue
            h.update(key.encode())
            h.update((self.token(member, f"{mod.__name__}.{key}") or self.encoder.digest(
                member, f"'{key}' of module {mod.__name__}")).encode())
        return f"module:{mod.__name__}:{h.hexdigest()}"

    def import_token(self, name: str) -> str:
        """A module the code imports: loaded, by what it holds; not loaded yet, by its file and
        the user modules that file imports, transitively."""
        mod = sys.modules.get(name)
        if mod is not None:
            parent = name.rpartition(".")[0]
            token = self.module_token(mod)
            return token if not parent else f"{self.import_token(parent)}/{token}"
        return _file_token(name, set())


# -- modules not loaded yet: by their files ----------------------------------------------------
_file_cache: dict[tuple[str, int, int], tuple[str, tuple[str, ...]]] = {}


def _file_token(name: str, visiting: set[str]) -> str:
    if name in visiting:
        return f"<cycle {name}>"
    file, dirs = module_location(name)
    if not file and not dirs:
        return f"module:{name}:<not found>"
    if (file and is_library_path(file)) or (not file and all(is_library_path(d) for d in dirs)):
        return library_token(name)
    visiting.add(name)
    h = hasher()
    parent = name.rpartition(".")[0]
    if parent:  # importing a.b runs a/__init__.py first
        h.update(_import_or_file_token(parent, visiting).encode())
    if file:
        digest, imported = _read_module_file(file, name, bool(dirs))
        h.update(digest.encode())
        for other in imported:
            h.update(f"{other}={_import_or_file_token(other, visiting)};".encode())
    else:
        h.update(b"namespace package")
    visiting.discard(name)
    return f"module-file:{name}:{h.hexdigest()}"


def _import_or_file_token(name: str, visiting: set[str]) -> str:
    mod = sys.modules.get(name)
    if mod is not None:
        return Reach().module_token(mod)
    return _file_token(name, visiting)


def _read_module_file(path: str, name: str, is_package: bool) -> tuple[str, tuple[str, ...]]:
    """(digest of the file, the modules it imports that can be found), cached by stat."""
    try:
        st = os.stat(path)
    except OSError:
        return "<unreadable>", ()
    key = (path, st.st_size, st.st_mtime_ns)
    hit = _file_cache.get(key)
    if hit is not None:
        return hit
    with open(path, "rb") as f:
        data = f.read()
    imported: list[str] = []
    try:
        tree = ast.parse(data)
    except (SyntaxError, ValueError):
        tree = None
    package = name if is_package else name.rpartition(".")[0]
    for node in ast.walk(tree) if tree is not None else ():
        if isinstance(node, ast.Import):
            imported += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".") if package else []
                keep = len(parts) - (node.level - 1)
                if keep < 0:
                    continue
                base = ".".join(parts[:keep] + ([base] if base else []))
            if not base:
                continue
            imported.append(base)
            for alias in node.names:  # `from pkg import sub` may name a submodule
                candidate = f"{base}.{alias.name}"
                if alias.name != "*" and module_location(candidate) != (None, ()):
                    imported.append(candidate)
    found = tuple(dict.fromkeys(m for m in imported if m != name and
                                module_location(m) != (None, ())))
    result = (xxhash.xxh3_128_hexdigest(data), found)
    _file_cache[key] = result
    return result
