"""A stage cell's output through display ids (pipelite_ipy/slots.py): what the README promises
of it, without a kernel."""
from __future__ import annotations

import threading
import time

from pipelite_ipy.slots import FLUSH_EVERY, LiveOutput, composite, plain_text


class Sent:
    def __init__(self):
        self.messages: list[tuple[dict, str, bool]] = []
        self.changed = threading.Event()

    def __call__(self, data, metadata, display_id, update):
        self.messages.append((data, display_id, update))
        self.changed.set()


def test_a_print_followed_by_a_long_computation_is_shown_within_the_flush_period():
    sent = Sent()
    live = LiveOutput(sent)
    t0 = time.monotonic()
    live.stream("stdout", "epoch 1\n")  # and then nothing more for a long while
    assert sent.changed.wait(10)
    assert time.monotonic() - t0 < FLUSH_EVERY + 5  # by the flush thread, not at the end
    (data, did, update), = sent.messages
    assert data == {"text/plain": "epoch 1\n"} and not update
    live.stream("stdout", "epoch 2\n")
    live.close()
    assert sent.messages[-1] == ({"text/plain": "epoch 1\nepoch 2\n"}, did, True)


def test_text_is_sent_as_a_terminal_leaves_it_and_stderr_is_shaded_like_a_stream():
    assert plain_text("10%\r50%\r100%\ndone") == "100%\ndone"  # a text progress bar
    assert plain_text("ab\bc") == "ac"
    sent = Sent()
    live = LiveOutput(sent)
    live.stream("stderr", "warning: x\n")
    live.close()
    data = sent.messages[-1][0]
    assert data["application/vnd.jupyter.stderr"] == "warning: x\n"


def test_a_clear_empties_what_was_shown_and_later_output_reuses_the_displays():
    sent = Sent()
    live = LiveOutput(sent)
    first = live.display({"text/plain": "frame 1"})
    live.clear()
    second = live.display({"text/plain": "frame 2"})
    live.close()
    assert second == first  # the same display, updated: no new one per frame
    assert ({"text/plain": ""}, first, True) in sent.messages


def test_a_composite_escapes_text_and_keeps_order():
    out = composite([{"stream": "stdout", "text": "<b>1</b>\n"},
                     {"display": {"data": {"text/plain": "x"}}}], error="Trace\n")
    assert out["text/html"].index("&lt;b&gt;1") < out["text/html"].index("<pre>x</pre>")
    assert out["text/plain"] == "<b>1</b>\nx\nTrace"
