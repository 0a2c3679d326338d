"""Detection: box IoU, the published Precision@IoU>=0.5 of the first box, and COCO mAP.

Boxes are ``[x1, y1, x2, y2]`` in the same pixel frame for prediction and ground truth
(original pixels in the evaluator), continuous coordinates: area = (x2 - x1) * (y2 - y1),
no "+1" as in the old Pascal VOC code.

Precision@0.5 (published metric): a sample is a hit when its FIRST predicted box has
IoU >= 0.5 with ANY ground-truth box of that sample (the best-matching one; with several GT
boxes we do not require a particular one). A sample with no prediction is a miss. A sample
with no ground-truth box has no defined hit and is left out (``first_box_hit`` raises; the
runner counts such samples apart). Aggregation: mean over samples.

COCO mAP: pycocotools' COCOeval over all predicted boxes, class-agnostic (one category,
because labels are free text), the i-th predicted box of a sample scored 1 - i / n so the
model's own order is its confidence ranking. Aggregation: micro over boxes, AP@[.5:.95].
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from dataclasses import dataclass

BoxT = Sequence[float]  # [x1, y1, x2, y2]


def _check_box(box: BoxT, what: str) -> tuple[float, float, float, float]:
    if len(box) != 4:
        raise ValueError(f"{what} must be [x1, y1, x2, y2], got {list(box)!r}")
    x1, y1, x2, y2 = (float(v) for v in box)
    if x2 < x1 or y2 < y1:
        raise ValueError(f"{what} has x2 < x1 or y2 < y1: {list(box)!r}")
    return x1, y1, x2, y2


def is_well_formed(box: BoxT) -> bool:
    """Four numbers with x1 <= x2 and y1 <= y2. A model may write anything: a predicted box that
    is not well formed matches nothing (IoU 0, a miss); a ground-truth one is an error."""
    try:
        x1, y1, x2, y2 = (float(v) for v in box)
    except (TypeError, ValueError):
        return False
    return x1 <= x2 and y1 <= y2


def box_iou(a: BoxT, b: BoxT) -> float:
    """Intersection over union of two boxes; 0.0 when the union has no area.

    >>> box_iou([0, 0, 2, 2], [1, 0, 3, 2])  # overlap 1x2 = 2, union 4 + 4 - 2 = 6
    0.3333333333333333
    """
    ax1, ay1, ax2, ay2 = _check_box(a, "box a")
    bx1, by1, bx2, by2 = _check_box(b, "box b")
    iw = max(0.0, min(ax2, bx2) - max(ax1, bx1))
    ih = max(0.0, min(ay2, by2) - max(ay1, by1))
    inter = iw * ih
    union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
    return inter / union if union > 0 else 0.0


def first_box_hit(pred_boxes: Sequence[BoxT], gt_boxes: Sequence[BoxT], iou_threshold: float = 0.5) -> bool:
    """Whether the first predicted box has IoU >= ``iou_threshold`` with any ground-truth box."""
    if not gt_boxes:
        raise ValueError("first_box_hit needs at least one ground-truth box (the sample has none)")
    if not pred_boxes or not is_well_formed(pred_boxes[0]):
        return False  # a malformed first box is a miss: the next box does not take its place
    return max(box_iou(pred_boxes[0], g) for g in gt_boxes) >= iou_threshold


@dataclass(frozen=True)
class CocoResult:
    map: float | None  # AP@[.5:.95]; None when there is no ground-truth box at all
    map50: float | None
    map75: float | None
    num_gt: int
    num_pred: int


def coco_map(samples: Sequence[tuple[Sequence[BoxT], Sequence[BoxT]]]) -> CocoResult:
    """COCO AP over ``samples`` = [(predicted boxes in model order, ground-truth boxes), ...].

    Class-agnostic; builds the COCO dicts in memory and keeps pycocotools' prints quiet.
    With no ground truth at all the AP is undefined (None); with ground truth but no
    prediction it is 0.0.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, gts, dets = [], [], []
    for img_id, (preds, gt_boxes) in enumerate(samples, start=1):
        images.append({"id": img_id})
        for box in gt_boxes:
            x1, y1, x2, y2 = _check_box(box, f"ground-truth box of sample {img_id - 1}")
            # ids start at 1: COCOeval uses 0 to mean "unmatched"
            gts.append({"id": len(gts) + 1, "image_id": img_id, "category_id": 1, "iscrowd": 0,
                        "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1)})
        for rank, box in enumerate(preds):
            if not is_well_formed(box):
                # kept as a zero-area detection: it still costs precision, and matches nothing
                x1 = y1 = x2 = y2 = 0.0
            else:
                x1, y1, x2, y2 = _check_box(box, f"predicted box {rank} of sample {img_id - 1}")
            dets.append({"image_id": img_id, "category_id": 1, "bbox": [x1, y1, x2 - x1, y2 - y1],
                         "score": 1.0 - rank / len(preds)})
    if not gts:
        return CocoResult(None, None, None, 0, len(dets))
    if not dets:
        return CocoResult(0.0, 0.0, 0.0, len(gts), 0)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = {"images": images, "annotations": gts, "categories": [{"id": 1, "name": "object"}]}
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(dets)
        ev = COCOeval(coco_gt, coco_dt, iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    # stats[0..2] = AP@[.5:.95], AP@.5, AP@.75; -1 means "no ground truth in this slice"
    stats = [None if s < 0 else float(s) for s in ev.stats[:3]]
    return CocoResult(stats[0], stats[1], stats[2], len(gts), len(dets))
