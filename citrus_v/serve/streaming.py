"""Server-sent events in OpenAI's ``chat.completion.chunk`` framing.

The predictor returns a whole prediction (text and masks come from one pass), so the text is streamed
in word-sized pieces once it is ready; the last chunk carries ``finish_reason`` and the extras
(``seg_masks_rle``, ``boxes``...), then ``data: [DONE]``. OpenAI stream clients work unchanged.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator

from citrus_v.infer.types import Prediction
from citrus_v.serve.schemas import ChatRequest, finish_reason, prediction_extras


def text_pieces(text: str) -> list[str]:
    """Split into pieces that concatenate back to ``text`` exactly (each word keeps its trailing space)."""
    return re.findall(r"\S+\s*|\s+", text)


def sse_chunks(prediction: Prediction, request: ChatRequest, model_name: str, cid: str) -> Iterator[str]:
    created = int(time.time())

    def chunk(delta: dict, finish: str | None = None, extras: dict | None = None) -> str:
        body = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model_name,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            **(extras or {}),
        }
        return f"data: {json.dumps(body)}\n\n"

    yield chunk({"role": "assistant", "content": ""})
    if prediction.reasoning:
        yield chunk({"reasoning_content": prediction.reasoning})
    for piece in text_pieces(prediction.answer):
        yield chunk({"content": piece})
    yield chunk({}, finish_reason(prediction, request.sampling), prediction_extras(prediction, request))
    yield "data: [DONE]\n\n"
