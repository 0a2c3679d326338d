"""Drawing a prediction on its image: semi-transparent masks, boxes, labels (PIL only)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from citrus_v.infer.types import Box, Mask

# distinct, colour-blind-friendly colours (Okabe-Ito), cycled per mask / box
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 159, 0),
    (86, 180, 233),
    (0, 158, 115),
    (240, 228, 66),
    (0, 114, 178),
    (213, 94, 0),
    (204, 121, 167),
)


def draw_overlay(image: np.ndarray, masks: Sequence[Mask], boxes: Sequence[Box], alpha: float = 0.45) -> np.ndarray:
    """(H, W, 3) uint8 with each mask blended in its colour at ``alpha``, boxes outlined and labelled.

    A box the segmenter tightened is drawn solid, and the box the model wrote (``text_bbox``) dashed
    in the same colour, so the reader sees both what the model said and what it was tightened to.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"draw_overlay: image must be (H, W, 3) uint8, got shape {image.shape} dtype {image.dtype}")
    out = image.astype(np.float32)
    corners = []  # where each mask's label goes
    for k, m in enumerate(masks):
        mask = m.mask  # read once: a LogitsMask makes it on every read
        if mask.shape != image.shape[:2]:
            raise ValueError(f"draw_overlay: mask {k} has shape {mask.shape}, the image is {image.shape[:2]}")
        colour = np.array(PALETTE[k % len(PALETTE)], dtype=np.float32)
        out[mask] = (1 - alpha) * out[mask] + alpha * colour
        corners.append(None)
        if m.label and mask.any():
            ys, xs = np.nonzero(mask)
            corners[-1] = (int(xs.min()), int(ys.min()))
    canvas = Image.fromarray(np.clip(out, 0, 255).round().astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    width = max(1, round(min(image.shape[:2]) / 200))  # visible on a 2000 px X-ray, not fat on 128 px
    for k, (m, corner) in enumerate(zip(masks, corners)):
        if corner is not None:
            draw.text(corner, m.label, fill=PALETTE[k % len(PALETTE)])
    for k, b in enumerate(boxes):
        colour = PALETTE[(k + len(masks)) % len(PALETTE)]
        if b.text_bbox is not None:
            dashed_rectangle(draw, b.text_bbox, colour, width=max(1, width // 2), dash=4 * width + 2)
        x1, y1, x2, y2 = (float(v) for v in b.bbox)
        draw.rectangle([min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)], outline=colour, width=width)
        if b.label:
            draw.text((min(x1, x2) + width + 1, min(y1, y2) + width + 1), b.label, fill=colour)
    return np.asarray(canvas)


def dashed_rectangle(draw: ImageDraw.ImageDraw, bbox: Sequence[float], colour, width: int = 1, dash: int = 6) -> None:
    """Outline [x1, y1, x2, y2] with dashes ``dash`` px long and gaps as long (PIL has no dashed line)."""
    x1, y1, x2, y2 = (float(v) for v in bbox)
    x1, x2, y1, y2 = min(x1, x2), max(x1, x2), min(y1, y2), max(y1, y2)
    for (ax, ay), (bx, by) in (((x1, y1), (x2, y1)), ((x2, y1), (x2, y2)), ((x2, y2), (x1, y2)), ((x1, y2), (x1, y1))):
        length = max(abs(bx - ax), abs(by - ay))
        start = 0.0
        while start < length:
            end = min(start + dash, length)
            f0, f1 = start / length, end / length
            draw.line([(ax + (bx - ax) * f0, ay + (by - ay) * f0), (ax + (bx - ax) * f1, ay + (by - ay) * f1)], fill=colour, width=width)
            start += 2 * dash


def save_mask_png(mask: np.ndarray, path: str | Path) -> Path:
    """A bool (H, W) mask as an 8-bit PNG with 0 / 255."""
    if mask.ndim != 2:
        raise ValueError(f"save_mask_png: mask must be (H, W), got shape {mask.shape}")
    path = Path(path)
    Image.fromarray(mask.astype(np.uint8) * 255).save(path)
    return path
