"""Training objectives: a CitrusV forward output + the batch's targets -> named, weighted loss terms.

The model computes (``CitrusV.forward``: logits or hidden states, [SEG] states, masks and their
predicted IoU, the auxiliary heads' raw outputs); this module scores. Terms, each already times its
``LossConfig`` weight, as they add up to the total:

    lm              next-token cross-entropy over supervised positions
    mask_bce        bce_weight  x sigmoid BCE    \\
    mask_dice       dice_weight x Dice            |  x (masks in this micro-batch / masks in the
    mask_iou        iou_weight  x IoU-head MSE    |     accumulation window), DESIGN §1
    point_align     point_align_weight x MSE     /
    copy_attention  CopyAttention.weight x -log attention on each copy pair's key
    token_reading   TokenReading.weight x cross-entropy of the reading head

A term is present only when it applies (no [SEG] -> no mask terms; point_align only when weighted).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from citrus_v.model.losses import (
    candidate_mask_losses, lm_cross_entropy, lm_cross_entropy_supervised, mask_bce, mask_dice, mask_window_factor,
)
from citrus_v.model.segmenter import MASK_SIZE
from citrus_v.model.token_reading import IGNORE

if TYPE_CHECKING:
    from citrus_v.config import LossConfig
    from citrus_v.model.citrus_v import CitrusV, CitrusVOutput

# Terms scaled by the accumulation window's mask count: under DDP/FSDP they are summed over ranks,
# not averaged (the recipe's world-size rule, train.recipe._accumulate).
MASK_TERMS = frozenset({"mask_bce", "mask_dice", "mask_iou", "point_align"})
TARGET_KEYS = ("labels", "gt_masks", "reading")  # batch entries the objectives read and the model does not


@dataclass
class LossTerms:
    """Named loss terms (weighted, as they enter ``total``) and accuracies of the auxiliary heads."""

    terms: dict[str, torch.Tensor]
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)  # copy_attention_acc, token_reading_acc

    @property
    def total(self) -> torch.Tensor:
        return sum(self.terms.values())  # type: ignore[return-value]

    @property
    def trains(self) -> bool:
        """Whether any term has a gradient into a trainable parameter (stage 4 on a [SEG]-free batch: none)."""
        return any(t.requires_grad for t in self.terms.values())


def forward_inputs(model: CitrusV, batch: dict[str, Any], *, logits: bool = False) -> dict[str, Any]:
    """The keyword arguments of ``model.forward`` for a collated training batch: its inputs, every
    mask candidate when the mask loss needs them, and the auxiliary heads' outputs when their
    targets are in the batch. ``logits=False`` (training) skips the (B, L, V) projection."""
    inputs = {k: v for k, v in batch.items() if k not in TARGET_KEYS}
    has_masks = batch.get("gt_masks") is not None and len(batch["gt_masks"]) > 0
    inputs["mask_candidates"] = has_masks and model.config.loss.over_candidates
    inputs["logits"] = logits
    inputs["read_tokens"] = batch.get("reading") is not None
    return inputs


def forward_and_score(
    model: CitrusV, batch: dict[str, Any], masks_in_window: int | None = None, *, logits: bool = False
) -> tuple[CitrusVOutput, LossTerms]:
    """``model``'s forward on a collated batch, and its loss terms."""
    out = model(**forward_inputs(model, batch, logits=logits))
    return out, score(model, out, batch, masks_in_window)


