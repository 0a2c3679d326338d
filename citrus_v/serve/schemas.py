"""The wire format: OpenAI chat requests in, chat completions (+ ``seg_masks_rle`` and ``boxes``) out.

Each response also carries ``raw_response.seg_masks_rle``: the masks on the segmenter's 256x256 grid,
as the published Citrus-V deploy sends them (its clients read that key).

Requests are checked by hand rather than by a pydantic model so that every error names the exact
JSON path (``messages[0].content[1].image_url.url``) and maps to one clear 4xx. Unknown top-level keys
are ignored, as OpenAI clients send many (``presence_penalty``, ``user``...).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from citrus_v.infer.types import Prediction
from citrus_v.serve.errors import RequestError, finite_number, json_kind
from citrus_v.infer.conversation import Conversation
from citrus_v.serve.images import DecodedImage, decode_image_url, encode_png_data_url, encode_values
from citrus_v.serve.messages import parse_messages
from citrus_v.serve.prompts import PromptSpec, check_prompts_on_image, parse_prompts
from citrus_v.serve.rle import encode_box, encode_mask, mask_grid
from citrus_v.serve.settings import ServeConfig

MAX_SEED = 2**63 - 1  # torch.manual_seed takes a signed 64-bit int


@dataclass
class SamplingParams:
    """What the client asked of the decoder. ``None`` = the model's default (its folder's
    ``generation_config.json``, else greedy); ``temperature == 0`` means greedy."""

    max_tokens: int
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    top_k: int | None = None  # 0 = off
    repetition_penalty: float | None = None

    def key(self) -> tuple:
        """Requests with equal keys can share one ``predict_batch`` call."""
        return (self.max_tokens, self.temperature, self.top_p, self.seed, self.top_k, self.repetition_penalty)


@dataclass
class ChatRequest:
    model: str | None
    prompt: str
    images: list[DecodedImage]
    sampling: SamplingParams
    stream: bool = False
    return_images: bool = False  # extension: echo the decoded images as PNG (the viewer shows DICOMs so)
    system_text: list[str] = field(default_factory=list)  # the system message's text, rendered in the prompt
    prompts: PromptSpec | None = None  # extension: point/box prompts -> Predictor.refine on the one image
    # a system message or earlier turns: the whole chat, rendered as the chat template does (None: one user turn)
    conversation: Conversation | None = None
    include_usage: bool = False  # stream_options.include_usage: a last chunk with usage (empty choices)
    tiles: str | tuple[int, int] | None = None  # extension: "auto" or (rows, cols) -> Predictor.predict_tiled

    @property
    def text_input(self) -> str | Conversation:
        """What the predictor answers: the one user turn's text, or the whole conversation."""
        return self.conversation if self.conversation is not None else self.prompt


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
    parsed = parse_messages(body.get("messages"), config, text_optional=prompts is not None)
    urls = parsed.urls
    if prompts is not None and len(urls) != 1:
        # refine works on one image; dropping the others silently would change what the model sees
        raise RequestError(400, f"point/box prompts need exactly one image in the request, got {len(urls)}", "prompts")
    if prompts is not None and parsed.conversation is not None:
        raise RequestError(400, "point/box prompts take one user message (no system message, no history)", "prompts")
    tiles = None if body.get("tiles") is None else _parse_tiles(body["tiles"], len(urls), prompts, parsed, stream)
    images = [decode_image_url(url, config, param, reserve) for param, url in urls] if decode_images else []
    if prompts is not None and images:
        check_prompts_on_image(prompts, images[0].size, "prompts")
    if tiles is not None and images:
        _check_tiles_on_image(tiles, images[0].size, config.max_tiles)
    return ChatRequest(model, parsed.prompt, images, sampling, stream, return_images, parsed.system_text, prompts,
                       parsed.conversation, _include_usage(body, stream), tiles)


def _parse_tiles(value: Any, n_images: int, prompts, parsed, stream: bool) -> str | tuple[int, int]:
    """``"tiles"``: "auto", N, "RxC" or [rows, cols] (``citrus-v predict --tiles``), on one image and one user turn."""
    from citrus_v.infer.tiling import as_tiles

    try:
        tiles = as_tiles(value)
    except ValueError:
        raise RequestError(400, f'must be "auto", N, "RxC" or [rows, cols] (whole numbers >= 1), got '
                                f'{json_kind(value)} {value!r}'[:200], "tiles") from None
    if n_images != 1:
        raise RequestError(400, f"tiles need exactly one image in the request, got {n_images}", "tiles")
    if prompts is not None:
        raise RequestError(400, "tiles and point/box prompts do not go together", "tiles")
    if parsed.conversation is not None:
        raise RequestError(400, "tiles take one user message (no system message, no history)", "tiles")
    if stream:
        raise RequestError(400, "a tiled answer is stitched from every tile's: it cannot be streamed", "tiles")
    return tiles


def _check_tiles_on_image(tiles: str | tuple[int, int], size: tuple[int, int], max_tiles: int) -> None:
    """The grid fits the image, and holds at most the server's ``max_tiles`` (they run one by one)."""
    from citrus_v.infer.tiling import grid_for

    try:
        grid = grid_for(tiles, *size)
    except ValueError as err:
        raise RequestError(400, str(err), "tiles") from None
    if grid[0] * grid[1] > max_tiles:
        raise RequestError(413, f"a {grid[0]}x{grid[1]} grid on this {size[0]}x{size[1]} image is {grid[0] * grid[1]} "
                                f"tiles, above the server's max_tiles={max_tiles} (citrus-v serve --max-tiles)",
                           "tiles", code="too_many_tiles")


