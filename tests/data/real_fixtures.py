"""Tiny synthetic copies of the real sources' layouts (issue 21), written by the tests into tmp folders.

Each builder returns the folder and the ground truth it drew, so a test can check the records against it.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image

RNG = np.random.default_rng(0)


def _rgb(h: int, w: int) -> np.ndarray:
    return RNG.integers(0, 120, (h, w, 3), dtype=np.uint8)


def _save(arr: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


COVID_ROWS = [  # patientid, filename, modality, view, license; the last one is absent from images/
    ("1", "p1a.png", "X-ray", "PA", "CC BY 4.0"),
    ("1", "p1b.png", "X-ray", "L", "CC BY 4.0"),
    ("2", "p2.png", "CT", "Axial", ""),
    ("3", "p3.png", "X-ray", "AP", "CC BY-NC-SA"),
    ("11", "p1a.png", "X-ray", "PA", "CC BY 4.0"),  # the same image again, under another id: 11 is patient 1
    ("11", "p9.png", "X-ray", "PA", ""),
    ("4", "big.png", "X-ray", "PA", ""),
]
LUNG_BOXES = {"p1a.png": {1: [2, 3, 10, 20], 2: [20, 4, 9, 18]}, "p3.png": {1: [None] * 4, 2: [18, 2, 10, 16]}}


def covid_set(root: Path, size: int = 32) -> Path:
    """metadata.csv + images/ + the COCO lung boxes + a lungVAE-style soft mask for p1a."""
    root.mkdir(parents=True)
    with (root / "metadata.csv").open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["patientid", "offset", "finding", "view", "modality", "folder", "filename", "license", "clinical_notes"])
        w.writerows([pid, "0", "COVID-19", view, mod, "images", name, lic, "a note"] for pid, name, mod, view, lic in COVID_ROWS)
        w.writerow(["5", "0", "COVID-19", "Axial", "CT", "volumes", "v.nii.gz", "", ""])
    for _, name, *_ in COVID_ROWS[:-1]:
        _save(_rgb(size, size), root / "images" / name)
    images = [{"id": i, "file_name": n, "width": size, "height": size} for i, n in enumerate(LUNG_BOXES)]
    anns = [{"id": 10 * i + c, "image_id": i, "category_id": c, "bbox": b}
            for i, n in enumerate(LUNG_BOXES) for c, b in LUNG_BOXES[n].items()]
    cats = [{"id": 1, "name": "Right Lung"}, {"id": 2, "name": "Left Lung"}]
    (root / "annotations" / "lungVAE-masks").mkdir(parents=True)
    (root / "annotations" / "imageannotation_ai_lung_bounding_boxes.json").write_text(
        json.dumps({"categories": cats, "images": images, "annotations": anns}))
    soft = np.zeros((size, size), np.uint8)
    soft[4:20, 2:12] = 200  # the lung
    soft[4:20, 12:14] = 100  # a soft edge below the threshold
    _save(soft, root / "annotations" / "lungVAE-masks" / "p1a_mask.png")
    _save(soft[:16], root / "annotations" / "lungVAE-masks" / "p1b_mask.png.png")  # wrong size: left out
    return root


def seg_pair(img: Path, mask: Path, boxes: list[tuple[int, int, int, int]], hw: tuple[int, int], mask_suffix: str = "") -> np.ndarray:
    """An image and its 0/255 mask with the given (y0, y1, x0, x1) rectangles as foreground."""
    fg = np.zeros(hw, bool)
    for y0, y1, x0, x1 in boxes:
        fg[y0:y1, x0:x1] = True
    _save(_rgb(*hw), img)
    _save(fg.astype(np.uint8) * 255, mask)
    return fg


def monuseg_set(root: Path) -> dict[str, np.ndarray]:
    """Train/Val/Test_Folder with 40x40 images: one per folder (.png, .png, .tif) and one image lacking a mask."""
    fgs = {}
    for folder, ext in (("Train_Folder", ".png"), ("Val_Folder", ".png"), ("Test_Folder", ".tif")):
        name = f"TCGA-{folder[:2]}"
        # nuclei in three of the four 20x20 tiles; the bottom-right tile is empty
        fgs[folder] = seg_pair(root / folder / "img" / f"{name}{ext}", root / folder / "labelcol" / f"{name}.png",
                               [(2, 6, 2, 6), (3, 8, 25, 30), (30, 34, 5, 9)], (40, 40))
    _save(_rgb(40, 40), root / "Train_Folder" / "img" / "orphan.png")
    return fgs


def drive_set(root: Path) -> dict[tuple[str, int], np.ndarray]:
    """training/ images 21 and 38 (val), test/ image 01, 30x28 with a 'vessel' crossing every tile."""
    fgs = {}
    for folder, number in (("training", 21), ("training", 38), ("test", 1)):
        vessels = [(0, 30, 6, 8), (0, 30, 20, 22)]  # two vertical lines: every tile of a 2x2 cut holds one
        img = root / folder / "images" / f"{number:02d}_{folder}.tif"
        fgs[folder, number] = seg_pair(img, root / folder / "1st_manual" / f"{number:02d}_manual1.gif", vessels, (30, 28))
    return fgs


BCCD_OBJECTS = {  # image id -> [(class, [x1, y1, x2, y2])]
    "BloodImage_00000": [("RBC", [1, 1, 9, 9]), ("WBC", [30, 20, 50, 40]), ("WBC", [5, 10, 20, 25]), ("Platelets", [40, 2, 44, 6])],
    "BloodImage_00001": [("RBC", [3, 3, 8, 8]), ("WBC", [10, 10, 30, 30]), ("Platelets", [7, 7, 7, 7])],
    "BloodImage_00002": [("RBC", [3, 3, 8, 8])],
}
BCCD_SPLITS = {"train": ["BloodImage_00000"], "val": ["BloodImage_00002"], "test": ["BloodImage_00001"]}


def _voc(name: str, objects: list[tuple[str, list[int]]]) -> str:
    objs = "".join(
        f"<object><name>{c}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for c, b in objects)
    return f"<annotation><filename>{name}.jpg</filename><size><width>64</width><height>48</height><depth>3</depth></size>{objs}</annotation>"


def bccd_set(root: Path) -> Path:
    """BCCD/ with Annotations, JPEGImages (64x48) and ImageSets/Main, in the repository's root folder."""
    bccd = root / "BCCD"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (bccd / sub).mkdir(parents=True)
    for name, objects in BCCD_OBJECTS.items():
        (bccd / "Annotations" / f"{name}.xml").write_text(_voc(name, objects))
        _save(_rgb(48, 64), bccd / "JPEGImages" / f"{name}.jpg")
    for split, names in BCCD_SPLITS.items():
        (bccd / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(names) + "\n")
    return root