def score(model: CitrusV, out: CitrusVOutput, batch: dict[str, Any], masks_in_window: int | None = None) -> LossTerms:
    """Named loss terms of ``out`` against ``batch``'s targets (labels, gt_masks (n_seg, 256, 256),
    copy_pairs, reading). ``masks_in_window`` scales the mask terms (None: 1)."""
    cfg = model.config.loss
    terms: dict[str, torch.Tensor] = {}
    metrics: dict[str, torch.Tensor] = {}
    labels = batch.get("labels")
    if labels is None:
        raise ValueError("the batch has no 'labels': nothing to score the language model on")
    if out.logits is not None:
        terms["lm"] = lm_cross_entropy(out.logits, labels)
    else:
        terms["lm"] = lm_cross_entropy_supervised(out.hidden, model.mllm.lm_head, labels)
    gt = batch.get("gt_masks")
    n_seg = out.seg_states.shape[0]
    _check_mask_count(n_seg, gt)
    if n_seg and gt is not None:
        terms.update(_mask_terms(model, out, gt.to(out.pred_masks.dtype), mask_window_factor(n_seg, masks_in_window)))
    if out.copy_log_probs is not None:
        keys = batch["copy_pairs"][:, 2]
        terms["copy_attention"] = model.copy_attention.weight * -out.copy_log_probs.gather(1, keys[:, None]).mean()
        metrics["copy_attention_acc"] = (out.copy_log_probs.argmax(-1) == keys).float().mean().detach()
    reading = batch.get("reading")
    if out.reading_logits is not None and reading is not None and bool((reading != IGNORE).any()):
        terms["token_reading"], metrics["token_reading_acc"] = _reading(model, out.reading_logits, reading)
    return LossTerms(terms, metrics)


def _check_mask_count(n_seg: int, gt: torch.Tensor | None) -> None:
    # bookkeeping fails loudly: a mismatch is never truncated
    if gt is None:
        return
    if gt.ndim != 3 or tuple(gt.shape[1:]) != (MASK_SIZE, MASK_SIZE):
        raise ValueError(f"gt_masks must be (n_seg, {MASK_SIZE}, {MASK_SIZE}), got {tuple(gt.shape)}")
    if gt.shape[0] != n_seg:
        raise ValueError(f"[SEG] count mismatch: input_ids hold {n_seg} [SEG] tokens but gt_masks has {gt.shape[0]} masks")


def _mask_terms(model: CitrusV, out: CitrusVOutput, gt: torch.Tensor, factor: float) -> dict[str, torch.Tensor]:
    cfg = model.config.loss
    if cfg.over_candidates and out.mask_candidates is None:
        raise ValueError("LossConfig needs every mask candidate (iou_weight > 0 or min_loss): call forward with mask_candidates=True")
    if cfg.over_candidates:
        terms = mask_terms(cfg, out.mask_candidates, out.candidate_iou, gt, candidates=True, factor=factor)
    else:
        terms = mask_terms(cfg, out.pred_masks, out.iou_scores, gt, candidates=False, factor=factor)
    if cfg.point_align_weight > 0:
        terms["point_align"] = cfg.point_align_weight * factor * point_align(model, out.seg_states, gt)
    return terms


def mask_terms(cfg: LossConfig, masks: torch.Tensor, ious: torch.Tensor, gt: torch.Tensor, *, candidates: bool,
               factor: float = 1.0) -> dict[str, torch.Tensor]:
    """mask_bce, mask_dice (and mask_iou over candidates), weighted and times ``factor``, of the decoder's
    output against gt (n_seg, 256, 256): on the picked mask (n_seg, 256, 256), the published loss, or
    (``candidates``) over every candidate (n_seg, M, 256, 256) with the one ``mask_selection`` picks."""
    if candidates:
        bce, dice, iou = candidate_mask_losses(
            masks, ious, gt, bce_weight=cfg.bce_weight, dice_weight=cfg.dice_weight, dice_eps=cfg.dice_eps,
            selection=cfg.mask_selection,
        )  # fmt: skip
        iou_term = {"mask_iou": cfg.iou_weight * iou * factor}  # kept at weight 0: the old total had it (zero gradients)
    else:
        bce, dice, iou_term = mask_bce(masks, gt), mask_dice(masks, gt, cfg.dice_eps), {}
    return {"mask_bce": cfg.bce_weight * bce * factor, "mask_dice": cfg.dice_weight * dice * factor, **iou_term}


