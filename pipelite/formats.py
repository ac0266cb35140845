"""How artifact values are written to files and read back, chosen by type.

Built in: numpy arrays as ``.npy`` (read back memory-mapped and read-only), pandas and polars
frames as Arrow IPC (uncompressed, read memory-mapped; pandas frames need pyarrow; a frame
Arrow would not give back exactly is pickled; Parquet files of older stores still load),
JSON-exact values as JSON, anything else with
cloudpickle. ``register_format`` adds a format for your own type; it takes precedence.
"""
from __future__ import annotations

import functools
import importlib.util
import io
import json
import math
import os
import pickle
import re
import sys
from dataclasses import dataclass
from typing import Any, Callable

import xxhash

__all__ = ["Format", "register_format", "format_for", "format_named", "hash_file"]

CHUNK = 8 << 20
VOLATILE = "volatile"  # the format named by outputs of cache=False stages: never stored


@dataclass(frozen=True)
class Format:
    """A way to store values: ``save(value, path)`` writes a file, ``load(path)`` reads it.

    The store fsyncs the file and renames it into place; ``save`` only writes it.

    ``save`` may return the xxh3-128 hex digest of the bytes it wrote (saves re-reading them).
    """

    name: str
    ext: str
    matches: Callable[[Any], bool]
    save: Callable[[Any, str], "str | None"]
    load: Callable[[str], Any]
    # the exceptions with which a built-in format refuses a value it cannot hold (then the
    # value is pickled instead); empty for pickle and for user formats: their errors surface
    refusals: "tuple[type[BaseException], ...] | Callable[[], tuple[type[BaseException], ...]]" = ()
    # ``load`` gives back a value equal to the saved one, of the same types: after a miss,
    # ``run()`` returns the value it computed instead of reading the file it just wrote.
    # False for numpy (a read-only memory map is what arrays come back as) and user formats
    returns_computed: bool = False
    # ``loads(data)``: the value from the file's bytes, for a small file the store has read
    # (and hashed) already; None: the store passes the path to ``load``
    loads: "Callable[[bytes], Any] | None" = None

    def falls_back_to_pickle(self, exc: BaseException, tmp: str) -> bool:
        """Whether a failed ``save`` to ``tmp`` is this built-in format refusing the value
        (a frame Parquet cannot hold, say) before writing anything, so pickle may store it.
        Any other failure (a user's format, a full disk, a half-written file) is raised."""
        refusals = self.refusals() if callable(self.refusals) else self.refusals
        if not refusals or not isinstance(exc, refusals):
            return False
        try:
            return os.path.getsize(tmp) == 0
        except OSError:
            return True  # nothing was written


def hash_file(path: str) -> str:
    """xxh3-128 hex digest of a file's bytes."""
    h = xxhash.xxh3_128()
    with open(path, "rb", buffering=0) as f:
        # a buffer no bigger than the file: allocating 8 MiB dominated small loads
        buf = bytearray(max(1, min(CHUNK, os.fstat(f.fileno()).st_size)))
        view = memoryview(buf)
        while True:
            n = f.readinto(buf)
            if not n:
                break
            h.update(view[:n])
    return h.hexdigest()


# -- numpy ------------------------------------------------------------------------------------
def _is_plain_ndarray(v: Any) -> bool:
    np = sys.modules.get("numpy")
    return np is not None and isinstance(v, np.ndarray) and not v.dtype.hasobject


def _save_npy(arr: Any, path: str) -> str:
    """Write ``arr`` as .npy (byte-identical to ``np.save``) hashing it from memory, no copy."""
    import numpy as np
    from numpy.lib import format as npformat

    if isinstance(arr, np.memmap) or type(arr) is not np.ndarray:
        arr = np.asarray(arr).view(np.ndarray)
    if not arr.flags.c_contiguous:
        arr = np.ascontiguousarray(arr)
    header = io.BytesIO()
    meta = npformat.header_data_from_array_1_0(arr)
    try:
        npformat.write_array_header_1_0(header, meta)
    except ValueError:  # header too large for format 1.0
        header = io.BytesIO()
        npformat.write_array_header_2_0(header, meta)
    data = arr.reshape(-1).view(np.uint8)
    h = xxhash.xxh3_128()
    h.update(header.getvalue())
    h.update(data)
    with open(path, "wb") as f:
        f.write(header.getvalue())
        f.write(data)
    return h.hexdigest()


