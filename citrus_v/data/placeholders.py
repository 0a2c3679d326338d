"""Box and reference placeholders of a record, filled from its ``objects``: two renderings.

``"ours"`` (the default for our model folders): ``<boxes>`` in an assistant message becomes the fenced
one-line JSON list of every box with its ref; each ``<ref-object>`` becomes the next ref as written; each
``<bbox>`` in an assistant message becomes the next box as ``[x1, y1, x2, y2]``; a ``<bbox>`` in a user
turn is left as written.

``"published"`` (the default for published-layout folders and the 8b preset): the text the released
Citrus-V 8B was trained on, from the published template (an ms-swift fork,
swift/llm/template/template/citrus.py, and its base class swift/llm/template/base.py):

* boxes are first mapped to the smart-resized image's pixels, ``round(x / width * resized_width)``
  (``round(x * resized_width)`` for ``bbox_type`` ``norm1``), Python rounding (base.py:186-206);
* ``<ref-object>``, in any turn, becomes ``<|object_ref_start|>ref<|object_ref_end|>`` (citrus.py:140-141);
* ``<bbox>``, in any turn: with one ``<bbox>`` in the whole conversation it becomes the fenced list of
  that one box, labelled by the first ref (``object`` without refs) (citrus.py:172-195); with several,
  the FIRST becomes the fenced list of ALL the record's boxes, each labelled by the first ref, and the
  others become nothing (citrus.py:197-222, 245-284);
* the list is ``[``, one ``json.dumps(obj, ensure_ascii=False, separators=(",", ": "))`` per line, ``]``,
  inside a ```` ```json ```` fence: ``{"bbox_2d": [12,34,56,78],"label": "liver"}``;
* our ``<boxes>`` placeholder (not in the published template) becomes the same layout, one label per box.

Not reproduced: the published single-box path scales the already-resized box a second time by
resized/original (citrus.py:143-164, ``int(b * scale)`` then a clamp), so a single box the 8B saw in
training is shrunk (or grown) by that ratio squared; ours writes the box once-scaled. Arithmetic in
docs/published_checkpoint.md.

A ``<bbox>`` in a message that also holds ``</bbox>`` is Citrus' literal box tag and is left alone
in both renderings. A placeholder without objects, or more ``<ref-object>``/``<bbox>`` placeholders
than refs/boxes, is a ``ValueError`` naming the counts (the published code would leave the placeholder
in the text; a training record should not).
"""

from __future__ import annotations

import json
import re
from typing import Sequence

from citrus_v.data.boxes import render_box_list, render_boxes, round_box, to_resized
from citrus_v.data.schema import Message, Objects

BOXES_PLACEHOLDER = "<boxes>"
REF_PLACEHOLDER = "<ref-object>"
SWIFT_BBOX_PLACEHOLDER = "<bbox>"
TEMPLATE_STYLES = ("ours", "published")
# model config names that were trained on the published text: the released folder and the 8b preset
PUBLISHED_CONFIG_NAMES = ("published", "8b")
REF_START, REF_END = "<|object_ref_start|>", "<|object_ref_end|>"
PUBLISHED_NO_LABEL = "object"  # the published label of a box in a record without refs

_SWIFT_BBOX = re.compile(re.escape(SWIFT_BBOX_PLACEHOLDER))


def template_style_for(config_name: str, requested: str = "auto") -> str:
    """``requested`` when it names a style; ``"auto"``: published for a model trained on the published
    text (``PUBLISHED_CONFIG_NAMES``), ours otherwise."""
    if requested == "auto":
        return "published" if config_name in PUBLISHED_CONFIG_NAMES else "ours"
    if requested not in TEMPLATE_STYLES:
        raise ValueError(f"template style {requested!r} is not 'auto' or one of {TEMPLATE_STYLES}")
    return requested


def is_bbox_placeholder(m: Message, style: str = "ours") -> bool:
    """Whether ``m`` holds ms-swift ``<bbox>`` placeholders: assistant turns only in ours, any turn in
    the published rendering; never a message with Citrus' literal ``</bbox>``."""
    if SWIFT_BBOX_PLACEHOLDER not in m.content or "</bbox>" in m.content:
        return False
    return style == "published" or m.role == "assistant"


def uses_placeholders(messages: Sequence[Message], style: str = "ours") -> bool:
    return any(BOXES_PLACEHOLDER in m.content or REF_PLACEHOLDER in m.content or is_bbox_placeholder(m, style)
               for m in messages)


