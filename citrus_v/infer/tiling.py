"""Tiled prediction: cut a large image into a grid of tiles, answer the prompt on each, stitch the results.

Why: the embedded default learned cell nuclei (MoNuSeg) and retinal vessels (DRIVE) on tiles of 250-290 px.
Given a whole 1000 px pathology image or a 565 px fundus photograph, it sees the picture shrunk to its
input size, where nuclei and vessels are a pixel or two wide, and its masks miss most of them (on the test
images: mean Dice 0.35 whole against 0.59 tiled for vessels, 0.32 against 0.69 for nuclei;
docs/default_model.md, "Whole images, tiled"). Tiling gives each part of the image the scale it was
trained at. It is for large images of small repeated structures; CT slices, X-rays and endoscopy frames
were learned whole and should be given whole. ``auto`` assumes the training sets' resolution; a fundus
photograph of another size does better with a fixed 2x2 grid (docs/default_model.md).

Stitching (``stitch``): the i-th mask of the result is the union of every tile's i-th mask, each placed at
its tile's offset; boxes move by their tile's offset; the answer is the one most tiles gave among the tiles
with the most masks (ties: the first in reading order), so the answer holds as many [SEG]s as there are
masks; its reasoning and report come with it (the coordinates written in its text are its tile's; ``boxes``
holds every tile's, in the whole image's pixels). ``Prediction.tiles`` keeps each tile's window and answer.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np

from citrus_v.infer.types import Box, Mask, Prediction, Report, Tile

TILE_PX = 300  # the tile side aimed at: the val images did best at 2x2 (DRIVE, 292 px) and 3x3 (MoNuSeg, 333 px)
MIN_TILE_PX = 28  # a tile narrower than one merged ViT patch (2 x 14 px) holds no image token of its own

Window = tuple[int, int, int, int]  # (y0, y1, x0, x1) in the whole image's pixels


def tile_grid(height: int, width: int, tile_px: int = TILE_PX) -> tuple[int, int]:
    """(rows, cols) whose tiles are closest to ``tile_px`` a side: H / tile_px rounded half up, at least 1.

    >>> tile_grid(1000, 1000), tile_grid(584, 565), tile_grid(224, 224)
    ((3, 3), (2, 2), (1, 1))
    """
    if tile_px < MIN_TILE_PX:
        raise ValueError(f"tile_px must be at least {MIN_TILE_PX}, got {tile_px}")
    return max(1, math.floor(height / tile_px + 0.5)), max(1, math.floor(width / tile_px + 0.5))


def tile_windows(height: int, width: int, grid: tuple[int, int]) -> list[Window]:
    """The (y0, y1, x0, x1) of a ``rows x cols`` cut in reading order; edges split as evenly as integers allow."""
    rows, cols = grid
    if rows < 1 or cols < 1:
        raise ValueError(f"a grid needs at least one row and one column, got {rows}x{cols}")
    # an axis that is not cut keeps the image's own size, however small: the model takes any image whole
    if (rows > 1 and height // rows < MIN_TILE_PX) or (cols > 1 and width // cols < MIN_TILE_PX):
        raise ValueError(
            f"a {rows}x{cols} grid cuts this {height}x{width} image into tiles under {MIN_TILE_PX} px a side"
        )
    ys = np.linspace(0, height, rows + 1).round().astype(int)
    xs = np.linspace(0, width, cols + 1).round().astype(int)
    return [(int(ys[i]), int(ys[i + 1]), int(xs[j]), int(xs[j + 1])) for i in range(rows) for j in range(cols)]


def parse_tiles(text: str) -> str | tuple[int, int]:
    """A ``--tiles`` value: ``auto``, ``N`` (N x N) or ``RxC`` -> "auto" or (rows, cols)."""
    if text == "auto":
        return "auto"
    parts = text.lower().split("x")
    if len(parts) not in (1, 2) or not all(p.isdigit() and int(p) >= 1 for p in parts):
        raise ValueError(f"{text!r}: expected auto, N (an N x N grid) or RxC (e.g. 2x3), with N, R, C >= 1")
    return (int(parts[0]), int(parts[-1]))


def as_tiles(value) -> str | tuple[int, int]:  # noqa: ANN001 - checks any value a caller may pass
    """What ``tiles`` may be, from Python or JSON: "auto", "N", "RxC", an int N >= 1 or (rows, cols) of ints
    >= 1 -> "auto" or (rows, cols); anything else (a bool, a float, "2x") is a ValueError naming it."""
    if isinstance(value, str):
        return parse_tiles(value)

    def whole(v) -> bool:  # noqa: ANN001
        return isinstance(v, int) and not isinstance(v, bool) and v >= 1

    if whole(value):
        return (value, value)
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(whole(v) for v in value):
        return (value[0], value[1])
    raise ValueError(f"{value!r}: expected \"auto\", N, \"RxC\" or [rows, cols], with N, rows, cols whole numbers >= 1")


def grid_for(tiles, height: int, width: int) -> tuple[int, int]:  # noqa: ANN001
    """``tiles`` (see ``as_tiles``) on an H x W image -> (rows, cols), checked to cut it into tiles of 28 px or more."""
    tiles = as_tiles(tiles)
    grid = tile_grid(height, width) if tiles == "auto" else tiles
    tile_windows(height, width, grid)  # the size check
    return grid


def _shift_box(box: Box, dx: int, dy: int) -> Box:
    def moved(b: list[float] | None) -> list[float] | None:
        return None if b is None else [b[0] + dx, b[1] + dy, b[2] + dx, b[3] + dy]

    return replace(box, bbox=moved(box.bbox), text_bbox=moved(box.text_bbox))


def _union_masks(predictions: Sequence[Prediction], windows: Sequence[Window], size: tuple[int, int]) -> list[Mask]:
    """Mask i of the whole image = the union of each tile's mask i at its place; score: the tiles' mean."""
    count = max((len(p.masks) for p in predictions), default=0)
    merged = []
    for i in range(count):
        canvas = np.zeros(size, dtype=bool)  # (H, W)
        scores, label = [], ""
        for pred, (y0, y1, x0, x1) in zip(predictions, windows):
            if i < len(pred.masks):
                mask = pred.masks[i]
                canvas[y0:y1, x0:x1] |= mask.mask  # (h, w) at the tile's own size
                scores.append(mask.score)
                label = label or mask.label
        merged.append(Mask(mask=canvas, score=float(np.mean(scores)), label=label))
    return merged


def stitch(predictions: Sequence[Prediction], windows: Sequence[Window], size: tuple[int, int]) -> Prediction:
    """One Prediction for the whole (H, W) image from one Prediction per tile (``windows`` in the same order)."""
    if len(predictions) != len(windows) or not predictions:
        raise ValueError(f"stitch: {len(predictions)} predictions for {len(windows)} tiles")
    most = max(len(p.masks) for p in predictions)
    candidates = [p for p in predictions if len(p.masks) == most]  # their answers hold as many [SEG]s as there are masks
    answers = Counter(p.answer for p in candidates)
    chosen = next(p for p in candidates if p.answer == answers.most_common(1)[0][0])  # ties: the first tile
    chosen_window = windows[predictions.index(chosen)]
    report = chosen.report
    if report is not None:
        report = Report(report.findings, report.impression,
                        [_shift_box(b, chosen_window[2], chosen_window[0]) for b in report.boxes])
    probs = [p.mean_token_prob for p in predictions if p.mean_token_prob is not None]
    return Prediction(
        answer=chosen.answer,
        raw_text=chosen.raw_text,
        reasoning=chosen.reasoning,
        boxes=[_shift_box(b, x0, y0) for p, (y0, _, x0, _) in zip(predictions, windows) for b in p.boxes],
        masks=_union_masks(predictions, windows, size),
        report=report,
        mean_token_prob=float(np.mean(probs)) if probs else None,
        num_generated_tokens=sum(p.num_generated_tokens for p in predictions),  # what the request cost
        num_prompt_tokens=sum(p.num_prompt_tokens for p in predictions),
        tiles=[Tile(tuple(w), p.answer, len(p.masks), p.num_generated_tokens) for p, w in zip(predictions, windows)],
    )


def predict_tiled(
    predictor,
    image,
    prompt: str,
    tiles: str | int | tuple[int, int] = "auto",
    *,
    batch_size: int = 1,  # on 2 CPU threads one tile a call was fastest (9 tiles: 4.9 s; 4 a call 5.6 s, 9 8.6 s)
    settings=None,
    progress: Callable[[int], None] | None = None,
) -> Prediction:
    """``prompt`` on each tile of ``image`` (a path, array or PIL image), ``batch_size`` tiles per generation
    call; returns the stitched Prediction (``Prediction.tiles``: each tile's window and answer).
    ``tiles``: "auto" (``tile_grid``), N, "RxC" or (rows, cols) (``as_tiles``). ``progress(n)`` is called with the number of tiles
    done after each batch."""
    from citrus_v.infer.session import ImageSession

    if isinstance(image, ImageSession):
        raise ValueError("tiles: give the image itself, not an image session (each tile is encoded on its own)")
    if batch_size < 1:
        raise ValueError(f"tiles: batch_size must be at least 1, got {batch_size}")
    (rgb,) = predictor.load_images([image], "tiles")
    h, w = rgb.shape[:2]
    try:
        windows = tile_windows(h, w, grid_for(tiles, h, w))
    except ValueError as err:
        raise ValueError(f"tiles: {err}") from None
    predictions: list[Prediction] = []
    for start in range(0, len(windows), batch_size):
        batch = windows[start:start + batch_size]
        requests = [(np.ascontiguousarray(rgb[y0:y1, x0:x1]), prompt) for y0, y1, x0, x1 in batch]
        predictions += predictor.predict_batch(requests, settings=settings)
        if progress is not None:
            progress(len(predictions))
    return stitch(predictions, windows, (h, w))