_npy_headers: dict[str, tuple] = {}  # path -> header; objects are content-addressed, immutable


def _read_npy_header(f: Any) -> tuple:
    from numpy.lib import format as npformat

    version = npformat.read_magic(f)
    read = (npformat.read_array_header_1_0 if version == (1, 0)
            else npformat.read_array_header_2_0)
    shape, fortran, dtype = read(f)
    return shape, fortran, dtype, f.tell()


def _load_npy(path: str) -> Any:
    """Map the file read-only: O(1) in its size, no copy (a plain ndarray over the map)."""
    import mmap

    import numpy as np

    with open(path, "rb") as f:
        header = _npy_headers.get(path)
        if header is None:
            header = _npy_headers[path] = _read_npy_header(f)
        shape, fortran, dtype, offset = header
        count = math.prod(shape)
        if count == 0 or dtype.itemsize == 0:  # an empty file region cannot be mapped
            arr = np.empty(shape, dtype=dtype, order="F" if fortran else "C")
            arr.setflags(write=False)
            return arr
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    arr = np.frombuffer(buf, dtype=dtype, count=count, offset=offset)
    return arr.reshape(shape, order="F" if fortran else "C")


# -- JSON -------------------------------------------------------------------------------------
def _is_json_exact(v: Any, depth: int = 0) -> bool:
    """True if JSON gives back exactly this value (types included)."""
    if depth > 100:
        return False
    t = type(v)
    if v is None or t in (bool, int, str):
        return True
    if t is float:
        return math.isfinite(v)
    if t is list:
        return all(_is_json_exact(x, depth + 1) for x in v)
    if t is dict:
        return all(type(k) is str and _is_json_exact(x, depth + 1) for k, x in v.items())
    return False


def _save_json(v: Any, path: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(v, f, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def _load_json(path: str) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _loads_json(data: bytes) -> Any:
    return json.loads(data.decode("utf-8"))


# -- frames -----------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _have_pyarrow() -> bool:
    return importlib.util.find_spec("pyarrow") is not None


def _is_pandas_frame(v: Any) -> bool:
    pd = sys.modules.get("pandas")
    return pd is not None and isinstance(v, pd.DataFrame) and _have_pyarrow()


class _HashingFile:
    """A writable file that hashes what goes through it (pyarrow's sink for Arrow IPC)."""

    closed = False

    def __init__(self, f: Any):
        self._f, self.hash = f, xxhash.xxh3_128()

    def write(self, data: Any) -> int:
        self.hash.update(data)
        return self._f.write(data)

    def flush(self) -> None:
        self._f.flush()

    def tell(self) -> int:
        return self._f.tell()

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def seekable(self) -> bool:
        return False

    def close(self) -> None:
        pass  # the caller closes the real file


def _write_ipc(table: Any, path: str) -> str:
    """Write ``table`` as an uncompressed Arrow IPC (Feather v2) file; its xxh3-128 digest."""
    import pyarrow as pa
    import pyarrow.ipc as ipc

    with open(path, "wb") as f:
        sink = _HashingFile(f)
        with ipc.new_file(pa.PythonFile(sink, mode="w"), table.schema) as writer:
            writer.write_table(table)
    return sink.hash.hexdigest()


def _pandas_table(df: Any) -> Any:
    """``pa.Table.from_pandas(df)``, but numpy float columns go over as they are, zero-copy:
    from_pandas scans each for NaN to make a null mask (0.05 s per 10M rows), and NaN read
    back is NaN either way. The pandas metadata (index, dtypes, names) is from_pandas'."""
    import json

    import numpy as np
    import pyarrow as pa

    dtypes = list(df.dtypes)
    floats = {i for i, dt in enumerate(dtypes) if isinstance(dt, np.dtype) and dt.kind == "f"}
    if not floats or not df.columns.is_unique:  # (duplicate names: from_pandas refuses them)
        return pa.Table.from_pandas(df, preserve_index=None)
    others = [c for i, c in enumerate(df.columns) if i not in floats]
    rest = pa.Table.from_pandas(df, preserve_index=None, columns=others)
    empty = pa.Table.from_pandas(df.iloc[:0], preserve_index=None)  # every column's metadata
    meta_rest = json.loads(rest.schema.metadata[b"pandas"])
    meta_all = json.loads(empty.schema.metadata[b"pandas"])
    ncols = len(dtypes)
    fields, arrays, entries = [], [], []
    j = 0
    for i in range(ncols):
        if i in floats:
            field = empty.schema.field(i)
            arrays.append(pa.array(df.iloc[:, i].to_numpy(), type=field.type,
                                   from_pandas=False))
            fields.append(field)
            entries.append(meta_all["columns"][i])
        else:
            arrays.append(rest.column(j))
            fields.append(rest.schema.field(j))
            entries.append(meta_rest["columns"][j])
            j += 1
    # the index levels stored as columns: data from ``rest``, names from ``empty`` (where an
    # index level's name is also a column's name, ``rest``, without that column, would use it)
    for k in range(j, rest.num_columns):
        name = empty.schema.field(ncols + k - j).name
        arrays.append(rest.column(k))
        fields.append(pa.field(name, rest.schema.field(k).type))
        entry = meta_all["columns"][ncols + k - j]
        entries.append(dict(meta_rest["columns"][k], name=entry["name"],
                            field_name=entry["field_name"]))
    meta_rest["columns"] = entries
    meta_rest["column_indexes"] = meta_all["column_indexes"]
    meta_rest["index_columns"] = [
        mine if isinstance(mine, dict) else named  # a RangeIndex: its start, stop and step
        for mine, named in zip(meta_rest["index_columns"], meta_all["index_columns"],
                               strict=True)]
    metadata = dict(rest.schema.metadata)
    metadata[b"pandas"] = json.dumps(meta_rest).encode()
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields, metadata=metadata))


