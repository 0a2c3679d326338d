"""Whole pathology and fundus images, given whole or tiled (``Predictor.predict_tiled``): Dice per image.

The real suite scores MoNuSeg and DRIVE on the tiles the loaders cut (250 and ~290 px). A user has the
whole 1000 px or 565 px image; this scores what ``citrus-v predict --image whole.png`` returns on it,
with and without ``--tiles``, against the image's own mask:

    python scripts/eval_whole_images.py --drive SNAPSHOTS/drive --monuseg SNAPSHOTS/monuseg --split val \\
        --tiles whole auto 2 3 4 --out /tmp/whole_val.json

``--drive`` is the DRIVE release folder (training/, test/), ``--monuseg`` UCTransNet's MoNuSeg folder; the
splits are the real suite's (DRIVE training 37-40 val, test/ test; MoNuSeg's Val_Folder and Test_Folder).
Each setting is one row per source: n images, mean and median Dice (a prompt answered without [SEG] scores
0), mean seconds per image. Choose the setting on val; score test once. ``--scale F`` resizes each image and
mask first, to ask what a higher-resolution photograph of the same field would get.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

QUESTIONS = {"drive": "Please segment the retinal vessels.", "monuseg": "Please segment the cell nuclei."}


def _setting(text: str) -> str | tuple[int, int]:
    from citrus_v.infer.tiling import parse_tiles

    return text if text == "whole" else parse_tiles(text)


def _images(args: argparse.Namespace) -> dict[str, list[tuple[str, Path, Path]]]:
    from citrus_v.data.sources import drive, monuseg

    found = {}
    if args.drive:
        found["drive"] = drive.whole_images(args.drive, args.split)
    if args.monuseg:
        found["monuseg"] = monuseg.whole_images(args.monuseg, args.split)
    for source, rows in found.items():
        if not rows:
            raise SystemExit(f"eval_whole_images: no {args.split} images under --{source} {getattr(args, source)}")
    return found


def _scaled(rgb: np.ndarray, mask: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) image and (H, W) mask resized by ``scale`` (bicubic, nearest); unchanged at 1."""
    if scale == 1.0:
        return rgb, mask
    from PIL import Image

    size = (max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale)))  # (W, H)
    image = np.asarray(Image.fromarray(rgb).resize(size, Image.BICUBIC))
    return image, np.asarray(Image.fromarray(mask).resize(size, Image.NEAREST))


def _score(predictor, setting, rgb: np.ndarray, truth: np.ndarray, question: str) -> tuple[float, float]:
    from citrus_v.eval.metrics.segmentation import dice

    start = time.perf_counter()
    pred = predictor.predict(rgb, question) if setting == "whole" else predictor.predict_tiled(rgb, question, setting)
    seconds = time.perf_counter() - start
    mask = pred.masks[0].mask if pred.masks else np.zeros_like(truth)  # no [SEG]: an empty mask
    return dice(mask, truth), seconds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--drive", default=None, help="the DRIVE release folder")
    p.add_argument("--monuseg", default=None, help="UCTransNet's datasets/MoNuSeg folder")
    p.add_argument("--split", choices=("train", "val", "test"), default="val")
    p.add_argument("--tiles", nargs="+", type=_setting, default=["whole", "auto"], help="whole, auto, N or RxC")
    p.add_argument("--scale", type=float, default=1.0,
                   help="resize each image (bicubic) and its mask (nearest) by this factor first: a higher-resolution "
                        "photograph of the same field (default 1)")
    p.add_argument("--model", default=None, help="model folder (default: the embedded default)")
    p.add_argument("--out", default=None, help="write the table and every image's Dice here (JSON)")
    args = p.parse_args(argv)
    if not (args.drive or args.monuseg):
        p.error("give --drive, --monuseg or both")

    from citrus_v.data.sources.masks import read_rgb_and_mask
    from citrus_v.infer.predictor import Predictor

    images = _images(args)
    predictor = Predictor.from_pretrained(args.model)
    rows, per_image = [], []
    for source, items in images.items():
        loaded = [(name, *_scaled(*read_rgb_and_mask(img, mask), args.scale)) for name, img, mask in items]
        for setting in args.tiles:
            label = setting if isinstance(setting, str) else f"{setting[0]}x{setting[1]}"
            scores = []
            for name, rgb, truth in loaded:
                d, seconds = _score(predictor, setting, rgb, truth, QUESTIONS[source])
                scores.append((d, seconds))
                per_image.append({"source": source, "image": name, "tiles": label, "dice": round(d, 4)})
            dices = np.array([d for d, _ in scores])
            row = {"source": source, "split": args.split, "scale": args.scale, "tiles": label, "n": len(scores),
                   "dice_mean": round(float(dices.mean()), 4), "dice_median": round(float(np.median(dices)), 4),
                   "seconds_per_image": round(float(np.mean([s for _, s in scores])), 2)}
            rows.append(row)
            print(f"{source:8s} {args.split:5s} tiles {label:6s} n {row['n']:3d}  Dice mean {row['dice_mean']:.3f} "
                  f"median {row['dice_median']:.3f}  {row['seconds_per_image']:.1f} s/image", flush=True)
    if args.out:
        report = {"command": " ".join(["python", "scripts/eval_whole_images.py", *(argv or sys.argv[1:])]),
                  "model": args.model or "embedded default", "rows": rows, "images": per_image}
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
