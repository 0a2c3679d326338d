"""Boxes in text: render, parse, and map between original and resized pixels.

Records keep boxes in ORIGINAL image pixels. The model reads and writes them as integer
pixels of the smart-resized image (Qwen2.5-VL's absolute coordinates), in the published form::

    ```json
    [{"bbox_2d": [x1, y1, x2, y2], "label": "liver"}]
    ```

Parsing also accepts the legacy Qwen2-VL form
``<|object_ref_start|>liver<|object_ref_end|><|box_start|>(x1,y1),(x2,y2)<|box_end|>``
(absolute, or on a 0..1000 grid with ``legacy_normalized=True``), Citrus' own
``<bbox>[x1, y1, x2, y2]</bbox>``, and the citation forms the published model writes in reports
(its demo's display code, demo/display_utils.py:11-13, reads these three)::

    {"Part": "heart", "bbox": "[120, 200, 340, 400]"}
    'right_lung' with bbox [127, 131, 485, 720]
    lung_lower_lobe_right bbox [126, 420, 485, 722]

>>> to_resized((10, 20, 30, 40), orig_hw=(100, 200), resized_hw=(56, 112))
(5.6, 11.2, 16.8, 22.4)
>>> to_original((5.6, 11.2, 16.8, 22.4), orig_hw=(100, 200), resized_hw=(56, 112))
(10.0, 20.0, 30.0, 40.0)
>>> parse_boxes(render_boxes([((1, 2, 3, 4), "liver")]))
[((1.0, 2.0, 3.0, 4.0), 'liver')]
"""

from __future__ import annotations

import json
import re
from typing import Any, Sequence

import numpy as np

Box = tuple[float, float, float, float]  # x1, y1, x2, y2
HW = tuple[int, int]  # height, width

LEGACY_GRID = 1000  # Qwen2-VL's legacy box coordinates are on a 0..1000 grid


def _check_box(box: Sequence[float], where: str = "box") -> Box:
    if len(box) != 4:
        raise ValueError(f"{where} must be 4 numbers [x1, y1, x2, y2], got {list(box)!r}")
    x1, y1, x2, y2 = (float(v) for v in box)
    return x1, y1, x2, y2


def _check_hw(hw: Sequence[int], name: str) -> tuple[float, float]:
    if len(hw) != 2 or hw[0] <= 0 or hw[1] <= 0:
        raise ValueError(f"{name} must be (height, width) > 0, got {tuple(hw)!r}")
    return float(hw[0]), float(hw[1])


def to_resized(box: Sequence[float], orig_hw: HW, resized_hw: HW) -> Box:
    """Scale a box from original to resized pixels (x by width ratio, y by height ratio). Floats."""
    x1, y1, x2, y2 = _check_box(box)
    (oh, ow), (rh, rw) = _check_hw(orig_hw, "orig_hw"), _check_hw(resized_hw, "resized_hw")
    # multiply before dividing: exact whenever the result is representable (fewer 1e-16 residues)
    return x1 * rw / ow, y1 * rh / oh, x2 * rw / ow, y2 * rh / oh


def to_original(box: Sequence[float], orig_hw: HW, resized_hw: HW) -> Box:
    """Inverse of :func:`to_resized`: resized pixels back to original pixels. Floats."""
    return to_resized(box, resized_hw, orig_hw)


def clip_box(box: Sequence[float], hw: Sequence[float]) -> Box:
    """Each coordinate clamped to the image, x to [0, width] and y to [0, height] (``hw`` = (height,
    width)); the order of the corners is kept, so a box may come out with no area."""
    x1, y1, x2, y2 = _check_box(box)
    h, w = float(hw[0]), float(hw[1])
    return min(max(x1, 0.0), w), min(max(y1, 0.0), h), min(max(x2, 0.0), w), min(max(y2, 0.0), h)