def fill_box_placeholders(
    messages: Sequence[Message],
    objects: Objects | None,
    orig_hw: Sequence[tuple[int, int]],
    resized_hw: Sequence[tuple[int, int]],
    style: str = "ours",
) -> list[Message]:
    """Replace ``<boxes>``, ``<ref-object>`` and ms-swift ``<bbox>`` with the record's objects, in the
    ``style`` rendering (module docstring). Boxes go from the first image's original pixels (or norm1
    fractions) to its resized pixels."""
    if style not in TEMPLATE_STYLES:
        raise ValueError(f"template style {style!r} is not one of {TEMPLATE_STYLES}")
    if not uses_placeholders(messages, style):
        return list(messages)
    if objects is None or not objects.bbox:
        raise ValueError("messages use box placeholders (<boxes>, <ref-object>, <bbox>) but the record has no objects")
    if not orig_hw:
        raise ValueError("box placeholders need an image: boxes are written in the resized image's pixels")
    if style == "published":
        return _fill_published(messages, objects, published_boxes(objects, orig_hw[0], resized_hw[0]))
    oh, rh = orig_hw[0], resized_hw[0]
    boxes = [round_box(to_resized(b, oh, rh), rh) for b in objects.pixels(oh)]
    return _fill_ours(messages, objects, boxes)


def _next_refs(content: str, refs: list[str], start: int, wrap: bool) -> tuple[str, int]:
    """``content`` with each ``<ref-object>`` replaced by the next ref; returns the next ref index."""
    while REF_PLACEHOLDER in content:
        if start >= len(refs):
            raise ValueError(f"more '<ref-object>' placeholders than the {len(refs)} refs in objects")
        ref = f"{REF_START}{refs[start]}{REF_END}" if wrap else refs[start]
        content = content.replace(REF_PLACEHOLDER, ref, 1)
        start += 1
    return content, start


def _fill_ours(messages: Sequence[Message], objects: Objects, boxes: list[tuple[int, int, int, int]]) -> list[Message]:
    labels = objects.labels()
    next_ref, next_box = 0, 0
    out = []
    for m in messages:
        content = m.content
        if m.role == "assistant" and BOXES_PLACEHOLDER in content:
            content = content.replace(BOXES_PLACEHOLDER, render_boxes(list(zip(boxes, labels))))
        content, next_ref = _next_refs(content, list(objects.ref), next_ref, wrap=False)
        if is_bbox_placeholder(m, "ours"):
            n = content.count(SWIFT_BBOX_PLACEHOLDER)
            if next_box + n > len(boxes):
                raise ValueError(f"{next_box + n} '<bbox>' placeholders but {len(boxes)} boxes in objects")
            chunks = _SWIFT_BBOX.split(content)
            content = chunks[0] + "".join(render_box_list(boxes[next_box + j]) + c for j, c in enumerate(chunks[1:]))
            next_box += n
        out.append(Message(m.role, content))
    return out


# --------------------------------------------------------------------------- the published rendering


def published_boxes(objects: Objects, orig_hw: tuple[int, int], resized_hw: tuple[int, int]) -> list[list[int]]:
    """The record's boxes in resized pixels as the published template computes them: each coordinate
    divided by the original side (1 for norm1), times the resized side, rounded (ties to even)."""
    (oh, ow), (rh, rw) = orig_hw, resized_hw
    w, h = (1, 1) if objects.bbox_type == "norm1" else (ow, oh)
    return [[int(round(b[0] / w * rw)), int(round(b[1] / h * rh)), int(round(b[2] / w * rw)), int(round(b[3] / h * rh))]
            for b in objects.bbox]


def render_published_boxes(boxes: Sequence[Sequence[int]], labels: Sequence[str]) -> str:
    """The published fenced list: one JSON object per line, ``json.dumps`` with ``(",", ": ")``."""
    lines = [json.dumps({"bbox_2d": list(b), "label": lab}, ensure_ascii=False, separators=(",", ": "))
             for b, lab in zip(boxes, labels)]
    return "```json\n[\n" + ",\n".join(lines) + "\n]\n```"


def _fill_published(messages: Sequence[Message], objects: Objects, boxes: list[list[int]]) -> list[Message]:
    first = objects.ref[0] if objects.ref else PUBLISHED_NO_LABEL
    n_bbox = sum(m.content.count(SWIFT_BBOX_PLACEHOLDER) for m in messages if is_bbox_placeholder(m, "published"))
    if n_bbox > len(boxes):
        raise ValueError(f"{n_bbox} '<bbox>' placeholders but {len(boxes)} boxes in objects")
    # one <bbox>: that one box; several: all boxes at the first placeholder, the rest empty (as published)
    fills = [render_published_boxes(boxes[:1] if n_bbox == 1 else boxes, [first] * len(boxes))] + [""] * (n_bbox - 1)
    next_ref, next_box = 0, 0
    out = []
    for m in messages:
        content = m.content
        if m.role == "assistant" and BOXES_PLACEHOLDER in content:
            content = content.replace(BOXES_PLACEHOLDER, render_published_boxes(boxes, objects.labels()))
        content, next_ref = _next_refs(content, list(objects.ref), next_ref, wrap=True)
        if is_bbox_placeholder(m, "published"):
            chunks = _SWIFT_BBOX.split(content)
            content = chunks[0] + "".join(fills[next_box + j] + c for j, c in enumerate(chunks[1:]))
            next_box += len(chunks) - 1
        out.append(Message(m.role, content))
    return out
