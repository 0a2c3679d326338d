"""[SEG] hidden state -> SAM2 prompt embedding, and the stage-3 gradient scaling ("HookGrad")."""

from __future__ import annotations

import torch
from torch import nn


def build_seg_projector(llm_hidden: int, prompt_dim: int) -> nn.Sequential:
    """Linear(H, H) -> ReLU -> Linear(H, prompt_dim); indices 0 and 2 are the published names."""
    return nn.Sequential(nn.Linear(llm_hidden, llm_hidden), nn.ReLU(), nn.Linear(llm_hidden, prompt_dim))


class _ScaleGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:  # type: ignore[override]
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return grad * ctx.scale, None


def scale_grad(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Identity forward; multiplies the gradient flowing back through ``x`` by ``scale``.

    Applied to the projector output so the segmentation loss reaches the projector and the
    MLLM scaled down (stage 3 uses 0.001) while SAM2 downstream keeps full gradients.
    """
    if scale == 1.0:
        return x
    return _ScaleGrad.apply(x, scale)
