"""Pausing Python's cyclic garbage collector while a large check builds its objects.

A status of thousands of stages allocates hundreds of thousands of small objects (records,
verdicts, statuses) that form no reference cycle, so reference counting frees every one of
them. The collector, though, is triggered by allocations alone: it walks every young object
again and again and, as they pile up, the whole heap, which took half of a 10,000-stage
status. Pausing it there loses nothing: nothing cyclic is made, and whatever user code made
meanwhile (another thread) is collected once the pause ends. Pauses nest and may overlap
across threads: the collector is switched back on when the last one ends, and only if it was
on when the first began.
"""
from __future__ import annotations

import contextlib
import gc
import threading
from typing import Iterator

__all__ = ["collector_paused"]

_lock = threading.Lock()
_depth = 0
_was_enabled = False


@contextlib.contextmanager
def collector_paused(when: bool = True) -> Iterator[None]:
    """Run the block with the cyclic collector off (if ``when``)."""
    global _depth, _was_enabled
    if not when:
        yield
        return
    with _lock:
        if _depth == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _was_enabled:
                gc.enable()
