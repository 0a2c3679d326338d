"""The published evaluation protocols as named modes of ``citrus-v eval --protocol``.

Facts from the published scripts (file:line in docs/published_checkpoint.md, "Evaluation protocols"):

``mecovqa-g`` (eval/eval_segmentation.py): the ViT sees at most 65,535 pixels (qwen_vl_utils' default
minimum, 3,136); sampling at temperature 0.2, at most 1,024 new tokens; the item's first human turn as
written (``meta["query"]`` of a record from ``citrus-v data convert --format mecovqa-g``, else the
record's prompt with its placeholders filled); the FIRST
mask the model returns, on the segmenter's 256x256 grid (logits > 0), resized to the ground truth's size by
nearest neighbour (OpenCV's INTER_NEAREST: source index ``floor(i * src / dst)``); no mask: all zeros.
Dice ``2|P&G| / (|P| + |G|)``, 1.0 when both are empty. Reported: the mean over records (the first
ground-truth mask of each).

``detection-p1`` (eval/eval_detection.py): at most 1,003,520 pixels (minimum 3,136); greedy, at most 512
new tokens; the prompt ``<image>\\nLocate the {ref}, output its bbox coordinates using JSON format.`` with the
record's first ref; the FIRST box the model writes (never tightened by the segmenter), mapped to original
pixels and truncated to integers, clamped to the image (x2 >= x1, y2 >= y1); no box: [0, 0, 0, 0].
A hit is IoU >= 0.5 with the record's first ground-truth box. Reported: Precision@1, the mean of hits.

Sampling uses ``seed`` 0 (the published script sets no seed for its sampler; a seeded run repeats).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from citrus_v.data.schema import Record, resolve
from citrus_v.errors import UserError
from citrus_v.infer.types import Prediction

QWEN_MIN_PIXELS = 4 * 28 * 28  # qwen_vl_utils.vision_process.MIN_PIXELS: neither script sets MIN_PIXELS
DETECTION_PROMPT = "<image>\nLocate the {}, output its bbox coordinates using JSON format."


@dataclass(frozen=True)
class PublishedProtocol:
    name: str
    metric: str  # the reported number
    sample_key: str  # each record's score in predictions.jsonl
    min_pixels: int
    max_pixels: int
    max_new_tokens: int
    temperature: float | None  # None: greedy
    source: str  # the published script it follows

    def settings(self) -> dict[str, Any]:
        return {"min_pixels": self.min_pixels, "max_pixels": self.max_pixels, "max_new_tokens": self.max_new_tokens,
                "temperature": self.temperature or 0.0, "seed": 0, "tighten_boxes": False, "source": self.source}


PROTOCOLS = {
    "mecovqa-g": PublishedProtocol("mecovqa-g", "dice_mean", "published_dice", QWEN_MIN_PIXELS, 65535, 1024, 0.2,
                                   "eval/eval_segmentation.py"),
    "detection-p1": PublishedProtocol("detection-p1", "precision_at_1", "published_p1_hit", QWEN_MIN_PIXELS, 1003520, 512, None,
                                      "eval/eval_detection.py"),
}


def configure(predictor, protocol: PublishedProtocol) -> None:  # noqa: ANN001
    """Set a ``Predictor``'s pixel range, decoding and box tightening to the protocol's."""
    from citrus_v.data.template import ChatTemplate
    from citrus_v.infer.generation import GenerationSettings

    t = predictor.template
    cfg = replace(t.image_cfg, min_pixels=protocol.min_pixels, max_pixels=protocol.max_pixels,
                  pixel_source=f"--protocol {protocol.name} ({protocol.source})")
    predictor.template = ChatTemplate(t.tokenizer, cfg, t.ids, style=getattr(t, "style", "ours"))
    base = getattr(predictor, "settings", None) or GenerationSettings()
    sampled = protocol.temperature is not None
    predictor.settings = replace(base, max_new_tokens=protocol.max_new_tokens, do_sample=sampled, fast=False,
                                 temperature=protocol.temperature if sampled else base.temperature, seed=0)
    predictor.tighten_boxes = False


# --------------------------------------------------------------------------- prompts


def detection_prompt(rec: Record, base_dir: str | Path = ".") -> str:
    """The published detection prompt for the record's first ref."""
    if rec.objects is None or not rec.objects.ref or not rec.objects.bbox:
        raise ValueError("--protocol detection-p1 needs objects with a ref and a box (the prompt names the ref)")
    return DETECTION_PROMPT.format(rec.objects.ref[0])


