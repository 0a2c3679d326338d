"""Tighten the language model's boxes with the model's own segmenter.

The MLLM writes boxes as text coordinates, one token per value, read off a 224 px image in
28 px tokens: the box is usually ON the finding but loose or shifted (on our suite's val split,
87% of first boxes overlap the truth by IoU >= 0.3, 53% by >= 0.5). The segmenter sees the
image at its own resolution and, prompted with that box (SAM's box prompt, the one prompt
MedSAM / LiteMedSAM were trained on), outlines what the box frames. The outline's bounding box
replaces the text box; the text box is kept in ``Box.text_bbox``, with the segmenter's
predicted IoU in ``Box.score``.

This is a step after the published model (which returns its text coordinates as they are):
``Predictor(tighten_boxes=False)`` / ``--text-boxes`` turns it off, and ``citrus-v eval``
scores both (``det_p50`` on the returned boxes, ``det_p50_text`` on the text boxes).

A box is left as written when it has no area after clipping to the image, or when the
segmenter's mask inside the image is empty.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from citrus_v.data.boxes import clip_box as clip_to_image
from citrus_v.data.phantoms.common import bbox_of
from citrus_v.infer.masks import logits_to_masks
from citrus_v.infer.types import Box
from citrus_v.model.prompting import decode_with_prompts, to_sam_coords
from citrus_v.model.segmenter import Segmenter, SegmenterFeatures


def clip_box(bbox: Sequence[float], orig_hw: tuple[int, int]) -> list[float] | None:
    """``bbox`` clipped to the (H, W) image; None when nothing of positive area is left."""
    x1, y1, x2, y2 = clip_to_image(bbox, orig_hw)
    return [x1, y1, x2, y2] if x2 > x1 and y2 > y1 else None


@torch.no_grad()
def tighten_boxes(
    segmenter: Segmenter, features: SegmenterFeatures, boxes: Sequence[Box], orig_hw: tuple[int, int], sam_size: int
) -> None:
    """Replace each box's ``bbox`` (original pixels of ONE image whose features are given) by the
    bounding box of the segmenter's mask for it, in place; ``text_bbox`` keeps the written one."""
    for box in boxes:
        clipped = clip_box(box.bbox, orig_hw)
        if clipped is None:
            continue
        box_sam = torch.from_numpy(to_sam_coords([clipped[:2], clipped[2:]], orig_hw, sam_size)).float().reshape(4)
        logits, iou = decode_with_prompts(segmenter, features, box_sam=box_sam, multimask=False)  # (1, 256, 256), (1,)
        outline = logits_to_masks(logits, orig_hw)[0]  # (H, W) bool
        if not outline.any():
            continue
        tight = [float(v) for v in bbox_of(outline)]  # one past the last pixel, as the suite's boxes
        box.text_bbox, box.bbox, box.score = list(box.bbox), tight, float(iou[0])
