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


def test_clicks_on_a_slice_share_one_encode_through_a_session_cache(tiny_predictor, monkeypatch):
    from citrus_v.infer.session import SessionCache

    rng = np.random.default_rng(3)
    vol = Volume(rng.normal(size=(40, 30, 5)).astype(np.float32), np.diag([1.0, 1.0, 2.0, 1.0]), (1, 1, 2), modality="MR")
    calls = []
    real = tiny_predictor.model.segmenter.encode
    monkeypatch.setattr(tiny_predictor.model.segmenter, "encode", lambda x: calls.append(x.shape[0]) or real(x))
    seg, plain = empty_segmentation(vol, 2, ["lesion"]), empty_segmentation(vol, 2, ["lesion"])
    sessions = SessionCache(tiny_predictor.image_session)
    for points in ([(10, 12, 1)], [(10, 12, 1), (30, 20, 0)]):  # the second click sees the first's mask
        refine_volume_slice(tiny_predictor, seg, 3, points=points, sessions=sessions)
        refine_volume_slice(tiny_predictor, plain, 3, points=points)
    assert calls == [1, 1, 1]  # the cached slice once, the uncached one per click
    np.testing.assert_array_equal(seg.masks, plain.masks)
