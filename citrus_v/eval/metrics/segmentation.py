"""Segmentation overlap: Dice and IoU of two binary masks, with an explicit empty-mask rule.

Empty-mask rule (both functions): when BOTH masks are empty the model correctly found
nothing, so the score is 1.0; when exactly one is empty the score is 0.0 (this also falls
out of the formula, the rule only settles 0/0).
"""

from __future__ import annotations

import numpy as np


def _as_bool_pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"mask shapes differ: prediction {pred.shape} vs ground truth {gt.shape}")
    # nonzero = foreground, so 0/1, 0/255 and bool masks all mean the same thing
    return pred != 0, gt != 0


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice = 2|P & G| / (|P| + |G|); 1.0 when both are empty.

    >>> dice(np.array([[1, 1], [0, 0]]), np.array([[1, 0], [0, 0]]))  # 2*1 / (2+1)
    0.6666666666666666
    """
    p, g = _as_bool_pair(pred, gt)
    total = int(p.sum()) + int(g.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(p, g).sum()) / total


def iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """IoU = |P & G| / |P | G|; 1.0 when both are empty.

    >>> iou(np.array([[1, 1], [0, 0]]), np.array([[1, 0], [1, 0]]))  # 1 / 3
    0.3333333333333333
    """
    p, g = _as_bool_pair(pred, gt)
    union = int(np.logical_or(p, g).sum())
    if union == 0:
        return 1.0
    return int(np.logical_and(p, g).sum()) / union
