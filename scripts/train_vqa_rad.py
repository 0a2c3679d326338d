"""Fine-tune the tiny default on VQA-RAD's train split and measure it on validation only.

    python scripts/train_vqa_rad.py --suite <real suite>/vqa-rad --work /tmp/vqarad --lr 2e-4 5e-4

<suite> holds train.jsonl, val.jsonl (the questions on 10% of the train images) and images/. The script
writes WORK/train_balanced.jsonl (yes/no closed questions resampled to equal counts, every other
record kept once), WORK/val_blank.jsonl (val with every image replaced by a black image of the same
size), runs `citrus-v train --stage 3` once per --lr from --init, then `citrus-v eval` of the start
model and of each run on val and on blank val, and writes WORK/summary.json and a Markdown table (with two
baselines: the train split's majority closed answer, and the answer of the nearest train question, text only).
It never reads test.jsonl: the test split is scored once, after a setting is chosen here.

--stage-config FILE trains that stage file's parts (with the fine-tune schedule, every record of the data);
--segmenter-vision SOURCE first converts --init to that ``VisionConfig.source`` (image tokens from its
segmenter's LiteMedSAM encoder instead of or beside its ViT; WORK/init_<source>); --tag names the runs so
that several settings share one WORK (docs/default_model.md, "Image tokens from LiteMedSAM's encoder").
"""
from __future__ import annotations

import argparse
import collections
import json
import random
import subprocess
import sys
from pathlib import Path

from PIL import Image

CLI = [sys.executable, "-m", "citrus_v.cli"]


def read_records(path: Path) -> list[dict]:
    """Records of a JSONL file with image paths made absolute (relative to its folder)."""
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for rec in records:
        rec["images"] = [str((path.parent / p).resolve()) for p in rec.get("images", [])]
    return records


