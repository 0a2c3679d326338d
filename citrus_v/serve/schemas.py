"""The wire format: OpenAI chat requests in, chat completions (+ ``seg_masks_rle`` and ``boxes``) out.

Requests are checked by hand rather than by a pydantic model so that every error names the exact
JSON path (``messages[0].content[1].image_url.url``) and maps to one clear 4xx. Unknown top-level keys
are ignored, as OpenAI clients send many (``presence_penalty``, ``user``...).
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from citrus_v.infer.types import Prediction
from citrus_v.serve.errors import RequestError, finite_number, json_kind
from citrus_v.serve.images import DecodedImage, decode_image_url, encode_png_data_url
from citrus_v.serve.prompts import PromptSpec, check_prompts_on_image, parse_prompts
from citrus_v.serve.rle import encode_box, encode_mask
from citrus_v.serve.settings import ServeConfig

ROLES = ("system", "user", "assistant")
MAX_SEED = 2**63 - 1  # torch.manual_seed takes a signed 64-bit int


@dataclass
class SamplingParams:
    """What the client asked of the decoder; ``temperature == 0`` (the default) means greedy."""

    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None

    def key(self) -> tuple:
        """Requests with equal keys can share one ``predict_batch`` call."""
        return (self.max_tokens, self.temperature, self.top_p, self.seed)


@dataclass
class ChatRequest:
    model: str | None
    prompt: str
    images: list[DecodedImage]
    sampling: SamplingParams
    stream: bool = False
    return_images: bool = False  # extension: echo the decoded images as PNG (the viewer shows DICOMs so)
    ignored_system_text: list[str] = field(default_factory=list)
    prompts: PromptSpec | None = None  # extension: point/box prompts -> Predictor.refine on the one image


def parse_chat_request(body: Any, config: ServeConfig, decode_images: bool = True, reserve=None) -> ChatRequest:
    """A decoded JSON body -> :class:`ChatRequest`, or :class:`RequestError` naming the bad field.

    ``reserve(pixels, param)`` is called per image before it is decoded (the server's pixel budget)."""
    if not isinstance(body, dict):
        raise RequestError(400, f"request body must be a JSON object, got {json_kind(body)}")
    model = _optional(body, "model", str)
    stream = _optional(body, "stream", bool) or False
    return_images = _optional(body, "return_images", bool) or False
    n = _optional(body, "n", int)
    if n is not None and n != 1:
        raise RequestError(400, f"only n=1 is supported, got {n}", "n")
    sampling = _parse_sampling(body, config)
    # the prompts' shape is checked before any image is decoded; their bounds once the size is known
    prompts = None if body.get("prompts") is None else parse_prompts(body["prompts"], "prompts")
    prompt, urls, system_text = _parse_messages(body.get("messages"), config, text_optional=prompts is not None)
    if prompts is not None and len(urls) != 1:
        # refine works on one image; dropping the others silently would change what the model sees
        raise RequestError(400, f"point/box prompts need exactly one image in the request, got {len(urls)}", "prompts")
    images = [decode_image_url(url, config, param, reserve) for param, url in urls] if decode_images else []
    if prompts is not None and images:
        check_prompts_on_image(prompts, images[0].size, "prompts")
    return ChatRequest(model, prompt, images, sampling, stream, return_images, system_text, prompts)


def _parse_sampling(body: dict, config: ServeConfig) -> SamplingParams:
    max_tokens = _optional(body, "max_tokens", int)
    name = "max_tokens"
    if max_tokens is None:
        max_tokens, name = _optional(body, "max_completion_tokens", int), "max_completion_tokens"
    if max_tokens is None:
        max_tokens = config.default_max_tokens
    if not 1 <= max_tokens <= config.max_tokens_limit:
        raise RequestError(400, f"must be in [1, {config.max_tokens_limit}], got {max_tokens}", name)
    temperature = _optional_number(body, "temperature")
    temperature = 0.0 if temperature is None else temperature
    if not 0.0 <= temperature <= 2.0:
        raise RequestError(400, f"must be in [0, 2], got {temperature}", "temperature")
    top_p = _optional_number(body, "top_p")
    top_p = 1.0 if top_p is None else top_p
    if not 0.0 < top_p <= 1.0:
        raise RequestError(400, f"must be in (0, 1], got {top_p}", "top_p")
    seed = _optional(body, "seed", int)
    if seed is not None and not 0 <= seed <= MAX_SEED:
        raise RequestError(400, f"must be in [0, 2**63 - 1], got {str(seed)[:40]}", "seed")
    return SamplingParams(max_tokens, float(temperature), float(top_p), seed)


def _parse_messages(
    messages: Any, config: ServeConfig, text_optional: bool = False
) -> tuple[str, list[tuple[str, str]], list[str]]:
    """-> (prompt, [(param, image url)], system texts). One user turn: the predictor is single-turn.

    ``text_optional``: point/box prompts alone can make a mask (SAM-style), so the text may be empty.
    """
    if messages is None:
        raise RequestError(400, "is required", "messages")
    if not isinstance(messages, list):
        raise RequestError(400, f"must be a list, got {json_kind(messages)}", "messages")
    if not messages:
        raise RequestError(400, "must hold at least one message", "messages")
    if len(messages) > config.max_messages:
        raise RequestError(400, f"{len(messages)} messages, above max_messages={config.max_messages}", "messages")
    texts: list[str] = []
    urls: list[tuple[str, str]] = []
    system_text: list[str] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise RequestError(400, f"must be an object, got {json_kind(message)}", where)
        role = message.get("role")
        if role not in ROLES:
            raise RequestError(400, f"role must be one of {list(ROLES)}, got {role!r}", f"{where}.role")
        if role == "assistant":
            # the predictor answers one user turn; folding history in silently would change answers
            raise RequestError(400, "multi-turn conversations are not supported: send one user turn", f"{where}.role")
        parts_text, parts_urls = _parse_content(message.get("content"), f"{where}.content", allow_images=role == "user")
        if role == "system":
            system_text.extend(parts_text)  # the model has its fixed system prompt; recorded, not used
            continue
        texts.extend(parts_text)
        urls.extend(parts_urls)
        if len(urls) > config.max_images_per_request:
            raise RequestError(
                400, f"more than max_images_per_request={config.max_images_per_request} images", where, code="too_many_images"
            )
    if not texts and not urls:
        raise RequestError(400, "no user message with text or images", "messages")
    prompt = "\n".join(t for t in texts if t)
    if len(prompt) > config.max_prompt_chars:
        raise RequestError(
            400, f"prompt has {len(prompt)} characters, above max_prompt_chars={config.max_prompt_chars}", "messages",
            code="prompt_too_long",
        )
    if not prompt.strip() and not text_optional:
        raise RequestError(400, "the user turn has no text prompt", "messages")
    return prompt, urls, system_text


def _parse_content(content: Any, where: str, allow_images: bool) -> tuple[list[str], list[tuple[str, str]]]:
    if isinstance(content, str):
        return [_check_text(content, where)], []
    if not isinstance(content, list):
        raise RequestError(400, f"must be a string or a list of parts, got {json_kind(content)}", where)
    texts: list[str] = []
    urls: list[tuple[str, str]] = []
    for j, part in enumerate(content):
        at = f"{where}[{j}]"
        if not isinstance(part, dict):
            raise RequestError(400, f"must be an object, got {json_kind(part)}", at)
        kind = part.get("type")
        if kind == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise RequestError(400, f"must be a string, got {json_kind(text)}", f"{at}.text")
            texts.append(_check_text(text, f"{at}.text"))
        elif kind == "image_url":
            if not allow_images:
                raise RequestError(400, "images are only accepted in user messages", at)
            image_url = part.get("image_url")
            # OpenAI's shape is {"url": ...}; a bare string is what several clients send
            url, url_at = (image_url, f"{at}.image_url") if isinstance(image_url, str) else (None, f"{at}.image_url.url")
            if isinstance(image_url, dict):
                url = image_url.get("url")
            if not isinstance(url, str) or not url:
                raise RequestError(400, f"must be a non-empty string, got {json_kind(url)}", url_at)
            urls.append((url_at, url))
        else:
            raise RequestError(400, f"part type must be 'text' or 'image_url', got {kind!r}", f"{at}.type")
    return texts, urls


def _optional(body: dict, key: str, kind: type) -> Any:
    value = body.get(key)
    if value is None:
        return None
    # bool is an int subclass in Python; JSON true is not a token count
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise RequestError(400, f"must be {kind.__name__}, got {json_kind(value)}", key)
    return value


def _optional_number(body: dict, key: str) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    return finite_number(value, key)


# C0/C1 control characters but tab, newline and carriage return; lone UTF-16 surrogates (valid JSON
# escapes such as "\ud800" that no UTF-8 text can hold)
_BAD_CHARS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")


def _check_text(text: str, where: str) -> str:
    bad = _BAD_CHARS.search(text)
    if bad is not None:
        char = bad.group()
        kind = "an unpaired surrogate" if "\ud800" <= char <= "\udfff" else "the control character"
        raise RequestError(400, f"holds {kind} U+{ord(char):04X} at character {bad.start()}", where, code="invalid_text")
    return text




# --------------------------------------------------------------------------------------- responses


def completion_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex[:24]


def finish_reason(prediction: Prediction, sampling: SamplingParams) -> str:
    return "length" if prediction.num_generated_tokens >= sampling.max_tokens else "stop"


def encode_prediction_box(box, size: tuple[int, int] | None) -> dict:
    """One ``Box`` as JSON; a box the segmenter tightened also carries the written one and its score."""
    out = {"bbox": encode_box(box.bbox, size), "label": box.label, "image_index": box.image_index}
    if box.text_bbox is not None:
        out["text_bbox"] = encode_box(box.text_bbox, size)
        out["score"] = None if box.score is None else round(float(box.score), 4)
    return out


def prediction_extras(prediction: Prediction, request: ChatRequest) -> dict:
    """The fields beyond OpenAI's: masks as COCO RLE at the original size, boxes in original pixels."""
    sizes = [image.size for image in request.images]

    def size_of(index: int) -> tuple[int, int] | None:
        return sizes[index] if 0 <= index < len(sizes) else None

    extras: dict = {
        "seg_masks_rle": [encode_mask(m.mask) for m in prediction.masks],
        "seg_masks_info": [
            {"score": round(float(m.score), 4), "label": m.label, "image_index": m.image_index} for m in prediction.masks
        ],
        "boxes": [encode_prediction_box(b, size_of(b.image_index)) for b in prediction.boxes],
        "reasoning": prediction.reasoning,
        "report": prediction.report.to_dict() if prediction.report else None,
        "mean_token_prob": prediction.mean_token_prob,
        "image_sizes": [list(s) for s in sizes],
    }
    if request.return_images:
        extras["images"] = [encode_png_data_url(image.pixels) for image in request.images]
    return extras


def build_completion(prediction: Prediction, request: ChatRequest, model_name: str, cid: str | None = None) -> dict:
    message: dict = {"role": "assistant", "content": prediction.answer}
    if prediction.reasoning:
        message["reasoning_content"] = prediction.reasoning
    return {
        "id": cid or completion_id(),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model_name,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason(prediction, request.sampling)}],
        "usage": {
            "prompt_tokens": 0,  # the predictor does not report it; 0 rather than a guess
            "completion_tokens": prediction.num_generated_tokens,
            "total_tokens": prediction.num_generated_tokens,
        },
        **prediction_extras(prediction, request),
    }