def segmentation_prompt(filler):  # noqa: ANN001
    """The mecovqa-g prompt maker: a converted item's ``meta["query"]``, else ``filler`` (or the last user turn)."""
    from citrus_v.eval.runner import prompt_of

    def prompt(rec: Record, base_dir: str | Path = ".") -> str:
        query = rec.meta.get("query")
        if isinstance(query, str) and query.strip():
            return query
        return filler(rec, base_dir) if filler is not None else prompt_of(rec)

    return prompt


# --------------------------------------------------------------------------- scoring


def nearest_resize(mask: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """(h, w) -> ``hw`` by nearest neighbour as OpenCV's INTER_NEAREST: row ``floor(i * h / H)``."""
    h, w = mask.shape
    rows = np.minimum(np.floor(np.arange(hw[0]) * (h / hw[0])).astype(int), h - 1)
    cols = np.minimum(np.floor(np.arange(hw[1]) * (w / hw[1])).astype(int), w - 1)
    return mask[rows][:, cols]


def published_dice(pred: np.ndarray, gt: np.ndarray) -> float:
    p, g = pred.astype(bool), gt.astype(bool)
    total = int(p.sum()) + int(g.sum())
    return 1.0 if total == 0 else 2.0 * int((p & g).sum()) / total


def first_mask_dice(pred: Prediction, gt: np.ndarray) -> float:
    """Dice of the first predicted mask (its 256x256 grid nearest-resized to ``gt``) against ``gt``."""
    if not pred.masks:
        return published_dice(np.zeros_like(gt, dtype=bool), gt)
    first = pred.masks[0]
    grid = getattr(first, "low_res", None)  # (256, 256) bool: what the published model returns
    mask = np.asarray(first.mask if grid is None else grid, dtype=bool)
    return published_dice(nearest_resize(mask, gt.shape) if mask.shape != gt.shape else mask, gt)


def written_box(pred: Prediction, wh: tuple[int, int]) -> list[float]:
    """The first box as written, in original pixels truncated to integers and clamped, or [0, 0, 0, 0]."""
    if not pred.boxes:
        return [0.0, 0.0, 0.0, 0.0]
    b = pred.boxes[0]
    x1, y1, x2, y2 = (math.trunc(v) for v in (b.text_bbox if b.text_bbox is not None else b.bbox))
    w, h = wh
    x1, y1 = max(0, min(x1, w)), max(0, min(y1, h))
    return [float(x1), float(y1), float(max(x1, min(x2, w))), float(max(y1, min(y2, h)))]


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def score(protocol: PublishedProtocol, records: Sequence[Record], preds: Sequence[Prediction],
          base_dir: str | Path) -> tuple[list[float], dict[str, Any]]:
    """Per-record protocol scores and the summary ({protocol, metric, value, n, settings})."""
    from citrus_v.data.checks import image_hw
    from citrus_v.data.medical_io import MAX_IMAGE_PIXELS
    from citrus_v.eval.runner import gt_boxes, load_mask

    values = []
    for i, (rec, pred) in enumerate(zip(records, preds)):
        if protocol.name == "mecovqa-g":
            if not rec.masks:
                raise UserError(f"record {i}: --protocol mecovqa-g scores a mask, and the record has none")
            values.append(first_mask_dice(pred, load_mask(resolve(rec.masks[0], base_dir))))
        else:
            h, w = image_hw(resolve(rec.images[0], base_dir), MAX_IMAGE_PIXELS)
            values.append(float(box_iou(written_box(pred, (w, h)), gt_boxes(rec, base_dir)[0]) >= 0.5))
    value = float(np.mean(values)) if values else None
    return values, {"protocol": protocol.name, "metric": protocol.metric, "value": value, "n": len(values),
                    "settings": protocol.settings()}
