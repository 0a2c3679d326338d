"""Citrus-V losses: LM cross-entropy + weighted sigmoid BCE + Dice on 256x256 mask logits."""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def lm_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token CE, mean over supervised tokens: logits (B, L, V), labels (B, L) with -100 ignored."""
    shift_logits = logits[:, :-1].reshape(-1, logits.shape[-1]).float()  # (B*(L-1), V)
    shift_labels = labels[:, 1:].reshape(-1)  # (B*(L-1),)
    if not (shift_labels != IGNORE_INDEX).any():
        return shift_logits.sum() * 0.0  # nothing supervised: a zero that keeps the graph
    return F.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE_INDEX)


def lm_cross_entropy_supervised(hidden: torch.Tensor, lm_head: torch.nn.Module, labels: torch.Tensor) -> torch.Tensor:
    """The same loss as ``lm_cross_entropy(lm_head(hidden), labels)``, projecting only supervised positions.

    Training never needs logits where the label is -100 (system, user and image tokens, most
    of a sequence), so this skips most of the (B, L, V) projection and its softmax.
    hidden (B, L, H) after the final norm; labels (B, L).
    """
    shift_labels = labels[:, 1:]  # (B, L-1): position t predicts token t+1
    keep = shift_labels != IGNORE_INDEX
    if not keep.any():
        return lm_head(hidden[:, :1]).sum() * 0.0  # nothing supervised: a zero that keeps the graph
    picked = hidden[:, :-1][keep]  # (n_supervised, H)
    logits = lm_head(picked).float()  # (n_supervised, V)
    return F.cross_entropy(logits, shift_labels[keep])


def mask_bce(pred_logits: torch.Tensor, gt_masks: torch.Tensor) -> torch.Tensor:
    """Sigmoid BCE averaged over every pixel of every mask: (n, H, W) each."""
    return mask_bce_per_mask(pred_logits, gt_masks).mean()  # masks share H x W: mean of means = mean


def mask_dice(pred_logits: torch.Tensor, gt_masks: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - (2*sum(p*g) + eps) / (sum(p) + sum(g) + eps) per mask on sigmoid(p), mean over masks."""
    return mask_dice_per_mask(pred_logits, gt_masks, eps).mean()


def mask_window_factor(num_masks: int, num_masks_in_window: int | None) -> float:
    """Weight of this micro-batch's mask losses: its masks / masks in the accumulation window."""
    if num_masks_in_window is None:
        return 1.0
    if num_masks_in_window < num_masks:
        raise ValueError(
            f"num_masks_in_window={num_masks_in_window} is smaller than the {num_masks} masks in this micro-batch"
        )
    if num_masks_in_window == 0:
        return 0.0
    return num_masks / num_masks_in_window


def mask_bce_per_mask(pred_logits: torch.Tensor, gt_masks: torch.Tensor) -> torch.Tensor:
    """Sigmoid BCE averaged over each mask's pixels: (..., H, W) each -> (...)."""
    pred, gt = torch.broadcast_tensors(pred_logits.float(), gt_masks.float())
    return F.binary_cross_entropy_with_logits(pred, gt, reduction="none").flatten(-2).mean(-1)


def mask_dice_per_mask(pred_logits: torch.Tensor, gt_masks: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - Dice on sigmoid(pred) per mask: (..., H, W) each -> (...)."""
    p = pred_logits.float().sigmoid().flatten(-2)  # (..., H*W)
    g = gt_masks.float().flatten(-2).expand_as(p)
    return 1 - (2 * (p * g).sum(-1) + eps) / (p.sum(-1) + g.sum(-1) + eps)


def candidate_mask_losses(
    cand_logits: torch.Tensor,
    cand_iou: torch.Tensor,
    gt_masks: torch.Tensor,
    *,
    bce_weight: float,
    dice_weight: float,
    dice_eps: float,
    selection: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mask losses over SAM's multimask candidates: (bce, dice, iou_mse), each a mean over masks.

    cand_logits (n, M, H, W), cand_iou (n, M) predicted IoU, gt_masks (n, H, W) binary.
    ``selection`` picks the candidate each mask's BCE/Dice is taken on: "predicted_iou" (the
    published rule, the one inference uses) or "min_loss" (the candidate that fits best, as SAM
    itself is trained; it lets a from-scratch decoder specialise its mask tokens). iou_mse is the
    mean squared error between the predicted IoU of EVERY candidate and its actual IoU with the
    ground truth (binarised at 0, no gradient through the target), which teaches the IoU head
    that both the selection and the score shown to users rely on.
    """
    gt = gt_masks.float()[:, None]  # (n, 1, H, W)
    bce = mask_bce_per_mask(cand_logits, gt)  # (n, M)
    dice = mask_dice_per_mask(cand_logits, gt, dice_eps)  # (n, M)
    if selection == "min_loss":
        pick = (bce_weight * bce + dice_weight * dice).detach().argmin(-1)  # (n,)
    elif selection == "predicted_iou":
        pick = cand_iou.detach().argmax(-1)
    else:
        raise ValueError(f"selection must be 'predicted_iou' or 'min_loss', got {selection!r}")
    rows = torch.arange(cand_logits.shape[0], device=cand_logits.device)
    with torch.no_grad():
        hard = cand_logits > 0
        inter = (hard & (gt > 0.5)).flatten(-2).sum(-1).float()
        union = (hard | (gt > 0.5)).flatten(-2).sum(-1).float()
        actual_iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))  # (n, M)
    iou_mse = F.mse_loss(cand_iou.float(), actual_iou)
    return bce[rows, pick].mean(), dice[rows, pick].mean(), iou_mse
