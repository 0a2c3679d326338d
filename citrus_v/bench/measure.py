"""What ``citrus-v bench`` times, on one model, our path beside transformers' ``generate``.

Every comparison is interleaved (plain, fast, plain, fast, ...) and the best of the repeats
is kept, because the machines are shared: a load spike then hits both sides alike instead of
one. Decode rates use the anchors' method: (time for N new tokens - time for 1) / (N - 1).
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from citrus_v.bench.flops import multimodal_train_flops, train_flops

if TYPE_CHECKING:
    from citrus_v.infer.types import Prediction


@dataclass
class BenchSizes:
    """How big each measurement is; ``for_config`` picks CPU-sized numbers for tiny."""

    image_side: int  # Qwen side of the synthetic image (multiple of 28)
    prompt_tokens: int  # text tokens after the image
    new_tokens: int  # decode length for the tok/s figures
    answer_tokens: int  # length of the forced answer in the segmentation request
    train_tokens: int  # text-only training sequence
    mm_text_tokens: int  # text tokens of the multimodal training step
    request_side: int  # side of the image given to Predictor.predict
    reps: int

    @classmethod
    def for_size(cls, cpu_sized: bool) -> BenchSizes:
        """Sizes for a CPU-sized model (``Preset.cpu_sized``) or for the 8b shapes."""
        if cpu_sized:
            return cls(112, 64, 48, 16, 512, 256, 256, 5)
        return cls(448, 64, 128, 16, 4096, 2048, 448, 3)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def all_times(fns: dict[str, Callable[[], object]], reps: int, device: torch.device) -> dict[str, list[float]]:
    """Seconds of each of ``reps`` calls, the callables interleaved; one warm-up each."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return times


def best_times(fns: dict[str, Callable[[], object]], reps: int, device: torch.device) -> dict[str, float]:
    """Seconds per call, best of ``reps``, the callables interleaved; one warm-up each."""
    return {name: min(t) for name, t in all_times(fns, reps, device).items()}


def synthetic_inputs(model: nn.Module, batch: int, side: int, n_text: int, device: torch.device, dtype: torch.dtype):
    """One image of side x side (random patches) + n_text text ids per row, as the anchors build them."""
    cfg = model.config
    grid = side // cfg.vision.patch_size
    n_img = grid * grid // cfg.vision.spatial_merge_size**2
    tok = cfg.tokens
    text = torch.arange(n_text) % (cfg.llm.vocab_size - 100) + 100  # ordinary ids, no specials
    row = torch.cat([torch.tensor([tok.vision_start_token_id] + [tok.image_token_id] * n_img + [tok.vision_end_token_id]), text])
    ids = row.repeat(batch, 1).to(device)  # (B, L)
    patch_dim = 3 * cfg.vision.temporal_patch_size * cfg.vision.patch_size**2
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "pixel_values": torch.randn(batch * grid * grid, patch_dim, device=device, dtype=dtype),  # (P, C)
        "image_grid_thw": torch.tensor([[1, grid, grid]] * batch, device=device),
    }


def decode_rates(model: nn.Module, sizes: BenchSizes, batch: int, device: torch.device, dtype: torch.dtype,
                 compile_fast: bool = False) -> dict[str, float]:
    """tok/s of greedy decode through the image path: plain HF generate (dynamic cache),
    HF static cache + compile (CUDA only), and our fast path."""
    from citrus_v.infer.fast import FastDecoder

    mllm = model.mllm
    inputs = synthetic_inputs(model, batch, sizes.image_side, sizes.prompt_tokens, device, dtype)
    n = sizes.new_tokens
    pad = model.config.tokens.pad_token_id

    def plain(k: int, **kw) -> object:
        return model.generate(**inputs, max_new_tokens=k, min_new_tokens=k, do_sample=False, pad_token_id=pad, **kw)

    decoder = FastDecoder(mllm, compile=compile_fast)
    fns: dict[str, Callable[[], object]] = {
        "plain_n": lambda: plain(n), "plain_1": lambda: plain(1),
        "fast_n": lambda: decoder.generate(inputs, n, None, pad), "fast_1": lambda: decoder.generate(inputs, 1, None, pad),
    }  # fmt: skip
    if device.type == "cuda":
        fns["static_n"] = lambda: plain(n, cache_implementation="static", compile_config=None)
        fns["static_1"] = lambda: plain(1, cache_implementation="static", compile_config=None)
    with torch.no_grad():
        t = best_times(fns, sizes.reps, device)
    out = {}
    for name in ("plain", "fast", "static"):
        if f"{name}_n" in t:
            out[name] = round(batch * (n - 1) / max(t[f"{name}_n"] - t[f"{name}_1"], 1e-9), 1)
    out["fast_vs_plain"] = round(out["fast"] / out["plain"], 3)
    return out


