"""A stage cell's output as display ids, so that a later run can replace it in place.

A notebook frontend lets a kernel change an output after its cell finished only through a
``display_id`` (``update_display``): a stream or an error output stays as it was. So, in a
notebook kernel, what a ``%%stage`` cell prints and displays goes out as displays with ids
(:class:`LiveOutput`): printed text as ``text/plain`` (``application/vnd.jupyter.stderr`` for
stderr, shown like a stream), rich displays as they are. A run started from the panel then
replaces all of it: its own output is drawn under the cell's badge (:func:`composite`) and the
old displays are emptied.
"""
from __future__ import annotations

import base64
import html
import re
import threading
import time
import uuid
from typing import Callable

__all__ = ["LiveOutput", "composite", "plain_text"]

FLUSH_EVERY = 0.2  # seconds: printed text is sent at most this often (and when it stops)
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_STDERR = "application/vnd.jupyter.stderr"
EMPTY = {"text/plain": ""}


def plain_text(text: str) -> str:
    """Text as a terminal would leave it: a ``\\r`` returns to the start of its line (a text
    progress bar keeps only its last state), a ``\\b`` deletes a character."""
    lines = []
    for line in text.split("\n"):
        if "\r" in line:
            parts = line.split("\r")
            line = parts[-1] if parts[-1] else parts[-2]
        while "\b" in line:
            i = line.index("\b")
            line = line[:max(i - 1, 0)] + line[i + 1:]
        lines.append(line)
    return "\n".join(lines)


def _text_bundle(stream: str, text: str) -> dict:
    text = plain_text(text)
    bundle = {"text/plain": text}
    if stream == "stderr":
        bundle[_STDERR] = text
    return bundle


class LiveOutput:
    """What one stage cell shows, sent through display ids as it happens.

    ``stream(name, text)`` and ``display(data, metadata, display_id)`` follow the order they
    come in; consecutive text of one stream shares a display, sent at most every
    ``FLUSH_EVERY`` seconds (and by ``close``). ``clear()`` empties what was shown, as
    ``clear_output`` would. ``ids`` are the display ids shown, for a later run to empty.

    ``publish(data, metadata, display_id, update)`` sends one display message.
    """

    def __init__(self, publish: Callable[[dict, dict, str, bool], None],
                 run_in_context: Callable[[Callable[[], None]], None] | None = None):
        self._publish = publish
        self._run_in_context = run_in_context or (lambda fn: fn())
        self.ids: list[str] = []
        self._cursor = 0  # the next display to fill (after a clear, the first again)
        self._text: tuple[str, str] | None = None  # (stream, text) of the current text display
        self._text_slot: int | None = None
        self._sent_text: str | None = None
        self._last_sent = 0.0
        self._lock = threading.RLock()
        self._closed = threading.Event()
        self._flusher: threading.Thread | None = None

    # -- what comes in ---------------------------------------------------------------------
    def stream(self, name: str, text: str) -> None:
        if not text:
            return
        with self._lock:
            if self._text is not None and self._text[0] == name:
                self._text = (name, self._text[1] + text)
            else:
                self._flush_text()
                self._text = (name, text)
                self._text_slot = self._take_slot()
                self._sent_text = None
            if time.monotonic() - self._last_sent >= FLUSH_EVERY and self._sent_text is not None:
                self._flush_text()
            else:
                self._start_flusher()

    def display(self, data: dict, metadata: dict | None = None,
                display_id: str | None = None) -> str:
        """Show a rich display (under its own id if it has one); returns the id used."""
        with self._lock:
            self._flush_text()
            self._text = None
            if display_id is not None:  # the user's own id: their update_display must work
                self._publish(data, metadata or {}, display_id, False)
                self.ids.append(display_id)
                self._cursor = len(self.ids)
                return display_id
            slot = self._take_slot()
            did = self.ids[slot]
            self._publish(data, metadata or {}, did, slot < self._sent_slots)
            self._sent_slots = max(self._sent_slots, slot + 1)
            return did

    def clear(self) -> None:
        with self._lock:
            self._text = None
            for did in self.ids[:self._sent_slots]:
                self._publish(EMPTY, {}, did, True)
            self._cursor = 0

    def close(self) -> None:
        """Send what is pending and empty displays a clear left unused."""
        with self._lock:
            self._flush_text()
            self._text = None
            for did in self.ids[self._cursor:self._sent_slots]:
                self._publish(EMPTY, {}, did, True)
            self._closed.set()

    # -- internals ---------------------------------------------------------------------------
    _sent_slots = 0  # displays sent at least once (an update is possible only for those)

    def _take_slot(self) -> int:
        if self._cursor == len(self.ids):
            self.ids.append(f"pipelite-out-{uuid.uuid4().hex[:12]}")
        self._cursor += 1
        return self._cursor - 1

    def _flush_text(self) -> None:
        if self._text is None or self._text_slot is None:
            return
        stream, text = self._text
        if text == self._sent_text:
            return
        slot = self._text_slot
        did = self.ids[slot]
        self._publish(_text_bundle(stream, text), {}, did, slot < self._sent_slots)
        self._sent_slots = max(self._sent_slots, slot + 1)
        self._sent_text = text
        self._last_sent = time.monotonic()

    def _start_flusher(self) -> None:
        """Text that waits (a print, then a long computation) is sent within FLUSH_EVERY."""
        if self._flusher is not None or self._closed.is_set():
            return

        def loop() -> None:
            while not self._closed.wait(FLUSH_EVERY):
                with self._lock:
                    if not self._closed.is_set():
                        self._flush_text()

        self._flusher = threading.Thread(target=lambda: self._run_in_context(loop),
                                         name="pipelite-output", daemon=True)
        self._flusher.start()


