"""Text generation for the predictor: settings, one call to the MLLM's ``generate``, token probabilities.

Generation goes through transformers' own ``generate`` (KV cache on), so greedy and sampling
behave exactly as they do for Qwen2.5-VL. We ask for the raw (unprocessed) logits of every
step to report how sure the model was of the tokens it emitted.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class GenerationSettings:
    """How to decode. Greedy by default; ``do_sample=True`` turns on temperature / top-p / top-k.

    ``top_k=0``, ``top_p=1.0`` and ``repetition_penalty=1.0`` mean "off". ``seed`` makes sampling
    reproducible. ``stop_token_ids``: tokens that end the answer besides the model's end of turn
    (a folder's ``generation_config.json`` ``eos_token_id``; see :mod:`citrus_v.infer.generation_config`).
    ``fast=True`` (greedy only) decodes with ``citrus_v.infer.fast`` instead of ``generate``.
    """

    max_new_tokens: int = 512
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    fast: bool = False
    repetition_penalty: float = 1.0
    stop_token_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        w = "GenerationSettings"
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"{w}.max_new_tokens: must be an int >= 1, got {self.max_new_tokens!r}")
        if not self.temperature > 0:
            raise ValueError(f"{w}.temperature: must be > 0, got {self.temperature!r}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"{w}.top_p: must be in (0, 1], got {self.top_p!r}")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"{w}.top_k: must be an int >= 0 (0 = off), got {self.top_k!r}")
        if not 0 < self.repetition_penalty <= 10:
            raise ValueError(f"{w}.repetition_penalty: must be in (0, 10] (1 = off), got {self.repetition_penalty!r}")
        self.stop_token_ids = tuple(self.stop_token_ids)
        if not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in self.stop_token_ids):
            raise ValueError(f"{w}.stop_token_ids: must be token ids (ints >= 0), got {self.stop_token_ids!r}")
        if self.fast and self.do_sample:
            raise ValueError(f"{w}.fast: the fast path is greedy only; set do_sample=False or fast=False")
        if self.fast and (self.repetition_penalty != 1.0 or self.stop_token_ids):
            raise ValueError(f"{w}.fast: the fast path has no repetition penalty or extra stop tokens; set fast=False")

    def stop_ids(self, eos_token_id: int) -> list[int]:
        """The model's end of turn first, then the extra stop tokens."""
        return [eos_token_id, *(t for t in self.stop_token_ids if t != eos_token_id)]

    def generate_kwargs(self, eos_token_id: int, pad_token_id: int) -> dict:
        """Keyword arguments for ``generate``; sampling knobs only when sampling (HF warns otherwise)."""
        kwargs: dict = {
            "max_new_tokens": self.max_new_tokens,
            "do_sample": self.do_sample,
            "eos_token_id": self.stop_ids(eos_token_id) if self.stop_token_ids else eos_token_id,
            "repetition_penalty": self.repetition_penalty if self.repetition_penalty != 1.0 else None,
            "pad_token_id": pad_token_id,
            "use_cache": True,
            "return_dict_in_generate": True,
            "output_logits": True,
        }
        if self.do_sample:
            kwargs.update(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k or None)  # 0 = off
        else:
            # None = unset: a checkpoint's generation_config must not sneak sampling knobs into greedy
            kwargs.update(temperature=None, top_p=None, top_k=None)
        return kwargs


@dataclass
class GeneratedSequence:
    """The new tokens of one row, cut after the first end-of-turn token (pads dropped)."""

    ids: list[int]
    token_probs: list[float]  # the model's probability (temperature 1) of each emitted token
    stopped: bool  # True when the row ended on the end-of-turn token, False when it ran out of tokens

    @property
    def mean_token_prob(self) -> float | None:
        if not self.token_probs:
            return None
        return float(sum(self.token_probs) / len(self.token_probs))


@torch.no_grad()
def generate_sequences(
    model: torch.nn.Module,
    inputs: dict[str, torch.Tensor],
    settings: GenerationSettings,
    eos_token_id: int,
    pad_token_id: int,
    streamer=None,
) -> list[GeneratedSequence]:
    """Run ``model.generate`` on a LEFT-padded batch and split the result per row.

    ``inputs`` holds ``input_ids`` (B, L), ``attention_mask`` (B, L) and, with images,
    ``pixel_values`` (P, C) and ``image_grid_thw`` (n_img, 3). ``streamer`` (one row only):
    transformers' streamer protocol, e.g. ``citrus_v.infer.streaming.TokenStreamer``.
    """
    input_ids = inputs["input_ids"]
    if input_ids.dim() != 2:
        raise ValueError(f"generate_sequences: input_ids must be (B, L), got shape {tuple(input_ids.shape)}")
    mask = inputs["attention_mask"]
    # left padding is what makes the last prompt token of every row sit at column L-1
    if input_ids.shape[0] > 1 and not bool(mask[:, -1].all()):
        raise ValueError("generate_sequences: the batch must be LEFT-padded (a row has padding in its last column)")
    if settings.seed is not None:
        torch.manual_seed(settings.seed)
    extra = {} if streamer is None else {"streamer": streamer}
    out = model.generate(**inputs, **settings.generate_kwargs(eos_token_id, pad_token_id), **extra)
    prompt_len = input_ids.shape[1]
    new_ids = out.sequences[:, prompt_len:]  # (B, T)
    # raw logits of every step: T x (B, V) -> (B, T, V) probabilities of the chosen tokens
    logits = torch.stack(out.logits, dim=1).float()
    probs = torch.softmax(logits, dim=-1).gather(-1, new_ids.unsqueeze(-1)).squeeze(-1)  # (B, T)
    rows = []
    stops = set(settings.stop_ids(eos_token_id))
    for ids_row, prob_row in zip(new_ids.tolist(), probs.tolist()):
        ends = [k for k, t in enumerate(ids_row) if t in stops]
        if ends:
            end = ends[0] + 1  # keep the end-of-turn token: it was generated
            rows.append(GeneratedSequence(ids_row[:end], prob_row[:end], stopped=True))
        else:
            rows.append(GeneratedSequence(ids_row, prob_row, stopped=False))
    return rows
