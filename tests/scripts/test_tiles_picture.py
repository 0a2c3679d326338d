"""scripts/tiles_picture.py without a model: the mask colouring, the tile grid lines and the three panels."""

from __future__ import annotations

import numpy as np
import pytest

from tests.scripts.conftest import load_script

from citrus_v.infer.types import Mask, Prediction


@pytest.fixture(scope="module")
def script():
    yield from load_script("tiles_picture")


def test_paint_blends_only_the_masked_pixels(script):
    image = np.full((4, 4, 3), 100, np.uint8)
    mask = np.zeros((4, 4), bool)
    mask[1, 2] = True
    out = script.paint(image, [mask], colour=(200, 0, 100), alpha=0.5)
    assert out[1, 2].tolist() == [150, 50, 100] and (out[~mask] == 100).all()
    assert np.array_equal(script.paint(image, []), image)


def test_grid_lines_mark_the_inner_tile_edges(script):
    image = np.zeros((10, 12, 3), np.uint8)
    out = script.grid_lines(image, [(0, 5, 0, 6), (0, 5, 6, 12), (5, 10, 0, 6), (5, 10, 6, 12)], width=1)
    assert (out[5] == 255).all() and (out[:, 6] == 255).all()
    assert out[0, 0].tolist() == [0, 0, 0] and int((out == 255).all(axis=2).sum()) == 12 + 10 - 1


class FakePredictor:
    """Whole: no mask. Each tile: its top-left pixel masked."""

    def predict(self, image, prompt):
        return Prediction(answer="large", raw_text="large")

    def load_images(self, images, where):
        return list(images)

    def predict_batch(self, requests, settings=None):
        out = []
        for tile, _ in requests:
            mask = np.zeros(tile.shape[:2], bool)
            mask[0, 0] = True
            out.append(Prediction(answer="Sure, it is [SEG].", raw_text="", masks=[Mask(mask, 0.5)]))
        return out


def test_panels_show_whole_and_tiled(script, monkeypatch):
    texts = []
    monkeypatch.setattr(script, "text_block", lambda lines, width, n: texts.append(lines) or script.Image.new("RGB", (width, 10)))
    panels = script.panels(FakePredictor(), np.zeros((600, 900, 3), np.uint8))  # auto: 2x3 tiles of 300 px
    assert len(panels) == 4 and len({p.height for p in panels}) == 1
    assert texts[1] == ["given whole: A: large", "mask 0 px"]
    assert texts[2][0] == "tiles auto (2x3, white lines): A: Sure, it is [SEG]." and texts[2][1].startswith("mask 6 px")
    assert texts[3][0] == "tiles 2 (2x2, white lines): A: Sure, it is [SEG]." and texts[3][1].startswith("mask 4 px")
