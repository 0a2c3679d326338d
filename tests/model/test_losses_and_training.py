import math

import pytest
import torch

from citrus_v.model.build import build_model
from citrus_v.model.citrus_v import PART_NAMES, PARTS, part_of
from citrus_v.model.losses import lm_cross_entropy, mask_bce, mask_dice, mask_window_factor
from citrus_v.model.objectives import forward_and_score, forward_inputs


def test_mask_losses_match_a_hand_computation():
    logits = torch.tensor([[[0.0, 2.0], [-2.0, 0.0]]])  # one 2x2 mask
    gt = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])
    s = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    p = [s(0.0), s(2.0), s(-2.0), s(0.0)]
    g = [1, 1, 0, 0]
    bce = -sum(gi * math.log(pi) + (1 - gi) * math.log(1 - pi) for pi, gi in zip(p, g)) / 4
    inter = sum(pi * gi for pi, gi in zip(p, g))
    dice = 1 - (2 * inter + 1) / (sum(p) + sum(g) + 1)
    assert mask_bce(logits, gt).item() == pytest.approx(bce, rel=1e-6)
    assert mask_dice(logits, gt, eps=1.0).item() == pytest.approx(dice, rel=1e-6)
    # Dice is a mean over masks: an empty prediction on an empty truth scores 0 loss (eps/eps)
    two = torch.cat([logits, torch.full((1, 2, 2), -1e4)])
    two_gt = torch.cat([gt, torch.zeros(1, 2, 2)])
    assert mask_dice(two, two_gt).item() == pytest.approx(dice / 2, rel=1e-5)


def test_lm_loss_is_shifted_mean_over_supervised_tokens():
    logits = torch.zeros(1, 3, 4)
    logits[0, 0, 2] = math.log(3.0)  # p(token 2 | pos 0) = 3/6
    labels = torch.tensor([[-100, 2, 1]])  # supervise pos0 -> 2 and pos1 -> 1 (uniform: 1/4)
    expected = (-math.log(0.5) - math.log(0.25)) / 2
    assert lm_cross_entropy(logits, labels).item() == pytest.approx(expected, rel=1e-6)


def test_window_factor_and_model_loss_scaling(tiny_model, batch):
    assert mask_window_factor(3, None) == 1.0
    assert mask_window_factor(3, 12) == 0.25
    with pytest.raises(ValueError, match="num_masks_in_window=2.*3 masks"):
        mask_window_factor(3, 2)
    with torch.no_grad():
        plain = forward_and_score(tiny_model, batch)[1].terms
        window = forward_and_score(tiny_model, batch, masks_in_window=12)[1]
    torch.testing.assert_close(window.terms["mask_bce"], plain["mask_bce"] * 0.25)
    torch.testing.assert_close(window.terms["mask_dice"], plain["mask_dice"] * 0.25)
    torch.testing.assert_close(window.terms["lm"], plain["lm"])
    torch.testing.assert_close(window.terms["mask_iou"], plain["mask_iou"] * 0.25)
    w = window.terms
    torch.testing.assert_close(window.total, plain["lm"] + w["mask_bce"] + w["mask_dice"] + w["mask_iou"])


def _mask_grads(model, batch):
    model.zero_grad()
    terms = forward_and_score(model, batch)[1].terms
    (terms["mask_bce"] + terms["mask_dice"]).backward()  # weighted: 2 x BCE + Dice
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_seg_grad_scale_scales_projector_and_llm_but_not_sam2(tiny_config, batch, seed):
    model = build_model(tiny_config, seed=seed).train()
    full = _mask_grads(model, batch)
    model.set_seg_grad_scale(0.001)
    scaled = _mask_grads(model, batch)
    assert set(full) == set(scaled)
    upstream = [n for n in full if part_of(n) in ("seg_projector", "llm", "vision_encoder", "merger")]
    sam2 = [n for n in full if part_of(n).startswith("sam2_")]
    assert upstream and sam2
    for n in upstream:
        torch.testing.assert_close(scaled[n], full[n] * 0.001, rtol=1e-4, atol=1e-12)
    for n in sam2:
        torch.testing.assert_close(scaled[n], full[n], rtol=0, atol=0)
    with torch.no_grad():  # the forward value does not change
        model.set_seg_grad_scale(1.0)
        a = model(**forward_inputs(model, batch)).pred_masks
        model.set_seg_grad_scale(0.001)
        b = model(**forward_inputs(model, batch)).pred_masks
    torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.fixture
