"""AdamW on the trainable parameters and the cosine-with-warm-up schedule."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from citrus_v.train.stages import StageConfig


def cosine_with_warmup(step: int, *, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0) -> float:
    """Learning-rate multiplier at optimizer step ``step`` (0-based).

    Linear from 1/(warmup+1) up to 1 over ``warmup_steps`` (never 0, so step 0 already
    learns), then a half cosine from 1 down to ``min_lr_ratio`` at ``total_steps``.
    """
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _part_scale(name: str, scales: dict[str, float]) -> float:
    """The stage's lr multiplier for a parameter; DDP/FSDP/LoRA wrappers prefix names, so
    leading segments are dropped until the name belongs to a part."""
    if not scales:
        return 1.0
    from citrus_v.model.citrus_v import part_of

    parts = name.split(".")
    for k in range(len(parts)):
        try:
            return scales.get(part_of(".".join(parts[k:])), 1.0)
        except KeyError:
            continue
    raise KeyError(f"parameter {name!r} belongs to no model part, so part_lr_scale cannot apply")


def build_optimizer(model: nn.Module, stage: StageConfig) -> torch.optim.AdamW:
    """AdamW over the parameters that require grad; norms and biases get no weight decay
    (decaying a LayerNorm gain towards 0 only fights the model). ``stage.part_lr_scale``
    multiplies the learning rate of the parts it names."""
    buckets: dict[tuple[float, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        key = (_part_scale(name, stage.part_lr_scale), p.ndim < 2)  # (lr scale, no decay)
        buckets.setdefault(key, []).append(p)
    if not buckets:
        raise ValueError(f"stage {stage.name}: no trainable parameters for parts {stage.trainable_parts}")
    # fixed group order (scale 1.0 decay first) keeps optimizer state files stable across runs
    groups = [
        {"params": params, "weight_decay": 0.0 if no_decay else stage.weight_decay, "lr": stage.lr * scale}
        for (scale, no_decay), params in sorted(buckets.items(), key=lambda kv: (kv[0][0] != 1.0, kv[0][0], kv[0][1]))
    ]
    # foreach=False: the single-tensor path gives bit-identical results between a resumed
    # and an uninterrupted run regardless of how tensors are grouped
    return torch.optim.AdamW(groups, lr=stage.lr, betas=stage.betas, eps=stage.eps, foreach=False)


def build_scheduler(optimizer: torch.optim.Optimizer, stage: StageConfig,
                    total_steps: int | Callable[[], int]) -> torch.optim.lr_scheduler.LambdaLR:
    """Cosine with warm-up over ``total_steps``; a callable is read at every step (a run whose
    length is settled while it runs, by a time budget)."""
    horizon = total_steps if callable(total_steps) else (lambda: total_steps)

    def factor(step: int) -> float:
        return cosine_with_warmup(
            step, warmup_steps=stage.warmup_steps, total_steps=horizon(), min_lr_ratio=stage.min_lr_ratio
        )

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
