"""One record type for every task, read from and written to JSON lines.

The on-disk form is the published (ms-swift) training format::

    {"messages": [{"role": "user", "content": "<image>Please segment the liver."},
                  {"role": "assistant", "content": "Sure, it is [SEG]."}],
     "images": ["a.png"], "masks": ["a_mask.png"],
     "objects": {"ref": ["liver"], "bbox": [[x1, y1, x2, y2]]}}

plus two optional keys of ours, ``task`` and ``modality``, and a free ``meta`` dict.
Image, mask and object boxes are in ORIGINAL image pixels; paths are relative to the
JSONL file's folder unless absolute.

``objects`` is ms-swift's grounding field. Read as the published (ms-swift fork) template reads it:
``bbox_type`` ``"real"`` (the default: original pixels) or ``"norm1"`` (fractions of the image's width
and height); one ref for several boxes (every box takes that ref's label) or one ref per box; an
``image_id`` list of zeros (boxes on the first image). Refused, naming the field: ``bbox_type``
``"norm1000"`` (the published code reads every type but ``norm1`` as pixels, so such a record would be
trained on wrong boxes), point annotations ``[x, y]`` (the published template cannot write a single
point), boxes on another image, and any other key. docs/published_checkpoint.md has the details.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from citrus_v.errors import UserError

TASKS = (
    "vqa_closed",  # yes/no or multiple choice; scored by normalised exact match
    "vqa_open",  # free text; scored by token recall / F1
    "cot",  # <think>...</think><answer>...</answer>
    "report",  # Findings: ... Impression: ...
    "detection",  # boxes in the answer, ground truth in `objects`
    "segmentation",  # [SEG] in the answer, ground truth in `masks`
    "document",  # document / lab-report QA
    "caption",  # image-caption pairs (stage 1)
    "text",  # text-only
)
ROLES = ("system", "user", "assistant")
IMAGE_PLACEHOLDER = "<image>"
SEG_TOKEN = "[SEG]"


class RecordError(UserError, ValueError):
    """A record is malformed. The message names the file, the line and the field."""

    def __init__(self, message: str, *, source: str | None = None, line: int | None = None, field: str | None = None):
        where = ":".join(str(x) for x in (source, line) if x is not None)
        prefix = f"{where}: " if where else ""
        fld = f"field '{field}': " if field else ""
        super().__init__(f"{prefix}{fld}{message}")
        self.source, self.line, self.field = source, line, field
        self.problem = message  # without the location prefix, for re-raising with file and line


@dataclass(frozen=True)
class Message:
    role: str
    content: str


BBOX_TYPES = ("real", "norm1")  # ms-swift's objects.bbox_type values the published template reads
OBJECT_KEYS = ("ref", "bbox", "bbox_type", "image_id")


@dataclass(frozen=True)
class Objects:
    """Reference names and boxes ``[x1, y1, x2, y2]``: original image pixels (``bbox_type="real"``) or
    fractions of the first image's width and height (``"norm1"``)."""

    ref: list[str]
    bbox: list[list[float]]
    bbox_type: str = "real"

    def pixels(self, orig_hw: tuple[int, int]) -> list[list[float]]:
        """The boxes in the first image's original pixels (``orig_hw`` = (height, width))."""
        if self.bbox_type == "real":
            return [[float(v) for v in b] for b in self.bbox]
        h, w = orig_hw
        return [[b[0] * w, b[1] * h, b[2] * w, b[3] * h] for b in self.bbox]

    def labels(self) -> list[str]:
        """One label per box: its ref, the one ref of all boxes, or "" without refs."""
        if len(self.ref) == 1:
            return [self.ref[0]] * len(self.bbox)
        return list(self.ref) or [""] * len(self.bbox)


