"""DRIVE retinal vessels (Staal et al., IEEE TMI 2004): 40 colour fundus photographs, 565x584.

The layout read is the DRIVE release's own: ``training/`` (images 21-40) and ``test/`` (images 1-20),
each with ``images/<NN>_<training|test>.tif`` and ``1st_manual/<NN>_manual1.gif`` (the first
observer's vessel masks; test/ holds them too). The field-of-view masks (``mask/``) are not used.
Each image is cut into ``grid x grid`` tiles (default 2), one record per tile:
"Please segment the retinal vessels." -> "Sure, it is [SEG].".

Split (``splits.RULES``): test/ is the official test set; training images 37-40 are val.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from citrus_v.data.schema import Record
from citrus_v.data.sources.common import SourceError
from citrus_v.data.sources.masks import read_rgb_and_mask, tiled_seg_records

QUESTION = "Please segment the retinal vessels."
VAL_IDS = range(37, 41)
_NAME = re.compile(r"(\d+)_(training|test)\.(tif|tiff|png|jpg)", re.IGNORECASE)


def _split(folder: str, number: int) -> str:
    if folder == "test":
        return "test"
    return "val" if number in VAL_IDS else "train"


def _images(src: Path, folder: str, skipped: Counter[str] | None) -> list[tuple[int, Path, Path]]:
    """(number, image, manual mask) of ``src/folder``; images without a manual mask are counted."""
    out = []
    for p in sorted((src / folder / "images").iterdir()):
        m = _NAME.fullmatch(p.name)
        if not m:
            continue
        mask = src / folder / "1st_manual" / f"{m.group(1)}_manual1.gif"
        if mask.is_file():
            out.append((int(m.group(1)), p, mask))
        elif skipped is not None:
            skipped["image without a 1st_manual mask"] += 1
    return out


def load_drive(src: str | Path, *, image_dir: str | Path, grid: int = 2, skipped: Counter[str] | None = None) -> list[Record]:
    """Records of the DRIVE folder ``src`` (training/ then test/), tiles written as PNG under ``image_dir``."""
    src = Path(src)
    folders = [f for f in ("training", "test") if (src / f / "images").is_dir()]
    if not folders:
        raise SourceError(src, "expected training/ and test/, each with images/ and 1st_manual/")
    records = []
    for folder in folders:
        for number, img, mask in _images(src, folder, skipped):
            rgb, fg = read_rgb_and_mask(img, mask)
            meta = {"source": "drive", "image": number, "split": _split(folder, number)}
            records += tiled_seg_records(rgb, fg, stem=f"drive_{folder}_{number:02d}", question=QUESTION, modality="fundus",
                                         meta=meta, image_dir=Path(image_dir), grid=grid, skipped=skipped)
    return records


def whole_images(src: str | Path, split: str) -> list[tuple[str, Path, Path]]:
    """(name, image, manual mask) of every DRIVE image in ``split`` (train, val or test), untiled."""
    folder = "test" if split == "test" else "training"
    return [(f"drive_{folder}_{n:02d}", img, mask) for n, img, mask in _images(Path(src), folder, None)
            if _split(folder, n) == split]
