"""Sizes and durations in words people read: ``7.9 KiB``, ``338 µs``, ``3.4 s``."""
from __future__ import annotations

__all__ = ["human_bytes", "human_duration"]


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