def prefill_ms(model: nn.Module, sizes: BenchSizes, device: torch.device, dtype: torch.dtype) -> float:
    inputs = synthetic_inputs(model, 1, sizes.image_side, sizes.prompt_tokens, device, dtype)
    with torch.no_grad():
        t = best_times({"prefill": lambda: model.mllm(**inputs, logits_to_keep=1)}, sizes.reps, device)
    return round(1000 * t["prefill"], 2)


class ForcedAnswer(nn.Module):
    """Wraps lm_head so the k-th generation step emits ``script[k]``: a random model then answers
    like a trained one ("... [SEG] ..."); the compute is unchanged (one add per step)."""

    def __init__(self, head: nn.Module, script: list[int]):
        super().__init__()
        self.head, self.script, self.calls = head, script, 0

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.head(hidden)
        if hidden.shape[1] == 1 or self.calls == 0:  # generation steps, not the teacher-forced pass
            if self.calls < len(self.script):
                logits[:, -1, self.script[self.calls]] += 1e4
            self.calls += 1
        return logits


def segmentation_request(predictor, sizes: BenchSizes, device: torch.device) -> dict[str, float]:
    """Seconds of Predictor.predict on one image with an answer of ~answer_tokens tokens holding
    one [SEG] (prefill + generation + mask + read-out), plain and fast, interleaved."""
    import numpy as np

    from citrus_v.infer.generation import GenerationSettings

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (sizes.request_side, sizes.request_side, 3), dtype=np.uint8)
    filler = [100 + i for i in range(sizes.answer_tokens - 2)]  # ordinary ids
    script = filler + [predictor.seg_token_id, predictor.eos_token_id]
    original = predictor.model.mllm.lm_head
    n = len(script) + 1

    def run(fast: bool) -> object:
        predictor.model.mllm.lm_head = ForcedAnswer(original, script)
        try:
            pred = predictor.predict([image], "Please segment the liver.", settings=GenerationSettings(max_new_tokens=n, fast=fast))
        finally:
            predictor.model.mllm.lm_head = original
        if len(pred.masks) != 1:
            raise RuntimeError(f"bench: the forced answer should give 1 mask, got {len(pred.masks)}")
        return pred

    t = best_times({"plain": lambda: run(False), "fast": lambda: run(True)}, sizes.reps, device)
    return {"plain_s": round(t["plain"], 4), "fast_s": round(t["fast"], 4), "answer_tokens": len(script)}


# The README's main job (scripts/demo.sh): the bundled real CT slice and the prompt it is asked
MAIN_JOB_IMAGE = Path(__file__).resolve().parents[1] / "assets" / "examples" / "ct_abdomen_liver.dcm"
MAIN_JOB_PROMPT = "Please segment the liver."


def main_job(predictor, reps: int, device: torch.device) -> dict[str, object]:
    """The README's main job as a user runs it: ``Predictor.predict`` on the bundled DICOM slice, the
    model's own answer (nothing forced). Median seconds over ``reps`` interleaved calls of: predict
    with the mask through plain ``generate`` (the default path) and through the fast path, and plain
    ``generate`` alone (reading the image and the same answer's text, no mask)."""
    from citrus_v.infer.generation import generate_sequences

    settings = {fast: replace(predictor.settings, fast=fast) for fast in (False, True)}
    answers: dict[str, Prediction] = {}

    def predict(name: str, fast: bool) -> None:
        answers[name] = predictor.predict([MAIN_JOB_IMAGE], MAIN_JOB_PROMPT, settings=settings[fast])

    def generate_alone() -> None:
        encoded = predictor._encode([MAIN_JOB_IMAGE], MAIN_JOB_PROMPT, where="main job")
        with torch.no_grad():
            generate_sequences(predictor.model, predictor._left_padded([encoded]), settings[False],
                               predictor.eos_token_id, predictor.pad_token_id)  # fmt: skip

    fns = {"with_mask_plain": lambda: predict("plain", False), "with_mask_fast": lambda: predict("fast", True),
           "generate_alone": generate_alone}  # fmt: skip
    t = {name: statistics.median(v) for name, v in all_times(fns, reps, device).items()}
    return {
        "image": MAIN_JOB_IMAGE.name, "prompt": MAIN_JOB_PROMPT, "reps": reps, "aggregate": "median",
        "answer": answers["plain"].answer, "masks": len(answers["plain"].masks),
        "predict_with_mask_s": round(t["with_mask_plain"], 4), "predict_with_mask_fast_s": round(t["with_mask_fast"], 4),
        "generate_alone_s": round(t["generate_alone"], 4),
        "with_mask_vs_generate_ratio": round(t["with_mask_plain"] / t["generate_alone"], 2),
        "same_answer_fast": answers["fast"].answer == answers["plain"].answer,
    }  # fmt: skip


