"""CVC-ClinicDB colonoscopy frames with polyp masks (Bernal et al., Hospital Clinic / CVC Barcelona).

The folder layout read here is ``images/<frame>.<ext>`` and ``masks/<frame>.<ext>`` with the same
frame numbers (1..612; the original release ships ``Original/`` and ``Ground Truth/`` TIFFs, which
are accepted too). Each frame becomes one segmentation record, "Please segment the polyp." ->
"Sure, it is [SEG].", like the default model's own segmentation records, and one detection record,
"Please locate the polyp." -> "<boxes>", whose boxes are those of the mask's connected components
(top to bottom; specks under ``MIN_BOX_AREA`` pixels left out), as issue 21 scores the written box.
Masks are thresholded at half their range and written as binary PNGs, because re-saved copies are
often JPEGs whose edges carry compression noise.

Frames of one video sequence are near duplicates, so any split must keep a sequence on one side:
``meta.sequence`` carries it (the frame -> sequence table of the set's README), and ``meta.split``
the split fixed for issue 21 (``SPLIT_FRAMES``: contiguous blocks of whole sequences).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from citrus_v.data.placeholders import BOXES_PLACEHOLDER
from citrus_v.data.schema import IMAGE_PLACEHOLDER, Message, Objects, Record
from citrus_v.data.sources.common import SourceError, save_array_png
from citrus_v.data.sources.masks import segmentation_record

QUESTION = "Please segment the polyp."
LOCATE = "Please locate the polyp."
MIN_BOX_AREA = 16  # pixels: a component smaller than this is compression dust, not a polyp
_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
_FOLDERS = (("images", "masks"), ("Original", "Ground Truth"))

# first frame of each of the 29 sequences (README of CVC-ClinicDB); the last frame is 612
SEQUENCE_STARTS = (1, 26, 51, 68, 79, 104, 127, 152, 178, 200, 206, 228, 253, 278, 298, 318, 343, 364, 384, 409,
                   429, 448, 467, 479, 504, 529, 547, 572, 592)
LAST_FRAME = 612
# the split (issue 21; the polyp fine-tune benchmark's blocks): whole sequences 1-19 / 20-23 / 24-29
SPLIT_FRAMES = {"train": (1, 408), "val": (409, 478), "test": (479, 612)}


def sequence_of(frame: int) -> int:
    """The 1-based video sequence a frame number belongs to."""
    if not 1 <= frame <= LAST_FRAME:
        raise ValueError(f"frame {frame} is outside CVC-ClinicDB's 1..{LAST_FRAME}")
    return sum(1 for start in SEQUENCE_STARTS if start <= frame)


def split_of(frame: int) -> str:
    """'train', 'val' or 'test': the block of ``SPLIT_FRAMES`` the frame lies in."""
    return next(split for split, (lo, hi) in SPLIT_FRAMES.items() if lo <= frame <= hi)


def _frames(folder: Path) -> dict[int, Path]:
    """Frame number -> file, for the image files named ``<number>.<ext>`` in ``folder``."""
    out = {}
    for p in folder.iterdir():
        if p.suffix.lower() in _EXTENSIONS and re.fullmatch(r"\d+", p.stem):
            out[int(p.stem)] = p
    return out


def _folders(src: Path) -> tuple[Path, Path]:
    for images, masks in _FOLDERS:
        if (src / images).is_dir() and (src / masks).is_dir():
            return src / images, src / masks
    raise SourceError(src, "expected the folders images/ and masks/ (or Original/ and Ground Truth/)")


def mask_boxes(mask: np.ndarray) -> list[list[float]]:
    """``[x1, y1, x2, y2]`` (pixel edges) of each connected component of a (H, W) bool mask of at
    least ``MIN_BOX_AREA`` pixels, top to bottom then left to right."""
    from scipy import ndimage

    labels, n = ndimage.label(mask)
    boxes = []
    for k, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is not None and int((labels[sl] == k).sum()) >= MIN_BOX_AREA:
            boxes.append([float(sl[1].start), float(sl[0].start), float(sl[1].stop), float(sl[0].stop)])
    return sorted(boxes, key=lambda b: (b[1], b[0]))


def _locate_record(img_path: Path, mask: np.ndarray, meta: dict) -> Record | None:
    boxes = mask_boxes(mask)
    if not boxes:
        return None
    return Record(messages=[Message("user", f"{IMAGE_PLACEHOLDER}{LOCATE}"), Message("assistant", BOXES_PLACEHOLDER)],
                  images=[str(img_path)], objects=Objects(["polyp"] * len(boxes), boxes), task="detection",
                  modality="endoscopy", meta=meta)


def load_cvc_clinicdb(src: str | Path, *, image_dir: str | Path, frames: set[int] | None = None,
                      locate: bool = True) -> list[Record]:
    """Records of each frame of the CVC-ClinicDB folder ``src`` (only ``frames`` if given), in frame
    order: the segmentation record, then (``locate``) the detection record; images and binary
    masks are written as PNG under ``image_dir``."""
    from PIL import Image

    src = Path(src)
    image_folder, mask_folder = _folders(src)
    images, masks = _frames(image_folder), _frames(mask_folder)
    if not images:
        raise SourceError(image_folder, "no frames named <number>.png/.jpg/.tif")
    missing = sorted(set(images) - set(masks))
    if missing:
        raise SourceError(mask_folder, f"no mask for frame(s) {missing[:5]}")
    image_dir = Path(image_dir)
    records = []
    for frame in sorted(images if frames is None else set(images) & set(frames)):
        try:
            sequence = sequence_of(frame)
            with Image.open(images[frame]) as im:
                rgb = np.asarray(im.convert("RGB"))  # (H, W, 3)
            with Image.open(masks[frame]) as im:
                grey = np.asarray(im.convert("L"))  # (H, W)
        except ValueError as err:
            raise SourceError(images[frame], str(err)) from None
        except OSError as err:
            raise SourceError(images[frame], f"unreadable image ({err})") from None
        if grey.shape != rgb.shape[:2]:
            raise SourceError(masks[frame], f"mask is {grey.shape[::-1]} but its frame is {rgb.shape[1::-1]} (width, height)")
        mask = (grey >= 128).astype(np.uint8) * 255
        img_path = save_array_png(rgb, image_dir / f"cvc_{frame:03d}.png")
        mask_path = save_array_png(mask, image_dir / f"cvc_{frame:03d}_polyp.png")
        meta = {"source": "cvc-clinicdb", "frame": frame, "sequence": sequence, "split": split_of(frame)}
        records.append(segmentation_record(img_path, mask_path, QUESTION, "endoscopy", meta))
        located = _locate_record(img_path, mask > 0, dict(meta)) if locate else None
        records += [located] if located is not None else []
    return records
