"""How PipeLite shows things to people: state names and colours, sizes and durations, the
status table, the explain text, and which frames of a traceback are the user's.

The command line, the magics, the panel and the graph all draw from here, so they agree.

>>> from pipelite.present import status_table
>>> print(status_table(Pipeline().status()))      # what ``pipelite status`` prints
"""
from __future__ import annotations

__all__ = ["STATES", "STATE_COLOURS", "human_bytes", "human_duration"]

# What StageStatus.state can be, in the order counts are shown.
STATES = ("fresh", "stale", "missing", "failed", "running")

# fill, stroke per state: the graph, the panel and the status table's HTML
STATE_COLOURS = {
    "fresh": ("#d1f2d9", "#2e7d32"),
    "stale": ("#fff1c2", "#b26a00"),
    "missing": ("#e8e8e8", "#616161"),
    "failed": ("#ffd6d6", "#c62828"),
    "running": ("#d6e6ff", "#1565c0"),
}


# -- sizes and durations in words people read ---------------------------------------------
def human_bytes(n: float) -> str:
    """``208 B``, ``7.9 KiB``, ``1.0 GiB``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover - unreachable


def human_duration(seconds: float) -> str:
    """``338 µs``, ``12 ms``, ``3.4 s``, ``2 min 5 s``."""
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    return f"{int(seconds // 60)} min {seconds % 60:.0f} s"
