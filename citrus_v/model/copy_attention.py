"""The copy-attention target: one LLM head is told where to look when an answer copies from the image.

A small model asked "What is the glucose value?" about a lab page has to find the row's value among the
page's image tokens and write its digits one by one. Trained on the answers alone, ours never found it
(docs/default_model.md, "Documents"): every image run stayed at the answer prior. This loss names the
place: for each answer token whose character the image shows (``Example.copy_pairs``: the position that
predicts it, and the image token holding the character), one head of one LLM layer is trained to put its
attention there (negative log of the attention weight on that key). The model and its forward pass are
unchanged; the head's scores are recomputed from what its layer was given (objectives.score makes them the loss), so the attention itself runs
on whatever kernel the model uses (SDPA here).
"""

from __future__ import annotations

import torch
from torch import nn

from citrus_v.model.capture import HookCapture


class CopyAttention(HookCapture):
    """Recomputes one head's attention (``layer``, ``head``) of a Qwen2.5-VL language model for chosen
    queries; ``capture()`` around a forward pass records what the layer's attention was given."""

    def __init__(self, language_model: nn.Module, layer: int, head: int, weight: float) -> None:
        from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb

        layers = language_model.layers
        if not 0 <= layer < len(layers):
            raise ValueError(f"copy_attention layer must be in [0, {len(layers)}), got {layer}")
        self.attn = layers[layer].self_attn
        if not 0 <= head < self.attn.num_heads:
            raise ValueError(f"copy_attention head must be in [0, {self.attn.num_heads}), got {head}")
        if weight < 0:
            raise ValueError(f"copy_attention weight must be >= 0, got {weight}")
        self.layer, self.head, self.weight = layer, head, float(weight)
        self._rotate = apply_rotary_pos_emb
        self._hook = self.attn.register_forward_pre_hook(self._record, with_kwargs=True)

    def _record(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if self._on:  # _seen: the layer's (hidden states, (cos, sin)) of the last captured forward
            self._seen = (kwargs["hidden_states"], kwargs["position_embeddings"])

    def log_probs(self, pairs: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """(n, L) log attention weights of the head from each pair's query (``pairs`` (n, 3): row, query,
        key) over the keys it may see (causal, and not padding)."""
        if self._seen is None:
            raise RuntimeError("no forward pass was captured (call inside `with copy.capture():`)")
        hidden, (cos, sin) = self._seen
        a = self.attn
        b, length, _ = hidden.shape
        rows, queries = pairs[:, 0], pairs[:, 1]
        q = a.q_proj(hidden).view(b, length, -1, a.head_dim)[:, :, self.head].unsqueeze(1)  # (B, 1, L, d)
        k = a.k_proj(hidden).view(b, length, -1, a.head_dim)[:, :, self.head // a.num_key_value_groups].unsqueeze(1)
        q, k = self._rotate(q, k, cos, sin)
        scores = torch.einsum("nd,nld->nl", q[rows, 0, queries], k[rows, 0]).float() * a.scaling
        visible = torch.arange(length, device=pairs.device)[None] <= queries[:, None]
        if attention_mask is not None:
            visible = visible & attention_mask[rows].bool()
        return scores.masked_fill(~visible, float("-inf")).log_softmax(-1)

    def read_out(self, pairs: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """``log_probs`` of the last captured forward, which is then let go (its states are not kept)."""
        try:
            return self.log_probs(pairs, attention_mask)
        finally:
            self._seen = None
