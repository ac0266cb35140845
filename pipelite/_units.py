"""Durations and sizes as people write them (``"1d"``, ``"36 h"``, ``"20 GiB"``), and ages as
people read them (``"26 h"``): one parser for every policy that takes them (``expires_after=``,
``gc(max_age=, max_size=)``, ``--expires``, ``--max-size``)."""
from __future__ import annotations

import datetime as _dt
import math
import re
from typing import Any

from .errors import InvalidArgumentError

__all__ = ["parse_duration", "parse_size", "age_text"]

_DURATION_UNITS = {
    "s": 1, "sec": 1, "secs": 1, "second": 1, "seconds": 1,
    "m": 60, "min": 60, "mins": 60, "minute": 60, "minutes": 60,
    "h": 3600, "hr": 3600, "hrs": 3600, "hour": 3600, "hours": 3600,
    "d": 86400, "day": 86400, "days": 86400,
    "w": 604800, "week": 604800, "weeks": 604800,
}
_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 2**10, "kb": 10**3, "kib": 2**10,
    "m": 2**20, "mb": 10**6, "mib": 2**20,
    "g": 2**30, "gb": 10**9, "gib": 2**30,
    "t": 2**40, "tb": 10**12, "tib": 2**40,
}
_AMOUNT = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)\s*\Z")


def parse_duration(value: Any, what: str) -> float:
    """Seconds in ``value``: a number of seconds, a ``timedelta``, or text such as ``"1d"``,
    ``"36h"``, ``"90 min"``, ``"2w"``. ``what`` names the argument in the error
    (``InvalidArgumentError``) a bad value gives."""
    seconds: float | None = None
    if isinstance(value, _dt.timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        m = _AMOUNT.match(value)
        if m is not None:
            unit = m.group(2).lower() or "s"
            if unit in _DURATION_UNITS:
                seconds = float(m.group(1)) * _DURATION_UNITS[unit]
    if seconds is None or not math.isfinite(seconds) or seconds <= 0:
        raise InvalidArgumentError(
            f"{what}={value!r} is not a duration: give a positive number of seconds, a "
            f"timedelta, or text such as '30s', '15min', '12h', '1d' or '2w'")
    return seconds


def parse_size(value: Any, what: str) -> int:
    """Bytes in ``value``: an int, or text such as ``"20 GiB"``, ``"500MB"``, ``"2G"`` (a
    bare K/M/G/T is binary, as ``du -h`` shows it; KB/MB/GB are decimal)."""
    size: float | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    elif isinstance(value, str):
        m = _AMOUNT.match(value)
        if m is not None and m.group(2).lower() in _SIZE_UNITS:
            size = float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]
    if size is None or size < 0:
        raise InvalidArgumentError(
            f"{what}={value!r} is not a size: give a number of bytes, or text such as "
            f"'500 MiB', '20 GiB' or '1TB'")
    return int(size)


def age_text(seconds: float) -> str:
    """An age as people say it: ``45 s``, ``12 min``, ``26 h``, ``3 d``."""
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 120 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 72 * 3600:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} d"
