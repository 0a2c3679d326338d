"""The README's picture of the default on real images (issue 21 point 3): a CT slice, a chest X-ray
(lung masks and right-lung boxes) and an endoscopy frame, each the model's mask or box filled in
colour beside the plain image, the ground truth outlined in white, with the question, the answer
and the Dice / IoU. Nothing is chosen by hand: each row holds the first N records of its question in
the split's file order whose image may be shown in this repository (``redistributable``), and the
picture's caption says so; docs/images/NOTICE.md gives the shown images' terms.

    python scripts/readme_real_picture.py --model DIR --suite REAL_SUITE --split test --n 3 \\
        --out docs/images/real_examples.png

REAL_SUITE is the folder `citrus-v data real-suite` wrote (docs/default_model.md, "Real data"). Its
`totalseg` source gives the CT row when present; without it the row is the bundled real CT slice
(citrus_v/assets/examples/ct_abdomen_liver.dcm) with the liver label of the same slice in the
TotalSegmentator reference series under tests/fixtures. Drawing reuses readme_picture.side_by_side
and citrus_v.data.visualize; scores use the evaluator's own metric functions.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from readme_picture import save_picture, side_by_side  # scripts/ is on sys.path when this file runs as a script

ROOT = Path(__file__).resolve().parents[1]
CT_SERIES = ROOT / "tests" / "fixtures" / "totalseg_example"
CT_SLICE = ROOT / "citrus_v" / "assets" / "examples" / "ct_abdomen_liver.dcm"
PANEL, GAP, TEXT_LINES, LINE_PX = 220, 6, 5, 15
WHITE = (255, 255, 255)


@dataclass(frozen=True)
class Row:
    """One row of the picture: the records of ``source`` with this task and question."""

    title: str
    source: str  # the real suite's folder
    task: str  # "segmentation" | "detection"
    prompt: str | None  # the question, without <image>; None: any question of the task
    modality: str | None = None  # keep only records of this modality, any case (records without one pass)


ROWS = (
    Row("CT slice", "totalseg", "segmentation", None, "CT"),
    Row("chest X-ray: lung masks", "covid-chestxray", "segmentation", "Please segment the lungs."),
    Row("chest X-ray: right-lung box", "covid-chestxray", "detection", "Please locate the right lung."),
    Row("endoscopy: polyp", "cvc-clinicdb", "segmentation", "Please segment the polyp."),
)


@dataclass
class Case:
    """One drawn record: the image (a path the predictor reads, or an (H, W, 3) uint8 array), the
    prompt as the evaluator sends it, and the truth to score the answer against."""

    name: str
    image: str | np.ndarray
    prompt: str
    truth_masks: list[np.ndarray] = field(default_factory=list)  # each (H, W) bool
    truth_boxes: list[list[float]] = field(default_factory=list)  # [x1, y1, x2, y2] pixels
    licence: str | None = None  # the image's own licence, when its source gives one per image


def question(prompt: str) -> str:
    return prompt.replace("<image>", " ").strip()


def redistributable(meta: dict) -> bool:
    """Whether a record's own image licence lets an overlay drawn on it go into this repository: records of
    a source with one licence for the whole set carry no ``license`` key and pass (the README names their
    terms); a per-image licence must be CC0 or a CC BY licence that allows derivatives (not ND). The COVID
    set's journal figures state none and stay out. The cell names each shown image's licence."""
    if "license" not in meta:
        return True
    name = (meta["license"] or "").upper()
    return name.startswith("CC0") or (name.startswith("CC BY") and "ND" not in name)


def first_records(path: Path, row: Row, n: int) -> list:
    """The first ``n`` records of ``path`` (file order) that ask ``row``'s question and whose image may be
    shown here (``redistributable``); [] without the file."""
    from citrus_v.data.schema import read_jsonl
    from citrus_v.eval.runner import prompt_of, task_of

    if not path.is_file():
        return []
    picked = []
    for rec in read_jsonl(path):
        if task_of(rec) != row.task or (row.prompt is not None and question(prompt_of(rec)) != row.prompt):
            continue
        if row.modality is not None and rec.modality is not None and rec.modality.lower() != row.modality.lower():
            continue  # converters spell it "CT" or "ct"
        if not redistributable(rec.meta):
            continue
        picked.append(rec)
        if len(picked) == n:
            break
    return picked


def case_of(rec, base_dir: Path) -> Case:  # noqa: ANN001 (a citrus_v Record)
    from citrus_v.data.schema import resolve
    from citrus_v.eval.runner import gt_boxes, load_mask, prompt_of

    image = resolve(rec.images[0], base_dir)
    return Case(image.name, str(image), prompt_of(rec), [load_mask(resolve(m, base_dir)) for m in rec.masks],
                gt_boxes(rec, base_dir) if rec.task == "detection" else [], rec.meta.get("license"))


def bundled_ct_case() -> Case:
    """The bundled real CT slice, with the liver label of the same slice (matched by its z position)
    from the reference series it was taken from; labels are TotalSegmentator's output."""
    import json

    import nibabel as nib
    import pydicom

    from citrus_v.data.medical_io import read_volume
    from citrus_v.volume.slicing import slice_view

    series = read_volume(CT_SERIES / "ct_dicom", modality="CT")
    z = float(pydicom.dcmread(CT_SLICE, stop_before_pixels=True).ImagePositionPatient[2])
    zs = [float((series.affine @ [0, 0, k, 1])[2]) for k in range(series.data.shape[2])]
    k = int(np.argmin(np.abs(np.asarray(zs) - z)))
    if abs(zs[k] - z) > 1e-3:
        raise SystemExit(f"readme_real_picture: {CT_SLICE.name} (z {z}) is not a slice of {CT_SERIES / 'ct_dicom'}")
    names = json.loads((CT_SERIES / "labels.json").read_text())
    ct_names = next(v for key, v in names.items() if key.startswith("ct"))
    liver = next(int(v) for v, name in ct_names.items() if name == "liver")
    labels = np.asarray(nib.load(CT_SERIES / "example_seg_dicom.nii.gz").dataobj)  # (x, y, z)
    truth = slice_view(series.affine, 2).to_image(labels[:, :, k] == liver)  # (H, W) as the image shows it
    return Case(CT_SLICE.name, str(CT_SLICE), "<image>Please segment the liver.", [truth])


