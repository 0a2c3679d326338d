"""Helpers shared by the public-format loaders: errors, tables, embedded images, VQA records."""

from __future__ import annotations

import base64
import binascii
import csv
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from citrus_v.data.schema import IMAGE_PLACEHOLDER, Message, Record, RecordError
from citrus_v.errors import UserError

CLOSED_ANSWERS = {"yes", "no"}


class SourceError(UserError, ValueError):
    """A public-format file does not look like that format. Names the file, row and field."""

    def __init__(self, path: str | Path, problem: str, *, row: int | None = None, field: str | None = None):
        where = f"{path}" + (f":{row}" if row is not None else "")
        fld = f" field '{field}':" if field else ""
        super().__init__(f"{where}:{fld} {problem}")


def read_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise SourceError(path, f"cannot read ({err})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        # a JSON-lines file is accepted too: the published sets ship both
        try:
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError:
            raise SourceError(path, f"invalid JSON at line {err.lineno}: {err.msg}") from None


def read_json_list(path: Path) -> list[dict[str, Any]]:
    data = read_json(path)
    if isinstance(data, dict):  # some releases wrap the list: {"data": [...]} / {"annotations": [...]}
        for key in ("data", "annotations", "questions", "items"):
            if isinstance(data.get(key), list):
                data = data[key]
                break
    if not isinstance(data, list):
        raise SourceError(path, f"expected a JSON list of items, got {type(data).__name__}")
    for i, item in enumerate(data):
        if not isinstance(item, dict):
            raise SourceError(path, f"item is {type(item).__name__}, not an object", row=i)
    return data


def read_table(path: Path) -> list[dict[str, Any]]:
    """Rows of a CSV / TSV / parquet file as dicts (parquet needs pyarrow)."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ModuleNotFoundError:
            raise SourceError(path, "reading parquet needs pyarrow: pip install pyarrow") from None
        try:
            return pq.read_table(path).to_pylist()
        except Exception as err:  # noqa: BLE001 - pyarrow raises several types for bad files
            raise SourceError(path, f"unreadable parquet ({err})") from None
    if suffix not in (".csv", ".tsv"):
        raise SourceError(path, f"expected .csv, .tsv or .parquet, got '{suffix}'")
    csv.field_size_limit(1 << 30)  # base64 images live in single cells
    with path.open(encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t" if suffix == ".tsv" else ","))


def need(row: dict[str, Any], keys: tuple[str, ...], path: Path, i: int) -> Any:
    """The first present key among documented spelling variants, else a SourceError naming them."""
    for k in keys:
        if k in row and row[k] is not None and str(row[k]).strip() != "":
            return row[k]
    raise SourceError(path, f"missing (looked for {' / '.join(keys)})", row=i, field=keys[0])


def image_bytes(value: Any, path: Path, i: int, field: str) -> bytes:
    """An embedded image: raw bytes, an HF datasets {'bytes': ...} struct or a base64 string."""
    if isinstance(value, dict):
        value = value.get("bytes")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str):
        s = value.split(",", 1)[1] if value.startswith("data:") else value  # data URLs
        try:
            return base64.b64decode(s, validate=True)
        except (binascii.Error, ValueError):
            raise SourceError(path, "not valid base64 image data", row=i, field=field) from None
    raise SourceError(path, f"expected image bytes or base64, got {type(value).__name__}", row=i, field=field)


def save_image_bytes(data: bytes, out: Path, path: Path, i: int, field: str) -> Path:
    """Decode (to check it is an image) and write as PNG."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            out.parent.mkdir(parents=True, exist_ok=True)
            im.save(out.with_suffix(".png"))
    except (UnidentifiedImageError, OSError) as err:
        raise SourceError(path, f"embedded image cannot be decoded ({err})", row=i, field=field) from None
    return out.with_suffix(".png")


def save_array_png(arr: np.ndarray, out: Path) -> Path:
    """A (H, W) or (H, W, 3) array as PNG; non-uint8 grayscale is min-max scaled."""
    from PIL import Image

    a = np.asarray(arr)
    if a.dtype != np.uint8:
        a = a.astype(np.float32)
        lo, hi = float(a.min()), float(a.max())
        a = np.zeros(a.shape, np.uint8) if hi <= lo else np.rint((a - lo) / (hi - lo) * 255).astype(np.uint8)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(out)
    return out


def local_image(root: Path, rel: str, path: Path, i: int, field: str, *, extensions: tuple[str, ...] = ()) -> str:
    """An image path from the set's own folders, as an absolute path; it must exist."""
    candidates = [root / rel] + [root / f"{rel}{ext}" for ext in extensions]
    for c in candidates:
        if c.is_file():
            return str(c.resolve())
    raise SourceError(path, f"image '{rel}' not found under {root}", row=i, field=field)


def make_record(
    question: str,
    answer: str,
    *,
    images: list[str],
    task: str,
    modality: str | None,
    meta: dict[str, Any],
    path: Path,
    row: int,
    masks: list[str] | None = None,
    objects: Any = None,
) -> Record:
    """A user/assistant record; an ``<image>`` placeholder is prepended when the text lacks one."""
    q = question.strip()
    if q.count(IMAGE_PLACEHOLDER) < len(images):
        q = IMAGE_PLACEHOLDER * (len(images) - q.count(IMAGE_PLACEHOLDER)) + q
    try:
        return Record(
            messages=[Message("user", q), Message("assistant", str(answer).strip())],
            images=images,
            masks=masks or [],
            objects=objects,
            task=task,
            modality=modality,
            meta=meta,
        )
    except RecordError as err:
        raise SourceError(path, err.problem, row=row, field=err.field) from None


def vqa_task(answer: str, answer_type: str | None) -> str:
    """CLOSED/OPEN as the set labels it; yes/no answers are closed when the set has no label."""
    if answer_type:
        return "vqa_closed" if str(answer_type).strip().upper() == "CLOSED" else "vqa_open"
    return "vqa_closed" if str(answer).strip().lower() in CLOSED_ANSWERS else "vqa_open"


MODALITY_ALIASES = {
    "ct": "CT",
    "mri": "MR",
    "mr": "MR",
    "x-ray": "X-ray",
    "xray": "X-ray",
    "x_ray": "X-ray",
    "cxr": "X-ray",
    "us": "US",
    "ultrasound": "US",
    "endoscopy": "endoscopy",
    "pathology": "pathology",
    "fundus": "fundus",
    "dermoscopy": "dermoscopy",
}


def norm_modality(value: Any) -> str | None:
    if value is None or str(value).strip() == "":
        return None
    return MODALITY_ALIASES.get(str(value).strip().lower(), str(value).strip())
