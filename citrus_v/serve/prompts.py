"""Point / box prompts on the chat endpoint (issue 7): ``"prompts": {...}`` -> ``Predictor.refine`` arguments.

Shape (coordinates in ORIGINAL image pixels, x right, y down; SAM2 label 1 = add, 0 = remove)::

    "prompts": {"points": [[x, y, 1], ...], "box": [x1, y1, x2, y2],
                "mask_input_rle": {"size": [H, W], "counts": "..."},   # the previous mask, optional
                "seg_index": 0, "multimask": null}

Checked in two steps so every error names its field: the shape first (before any image is decoded,
so a malformed prompt costs nothing), then the bounds against the decoded image's size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from citrus_v.serve.errors import RequestError, finite_number, json_kind

PROMPT_KEYS = ("points", "box", "mask_input_rle", "seg_index", "multimask")
MAX_POINTS = 64  # SAM2 tools send a handful of clicks; more is a client bug, not a prompt


@dataclass
class PromptSpec:
    """What ``Predictor.refine`` gets besides the image and the text."""

    points: list[tuple[float, float, int]]
    box: list[float] | None = None
    mask_input_rle: dict | None = None  # decoded to ``mask_input`` once the image size is known
    mask_input: np.ndarray | None = None  # (H, W) bool, the previous mask
    seg_index: int = 0
    multimask: bool | None = None

    def refine_kwargs(self) -> dict:
        return {
            "points": self.points or None,
            "box": self.box,
            "seg_index": self.seg_index,
            "mask_input": self.mask_input,
            "multimask": self.multimask,
        }


def parse_prompts(value: Any, where: str = "prompts") -> PromptSpec:
    """The JSON shape alone (no image needed yet); :class:`RequestError` naming the field otherwise."""
    if not isinstance(value, dict):
        raise RequestError(400, f"must be an object like {{\"points\": [[x, y, 1]]}}, got {json_kind(value)}", where)
    unknown = sorted(set(value) - set(PROMPT_KEYS))
    if unknown:
        raise RequestError(400, f"unknown key(s) {unknown}; expected some of {list(PROMPT_KEYS)}", where)
    points = _parse_points(value.get("points"), f"{where}.points")
    box = None if value.get("box") is None else _parse_box(value["box"], f"{where}.box")
    if not points and box is None:
        raise RequestError(400, "needs at least one point or a box", where)
    rle = value.get("mask_input_rle")
    if rle is not None and not (isinstance(rle, dict) and set(rle) >= {"size", "counts"} and isinstance(rle["counts"], str)):
        raise RequestError(400, "must be a COCO RLE object {\"size\": [H, W], \"counts\": str}", f"{where}.mask_input_rle")
    seg_index = value.get("seg_index", 0)
    if seg_index is None:
        seg_index = 0
    if not isinstance(seg_index, int) or isinstance(seg_index, bool) or seg_index < 0:
        raise RequestError(400, f"must be an int >= 0, got {seg_index!r}", f"{where}.seg_index")
    multimask = value.get("multimask")
    if multimask is not None and not isinstance(multimask, bool):
        raise RequestError(400, f"must be true, false or null, got {json_kind(multimask)}", f"{where}.multimask")
    return PromptSpec(points, box, rle, None, seg_index, multimask)


def check_prompts_on_image(spec: PromptSpec, size: tuple[int, int], where: str = "prompts") -> PromptSpec:
    """Bounds against the decoded image ``size`` = (H, W); decodes ``mask_input_rle`` to a bool mask."""
    h, w = size
    for i, (x, y, _) in enumerate(spec.points):
        if not (0 <= x < w and 0 <= y < h):
            raise RequestError(
                400, f"point ({x}, {y}) lies outside the {w}x{h} image (x in [0, {w}), y in [0, {h}))",
                f"{where}.points[{i}]",
            )
    if spec.box is not None:
        x1, y1, x2, y2 = spec.box
        if x1 < 0 or y1 < 0 or x2 > w or y2 > h:
            raise RequestError(400, f"box {spec.box} reaches outside the {w}x{h} image ([0, {w}] x [0, {h}])", f"{where}.box")
    if spec.mask_input_rle is not None:
        spec.mask_input = _decode_rle(spec.mask_input_rle, size, f"{where}.mask_input_rle")
    return spec


def _parse_points(value: Any, where: str) -> list[tuple[float, float, int]]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise RequestError(400, f"must be a list of [x, y, label], got {json_kind(value)}", where)
    if len(value) > MAX_POINTS:
        raise RequestError(400, f"{len(value)} points, above the limit of {MAX_POINTS}", where)
    points = []
    for i, point in enumerate(value):
        at = f"{where}[{i}]"
        if not isinstance(point, list) or len(point) != 3:
            raise RequestError(400, f"must be [x, y, label], got {point!r}", at)
        x, y = finite_number(point[0], f"{at}[0]"), finite_number(point[1], f"{at}[1]")
        label = point[2]
        # an int 0/1 only: true/false or 0.5 would be guesses about the client's intent
        if isinstance(label, bool) or label not in (0, 1) or not isinstance(label, int):
            raise RequestError(400, f"label must be 1 (add) or 0 (remove), got {label!r}", f"{at}[2]")
        points.append((x, y, int(label)))
    return points


def _parse_box(value: Any, where: str) -> list[float]:
    if not isinstance(value, list) or len(value) != 4:
        raise RequestError(400, f"must be [x1, y1, x2, y2], got {value!r}", where)
    x1, y1, x2, y2 = (finite_number(v, f"{where}[{k}]") for k, v in enumerate(value))
    if not (x1 < x2 and y1 < y2):
        raise RequestError(400, f"box {value} must have x1 < x2 and y1 < y2", where)
    return [x1, y1, x2, y2]


def _decode_rle(rle: dict, size: tuple[int, int], where: str) -> np.ndarray:
    from citrus_v.serve.rle import decode_untrusted_mask

    claimed = rle["size"]
    if not (isinstance(claimed, list) and len(claimed) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in claimed)):
        raise RequestError(400, f"size must be [H, W] integers, got {claimed!r}", f"{where}.size")
    if tuple(claimed) != tuple(size):
        raise RequestError(400, f"size {claimed} differs from the image's [H, W] = {list(size)}", f"{where}.size")
    try:
        return decode_untrusted_mask(rle, size)
    except ValueError as err:
        raise RequestError(400, f"cannot decode: {err}", f"{where}.counts") from None


