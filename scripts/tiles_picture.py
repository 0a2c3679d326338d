"""The picture of ``--tiles`` on a real fundus photograph: the image, the default's vessel mask given the
image whole, and the masks from ``--tiles auto`` (5x5 here) and ``--tiles 2`` with the tile grid drawn in
white (masks in cyan).

    python scripts/tiles_picture.py --out docs/images/tiles_retina.png

The image is scikit-image's ``retina.jpg`` (1,411 px; Häggström 2014, CC0 1.0, shipped in the
scikit-image wheel): chosen because it is the one real whole fundus photograph we may show, not for
how the model does on it. It has no ground truth, so the picture shows and does not score; the scores
are on the DRIVE test images (``scripts/eval_whole_images.py``, docs/default_model.md "Whole images, tiled").
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from readme_picture import save_picture, side_by_side  # scripts/ is on sys.path when this file runs as a script
from readme_real_picture import stack, text_block

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "Please segment the retinal vessels."
PANEL = 420


def retina() -> np.ndarray:
    """scikit-image's retina.jpg, (1411, 1411, 3) uint8."""
    try:
        from skimage import data
    except ImportError:
        raise SystemExit("tiles_picture: needs scikit-image (pip install scikit-image)") from None
    return data.retina()


def paint(image: np.ndarray, masks: list[np.ndarray], colour=(0, 235, 255), alpha: float = 0.75) -> np.ndarray:
    """``image`` with the union of ``masks`` blended in cyan, which stands out on a fundus's reds."""
    out = image.astype(np.float32)
    if masks:
        where = np.logical_or.reduce(masks)  # (H, W)
        out[where] = (1 - alpha) * out[where] + alpha * np.array(colour, np.float32)
    return out.round().astype(np.uint8)


def grid_lines(image: np.ndarray, windows: list[tuple[int, int, int, int]], width: int) -> np.ndarray:
    """``image`` with the edges between tiles drawn white, ``width`` px wide."""
    out = image.copy()
    for y in {w[0] for w in windows} - {0}:
        out[y:y + width, :] = 255
    for x in {w[2] for w in windows} - {0}:
        out[:, x:x + width] = 255
    return out


def panels(predictor, image: np.ndarray) -> list[Image.Image]:  # noqa: ANN001 (a Predictor)
    """The image, then its vessel mask given whole, with ``--tiles auto`` and with ``--tiles 2``."""
    from citrus_v.infer.tiling import predict_tiled

    whole = predictor.predict(image, PROMPT)
    drawn = [image, paint(image, [m.mask for m in whole.masks])]
    texts = [["scikit-image retina.jpg (CC0), 1411 x 1411 px", f"Q: {PROMPT}"],
             [f"given whole: A: {whole.answer}", f"mask {sum(int(m.mask.sum()) for m in whole.masks)} px"]]
    for tiles, name in (("auto", "tiles auto"), ((2, 2), "tiles 2")):
        tiled = predict_tiled(predictor, image, PROMPT, tiles)
        windows = [tile.window for tile in tiled.tiles]
        rows = len({w[0] for w in windows})
        drawn.append(grid_lines(paint(image, [m.mask for m in tiled.masks]), windows, max(2, image.shape[0] // 400)))
        texts.append([f"{name} ({rows}x{len(windows) // rows}, white lines): A: {tiled.answer}",
                      f"mask {sum(int(m.mask.sum()) for m in tiled.masks)} px, the union of the tiles' masks"])
    out = []
    for picture, text in zip(drawn, texts):
        scaled = side_by_side([Image.fromarray(picture)], PANEL)
        out.append(stack([scaled, text_block(text, scaled.width, 3)], gap=2))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="model folder (default: the embedded default)")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "images" / "tiles_retina.png")
    args = p.parse_args(argv)

    from citrus_v.infer.predictor import Predictor

    drawn = panels(Predictor.from_pretrained(args.model), retina())
    return save_picture(side_by_side(drawn, drawn[0].height), args.out)


if __name__ == "__main__":
    sys.exit(main())
