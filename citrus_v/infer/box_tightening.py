"""Tighten the language model's boxes with the model's own segmenter.

The MLLM writes boxes as text coordinates, one token per value, read off a 224 px image in
28 px tokens: the box is usually ON the finding but loose or shifted (on our suite's val split,
87% of first boxes overlap the truth by IoU >= 0.3, 53% by >= 0.5). The segmenter sees the
image at its own resolution and, prompted with that box (SAM's box prompt, the one prompt
MedSAM / LiteMedSAM were trained on), outlines what the box frames. The outline's bounding box
replaces the text box; the text box is kept in ``Box.text_bbox``, with the segmenter's
predicted IoU in ``Box.score`` (clipped to [0, 1]: the head is an unbounded regression; issue 23 saw 2.06 shown).

This is a step after the published model (which returns its text coordinates as they are):
``Predictor(tighten_boxes=False)`` / ``--text-boxes`` turns it off, and ``citrus-v eval``
scores both (``det_p50`` on the returned boxes, ``det_p50_text`` on the text boxes).

A box is left as written when it has no area after clipping to the image, or when the
segmenter's mask inside the image is empty.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from citrus_v.data.boxes import bbox_of, clip_box as clip_to_image
from citrus_v.infer.session import ImageSession
from citrus_v.infer.types import Box, iou_score


def clip_box(bbox: Sequence[float], orig_hw: tuple[int, int]) -> list[float] | None:
    """``bbox`` clipped to the (H, W) image; None when nothing of positive area is left."""
    x1, y1, x2, y2 = clip_to_image(bbox, orig_hw)
    return [x1, y1, x2, y2] if x2 > x1 and y2 > y1 else None


@torch.no_grad()
def tighten_boxes(session: ImageSession, boxes: Sequence[Box]) -> None:
    """Replace each box's ``bbox`` (original pixels of the session's image) by the bounding box of
    the segmenter's mask for it, in place; ``text_bbox`` keeps the written one. The session's
    features are reused (encoded here only if nothing encoded them before)."""
    orig_hw = session.transforms.orig_hw
    for box in boxes:
        clipped = clip_box(box.bbox, orig_hw)
        if clipped is None:
            continue
        logits, iou = session.masks_from_prompts(box=clipped, multimask=False)  # (1, 256, 256), (1,)
        outline = session.transforms.masks_to_original(logits)[0]  # (H, W) bool
        if not outline.any():
            continue
        tight = [float(v) for v in bbox_of(outline)]  # one past the last pixel, as the suite's boxes
        box.text_bbox, box.bbox, box.score = list(box.bbox), tight, iou_score(iou[0])
