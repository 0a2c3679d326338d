"""Segmentation records from an image and its binary mask, whole or cut into a grid of tiles.

Large pathology and fundus images (MoNuSeg 1000x1000, DRIVE 565x584) hold structures a few pixels
wide; the model sees at most 224x224 pixels, so the loaders cut them into a ``grid x grid`` of tiles.
The tiles of one image always share its split (the loader sets ``meta["split"]`` per image).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from citrus_v.data.schema import IMAGE_PLACEHOLDER, SEG_TOKEN, Message, Record
from citrus_v.data.sources.common import SourceError, save_array_png

SEG_ANSWER = f"Sure, it is {SEG_TOKEN}."


def segmentation_record(image: Path, mask: Path, question: str, modality: str, meta: dict[str, Any]) -> Record:
    """One image, one mask, "<question>" -> "Sure, it is [SEG].": every real segmentation source's record."""
    return Record(
        messages=[Message("user", f"{IMAGE_PLACEHOLDER}{question}"), Message("assistant", SEG_ANSWER)],
        images=[str(image)], masks=[str(mask)], task="segmentation", modality=modality, meta=meta,
    )


def read_rgb_and_mask(image: Path, mask: Path) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) uint8 image and (H, W) bool mask (grey >= 128); sizes must agree."""
    from PIL import Image

    try:
        with Image.open(image) as im:
            rgb = np.asarray(im.convert("RGB"))  # (H, W, 3)
        with Image.open(mask) as im:
            grey = np.asarray(im.convert("L"))  # (H, W)
    except OSError as err:
        raise SourceError(image, f"unreadable image or mask ({err})") from None
    if grey.shape != rgb.shape[:2]:
        raise SourceError(mask, f"mask is {grey.shape[::-1]} but its image is {rgb.shape[1::-1]} (width, height)")
    return rgb, grey >= 128


def grid_tiles(h: int, w: int, grid: int) -> list[tuple[int, int, int, int]]:
    """(y0, y1, x0, x1) of a ``grid x grid`` cut; edges split as evenly as integers allow."""
    if grid < 1:
        raise ValueError(f"grid must be >= 1, got {grid}")
    ys, xs = np.linspace(0, h, grid + 1).round().astype(int), np.linspace(0, w, grid + 1).round().astype(int)
    return [(int(ys[i]), int(ys[i + 1]), int(xs[j]), int(xs[j + 1])) for i in range(grid) for j in range(grid)]


def tiled_seg_records(
    rgb: np.ndarray,
    mask: np.ndarray,
    *,
    stem: str,
    question: str,
    modality: str,
    meta: dict[str, Any],
    image_dir: Path,
    grid: int,
    skipped: Counter[str] | None = None,
) -> list[Record]:
    """One segmentation record per tile that holds some foreground; empty tiles are counted in ``skipped``."""
    records = []
    for k, (y0, y1, x0, x1) in enumerate(grid_tiles(*mask.shape, grid)):
        tile_mask = mask[y0:y1, x0:x1]  # (h, w) bool
        if not tile_mask.any():
            if skipped is not None:
                skipped["tile with an empty mask"] += 1
            continue
        name = stem if grid == 1 else f"{stem}_t{k:02d}"
        img_path = save_array_png(rgb[y0:y1, x0:x1], image_dir / f"{name}.png")
        mask_path = save_array_png(tile_mask.astype(np.uint8) * 255, image_dir / f"{name}_mask.png")
        records.append(segmentation_record(img_path, mask_path, question, modality,
                                           {**meta, "tile": [y0, y1, x0, x1]} if grid > 1 else dict(meta)))
    return records