def bbox_of(mask: np.ndarray) -> list[int]:
    """[x1, y1, x2, y2] of a non-empty mask; x2/y2 are one past the last pixel (COCO-style
    continuous box: width = x2 - x1 equals the pixel count across)."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        raise ValueError("bbox_of: the mask is empty")
    return [int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1]


def round_box(box: Sequence[float], hw: HW | None = None) -> tuple[int, int, int, int]:
    """Round to integer pixels (Python's ``round``: ties to even), clipped to ``hw`` (height, width) if given."""
    out = [int(round(v)) for v in _check_box(box)]
    if hw is not None:
        out = [int(v) for v in clip_box(out, (int(hw[0]), int(hw[1])))]
    return out[0], out[1], out[2], out[3]


def from_legacy_grid(box: Sequence[float], hw: HW) -> Box:
    """0..1000 grid coordinates -> pixels of an image of size ``hw``."""
    x1, y1, x2, y2 = _check_box(box)
    h, w = _check_hw(hw, "hw")
    return x1 * w / LEGACY_GRID, y1 * h / LEGACY_GRID, x2 * w / LEGACY_GRID, y2 * h / LEGACY_GRID


def to_legacy_grid(box: Sequence[float], hw: HW) -> tuple[int, int, int, int]:
    """Pixels of an image of size ``hw`` -> integer 0..1000 grid (Qwen2-VL's legacy form)."""
    x1, y1, x2, y2 = _check_box(box)
    h, w = _check_hw(hw, "hw")
    return round_box((x1 * LEGACY_GRID / w, y1 * LEGACY_GRID / h, x2 * LEGACY_GRID / w, y2 * LEGACY_GRID / h))


# --------------------------------------------------------------------------- render


def render_boxes(boxes: Sequence[tuple[Sequence[float], str]]) -> str:
    """The published answer form: a fenced JSON list, one object per box, integer coordinates.

    Coordinates are rounded here; map them to resized pixels first (:func:`to_resized`).
    """
    items = []
    for i, (box, label) in enumerate(boxes):
        coords = list(round_box(_check_box(box, f"boxes[{i}]")))
        # Written by hand (not json.dumps of the list) to keep the published one-line spacing.
        items.append('{"bbox_2d": ' + json.dumps(coords) + ', "label": ' + json.dumps(str(label), ensure_ascii=False) + "}")
    return "```json\n[" + ", ".join(items) + "]\n```"


def render_box_list(box: Sequence[float]) -> str:
    """One box as ``[x1, y1, x2, y2]`` integers (what an ms-swift ``<bbox>`` placeholder becomes)."""
    return json.dumps(list(round_box(_check_box(box))))


def render_legacy_box(box: Sequence[float], label: str | None = None) -> str:
    """Qwen2-VL's legacy form with the coordinates as given (already absolute or already 0..1000)."""
    x1, y1, x2, y2 = round_box(box)
    ref = f"<|object_ref_start|>{label}<|object_ref_end|>" if label else ""
    return f"{ref}<|box_start|>({x1},{y1}),({x2},{y2})<|box_end|>"


# --------------------------------------------------------------------------- parse

_NUM = r"-?\d+(?:\.\d+)?"
_FENCE = re.compile(r"```(?:json)?\s*(.*?)(?:```|$)", re.S)
_LEGACY = re.compile(
    r"(?:<\|object_ref_start\|>(?P<label>.*?)<\|object_ref_end\|>\s*)?"
    rf"<\|box_start\|>\s*\(\s*(?P<x1>{_NUM})\s*,\s*(?P<y1>{_NUM})\s*\)\s*,\s*\(\s*(?P<x2>{_NUM})\s*,\s*(?P<y2>{_NUM})\s*\)\s*<\|box_end\|>",
    re.S,
)
_BBOX_TAG = re.compile(rf"<bbox>\s*\[\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*\]\s*</bbox>")
# One {...} object without nested braces: the fallback when the list as a whole is not JSON.
_OBJECT = re.compile(r"\{[^{}]*\}")


# A report citation: a label (quoted, or one snake_case word) then "bbox" (or "with bbox") then the list.
_NAMED = re.compile(
    rf"""(?P<label>'[^'\n]+'|"[^"\n]+"|\b[A-Za-z][A-Za-z0-9_]*)\s*(?:with\s+)?bbox\s*:?\s*"""
    rf"\[\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*\]",
    re.I,
)
_LIST4 = re.compile(rf"^\s*\[\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*\]\s*$")
# full-width punctuation a report written in Chinese may carry around a citation, read as its ASCII form
# (one character for one, so a match's span is the same in the original text, where its label is read)
_FULL_WIDTH = str.maketrans({"\u201c": '"', "\u201d": '"', "\u2018": "'", "\u2019": "'", "\uff08": "(", "\uff09": ")",
                             "\u3010": "[", "\u3011": "]", "\uff0c": ",", "\uff1a": ":", "\u3001": ","})


def _box_from_obj(obj: Any) -> tuple[Box, str] | None:
    if not isinstance(obj, dict):
        return None
    coords = obj.get("bbox_2d", obj.get("bbox"))
    if isinstance(coords, str):  # the report form writes the list as a string: "bbox": "[x1, y1, x2, y2]"
        m = _LIST4.match(coords)
        coords = [float(v) for v in m.groups()] if m else None
    if not isinstance(coords, (list, tuple)) or len(coords) != 4:
        return None
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in coords):
        return None
    label = next((obj[k] for k in ("label", "Part", "part") if k in obj), "")
    return _check_box(coords), label if isinstance(label, str) else str(label)