def _pandas_from_table(table: Any) -> Any:
    # split_blocks: a column per block, so numeric columns stay views of the file (no
    # consolidating copy); the frame equals the consolidated one
    return table.to_pandas(split_blocks=True)


_CHECK_ROWS = 16


def _check_pandas_round_trip(df: Any) -> None:
    """Raise ``TypeError`` (so the frame is pickled) if Arrow would not give this frame back
    exactly: judged on its first rows, converted the same way (dtypes and index types are
    the same for every row; an object column that Arrow would change shows in them)."""
    import pandas as pd

    head = df.iloc[:_CHECK_ROWS]
    try:
        back = _pandas_from_table(_pandas_table(head))
        pd.testing.assert_frame_equal(back, head, check_exact=True, check_freq=True,
                                      check_flags=True)
    except AssertionError as exc:
        raise TypeError(f"Arrow would not give this frame back exactly: {exc}") from None
    if back.attrs != head.attrs:
        raise TypeError("Arrow would not give this frame's attrs back exactly")


def _save_arrow_pandas(df: Any, path: str) -> str:
    _check_pandas_round_trip(df)
    return _write_ipc(_pandas_table(df), path)


def _read_ipc(path: str) -> Any:
    """The table in an Arrow IPC file, its buffers mapped from the file (no copy)."""
    import pyarrow as pa
    import pyarrow.ipc as ipc

    with pa.memory_map(path, "r") as source:
        return ipc.open_file(source).read_all()


def _load_arrow_pandas(path: str) -> Any:
    return _pandas_from_table(_read_ipc(path))


def _save_pandas(df: Any, path: str) -> None:  # Parquet, as PipeLite wrote frames before
    df.to_parquet(path, engine="pyarrow")


def _load_pandas(path: str) -> Any:  # Parquet: what stores written before Arrow IPC hold
    import pandas as pd

    return pd.read_parquet(path, engine="pyarrow")


def _is_polars_frame(v: Any) -> bool:
    pl = sys.modules.get("polars")
    return pl is not None and isinstance(v, pl.DataFrame)


def _save_arrow_polars(df: Any, path: str) -> None:
    import polars as pl

    if any(dt == pl.Object for dt in df.dtypes):  # refused before writing: then it is pickled
        raise TypeError("Arrow IPC cannot hold polars Object columns")
    df.write_ipc(path, compression="uncompressed")


