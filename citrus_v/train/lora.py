"""LoRA adapters (peft) on the MLLM's linear layers: the 8b fine-tune on one GPU.

``apply_lora`` injects adapters in place (no PeftModel wrapper, so parameter names keep
their CitrusV prefixes and the freeze-by-part API still works); ``restrict_to_lora`` leaves
only adapters trainable inside the MLLM (stage parts outside it, e.g. SAM2, train as the
stage says); ``merge_lora_state_dict`` folds adapters into plain weights for export.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

LLM_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class LoraSettings:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    targets: tuple[str, ...] = LLM_TARGETS

    def __post_init__(self) -> None:
        if self.r <= 0 or self.alpha <= 0:
            raise ValueError(f"LoraSettings: r and alpha must be > 0, got r={self.r}, alpha={self.alpha}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"LoraSettings.dropout: must be in [0, 1), got {self.dropout}")

    @property
    def scaling(self) -> float:
        return self.alpha / self.r


def apply_lora(model: nn.Module, settings: LoraSettings = LoraSettings()) -> nn.Module:
    from peft import LoraConfig, inject_adapter_in_model

    cfg = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                     target_modules=list(settings.targets))
    inject_adapter_in_model(cfg, model.mllm)
    return model


def restrict_to_lora(model: nn.Module) -> None:
    """Inside the MLLM only ``lora_`` tensors train; everything else keeps its flag."""
    for name, p in model.named_parameters():
        if name.startswith("mllm."):
            p.requires_grad_("lora_" in name)


def merge_lora_state_dict(sd: dict[str, torch.Tensor], scaling: float) -> dict[str, torch.Tensor]:
    """W = W0 + scaling * B @ A for every adapted layer; adapter keys dropped, names restored."""
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if ".lora_" in key:
            continue
        if ".base_layer." in key:
            prefix, _, leaf = key.partition(".base_layer.")
            if leaf == "weight":
                a = sd[f"{prefix}.lora_A.default.weight"]  # (r, in)
                b = sd[f"{prefix}.lora_B.default.weight"]  # (out, r)
                value = value + scaling * (b.float() @ a.float()).to(value.dtype)
            key = f"{prefix}.{leaf}"
        out[key] = value
    return out
