"""COVID-19 image data collection (Cohen et al. 2020), as forked by s-mostafa-a/covid-chestxray-dataset.

The layout read is the repository's root: ``metadata.csv`` (one row per image: patientid, modality,
view, finding, license, ...), ``images/``, ``annotations/imageannotation_ai_lung_bounding_boxes.json``
(COCO, ``[x, y, w, h]``; categories "Right Lung" / "Left Lung", the patient's sides) and
``annotations/lungVAE-masks/<image stem>_mask.png``. Per image it gives:

- a modality question ("What imaging modality is this?" -> "X-ray" / "CT"), and for X-rays a closed
  "Is this a lateral view?" (view L vs PA/AP): both are visible in the image;
- "Please locate the right lung." / "... left lung." (detection) where the COCO file boxes it and the
  box file's image size matches the image;
- "Please segment the lungs." (segmentation, X-rays only) where a lungVAE mask exists. These masks are
  MODEL-GENERATED (lungVAE, Selvan et al. 2020, arXiv:2005.10052), not drawn by a reader: the records
  say so in ``meta["mask_origin"]``, and a Dice against them measures agreement with that model.

The metadata's "finding" (COVID-19, SARS, Pneumocystis, ...) and clinical notes are NOT turned into
questions: the finding is a diagnosis made with tests and history that the image alone does not show,
and the notes describe the patient, not the picture. Both stay in ``meta``.
Images listed in metadata.csv but absent (the snapshot leaves out files >= 4 MiB; ``volumes/`` holds
only a download note) are counted in ``skipped``, and so is a second row for the same image. The split is by
patient (``splits.RULES``); patient ids that list the same image are one patient (``patient_groups``).
"""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from citrus_v.data.schema import Objects, Record
from citrus_v.data.sources.common import SourceError, make_record, read_json, save_array_png
from citrus_v.data.sources.splits import hash_split

BOXES_FILE = Path("annotations/imageannotation_ai_lung_bounding_boxes.json")
MASK_DIR = Path("annotations/lungVAE-masks")
MASK_ORIGIN = "model-generated (lungVAE, Selvan et al. 2020), not a manual reference"
MODALITY_Q = "What imaging modality is this?"
LATERAL_Q = "Is this a lateral view?"
SIDES = {"Right Lung": "right lung", "Left Lung": "left lung"}
_MODALITIES = {"X-ray": "X-ray", "CT": "CT"}


def patient_split(patientid: str) -> str:
    return hash_split(f"covid-chestxray:{patientid}", val=0.1, test=0.2)


def patient_groups(rows: list[dict[str, str]]) -> dict[str, str]:
    """patientid -> the first id of its group in string order: ids that list the same image file are one person
    (the metadata has a few such rows, e.g. 285 and 339), so their images share a split."""
    parent: dict[str, str] = {}

    def root(p: str) -> str:
        while parent.setdefault(p, p) != p:
            p = parent[p]
        return p

    first: dict[str, str] = {}
    for row in rows:
        pid = row["patientid"]
        other = first.setdefault(row["filename"], pid)
        a, b = sorted((root(pid), root(other)))
        parent[b] = a
    return {pid: root(pid) for pid in parent}


def _metadata(src: Path) -> list[dict[str, str]]:
    path = src / "metadata.csv"
    if not path.is_file():
        raise SourceError(src, "expected metadata.csv, images/ and annotations/ (the covid-chestxray-dataset layout)")
    with path.open(encoding="utf-8", errors="replace", newline="") as fh:  # a few notes hold Latin-1 bytes
        rows = list(csv.DictReader(fh))
    for i, row in enumerate(rows):
        for key in ("patientid", "filename", "modality", "folder"):
            if key not in row:
                raise SourceError(path, "missing column", row=i + 2, field=key)
    return rows


def _lung_boxes(src: Path, skipped: Counter[str]) -> dict[str, tuple[tuple[int, int], dict[str, list[float]]]]:
    """file name -> ((width, height), side -> [x1, y1, x2, y2]) from the COCO file (absent: {})."""
    path = src / BOXES_FILE
    if not path.is_file():
        return {}
    coco = read_json(path)
    try:
        cats = {c["id"]: SIDES[c["name"]] for c in coco["categories"] if c["name"] in SIDES}
        images = {im["id"]: im for im in coco["images"]}
        out: dict[str, Any] = {}
        for ann in coco["annotations"]:
            im = images[ann["image_id"]]
            if any(v is None for v in ann["bbox"]):
                skipped["lung box without coordinates in the COCO file"] += 1
                continue
            x, y, w, h = (float(v) for v in ann["bbox"])
            entry = out.setdefault(im["file_name"], ((int(im["width"]), int(im["height"])), {}))
            entry[1][cats[ann["category_id"]]] = [x, y, x + w, y + h]
    except (KeyError, TypeError, ValueError) as err:
        raise SourceError(path, f"not the expected COCO lung-box file ({err!r})") from None
    return out


