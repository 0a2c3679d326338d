"""Real-data segmentation for the tiny default (issue 21): cached stage 4 on the real suite's masks.

    python scripts/train_real_seg.py subsets --real /tmp/realdata/suite --synthetic /tmp/realseg/suite --out /tmp/realseg/data
    python scripts/train_real_seg.py table /tmp/realseg/data/val.jsonl /tmp/realseg/eval_before/predictions.jsonl

``subsets`` writes ``train.jsonl`` and ``val.jsonl`` (segmentation records only, their image and
mask files copied under ``OUT/files/``): every k-th record of each real source's
own split (file order; CVC-ClinicDB's val frames are whole blocks of the converter's split, so
a thinned val stays out of the train frames) plus the synthetic suite's segmentation records as
a replay slice, and ``val_<source>.jsonl`` per source for ``citrus-v eval``. The test splits
are never read. ``table`` prints Dice per source (n, mean, median) from ``citrus-v eval``'s
predictions. The whole run is ``scripts/train_real_seg.sh``.
"""

from __future__ import annotations

import argparse
import json
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


def subsets(real: Path, synthetic: Path, out: Path) -> dict[str, dict[str, int]]:
    out.mkdir(parents=True, exist_ok=True)
    counts: dict[str, dict[str, int]] = {}
    for split, k in (("train", 0), ("val", 1)):
        picked: list[dict] = []
        for source, sizes in REAL_SEG.items():
            rows = _every_kth(_seg_records(real / source / f"{split}.jsonl"), sizes[k])
            _copy_files(rows, out, source)
            picked += rows
            if split == "val":
                _write(out / f"val_{source}.jsonl", rows)
        synth = _every_kth(_seg_records(synthetic / f"{split}.jsonl"), SYNTHETIC_SEG[k])
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("subsets")
    s.add_argument("--real", type=Path, required=True)
    s.add_argument("--synthetic", type=Path, required=True)
    s.add_argument("--out", type=Path, required=True)
    t = sub.add_parser("table")
    t.add_argument("data", type=Path, nargs="+", help="data file(s) then the predictions.jsonl")
    args = p.parse_args()
    if args.cmd == "subsets":
        print(json.dumps(subsets(args.real, args.synthetic, args.out), indent=1))
        return
    *datas, preds = args.data
    for data in datas:
        for src, r in dice_table(data, preds).items():
            print(f"| {src} | {r['n']} | {r['dice_mean']:.3f} | {r['dice_median']:.3f} |")


if __name__ == "__main__":
    main()
