"""Step 5 of the Predictor: the segmenter tightens written boxes (infer/box_tightening.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from citrus_v.infer import session as image_session
from citrus_v.infer.box_tightening import clip_box
from citrus_v.infer.generation import GenerationSettings
from citrus_v.infer.transforms import ImageTransforms

BOX_ANSWER = '```json\n[{"bbox_2d": [28, 14, 56, 42], "label": "liver"}, {"bbox_2d": [0, 0, 84, 56], "label": "body"}]\n```'
SETTINGS = GenerationSettings(max_new_tokens=80)


def test_clip_box_keeps_what_lies_on_the_image():
    assert clip_box([-5, 2, 20, 8], (10, 12)) == [0.0, 2.0, 12.0, 8.0]
    assert clip_box([13, 2, 20, 8], (10, 12)) is None  # wholly right of the image
    assert clip_box([4, 4, 4, 9], (10, 12)) is None  # no width


def _square_logits(y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
    logits = torch.full((1, 256, 256), -10.0)
    logits[0, y0:y1, x0:x1] = 10.0
    return logits


def test_predictor_replaces_each_written_box_by_the_outline_box(predictor, image, scripted, monkeypatch):
    calls = []

    def fake_decode(segmenter, features, *, box_sam, multimask, points_sam, point_labels, text_embedding, mask_input):
        assert points_sam is point_labels is text_embedding is mask_input is None  # the box alone prompts
        calls.append((box_sam.clone(), multimask, features.image_embeddings.shape[0]))
        if len(calls) == 2:
            return torch.full((1, 256, 256), -10.0), torch.tensor([0.1])  # the second box: an empty outline
        return _square_logits(64, 128, 128, 192), torch.tensor([0.75])  # rows 1/4..1/2, columns 1/2..3/4

    monkeypatch.setattr(image_session, "decode_with_prompts", fake_decode)
    scripted(BOX_ANSWER)
    pred = predictor.predict([image], "Locate the liver.", settings=SETTINGS)
    liver, body = pred.boxes
    rh, rw = predictor.template.processor.resized_hw(90, 130)
    written = [28 * 130 / rw, 14 * 90 / rh, 56 * 130 / rw, 42 * 90 / rh]
    assert liver.text_bbox == pytest.approx(written)
    # the square's edges in the 130 x 90 original: x 65..97.5, y 22.5..45 (to the pixel: bilinear upsampling)
    assert liver.bbox == pytest.approx([65, 22.5, 97.5, 45], abs=1.0)
    assert liver.score == pytest.approx(0.75)
    assert body.text_bbox is None and body.score is None  # empty outline: the box stays as written
    # each decode got ONE image's features, the written box in segmenter pixels, and one mask asked for
    sam_size = predictor.model.config.segmenter.image_size
    expected = ImageTransforms((90, 130), sam_size).to_segmenter([written[:2], written[2:]]).reshape(4)
    assert calls[0][0].numpy() == pytest.approx(expected, rel=1e-5)
    assert [c[1:] for c in calls] == [(False, 1), (False, 1)]
    assert liver.to_dict()["text_bbox"] == pytest.approx(written, abs=0.01) and "text_bbox" not in body.to_dict()


def test_tightening_off_returns_boxes_as_written(predictor, image, scripted, monkeypatch):
    monkeypatch.setattr(predictor, "tighten_boxes", False)
    monkeypatch.setattr(image_session, "decode_with_prompts", lambda *a, **k: pytest.fail("tightening is off"))
    scripted(BOX_ANSWER)
    pred = predictor.predict([image], "Locate the liver.", settings=SETTINGS)
    rh, rw = predictor.template.processor.resized_hw(90, 130)
    assert pred.boxes[0].bbox == pytest.approx([28 * 130 / rw, 14 * 90 / rh, 56 * 130 / rw, 42 * 90 / rh])
    assert all(b.text_bbox is None and b.score is None for b in pred.boxes)
    assert set(pred.boxes[0].to_dict()) == {"bbox", "label"}


def test_rows_without_boxes_or_images_are_not_encoded(predictor, image, scripted, monkeypatch):
    encoded = []
    real_encode = predictor.model.segmenter.encode
    monkeypatch.setattr(predictor.model.segmenter, "encode", lambda x: encoded.append(x.shape) or real_encode(x))
    scripted("No box here.")
    predictor.predict([image], "What organ is shown?", settings=SETTINGS)
    assert encoded == []


def test_overlay_draws_the_written_box_dashed_beside_the_tightened_one():
    from citrus_v.infer.overlay import PALETTE, draw_overlay
    from citrus_v.infer.types import Box

    image = np.zeros((100, 100, 3), np.uint8)
    written, tight = [10, 10, 90, 90], [40, 40, 60, 60]
    plain = draw_overlay(image, [], [Box(list(tight))])
    both = draw_overlay(image, [], [Box(list(tight), text_bbox=list(written), score=0.9)])
    colour = np.array(PALETTE[0])
    top = (both[10, 10:91] == colour).all(axis=-1)  # the written box's top edge
    assert 0.3 < top.mean() < 0.8  # dashes and gaps, not a solid line
    assert not (plain[10, 10:91] == colour).all(axis=-1).any()  # untightened: no second box
    assert (both[40, 45:56] == colour).all() and (plain[40, 45:56] == colour).all()  # the solid tightened box in both
