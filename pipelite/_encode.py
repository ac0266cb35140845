"""Values as canonical bytes: what makes two values different makes their digests different.

A digest covers a value's type, its shape (a 0-d array is not a 1-element one), the builtin
value inside a subclass of ``str``/``int``/``float``, metadata user code can read (pandas
``.attrs``) and, for containers and objects, everything inside. Functions, classes and modules
met inside a value are not encoded here: the ``code_token`` callback (the reach walker) gives
their digest, which covers everything their code reaches.
"""
from __future__ import annotations

import abc
import functools
import io
import pickle
import sys
import types
import typing
import warnings
from typing import Any, Callable

import xxhash

from ._files import File, file_digest
from ._libraries import is_library_module

__all__ = ["Encoder", "hasher", "PipeliteWarning", "warn_user"]


class PipeliteWarning(UserWarning):
    """Something PipeLite cannot track precisely (it still runs)."""


def warn_user(message: str) -> None:
    """A ``PipeliteWarning`` attributed to the user's line that called into PipeLite: past
    the core's frames, the IPython extension's, and IPython's own (a magic's caller is the
    cell)."""
    import os

    here = os.path.dirname(os.path.abspath(__file__))
    ours = (here, os.path.join(os.path.dirname(here), "pipelite_ipy"))
    frame: Any = sys._getframe(1)
    level = 2  # 1 is this function, 2 its caller
    while frame is not None and (
            os.path.dirname(os.path.abspath(frame.f_code.co_filename)) in ours
            or frame.f_globals.get("__name__", "").startswith(("IPython.", "decorator"))):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, PipeliteWarning, stacklevel=level)


def hasher() -> "xxhash.xxh3_128":
    return xxhash.xxh3_128()


_warned_types: set[str] = set()
_SCALARS = (bool, int, float, complex)
# Objects that are plumbing, not data: they hold no value a result could depend on.
def _plumbing() -> tuple[type, ...]:
    import threading
    import weakref

    kinds = (type(threading.Lock()), type(threading.RLock()), weakref.ref, threading.Condition,
             threading.Event, threading.Semaphore, threading.Barrier)
    return tuple(t for t in kinds if isinstance(t, type))


_PLUMBING = _plumbing()


def np_bytes(values: Any) -> Any:
    """The raw bytes of a float pandas column or index, as a buffer (copied only when the
    column is not contiguous)."""
    import numpy as np

    return np.ascontiguousarray(values.to_numpy()).reshape(-1).view(np.uint8)


def _numpy_types() -> tuple[type, ...]:
    np = sys.modules.get("numpy")
    return (np.ndarray, np.generic) if np is not None else ()


_DATALESS_BASES = frozenset({object, abc.ABC, typing.Generic})
_FED_ITEM_BY_ITEM = (list, tuple, dict, set, frozenset, str, bytes, bytearray, bool, int, float,
                     complex)


@functools.lru_cache(maxsize=1024)
def _holds_library_data(t: type) -> bool:
    """Whether your class derives from a library class that may keep data outside the
    instance's ``__dict__`` (``collections.deque``, ``datetime.date``, ``decimal.Decimal``...).
    Builtin containers and values are fed item by item elsewhere."""
    return any(b not in _DATALESS_BASES and not _is_user_type(b)
               and not issubclass(b, _FED_ITEM_BY_ITEM) for b in t.__mro__[1:])


def _is_user_type(t: type) -> bool:
    return t is types.SimpleNamespace or not is_library_module(t.__module__ or "")