def train_steps(model: nn.Module, sizes: BenchSizes, device: torch.device, dtype: torch.dtype) -> dict[str, float]:
    """One forward + backward (checkpointing on) of CitrusV: text-only and one image + text."""
    cfg = model.config
    model.train()
    model.mllm.activation_checkpointing_enable()
    llm_params = sum(p.numel() for n, p in model.mllm.named_parameters() if "visual" not in n)
    vis_params = sum(p.numel() for n, p in model.mllm.named_parameters() if "visual" in n)
    text_ids = (torch.arange(sizes.train_tokens, device=device) % (cfg.llm.vocab_size - 100) + 100)[None]  # (1, T)
    mm = synthetic_inputs(model, 1, sizes.image_side, sizes.mm_text_tokens, device, dtype)
    grid = sizes.image_side // cfg.vision.patch_size

    from citrus_v.model.objectives import forward_and_score

    def text_step() -> None:
        batch = {"input_ids": text_ids, "attention_mask": torch.ones_like(text_ids), "labels": text_ids}
        forward_and_score(model, batch)[1].total.backward()

    def mm_step() -> None:
        forward_and_score(model, {**mm, "labels": mm["input_ids"]})[1].total.backward()

    t = best_times({"text": text_step, "mm": mm_step}, max(2, sizes.reps // 2), device)
    model.zero_grad(set_to_none=True)
    model.mllm.activation_checkpointing_disable()
    model.eval()
    n_layers, hidden = cfg.llm.num_hidden_layers, cfg.llm.hidden_size
    t_tokens, m_tokens = text_ids.shape[1], mm["input_ids"].shape[1]
    f_text = train_flops(llm_params, t_tokens, t_tokens, n_layers, hidden)
    f_mm = multimodal_train_flops(llm_params, vis_params, m_tokens, grid * grid, n_layers, hidden)
    return {
        "text_tokens": t_tokens, "text_step_s": round(t["text"], 4), "text_tok_s": round(t_tokens / t["text"], 1),
        "text_TFLOPs": round(f_text / t["text"] / 1e12, 4),
        "mm_tokens": m_tokens, "mm_step_s": round(t["mm"], 4), "mm_tok_s": round(m_tokens / t["mm"], 1),
        "mm_TFLOPs": round(f_mm / t["mm"] / 1e12, 4),
    }  # fmt: skip


def sam2_times(model: nn.Module, sizes: BenchSizes, device: torch.device, dtype: torch.dtype) -> dict[str, float]:
    """SAM2 image encoder and one-prompt mask decoder, ms."""
    side = model.config.segmenter.image_size
    images = torch.randn(1, 3, side, side, device=device, dtype=dtype)
    prompts = torch.randn(1, 1, model.segmenter.prompt_dim, device=device, dtype=dtype)
    index = torch.zeros(1, dtype=torch.long, device=device)
    with torch.no_grad():
        features = model.segmenter.encode(images)
        t = best_times(
            {"enc": lambda: model.segmenter.encode(images), "dec": lambda: model.segmenter.decode(features, index, prompts)},
            sizes.reps, device,
        )  # fmt: skip
    return {"sam2_encoder_ms": round(1000 * t["enc"], 2), "sam2_decoder_ms": round(1000 * t["dec"], 2)}


def machine() -> dict[str, object]:
    """What the numbers were measured on (load average: the CPU is shared)."""
    import platform

    info: dict[str, object] = {"platform": platform.platform(), "torch": torch.__version__,
                               "threads": torch.get_num_threads(), "cpu_count": os.cpu_count()}  # fmt: skip
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:  # pragma: no cover - transformers is a dependency
        pass
    if hasattr(os, "getloadavg"):
        info["load_average_1_5_15"] = [round(x, 2) for x in os.getloadavg()]
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info