def with_reading_head(tiny_model):
    """The tiny model with its training-only reading head on (the part exists only then)."""
    tiny_model.set_token_reading(1.0)
    yield tiny_model
    tiny_model.set_token_reading(None)


def test_every_parameter_has_exactly_one_part(with_reading_head):
    for name, _ in with_reading_head.named_parameters():
        assert part_of(name) in PART_NAMES
    counts = with_reading_head.parameter_counts()
    assert all(counts[p] > 0 for p in PART_NAMES)


@pytest.mark.parametrize("part", PART_NAMES)
def test_each_freeze_plan_trains_exactly_its_part(with_reading_head, part):
    with_reading_head.set_trainable([part])
    trainable = {n for n, p in with_reading_head.named_parameters() if p.requires_grad}
    expected = {n for n, _ in with_reading_head.named_parameters() if part_of(n) == part}
    assert trainable == expected and trainable
    assert all(n.startswith(PARTS[part]) for n in trainable)
    assert with_reading_head.trainable_parts() == [part]


def test_published_stage_plans(tiny_model):
    stages = {
        1: ["vision_encoder", "merger"],
        2: ["vision_encoder", "merger", "llm", "lm_head"],
        4: ["seg_projector", "sam2_image_encoder", "sam2_prompt_encoder", "sam2_mask_decoder", "sam2_memory"],
    }
    for parts in stages.values():
        tiny_model.set_trainable(parts)
        assert tiny_model.trainable_parts() == [p for p in PART_NAMES if p in parts]
    tiny_model.set_trainable(["merger"])
    assert tiny_model.mllm.model.visual.merger.mlp[0].weight.requires_grad
    assert not tiny_model.mllm.model.visual.blocks[0].attn.qkv.weight.requires_grad
    with pytest.raises(ValueError, match=r"unknown part\(s\) \['sam2'\]"):
        tiny_model.set_trainable(["sam2"])


def test_supervised_only_lm_loss_equals_full_logits_loss(tiny_model, batch):
    # logits=False projects only supervised positions: same loss, same gradients
    out_full, full = forward_and_score(tiny_model, batch, logits=True)
    out_lean, lean = forward_and_score(tiny_model, batch, logits=False)
    assert out_lean.logits is None and out_full.logits is not None
    torch.testing.assert_close(lean.terms["lm"], full.terms["lm"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(lean.total, full.total, rtol=1e-5, atol=1e-6)
    g_full = torch.autograd.grad(full.total, tiny_model.mllm.lm_head.weight)[0]
    g_lean = torch.autograd.grad(lean.total, tiny_model.mllm.lm_head.weight)[0]
    torch.testing.assert_close(g_lean, g_full, rtol=1e-4, atol=1e-6)



def test_candidate_losses_by_hand():
    from citrus_v.model.losses import candidate_mask_losses

    # one mask, three 1x2 candidates; ground truth [1, 0]
    gt = torch.tensor([[[1.0, 0.0]]])  # (1, 1, 2)
    cands = torch.tensor([[[[10.0, 10.0]], [[10.0, -10.0]], [[-10.0, -10.0]]]])  # (1, 3, 1, 2)
    pred_iou = torch.tensor([[0.9, 0.1, 0.5]])
    # candidate 1 is exact: min_loss picks it; predicted_iou picks candidate 0 (predicted 0.9)
    bce, dice, mse = candidate_mask_losses(cands, pred_iou, gt, bce_weight=2, dice_weight=1, dice_eps=1, selection="min_loss")
    assert bce.item() < 1e-3 and dice.item() == pytest.approx(1 - 3 / (1 + 1 + 1), abs=1e-3)
    # actual IoUs of the hard masks [1,1], [1,0], [0,0] vs [1,0]: 0.5, 1.0, 0.0
    assert mse.item() == pytest.approx(((0.9 - 0.5) ** 2 + (0.1 - 1.0) ** 2 + (0.5 - 0.0) ** 2) / 3, rel=1e-5)
    bce0, _, _ = candidate_mask_losses(cands, pred_iou, gt, bce_weight=2, dice_weight=1, dice_eps=1, selection="predicted_iou")
    assert bce0.item() == pytest.approx(10 / 2, rel=1e-3)  # candidate 0: pixel 2 is 10 logits wrong
    with pytest.raises(ValueError, match="selection"):
        candidate_mask_losses(cands, pred_iou, gt, bce_weight=2, dice_weight=1, dice_eps=1, selection="best")
