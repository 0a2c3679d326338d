"""Organ segmentation and VQA samples cut from the real TotalSegmentator example volumes.

Slices are split by contiguous z blocks with gaps between them, so no test slice
neighbours a train slice (3 mm slices look alike): [train_a | gap | test | gap | val | gap | train_b].
The blocks are ``citrus_v.data.sources.splits.slice_blocks``, which the real-data ``totalseg`` source
splits by too: the suite's train split never draws a slice that source holds out for val or test.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

VOLUMES = {  # name -> (image file, label file, labels.json key, modality)
    "ct": ("example_ct_sm.nii.gz", "example_seg.nii.gz", "ct (example_seg*.nii.gz)", "ct"),
    "mr": ("example_mr_sm.nii.gz", "example_seg_mr.nii.gz", "mr (example_seg_mr.nii.gz)", "mr"),
}
ORGANS = ("liver", "spleen", "kidney_right", "kidney_left", "stomach")
SEG_Q = "Please segment the {organ}."
VISIBLE_Q = "Is the {organ} visible in this slice?"
MIN_PIXELS_FRAC = 0.004  # at 224 px: 200 pixels; smaller organ cuts are neither asked nor segmented


def default_dir() -> Path:
    """``citrus_v/assets/totalseg_example``: the two small volumes shipped inside the package (see its README)."""
    return Path(__file__).resolve().parents[2] / "assets" / "totalseg_example"


def organ_text(name: str) -> str:
    """'kidney_right' -> 'right kidney'."""
    parts = name.split("_")
    return " ".join(parts[::-1]) if parts[-1] in ("left", "right") else " ".join(parts)


@dataclass
class Volume:
    image: np.ndarray  # (Z, H, W) float32 in 0..1, radiological view per slice
    labels: np.ndarray  # (Z, H, W) uint8
    names: dict[str, int]  # organ name -> label value
    modality: str


@lru_cache(maxsize=4)
def load(root: str, which: str) -> Volume:
    import nibabel as nib  # heavy import, only when real volumes are used

    img_file, seg_file, key, modality = VOLUMES[which]
    root_p = Path(root)
    for f in (img_file, seg_file, "labels.json"):
        if not (root_p / f).is_file():
            raise FileNotFoundError(f"totalseg: {root_p / f} is missing (needed for the '{which}' volume)")
    img = nib.as_closest_canonical(nib.load(root_p / img_file))
    seg = nib.as_closest_canonical(nib.load(root_p / seg_file))
    a = np.asarray(img.dataobj, dtype=np.float32)  # (X, Y, Z) in RAS
    s = np.asarray(seg.dataobj).astype(np.uint8)
    if a.shape != s.shape:
        raise ValueError(f"totalseg: {img_file} {a.shape} and {seg_file} {s.shape} differ in shape")
    a, s = axial_stack(window01(a, modality)), axial_stack(s)
    table = json.loads((root_p / "labels.json").read_text())[key]
    names = {v: int(k) for k, v in table.items() if v in ORGANS}
    return Volume(np.ascontiguousarray(a), np.ascontiguousarray(s), names, modality)


def slice_blocks(n_z: int) -> dict[str, list[int]]:
    """Slice indices per split: ``citrus_v.data.sources.splits.slice_blocks`` (imported on call: the
    sources package imports this module for the real-data converters)."""
    from citrus_v.data.sources.splits import slice_blocks as blocks

    return blocks(n_z)


def window01(a: np.ndarray, modality: str) -> np.ndarray:
    """Voxels -> 0..1: CT through the abdomen window L40 W400, MR between its 1st and 99.5th percentile."""
    if modality == "ct":
        lo, hi = 40 - 200, 40 + 200
    else:
        lo, hi = np.percentile(a, [1, 99.5])
    return np.clip((a - lo) / (hi - lo), 0, 1)


def axial_stack(a: np.ndarray) -> np.ndarray:
    """(X, Y, Z) RAS -> (Z, Y, X) flipped so anterior is up and the patient's right is on the image left."""
    return a.transpose(2, 1, 0)[:, ::-1, ::-1]


def _square(arr: np.ndarray, size: int, resample: int, jitter: tuple[float, float, float]) -> np.ndarray:
    """Pad to a square (aspect kept), zoom/shift by ``jitter`` (scale, dx, dy), resize to size."""
    h, w = arr.shape
    n = max(h, w)
    scale, dx, dy = jitter
    side = n / scale
    cx, cy = w / 2 + dx * n, h / 2 + dy * n
    box = (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)
    im = Image.fromarray(arr)
    return np.asarray(im.transform((size, size), Image.EXTENT, box, resample=resample, fillcolor=0))


def square_slice(arr: np.ndarray, size: int, resample: int) -> np.ndarray:
    """The slice as the suite shows it, without jitter: padded to a centred square, resized to ``size``."""
    return _square(arr, size, resample, (1.0, 0.0, 0.0))


@dataclass
class SliceSample:
    image: np.ndarray  # (S, S) uint8
    masks: dict[str, np.ndarray]  # organ text -> (S, S) bool
    question: str
    answer: str
    seg: list[str]
    modality: str
    meta: dict
    all_masks: dict[str, np.ndarray]  # every organ large enough to name on this slice


def sample(root: Path, which: str, split: str, task: str, k: int, rng: np.random.Generator, size: int) -> SliceSample:
    vol = load(str(root), which)
    z = int(rng.choice(slice_blocks(vol.image.shape[0])[split]))
    jitter = (rng.uniform(0.9, 1.1), rng.uniform(-0.04, 0.04), rng.uniform(-0.04, 0.04))
    img = _square((vol.image[z] * 255).astype(np.uint8), size, Image.BILINEAR, jitter)
    lab = _square(vol.labels[z], size, Image.NEAREST, jitter)
    min_px = MIN_PIXELS_FRAC * size * size
    masks, present, absent = {}, [], []
    for name, value in vol.names.items():
        m = lab == value
        if m.sum() >= min_px:
            masks[organ_text(name)] = m
            present.append(organ_text(name))
        elif not m.any():
            absent.append(organ_text(name))
    meta = {"source": "totalseg", "volume": which, "slice": z, "jitter": [round(float(x), 4) for x in jitter]}
    if task == "segmentation" or not absent:
        want_yes = True
    elif not present:
        want_yes = False
    else:
        want_yes = k % 2 == 0  # balanced yes/no over the k-th samples
    if task == "segmentation":
        if not present:
            raise ValueError(f"totalseg {which} slice {z}: no organ is large enough to segment")
        organ = present[int(rng.integers(len(present)))]
        return SliceSample(img, {organ: masks[organ]}, SEG_Q.format(organ=organ), "Sure, it is [SEG].",
                           [organ], vol.modality, meta, masks)
    pool = present if want_yes else absent
    organ = pool[int(rng.integers(len(pool)))]
    return SliceSample(img, {}, VISIBLE_Q.format(organ=organ), "yes" if want_yes else "no", [], vol.modality, meta,
                       masks)