def point_align(model: CitrusV, seg_states: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Mean squared distance between each projected [SEG] embedding (n_seg, C) and the segmenter's
    embedding of a positive point at its ground-truth mask's centroid (a fixed target: no gradient
    into the prompt encoder). Empty ground truths are skipped."""
    from citrus_v.model.seg_projector import scale_grad

    if not model.segmenter.supports_point_embedding:
        raise ValueError(f"LossConfig.point_align_weight needs a SAM2 segmenter, not {model.config.segmenter.kind!r}")
    area = gt.sum(dim=(1, 2))  # (n_seg,)
    keep = area > 0
    if not bool(keep.any()):
        return gt.new_zeros(())
    side = gt.shape[-1]
    coords = (torch.arange(side, device=gt.device, dtype=gt.dtype) + 0.5) / side  # pixel centres in 0..1
    x = (gt.sum(dim=1) * coords).sum(-1) / area.clamp_min(1)  # (n_seg,)
    y = (gt.sum(dim=2) * coords).sum(-1) / area.clamp_min(1)
    with torch.no_grad():
        target = model.segmenter.point_prompt_embedding(torch.stack([x, y], dim=-1)[keep])
    prompts = scale_grad(model.seg_projector(seg_states[keep]), model.config.seg_grad_scale)
    return F.mse_loss(prompts, target.to(prompts.dtype))


def _reading(model: CitrusV, logits: torch.Tensor, reading: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight x mean cross-entropy over labelled slots, share of written characters read right);
    logits (N, SLOTS, classes), reading (N, SLOTS) with IGNORE where a token has no labels."""
    if len(logits) != len(reading):
        raise ValueError(f"reading labels cover {len(reading)} image tokens, the vision tower gave {len(logits)}")
    logits = logits.float()
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), reading.reshape(-1), ignore_index=IGNORE)
    written = reading > 0
    acc = (logits.argmax(-1)[written] == reading[written]).float().mean() if bool(written.any()) else logits.new_ones(())
    return model.token_reading.weight * loss, acc.detach()


class Objective(nn.Module):
    """forward(batch) -> LossTerms: the model's forward and its scoring in one module, so that DDP
    wraps exactly the terms that train (DDP marks "used" whatever its output depends on; CitrusV also
    returns outputs outside any loss, e.g. the predicted IoU).

    ``keep_in_step`` (DDP/FSDP): a micro-batch with no term to train still has to join the ranks'
    gradient collectives, so its terms gain ``step_anchor``: zero times a forward output that holds
    trainable parameters (the [SEG] prompts, projected even when there are none, so that under FSDP2
    every rank's backward starts from the root module's output and prefetches alike), or else zero
    times one trainable parameter. It adds 0 to the loss and a zero gradient."""

    def __init__(self, model: CitrusV, keep_in_step: bool = False) -> None:
        super().__init__()
        self.model = model  # under FSDP2, sharded in place: still the CitrusV whose config scores
        self.keep_in_step = keep_in_step

    def forward(self, batch: dict[str, Any], masks_in_window: int | None = None) -> LossTerms:
        out, terms = forward_and_score(self.model, batch, masks_in_window)
        if self.keep_in_step and not terms.trains:
            held = out.seg_prompts if out.seg_prompts.requires_grad else _first_trainable(self.model)
            terms.terms["step_anchor"] = 0.0 * held.sum()
        return terms


def _first_trainable(model: nn.Module) -> torch.Tensor:
    # under FSDP2 the root's own parameters (seg projector, segmenter) stay unsharded from its forward
    # to its backward, and the anchor must reach the same tensors the backward reduces; a sharded
    # DTensor (a decoder layer's, resharded after its forward) would not
    from torch.distributed.tensor import DTensor

    for p in model.parameters():
        if p.requires_grad and not isinstance(p, DTensor):
            return p
    raise ValueError("the stage trains no parameter that a micro-batch could anchor to")
