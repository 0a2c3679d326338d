"""Every mask the Predictor returns equals direct segmenter calls on the same tiny model.

The references below are written against the segmenter's own interface (``encode``, the
projector, ``decode`` for [SEG] prompts, ``prompt_encoder`` + ``decode_sparse`` for boxes and
clicks), so they hold whatever path the Predictor takes to its masks.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from citrus_v.data.boxes import to_original
from citrus_v.infer.generation import GenerationSettings

SEG_AND_BOX = 'Sure, it is [SEG] and [SEG]. ```json\n[{"bbox_2d": [28, 14, 56, 42], "label": "liver"}]\n```'
SETTINGS = GenerationSettings(max_new_tokens=80)
H, W = 90, 130  # the ``image`` fixture's size


def _upsampled(logits: torch.Tensor, hw: tuple[int, int]) -> np.ndarray:
    """(n, 256, 256) logits -> (n, H, W) bool, bilinear then > 0 (written out, not the package's helper)."""
    up = torch.nn.functional.interpolate(logits.float()[:, None], size=hw, mode="bilinear", align_corners=False)
    return (up[:, 0] > 0).numpy()


def _features(predictor, image):
    seg = predictor.model.segmenter
    sam_image = predictor.template.encode_prompt([image], "x").sam_images  # (1, 3, S, S): what the model sees
    return seg.encode(sam_image.to(next(seg.parameters()).dtype))


def _seg_states(predictor, image, prompt: str, answer: str) -> torch.Tensor:
    """Final-norm states (n_seg, H) at the [SEG] tokens of prompt + answer + <|im_end|>."""
    example = predictor.template.encode_prompt([image], prompt)
    answer_ids = predictor.tokenizer.encode(answer, add_special_tokens=False) + [predictor.eos_token_id]
    ids = torch.tensor([example.input_ids.tolist() + answer_ids])  # (1, L)
    hidden = predictor.model.hidden_states(ids, torch.ones_like(ids), example.pixel_values, example.image_grid_thw)
    return hidden[ids == predictor.seg_token_id]  # (n_seg, H)


def _prompted(predictor, feats, points=None, box=None, multimask=True):
    """Clicks (x, y, label) / a box in ORIGINAL pixels -> (1, 256, 256) logits, (1,) IoU, by hand."""
    seg = predictor.model.segmenter
    scale = torch.tensor([256 / W, 256 / H])  # the segmenter input is the image stretched to 256 x 256
    pts = lbl = bx = None
    if points:
        pts = (torch.tensor([p[:2] for p in points], dtype=torch.float64) * scale).float().view(1, 1, -1, 2)
        lbl = torch.tensor([p[2] for p in points]).view(1, 1, -1)
    if box is not None:
        bx = (torch.tensor(box, dtype=torch.float64).view(2, 2) * scale).float().view(1, 1, 4)
    sparse, dense = seg.prompt_encoder(pts, lbl, bx, None)
    return seg.decode_sparse(feats, sparse, dense, multimask=multimask)


@torch.no_grad()
def test_seg_masks_and_tightened_box_equal_direct_segmenter_calls(predictor, image, scripted):
    scripted(SEG_AND_BOX)
    prompt = "Please segment the liver and locate it."
    pred = predictor.predict([image], prompt, settings=SETTINGS)
    assert len(pred.masks) == 2 and len(pred.boxes) == 1

    model = predictor.model
    feats = _features(predictor, image)
    states = _seg_states(predictor, image, prompt, SEG_AND_BOX)
    prompts = model.seg_projector(states)[:, None]  # (2, 1, 256)
    logits, iou = model.segmenter.decode(feats, torch.zeros(2, dtype=torch.long), prompts)  # best of multimask
    np.testing.assert_array_equal(np.stack([m.mask for m in pred.masks]), _upsampled(logits, (H, W)))
    torch.testing.assert_close(torch.tensor([m.score for m in pred.masks]), iou.clamp(0, 1))

    # box tightening: the written box (resized pixels -> original) prompts one mask; its extent replaces it
    rh, rw = predictor.template.processor.resized_hw(H, W)
    written = list(to_original([28, 14, 56, 42], orig_hw=(H, W), resized_hw=(rh, rw)))
    box_logits, box_iou = _prompted(predictor, feats, box=written, multimask=False)
    outline = _upsampled(box_logits, (H, W))[0]
    assert outline.any()  # else the box would stay as written and the test would check less
    ys, xs = np.nonzero(outline)
    (box,) = pred.boxes
    assert box.text_bbox == pytest.approx(written)
    assert box.bbox == [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]
    assert box.score == pytest.approx(float(box_iou[0]))


@torch.no_grad()
def test_clicks_equal_direct_segmenter_calls(predictor, image):
    feats = _features(predictor, image)
    one = predictor.refine(image, points=[(20, 30, 1)])
    logits, iou = _prompted(predictor, feats, points=[(20, 30, 1)], multimask=True)  # one click: ambiguous
    np.testing.assert_array_equal(one.masks[0].mask, _upsampled(logits, (H, W))[0])
    assert one.masks[0].score == pytest.approx(float(iou.clamp(0, 1)[0]))

    two = predictor.refine(image, points=[(20, 30, 1), (100, 60, 0)], box=[5, 5, 120, 80])
    logits, iou = _prompted(predictor, feats, points=[(20, 30, 1), (100, 60, 0)], box=[5, 5, 120, 80], multimask=False)
    np.testing.assert_array_equal(two.masks[0].mask, _upsampled(logits, (H, W))[0])
    assert two.masks[0].score == pytest.approx(float(iou.clamp(0, 1)[0]))


@torch.no_grad()
def test_click_with_text_equals_direct_segmenter_calls(predictor, image, scripted):
    answer = "Sure, it is [SEG]."
    scripted(answer)
    pred = predictor.refine(image, points=[(20, 30, 1)], prompt="Please segment the liver.")
    assert pred.answer == answer

    model = predictor.model
    seg = model.segmenter
    feats = _features(predictor, image)
    text = model.seg_projector(_seg_states(predictor, image, "Please segment the liver.", answer))  # (1, 256)
    pts = torch.tensor([[20 * 256 / W, 30 * 256 / H]]).view(1, 1, 1, 2)
    sparse, dense = seg.prompt_encoder(pts, torch.ones(1, 1, 1, dtype=torch.long), None, None)
    sparse = torch.cat([sparse, text.view(1, 1, 1, -1)], dim=2)  # the [SEG] embedding after the click
    logits, iou = seg.decode_sparse(feats, sparse, dense, multimask=True)
    np.testing.assert_array_equal(pred.masks[0].mask, _upsampled(logits, (H, W))[0])
    assert pred.masks[0].score == pytest.approx(float(iou.clamp(0, 1)[0]))
