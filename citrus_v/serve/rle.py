"""Masks and boxes as JSON: COCO RLE (the published server's ``seg_masks_rle``) and clamped boxes.

pycocotools does the run-length coding; this module only pins the layout (Fortran order, uint8)
and turns bytes into str so the result is valid JSON.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
from pycocotools import mask as mask_utils

from citrus_v.data.boxes import clip_box


def encode_mask(mask: np.ndarray) -> dict:
    """A boolean (H, W) mask -> ``{"size": [H, W], "counts": str}`` (COCO compressed RLE).

    >>> encode_mask(np.array([[1, 0], [1, 1]], dtype=bool))
    {'size': [2, 2], 'counts': '021O'}
    """
    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise ValueError(f"mask: expected a 2-D (H, W) array, got shape {arr.shape}")
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"mask: empty shape {arr.shape}")
    # pycocotools reads column-major uint8 (H, W, N); one mask -> N=1
    # (a bool mask is viewed as uint8, not copied: the column-major copy is the only full-size one)
    binary = arr if arr.dtype == bool else arr != 0
    fortran = np.asfortranarray(binary.view(np.uint8)[:, :, None])
    rle = mask_utils.encode(fortran)[0]
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


GRID = 256  # the segmenter's mask grid: what the published server encodes


def mask_grid(mask: np.ndarray, low_res: np.ndarray | None = None) -> np.ndarray:
    """The (256, 256) bool mask the published server sends: the segmenter's own grid (``low_res``,
    logits > 0 = sigmoid > 0.5) when known, else ``mask`` (H, W) resized to 256x256 by nearest neighbour."""
    if low_res is not None:
        grid = np.asarray(low_res, dtype=bool)
        if grid.shape != (GRID, GRID):
            raise ValueError(f"low_res: expected shape ({GRID}, {GRID}), got {grid.shape}")
        return grid
    arr = np.asarray(mask, dtype=bool)
    if arr.ndim != 2 or min(arr.shape) < 1:
        raise ValueError(f"mask: expected a non-empty (H, W) array, got shape {arr.shape}")
    centres = 2 * np.arange(GRID) + 1  # each grid cell's centre, in half cells
    rows = centres * arr.shape[0] // (2 * GRID)  # the source row under each grid row's centre
    cols = centres * arr.shape[1] // (2 * GRID)
    return arr[rows][:, cols]


def decode_mask(rle: dict) -> np.ndarray:
    """The inverse of :func:`encode_mask`: ``{"size", "counts"}`` -> bool (H, W)."""
    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        raise ValueError("rle: expected a dict with 'size' and 'counts'")
    counts = rle["counts"]
    coco = {"size": [int(v) for v in rle["size"]], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    with warnings.catch_warnings():
        # pycocotools' numpy-2 DeprecationWarning about __array__(copy=...) is theirs, not the caller's
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_utils.decode(coco).astype(bool)


def encode_box(bbox: Sequence[float], image_size: tuple[int, int] | None = None) -> list[float]:
    """One ``[x1, y1, x2, y2]`` in original pixels -> JSON-safe floats (2 decimals), ordered and clamped.

    ``image_size`` is (H, W); when given the box is clamped to ``[0, W] x [0, H]``.
    Non-finite coordinates are an error: a box the client cannot draw is a bug, not data.
    """
    if len(bbox) != 4:
        raise ValueError(f"box: expected 4 coordinates [x1, y1, x2, y2], got {len(bbox)}")
    values = [float(v) for v in bbox]
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"box: non-finite coordinate in {values}")
    x1, x2 = sorted((values[0], values[2]))
    y1, y2 = sorted((values[1], values[3]))
    if image_size is not None:
        x1, y1, x2, y2 = clip_box((x1, y1, x2, y2), image_size)
    return [round(x1, 2), round(y1, 2), round(x2, 2), round(y2, 2)]


MAX_RLE_CHARS = 4_000_000  # a counts string from a client; bounded before the (pure Python) parse


def decode_untrusted_mask(rle: dict, size: tuple[int, int]) -> np.ndarray:
    """A client's COCO RLE -> bool (H, W), checked before anything is written.

    pycocotools' decoder trusts the counts: runs summing past H*W write past its buffer. Here the
    counts string is parsed in Python, every run must be >= 0 and the runs must sum to exactly H*W;
    a ``ValueError`` says what is wrong otherwise.
    """
    h, w = size
    counts_text = rle.get("counts")
    if not isinstance(counts_text, str):
        raise ValueError(f"counts must be a string, got {type(counts_text).__name__}")
    if len(counts_text) > MAX_RLE_CHARS:
        raise ValueError(f"counts has {len(counts_text)} characters, above {MAX_RLE_CHARS}")
    counts = _parse_counts(counts_text)
    total = sum(counts)
    if total != h * w:
        raise ValueError(f"runs cover {total} pixels, the image has {h}x{w} = {h * w}")
    # runs alternate 0, 1, 0... over the column-major (Fortran) pixel order
    flat = np.repeat((np.arange(len(counts)) % 2).astype(bool), counts)  # (H*W,)
    return flat.reshape((h, w), order="F")


def _parse_counts(text: str) -> list[int]:
    """COCO's compressed counts: 5 bits per character (offset 48), 0x20 = more, 0x10 = sign, runs
    after the second coded as the difference to the run two back."""
    counts: list[int] = []
    p = 0
    while p < len(text):
        value, shift, more = 0, 0, True
        while more:
            if p >= len(text):
                raise ValueError("counts ends inside a number")
            c = ord(text[p]) - 48
            if not 0 <= c < 64:
                raise ValueError(f"counts character {text[p]!r} at {p} is not COCO RLE")
            if shift > 30:
                raise ValueError(f"counts number at {p} is too long")
            value |= (c & 0x1F) << shift
            more = bool(c & 0x20)
            p += 1
            shift += 5
            if not more and c & 0x10:
                value |= -1 << shift  # sign-extend
        if len(counts) > 2:
            value += counts[-2]
        if value < 0:
            raise ValueError(f"run {len(counts)} is negative ({value})")
        counts.append(value)
    return counts
