"""Server-sent events in OpenAI's ``chat.completion.chunk`` framing, sent while the model decodes.

A predictor with ``predict_stream`` (the real model: ``PredictorAdapter``) hands the answer's text
over token by token (``citrus_v.infer.streaming.TokenStreamer``); each piece goes out as a chunk at
once. The masks and boxes need the whole answer, so the last chunk carries ``finish_reason`` and
the extras (``seg_masks_rle``, ``boxes``...); with ``stream_options.include_usage`` one more chunk
carries ``usage`` with empty ``choices``, as OpenAI sends it; then ``data: [DONE]``. A predictor
without ``predict_stream`` (or a reasoning answer, whose parts are only known at its end) sends
its text in word-sized pieces at the end. An error after the first chunk is sent in the stream as
``{"error": {...}}`` (the status line is gone by then), as vLLM does.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import AsyncIterator

from citrus_v.infer.types import Prediction
from citrus_v.serve.errors import RequestError
from citrus_v.serve.schemas import ChatRequest, finish_reason, prediction_extras, usage_of

log = logging.getLogger(__name__)


def text_pieces(text: str) -> list[str]:
    """Split into pieces that concatenate back to ``text`` exactly (each word keeps its trailing space)."""
    return re.findall(r"\S+\s*|\s+", text)


class ChunkWriter:
    """One completion's chunks: same id, creation time and model name in each."""

    def __init__(self, request: ChatRequest, model_name: str, cid: str):
        self.request = request
        self.model_name = model_name
        self.cid = cid
        self.created = int(time.time())

    def chunk(self, delta: dict | None, finish: str | None = None, extras: dict | None = None, usage=False) -> str:
        choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
        body = {"id": self.cid, "object": "chat.completion.chunk", "created": self.created, "model": self.model_name,
                "choices": choices, **(extras or {})}
        if self.request.include_usage:  # OpenAI: null in every chunk but the last
            body["usage"] = usage or None
        return f"data: {json.dumps(body)}\n\n"

    def ending(self, prediction: Prediction, sent: str) -> list[str]:
        """The chunks after the streamed text ``sent``: the rest of the answer, the finish, the usage."""
        out = []
        if prediction.reasoning:
            out.append(self.chunk({"reasoning_content": prediction.reasoning}))
        if prediction.answer.startswith(sent):
            out += [self.chunk({"content": piece}) for piece in text_pieces(prediction.answer[len(sent):])]
        else:  # never seen: the streamed text is always a prefix of the answer (TokenStreamer)
            log.warning("streamed text is not a prefix of the answer; the final answer is in the last chunk")
        sampling = self.request.sampling
        out.append(self.chunk({}, finish_reason(prediction, sampling), prediction_extras(prediction, self.request)))
        if self.request.include_usage:
            out.append(self.chunk(None, usage=usage_of(prediction)))
        return out


async def next_event(events: asyncio.Queue, task: asyncio.Task) -> str | None:
    """The next text piece, or None once the prediction is done and every piece has been taken."""
    while True:
        if not events.empty():
            return events.get_nowait()
        if task.done():
            return None
        getter = asyncio.ensure_future(events.get())
        done, _ = await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
        if getter in done:
            return getter.result()
        getter.cancel()


async def sse_stream(writer: ChunkWriter, events: asyncio.Queue, task: asyncio.Task) -> AsyncIterator[str]:
    """The chunks of one completion: role, text as it comes, the ending (or an error), ``[DONE]``."""
    yield writer.chunk({"role": "assistant", "content": ""})
    sent = ""
    while (piece := await next_event(events, task)) is not None:
        sent += piece
        yield writer.chunk({"content": piece})
    try:
        prediction = task.result()
    except RequestError as err:
        yield f"data: {json.dumps(err.to_body())}\n\n"
    else:
        for chunk in writer.ending(prediction, sent):
            yield chunk
    yield "data: [DONE]\n\n"