def _include_usage(body: dict, stream: bool) -> bool:
    """``stream_options: {"include_usage": bool}``, which OpenAI takes only with ``stream: true``."""
    options = body.get("stream_options")
    if options is None:
        return False
    if not stream:
        raise RequestError(400, "is only allowed when stream is true", "stream_options")
    if not isinstance(options, dict):
        raise RequestError(400, f"must be an object, got {json_kind(options)}", "stream_options")
    value = options.get("include_usage")
    if value is not None and not isinstance(value, bool):
        raise RequestError(400, f"must be boolean, got {json_kind(value)}", "stream_options.include_usage")
    return bool(value)


def _parse_sampling(body: dict, config: ServeConfig) -> SamplingParams:
    max_tokens = _optional(body, "max_tokens", int)
    name = "max_tokens"
    if max_tokens is None:
        max_tokens, name = _optional(body, "max_completion_tokens", int), "max_completion_tokens"
    if max_tokens is None:
        max_tokens = config.default_max_tokens
    limit = config.tokens_limit
    if not 1 <= max_tokens <= limit:
        raise RequestError(400, f"must be in [1, {limit}] (the server's --max-tokens-limit), got {max_tokens}", name)
    temperature = _optional_number(body, "temperature")
    if temperature is not None and not 0.0 <= temperature <= 2.0:
        raise RequestError(400, f"must be in [0, 2], got {temperature}", "temperature")
    top_p = _optional_number(body, "top_p")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise RequestError(400, f"must be in (0, 1], got {top_p}", "top_p")
    top_k = _optional(body, "top_k", int)
    if top_k is not None and top_k < 0:  # vLLM's -1 for "off" is refused: 0 is off here
        raise RequestError(400, f"must be an int >= 0 (0 = off), got {top_k}", "top_k")
    penalty = _optional_number(body, "repetition_penalty")
    if penalty is not None and not 0.0 < penalty <= 10.0:
        raise RequestError(400, f"must be in (0, 10], got {penalty}", "repetition_penalty")
    seed = _optional(body, "seed", int)
    if seed is not None and not 0 <= seed <= MAX_SEED:
        raise RequestError(400, f"must be in [0, 2**63 - 1], got {str(seed)[:40]}", "seed")
    return SamplingParams(max_tokens, temperature, top_p, seed, top_k, penalty)


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


# --------------------------------------------------------------------------------------- responses


def completion_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex[:24]


def finish_reason(prediction: Prediction, sampling: SamplingParams) -> str:
    """"length" when the answer ran out of tokens; for a tiled answer, when any tile's did (each had max_tokens)."""
    counts = [t.num_generated_tokens for t in prediction.tiles] if prediction.tiles else [prediction.num_generated_tokens]
    return "length" if max(counts) >= sampling.max_tokens else "stop"


def encode_prediction_box(box, size: tuple[int, int] | None) -> dict:
    """One ``Box`` as JSON; a box the segmenter tightened also carries the written one and its score."""
    out = {"bbox": encode_box(box.bbox, size), "label": box.label, "image_index": box.image_index}
    if box.text_bbox is not None:
        out["text_bbox"] = encode_box(box.text_bbox, size)
        out["score"] = None if box.score is None else round(float(box.score), 4)
    return out


def mask_labels(prediction: Prediction, request: ChatRequest) -> list[str]:
    """Each mask's label: its own, else the structure the prompt names ("Please segment the liver.")."""
    from copy import copy

    from citrus_v.infer.text import label_masks

    masks = [copy(m) for m in prediction.masks]  # the prediction itself is left as the model returned it
    label_masks(masks, request.prompt)
    return [m.label for m in masks]


def usage_of(prediction: Prediction) -> dict:
    """OpenAI's ``usage``: the encoded prompt's tokens (image tokens included) and the generated ones."""
    prompt, completion = prediction.num_prompt_tokens, prediction.num_generated_tokens
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def prediction_extras(prediction: Prediction, request: ChatRequest) -> dict:
    """The fields beyond OpenAI's: masks as COCO RLE at the original size, boxes in original pixels."""
    sizes = [image.size for image in request.images]

    def size_of(index: int) -> tuple[int, int] | None:
        return sizes[index] if 0 <= index < len(sizes) else None

    extras: dict = {
        # the published deploy's shape: its clients read raw_response.seg_masks_rle (256x256, sigmoid > 0.5)
        "raw_response": {"seg_masks_rle": [encode_mask(mask_grid(m.mask, m.low_res)) for m in prediction.masks]},
        "seg_masks_rle": [encode_mask(m.mask) for m in prediction.masks],
        "seg_masks_info": [
            {"score": round(float(m.score), 4), "label": label, "image_index": m.image_index}
            for m, label in zip(prediction.masks, mask_labels(prediction, request))
        ],
        "boxes": [encode_prediction_box(b, size_of(b.image_index)) for b in prediction.boxes],
        "reasoning": prediction.reasoning,
        "report": prediction.report.to_dict() if prediction.report else None,
        "mean_token_prob": prediction.mean_token_prob,
        "image_sizes": [list(s) for s in sizes],
    }
    if prediction.tiles is not None:  # a tiled answer: each tile's window (whole-image pixels) and own answer
        extras["tiles"] = [tile.to_dict() for tile in prediction.tiles]
    if request.return_images:
        extras["images"] = [encode_png_data_url(image.pixels) for image in request.images]
        # a monochrome DICOM's own values (HU for CT), so that the viewer windows them: None for others
        extras["image_values"] = [encode_values(image) for image in request.images]
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
        "usage": usage_of(prediction),
        **prediction_extras(prediction, request),
    }
