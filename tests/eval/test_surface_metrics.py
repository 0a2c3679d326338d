"""HD95 and NSD on shapes whose distances can be listed by hand (issue 23 point 5)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from citrus_v.eval.metrics.surface import hd95, nsd, surface


def square(top: int, side: int, size: int = 40) -> np.ndarray:
    mask = np.zeros((size, size), dtype=bool)
    mask[top : top + side, top : top + side] = True
    return mask


# P: the 20x20 square at 10..29; G: the 16x16 square at 12..27, two pixels inside it on every side.
# P's ring has 76 pixels: 64 face G's ring straight across (2), the 8 beside a corner reach G's corner
# diagonally (sqrt 5), the 4 corners reach it at (2, 2) (sqrt 8). G's 60 ring pixels are all 2 from P's.
P, G = square(10, 20), square(12, 16)
P_TO_G = [2.0] * 64 + [math.sqrt(5)] * 8 + [math.sqrt(8)] * 4
G_TO_P = [2.0] * 60


def test_surface_is_the_ring():
    assert surface(P).sum() == 76 and surface(G).sum() == 60
    assert surface(np.pad(np.ones((1, 1), bool), 2)).sum() == 1  # a single pixel is its own surface


def test_hd95_of_nested_squares():
    expected = max(np.percentile(P_TO_G, 95), np.percentile(G_TO_P, 95))  # 2.236 + 0.25 (2.828 - 2.236)
    assert hd95(P, G) == pytest.approx(expected) and hd95(G, P) == pytest.approx(expected)
    assert expected == pytest.approx(math.sqrt(5) + 0.25 * (math.sqrt(8) - math.sqrt(5)))
    assert hd95(P, P) == 0.0


def test_nsd_of_nested_squares_at_three_tolerances():
    assert nsd(P, G, tolerance=2.0) == pytest.approx((64 + 60) / (76 + 60))
    assert nsd(P, G, tolerance=2.5) == pytest.approx((64 + 8 + 60) / (76 + 60))
    assert nsd(P, G, tolerance=3.0) == 1.0 and nsd(P, G, tolerance=1.0) == 0.0


def test_spacing_scales_distances():
    """A 2-pixel shift along rows with 1.5 mm rows is 3 mm; columns (0.5 mm) do not move."""
    a = np.zeros((30, 30), bool)
    a[5:15, 5:25] = True
    b = np.roll(a, 2, axis=0)
    assert hd95(a, b, spacing=(1.5, 0.5)) == pytest.approx(3.0)
    assert nsd(a, b, tolerance=2.9, spacing=(1.5, 0.5)) < 1.0 and nsd(a, b, tolerance=3.0, spacing=(1.5, 0.5)) == 1.0


def test_a_far_island_moves_hd95_but_barely_dice():
    from citrus_v.eval.metrics.segmentation import dice

    with_island = P.copy()
    with_island[38, 38] = True  # one pixel, far from G
    assert dice(with_island, P) > 0.99
    assert hd95(with_island, P) == 0.0  # 1 of 77 surface pixels: below the 95th percentile
    assert nsd(with_island, P) == pytest.approx((76 + 76) / (77 + 76))  # but NSD counts it


def test_two_single_pixels_are_their_distance_apart():
    a, b = np.zeros((12, 12), bool), np.zeros((12, 12), bool)
    a[5, 5], b[8, 9] = True, True  # 3 rows and 4 columns apart
    assert hd95(a, b) == pytest.approx(5.0) and nsd(a, b, tolerance=4.9) == 0.0 and nsd(a, b, tolerance=5.0) == 1.0


def test_empty_masks():
    empty = np.zeros((40, 40), bool)
    assert hd95(empty, empty) == 0.0 and nsd(empty, empty) == 1.0
    assert hd95(P, empty) is None and nsd(P, empty) == 0.0 and nsd(empty, P) == 0.0
    with pytest.raises(ValueError, match="shapes differ"):
        hd95(P, np.zeros((5, 5), bool))
