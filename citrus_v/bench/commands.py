"""``citrus-v bench``: our fast path beside transformers' ``generate`` on the same weights.

One run measures prefill, decode tok/s at batch 1 and 8 (plain dynamic cache, static cache +
compile on CUDA, ours), the full segmentation request (prefill + answer + mask), a training
step (text-only and image + text) and SAM2, prints a table and writes ``--out DIR/bench.json``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import time
from pathlib import Path

from citrus_v.errors import UserError


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("bench", help="time our fast path beside transformers' generate", description=__doc__)
    from citrus_v.config import PRESETS

    p.add_argument("--config", default="tiny", choices=sorted(PRESETS), help="preset for a random model; ignored with --model")
    p.add_argument("--model", default=None, help="a saved model folder to bench instead of a random preset")
    p.add_argument("--out", required=True, help="folder for bench.json")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"], help="default: fp32 on CPU, bf16 on CUDA")
    p.add_argument("--reps", type=int, default=None, help="repeats per timing (best kept)")
    p.add_argument("--new-tokens", type=int, default=None, help="decode length for tok/s")
    p.add_argument("--threads", type=int, default=None, help="torch threads on CPU")
    p.add_argument("--skip", default="", help="comma list of parts to skip: train,sam2,request,b8,job")
    p.add_argument("--job-reps", type=int, default=7, help="repeats of the README's main job (median kept; with --model)")
    p.add_argument("--compile", action="store_true", help="also time the fast path with torch.compile (compile time separate)")
    p.add_argument("--note", default="", help="free text stored in the JSON (e.g. what else ran on the machine)")
    p.set_defaults(func=run_bench)


def _load(args: argparse.Namespace, device, dtype):
    """(model, predictor, what): a saved folder, the embedded default, or a random preset."""
    import torch

    from citrus_v.config import get_preset
    from citrus_v.data.image_processing import ImageConfig
    from citrus_v.data.template import ChatTemplate
    from citrus_v.infer.predictor import Predictor
    from citrus_v.model.build import build_model

    if args.model:
        predictor = Predictor.from_pretrained(args.model, device=device, dtype=dtype)
        return predictor.model, predictor, f"saved model {args.model}"
    preset = get_preset(args.config)
    model = build_model(preset.config(), seed=0).to(device=device, dtype=dtype).eval()
    if preset.cpu_sized:
        from citrus_v.data.tokenizer import train_tiny_tokenizer

        tokenizer = train_tiny_tokenizer(["Please segment the liver.", "Sure, it is [SEG]."] * 20, vocab_size=400)
    else:
        from citrus_v.data.tokenizer import build_qwen25_tokenizer

        tokenizer = build_qwen25_tokenizer()
    side = 256 if preset.cpu_sized else 448
    image_cfg = ImageConfig.for_model(model.config, min_pixels=112 * 112, max_pixels=side * side)
    predictor = Predictor(model, tokenizer, ChatTemplate(tokenizer, image_cfg))
    torch.manual_seed(0)
    return model, predictor, f"random {args.config} (build_model({args.config!r}, seed=0))"


def run_bench(args: argparse.Namespace) -> int:
    import torch

    from citrus_v.bench import measure
    from citrus_v.config import get_preset

    device = torch.device(args.device)
    dtype_name = args.dtype or ("bfloat16" if device.type == "cuda" else "float32")
    dtype = getattr(torch, dtype_name)
    if args.threads:
        torch.set_num_threads(args.threads)
    skip = {s for s in args.skip.split(",") if s}
    unknown = skip - {"train", "sam2", "request", "b8", "job"}
    if unknown:
        raise UserError(f"--skip has unknown part(s) {sorted(unknown)}")
    sizes = measure.BenchSizes.for_size(cpu_sized=get_preset(args.config).cpu_sized and not args.model)
    if args.reps:
        sizes.reps = args.reps
    if args.new_tokens:
        sizes.new_tokens = args.new_tokens

    started = time.time()
    model, predictor, what = _load(args, device, dtype)
    result: dict = {
        "command": _command_line(args),
        "model": what, "device": str(device), "dtype": dtype_name, "machine_before": measure.machine(),
        "sizes": vars(sizes), "note": args.note,
    }  # fmt: skip
    result["prefill_ms_b1"] = measure.prefill_ms(model, sizes, device, dtype)
    for batch in (1, 8):
        if batch == 8 and "b8" in skip:
            continue
        result[f"decode_tok_s_b{batch}"] = measure.decode_rates(model, sizes, batch, device, dtype)
    result["fast_vs_plain_decode_ratio"] = result["decode_tok_s_b1"]["fast_vs_plain"]
    if args.compile:
        from citrus_v.infer.fast import FastDecoder

        inputs = measure.synthetic_inputs(model, 1, sizes.image_side, sizes.prompt_tokens, device, dtype)
        start = time.perf_counter()
        FastDecoder(model.mllm, compile=True).generate(inputs, sizes.new_tokens, None, model.config.tokens.pad_token_id)
        result["fast_compile_first_call_s"] = round(time.perf_counter() - start, 1)
        result["decode_tok_s_b1_compiled"] = measure.decode_rates(model, sizes, 1, device, dtype, compile_fast=True)
    if "request" not in skip:
        req = measure.segmentation_request(predictor, sizes, device)
        result["segmentation_request"] = req
        result["predict_with_mask_s"] = req["fast_s"]
        result["predict_with_mask_plain_s"] = req["plain_s"]
        result["fast_vs_plain_request_ratio"] = round(req["plain_s"] / req["fast_s"], 3)
    if args.model and "job" not in skip:  # a trained model answers the README's main job itself
        result["main_job"] = measure.main_job(predictor, args.job_reps, device)
    if "sam2" not in skip:
        result.update(measure.sam2_times(model, sizes, device, dtype))
    if "train" not in skip:
        result["train"] = measure.train_steps(model, sizes, device, dtype)
    if device.type == "cuda":
        result["peak_gpu_memory_GB"] = round(torch.cuda.max_memory_allocated() / 1e9, 2)
    result["machine_after"] = measure.machine()
    result["wall_s"] = round(time.time() - started, 1)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(result, indent=1) + "\n")
    print(format_table(result))
    print(f"wrote {out / 'bench.json'}")
    return 0


def _command_line(args: argparse.Namespace) -> str:
    """The exact ``citrus-v bench`` call, rebuilt from the parsed options (works from tests too)."""
    parts = ["citrus-v", "bench"]
    for key, value in vars(args).items():
        if key in ("func", "command") or value in (None, False, ""):
            continue
        flag = "--" + key.replace("_", "-")
        parts += [flag] if value is True else [flag, str(value)]
    return shlex.join(parts)


def format_table(r: dict) -> str:
    """The side-by-side table printed after a run."""
    rows = [("prefill 1 image + prompt, ms", r["prefill_ms_b1"], "", "")]
    for b in (1, 8):
        d = r.get(f"decode_tok_s_b{b}")
        if d:
            rows.append((f"decode tok/s, batch {b}", d["plain"], d.get("static", "-"), d["fast"]))
    if "segmentation_request" in r:
        q = r["segmentation_request"]
        rows.append((f"segmentation request ({q['answer_tokens']} tok + mask), s", q["plain_s"], "-", q["fast_s"]))
    if "main_job" in r:
        j = r["main_job"]
        rows.append(("README main job, predict with a mask, s", j["predict_with_mask_s"], "-", j["predict_with_mask_fast_s"]))
    lines = [f"{'':44s} {'HF generate':>12s} {'HF static':>10s} {'citrus-v fast':>14s}"]
    lines += [f"{name:44s} {str(a):>12s} {str(b):>10s} {str(c):>14s}" for name, a, b, c in rows]
    if "train" in r:
        t = r["train"]
        lines.append(f"train text {t['text_tokens']} tok: {t['text_tok_s']} tok/s, {t['text_TFLOPs']} TFLOP/s; "
                     f"image+text {t['mm_tokens']} tok: {t['mm_tok_s']} tok/s, {t['mm_TFLOPs']} TFLOP/s")  # fmt: skip
    if "main_job" in r:
        j = r["main_job"]
        lines.append(f"README main job ({j['image']}, {j['prompt']!r}, median of {j['reps']}): predict with a mask "
                     f"{j['predict_with_mask_s']} s (fast path {j['predict_with_mask_fast_s']} s), plain generate alone "
                     f"{j['generate_alone_s']} s: x{j['with_mask_vs_generate_ratio']}")  # fmt: skip
    if "sam2_encoder_ms" in r:
        lines.append(f"SAM2 encoder {r['sam2_encoder_ms']} ms, decoder {r['sam2_decoder_ms']} ms")
    lines.append(f"fast/plain decode ratio (batch 1): {r['fast_vs_plain_decode_ratio']}")
    return "\n".join(lines)
