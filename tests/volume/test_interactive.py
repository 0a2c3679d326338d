"""Clicks on one slice of a segmented volume (volume/interactive.py)."""

import numpy as np

from citrus_v.data.volume_io import Volume
from citrus_v.volume.inference import empty_segmentation
from citrus_v.volume.interactive import refine_volume_slice


def test_refine_volume_slice_touches_only_that_slice(tiny_predictor):
    rng = np.random.default_rng(2)
    vol = Volume(rng.normal(size=(40, 30, 5)).astype(np.float32), np.diag([1.0, 1.0, 2.0, 1.0]), (1, 1, 2), modality="MR")
    seg = empty_segmentation(vol, 2, ["lesion"])
    pred = refine_volume_slice(tiny_predictor, seg, 3, points=[(10, 12, 1)])
    assert pred.masks[0].mask.shape == (30, 40)  # the axial picture is (J, I)
    np.testing.assert_array_equal(seg.slice_mask(0, 3), pred.masks[0].mask)
    assert not seg.masks[0][:, :, [0, 1, 2, 4]].any()
