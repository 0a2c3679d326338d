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


# ---------------------------------------------------------------------- the image session


@pytest.fixture()
def encodes(predictor, monkeypatch):
    """The batch shapes the segmenter's image encoder is called with."""
    calls: list[tuple[int, ...]] = []
    real = predictor.model.segmenter.encode
    monkeypatch.setattr(predictor.model.segmenter, "encode", lambda x: calls.append(tuple(x.shape)) or real(x))
    return calls


def test_one_image_encode_serves_two_segs_a_box_and_two_clicks(predictor, image, scripted, encodes):
    prompt = "Please segment the liver and locate it."
    session = predictor.image_session(image)
    assert encodes == [] and not session.encoded  # nothing is computed until a mask is asked for
    scripted(SEG_AND_BOX)
    pred = predictor.predict([session], prompt, settings=SETTINGS)
    assert len(pred.masks) == 2 and pred.boxes[0].text_bbox is not None  # two [SEG] masks, a tightened box
    first = predictor.refine(session, points=[(20, 30, 1)])
    second = predictor.refine(session, points=[(20, 30, 1), (100, 60, 0)], mask_input=first.masks[0].mask)
    assert encodes == [(1, 3, 256, 256)]  # ONE image-encoder pass for all five masks

    # the same answers as without a session (each of these encodes the image again)
    scripted(SEG_AND_BOX)
    fresh = predictor.predict([image], prompt, settings=SETTINGS)
    fresh_first = predictor.refine(image, points=[(20, 30, 1)])
    fresh_second = predictor.refine(image, points=[(20, 30, 1), (100, 60, 0)], mask_input=fresh_first.masks[0].mask)
    assert len(encodes) == 4
    for a, b in zip(pred.masks + first.masks + second.masks, fresh.masks + fresh_first.masks + fresh_second.masks):
        np.testing.assert_array_equal(a.mask, b.mask)
        assert a.score == b.score
    assert pred.boxes[0].to_dict() == fresh.boxes[0].to_dict()


def test_a_batch_encodes_each_image_once_in_one_call(predictor, image, scripted, encodes):
    other = np.random.default_rng(5).integers(0, 256, size=(60, 200, 3), dtype=np.uint8)
    scripted(SEG_AND_BOX)  # every row answers with two [SEG] and a box
    preds = predictor.predict_batch([([image], "Segment it."), ([other], "Segment that.")], settings=SETTINGS)
    assert [len(p.masks) for p in preds] == [2, 2] and all(p.boxes[0].text_bbox is not None for p in preds)
    assert encodes == [(2, 3, 256, 256)]  # the [SEG]s and the boxes of both rows: one call
    assert preds[1].masks[0].mask.shape == (60, 200)


@torch.no_grad()
def test_session_masks_equal_direct_segmenter_calls(predictor, image):
    """ImageSession's own methods, logits against logits: [SEG] states, a box, clicks with a [SEG]
    embedding and a previous mask, as the segmenter computes them directly."""
    model, seg = predictor.model, predictor.model.segmenter
    session = predictor.image_session(image)
    feats = _features(predictor, image)
    states = _seg_states(predictor, image, "Please segment the liver.", "Sure, it is [SEG] and [SEG].")
    logits, iou = session.masks_from_seg_states(states)
    ref_logits, ref_iou = seg.decode(feats, torch.zeros(2, dtype=torch.long), model.seg_projector(states)[:, None])
    torch.testing.assert_close(logits, ref_logits)
    torch.testing.assert_close(iou, ref_iou)

    logits, iou = session.masks_from_prompts(box=[5, 5, 120, 80], multimask=False)
    ref_logits, ref_iou = _prompted(predictor, feats, box=[5, 5, 120, 80], multimask=False)
    torch.testing.assert_close(logits, ref_logits)
    torch.testing.assert_close(iou, ref_iou)

    text = model.seg_projector(states)[1]  # (256,)
    previous = torch.randn(256, 256)
    logits, iou = session.masks_from_prompts(points=[(20, 30, 1)], seg_embedding=text, mask_input=previous)
    pts = torch.tensor([[20 * 256 / W, 30 * 256 / H]]).view(1, 1, 1, 2)
    dense_in = torch.nn.functional.interpolate(previous[None, None], size=seg.mask_input_size, mode="bilinear", align_corners=False)
    sparse, dense = seg.prompt_encoder(pts, torch.ones(1, 1, 1, dtype=torch.long), None, dense_in)
    sparse = torch.cat([sparse, text.view(1, 1, 1, -1)], dim=2)
    ref_logits, ref_iou = seg.decode_sparse(feats, sparse, dense, multimask=True)
    torch.testing.assert_close(logits, ref_logits)
    torch.testing.assert_close(iou, ref_iou)


def test_a_session_belongs_to_its_model(predictor, image):
    from citrus_v.config import tiny_config
    from citrus_v.infer.session import ImageSession
    from citrus_v.model.citrus_v import CitrusV

    stranger = ImageSession(CitrusV(tiny_config()).eval(), image)
    with pytest.raises(ValueError, match="image session was made for another model"):
        predictor.refine(stranger, points=[(20, 30, 1)])
    with pytest.raises(ValueError, match="request 0, image 0: the image session was made for another model"):
        predictor.predict([stranger], "Segment it.", settings=GenerationSettings(max_new_tokens=2))


def test_session_cache_finds_an_image_by_its_pixels(predictor, image):
    from citrus_v.infer.session import SessionCache

    cache = SessionCache(predictor.image_session, size=2)
    first = cache.get(image)
    assert cache.get(image.copy()) is first  # equal pixels, another array: the same session
    changed = image.copy()
    changed[0, 0, 0] ^= 1
    second = cache.get(changed)
    assert second is not first
    assert cache.get(image) is first  # ``image`` is now the most recently used
    cache.get(image[:50])  # a third image: the least recently used one (``changed``) leaves
    assert len(cache) == 2 and cache.get(image) is first and cache.get(changed) is not second


def test_session_cache_keeps_features_without_the_pixels_and_gives_them_back(predictor, image):
    from citrus_v.infer.session import SessionCache

    cache = SessionCache(predictor.image_session, size=2)
    session = cache.get(image)
    session.features  # encoded once
    cache.release_pixels()
    assert session.rgb is None and session.encoded  # what a server keeps between requests: no full-size copy
    with pytest.raises(ValueError, match="pixels were released"):
        predictor.load_images([session])
    again = cache.get(image.copy())
    assert again is session and again.encoded and np.array_equal(again.rgb, image)  # the same session, its pixels back
    assert isinstance(predictor.predict(again, "Describe the image.").answer, str)  # usable as before


def test_masks_are_kept_as_logits_and_made_full_size_when_read(predictor, image, scripted):
    """An answer's masks hold (256, 256) logits, not a full-size array each; reading one gives what the
    image's frames make of those logits (issue 22 point 3)."""
    from citrus_v.infer.transforms import logits_to_masks
    from citrus_v.infer.types import LogitsMask

    scripted("Sure, it is [SEG] and [SEG].")
    pred = predictor.predict(image, "Segment the liver and the spleen.")
    assert len(pred.masks) == 2
    for m in pred.masks:
        assert isinstance(m, LogitsMask) and tuple(m.logits.shape) == (256, 256)
        assert m.mask.shape == image.shape[:2] and m.mask.dtype == bool
        np.testing.assert_array_equal(m.mask, logits_to_masks(m.logits[None], image.shape[:2])[0])
        assert 0.0 <= m.score <= 1.0
