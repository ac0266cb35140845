"""A notebook cell as stage code: compile it for good tracebacks, capture its output while
showing it live, and replay that output later from the store."""
from __future__ import annotations

import ast
import inspect
import sys
import threading
from contextlib import contextmanager
from typing import Any, Iterator

from pipelite import PipeliteError

__all__ = ["CellSyntaxError", "CompiledCell", "OutputCapture", "replay"]


class CellSyntaxError(PipeliteError):
    """A ``%%stage`` cell that is not valid Python; ``error`` is the ``SyntaxError``, with the
    line numbers of the cell as the user sees it."""

    def __init__(self, error: SyntaxError):
        super().__init__(f"the cell has invalid syntax (line {error.lineno}): {error.msg}")
        self.error = error


class CompiledCell:
    """A cell's code compiled once under a filename IPython's linecache knows.

    Line numbers match the cell as the user sees it (the ``%%stage`` line is line 1), so a
    traceback shows ``Cell In[7], line 3`` and the user's own line. A top-level ``await`` is
    allowed, as IPython allows it in any cell: such a cell ``is_async``, and runs with
    ``run_async``.
    """

    def __init__(self, shell: Any, header: str, source: str):
        self.shell = shell
        self.source = source
        text = header + "\n" + source
        self.filename = shell.compile.cache(text, _prompt_number(shell), raw_code=text)
        try:
            tree = ast.parse(source, filename=self.filename)
        except SyntaxError as exc:
            exc.filename = self.filename
            if exc.lineno is not None:
                exc.lineno += 1
            if exc.end_lineno is not None:
                exc.end_lineno += 1
            raise CellSyntaxError(exc) from None
        ast.increment_lineno(tree, 1)
        last = None
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            from IPython.core.displayhook import DisplayHook

            last_stmt = tree.body.pop()
            assert isinstance(last_stmt, ast.Expr)
            if not DisplayHook.semicolon_at_end_of_expression(source):
                last = ast.Expression(last_stmt.value)
            else:  # a trailing ';' silences the value, as in a plain cell
                tree.body.append(last_stmt)
        flags = getattr(shell.compile, "flags", 0) | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
        try:
            self.body = compile(tree, self.filename, "exec", flags=flags, dont_inherit=True)
            self.last = (compile(last, self.filename, "eval", flags=flags, dont_inherit=True)
                         if last is not None else None)
        except SyntaxError as exc:
            # errors only the compiler finds ('return' or 'yield' outside a function, 'break'
            # outside a loop...): the tree's line numbers are the cell's already
            exc.filename = self.filename
            raise CellSyntaxError(exc) from None
        self.is_async = _awaits(self.body) or _awaits(self.last)

    def run(self, namespace: dict) -> None:
        """Run the cell in ``namespace``; display the value of a final expression."""
        if self.is_async:
            raise TypeError("a cell with a top-level await runs with run_async")
        exec(self.body, namespace)
        if self.last is not None:
            _show(eval(self.last, namespace))

    async def run_async(self, namespace: dict) -> None:
        """``run`` for a cell with a top-level ``await``: its code is a coroutine's, awaited
        in the loop that awaits this."""
        if _awaits(self.body):
            await eval(self.body, namespace)
        else:
            exec(self.body, namespace)
        if self.last is not None:
            value = eval(self.last, namespace)
            _show((await value) if _awaits(self.last) else value)


def _awaits(code: Any) -> bool:
    """Whether compiled cell code has a top-level ``await`` (it runs as a coroutine)."""
    return code is not None and bool(code.co_flags & inspect.CO_COROUTINE)


def _show(value: Any) -> None:
    if value is not None:
        from IPython.display import display

        display(value)


def _prompt_number(shell: Any) -> int:
    """The number IPython gave the running cell (``In[N]``), for tracebacks that say
    ``Cell In[N]``. IPython compiles the whole cell, numbered, before the magic runs: its last
    entry is this cell's number. ``execution_count`` may already be the next one (some IPython
    versions count it before the cell runs), so it is only the fallback."""
    numbers = getattr(getattr(shell, "compile", None), "_filename_map", None)
    if isinstance(numbers, dict) and numbers:
        last = next(reversed(numbers.values()))
        if isinstance(last, int):
            return last
    return int(shell.execution_count)