def _load_arrow_polars(path: str) -> Any:
    import polars as pl

    return pl.read_ipc(path)  # memory-mapped by polars


def _save_polars(df: Any, path: str) -> None:  # Parquet, as PipeLite wrote frames before
    df.write_parquet(path)


def _load_polars(path: str) -> Any:  # Parquet, as stores written before Arrow IPC hold
    import polars as pl

    return pl.read_parquet(path)


def _never(v: Any) -> bool:
    return False


# -- anything else ----------------------------------------------------------------------------
def _save_pickle(v: Any, path: str) -> None:
    import cloudpickle

    with open(path, "wb") as f:
        cloudpickle.dump(v, f, protocol=5)


def _load_pickle(path: str) -> Any:
    with open(path, "rb") as f:
        return pickle.load(f)


def _is_file(v: Any) -> bool:
    from ._files import File

    return isinstance(v, File)


def _save_file(v: Any, path: str) -> str:
    from ._files import store_file

    return store_file(v.path, path)


def _load_file(path: str) -> Any:
    raise AssertionError("a file output is restored by Store.load_value")  # pragma: no cover


def _polars_refusals() -> tuple:
    pl = sys.modules.get("polars")
    extra = getattr(getattr(pl, "exceptions", None), "PolarsError", None)
    return _REFUSALS + ((extra,) if isinstance(extra, type) else ())


_REFUSALS = (TypeError, ValueError, NotImplementedError)  # pyarrow's Arrow*Error among them
PICKLE = Format("pickle", ".pkl", lambda v: True, _save_pickle, _load_pickle,
                returns_computed=True, loads=pickle.loads)
_BUILTIN = [
    Format("npy", ".npy", _is_plain_ndarray, _save_npy, _load_npy, _REFUSALS),
    # frames: Arrow IPC (Feather v2), uncompressed, read memory-mapped (see the README for
    # the measurements); a frame Arrow would not give back exactly is pickled
    Format("arrow-pandas", ".arrow", _is_pandas_frame, _save_arrow_pandas, _load_arrow_pandas,
           _REFUSALS, returns_computed=True),
    Format("arrow-polars", ".arrow", _is_polars_frame, _save_arrow_polars, _load_arrow_polars,
           _polars_refusals, returns_computed=True),
    # Parquet: read only (frames stored before); never chosen for a new value
    Format("parquet-pandas", ".parquet", _never, _save_pandas, _load_pandas),
    Format("parquet-polars", ".parquet", _never, _save_polars, _load_polars),
    # only values JSON gives back exactly (no tuples, no int keys, no nan) are JSON
    Format("json", ".json", _is_json_exact, _save_json, _load_json, _REFUSALS,
           returns_computed=True, loads=_loads_json),
    # files a stage returned (``pipelite.File``): their bytes, copied as they are hashed; on
    # load the store puts them back in place (``Store.load_value``), never through ``load``
    Format("file", ".file", _is_file, _save_file, _load_file, returns_computed=True),
]
_USER: list[Format] = []
_EXT = re.compile(r"\.[A-Za-z0-9][A-Za-z0-9_+.-]{0,14}\Z")


def _check_format_args(type_: Any, save: Any, load: Any, ext: Any, name: Any) -> str:
    """The checked extension (with its leading dot), or a ``FormatError`` saying what to fix."""
    from .errors import FormatError

    if not isinstance(type_, type):
        raise FormatError(f"register_format: the first argument is the type whose values the "
                          f"format stores (a class), not {type(type_).__name__} {type_!r}")
    for what, fn in (("save", save), ("load", load)):
        if not callable(fn):
            raise FormatError(f"register_format({type_.__qualname__}, ...): {what} must be a "
                              f"function, not {type(fn).__name__} {fn!r}")
    if not isinstance(ext, str):
        raise FormatError(f"register_format({type_.__qualname__}, ...): ext must be a file "
                          f"extension string such as '.mdl', not {type(ext).__name__}")
    dotted = ext if ext.startswith(".") else "." + ext  # "mdl" means ".mdl"
    if not _EXT.match(dotted) or ".." in dotted or dotted.endswith("."):
        raise FormatError(
            f"register_format({type_.__qualname__}, ...): ext={ext!r} cannot be part of a "
            f"file name: use a dot then 1 to 15 letters, digits, '_', '-', '+' or single "
            f"'.' (e.g. '.mdl' or '.tar.gz'); no '/', '\\', '..' or control characters")
    if name is not None:
        if not isinstance(name, str) or not name.strip():
            raise FormatError(f"register_format({type_.__qualname__}, ...): name must be a "
                              f"non-empty string, not {name!r}")
        if name in {f.name for f in (*_BUILTIN, PICKLE)}:
            raise FormatError(
                f"register_format({type_.__qualname__}, ...): name={name!r} is a built-in "
                f"format's name (stored values of that format would be read with yours): "
                f"leave name out, or pick another")
    return dotted