def _named_boxes(text: str) -> list[tuple[Box, str]]:
    """``'right_lung' with bbox [..]`` and ``lung_lower_lobe_right bbox [..]`` citations."""
    out = []
    for m in _NAMED.finditer(text.translate(_FULL_WIDTH)):
        label = text[m.start("label"):m.end("label")].strip("'\"\u2018\u2019\u201c\u201d")
        out.append((_check_box(m.groups()[1:]), "" if label.lower() == "with" else label))
    return out


def _parse_json_boxes(chunk: str) -> list[tuple[Box, str]]:
    chunk = chunk.strip()
    try:
        data = json.loads(chunk)
    except (json.JSONDecodeError, ValueError):
        data = None
    if data is not None:
        items = data if isinstance(data, list) else [data]
        return [b for b in (_box_from_obj(o) for o in items) if b is not None]
    # Bad or truncated JSON (e.g. generation stopped mid-list): keep the objects that parse.
    out = []
    for m in _OBJECT.finditer(chunk):
        try:
            b = _box_from_obj(json.loads(m.group(0)))
        except (json.JSONDecodeError, ValueError):
            continue
        if b is not None:
            out.append(b)
    return out


def parse_boxes(text: str, *, legacy_normalized: bool = False, image_hw: HW | None = None) -> list[tuple[Box, str]]:
    """All boxes in a model answer, as ``[(x1, y1, x2, y2), label]`` in the answer's own pixels.

    Reads fenced JSON (or bare JSON objects with ``bbox_2d`` or ``bbox``, whose list may be written
    as a string, labelled by ``label`` or ``Part``), then the legacy ``<|box_start|>`` form, then
    ``<bbox>[...]</bbox>``, then ``label with bbox [...]`` / ``label bbox [...]``, in that order. Never raises on bad text:
    what does not parse is left out. Legacy boxes on the 0..1000 grid need
    ``legacy_normalized=True`` and the ``image_hw`` they refer to (usually the resized size).
    """
    if legacy_normalized and image_hw is None:
        raise ValueError("legacy_normalized=True needs image_hw=(height, width) to map the 0..1000 grid to pixels")
    out: list[tuple[Box, str]] = []
    fenced = [m.group(1) for m in _FENCE.finditer(text)]
    if fenced:
        for chunk in fenced:
            out.extend(_parse_json_boxes(chunk))
    elif '"bbox_2d"' in text or '"bbox"' in text:
        out.extend(_parse_json_boxes(text))  # bare JSON, or objects inside prose
    for m in _LEGACY.finditer(text):
        box = _check_box([m.group(k) for k in ("x1", "y1", "x2", "y2")])
        if legacy_normalized:
            assert image_hw is not None
            box = from_legacy_grid(box, image_hw)
        out.append((box, (m.group("label") or "").strip()))
    for m in _BBOX_TAG.finditer(text):
        out.append((_check_box(m.groups()), ""))
    out.extend(_named_boxes(text))
    return out
