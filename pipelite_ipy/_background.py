"""Runs started from the panel: in a thread, so the kernel stays free to hear Cancel.

A button's click is handled on the kernel's main thread; a run done right there would hold it,
and the Cancel click would wait behind the run it should stop. So a panel run happens in a
:class:`BackgroundRun` thread, and stops on request:

- between stages: the runner checks its ``cancel`` event before each stage;
- inside a stage: ``RunCancelled`` (a ``KeyboardInterrupt``) is raised in the run's thread, as
  Ctrl-C would be in the main thread. Like Ctrl-C, it lands when the stage next runs Python
  code: a stage inside one long C call (a big matrix product) stops when that call returns.

Kernel -> Interrupt (SIGINT) cancels a background run too: ipykernel ignores SIGINT while idle,
so while a run is active PipeLite's handler takes its place (see :func:`_install_sigint`).

A ``%%stage`` cell with a top-level ``await`` runs the same way, for another reason: IPython
awaits it in its event loop, which must stay free while the stage runs, since the cell's own
code is sent back to that loop to run there (:func:`await_on_loop`).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import ctypes
import signal
import threading
from typing import Any, Callable, Coroutine, Iterator

from pipelite.errors import RunCancelled

__all__ = ["BackgroundRun", "await_on_loop", "interrupt_cancels"]

# how often a thread waiting on the loop looks up: a cancel of its run, or a loop stopped by
# Ctrl-C, is noticed within this
_POLL_SECONDS = 0.1

_ACTIVE: list["BackgroundRun"] = []  # runs a SIGINT cancels
_ACTIVE_LOCK = threading.Lock()


class BackgroundRun:
    """``work(cancel_event)`` in a daemon thread; ``cancel()`` stops it, ``join()`` waits.

    ``stage`` is the stage running now (set by whoever watches the run's events), so a
    cancel interrupts a stage only while one runs. ``on_done(run)`` is called in the thread
    when the work ends, whatever the outcome (``result`` or ``error``).
    """

    def __init__(self, work: Callable[[threading.Event], Any],
                 on_done: Callable[["BackgroundRun"], None] | None = None,
                 shell: Any = None, name: str = "pipelite-panel-run"):
        self.cancel_event = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None
        self.stage: str | None = None
        self.waiting_on_loop = False  # in await_on_loop: a cancel is seen there, not raised
        self.cancelled = False
        self._work = work
        self._on_done = on_done
        self._shell = shell
        # the thread starts in a copy of this context: what the kernel sends from it (display
        # updates, widget changes) keeps the parent message it was started under
        context = contextvars.copy_context()
        self.thread = threading.Thread(target=context.run, args=(self._main,),
                                       name=name, daemon=True)

    def start(self) -> "BackgroundRun":
        with _ACTIVE_LOCK:
            _ACTIVE.append(self)
        _install_sigint(self._shell)
        self.thread.start()
        return self

    def _main(self) -> None:
        try:
            self.result = self._work(self.cancel_event)
        except BaseException as exc:  # noqa: BLE001 - handed to on_done, which reports it
            self.error = exc
        finally:
            with _ACTIVE_LOCK:
                if self in _ACTIVE:
                    _ACTIVE.remove(self)
            if self._on_done is not None:
                try:
                    self._on_done(self)
                except RunCancelled:  # a cancel that arrived as the run ended: it has ended
                    pass

    @property
    def running(self) -> bool:
        return self.thread.is_alive()

    def cancel(self) -> None:
        """Stop the run: before its next stage, and the stage running now (if any)."""
        if self.cancel_event.is_set() or not self.thread.is_alive():
            return
        self.cancelled = True
        self.cancel_event.set()
        if self.stage is not None and not self.waiting_on_loop:
            _raise_in(self.thread, RunCancelled)

    def join(self, timeout: float | None = None) -> None:
        """Wait for the run to end; a KeyboardInterrupt while waiting cancels it."""
        try:
            while self.thread.is_alive():
                self.thread.join(0.1 if timeout is None else timeout)
                if timeout is not None:
                    return
        except KeyboardInterrupt:
            self.cancel()
            self.thread.join()


def await_on_loop(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any],
                  run: BackgroundRun | None = None) -> Any:
    """Run ``coro`` on ``loop``, which runs in another thread (the kernel's), and wait here
    for its result, or its exception (raised as itself).

    The wait looks up every ``_POLL_SECONDS``: a cancel of ``run`` (the run this thread is),
    seen there rather than raised into it, cancels the coroutine's task, which stops at its
    ``await`` (its ``finally`` blocks run on the loop); then ``RunCancelled`` is raised with
    the traceback of where it stopped, the cell's own line. A task cancelled by anyone else
    ends the wait the same way; a loop that stopped under it (Ctrl-C in a terminal IPython
    ends its ``run_until_complete``) ends it with ``RunCancelled`` at once, the task being
    cancelled when the loop runs again.
    """
    tasks: list[asyncio.Task] = []

    async def tracked() -> Any:
        tasks.append(asyncio.current_task())  # type: ignore[arg-type]
        try:
            return await coro
        except asyncio.CancelledError as exc:  # returned: raised, it would cancel the task
            return _Cancelled(exc)             # and lose where the cell stopped

    future = asyncio.run_coroutine_threadsafe(tracked(), loop)
    if run is not None:
        run.waiting_on_loop = True
    try:
        _wait(future, loop, run)
    except BaseException:  # cancelled; or the loop stopped
        if tasks:
            loop.call_soon_threadsafe(tasks[0].cancel)
        else:
            future.cancel()  # not started: it never will
        if loop.is_running():
            _wait(future, loop)  # for the task to stop where it is
        if not (future.done() and not future.cancelled()
                and isinstance(future.result(), _Cancelled)):
            raise
    finally:
        if run is not None:
            run.waiting_on_loop = False
    try:
        result = future.result()
    except concurrent.futures.CancelledError:  # cancelled before it started
        coro.close()
        raise RunCancelled("the cell was cancelled") from None
    if isinstance(result, _Cancelled):
        raise RunCancelled("the cell was cancelled").with_traceback(
            result.error.__traceback__) from None
    return result


class _Cancelled:
    """A cell's task that was cancelled, with the ``CancelledError`` raised in the cell."""

    def __init__(self, error: BaseException):
        self.error = error


def _wait(future: concurrent.futures.Future, loop: asyncio.AbstractEventLoop,
          run: BackgroundRun | None = None) -> None:
    # (not result(timeout=...): the cell's own TimeoutError would read as "not yet")
    while not future.done():
        concurrent.futures.wait([future], timeout=_POLL_SECONDS)
        if future.done():
            return
        if run is not None and run.cancel_event.is_set():
            raise RunCancelled("the cell was cancelled")
        if not loop.is_running():
            raise RunCancelled("the event loop running the cell has stopped")


@contextlib.contextmanager
def interrupt_cancels(run: BackgroundRun) -> Iterator[None]:
    """While a cell awaits ``run`` (``PipeliteSession.run_cell_stage_async``): SIGINT (Kernel
    -> Interrupt, Ctrl-C) cancels the run, as the panel's Cancel does. ipykernel's own handler
    for an awaiting cell would cancel the cell's task instead (which the session handles
    too), but in ipykernel 7 it does not reach the loop: an awaiting cell did not stop."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers are the main thread's to set
        return

    def cancel(signum: int, frame: Any) -> None:
        run.cancel()

    previous = signal.signal(signal.SIGINT, cancel)
    try:
        yield
    finally:
        if signal.getsignal(signal.SIGINT) is cancel:
            signal.signal(signal.SIGINT, previous)


def _raise_in(thread: threading.Thread, exc_type: type[BaseException]) -> None:
    """Raise ``exc_type`` in ``thread`` at its next Python instruction."""
    ident = thread.ident
    if ident is None:
        return
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), ctypes.py_object(exc_type))


# -- Kernel -> Interrupt ---------------------------------------------------------------------
def _on_sigint(signum: int, frame: Any) -> None:
    with _ACTIVE_LOCK:
        runs = list(_ACTIVE)
    if runs:
        for run in runs:
            run.cancel()
        return
    previous = _on_sigint.previous  # type: ignore[attr-defined]
    if callable(previous):
        previous(signum, frame)
    elif previous == signal.SIG_DFL:
        raise KeyboardInterrupt


_on_sigint.previous = signal.SIG_IGN  # type: ignore[attr-defined]


def _install_sigint(shell: Any) -> None:
    """Make SIGINT cancel the active background runs (and do what it did before otherwise).

    ipykernel installs Python's default handler while it handles a message (a cell, a click),
    then puts back the one it saved before (``saved_sigint_handler``): in that window the
    saved one is replaced, so that the kernel itself installs ours when the message is done.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    kernel = getattr(shell, "kernel", None)
    if kernel is not None and hasattr(kernel, "saved_sigint_handler"):
        saved = kernel.saved_sigint_handler
        if saved is not _on_sigint:
            _on_sigint.previous = saved  # type: ignore[attr-defined]
            kernel.saved_sigint_handler = _on_sigint
        return
    current = signal.getsignal(signal.SIGINT)
    if current is not _on_sigint:
        _on_sigint.previous = current  # type: ignore[attr-defined]
        signal.signal(signal.SIGINT, _on_sigint)
