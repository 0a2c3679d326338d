"""Parity: the objectives module scores a forward output exactly as CitrusV.forward's own loss did.

``_reference`` is the loss arithmetic ``CitrusV.forward`` carried before the objectives were split
out (commit f052263), re-written in plain torch on the model's parts; every named term and the
total must equal it, for each optional objective on and off.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from citrus_v.model.build import build_model
from citrus_v.model.losses import (
    candidate_mask_losses, lm_cross_entropy, lm_cross_entropy_supervised, mask_bce, mask_dice, mask_window_factor,
)
from citrus_v.model.objectives import MASK_TERMS, forward_inputs, score
from citrus_v.model.segmenter import pick_masks
from citrus_v.model.token_reading import IGNORE
from tests.model.conftest import SEED, make_batch
from tests.model.test_copy_attention import _pairs
from tests.model.test_token_reading import _labels


def _reference(model, batch, *, n_window=None, full_logits=True, copy_pairs=None, reading=None) -> dict:
    """The old forward's terms, each as it entered the old total (weights applied, window-scaled)."""
    cfg = model.config.loss
    ids = batch["input_ids"]
    seg = ids == model.config.tokens.seg_token_id
    copy = model.copy_attention if copy_pairs is not None and len(copy_pairs) else None
    read = model.token_reading if reading is not None else None
    caps = [c.capture() for c in (copy, read) if c is not None]
    for c in caps:
        c.__enter__()
    hidden = model.hidden_states(ids, batch["attention_mask"], batch["pixel_values"], batch["image_grid_thw"])
    terms = {}
    if copy is not None:
        logp = copy.log_probs(copy_pairs, batch["attention_mask"])
        terms["copy_attention"] = copy.weight * -logp.gather(1, copy_pairs[:, 2:]).mean()
    if read is not None:
        logits = read.logits(read._seen).float()
        terms["token_reading"] = read.weight * F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), reading.reshape(-1), ignore_index=IGNORE)
    for c in caps:
        c.__exit__(None, None, None)
    labels = batch["labels"]
    if full_logits:
        terms["lm"] = lm_cross_entropy(model.mllm.lm_head(hidden), labels)
    else:
        terms["lm"] = lm_cross_entropy_supervised(hidden, model.mllm.lm_head, labels)
    n_seg = int(seg.sum())
    if n_seg:
        gt = batch["gt_masks"]
        used, per_seg = torch.unique(batch["seg_image_index"], return_inverse=True)
        feats = model.segmenter.encode(batch["sam_images"][used])
        factor = mask_window_factor(n_seg, n_window)
        if cfg.over_candidates:
            masks, ious = model.decode_seg_states(hidden[seg], feats, per_seg, candidates=True)
            bce, dice, iou = candidate_mask_losses(masks, ious, gt, bce_weight=cfg.bce_weight, dice_weight=cfg.dice_weight,
                                                   dice_eps=cfg.dice_eps, selection=cfg.mask_selection)
            terms["mask_iou"] = cfg.iou_weight * iou * factor
        else:
            masks, _ = model.decode_seg_states(hidden[seg], feats, per_seg)
            bce, dice = mask_bce(masks, gt), mask_dice(masks, gt, cfg.dice_eps)
        terms["mask_bce"] = cfg.bce_weight * bce * factor
        terms["mask_dice"] = cfg.dice_weight * dice * factor
        if cfg.point_align_weight > 0:
            terms["point_align"] = cfg.point_align_weight * factor * _point_align(model, hidden[seg], gt)
    return terms


def _point_align(model, seg_hidden, gt):
    area = gt.sum(dim=(1, 2))
    keep = area > 0
    coords = (torch.arange(256, dtype=gt.dtype) + 0.5) / 256
    x = (gt.sum(dim=1) * coords).sum(-1) / area.clamp_min(1)
    y = (gt.sum(dim=2) * coords).sum(-1) / area.clamp_min(1)
    target = model.segmenter.point_prompt_embedding(torch.stack([x, y], dim=-1)[keep])
    return F.mse_loss(model.seg_projector(seg_hidden[keep]), target)


def _model(**loss_changes):
    model = build_model(CitrusVConfigPreset(), seed=SEED).eval()
    model.config.loss = dataclasses.replace(model.config.loss, **loss_changes)
    return model


def CitrusVConfigPreset():  # noqa: N802 - a fresh preset per model: tests change its loss config
    from citrus_v.config import CitrusVConfig

    return CitrusVConfig.preset("tiny")


CASES = {
    "published (picked mask)": dict(loss={"iou_weight": 0.0, "mask_selection": "predicted_iou"}, call={}),
    "tiny default (iou head, min-loss pick)": dict(loss={}, call={}),
    "predicted-iou pick with iou head, window 12": dict(loss={"mask_selection": "predicted_iou"}, call={"n_window": 12}),
    "min-loss pick without iou head, window 5": dict(loss={"iou_weight": 0.0}, call={"n_window": 5}),
    "point align, lean logits": dict(loss={"point_align_weight": 0.5}, call={"full_logits": False}),
    "copy attention": dict(loss={}, call={"copy": True}),
    "token reading, lean logits": dict(loss={}, call={"reading": True, "full_logits": False}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_term_and_the_total_equal_the_old_forwards(case):
    spec = CASES[case]
    model = _model(**spec["loss"])
    batch = make_batch(model.config)
    call = dict(spec["call"])
    extra = {}
    if call.pop("copy", False):
        model.set_copy_attention(1, 0, weight=0.5)
        extra["copy_pairs"] = _pairs(batch, model.config.tokens.image_token_id)
    if call.pop("reading", False):
        model.set_token_reading(0.5)
        extra["reading"] = _labels(batch)
    with torch.no_grad():
        want = _reference(model, batch, **call, **extra)
        full = {**batch, **extra}
        out = model(**forward_inputs(model, full, logits=call.get("full_logits", True)))
        got = score(model, out, full, masks_in_window=call.get("n_window"))
    assert set(got.terms) == set(want)
    for name, value in want.items():
        torch.testing.assert_close(got.terms[name], value, rtol=1e-5, atol=1e-6, msg=f"term {name}")
    torch.testing.assert_close(got.total, sum(want.values()), rtol=1e-5, atol=1e-6)
    assert MASK_TERMS >= {n for n in want if n.startswith("mask_") or n == "point_align"}


def test_no_seg_scores_the_lm_alone_and_a_frozen_lm_leaves_nothing_to_train():
    model = _model()
    batch = make_batch(model.config, seg_per_row=(0, 0))
    batch["gt_masks"] = batch["gt_masks"][:0]
    out = model(**forward_inputs(model, batch))
    got = score(model, out, batch)
    assert set(got.terms) == {"lm"} and got.trains
    model.set_trainable(["seg_projector", "sam2_mask_decoder"])  # stage 4: the LM term has no gradient
    out = model(**forward_inputs(model, batch))
    assert not score(model, out, batch).trains
