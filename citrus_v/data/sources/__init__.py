"""Loaders for the public formats users bring, and the converter to our JSON-lines format.

Each loader is ``load_<name>(src, ...) -> list[Record]`` with absolute image/mask paths (or
files written under ``image_dir`` for sets that embed images). ``convert`` writes a
self-contained folder: ``DIR/data.jsonl`` + ``DIR/images/`` with paths relative to ``DIR``.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from citrus_v.data.schema import Record, write_jsonl
from citrus_v.data.sources.bccd import load_bccd
from citrus_v.data.sources.common import SourceError
from citrus_v.data.sources.covid_cxr import load_covid_chestxray
from citrus_v.data.sources.cvc_clinicdb import load_cvc_clinicdb
from citrus_v.data.sources.dcmqi import load_dcmqi
from citrus_v.data.sources.drive import load_drive
from citrus_v.data.sources.monuseg import load_monuseg
from citrus_v.data.sources.reports import load_meddocbench, load_medxray_cot
from citrus_v.data.sources.seg import load_mecovqa_g, load_medsegbench
from citrus_v.data.sources.totalseg import load_totalseg
from citrus_v.data.sources.vqa import load_pathvqa, load_pmc_vqa, load_slake, load_vqa_rad

# name -> (loader, whether it needs an image_dir for embedded images)
FORMATS: dict[str, tuple[Callable[..., list[Record]], bool]] = {
    "vqa-rad": (load_vqa_rad, False),
    "slake": (load_slake, False),
    "pathvqa": (load_pathvqa, True),
    "pmc-vqa": (load_pmc_vqa, False),
    "mecovqa-g": (load_mecovqa_g, False),
    "mecovqa-g-plus": (load_mecovqa_g, False),  # same layout as MeCoVQA-G
    "medsegbench": (load_medsegbench, True),
    "cvc-clinicdb": (load_cvc_clinicdb, True),  # a folder: images/ + masks/
    "covid-chestxray": (load_covid_chestxray, True),  # the repository's root folder
    "monuseg": (load_monuseg, True),  # a folder: Train_Folder/ Val_Folder/ Test_Folder/
    "drive": (load_drive, True),  # a folder: training/ + test/
    "bccd": (load_bccd, False),  # a folder: Annotations/ JPEGImages/ ImageSets/
    "totalseg": (load_totalseg, True),  # TotalSegmentator's tests/reference_files/: NIfTI volumes + a DICOM series
    "dcmqi": (load_dcmqi, True),  # dcmqi's data/segmentations/: a CT series + its DICOM SEG
    "medxray-cot": (load_medxray_cot, False),
    "meddocbench": (load_meddocbench, True),
}

__all__ = ["FORMATS", "SourceError", "convert", "load", "place_files"] + [f.__name__ for f, _ in FORMATS.values()]


def load(name: str, src: str | Path, *, image_dir: str | Path | None = None, **kwargs: Any) -> list[Record]:
    """Load ``src`` with the loader for format ``name`` (see ``FORMATS``)."""
    if name not in FORMATS:
        raise ValueError(f"unknown format {name!r}; known: {sorted(FORMATS)}")
    fn, embeds = FORMATS[name]
    if not Path(src).exists():
        raise SourceError(src, "no such file")
    if embeds:
        kwargs["image_dir"] = image_dir
    return fn(src, **kwargs)


def convert(name: str, src: str | Path, out_dir: str | Path, **kwargs: Any) -> tuple[Path, list[Record]]:
    """Convert a public-format file to ``out_dir/data.jsonl`` with images copied to ``out_dir/images``.

    Returns the JSONL path and the records as written (paths relative to ``out_dir``).
    """
    out_dir = Path(out_dir)
    image_dir = out_dir / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    records = load(name, src, image_dir=image_dir, **kwargs)
    written = place_files(records, out_dir)
    jsonl = out_dir / "data.jsonl"
    write_jsonl(written, jsonl)
    return jsonl, written


def place_files(records: list[Record], out_dir: Path) -> list[Record]:
    """The records with their files under ``out_dir/images`` (copied there unless a loader wrote them
    there) and their paths made relative to ``out_dir``."""
    image_dir = out_dir / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    copied: dict[str, str] = {}

    def place(p: str) -> str:
        path = Path(p).resolve()
        if image_dir.resolve() in path.parents:  # written there by the loader
            return path.relative_to(out_dir.resolve()).as_posix()
        if str(path) not in copied:
            # the same basename recurs across folders (SLAKE: xmlab102/source.jpg), so prefix a hash
            tag = hashlib.sha1(str(path).encode()).hexdigest()[:8]
            dest = image_dir / f"{tag}_{path.name}"
            shutil.copyfile(path, dest)
            copied[str(path)] = dest.relative_to(out_dir).as_posix()
        return copied[str(path)]

    return [replace(r, images=[place(p) for p in r.images], masks=[place(p) for p in r.masks]) for r in records]