def pick_cases(suite: Path, split: str, n: int) -> tuple[list[tuple[Row, list[Case]]], list[str]]:
    """Each row with its cases, and the caption's notes on where a row's records came from."""
    rows, notes = [], []
    for row in ROWS:
        records = first_records(suite / row.source / f"{split}.jsonl", row, n)
        cases = [case_of(rec, suite / row.source) for rec in records]
        if not cases and row.source == "totalseg":
            cases = [bundled_ct_case()]
            notes.append("CT: no totalseg source in the suite, so the bundled real CT slice "
                         f"({CT_SLICE.name}) with its TotalSegmentator liver label")
        elif not cases:
            notes.append(f"{row.title}: no such record in {row.source}/{split}.jsonl")
            continue
        rows.append((row, cases))
    return rows, notes


def caption(n: int, split: str, model: str, notes: list[str]) -> list[str]:
    """The lines above the grid: how the records were picked, what the colours mean."""
    return [
        f"Not chosen by hand: the first {n} of the {split} split, file order, for each row's question "
        f"(real suite of `citrus-v data real-suite`) whose image licence allows showing it here (a per-image "
        f"licence must be CC0 or CC BY without ND; named after the file name). Model: {model}.",
        "Colour: the model's mask / box (box tightened by its segmenter; IoU as written beside it). "
        "White outline: the ground truth (model-generated: the lung masks by lungVAE, the CT labels by "
        "TotalSegmentator).",
        *notes,
    ]


def scores(case: Case, pred) -> str:  # noqa: ANN001 (a Prediction)
    """Dice / IoU of each truth mask against the prediction's mask of the same index (an absent one
    is empty, as `citrus-v eval` scores it); IoU of the first box, returned and as written."""
    from citrus_v.eval.metrics.detection import box_iou
    from citrus_v.eval.metrics.segmentation import dice, iou

    parts = []
    for i, truth in enumerate(case.truth_masks):
        mask = pred.masks[i].mask if i < len(pred.masks) else np.zeros_like(truth)
        parts.append(f"Dice {dice(mask, truth):.2f}  IoU {iou(mask, truth):.2f}")
    if case.truth_boxes:
        if not pred.boxes:
            parts.append("no box written: IoU 0")
        else:
            box = pred.boxes[0]
            written = box.bbox if box.text_bbox is None else box.text_bbox
            parts.append(f"box IoU {box_iou(box.bbox, case.truth_boxes[0]):.2f} "
                         f"(as written {box_iou(written, case.truth_boxes[0]):.2f})")
    return "; ".join(parts)