def _guard_save(fmt_name: str, save: Callable[[Any, str], Any]) -> Callable[[Any, str], Any]:
    from .errors import FormatSaveError

    def guarded(value: Any, path: str) -> Any:
        __tracebackhide__ = True
        try:
            return save(value, path)
        except Exception as exc:  # noqa: BLE001 - the user's format failing is their bug
            raise FormatSaveError(
                f"the registered format '{fmt_name}' failed to save a "
                f"{type(value).__qualname__}: {type(exc).__name__}: {exc}. Nothing was "
                f"stored (the value is not pickled instead): fix that format's save function"
            ) from exc

    return guarded


def _guard_load(fmt_name: str, load: Callable[[str], Any]) -> Callable[[str], Any]:
    from .errors import FormatLoadError

    def guarded(path: str) -> Any:
        __tracebackhide__ = True
        try:
            return load(path)
        except Exception as exc:  # noqa: BLE001 - not a corrupt file: the user's own loader
            raise FormatLoadError(
                f"the registered format '{fmt_name}' failed to load {path}: "
                f"{type(exc).__name__}: {exc}. Fix that format's load function (the file "
                f"was stored by its save function; pipeline.load(..., verify=True) checks "
                f"that its bytes are intact)"
            ) from exc

    return guarded


def register_format(type_: type, save: Callable[[Any, str], None], load: Callable[[str], Any],
                    ext: str, name: str | None = None) -> Format:
    """Store values of ``type_`` (and subclasses) with ``save(value, path)`` / ``load(path)``.

    >>> register_format(MyModel, lambda m, p: m.save(p), MyModel.from_file, ext=".mdl")

    Register the same format in every process that loads such artifacts. Later registrations
    for the same type replace earlier ones.

    ``ext`` becomes part of stored file names: a dot then up to 15 letters, digits, '_', '-',
    '+' or '.' (``"mdl"`` without the dot means ``".mdl"``); anything else is a
    ``FormatError``. If ``save`` or ``load`` raises, that is a ``FormatSaveError`` /
    ``FormatLoadError`` naming the format, with the original error as ``__cause__``: the
    value is not pickled instead, and the file is not taken for a corrupt one.
    """
    ext = _check_format_args(type_, save, load, ext, name)
    fmt_name = name or f"{type_.__module__}.{type_.__qualname__}"
    fmt = Format(fmt_name, ext, lambda v: isinstance(v, type_), _guard_save(fmt_name, save),
                 _guard_load(fmt_name, load))
    _USER[:] = [f for f in _USER if f.name != fmt_name]
    _USER.insert(0, fmt)
    return fmt


def format_for(value: Any) -> Format:
    """The format a value is stored in: user formats first, then the built-ins, else pickle."""
    for fmt in (*_USER, *_BUILTIN):
        if fmt.matches(value):
            return fmt
    return PICKLE


def format_named(name: str) -> Format:
    """The format called ``name``; an ``UnknownFormatError`` if it is not registered here."""
    for fmt in (*_USER, *_BUILTIN, PICKLE):
        if fmt.name == name:
            return fmt
    from .errors import UnknownFormatError

    raise UnknownFormatError(
        f"artifact was stored in format '{name}', which is not registered in this process: "
        f"call pipelite.register_format(...) for it before loading"
    )
