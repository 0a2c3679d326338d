"""Text as it is generated: a ``streamer`` for transformers' ``generate`` that hands each new piece
of the answer to a callback (the server turns them into SSE chunks while the model still decodes).

transformers' own ``TextIteratorStreamer`` yields raw decoded text (control tokens, ``<think>``
included) from a queue; the server needs the text a user reads, in pieces that concatenate to the
final answer, handed to an event loop: so this is a small streamer of our own over the same
``put``/``end`` protocol ``generate`` calls.
"""

from __future__ import annotations

from collections.abc import Callable

from citrus_v.infer.text import strip_control_tokens

REASONING_OPEN = "<think>"


def visible_text(decoded: str) -> str:
    """What of the text decoded so far may be shown now: control tokens removed; nothing while the
    model reasons (``<think>...``: the reasoning and the answer are sent whole at the end), and
    nothing past a half-decoded character (U+FFFD: a multi-byte character split across tokens)."""
    text = strip_control_tokens(decoded)
    if text.startswith(REASONING_OPEN[: len(text)]) or REASONING_OPEN in text or "<answer>" in text:
        return ""
    cut = text.find("\ufffd")
    return text if cut < 0 else text[:cut]


class TokenStreamer:
    """Called by ``generate``: ``put(prompt ids)`` once, then ``put(new token)`` per step, then ``end()``.

    ``on_text(piece)`` receives each new visible piece (the answer's text, in order, so that the
    pieces concatenate to a prefix of ``Prediction.answer``). One row only (batch size 1), as
    transformers' streamers.
    """

    def __init__(self, tokenizer, on_text: Callable[[str], None]):
        self.tokenizer = tokenizer
        self.on_text = on_text
        self.ids: list[int] = []
        self.sent = ""
        self._prompt_seen = False

    def put(self, value) -> None:
        if not self._prompt_seen:  # generate's first call is the prompt itself
            self._prompt_seen = True
            return
        flat = value.reshape(-1).tolist()  # (1,) or (1, 1): one new token of one row
        if len(flat) != 1:
            raise ValueError(f"TokenStreamer: streams one row at a time, got {len(flat)} tokens in one step")
        self.ids.extend(flat)
        self._emit()

    def end(self) -> None:
        self._emit()

    def _emit(self) -> None:
        shown = visible_text(self.tokenizer.decode(self.ids, skip_special_tokens=False))
        if len(shown) > len(self.sent) and shown.startswith(self.sent):
            piece, self.sent = shown[len(self.sent):], shown
            self.on_text(piece)
