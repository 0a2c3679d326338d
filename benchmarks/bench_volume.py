"""Benchmark volume inference: slices per second of the tiny model, and the 20-slice DICOM series end to end.

    python benchmarks/bench_volume.py [--series DIR] [--model DIR] [--threads 1] [--batch-size 8] [--out bench_volume.json]

Model: --model, else the embedded default (citrus_v/assets/default) if present, else a tiny random
CitrusV built here (the table says which). A random model usually answers with no [SEG] at all,
which would skip the segmentation pass and flatter the number, so each run is timed twice:
"as is" and "forced [SEG]" (generation forced to "Sure, it is [SEG]." on every slice: one mask
per slice, the work a trained model does).

End to end = read the DICOM series + window + predict every slice + stack + quantify + write the
NIfTI and the montage, wall clock.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

# the real 20-slice CT series the tests use (TotalSegmentator, Apache-2.0; see its README)
SERIES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "totalseg_example" / "ct_dicom"
ROOT = Path(__file__).resolve().parents[1]


class _Forced(nn.Module):
    """lm_head wrapper: every generate call emits ``script`` then behaves normally (reset per call)."""

    def __init__(self, head: nn.Module, script: list[int]):
        super().__init__()
        self.head, self.script, self.step = head, script, 0

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.head(hidden)  # (B, L, V)
        if hidden.shape[1] > 1:  # a prefill starts a new generation (or the teacher-forced pass)
            self.step = 0
        if self.step < len(self.script):
            logits[:, -1, self.script[self.step]] += 1e4
        self.step += 1
        return logits


def load_predictor(model: str | None, work: Path):
    from citrus_v.infer.generation import GenerationSettings
    from citrus_v.infer.predictor import Predictor, default_model_dir

    settings = GenerationSettings(max_new_tokens=16)
    if model is not None:
        return Predictor.from_pretrained(model, settings=settings), f"given: {model}"
    if (default_model_dir() / "config.json").is_file():
        return Predictor.from_pretrained(None, settings=settings), "embedded default (citrus_v/assets/default)"
    from citrus_v.config import tiny_config
    from citrus_v.data.tokenizer import train_tiny_tokenizer
    from citrus_v.model.citrus_v import CitrusV

    sentences = ["Please segment the liver.", "Sure, it is [SEG].", "Segment the liver and the spleen."] * 20
    train_tiny_tokenizer(sentences, vocab_size=400).save_pretrained(str(work))
    torch.manual_seed(0)
    CitrusV(tiny_config()).eval().save_pretrained(work)
    return Predictor.from_pretrained(work, settings=settings), "tiny random CitrusV (no embedded default found)"


def time_volume(predictor, series: Path, batch_size: int, out_dir: Path) -> dict:
    from citrus_v.data.medical_io import read_volume
    from citrus_v.volume.inference import segment_volume
    from citrus_v.volume.report import write_outputs

    t0 = time.perf_counter()
    volume = read_volume(series)
    t1 = time.perf_counter()
    seg = segment_volume(predictor, volume, "Segment the liver", axis=2, batch_size=batch_size)
    t2 = time.perf_counter()
    result = write_outputs(seg, out_dir)
    t3 = time.perf_counter()
    n = volume.data.shape[2]
    return {
        "slices": n,
        "read_s": t1 - t0,
        "predict_s": t2 - t1,
        "slices_per_s": n / (t2 - t1),
        "write_and_quantify_s": t3 - t2,
        "end_to_end_s": t3 - t0,
        "voxels_segmented": int(seg.masks.sum()),
        "volume_ml": result["structures"]["liver"]["volume_ml"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--series", type=Path, default=SERIES, help="DICOM series folder or NIfTI (default: the tests' CT series)")
    ap.add_argument("--model", default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--out", default=None, help="write the numbers as JSON here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        predictor, which = load_predictor(args.model, work / "model")
        runs = {}
        # warm-up: first calls pay for lazy imports and allocator growth
        from citrus_v.data.medical_io import read_volume
        from citrus_v.volume.slicing import slice_images

        predictor.predict_batch([(img, "Segment the liver") for img in slice_images(read_volume(args.series), 2, [0, 1])])
        runs["as is"] = time_volume(predictor, args.series, args.batch_size, work / "out_as_is")
        head = predictor.model.mllm.lm_head
        script = predictor.tokenizer.encode("Sure, it is [SEG].", add_special_tokens=False) + [predictor.eos_token_id]
        predictor.model.mllm.lm_head = _Forced(head, script)
        try:
            runs["forced [SEG]"] = time_volume(predictor, args.series, args.batch_size, work / "out_forced")
        finally:
            predictor.model.mllm.lm_head = head
    env = {"model": which, "device": str(predictor.device), "threads": args.threads, "batch_size": args.batch_size,
           "torch": torch.__version__, "cpu": platform.processor() or platform.machine()}  # fmt: skip
    print(f"model: {which}; device {env['device']}, {args.threads} thread(s), batch {args.batch_size}")
    print(f"{'run':<14} {'slices/s':>9} {'predict s':>10} {'read s':>7} {'write s':>8} {'end-to-end s':>13} {'voxels':>9}")
    for name, r in runs.items():
        print(f"{name:<14} {r['slices_per_s']:>9.2f} {r['predict_s']:>10.2f} {r['read_s']:>7.2f} "
              f"{r['write_and_quantify_s']:>8.2f} {r['end_to_end_s']:>13.2f} {r['voxels_segmented']:>9}")  # fmt: skip
    if args.out:
        Path(args.out).write_text(json.dumps({"env": env, "series": str(args.series), "runs": runs}, indent=2))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