# -- one display holding a whole run's output ------------------------------------------------
_IMAGES = ("image/png", "image/jpeg", "image/gif")


def _display_html(data: dict) -> str:
    if "text/html" in data:
        return str(data["text/html"])
    if "image/svg+xml" in data:
        return str(data["image/svg+xml"])
    for mime in _IMAGES:
        if mime in data:
            value = data[mime]
            if isinstance(value, bytes):
                value = base64.b64encode(value).decode("ascii")
            return f'<img src="data:{mime};base64,{value}" style="max-width:100%">'
    text = data.get("text/plain", "")
    if "application/vnd.jupyter.widget-view+json" in data:
        text = f"{text} (a widget: run the cell itself to show it)"
    return f"<pre>{html.escape(str(text), quote=False)}</pre>"


def composite(events: list[dict], error: str | None = None) -> dict:
    """One display bundle (HTML and plain text) showing a run's captured ``events`` in order
    (see :class:`pipelite_ipy.cell.OutputCapture`), and ``error`` (a traceback) at the end."""
    parts_html: list[str] = []
    parts_text: list[str] = []
    for ev in events:
        if "clear" in ev:
            parts_html.clear()
            parts_text.clear()
        elif "stream" in ev:
            text = plain_text(_ANSI.sub("", ev["text"]))
            if ev["stream"] == "stderr":  # shaded as JupyterLab shades a stderr stream
                attrs = ('class="pipelite-run-stderr" style="background: '
                         'var(--jp-rendermime-error-background, #fdd)"')
            else:
                attrs = 'class="pipelite-run-stdout"'
            parts_html.append(f"<pre {attrs}>{html.escape(text, quote=False)}</pre>")
            parts_text.append(text.rstrip("\n"))
        elif "display" in ev:
            data = ev["display"].get("data") or {}
            parts_html.append(_display_html(data))
            parts_text.append(str(data.get("text/plain", "")))
    if error:
        text = _ANSI.sub("", error)
        parts_html.append(f'<pre class="pipelite-run-error">{html.escape(text, quote=False)}</pre>')
        parts_text.append(text.rstrip("\n"))
    return {"text/html": "".join(parts_html), "text/plain": "\n".join(parts_text)}
