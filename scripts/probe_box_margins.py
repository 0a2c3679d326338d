"""Val-only probe behind the Predictor's box tightening: how well does the segmenter tighten the
model's written boxes, with the box given as written or widened by a margin on each side?

    python scripts/probe_box_margins.py --data valx/val.jsonl --predictions <eval dir>/predictions.jsonl \
        --out docs/default_model/box_tightening_margins_val.json [--model DIR]

``predictions.jsonl`` is what ``citrus-v eval --text-boxes`` (or an eval from before tightening) wrote
for ``--data``: its first written box per detection record is prompted into the model's segmenter
(``Predictor.refine(box=...)``), and the outline's bounding box is scored against the truth.
Prints P@0.5 and mean IoU per margin, overall and per modality; writes every row to ``--out``.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

MARGINS = (0.0, 0.1, 0.2, 0.3)


def widened(box: list[float], margin: float, hw: tuple[int, int]) -> list[float]:
    from citrus_v.data.boxes import clip_box

    bw, bh = box[2] - box[0], box[3] - box[1]
    return list(clip_box([box[0] - margin * bw, box[1] - margin * bh, box[2] + margin * bw, box[3] + margin * bh], hw))


def main() -> int:
    from PIL import Image

    from citrus_v.data.phantoms.common import bbox_of
    from citrus_v.eval.metrics.detection import box_iou
    from citrus_v.infer.predictor import Predictor

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--predictions", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--model", default=None)
    args = ap.parse_args()

    records = [json.loads(line) for line in args.data.open()]
    predictions = [json.loads(line) for line in args.predictions.open()]
    predictor = Predictor.from_pretrained(args.model)
    todo = [p for p in predictions if p["task"] == "detection" and p["pred_boxes"] and p["gt_boxes"]]
    rows = []
    for p in tqdm(todo, desc="probe", unit="record"):
        written = p.get("text_boxes", p["pred_boxes"])[0]  # the box as the model wrote it
        image = np.asarray(Image.open(args.data.parent / records[p["index"]]["images"][0]).convert("RGB"))
        hw = image.shape[:2]
        row = {"index": p["index"], "modality": p["modality"], "written": max(box_iou(written, g) for g in p["gt_boxes"])}
        for m in MARGINS:
            mask = predictor.refine(image, box=widened(written, m, hw)).masks[0].mask
            tight = bbox_of(mask) if mask.any() else written
            row[f"margin_{m}"] = max(box_iou(tight, g) for g in p["gt_boxes"])
        rows.append(row)

    keys = ["written"] + [f"margin_{m}" for m in MARGINS]
    groups: dict[str, list[dict]] = defaultdict(list, {"all": rows})
    for r in rows:
        groups[r["modality"]].append(r)
    summary = {g: {k: {"p50": float(np.mean([r[k] >= 0.5 for r in rs])), "mean_iou": float(np.mean([r[k] for r in rs]))}
                   for k in keys} | {"n": len(rs)} for g, rs in groups.items()}
    for g, s in summary.items():
        print(f"{g:10s} n {s['n']:4d}  " + "  ".join(f"{k} {s[k]['p50']:.3f}" for k in keys))
    args.out.write_text(json.dumps({"summary": summary, "rows": rows}, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
