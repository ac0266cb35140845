"""A stored artifact in a few lines: its type, shape and dtype, and its first rows (a table)
or the start of its repr. Shown when an output's name is clicked in the panel."""
from __future__ import annotations

import html
import reprlib
import sys
from typing import Any

__all__ = ["preview_html"]

ROWS = 5  # first rows of a table or an array
CHARS = 1500  # of any repr


def _describe(value: Any) -> str:
    kind = f"{type(value).__module__.split('.')[0]}.{type(value).__name__}"
    kind = kind.removeprefix("builtins.")
    parts = [kind]
    shape = getattr(value, "shape", None)
    if isinstance(shape, tuple):
        parts.append(f"shape {shape}")
    dtype = getattr(value, "dtype", None)
    if dtype is not None and not callable(dtype):
        parts.append(f"dtype {dtype}")
    elif hasattr(value, "dtypes") and hasattr(value, "columns"):
        columns = list(value.columns)
        parts.append(f"{len(columns)} column{'s' if len(columns) != 1 else ''}")
    elif isinstance(value, (list, tuple, dict, set, frozenset, str, bytes)):
        parts.append(f"length {len(value)}")
    return ", ".join(parts)


def _cut(text: str) -> str:
    return text if len(text) <= CHARS else text[:CHARS - 1] + "…"


def _table_html(value: Any) -> str | None:
    """A pandas or polars frame's first rows, as the library renders them (escaped)."""
    pandas = sys.modules.get("pandas")
    if pandas is not None and isinstance(value, (pandas.DataFrame, pandas.Series)):
        head = value.head(ROWS)
        frame = head.to_frame() if isinstance(head, pandas.Series) else head
        return str(frame.to_html(max_cols=12, escape=True, border=0))
    polars = sys.modules.get("polars")
    if polars is not None and isinstance(value, polars.DataFrame):
        return f"<pre>{html.escape(_cut(str(value.head(ROWS))), quote=False)}</pre>"
    return None


def _text(value: Any) -> str:
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(value, numpy.ndarray):
        return numpy.array2string(value[:ROWS] if value.ndim else value, threshold=60,
                                  edgeitems=3, max_line_width=100) + (
            f"\n… ({len(value) - ROWS} more rows)" if value.ndim and len(value) > ROWS else "")
    short = reprlib.Repr()
    short.maxstring, short.maxother, short.maxlist, short.maxdict = 400, 400, 20, 20
    short.maxlevel = 3
    try:
        return short.repr(value)
    except Exception as exc:  # noqa: BLE001 - a repr that fails: say so, do not break
        return f"<repr failed: {type(exc).__name__}: {exc}>"


def preview_html(name: str, value: Any) -> str:
    """``name``'s value in brief, as HTML: a line saying what it is, then its first rows."""
    head = (f'<div class="pipelite-preview-head"><code>{html.escape(name)}</code>: '
            f"{html.escape(_describe(value))}</div>")
    table = _table_html(value)
    if table is not None:
        return head + f'<div class="pipelite-preview-table">{table}</div>'
    return head + f"<pre>{html.escape(_cut(_text(value)), quote=False)}</pre>"