class _Tee:
    """A text stream that writes through to ``target`` and remembers what it wrote (only what
    the capturing thread writes: another thread's prints pass through untouched)."""

    def __init__(self, target: Any, name: str, capture: "OutputCapture"):
        self._target = target
        self._name = name
        self._capture = capture

    def write(self, text: str) -> int:
        capture = self._capture
        if threading.get_ident() != capture.thread or capture.in_display:
            return self._target.write(text)
        capture.add_stream(self._name, text)
        if capture.live is not None:  # shown through display ids instead
            capture.live.stream(self._name, text)
            return len(text)
        return self._target.write(text) if capture.echo else len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        self._target.flush()

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._target, attr)


class OutputCapture:
    """Records stdout, stderr and rich displays while letting them through.

    ``events`` is a JSON-able list: ``{"stream": "stdout"|"stderr", "text": ...}``,
    ``{"display": {"data": ..., "metadata": ...}}`` and ``{"clear": wait}``, in order.

    With ``live`` (a :class:`~pipelite_ipy.slots.LiveOutput`), what is captured is shown
    through it (display ids a later run can replace) instead of written through; with
    ``echo=False``, it is only captured. Only the thread that enters :meth:`active` is
    captured.
    """

    def __init__(self, shell: Any, live: Any = None, echo: bool = True):
        self.shell = shell
        self.events: list[dict] = []
        self.in_display = False
        self.live = live
        self.echo = echo
        self.thread = threading.get_ident()

    def add_stream(self, name: str, text: str) -> None:
        if not text:
            return
        if self.events and self.events[-1].get("stream") == name:
            self.events[-1]["text"] += text
        else:
            self.events.append({"stream": name, "text": text})

    @contextmanager
    def active(self) -> Iterator["OutputCapture"]:
        pub = self.shell.display_pub
        had_publish = "publish" in vars(pub)
        had_clear = "clear_output" in vars(pub)
        orig_publish, orig_clear = pub.publish, pub.clear_output

        def publish(data: Any, metadata: Any = None, *args: Any, **kwargs: Any) -> Any:
            mine = threading.get_ident() == self.thread
            if mine and not kwargs.get("update"):
                self.events.append({"display": {"data": _jsonable(data),
                                                "metadata": _jsonable(metadata or {})}})
            self.in_display = True  # a terminal publisher prints text/plain: not a stream
            try:
                if mine and not kwargs.get("update") and self.live is not None:
                    transient = kwargs.get("transient") or {}
                    return self.live.display(data, metadata, transient.get("display_id"))
                if mine and not self.echo and not kwargs.get("update"):
                    return None
                return orig_publish(data, metadata, *args, **kwargs)
            finally:
                self.in_display = False

        def clear_output(wait: bool = False) -> Any:
            if threading.get_ident() != self.thread:
                return orig_clear(wait)
            self.events.append({"clear": bool(wait)})
            if self.live is not None:
                return self.live.clear()
            return orig_clear(wait) if self.echo else None

        self.thread = threading.get_ident()
        out, err = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = _Tee(out, "stdout", self), _Tee(err, "stderr", self)
        pub.publish, pub.clear_output = publish, clear_output
        try:
            yield self
            _flush_inline_figures()
        finally:
            sys.stdout, sys.stderr = out, err
            for attr, had, orig in (("publish", had_publish, orig_publish),
                                    ("clear_output", had_clear, orig_clear)):
                if had:
                    setattr(pub, attr, orig)
                else:
                    vars(pub).pop(attr, None)


def _flush_inline_figures() -> None:
    """Show pending matplotlib inline figures now, while they can still be captured.

    The inline backend normally draws them after the cell, past the capture.
    """
    inline = sys.modules.get("matplotlib_inline.backend_inline")
    mpl = sys.modules.get("matplotlib")
    if inline is None or mpl is None or "inline" not in str(mpl.get_backend()):
        return
    inline.flush_figures()


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, bytes):
        import base64

        return base64.b64encode(value).decode("ascii")
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def replay(shell: Any, events: list[dict], live: Any = None) -> None:
    """Show captured output again, in the order it was produced (through ``live``, a
    :class:`~pipelite_ipy.slots.LiveOutput`, when given)."""
    for ev in events or ():
        if "stream" in ev:
            if live is not None:
                live.stream(ev["stream"], ev["text"])
                continue
            stream = sys.stderr if ev["stream"] == "stderr" else sys.stdout
            stream.write(ev["text"])
            stream.flush()
        elif "display" in ev:
            data, metadata = ev["display"]["data"], ev["display"].get("metadata") or {}
            if live is not None:
                live.display(data, metadata)
                continue
            sys.stdout.flush()
            shell.display_pub.publish(data=data, metadata=metadata)
        elif "clear" in ev:
            if live is not None:
                live.clear()
            else:
                shell.display_pub.clear_output(wait=ev["clear"])
