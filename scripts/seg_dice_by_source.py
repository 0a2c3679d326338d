"""Segmentation Dice per data source (the suite's generator: synthetic phantoms vs the real
TotalSegmentator slices) from what ``citrus-v eval`` wrote.

    python scripts/seg_dice_by_source.py runs/default/suite/test.jsonl runs/default/eval/predictions.jsonl [--json out.json]

``predictions.jsonl`` rows carry the record's ``index`` in the data file and one Dice per
[SEG]; the source is the record's ``meta.generator``.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np


def dice_by_source(data: Path, predictions: Path) -> dict[str, dict[str, float]]:
    sources = [json.loads(line).get("meta", {}).get("generator", "unknown") for line in data.read_text().splitlines() if line.strip()]
    per: dict[str, list[float]] = defaultdict(list)
    for line in predictions.read_text().splitlines():
        row = json.loads(line)
        if row.get("task") == "segmentation":
            per[sources[row["index"]]] += row["dice"]
    return {s: {"masks": len(v), "dice_mean": float(np.mean(v)), "dice_median": float(np.median(v))}
            for s, v in sorted(per.items())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data", type=Path)
    p.add_argument("predictions", type=Path)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    table = dice_by_source(args.data, args.predictions)
    print("| source | masks | Dice mean | Dice median |\n|---|---|---|---|")
    for s, r in table.items():
        print(f"| {s} | {r['masks']} | {r['dice_mean']:.3f} | {r['dice_median']:.3f} |")
    if args.json:
        args.json.write_text(json.dumps(table, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
