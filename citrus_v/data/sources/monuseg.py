"""MoNuSeg nuclei (Kumar et al., MICCAI 2018 challenge): H&E tissue tiles with binary nucleus masks.

The layout read is UCTransNet's ``datasets/MoNuSeg/``: ``Train_Folder/``, ``Val_Folder/`` and
``Test_Folder/``, each with ``img/<name>.<png|tif>`` and ``labelcol/<name>.png`` (the masks, 0/255).
Test_Folder holds the challenge's 14 official test images; the 30 training images are split 24/6 by
that repository. Each 1000x1000 image is cut into ``grid x grid`` tiles (default 4: 250 px), one
record per tile: "Please segment the cell nuclei." -> "Sure, it is [SEG].".
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from citrus_v.data.schema import Record
from citrus_v.data.sources.common import SourceError
from citrus_v.data.sources.masks import read_rgb_and_mask, tiled_seg_records

QUESTION = "Please segment the cell nuclei."
FOLDERS = {"train": "Train_Folder", "val": "Val_Folder", "test": "Test_Folder"}
_EXTENSIONS = (".png", ".tif", ".tiff", ".jpg", ".bmp")


def _pairs(folder: Path, skipped: Counter[str] | None) -> list[tuple[Path, Path]]:
    """(image, mask) pairs of one split folder, by name; an image without a mask is counted and left out."""
    images = sorted(p for p in (folder / "img").iterdir() if p.suffix.lower() in _EXTENSIONS)
    pairs = []
    for img in images:
        mask = folder / "labelcol" / f"{img.stem}.png"
        if mask.is_file():
            pairs.append((img, mask))
        elif skipped is not None:
            skipped["image without a mask"] += 1
    return pairs


def load_monuseg(src: str | Path, *, image_dir: str | Path, grid: int = 4, skipped: Counter[str] | None = None) -> list[Record]:
    """Records of the MoNuSeg folder ``src`` in split order, tiles written as PNG under ``image_dir``."""
    src = Path(src)
    present = {split: src / name for split, name in FOLDERS.items() if (src / name / "img").is_dir()}
    if not present:
        raise SourceError(src, "expected Train_Folder/, Val_Folder/ and Test_Folder/, each with img/ and labelcol/")
    records = []
    for split, folder in present.items():
        for img, mask in _pairs(folder, skipped):
            rgb, fg = read_rgb_and_mask(img, mask)
            meta = {"source": "monuseg", "image": img.stem, "split": split}
            records += tiled_seg_records(rgb, fg, stem=f"monuseg_{img.stem}", question=QUESTION, modality="pathology",
                                         meta=meta, image_dir=Path(image_dir), grid=grid, skipped=skipped)
    return records


def whole_images(src: str | Path, split: str) -> list[tuple[str, Path, Path]]:
    """(name, image, mask) of every MoNuSeg image in ``split`` (train, val or test), untiled."""
    return [(f"monuseg_{img.stem}", img, mask) for img, mask in _pairs(Path(src) / FOLDERS[split], None)]
