"""Predictor on a tiny random CitrusV: types, sizes, [SEG] -> masks, boxes, reports, batching."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from citrus_v.infer.generation import GenerationSettings
from citrus_v.infer.transforms import logits_to_masks
from citrus_v.infer.types import Mask, Prediction

FEW = GenerationSettings(max_new_tokens=4)


def test_predict_returns_typed_prediction(predictor, image):
    pred = predictor.predict([image], "What organ is shown?", settings=FEW)
    assert isinstance(pred, Prediction)
    assert isinstance(pred.answer, str) and isinstance(pred.raw_text, str)
    assert 1 <= pred.num_generated_tokens <= 4
    assert 0.0 < pred.mean_token_prob <= 1.0
    assert pred.masks == [] and pred.report is None


def test_seg_gives_one_mask_per_seg_from_one_teacher_forced_pass(predictor, image, scripted, monkeypatch):
    scripted("Sure, it is [SEG] and [SEG].")
    calls = []
    real_hidden_states = predictor.model.hidden_states

    def counting_hidden_states(input_ids, attention_mask, pixel_values, image_grid_thw):
        calls.append({"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": pixel_values,
                      "image_grid_thw": image_grid_thw})  # fmt: skip
        return real_hidden_states(input_ids, attention_mask, pixel_values, image_grid_thw)

    monkeypatch.setattr(predictor.model, "hidden_states", counting_hidden_states)
    pred = predictor.predict([image], "Please segment the liver.", settings=GenerationSettings(max_new_tokens=20))
    assert pred.answer == "Sure, it is [SEG] and [SEG]."
    assert len(calls) == 1  # ONE teacher-forced pass, no second generation
    assert len(pred.masks) == 2
    for m in pred.masks:
        assert isinstance(m, Mask) and m.mask.shape == (90, 130) and m.mask.dtype == bool
        assert np.isfinite(m.score)
    assert pred.mean_token_prob > 0.99  # the script forces every token
    # the masks are exactly the segmenter's logits for prompt + generated ids (CitrusV.segment), upsampled
    ids = calls[0]["input_ids"]
    assert int((ids == predictor.seg_token_id).sum()) == 2
    monkeypatch.setattr(predictor.model, "hidden_states", real_hidden_states)
    sam_images = predictor.template.encode_prompt([image], "x").sam_images  # (1, 3, S, S)
    logits, iou = predictor.model.segment(**calls[0], sam_images=sam_images, seg_image_index=torch.tensor([0, 0]))
    np.testing.assert_array_equal(np.stack([m.mask for m in pred.masks]), logits_to_masks(logits, (90, 130)))
    assert [m.score for m in pred.masks] == pytest.approx(iou.tolist())


def test_count_mismatch_is_an_error(predictor, image, scripted, monkeypatch):
    scripted("[SEG] [SEG]")
    monkeypatch.setattr(predictor.model, "decode_seg_states", lambda *a, **k: (torch.zeros(1, 256, 256), torch.zeros(1)))
    with pytest.raises(ValueError, match=r"1 masks and 1 scores for 2 \[SEG\]"):
        predictor.predict([image], "Segment both kidneys.", settings=GenerationSettings(max_new_tokens=10))


def test_boxes_are_mapped_to_original_pixels(predictor, image, scripted, monkeypatch):
    monkeypatch.setattr(predictor, "tighten_boxes", False)  # as written (tightening: test_box_tightening.py)
    scripted('```json\n[{"bbox_2d": [28, 14, 56, 42], "label": "liver"}]\n```')
    pred = predictor.predict([image], "Locate the liver.", settings=GenerationSettings(max_new_tokens=60))
    rh, rw = predictor.template.processor.resized_hw(90, 130)
    assert (rh, rw) != (90, 130)  # the test means something only if the image was resized
    (box,) = pred.boxes
    assert box.label == "liver"
    assert box.bbox == pytest.approx([28 * 130 / rw, 14 * 90 / rh, 56 * 130 / rw, 42 * 90 / rh])


def test_report_and_reasoning(predictor, image, scripted):
    scripted("<think>The heart is normal.</think><answer>Findings: The heart is normal. Impression: No acute disease.</answer>")
    pred = predictor.predict([image], "Write a report.", settings=GenerationSettings(max_new_tokens=80))
    assert pred.reasoning == "The heart is normal."
    assert pred.answer == "Findings: The heart is normal. Impression: No acute disease."
    assert pred.report.findings == "The heart is normal." and pred.report.impression == "No acute disease."


def test_batched_greedy_equals_one_by_one(predictor, image):
    rng = np.random.default_rng(1)
    other = rng.integers(0, 256, size=(60, 200, 3), dtype=np.uint8)
    requests = [([image], "What organ is shown?"), ([other], "Please segment the liver and the spleen in this image.")]
    settings = GenerationSettings(max_new_tokens=4)
    batched = predictor.predict_batch(requests, settings=settings)
    single = [predictor.predict(imgs, prompt, settings=settings) for imgs, prompt in requests]
    assert [p.raw_text for p in batched] == [p.raw_text for p in single]
    assert [p.mean_token_prob for p in batched] == pytest.approx([p.mean_token_prob for p in single], rel=1e-3)


def test_bad_requests_name_the_problem(predictor, image, scripted):
    with pytest.raises(ValueError, match=r"request 0: the prompt contains the reserved token \[SEG\]"):
        predictor.predict([image], "Say [SEG].")
    with pytest.raises(ValueError, match="request 0, image 0"):
        predictor.predict([np.zeros((4, 4, 7), dtype=np.uint8)], "What is this?")
    scripted("[SEG]")
    with pytest.raises(ValueError, match="no image to segment"):
        predictor.predict([], "Segment the liver.", settings=GenerationSettings(max_new_tokens=4))


def test_missing_default_model_is_a_clear_error(tmp_path, monkeypatch):
    from citrus_v.infer import predictor as module

    monkeypatch.setattr(module, "default_model_dir", lambda: tmp_path / "assets" / "default")
    with pytest.raises(FileNotFoundError, match="embedded default model is missing"):
        module.Predictor.from_pretrained(None)