def write_records(records: list[dict], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def answer(rec: dict) -> str:
    return rec["messages"][-1]["content"].strip().lower()


def balanced(records: list[dict], seed: int) -> list[dict]:
    """Closed yes/no questions resampled (with replacement) so that yes and no are equally frequent."""
    rng = random.Random(seed)
    yes = [r for r in records if r["task"] == "vqa_closed" and answer(r) == "yes"]
    no = [r for r in records if r["task"] == "vqa_closed" and answer(r) == "no"]
    taken = {id(r) for r in yes + no}
    rest = [r for r in records if id(r) not in taken]
    n = max(len(yes), len(no))
    out = rest + yes + no
    out += rng.choices(yes, k=n - len(yes)) + rng.choices(no, k=n - len(no))
    rng.shuffle(out)
    return out


def blanked(records: list[dict], image_dir: Path) -> list[dict]:
    """The same records with every image replaced by a black one of the same size and mode."""
    image_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for rec in records:
        paths = []
        for src in rec["images"]:
            dst = image_dir / Path(src).name
            if not dst.exists():
                with Image.open(src) as im:
                    Image.new(im.mode, im.size).save(dst)
            paths.append(str(dst))
        out.append({**rec, "images": paths})
    return out


def majority_closed(train: list[dict], val: list[dict]) -> dict:
    """Accuracy on val's closed questions of always giving train's most frequent closed answer."""
    counts = collections.Counter(answer(r) for r in train if r["task"] == "vqa_closed")
    top = counts.most_common(1)[0][0]
    closed = [r for r in val if r["task"] == "vqa_closed"]
    acc = sum(answer(r) == top for r in closed) / len(closed)
    return {"answer": top, "closed_acc": acc, "n_closed": len(closed)}


def nearest_question(train: list[dict], val: list[dict]) -> dict:
    """A text-only baseline: each val question gets the answer of the train question sharing the most
    words with it (Jaccard; the first in file order on a tie), scored as ``citrus-v eval`` scores."""
    from citrus_v.eval.metrics.vqa import answer_tokens, token_recall
    from citrus_v.eval.parsing import closed_answer_correct

    def words(rec: dict) -> set[str]:
        return set(answer_tokens(rec["messages"][0]["content"].replace("<image>", "")))

    bank = [(words(r), r["messages"][-1]["content"]) for r in train]
    closed, recall = [], []
    for rec in val:
        q = words(rec)
        guess = max(bank, key=lambda b: len(q & b[0]) / max(len(q | b[0]), 1))[1]
        ref = rec["messages"][-1]["content"]
        if rec["task"] == "vqa_closed":
            closed.append(closed_answer_correct(guess, ref))
        else:
            recall.append(token_recall(guess, ref))
    return {"closed_acc": sum(closed) / max(len(closed), 1), "n_closed": len(closed),
            "open_recall": sum(recall) / max(len(recall), 1), "n_open": len(recall)}


def evaluate(model: str, data: Path, out: Path, max_new_tokens: int) -> dict:
    """`citrus-v eval` on one JSONL; closed accuracy, open recall and the share of yes/no answers."""
    if not (out / "eval.json").exists():
        subprocess.run(CLI + ["eval", "--data", str(data), "--model", model, "--out", str(out),
                              "--max-new-tokens", str(max_new_tokens), "--no-progress"], check=True)
    metrics = json.loads((out / "eval.json").read_text())
    preds = [json.loads(l) for l in (out / "predictions.jsonl").read_text().splitlines() if l.strip()]
    closed = [p["answer"].strip().lower().rstrip(".") for p in preds if p["task"] == "vqa_closed"]
    return {
        "closed_acc": metrics["vqa_closed_acc"]["value"], "n_closed": metrics["vqa_closed_acc"]["n"],
        "open_recall": metrics["vqa_open_recall"]["value"], "n_open": metrics["vqa_open_recall"]["n"],
        "yes_share": sum(a == "yes" for a in closed) / max(len(closed), 1),
        "no_share": sum(a == "no" for a in closed) / max(len(closed), 1),
    }


def segmenter_vision_init(init: str, source: str, out: Path) -> str:
    """--init with its image tokens read by its segmenter's encoder (vision.source ``source``, a new merger)."""
    if not (out / "config.json").exists():
        import torch

        from citrus_v import Predictor
        from citrus_v.model.citrus_v import with_segmenter_vision

        torch.manual_seed(0)
        predictor = Predictor.from_pretrained(init)  # its folder's tokenizer, template and image sizing travel along
        predictor.model = with_segmenter_vision(predictor.model, source).eval()
        predictor.save_pretrained(out)
    return str(out)


def finetune(args, data: Path, val: Path, lr: str) -> str:
    """One stage-3 fine-tune from --init; returns the final model folder."""
    out = args.work / f"ft{args.tag}_lr{lr}"
    final = out / "final"
    if not final.exists():
        cmd = CLI + ["train", "--stage", "3", "--data", str(data), "--val", str(val), "--init", args.init,
                     "--out", str(out), "--lr", lr, "--no-progress", "--allow-outside", "--resume"]
        cmd += ["--steps", str(args.steps)] if args.steps else ["--epochs", str(args.epochs)]
        if args.stage_config:  # its parts; every record of the data trains, as with the built-in stage
            stage = args.work / f"stage{args.tag}.json"
            stage.write_text(json.dumps({"base": str(args.stage_config.resolve()), "mixture": [[str(data), 1.0]]}))
            cmd += ["--stage-config", str(stage), "--schedule", "finetune"]
        if args.time_budget_min:
            cmd += ["--time-budget-min", str(args.time_budget_min)]
        subprocess.run(cmd, check=True)
    return str(final)


def table(summary: dict) -> str:
    rows = ["| model | closed acc (n) | open recall (n) | yes / no share (closed) | blank-image closed acc |",
            "|---|---|---|---|---|"]
    maj = summary["majority"]
    rows.append(f"| always '{maj['answer']}' (train majority) | {maj['closed_acc']:.3f} ({maj['n_closed']}) "
                f"| 0 | - | {maj['closed_acc']:.3f} |")
    near = summary["nearest_question"]
    rows.append(f"| answer of the nearest train question (text only) | {near['closed_acc']:.3f} ({near['n_closed']}) "
                f"| {near['open_recall']:.3f} ({near['n_open']}) | - | - |")
    for name, r in summary["models"].items():
        v, b = r["val"], r["blank"]
        rows.append(f"| {name} | {v['closed_acc']:.3f} ({v['n_closed']}) | {v['open_recall']:.3f} ({v['n_open']}) "
                    f"| {v['yes_share']:.2f} / {v['no_share']:.2f} | {b['closed_acc']:.3f} |")
    return "\n".join(rows) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", type=Path, required=True, help="folder with train.jsonl, val.jsonl, images/")
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--init", default="citrus_v/assets/default")
    p.add_argument("--lr", nargs="+", default=["2e-4", "5e-4"])
    p.add_argument("--epochs", type=float, default=3.0)
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per run (instead of --epochs)")
    p.add_argument("--stage-config", type=Path, default=None,
                   help="a stage file for its trainable parts (run with the fine-tune schedule)")
    p.add_argument("--segmenter-vision", choices=["segmenter", "vit+segmenter"], default=None,
                   help="start from --init with this vision.source: image tokens from its segmenter's encoder instead of "
                        "or beside its ViT, through a new merger (written to WORK/init_<source>)")
    p.add_argument("--tag", default="", help="appended to the run folders' names (ft<tag>_lr<lr>)")
    p.add_argument("--time-budget-min", type=float, default=None, help="passed to citrus-v train per run")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    train, val = read_records(args.suite / "train.jsonl"), read_records(args.suite / "val.jsonl")
    data = write_records(balanced(train, args.seed), args.work / "train_balanced.jsonl")
    val_path = write_records(val, args.work / "val.jsonl")
    blank_path = write_records(blanked(val, args.work / "blank_images"), args.work / "val_blank.jsonl")
    summary = {"majority": majority_closed(train, val), "nearest_question": nearest_question(train, val), "models": {}}
    if args.segmenter_vision:
        args.init = segmenter_vision_init(args.init, args.segmenter_vision,
                                          args.work / f"init_{args.segmenter_vision.replace('+', '_')}")
    models = {f"start ({args.init})": args.init}
    models.update({f"stage 3{args.tag}, lr {lr}": finetune(args, data, val_path, lr) for lr in args.lr})
    for name, model in models.items():
        slug = "".join(c if c.isalnum() or c in "-." else "_" for c in str(Path(model).resolve()))[-60:]
        summary["models"][name] = {
            "path": model,
            "val": evaluate(model, val_path, args.work / f"eval_{slug}_val", args.max_new_tokens),
            "blank": evaluate(model, blank_path, args.work / f"eval_{slug}_blank", args.max_new_tokens)}
    (args.work / "summary.json").write_text(json.dumps(summary, indent=2))
    (args.work / "summary.md").write_text(table(summary))
    print(table(summary))


if __name__ == "__main__":
    main()
