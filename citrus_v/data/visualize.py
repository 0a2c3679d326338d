"""Overlays on an image (masks filled: `overlay`; edges only: `outline`), saved as PNG (`data show`, `predict`)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

# distinct, colour-blind-friendly-ish colours (Okabe-Ito), cycled per object
PALETTE = ((230, 159, 0), (86, 180, 233), (0, 158, 115), (240, 228, 66), (0, 114, 178), (213, 94, 0), (204, 121, 167))


def overlay(
    image: np.ndarray,
    *,
    boxes: Sequence[Sequence[float]] = (),
    labels: Sequence[str] = (),
    masks: Sequence[np.ndarray] = (),
    alpha: float = 0.45,
) -> np.ndarray:
    """Draw ``masks`` (each (H, W) bool, same size as the image) then ``boxes`` ([x1, y1, x2, y2] pixels).

    ``image``: (H, W, 3) uint8. Returns a new (H, W, 3) uint8 array; the input is not changed.
    """
    from PIL import Image, ImageDraw

    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    if labels and len(labels) != len(boxes):
        raise ValueError(f"{len(labels)} labels for {len(boxes)} boxes")
    out = image.astype(np.float32)
    for n, m in enumerate(masks):
        m = np.asarray(m).astype(bool)
        if m.shape != image.shape[:2]:
            raise ValueError(f"mask {n} has shape {m.shape}, image is {image.shape[:2]}")
        color = np.array(PALETTE[n % len(PALETTE)], np.float32)
        out[m] = (1 - alpha) * out[m] + alpha * color
    pil = Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    width = max(1, round(min(image.shape[:2]) / 200))  # visible on both 128 px and 2k px images
    for n, b in enumerate(boxes):
        color = PALETTE[n % len(PALETTE)]
        x1, y1, x2, y2 = (float(v) for v in b)
        draw.rectangle([x1, y1, x2, y2], outline=color, width=width)
        if labels and labels[n]:
            draw.text((x1 + 2, max(0.0, y1 - 12)), labels[n], fill=color)
    return np.asarray(pil)


def load_mask(path: str | Path, size: tuple[int, int]) -> np.ndarray:
    """A mask file (PNG/NIfTI slice/...) as (H, W) bool; resized (nearest) to ``size`` = (H, W) if needed."""
    from PIL import Image

    from citrus_v.data.medical_io import MedicalIOError

    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("L"))
    except (OSError, ValueError) as err:
        raise MedicalIOError(path, f"mask cannot be read ({err})") from None
    if arr.shape != size:
        arr = np.asarray(Image.fromarray(arr).resize((size[1], size[0]), Image.NEAREST))
    return arr > 0


def save_png(array: np.ndarray, path: str | Path) -> Path:
    from PIL import Image

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(p)
    return p


def outline(
    image: np.ndarray,
    *,
    masks: Sequence[np.ndarray] = (),
    boxes: Sequence[Sequence[float]] = (),
    color: tuple[int, int, int] = (255, 255, 255),
    width: int = 1,
) -> np.ndarray:
    """Draw the edge of each mask (its inner ``width`` pixels) and each box's outline in ``color``:
    a reference beside :func:`overlay`'s filled prediction, the pixels inside left visible.

    ``image``: (H, W, 3) uint8; masks (H, W) bool; boxes [x1, y1, x2, y2] pixels. Returns a new array.
    """
    from PIL import Image, ImageDraw
    from scipy.ndimage import binary_erosion

    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    if width < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    out = image.copy()
    for n, m in enumerate(masks):
        m = np.asarray(m).astype(bool)
        if m.shape != image.shape[:2]:
            raise ValueError(f"mask {n} has shape {m.shape}, image is {image.shape[:2]}")
        # border_value=0: a mask touching the image border gets its edge drawn there too
        out[m & ~binary_erosion(m, iterations=width, border_value=0)] = color
    if len(boxes):
        pil = Image.fromarray(out)
        draw = ImageDraw.Draw(pil)
        for b in boxes:
            x1, y1, x2, y2 = (float(v) for v in b)
            draw.rectangle([min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)], outline=color, width=width)
        out = np.asarray(pil).copy()
    return out