@dataclass
class Record:
    messages: list[Message]
    images: list[str] = field(default_factory=list)
    masks: list[str] = field(default_factory=list)
    objects: Objects | None = None
    task: str | None = None
    modality: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        validate(self)

    # --- views ---------------------------------------------------------------
    @property
    def num_seg_tokens(self) -> int:
        return sum(m.content.count(SEG_TOKEN) for m in self.messages if m.role == "assistant")

    @property
    def num_image_placeholders(self) -> int:
        return sum(m.content.count(IMAGE_PLACEHOLDER) for m in self.messages)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"messages": [{"role": m.role, "content": m.content} for m in self.messages]}
        if self.images:
            out["images"] = list(self.images)
        if self.masks:
            out["masks"] = list(self.masks)
        if self.objects is not None:
            out["objects"] = {"ref": list(self.objects.ref), "bbox": [list(b) for b in self.objects.bbox]}
            if self.objects.bbox_type != "real":
                out["objects"]["bbox_type"] = self.objects.bbox_type
        if self.task is not None:
            out["task"] = self.task
        if self.modality is not None:
            out["modality"] = self.modality
        if self.meta:
            out["meta"] = self.meta
        return out

    @classmethod
    def from_dict(cls, d: Any) -> Record:
        if not isinstance(d, dict):
            raise RecordError(f"a record must be a JSON object, got {type(d).__name__}")
        unknown = set(d) - {"messages", "images", "masks", "objects", "task", "modality", "meta"}
        if unknown:
            raise RecordError(f"unknown keys {sorted(unknown)}", field=sorted(unknown)[0])
        msgs = d.get("messages")
        if not isinstance(msgs, list) or not msgs:
            raise RecordError("must be a non-empty list of {role, content}", field="messages")
        messages = []
        for i, m in enumerate(msgs):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise RecordError("must be an object with string 'role' and 'content'", field=f"messages[{i}]")
            messages.append(Message(m["role"], m["content"]))
        objects = _objects_from_dict(d["objects"]) if d.get("objects") is not None else None
        for key in ("images", "masks"):
            v = d.get(key, [])
            if isinstance(v, str):
                v = [v]
            if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                raise RecordError("must be a list of file paths", field=key)
        meta = d.get("meta", {})
        if not isinstance(meta, dict):
            raise RecordError("must be an object", field="meta")
        imgs = d.get("images", [])
        msks = d.get("masks", [])
        return cls(
            messages=messages,
            images=[imgs] if isinstance(imgs, str) else list(imgs),
            masks=[msks] if isinstance(msks, str) else list(msks),
            objects=objects,
            task=d.get("task"),
            modality=d.get("modality"),
            meta=meta,
        )


def _objects_from_dict(o: Any) -> Objects:
    """ms-swift's ``objects`` field -> ``Objects``; what the published template cannot read is refused."""
    if not isinstance(o, dict) or not isinstance(o.get("ref", []), list) or not isinstance(o.get("bbox"), list):
        raise RecordError("must be {'ref': [...], 'bbox': [[x1,y1,x2,y2], ...]}", field="objects")
    unknown = sorted(set(o) - set(OBJECT_KEYS))
    if unknown:
        raise RecordError(f"unknown key; objects has only {list(OBJECT_KEYS)}", field=f"objects.{unknown[0]}")
    bbox_type = o.get("bbox_type") or "real"
    if bbox_type == "norm1000":
        raise RecordError("'norm1000' is not read: the published template takes every bbox_type but 'norm1' as "
                          "pixels; write the boxes as 'real' pixels or 'norm1' fractions", field="objects.bbox_type")
    if bbox_type not in BBOX_TYPES:
        raise RecordError(f"{bbox_type!r} is not one of {BBOX_TYPES}", field="objects.bbox_type")
    image_id = o.get("image_id") or []
    if not isinstance(image_id, list):
        raise RecordError("must be a list of image indices", field="objects.image_id")
    for j, k in enumerate(image_id):
        if k != 0 or isinstance(k, bool):
            raise RecordError(f"box {j} is on image {k!r}; boxes must be on the record's first image (0)",
                              field=f"objects.image_id[{j}]")
    return Objects(list(o.get("ref", [])), [list(b) if isinstance(b, (list, tuple)) else b for b in o["bbox"]], bbox_type)


def validate(rec: Record) -> None:
    """Check the bookkeeping of a record; raise ``RecordError`` naming the field."""
    for i, m in enumerate(rec.messages):
        if m.role not in ROLES:
            raise RecordError(f"role {m.role!r} is not one of {ROLES}", field=f"messages[{i}].role")
    if not any(m.role == "assistant" for m in rec.messages):
        raise RecordError("has no assistant message", field="messages")
    if rec.task is not None and rec.task not in TASKS:
        raise RecordError(f"task {rec.task!r} is not one of {TASKS}", field="task")
    n_ph = rec.num_image_placeholders
    if n_ph != len(rec.images):
        raise RecordError(f"{n_ph} '<image>' placeholders but {len(rec.images)} images", field="images")
    n_seg = rec.num_seg_tokens
    if n_seg != len(rec.masks):
        raise RecordError(f"{n_seg} [SEG] tokens in assistant messages but {len(rec.masks)} masks", field="masks")
    if rec.objects is not None:
        _validate_objects(rec.objects)