def _mask_files(src: Path) -> dict[str, Path]:
    """Image stem -> lungVAE mask (names end in _mask.png, a few in _mask.png.png)."""
    folder = src / MASK_DIR
    out = {}
    for p in sorted(folder.glob("*_mask.png*")) if folder.is_dir() else []:
        out[p.name.split("_mask.png")[0]] = p
    return out


def _image_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size
    except OSError as err:
        raise SourceError(path, f"unreadable image ({err})") from None


def _vqa_records(row: dict[str, str], image: str, meta: dict[str, Any], path: Path, i: int) -> list[Record]:
    modality = _MODALITIES[row["modality"]]
    out = [make_record(MODALITY_Q, modality, images=[image], task="vqa_open", modality=modality, meta=meta, path=path, row=i)]
    if modality == "X-ray" and row.get("view", "").strip():
        answer = "yes" if row["view"].strip() == "L" else "no"
        out.append(make_record(LATERAL_Q, answer, images=[image], task="vqa_closed", modality=modality, meta=meta, path=path, row=i))
    return out


def _box_records(boxes: dict[str, list[float]], image: str, meta: dict[str, Any], modality: str, path: Path, i: int) -> list[Record]:
    return [
        make_record(f"Please locate the {side}.", "<boxes>", images=[image], task="detection", modality=modality,
                    meta={**meta, "side": side}, path=path, row=i, objects=Objects([side], [box]))
        for side, box in sorted(boxes.items(), reverse=True)  # right lung first
    ]


def _mask_record(
    mask_path: Path, size: tuple[int, int], image: str, meta: dict[str, Any], image_dir: Path, path: Path, i: int
) -> Record | None:
    """The lungs' segmentation record, its mask thresholded at 128; None when the mask's size is not the image's."""
    from PIL import Image

    with Image.open(mask_path) as im:
        grey = np.asarray(im.convert("L"))  # (H, W)
    if grey.shape[::-1] != size:
        return None
    out = save_array_png((grey >= 128).astype(np.uint8) * 255, image_dir / f"covid_{Path(image).stem}_lungs.png")
    return make_record("Please segment the lungs.", "Sure, it is [SEG].", images=[image], masks=[str(out)], task="segmentation",
                       modality="X-ray", meta={**meta, "mask_origin": MASK_ORIGIN}, path=path, row=i)


@dataclass(frozen=True)
class _Annotations:
    """What the set holds beside metadata.csv, read once."""

    boxes: dict[str, tuple[tuple[int, int], dict[str, list[float]]]]  # file name -> ((w, h), side -> box)
    masks: dict[str, Path]  # image stem -> lungVAE mask
    groups: dict[str, str]  # patientid -> patient group (patient_groups)
    image_dir: Path  # where thresholded masks are written


def _row_records(src: Path, row: dict[str, str], i: int, ctx: _Annotations, skipped: Counter[str]) -> list[Record]:
    image_path = src / "images" / row["filename"]
    path = src / "metadata.csv"
    if row["folder"] != "images":
        skipped[f"a {row['folder']}/ entry of metadata.csv (not in the repository)"] += 1
        return []
    if not image_path.is_file():
        skipped["image in metadata.csv absent (the snapshot leaves out files >= 4 MiB)"] += 1
        return []
    if row["modality"] not in _MODALITIES:
        skipped[f"modality {row['modality']!r}"] += 1
        return []
    image, size = str(image_path.resolve()), _image_size(image_path)
    meta = {"source": "covid-chestxray", "patientid": row["patientid"], "image": row["filename"],
            "split": patient_split(ctx.groups[row["patientid"]]), "view": row.get("view"), "finding": row.get("finding"),
            "license": (row.get("license") or "").strip() or None}
    records = _vqa_records(row, image, meta, path, i)
    if row["filename"] in ctx.boxes:
        box_size, boxes = ctx.boxes[row["filename"]]
        if box_size == size:
            records += _box_records(boxes, image, meta, _MODALITIES[row["modality"]], path, i)
        else:
            skipped["lung boxes drawn on another size of the image"] += 1
    mask = ctx.masks.get(image_path.stem)
    if mask is not None and row["modality"] == "X-ray":
        rec = _mask_record(mask, size, image, meta, ctx.image_dir, path, i)
        if rec is None:
            skipped["lung mask of another size than its image"] += 1
        records += [rec] if rec else []
    return records


def load_covid_chestxray(src: str | Path, *, image_dir: str | Path, skipped: Counter[str] | None = None) -> list[Record]:
    """Records of the covid-chestxray-dataset folder ``src``, in metadata.csv order; thresholded lung
    masks are written under ``image_dir`` (the images themselves are referenced where they lie)."""
    src = Path(src)
    skipped = Counter() if skipped is None else skipped
    rows = _metadata(src)
    ctx = _Annotations(_lung_boxes(src, skipped), _mask_files(src), patient_groups(rows), Path(image_dir))
    records, seen = [], set()
    for i, row in enumerate(rows):
        if row["filename"] in seen:
            skipped["a second metadata.csv row for an image (under another patient id)"] += 1
            continue
        seen.add(row["filename"])
        records += _row_records(src, row, i + 2, ctx, skipped)  # i + 2: the csv line, after its header
    return records
