"""Does the default fine-tune command help on a task the default model never saw? VQA-RAD, test split.

    python scripts/bench_finetune_vqa_rad.py --data-root <folder with trainset.json, testset.json, images/> \\
        --work runs/vqa_rad [--train-records 400] [--out benchmarks/finetune_vqa_rad.json]

Converts VQA-RAD with ``citrus-v data convert --format vqa-rad``, scores the default model on the
test split with ``citrus-v eval`` (closed-question accuracy, open-question token recall), fine-tunes it
with the default command (``citrus-v train --stage 3 --data train.jsonl --init <default> --out ...``:
its fine-tune schedule and its own validation slice of the TRAIN records), scores the result on the same
test split and prints one JSON with both scores, n, the commands and the elapsed times. Nothing is chosen
on the test split. ``--train-records N`` fine-tunes on a seeded N-record subset of the train split (a
CPU budget); the JSON says so. VQA-RAD (Lau et al. 2018, https://osf.io/89kps/) is CC0 1.0; the layout
read here is the one of the public ``data_RAD/`` folder (``trainset.json``, ``testset.json``, ``images/``).
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = ROOT / "citrus_v" / "assets" / "default"


def cli(*args: str) -> tuple[list[str], float]:
    """Run ``citrus-v ARGS`` in a subprocess, as a user would; -> (the command, seconds)."""
    cmd = [sys.executable, "-m", "citrus_v.cli", *args]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT)
    return cmd, time.perf_counter() - t0


def scores(eval_dir: Path) -> dict:
    d = json.loads((eval_dir / "eval.json").read_text(encoding="utf-8"))
    return {"vqa_closed_acc": d["vqa_closed_acc"]["value"], "n_closed": d["vqa_closed_acc"]["n"],
            "vqa_open_recall": d["vqa_open_recall"]["value"], "n_open": d["vqa_open_recall"]["n"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", required=True, type=Path, help="VQA-RAD folder: trainset.json, testset.json, images/")
    ap.add_argument("--work", required=True, type=Path, help="scratch folder for the converted data, runs and evals")
    ap.add_argument("--train-records", type=int, default=None, help="fine-tune on a seeded subset of this many train records")
    ap.add_argument("--batch-size", type=int, default=8, help="citrus-v eval --batch-size")
    ap.add_argument("--max-new-tokens", type=int, default=64,
                    help="citrus-v eval --max-new-tokens (VQA-RAD answers are at most 84 characters, 8 on average)")
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = ap.parse_args()

    t_start = time.perf_counter()
    work, images = args.work, args.data_root / "images"
    for split in ("train", "test"):
        cli("data", "convert", "--format", "vqa-rad", str(args.data_root / f"{split}set.json"), "--out", str(work / split),
            "--images-root", str(images))
    train = work / "train" / "data.jsonl"
    if args.train_records is not None:  # seeded subset; lines keep their relative image paths (same folder)
        lines = train.read_text(encoding="utf-8").splitlines()
        random.Random(0).shuffle(lines)
        train = work / "train" / f"subset_{args.train_records}.jsonl"
        train.write_text("\n".join(lines[: args.train_records]) + "\n", encoding="utf-8")
    test = work / "test" / "data.jsonl"

    eval_args = ["--data", str(test), "--batch-size", str(args.batch_size), "--max-new-tokens", str(args.max_new_tokens),
                 "--no-progress"]
    _, t_before = cli("eval", "--model", str(DEFAULT_MODEL), "--out", str(work / "eval_before"), *eval_args)
    train_cmd, t_train = cli("train", "--stage", "3", "--data", str(train), "--init", str(DEFAULT_MODEL),
                             "--out", str(work / "ft"), "--no-progress")
    _, t_after = cli("eval", "--model", str(work / "ft" / "final"), "--out", str(work / "eval_after"), *eval_args)

    ft = json.loads((work / "ft" / "finetune.json").read_text(encoding="utf-8"))
    result = {
        "task": "VQA-RAD test split (451 QA; the default model was trained on synthetic phantoms and TotalSegmentator slices only)",
        "train_records": ft["validation"].get("train_records"), "val_records": ft["validation"].get("val_records"),
        "train_subset": args.train_records, "eval_max_new_tokens": args.max_new_tokens,
        "command": " ".join(["citrus-v", *train_cmd[3:]]).replace(str(ROOT) + "/", ""),
        "schedule": {k: ft["stage"][k] for k in ("lr", "epochs", "max_steps", "warmup_steps", "micro_batch_size", "grad_accum")}
        | {"steps": ft["steps"]},
        "val_loss_before": ft["val_before"], "val_loss_after": ft["val_after"],
        "test_before": scores(work / "eval_before"), "test_after": scores(work / "eval_after"),
        "elapsed_s": {"eval_before": round(t_before, 1), "train": round(t_train, 1), "eval_after": round(t_after, 1),
                      "total": round(time.perf_counter() - t_start, 1)},
        "machine": {"platform": platform.platform(), "cpu_count": __import__("os").cpu_count()},
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
