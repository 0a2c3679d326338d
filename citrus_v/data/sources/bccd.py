"""BCCD blood-cell boxes (Shenggan/BCCD_Dataset, MIT): 364 smear photographs, 640x480, Pascal VOC.

The layout read is the repository's ``BCCD/`` folder: ``JPEGImages/<id>.jpg``, ``Annotations/<id>.xml``
(VOC ``<object><name>WBC|RBC|Platelets</name><bndbox>...``) and ``ImageSets/Main/{train,val,test}.txt``,
the set's own split. Each image gives one detection record per class in ``classes`` that it holds:
"Please locate the white blood cell." -> ``<boxes>`` with every box of that class, in reading order
(top to bottom, then left to right). RBCs are left out by default (one image holds up to dozens, which
would dominate the box answers); pass ``classes=("WBC", "RBC", "Platelets")`` to keep them.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

from citrus_v.data.schema import IMAGE_PLACEHOLDER, Message, Objects, Record
from citrus_v.data.sources.common import SourceError

NAMES = {"WBC": "white blood cell", "RBC": "red blood cell", "Platelets": "platelets"}
BOXES = "<boxes>"


def _voc_boxes(xml: Path) -> tuple[tuple[int, int], dict[str, list[list[float]]]]:
    """((width, height), class -> [[x1, y1, x2, y2], ...]) of one VOC annotation file."""
    try:
        root = ET.parse(xml).getroot()
        size = (int(root.findtext("size/width")), int(root.findtext("size/height")))
        boxes: dict[str, list[list[float]]] = {}
        for obj in root.iter("object"):
            b = obj.find("bndbox")
            box = [float(b.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")]
            boxes.setdefault(obj.findtext("name", "").strip(), []).append(box)
    except (ET.ParseError, TypeError, ValueError, AttributeError) as err:
        raise SourceError(xml, f"not a Pascal VOC annotation ({err})") from None
    return size, boxes


def _split_of(src: Path) -> dict[str, str]:
    """Image id -> split, from ImageSets/Main/{train,val,test}.txt."""
    out = {}
    for split in ("train", "val", "test"):
        path = src / "ImageSets" / "Main" / f"{split}.txt"
        if not path.is_file():
            raise SourceError(path, "missing: BCCD's own split lists are required")
        out.update({line.strip(): split for line in path.read_text(encoding="utf-8").splitlines() if line.strip()})
    return out


def _valid(box: list[float], size: tuple[int, int]) -> bool:
    x1, y1, x2, y2 = box
    return 0 <= x1 < x2 <= size[0] and 0 <= y1 < y2 <= size[1]


def _image_records(image: Path, size, boxes, meta, classes, skipped: Counter[str]) -> list[Record]:
    records = []
    for cls in classes:
        kept = [b for b in boxes.get(cls, []) if _valid(b, size)]
        if len(kept) < len(boxes.get(cls, [])):
            skipped["box outside its image or empty"] += len(boxes[cls]) - len(kept)
        if not kept:
            continue
        kept.sort(key=lambda b: (b[1], b[0]))
        records.append(Record(
            messages=[Message("user", f"{IMAGE_PLACEHOLDER}Please locate the {NAMES[cls]}."), Message("assistant", BOXES)],
            images=[str(image.resolve())],
            objects=Objects([NAMES[cls]] * len(kept), kept),
            task="detection",
            modality="pathology",
            meta={**meta, "class": cls},
        ))
    return records


def load_bccd(src: str | Path, *, classes: tuple[str, ...] = ("WBC", "Platelets"), skipped: Counter[str] | None = None) -> list[Record]:
    """Detection records of the BCCD folder ``src`` (the one holding Annotations/, JPEGImages/, ImageSets/)."""
    src = Path(src)
    if (src / "BCCD" / "Annotations").is_dir():  # the repository's root was given
        src = src / "BCCD"
    if not (src / "Annotations").is_dir():
        raise SourceError(src, "expected Annotations/, JPEGImages/ and ImageSets/Main/ (BCCD's VOC layout)")
    unknown = [c for c in classes if c not in NAMES]
    if unknown:
        raise SourceError(src, f"unknown classes {unknown}; BCCD has {sorted(NAMES)}")
    skipped = Counter() if skipped is None else skipped
    split_of = _split_of(src)
    records = []
    for xml in sorted((src / "Annotations").glob("*.xml")):
        image = src / "JPEGImages" / f"{xml.stem}.jpg"
        if xml.stem not in split_of:
            skipped["image in no ImageSets list"] += 1
            continue
        if not image.is_file():
            skipped["annotation without its image"] += 1
            continue
        size, boxes = _voc_boxes(xml)
        meta = {"source": "bccd", "image": xml.stem, "split": split_of[xml.stem]}
        records += _image_records(image, size, boxes, meta, classes, skipped)
    return records
