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
    return F.binary_cross_entropy_with_logits(pred_logits.float(), gt_masks.float(), reduction="mean")


def mask_dice(pred_logits: torch.Tensor, gt_masks: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - (2*sum(p*g) + eps) / (sum(p) + sum(g) + eps) per mask on sigmoid(p), mean over masks."""
    p = pred_logits.float().sigmoid().flatten(1)  # (n, H*W)
    g = gt_masks.float().flatten(1)
    dice = (2 * (p * g).sum(1) + eps) / (p.sum(1) + g.sum(1) + eps)
    return (1 - dice).mean()


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
