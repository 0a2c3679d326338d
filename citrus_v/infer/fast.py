"""The fast greedy path: prefill once, then a lean decode loop over a static KV cache.

What the plain path (``generation.generate_sequences`` + ``CitrusV.segment``) spends time on
and this path does not:

- transformers' ``generate`` machinery per step (logits processors, stopping criteria,
  kwargs bookkeeping, mask building, a growing ``DynamicCache`` that re-allocates its
  tensors every step);
- the teacher-forced pass after generation: the final-norm hidden state of every ``[SEG]``
  is produced anyway when ``[SEG]`` is fed back as the next input, so we keep it then and
  skip the extra forward over prompt + answer (the DESIGN's "one teacher-forced pass",
  obtained for free; ``tests/infer/test_fast.py`` proves the masks equal ``model.segment``'s).
  The states become masks through the same image sessions as the plain path's.

The prefill is transformers' own multimodal forward with the position ids from the HF
model's own helper (``_prepare_position_ids_for_generation``, which also sets
``rope_deltas``), so prompt states and decode positions are exactly those ``generate``
uses; each decode step then runs transformers' decoder layers on one token with a
pre-allocated (B, kv_heads, L + T, head_dim) cache, and ``lm_head`` on that token only.
Greedy only: sampling goes through the plain path.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from citrus_v.infer.generation import GeneratedSequence
from citrus_v.model.vlm import with_mm_token_types


class StaticKV:
    """Pre-allocated keys/values for every layer; duck-types the ``cache.update`` that HF
    attention calls. One write position (a tensor, so a compiled step never re-traces).

    Each layer's keys and values live in one (B, 2 kv_heads, S, head_dim) buffer (keys in the
    first kv_heads rows), so a decode step stores both with a single ``append``."""

    def __init__(self, n_layers: int, batch: int, kv_heads: int, length: int, head_dim: int, like: torch.Tensor):
        self.kv = [like.new_zeros(batch, 2 * kv_heads, length, head_dim) for _ in range(n_layers)]
        self.keys = [buf[:, :kv_heads] for buf in self.kv]  # views, made once
        self.values = [buf[:, kv_heads:] for buf in self.kv]
        self.write_at = torch.zeros(1, dtype=torch.long, device=like.device)  # next slot to fill

    def fill(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Copy a prefill's (B, kv_heads, L, head_dim) states into slots [0, L)."""
        self.keys[layer][:, :, : keys.shape[2]] = keys
        self.values[layer][:, :, : values.shape[2]] = values

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, **_: object):
        """Write one step's (B, kv_heads, 1, head_dim) at ``write_at``; return the whole buffers
        (unfilled slots are masked out by the caller's attention mask)."""
        self.keys[layer_idx].index_copy_(2, self.write_at, key)
        self.values[layer_idx].index_copy_(2, self.write_at, value)
        return self.keys[layer_idx], self.values[layer_idx]

    def append(self, kv: torch.Tensor, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``update`` for keys and values stacked as (B, 2 kv_heads, 1, head_dim)."""
        self.kv[layer_idx].index_copy_(2, self.write_at, kv)
        return self.keys[layer_idx], self.values[layer_idx]

    def get_seq_length(self, layer_idx: int = 0) -> int:  # for HF code that asks
        return int(self.write_at)


@dataclass
class FastGeneration:
    """Greedy output of :func:`fast_greedy_generate`, per row."""

    sequences: list[GeneratedSequence]
    seg_hidden: list[torch.Tensor]  # per row (n_seg_row, H): final-norm states at each generated [SEG]


class FastDecoder:
    """Greedy decoding of a ``Qwen2_5_VLForConditionalGeneration`` with a static cache.

    The one-token step is written out (RMSNorm, rotary, SDPA, SwiGLU) over the HF modules'
    own weights, because at small sizes the per-module call overhead of the HF layers costs
    more than their arithmetic. ``fuse=True`` concatenates q/k/v and gate/up weights into one
    matmul each (fewer kernel launches; costs a copy of those weights: about 8 GB in bf16 at
    8b, so ``fuse=False`` where memory is short). The weights are read at construction:
    build the decoder after loading or changing weights. ``compile=True`` wraps the step in
    ``torch.compile`` (fixed shapes per (batch, length), so one compile per shape).
    """

    def __init__(self, mllm: nn.Module, compile: bool = False, fuse: bool = True):
        self.mllm = mllm
        self.lm = mllm.model.language_model
        text = self.lm.config
        self.n_layers = text.num_hidden_layers
        self.n_heads = text.num_attention_heads
        self.kv_heads = text.num_key_value_heads
        self.head_dim = text.hidden_size // text.num_attention_heads
        self.fuse = fuse
        self._root_h = text.hidden_size**0.5
        self._eps = self.lm.norm.variance_epsilon
        # fp32 RMSNorm as one vector norm: x * w / sqrt(mean(x^2) + eps) == x * (w sqrt(H)) / hypot(|x|, sqrt(H eps))
        self._rms_c = torch.tensor(self._root_h * self._eps**0.5, dtype=torch.float32, device=self.lm.norm.weight.device)
        self._final = self._norm_weights(self.lm.norm)
        self._layers = [self._layer_weights(layer) for layer in self.lm.layers]
        self._embed = self.lm.embed_tokens.weight
        head = mllm.lm_head  # a plain bias-free Linear is applied as F.linear (no module call per step)
        self._head = head.weight if type(head) is nn.Linear and head.bias is None else None
        self._step: Callable = self._decode_step
        if compile:
            self._step = torch.compile(self._decode_step, dynamic=False)

    def _layer_weights(self, layer: nn.Module) -> dict[str, torch.Tensor | float]:
        attn, mlp = layer.self_attn, layer.mlp
        w: dict[str, torch.Tensor | tuple[torch.Tensor, torch.Tensor]] = {
            "ln1": self._norm_weights(layer.input_layernorm),
            "ln2": self._norm_weights(layer.post_attention_layernorm),
            "o_t": attn.o_proj.weight.t(),  # (nq, H) views: the residual adds fold into addmm
            "down_t": mlp.down_proj.weight.t(),
        }
        if self.fuse:
            w["qkv"] = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]).detach()
            w["qkv_b"] = torch.cat([attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias]).detach()
            w["gate_up"] = torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]).detach()
        else:
            w.update(q=attn.q_proj.weight, q_b=attn.q_proj.bias, k=attn.k_proj.weight, k_b=attn.k_proj.bias,
                     v=attn.v_proj.weight, v_b=attn.v_proj.bias, gate=mlp.gate_proj.weight, up=mlp.up_proj.weight)
        return w

    def _norm_weights(self, norm: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        """An RMSNorm's (w, w * sqrt(H)): the second is what the fp32 path of ``_rms`` multiplies by."""
        return norm.weight, (norm.weight * self._root_h).detach()

    # ------------------------------------------------------------------ one step
    def _rms(self, x: torch.Tensor, weights: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Qwen2_5_VLRMSNorm of (B, H) rows; ``weights`` = (w, w * sqrt(H)).

        fp32: one vector norm and a hypot (on CPU, F.rms_norm decomposes into about six
        kernels and costs ~3x more per decode step); the same value up to rounding. Other
        dtypes: statistics in fp32, scale in the input dtype, as transformers does."""
        if x.dtype == torch.float32:
            return x * (weights[1] / torch.hypot(torch.linalg.vector_norm(x, dim=-1, keepdim=True), self._rms_c))
        return weights[0] * F.rms_norm(x.float(), (x.shape[-1],), eps=self._eps).to(x.dtype)

    def rope_tables(self, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """HF rotary tables (B, 1, T, d) -> (cos, signed sin) of shape (B, heads + 2 kv_heads, T, d)
        such that rope(qkv) = qkv*cos + roll(qkv, d/2)*signed_sin over all q, k and v heads.

        rotate_half(x) = cat(-x2, x1) = roll(x, d/2) * cat(-1, +1): the sign moves into the
        table. The v heads get cos 1 and sin 0 (no rotation), so one roll and one fused
        multiply-add rotate a whole step's q and k, and k and v leave side by side for the cache."""
        half = sin.shape[-1] // 2
        b, _, t, d = cos.shape
        rotated, plain = self.n_heads + self.kv_heads, self.kv_heads
        cos_all = torch.cat((cos.expand(b, rotated, t, d), cos.new_ones(b, plain, t, d)), dim=1)
        signed = torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)
        sin_all = torch.cat((signed.expand(b, rotated, t, d), sin.new_zeros(b, plain, t, d)), dim=1)
        return cos_all, sin_all

    def _decode_step(
        self, tokens: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attend: torch.Tensor, cache: StaticKV
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens (B,); cos / signed sin (B, heads + 2 kv_heads, 1, head_dim) from ``rope_tables``; attend (B, 1, 1, S)
        additive mask (0 where a row may look, -inf elsewhere) -> (final-norm hidden (B, H), logits (B, V))."""
        batch = tokens.shape[0]
        nq, d, half = self.n_heads * self.head_dim, self.head_dim, self.head_dim // 2
        x = F.embedding(tokens, self._embed)  # (B, H): one token per row, kept 2D throughout
        for i, w in enumerate(self._layers):
            h = self._rms(x, w["ln1"])
            if self.fuse:
                qkv = F.linear(h, w["qkv"], w["qkv_b"])  # (B, (heads + 2 kv_heads) d)
            else:
                qkv = torch.cat([F.linear(h, w["q"], w["q_b"]), F.linear(h, w["k"], w["k_b"]), F.linear(h, w["v"], w["v_b"])], -1)
            qkv = qkv.view(batch, -1, 1, d)  # (B, heads + 2 kv_heads, 1, d): one token, so no transpose
            qkv = torch.addcmul(qkv * cos, qkv.roll(half, dims=-1), sin)  # q and k rotated, v unchanged
            q = qkv[:, : self.n_heads]
            keys, values = cache.append(qkv[:, self.n_heads :], i)  # (B, kv_heads, S, d) each
            a = F.scaled_dot_product_attention(q, keys, values, attn_mask=attend, enable_gqa=True)
            x = torch.addmm(x, a.view(batch, nq), w["o_t"])  # residual + o_proj in one kernel
            h = self._rms(x, w["ln2"])
            if self.fuse:
                gate, up = F.linear(h, w["gate_up"]).chunk(2, dim=-1)
            else:
                gate, up = F.linear(h, w["gate"]), F.linear(h, w["up"])
            x = torch.addmm(x, F.silu(gate) * up, w["down_t"])
        x = self._rms(x, self._final)  # (B, H): the final-norm state CitrusV reads at a [SEG]
        if self._head is not None:
            return x, F.linear(x, self._head)  # (B, H), (B, V)
        return x, self.mllm.lm_head(x[:, None])[:, 0]  # any other head module sees (B, 1, H), as in generate

    # ------------------------------------------------------------------ prefill
    def _prefill(self, inputs: dict[str, torch.Tensor], total: int) -> tuple[torch.Tensor, torch.Tensor, StaticKV]:
        """Multimodal forward of the prompt; returns last-position logits (B, V), the 4-row
        position ids generate would use (4, B, L) and the cache with the prompt in it."""
        from transformers import DynamicCache

        cfg = self.mllm.config
        inputs = with_mm_token_types(inputs, cfg.image_token_id, cfg.video_token_id)  # 2D M-RoPE for images
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        kwargs = {k: v for k, v in inputs.items() if k != "input_ids"}
        # the HF helper: text positions from the mask (+ M-RoPE rows and rope_deltas when the
        # inputs carry mm_token_type_ids), exactly what generate's first step sees
        positions = self.mllm._prepare_position_ids_for_generation(ids, {"input_ids": ids, **kwargs})
        prompt_cache = DynamicCache(config=self.lm.config)
        out = self.mllm.model(input_ids=ids, position_ids=positions, cache=prompt_cache, use_cache=True, **kwargs)
        logits = self.mllm.lm_head(out.last_hidden_state[:, -1:])[:, -1]  # (B, V): last position only
        batch, length = ids.shape
        cache = StaticKV(self.n_layers, batch, self.kv_heads, total, self.head_dim, out.last_hidden_state)
        for i in range(self.n_layers):
            layer = prompt_cache.layers[i]
            cache.fill(i, layer.keys, layer.values)
        cache.write_at.fill_(length)
        del mask
        return logits, positions, cache

    # ------------------------------------------------------------------ the loop
    @torch.no_grad()
    def generate(
        self,
        inputs: dict[str, torch.Tensor],
        max_new_tokens: int,
        eos_token_id: int | None,
        pad_token_id: int,
        seg_token_id: int | None = None,
    ) -> FastGeneration:
        """Greedy tokens for a LEFT-padded batch (as ``generation.generate_sequences``).

        ``inputs``: input_ids / attention_mask (B, L) and optionally pixel_values (P, C),
        image_grid_thw (n_img, 3). ``eos_token_id=None`` never stops early (benchmarks).
        A row that emitted eos is finished: later tokens are pads and are dropped, as in
        ``generate``. With ``seg_token_id``, the final-norm state of each generated
        ``[SEG]`` is kept (it appears when the token is fed back at the next step).
        """
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        if ids.dim() != 2 or mask.shape != ids.shape:
            raise ValueError(f"fast generate: input_ids/attention_mask must be (B, L), got {tuple(ids.shape)}/{tuple(mask.shape)}")
        if ids.shape[0] > 1 and not bool(mask[:, -1].all()):
            raise ValueError("fast generate: the batch must be LEFT-padded (a row has padding in its last column)")
        if max_new_tokens < 1:
            raise ValueError(f"fast generate: max_new_tokens must be >= 1, got {max_new_tokens}")
        batch, length = ids.shape
        total = length + max_new_tokens  # prompt + every token that may be fed back
        logits, positions, cache = self._prefill(inputs, total)
        # (B, 1, 1, S) additive: 0 on the cache slots each row may attend to, -inf elsewhere (pads
        # stay -inf); a float mask spares SDPA a bool->float conversion per layer and step
        attend = torch.full((batch, 1, 1, total), float("-inf"), dtype=logits.dtype, device=ids.device)
        attend[:, 0, 0, :length].masked_fill_(mask.bool(), 0.0)
        # rope rows of every step at once: generate adds 1 per step to the last prompt position
        steps_ahead = torch.arange(1, max_new_tokens + 1, device=ids.device)
        decode_positions = positions[1:, :, -1:] + steps_ahead  # (3, B, T)
        cos, sin = self.lm.rotary_emb(logits, decode_positions)  # (B, T, head_dim) each
        cos, sin = self.rope_tables(cos[:, None].to(logits.dtype), sin[:, None].to(logits.dtype))  # (B, heads + 2 kv, T, d)

        cos_steps, sin_steps = cos.split(1, dim=2), sin.split(1, dim=2)  # per step (B, heads + 2 kv, 1, d)
        new_ids = torch.full((batch, max_new_tokens), pad_token_id, dtype=torch.long, device=ids.device)
        probs = torch.zeros(batch, max_new_tokens, device=ids.device)
        done = torch.zeros(batch, dtype=torch.bool, device=ids.device)
        seg_states: list[list[torch.Tensor]] = [[] for _ in range(batch)]
        steps = 0
        for t in range(max_new_tokens):
            token = logits.argmax(dim=-1).masked_fill_(done, pad_token_id)  # (B,)
            new_ids[:, t] = token
            # greedy: the chosen token's probability is the largest one (finished rows' pads are dropped)
            probs[:, t] = torch.softmax(logits.float(), dim=-1).amax(dim=-1)
            if eos_token_id is not None:
                done |= token == eos_token_id
            steps = t + 1
            fed_seg = seg_token_id is not None and bool((token == seg_token_id).any())
            if t == max_new_tokens - 1 and not fed_seg:
                break  # the last token needs no forward unless its [SEG] state is wanted
            if eos_token_id is not None and bool(done.all()):
                break
            attend[:, 0, 0, length + t] = 0.0
            hidden, logits = self._step(token, cos_steps[t], sin_steps[t], attend, cache)
            cache.write_at += 1
            if fed_seg:
                for row in (token == seg_token_id).nonzero()[:, 0].tolist():
                    seg_states[row].append(hidden[row])
        return FastGeneration(
            sequences=_split_rows(new_ids[:, :steps], probs[:, :steps], eos_token_id),
            seg_hidden=[torch.stack(s) if s else logits.new_zeros(0, self.lm.config.hidden_size) for s in seg_states],
        )


def _split_rows(new_ids: torch.Tensor, probs: torch.Tensor, eos_token_id: int | None) -> list[GeneratedSequence]:
    """(B, T) ids/probs -> one GeneratedSequence per row, cut after the first eos (kept)."""
    rows = []
    for ids_row, prob_row in zip(new_ids.tolist(), probs.tolist()):
        if eos_token_id is not None and eos_token_id in ids_row:
            end = ids_row.index(eos_token_id) + 1
            rows.append(GeneratedSequence(ids_row[:end], prob_row[:end], stopped=True))
        else:
            rows.append(GeneratedSequence(ids_row, prob_row, stopped=False))
    return rows


@torch.no_grad()
def generate_rows_fast(predictor, rows: list, settings) -> tuple[list[GeneratedSequence], list[torch.Tensor]]:
    """The predictor's step 2 on the fast path, with step 3's teacher-forced pass for free:
    greedy tokens and, per row, the final-norm states (n_seg_row, H) of its [SEG]s, in order.

    ``rows`` are the predictor's encoded requests (``Predictor._encode``); the predictor turns
    the states into masks exactly as it does those of the plain path (``Predictor._masks``).
    """
    if settings.do_sample:
        raise ValueError("the fast path is greedy only: GenerationSettings(fast=True) needs do_sample=False")
    decoder = FastDecoder(predictor.model.mllm)
    out = decoder.generate(
        predictor._left_padded(rows),
        settings.max_new_tokens,
        eos_token_id=predictor.eos_token_id,
        pad_token_id=predictor.pad_token_id,
        seg_token_id=predictor.seg_token_id,
    )
    for i, (seq, states) in enumerate(zip(out.sequences, out.seg_hidden)):
        n_ids = seq.ids.count(predictor.seg_token_id)
        if n_ids != states.shape[0]:  # bookkeeping fails loudly
            raise ValueError(f"request {i}: {n_ids} [SEG] tokens but {states.shape[0]} [SEG] states")
    return out.sequences, out.seg_hidden
