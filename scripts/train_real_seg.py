"""Real-data segmentation for the tiny default (issue 21): cached stage 4 on the real suite's masks.

    python scripts/train_real_seg.py subsets --real /tmp/realdata/suite --synthetic /tmp/realseg/suite --out /tmp/realseg/data
    python scripts/train_real_seg.py table /tmp/realseg/data/val.jsonl /tmp/realseg/eval_before/predictions.jsonl

``subsets`` writes ``train.jsonl`` and ``val.jsonl`` (segmentation records only, their image and
mask files copied under ``OUT/files/``): every k-th record of each real source's
own split (file order; CVC-ClinicDB's val frames are whole blocks of the converter's split, so
a thinned val stays out of the train frames) plus the synthetic suite's segmentation records as
a replay slice, and ``val_<source>.jsonl`` per source for ``citrus-v eval``. The test splits
are never read. ``table`` prints Dice per source (n, mean, median) from ``citrus-v eval``'s
predictions (the model's own answers: a record answered without [SEG] scores 0); ``cached``
the same from the run's cached val set (the reference answer's [SEG] states), cheap enough to
score any model folder on the same masks. The whole run is ``scripts/train_real_seg.sh``.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np

# segmentation records per source: (train, val); None = all of that split
REAL_SEG = {"cvc-clinicdb": (48, 23), "covid-chestxray": (24, 24), "monuseg": (24, 24), "drive": (16, 16)}
SYNTHETIC = "synthetic"
SYNTHETIC_SEG = (24, None)  # the phantom suite's segmentation records (TotalSegmentator slices among them)


def _seg_records(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    for r in rows:
        r["images"] = [str(path.parent / p) for p in r["images"]]
        r["masks"] = [str(path.parent / p) for p in r.get("masks", [])]
    return [r for r in rows if r["masks"]]


def _copy_files(rows: list[dict], out: Path, tag: str) -> None:
    """Copy each record's image and masks under ``out/files/<tag>/`` and point the record there
    (relative paths: the data check keeps files inside the JSONL's folder)."""
    for r in rows:
        for key in ("images", "masks"):
            rel = []
            for p in r[key]:
                dst = out / "files" / tag / Path(p).name
                if not dst.exists():
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(p, dst)
                rel.append(str(dst.relative_to(out)))
            r[key] = rel


def _every_kth(rows: list[dict], n: int | None) -> list[dict]:
    """``n`` records spread evenly over ``rows`` (file order kept); all when ``n`` is None or >= len."""
    if n is None or n >= len(rows):
        return rows
    return [rows[int(i * len(rows) / n)] for i in range(n)]


def source_of(record: dict) -> str:
    return record.get("meta", {}).get("source", SYNTHETIC)


def _write(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def subsets(real: Path, synthetic: Path, out: Path, synthetic_train: int | None = SYNTHETIC_SEG[0],
            train_counts: dict[str, int | None] | None = None) -> dict[str, dict[str, int]]:
    """``synthetic_train``: how many of the suite's train segmentation records replay (None: all);
    ``train_counts``: train records per real source instead of ``REAL_SEG``'s (None: all; a source not in
    ``REAL_SEG`` joins train only, so the val set stays the same)."""
    sizes = dict(REAL_SEG)
    for source, n in (train_counts or {}).items():
        sizes[source] = (n, sizes.get(source, (0, 0))[1])
    out.mkdir(parents=True, exist_ok=True)
    counts: dict[str, dict[str, int]] = {}
    for split, k in (("train", 0), ("val", 1)):
        picked: list[dict] = []
        for source, counts_of in sizes.items():
            if counts_of[k] == 0:  # a source added for train only
                continue
            rows = _every_kth(_seg_records(real / source / f"{split}.jsonl"), counts_of[k])
            _copy_files(rows, out, source)
            picked += rows
            if split == "val":
                _write(out / f"val_{source}.jsonl", rows)
        n_synth = synthetic_train if split == "train" else SYNTHETIC_SEG[1]
        synth = _every_kth(_seg_records(synthetic / f"{split}.jsonl"), n_synth)
        _copy_files(synth, out, f"{SYNTHETIC}-{split}")
        picked += synth
        if split == "val":
            _write(out / f"val_{SYNTHETIC}.jsonl", synth)
        _write(out / f"{split}.jsonl", picked)
        per: dict[str, int] = defaultdict(int)
        for r in picked:
            per[source_of(r)] += 1
        counts[split] = dict(per)
    (out / "counts.json").write_text(json.dumps(counts, indent=1) + "\n", encoding="utf-8")
    return counts


def dice_table(data: Path, predictions: Path) -> dict[str, dict[str, float]]:
    """Dice per source from ``citrus-v eval``'s predictions (one Dice per [SEG]; a record whose
    answer has no [SEG] scores 0 for each of its masks when eval writes it so)."""
    sources = [source_of(json.loads(line)) for line in data.read_text().splitlines() if line.strip()]
    per: dict[str, list[float]] = defaultdict(list)
    for line in predictions.read_text().splitlines():
        row = json.loads(line)
        if row.get("task") == "segmentation":
            per[sources[row["index"]]] += row["dice"]
    return {s: {"n": len(v), "dice_mean": float(np.mean(v)), "dice_median": float(np.median(v))} for s, v in sorted(per.items())}


def cached_table(data: Path, run: Path, model_dir: Path, image_cache: Path | None = None) -> dict[str, dict[str, float]]:
    """Dice per source on the cached val set of ``run`` (train-seg-cached's OUT): the [SEG] states of
    the reference answer (teacher-forced, as training sees them), decoded by ``model_dir``."""
    import torch

    from citrus_v.model.loading import load_model_and_tokenizer
    from citrus_v.train.cached_seg import dice_of_picked
    from citrus_v.train.feature_cache import load_cached_set, shards

    records = [json.loads(line) for line in data.read_text().splitlines() if line.strip()]
    sources = [source_of(r) for r in records for _ in r["masks"]]  # one per mask, cache order
    images, states = (image_cache or run / "image_cache") / "val", run / "states" / "val"
    for folder, what in ((images, "--image-cache (the run's, if it had one)"), (states, "the run folder")):
        if not folder.is_dir():
            raise SystemExit(f"cached: {folder}: no cached val set here; check {what}")
    val = load_cached_set(images, states, len(shards(list(range(len(records))))))
    model, _, _ = load_model_and_tokenizer(model_dir)
    model.eval()
    with torch.inference_mode():
        dice = dice_of_picked(model, val)
    per: dict[str, list[float]] = defaultdict(list)
    for src, d in zip(sources, dice, strict=True):
        per[src].append(d)
    return {s: {"n": len(v), "dice_mean": float(np.mean(v)), "dice_median": float(np.median(v))} for s, v in sorted(per.items())}


def train(args: argparse.Namespace) -> None:
    """``citrus-v train-seg-cached`` with a short warm-up (its CLI keeps the default 100 steps, more
    than a CPU run of a few dozen steps has): the same stage, loss and best-on-val pick."""
    import torch

    from citrus_v.train.cached_seg import CachedSegConfig, run_cached_stage4

    cfg = CachedSegConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup_steps=args.warmup,
                          val_every=args.val_every, save_every=args.val_every, max_records=None)
    report = run_cached_stage4(cfg, init=args.init, data=args.data, out_dir=args.out, val_data=args.val,
                               image_cache=args.image_cache, save_dtype=torch.float16, resume=args.resume, progress=False)
    print(f"val Dice before {report['val_dice_before']:.4f}, best {report['best']['dice']:.4f} at step {report['best']['step']}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("subsets")
    s.add_argument("--real", type=Path, required=True)
    s.add_argument("--synthetic", type=Path, required=True)
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--synthetic-train", type=int, default=SYNTHETIC_SEG[0],
                   help="synthetic train segmentation records in the replay slice (0 or less: all of them)")
    s.add_argument("--train-count", nargs="*", default=[], metavar="SOURCE=N",
                   help="train records of a real source (N <= 0: all); a source new to the list joins train only")
    tr = sub.add_parser("train", help="cached stage 4 with a short warm-up")
    for flag in ("init", "data", "val", "out"):
        tr.add_argument(f"--{flag}", type=Path, required=True)
    tr.add_argument("--image-cache", type=Path, default=None)
    tr.add_argument("--steps", type=int, default=72)
    tr.add_argument("--batch-size", type=int, default=8)
    tr.add_argument("--lr", type=float, default=5e-4)
    tr.add_argument("--warmup", type=int, default=8)
    tr.add_argument("--val-every", type=int, default=24)
    tr.add_argument("--resume", action="store_true")
    c = sub.add_parser("cached", help="Dice per source on the cached val set (teacher-forced [SEG] states)")
    c.add_argument("data", type=Path, help="the val JSONL the run cached")
    c.add_argument("run", type=Path, help="train-seg-cached's --out")
    c.add_argument("model", type=Path, nargs="+", help="model folder(s) to score")
    c.add_argument("--image-cache", type=Path, default=None, help="the run's --image-cache, if it had one")
    t = sub.add_parser("table")
    t.add_argument("data", type=Path, nargs="+", help="data file(s) then the predictions.jsonl")
    args = p.parse_args()
    if args.cmd == "subsets":
        n_synth = args.synthetic_train if args.synthetic_train > 0 else None
        counts = {src: (int(n) if int(n) > 0 else None) for src, n in (t.split("=") for t in args.train_count)}
        print(json.dumps(subsets(args.real, args.synthetic, args.out, n_synth, counts), indent=1))
        return
    if args.cmd == "train":
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
        train(args)
        return
    if args.cmd == "cached":
        for model in args.model:
            print(f"{model}:")
            for src, r in cached_table(args.data, args.run, model, args.image_cache).items():
                print(f"| {src} | {r['n']} | {r['dice_mean']:.3f} | {r['dice_median']:.3f} |")
        return
    *datas, preds = args.data
    for data in datas:
        for src, r in dice_table(data, preds).items():
            print(f"| {src} | {r['n']} | {r['dice_mean']:.3f} | {r['dice_median']:.3f} |")


if __name__ == "__main__":
    main()