def _validate_objects(objects: Objects) -> None:
    if objects.bbox_type not in BBOX_TYPES:
        raise RecordError(f"{objects.bbox_type!r} is not one of {BBOX_TYPES}", field="objects.bbox_type")
    if len(objects.ref) > 1 and len(objects.ref) != len(objects.bbox):
        raise RecordError(
            f"{len(objects.ref)} refs but {len(objects.bbox)} boxes (give one ref per box, or one ref for all)",
            field="objects",
        )
    for j, b in enumerate(objects.bbox):
        if isinstance(b, list) and len(b) == 2:
            raise RecordError(f"a point {b!r}: ms-swift's point annotations are not read (the published template "
                              "cannot write a single point); give a box [x1, y1, x2, y2]", field=f"objects.bbox[{j}]")
        if not isinstance(b, list) or len(b) != 4 or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in b):
            raise RecordError(f"box must be 4 numbers [x1, y1, x2, y2], got {b!r}", field=f"objects.bbox[{j}]")
        if not all(math.isfinite(x) for x in b):
            raise RecordError(f"box has a NaN or infinite coordinate: {b!r}", field=f"objects.bbox[{j}]")
        if b[2] < b[0] or b[3] < b[1]:
            raise RecordError(f"box has x2<x1 or y2<y1: {b!r}", field=f"objects.bbox[{j}]")
        if objects.bbox_type == "norm1" and not all(0 <= x <= 1 for x in b):
            raise RecordError(f"bbox_type 'norm1' box has a coordinate outside [0, 1]: {b!r}", field=f"objects.bbox[{j}]")


@dataclass
class SkipReport:
    """What ``read_jsonl(..., skip_invalid=True)`` left out: never silent."""

    skipped: list[tuple[int, str]] = field(default_factory=list)  # (line number, error)

    @property
    def count(self) -> int:
        return len(self.skipped)


def iter_jsonl(path: str | Path, *, skip_invalid: bool = False, report: SkipReport | None = None) -> Iterator[Record]:
    """Yield records from a JSON-lines file; blank lines are ignored.

    A bad line (not UTF-8, not JSON, not a valid record) raises ``RecordError`` naming file, line
    and field, unless ``skip_invalid`` is set; then it is recorded in ``report`` (count and lines).
    """
    for _, rec in iter_jsonl_lines(path, skip_invalid=skip_invalid, report=report):
        yield rec


def iter_jsonl_lines(path: str | Path, *, skip_invalid: bool = False, report: SkipReport | None = None) -> Iterator[tuple[int, Record]]:
    """``iter_jsonl`` with each record's 1-based line number, for messages that name ``file:line``."""
    path = Path(path)
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise RecordError(f"not UTF-8 text (byte {e.start + 1} of the line is {raw[e.start:e.start + 1]!r})") from None
                if lineno == 1:
                    line = line.removeprefix("\ufeff")  # a byte-order mark some editors write
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise RecordError(f"invalid JSON: {e.msg} (column {e.colno})") from None
                yield lineno, Record.from_dict(obj)
            except RecordError as e:
                err = RecordError(e.problem, source=str(path), line=lineno, field=e.field) if e.source is None else e
                if not skip_invalid:
                    raise err from None
                if report is not None:
                    report.skipped.append((lineno, str(err)))


def read_json_lines(path: str | Path, what: str) -> list[tuple[int, Any]]:
    """(line number, parsed value) of every non-blank line of a JSON-lines file; a line that is not JSON
    is a ValueError naming the file, the line and ``what`` the file is ("metrics log")."""
    rows = []
    for lineno, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append((lineno, json.loads(line)))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{lineno}: not JSON in {what} ({e.msg})") from None
    return rows


def read_jsonl(path: str | Path, *, skip_invalid: bool = False, report: SkipReport | None = None) -> list[Record]:
    return list(iter_jsonl(path, skip_invalid=skip_invalid, report=report))


def write_jsonl(records: Iterable[Record], path: str | Path) -> int:
    """Write records as JSON lines (atomically: temp file then rename). Returns the count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    n = 0
    with tmp.open("w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec.to_dict(), ensure_ascii=False) + "\n")
            n += 1
    tmp.replace(path)
    return n


def resolve(path: str, base_dir: str | Path) -> Path:
    """A record's file path, relative to the JSONL file's folder unless absolute."""
    p = Path(path)
    return p if p.is_absolute() else Path(base_dir) / p