# --- drawing -------------------------------------------------------------------------------------
def font(size: int = 12) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1: a scalable font
    except TypeError:  # pragma: no cover - older Pillow: the fixed bitmap font
        return ImageFont.load_default()


def text_block(lines: list[str], width: int, max_lines: int | None = None) -> Image.Image:
    """``lines`` wrapped to ``width`` px on white; cut to ``max_lines`` (the last one ending in "...")."""
    f = font()
    per_line = max(8, int(width / max(f.getlength("n"), 1.0)))
    wrapped = [w for line in lines for w in (textwrap.wrap(line, per_line) or [""])]
    if max_lines is not None and len(wrapped) > max_lines:
        wrapped = wrapped[:max_lines - 1] + [wrapped[max_lines - 1][:per_line - 3] + "..."]
    height = LINE_PX * (max_lines if max_lines is not None else len(wrapped)) + 4
    im = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(im)
    for i, line in enumerate(wrapped):
        draw.text((2, 2 + i * LINE_PX), line, fill=(0, 0, 0), font=f)
    return im


def stack(images: list[Image.Image], gap: int = GAP) -> Image.Image:
    """The images top to bottom on white, left-aligned, ``gap`` px apart."""
    height = sum(im.height for im in images) + gap * (len(images) - 1)
    canvas = Image.new("RGB", (max(im.width for im in images), height), "white")
    y = 0
    for im in images:
        canvas.paste(im, (0, y))
        y += im.height + gap
    return canvas


def cell(case: Case, image: np.ndarray, pred, score_line: str) -> Image.Image:  # noqa: ANN001 (a Prediction)
    """The plain image beside the model's mask / box (filled) with the truth outlined, and the text below."""
    from citrus_v.data.visualize import outline, overlay

    drawn = overlay(image, masks=[m.mask for m in pred.masks], boxes=[b.bbox for b in pred.boxes])
    width = max(2, round(2 * max(image.shape[:2]) / PANEL))  # about 2 px once scaled to the panel
    drawn = outline(drawn, masks=case.truth_masks, boxes=case.truth_boxes, width=width)
    pair = side_by_side([Image.fromarray(image), Image.fromarray(drawn)], PANEL, GAP)
    name = case.name if case.licence is None else f"{case.name} ({case.licence})"
    text = [name, f"Q: {question(case.prompt)}", f"A: {pred.answer}", score_line]
    return stack([pair, text_block(text, pair.width, TEXT_LINES)], gap=2)


def titled(title: str, row: Image.Image) -> Image.Image:
    return stack([text_block([title], max(row.width, 200)), row], gap=0)


# --- the command ---------------------------------------------------------------------------------
def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="model folder (default: the embedded default)")
    p.add_argument("--suite", type=Path, required=True, help="the folder `citrus-v data real-suite` wrote")
    p.add_argument("--split", choices=("val", "test"), required=True)
    p.add_argument("--n", type=int, default=3, help="records per row, the first in file order (default 3)")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "images" / "real_examples.png")
    args = p.parse_args(argv)
    if args.n < 1:
        p.error(f"--n must be >= 1, got {args.n}")
    if not args.suite.is_dir():
        p.error(f"--suite {args.suite} is not a folder (write it with `citrus-v data real-suite`)")
    return args


def main(argv: list[str] | None = None) -> int:
    from citrus_v.infer.predictor import Predictor

    args = parse(argv)
    rows, notes = pick_cases(args.suite, args.split, args.n)
    if not any(row.source != "totalseg" for row, _ in rows):
        raise SystemExit(f"readme_real_picture: no record of {', '.join(r.source for r in ROWS[1:])} "
                         f"in {args.suite} ({args.split} split)")
    predictor = Predictor.from_pretrained(args.model)
    pictures = []
    for row, cases in rows:
        cells = []
        for case in cases:
            pred = predictor.predict(case.image, case.prompt)
            line = scores(case, pred)
            print(f"{row.title} | {case.name} | {question(case.prompt)} -> {pred.answer!r} | {line}")
            cells.append(cell(case, predictor.load_images(case.image)[0], pred, line))
        pictures.append(titled(row.title, side_by_side(cells, cells[0].height, 3 * GAP)))
    width = max(im.width for im in pictures)
    model = "the embedded default" if args.model is None else Path(args.model).name
    return save_picture(stack([text_block(caption(args.n, args.split, model, notes), width), *pictures]), args.out)


if __name__ == "__main__":
    sys.exit(main())
