"""COCO RLE and box encoders: hand-checked cases plus thousands of random masks and boxes."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from pycocotools import mask as mask_utils

from citrus_v.serve.rle import decode_mask, encode_box, encode_mask

# pycocotools (numpy 2) warns about __array__(copy=...) inside decode/area; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def test_encode_mask_hand_case():
    # column-major runs: col 0 = [1, 1], col 1 = [0, 1] -> 0 zeros, 2 ones, 1 zero, 1 one
    mask = np.array([[1, 0], [1, 1]], dtype=bool)
    rle = encode_mask(mask)
    assert rle == {"size": [2, 2], "counts": "021O"}
    decoded = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()})
    np.testing.assert_array_equal(decoded, mask.astype(np.uint8))
    assert int(mask_utils.area({"size": rle["size"], "counts": rle["counts"].encode()})) == 3


def test_encode_mask_rejects_non_2d():
    with pytest.raises(ValueError, match=r"2-D \(H, W\)"):
        encode_mask(np.zeros((2, 2, 2), dtype=bool))
    with pytest.raises(ValueError, match="empty shape"):
        encode_mask(np.zeros((0, 3), dtype=bool))


masks = st.tuples(st.integers(1, 40), st.integers(1, 40)).flatmap(
    lambda hw: arrays(np.bool_, hw, elements=st.booleans())
)


@settings(max_examples=1000, deadline=None)
@given(masks)
def test_rle_round_trip(mask):
    rle = encode_mask(mask)
    assert rle["size"] == [mask.shape[0], mask.shape[1]]
    json.dumps(rle)  # must be JSON as is
    np.testing.assert_array_equal(decode_mask(rle), mask)
    assert int(mask_utils.area({"size": rle["size"], "counts": rle["counts"].encode()})) == int(mask.sum())


coords = st.floats(min_value=-1e4, max_value=1e4, allow_nan=False)


@settings(max_examples=1000, deadline=None)
@given(st.lists(coords, min_size=4, max_size=4), st.integers(1, 5000), st.integers(1, 5000))
def test_encode_box_is_ordered_and_clamped(bbox, h, w):
    x1, y1, x2, y2 = encode_box(bbox, (h, w))
    assert 0 <= x1 <= x2 <= w and 0 <= y1 <= y2 <= h
    # inside the image the box is unchanged up to rounding to 2 decimals
    lo_x, hi_x = sorted((bbox[0], bbox[2]))
    if 0 <= lo_x <= w:
        assert x1 == pytest.approx(lo_x, abs=0.006)
    if 0 <= hi_x <= w:
        assert x2 == pytest.approx(hi_x, abs=0.006)


def test_encode_box_hand_cases():
    assert encode_box([30, 40, 10, 20]) == [10.0, 20.0, 30.0, 40.0]  # corners swapped back
    assert encode_box([-5, 10.123, 120, 50], (48, 100)) == [0.0, 10.12, 100.0, 48.0]
    with pytest.raises(ValueError, match="4 coordinates"):
        encode_box([1, 2, 3])
    with pytest.raises(ValueError, match="non-finite"):
        encode_box([0, 0, math.inf, 1])
