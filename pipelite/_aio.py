"""Running a stage's coroutine to completion from PipeLite's synchronous runner.

An ``async def`` stage (a function, or a class whose ``run`` is ``async def``) returns a
coroutine when called; so does a cell stage whose code has a top-level ``await``. The runner
is synchronous (it is called as ``pipeline.run()``), so the coroutine is run here, where the
stage is called: in the caller's thread or an executor's worker thread.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import inspect
import threading
from typing import Any, Callable, Coroutine

__all__ = ["run_to_completion", "is_async_callable"]

# how often a thread waiting for a coroutine in another thread looks up, so that an
# exception raised in it asynchronously (a panel's Cancel, RunCancelled) lands within this
_POLL_SECONDS = 0.1


def is_async_callable(fn: Callable[..., Any]) -> bool:
    """Whether calling ``fn`` gives a coroutine by design: an ``async def``, or a function
    wrapping one (``functools.wraps`` keeps ``__wrapped__``)."""
    try:
        unwrapped = inspect.unwrap(fn)
    except ValueError:  # a __wrapped__ cycle
        unwrapped = fn
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(unwrapped)


def run_to_completion(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run ``coro`` to its end and return its result (or raise its exception, as itself).

    With no event loop running in this thread (a script, a terminal, an executor's worker
    thread): ``asyncio.run``, a new loop for this coroutine, closed after it.

    With one running in this thread (a Jupyter kernel runs every cell while its loop runs):
    that loop cannot run the coroutine, since this thread is inside one of its callbacks
    and would have to return first (``asyncio.run`` refuses: "cannot be called from a
    running event loop"). So the coroutine runs in a helper thread on a fresh loop of its
    own, while this thread waits, as jupyter_core's ``run_sync`` does (but with a thread
    and a loop per coroutine, both gone when it ends, instead of one kept for the process).
    The trade-off: the coroutine cannot use objects bound to the caller's loop (an
    ``aiohttp`` session, an ``asyncio.Queue`` that has waited, a future made by an earlier
    cell: "attached to a different loop"), and the caller's loop serves nothing else until
    the stage returns, as with any synchronous stage. ``%%stage`` cells with top-level
    ``await`` avoid both (the IPython extension runs them in the kernel's loop).

    Interrupting the wait (Ctrl-C, a panel's Cancel) cancels the coroutine, waits for its
    cleanup (its ``finally`` blocks) and its loop to close, and re-raises the interrupt: no
    loop or thread is left behind. The coroutine runs in a copy of the caller's context
    (``contextvars``), where a kernel keeps which cell its output belongs to.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:  # (run outside this block: the stage's error is not "during" it)
        running = False
    else:
        running = True
    return _InHelperThread(coro).run() if running else asyncio.run(coro)


class _InHelperThread:
    """One coroutine run on a fresh loop in a thread of its own (see ``run_to_completion``)."""

    def __init__(self, coro: Coroutine[Any, Any, Any]):
        self._coro = coro
        self._outcome: concurrent.futures.Future = concurrent.futures.Future()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task | None = None
        self._cancelled = False

    def run(self) -> Any:
        context = contextvars.copy_context()
        thread = threading.Thread(target=context.run, args=(self._thread,), daemon=True,
                                  name=f"pipelite-async-{threading.current_thread().name}")
        try:
            thread.start()
            # (not result(timeout=...): a stage's own TimeoutError would read as "not yet")
            while not self._outcome.done():
                concurrent.futures.wait([self._outcome], timeout=_POLL_SECONDS)
            return self._outcome.result()
        except BaseException:
            if thread.ident is not None and not self._outcome.done():
                # interrupted while waiting (not the stage's own error): cancel, and wait
                # for its cleanup and its loop to close (a second interrupt stops waiting;
                # the thread is a daemon)
                self._cancel()
                concurrent.futures.wait([self._outcome])
                thread.join()
            raise

    def _thread(self) -> None:
        try:
            self._outcome.set_result(asyncio.run(self._main()))
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
            self._outcome.set_exception(exc)

    async def _main(self) -> Any:
        with self._lock:
            if self._cancelled:  # cancelled before it started: never run it
                self._coro.close()
                raise asyncio.CancelledError
            self._loop, self._task = asyncio.get_running_loop(), asyncio.current_task()
        return await self._coro

    def _cancel(self) -> None:
        with self._lock:
            self._cancelled = True
            if self._loop is not None and self._task is not None:
                try:
                    self._loop.call_soon_threadsafe(self._task.cancel)
                except RuntimeError:  # the loop closed meanwhile: the coroutine has ended
                    pass
