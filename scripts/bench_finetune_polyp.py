"""Does the default fine-tune command help on a task the default model never saw? Polyp segmentation
in colonoscopy frames (CVC-ClinicDB), split by video sequence.

    python scripts/bench_finetune_polyp.py --src <CVC-ClinicDB folder: images/, masks/> --work runs/polyp \\
        [--out benchmarks/finetune_polyp_cpu.json] [--reuse]

Converts the folder with ``citrus-v data convert --format cvc-clinicdb``, cuts it into contiguous blocks of
frame numbers (whole video sequences, fixed below before any training: near-duplicate frames of one video
never straddle two sides), scores the default model's Dice on the validation and test blocks with
``citrus-v eval``, runs the plain default command ``citrus-v train --stage 4 --data train.jsonl --init
<default> --out ...`` (stage 4 trains the segmenter side, projector + image encoder + prompt encoder + mask
decoder, on segmentation records; the command holds out its own 5% of train.jsonl for the loss it prints
before and after) and scores the result on the same blocks. Dice is per image (one polyp mask each): mean,
median and n. Only the validation blocks may inform a choice; the test blocks are reported. ``--reuse``
keeps an eval or training folder that already holds its result (a rerun after an interruption). Extra
``train`` flags (``--train-arg=--lr --train-arg=3e-4``) are for the validation sweep, and go in the JSON.

CVC-ClinicDB (Bernal et al., Hospital Clinic and Computer Vision Center, Barcelona): research and
educational use only, no commercial use; cite the set (README, "Licence and data"). Frames are never committed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from citrus_v.data.sources.cvc_clinicdb import SPLIT_FRAMES as BLOCKS

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = ROOT / "citrus_v" / "assets" / "default"
# BLOCKS: inclusive frame blocks = whole sequences of the set's README table (train sequences 1-19, val
# 20-23, test 24-29; frames 133, 419 and 480 are absent from the 609-frame copy used), the converter's own split


def cli(*args: str) -> tuple[list[str], float]:
    """Run ``citrus-v ARGS`` in a subprocess, as a user would; -> (the command, seconds)."""
    cmd = [sys.executable, "-m", "citrus_v.cli", *args]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT)
    return cmd, time.perf_counter() - t0


def write_blocks(data: Path) -> dict[str, Path]:
    """``train/val/test.jsonl`` beside ``data`` (same folder, so relative image paths hold): the
    segmentation records only (the converter also writes a "locate" record per frame)."""
    rows = [json.loads(line) for line in data.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = [r for r in rows if r["task"] == "segmentation"]
    out = {}
    for split, (lo, hi) in BLOCKS.items():
        path = data.parent / f"{split}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows if lo <= r["meta"]["frame"] <= hi), encoding="utf-8")
        out[split] = path
    return out


def dice(eval_dir: Path) -> dict:
    """Per-image Dice from ``predictions.jsonl`` (one mask per record; a record without a mask scores 0)."""
    per = []
    for line in (eval_dir / "predictions.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        per.append(float(np.mean(row["dice"])) if row.get("dice") else 0.0)
    return {"dice_mean": round(float(np.mean(per)), 4), "dice_median": round(float(np.median(per)), 4), "n": len(per)}


def evaluate(model: Path, data: Path, out: Path, reuse: bool) -> tuple[dict, float]:
    if not (reuse and (out / "predictions.jsonl").is_file()):
        _, t = cli("eval", "--model", str(model), "--data", str(data), "--out", str(out), "--batch-size", "8",
                   "--max-new-tokens", "16", "--no-progress")
    else:
        t = 0.0
    return dice(out), round(t, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", required=True, type=Path, help="CVC-ClinicDB folder with images/ and masks/")
    ap.add_argument("--work", required=True, type=Path, help="scratch folder for the converted data, runs and evals")
    ap.add_argument("--splits", default="val,test", help="blocks to score before and after (val only for a sweep)")
    ap.add_argument("--train-arg", action="append", default=[], help="an extra citrus-v train argument (sweeps)")
    ap.add_argument("--reuse", action="store_true", help="keep eval/train folders that already hold their results")
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = ap.parse_args()

    t_start = time.perf_counter()
    work, splits = args.work, args.splits.split(",")
    data = work / "data" / "data.jsonl"
    if not (args.reuse and data.is_file()):
        cli("data", "convert", "--format", "cvc-clinicdb", str(args.src), "--out", str(data.parent))
    files = write_blocks(data)
    tag = "default" if not args.train_arg else "_".join(a.lstrip("-") for a in args.train_arg)
    ft = work / f"ft_{tag}"
    before = {s: evaluate(DEFAULT_MODEL, files[s], work / f"eval_{s}_before", args.reuse) for s in splits}
    train_cmd = ["train", "--stage", "4", "--data", str(files["train"]), "--init", str(DEFAULT_MODEL), "--out", str(ft),
                 "--no-progress", *args.train_arg]
    t_train = 0.0
    if not (args.reuse and (ft / "final").is_dir()):
        train_cmd, t_train = cli(*train_cmd)
        train_cmd = train_cmd[3:]
    after = {s: evaluate(ft / "final", files[s], work / f"eval_{s}_{tag}", args.reuse) for s in splits}

    report = json.loads((ft / "finetune.json").read_text(encoding="utf-8"))
    steps = [json.loads(line) for line in (ft / "metrics.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
    counts = {s: sum(1 for line in files[s].read_text().splitlines() if line.strip()) for s in files}
    result = {
        "task": "polyp segmentation, CVC-ClinicDB colonoscopy frames (the default model never saw endoscopy video; "
                "it was trained on synthetic phantoms and TotalSegmentator CT/MR slices)",
        "blocks": {s: {"frames": list(BLOCKS[s]), "records": counts[s]} for s in BLOCKS},
        "command": " ".join(["citrus-v", *train_cmd]).replace(str(ROOT) + "/", "").replace(str(work), "<work>"),
        "schedule": {k: report["stage"][k] for k in ("lr", "epochs", "max_steps", "warmup_steps", "micro_batch_size", "grad_accum")}
        | {"steps": report["steps"]},
        "validation_slice": report["validation"],
        "val_loss_before": report["val_before"], "val_loss_after": report["val_after"],
        "seconds_per_step": round(float(np.median(np.diff([s["elapsed_s"] for s in steps]))), 2) if len(steps) > 1 else None,
        "dice_before": {s: v[0] for s, v in before.items()}, "dice_after": {s: v[0] for s, v in after.items()},
        "elapsed_s": {"eval_before": {s: v[1] for s, v in before.items()}, "train": round(t_train, 1),
                      "eval_after": {s: v[1] for s, v in after.items()}, "total": round(time.perf_counter() - t_start, 1)},
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                    "omp_num_threads": os.environ.get("OMP_NUM_THREADS")},
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
