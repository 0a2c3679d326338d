"""Model FLOPs of a training step, counted analytically (the convention of the reference anchor scripts).

A dense matmul with N weights costs 2N FLOPs per token forward and 4N backward: 6N per token.
Causal self-attention adds, per token and layer, 2*S*H forward (QK^T and AV, each 2*S*H over
S keys, halved by the causal mask), so 6*S*H forward + backward. Activation recomputation
(gradient checkpointing) is NOT counted: these are model FLOPs, not hardware FLOPs.
``params`` is whatever the caller counts; the anchors count every LLM parameter (embedding
included) and every ViT parameter, and we do the same so the numbers compare.
"""

from __future__ import annotations


def train_flops(params: int, tokens: int, seq_len: int, n_layers: int, hidden: int) -> float:
    """Forward + backward FLOPs of ``tokens`` tokens in sequences of ``seq_len`` through a
    decoder of ``n_layers`` x ``hidden`` with ``params`` weights: 6*N*T + 6*L*H*S*T.

    >>> train_flops(params=10, tokens=4, seq_len=4, n_layers=2, hidden=3)
    816.0
    """
    for name, value in {"params": params, "tokens": tokens, "seq_len": seq_len, "n_layers": n_layers, "hidden": hidden}.items():
        if value < 0:
            raise ValueError(f"train_flops: {name} must be >= 0, got {value}")
    return float(6 * params * tokens + 6 * n_layers * hidden * seq_len * tokens)


def multimodal_train_flops(
    llm_params: int, vision_params: int, tokens: int, patches: int, n_layers: int, hidden: int
) -> float:
    """One sequence of ``tokens`` (image tokens included) whose images have ``patches`` ViT
    patches (before the 2x2 merge): LLM term + 6 * vision_params * patches (ViT attention
    left out, as in the multimodal training anchor, ``hf_train_mm.py``)."""
    return train_flops(llm_params, tokens, tokens, n_layers, hidden) + 6.0 * vision_params * patches
