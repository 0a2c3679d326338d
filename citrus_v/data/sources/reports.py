"""Reasoning/report and document sets: MedXray-CoT and MedDocBench."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from citrus_v.data.schema import Objects, Record
from citrus_v.data.sources.common import (
    SourceError,
    image_bytes,
    local_image,
    make_record,
    need,
    norm_modality,
    read_json_list,
    read_table,
    save_image_bytes,
)

DEFAULT_REPORT_PROMPT = "Write the radiology report for this chest X-ray, with Findings and Impression."


def _boxes(row: dict[str, Any], src: Path, i: int) -> Objects | None:
    """``boxes``/``bboxes``/``objects``: [{bbox|bbox_2d: [x1,y1,x2,y2], label|ref}] or {ref, bbox}."""
    raw = next((row[k] for k in ("boxes", "bboxes", "objects") if row.get(k) is not None), None)
    if raw is None:
        return None
    if isinstance(raw, dict):
        return Objects(list(raw.get("ref", [])), [list(b) for b in raw.get("bbox", [])])
    refs, boxes = [], []
    for j, b in enumerate(raw):
        if not isinstance(b, dict):
            raise SourceError(src, "each box must be {bbox: [x1,y1,x2,y2], label}", row=i, field=f"boxes[{j}]")
        box = b.get("bbox", b.get("bbox_2d"))
        if not isinstance(box, list) or len(box) != 4:
            raise SourceError(src, f"box must be 4 numbers, got {box!r}", row=i, field=f"boxes[{j}].bbox")
        refs.append(str(b.get("label", b.get("ref", ""))))
        boxes.append([float(x) for x in box])
    return Objects(refs, boxes)


def load_medxray_cot(src: str | Path, *, images_root: str | Path | None = None) -> list[Record]:
    """MedXray-CoT: a json list (or JSON lines) of chest X-ray items with reasoning and boxes.

    Assumed fields (documented variants accepted): ``image``; ``question``/``prompt`` (default: a
    report request); ``reasoning``/``cot``/``think``; ``answer``/``report``; ``boxes`` as
    ``[{bbox: [x1,y1,x2,y2], label}]`` in original pixels (``bbox_2d``/``ref`` spellings too).
    With reasoning the record is ``cot`` and the answer reads ``<think>...</think><answer>...</answer>``;
    without it the record is a ``report``. Boxes go to ``objects``.
    """
    src = Path(src)
    root = Path(images_root) if images_root is not None else src.parent
    records = []
    for i, row in enumerate(read_json_list(src)):
        image = str(need(row, ("image", "image_path", "img"), src, i))
        answer = str(need(row, ("answer", "report", "final_answer"), src, i)).strip()
        reasoning = next((str(row[k]).strip() for k in ("reasoning", "cot", "think") if row.get(k)), None)
        text = f"<think>{reasoning}</think><answer>{answer}</answer>" if reasoning else answer
        records.append(
            make_record(
                str(row.get("question") or row.get("prompt") or DEFAULT_REPORT_PROMPT),
                text,
                images=[local_image(root, image, src, i, "image")],
                task="cot" if reasoning else "report",
                modality=norm_modality(row.get("modality")) or "X-ray",
                objects=_boxes(row, src, i),
                meta={"source": "medxray-cot", "id": row.get("id")},
                path=src,
                row=i,
            )
        )
    return records


def load_meddocbench(src: str | Path, *, image_dir: str | Path) -> list[Record]:
    """MedDocBench TSV/parquet (the MMBench-style layout): ``index, image`` (base64, or the
    ``index`` of an earlier row whose image it shares), ``question``, ``answer``, optional
    ``A``..``D`` options, ``category`` and ``rotation`` (degrees the page was turned).

    The image is kept as given (the rotation is part of the test) and the angle goes to meta.
    Images are written as PNG under ``image_dir``.
    """
    src = Path(src)
    image_dir = Path(image_dir)
    rows = read_table(src)
    by_index: dict[str, str] = {}
    records = []
    first_row = 2 if src.suffix.lower() != ".parquet" else 0  # TSV line numbers count the header
    for n, row in enumerate(rows):
        i = n + first_row
        idx = str(row.get("index", n))
        raw = need(row, ("image", "image_base64"), src, i)
        if isinstance(raw, str) and raw.strip().isdigit() and len(raw.strip()) < 16:
            ref = raw.strip()  # MMBench-style: an index pointing at a row that carries the image
            if ref not in by_index:
                raise SourceError(src, f"image refers to index {ref}, which has no image", row=i, field="image")
            img = by_index[ref]
        else:
            img = str(save_image_bytes(image_bytes(raw, src, i, "image"), image_dir / f"{src.stem}_{idx}", src, i, "image"))
        by_index[idx] = img
        question = str(need(row, ("question",), src, i))
        options = {k: str(row[k]) for k in "ABCD" if row.get(k) not in (None, "")}
        if options:
            question += "\n" + "\n".join(f"{k}: {v}" for k, v in options.items())
        rotation = row.get("rotation")
        records.append(
            make_record(
                question,
                str(need(row, ("answer",), src, i)),
                images=[img],
                task="document",
                modality="document",
                meta={"source": "meddocbench", "index": idx, "category": row.get("category"),
                      "rotation": int(float(rotation)) if rotation not in (None, "") else 0, "options": options or None},
                path=src,
                row=i,
            )
        )
    return records