class Encoder:
    """Feeds values into a hash. One encoder serves one walk: it owns its cycle guard, the
    label used in warnings, and the memo of large values (arrays and frames) shared by the
    stages of one check."""

    def __init__(self, code_token: Callable[[Any], str | None] | None = None,
                 memo: dict | None = None):
        self.code_token = code_token
        self.memo = memo
        self.label = "value"
        self._seen: set[int] = set()

    # -- entry points ------------------------------------------------------------------------
    def digest(self, value: Any, label: str) -> str:
        """The digest of ``value``; ``label`` names it in a warning if it cannot be hashed."""
        memo = self.memo
        if memo is not None and not (isinstance(value, _numpy_types())
                                     or type(value).__module__.startswith("pandas")):
            memo = None  # only large data is memoised: code may add to the walk as it is hashed
        if memo is not None:
            hit = memo.get(id(value))
            if hit is not None and hit[0] is value:
                return hit[1]
        outer, self.label = self.label, label
        try:
            h = hasher()
            self.feed(h, value)
            digest = h.hexdigest()
        finally:
            self.label = outer
        if memo is not None:
            memo[id(value)] = (value, digest)
        return digest

    def feed(self, h: Any, v: Any) -> None:
        t = type(v)
        if v is None or t in _SCALARS:
            h.update(f"{t.__name__}:{v!r};".encode())
            return
        if t is str:
            b = v.encode("utf-8", "surrogatepass")
            h.update(b"s%d:" % len(b))
            h.update(b)
            return
        if t is bytes or t is bytearray:
            h.update(b"%s%d:" % (t.__name__.encode(), len(v)))
            h.update(v)
            return
        if isinstance(v, File):  # a file or folder (a subclass too): by its content and path
            digest, _ = file_digest(v, self.memo)
            h.update(f"file:{v.key}={digest};".encode("utf-8", "surrogateescape"))
            return
        if self.code_token is not None:
            token = self.code_token(v)  # functions, classes, modules, wrappers: by their reach
            if token is not None:
                h.update(f"code:{token};".encode())
                return
        if id(v) in self._seen:
            h.update(b"<cycle>")
            return
        self._seen.add(id(v))
        try:
            self._feed_object(h, v, t)
        finally:
            self._seen.discard(id(v))

    # -- by kind -----------------------------------------------------------------------------
    def _feed_object(self, h: Any, v: Any, t: type) -> None:
        if isinstance(v, _numpy_types()):
            self._feed_numpy(h, v)
            return
        if t.__module__.startswith("pandas"):
            self._feed_pandas(h, v)
            return
        name = f"{t.__module__}.{t.__qualname__}".encode()
        if isinstance(v, (list, tuple)):
            h.update(b"%s%d[" % (name, len(v)))
            for item in v:
                self.feed(h, item)
            h.update(b"]")
        elif isinstance(v, (dict, types.MappingProxyType)):
            h.update(b"%s%d{" % (name, len(v)))
            for key, item in v.items():
                self.feed(h, key)
                self.feed(h, item)
            h.update(b"}")
            factory = getattr(v, "default_factory", None)  # collections.defaultdict
            if factory is not None:
                self.feed(h, factory)
        elif isinstance(v, (set, frozenset)):
            h.update(b"%s%d{" % (name, len(v)))
            for d in sorted(self.digest(item, self.label) for item in v):
                h.update(d.encode())
            h.update(b"}")
        elif isinstance(v, (str, bytes, bytearray, *_SCALARS)):
            # a subclass of a builtin value: the value inside, then what the subclass adds
            base: Any = next(b for b in (str, bytes, bytearray, bool, int, float, complex)
                                  if isinstance(v, b))
            h.update(b"%s<" % name)
            self.feed(h, base(v))
            h.update(b">")
            if not _is_user_type(t):
                return
        elif not _is_user_type(t) or isinstance(v, type):
            self._feed_pickled(h, v)
            return
        if _is_user_type(t) and not isinstance(v, type):
            if _holds_library_data(t):  # a deque, date, Decimal... of yours: its C-held data
                self._feed_pickled(h, v)
            self._feed_state(h, v, t)

    def _feed_state(self, h: Any, v: Any, t: type) -> None:
        """An object: its class (by its code, for your classes), then attributes and slots."""
        token = self.code_token(t) if self.code_token is not None else None
        h.update(f"obj:{token or t.__module__ + '.' + t.__qualname__}:".encode())
        state = getattr(v, "__dict__", None)
        if isinstance(state, dict):
            self.feed(h, state)
        for klass in t.__mro__:
            for slot in getattr(klass, "__slots__", ()) if klass is not object else ():
                if isinstance(slot, str) and slot not in ("__dict__", "__weakref__"):
                    h.update(slot.encode())
                    self.feed(h, getattr(v, slot, "<unset>"))

    def _feed_numpy(self, h: Any, v: Any) -> None:
        import numpy as np

        t = type(v)
        tag = "" if t in (np.ndarray,) or isinstance(v, np.generic) else (
            f"[{t.__module__}.{t.__qualname__}]")
        if isinstance(v, np.ma.MaskedArray):
            h.update(f"masked{tag}:".encode())
            self._feed_numpy(h, np.ma.getdata(v))
            self._feed_numpy(h, np.ma.getmaskarray(v))
            h.update(repr(v.fill_value).encode())
        elif isinstance(v, np.ndarray) and not v.dtype.hasobject and v.dtype.kind != "T":
            # (object fields and numpy 2's StringDType hold references, not bytes: pickled)
            arr = np.ascontiguousarray(v)  # at least 1-d: the shape comes from v itself
            kind = arr.dtype.descr if arr.dtype.fields else arr.dtype.str
            h.update(f"ndarray{tag}:{kind}:{v.shape};".encode())
            h.update(arr.reshape(-1).view(np.uint8))
        elif isinstance(v, np.generic) and not isinstance(v, np.object_) and v.dtype.kind != "T":
            h.update(f"npscalar:{v.dtype.str}:".encode())
            h.update(v.tobytes())
        else:
            h.update(f"ndarray{tag}:{v.dtype!r}:{getattr(v, 'shape', ())};".encode())
            self._feed_pickled(h, v)
        if tag and _is_user_type(t) and isinstance(getattr(v, "__dict__", None), dict):
            self.feed(h, vars(v))  # your ndarray subclass's own attributes (a unit, say)

    def _feed_pandas(self, h: Any, v: Any) -> None:
        import pandas as pd

        if isinstance(v, (pd.DataFrame, pd.Series, pd.Index)):
            try:
                rows = pd.util.hash_pandas_object(v, index=not isinstance(v, pd.Index))
            except TypeError:  # unhashable cells (lists, dicts): fall back to pickling
                rows = None
            if rows is not None:
                h.update(f"{type(v).__module__}.{type(v).__qualname__}:{v.shape};".encode())
                dtypes = list(v.dtypes) if isinstance(v, pd.DataFrame) else [v.dtype]
                h.update(repr([repr(d) for d in dtypes]).encode())  # categories, their order
                h.update(repr(list(v.columns) if isinstance(v, pd.DataFrame) else v.name).encode())
                index = v if isinstance(v, pd.Index) else v.index
                h.update(repr((list(index.names), type(index).__name__)).encode())
                levels = getattr(index, "levels", None)  # a MultiIndex: each level's dtype
                h.update(repr([repr(lv.dtype) for lv in levels] if levels is not None
                              else repr(index.dtype)).encode())  # int32 vs int64, time zones
                if isinstance(v, pd.DataFrame):
                    h.update(repr(list(v.columns.names)).encode())
                h.update(rows.to_numpy().tobytes())
                # hash_pandas_object hashes Python objects by their text: 1 and "1", None and
                # nan would agree; object columns also count by their pickled values
                columns = ([v.iloc[:, i] for i in range(v.shape[1])]
                           if isinstance(v, pd.DataFrame) else [v])
                for part in columns + ([] if isinstance(v, pd.Index) else [v.index]):
                    if part.dtype == object:
                        self._feed_pickled(h, part.to_numpy())
                    elif part.dtype.kind == "f":  # -0.0 and 0.0 agree there: raw bytes too
                        h.update(np_bytes(part))
                attrs = getattr(v, "attrs", None)
                if attrs:  # metadata user code reads (units, sources)
                    h.update(b"attrs:")
                    self.feed(h, dict(attrs))
                return
        self._feed_pickled(h, v)

    def _feed_pickled(self, h: Any, v: Any) -> None:
        """A library object by its pickled state (code inside it by its reach); one that does
        not pickle, by its attributes; one without either, by its type, with a warning."""
        try:
            buf = io.BytesIO()
            _ContentPickler(buf, self).dump(v)
            data = buf.getvalue()
        except Exception:  # noqa: BLE001 - any object may refuse to pickle
            if isinstance(v, _PLUMBING):
                h.update(f"<{type(v).__name__}>".encode())
                return
            if (isinstance(getattr(v, "__dict__", None), dict)
                    or getattr(type(v), "__slots__", None)) and not isinstance(v, type):
                self._feed_state(h, v, type(v))  # e.g. a library callable holding your code
                return
            try:
                import cloudpickle

                data = cloudpickle.dumps(v, protocol=5)
            except Exception:  # noqa: BLE001
                self._unhashable(h, v)
                return
        h.update(b"p%d:" % len(data))
        h.update(data)

    unhashable = False  # set once a value was tracked by its type only
    warns = True  # say so in a PipeliteWarning (the first time per type)

    def _unhashable(self, h: Any, v: Any) -> None:
        tname = f"{type(v).__module__}.{type(v).__qualname__}"
        self.unhashable = True
        if self.warns and tname not in _warned_types:
            _warned_types.add(tname)
            warn_user(
                f"{self.label} of type {tname} cannot be hashed by content: PipeLite tracks "
                f"only its type, so changing it will not make stages stale. Pass it as a "
                f"parameter or an artifact to track it."
            )
        h.update(f"<unhashable {tname}>".encode())


class _ContentPickler(pickle.Pickler):
    """Pickles an object's state for hashing: functions and classes inside it count by their
    reach, sets in a stable order, whatever the hash seed."""

    def __init__(self, file: Any, encoder: Encoder):
        super().__init__(file, protocol=5)
        self.encoder = encoder

    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, (set, frozenset)):
            return "set:" + ",".join(sorted(self.encoder.digest(x, "set item") for x in obj))
        if self.encoder.code_token is not None and isinstance(
                obj, (types.FunctionType, type, types.ModuleType)):
            return self.encoder.code_token(obj)
        return None
