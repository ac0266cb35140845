"""Stage events: every pipeline in the process announces what it runs, for panels and logs."""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Callable

__all__ = ["StageEvent", "subscribe"]


@dataclass(frozen=True)
class StageEvent:
    """Something happened to a stage.

    ``kind`` is one of ``run_started``, ``started``, ``finished``, ``skipped``, ``failed``,
    ``invalidated``, ``accepted``, ``run_finished``. ``index``/``total`` count the stages a
    run executes.
    A ``started`` event says why the stage runs (``reason``: "global 'EPOCHS' changed").
    """

    kind: str
    stage: str | None
    store: str
    index: int = 0
    total: int = 0
    duration: float | None = None
    error: str | None = None
    time: float = field(default_factory=time.time)
    reason: str | None = None


_listeners: list[Callable[[StageEvent], None]] = []


def subscribe(listener: Callable[[StageEvent], None]) -> Callable[[], None]:
    """Call ``listener(event)`` for every stage event; returns a function that unsubscribes."""
    if not callable(listener):
        from .errors import InvalidArgumentError

        raise InvalidArgumentError(
            f"subscribe() takes a function called with each StageEvent, not "
            f"{type(listener).__name__} {listener!r}: e.g. subscribe(lambda event: print(event))")
    _listeners.append(listener)

    def unsubscribe() -> None:
        if listener in _listeners:
            _listeners.remove(listener)

    return unsubscribe


def emit(kind: str, stage: str | None, store: str, index: int = 0, total: int = 0,
         duration: float | None = None, error: str | None = None,
         reason: str | None = None) -> None:
    """Tell every listener; the event is built only when someone listens (a cached hit is
    a few microseconds, and most runs have no listener)."""
    if not _listeners:
        return
    event = StageEvent(kind, stage, store, index, total, duration, error, reason=reason)
    for listener in list(_listeners):
        try:
            listener(event)
        except Exception as exc:  # noqa: BLE001 - a broken listener must not break a run
            name = getattr(listener, "__qualname__", type(listener).__qualname__)
            warnings.warn(f"pipelite event listener {name} failed: {exc!r}", stacklevel=2)
