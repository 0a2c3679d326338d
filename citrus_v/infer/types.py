"""What a prediction returns: plain data, shared by the CLI, the evaluator and the server."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Box:
    """A box ``[x1, y1, x2, y2]`` in ORIGINAL image pixels, with its label.

    When the segmenter tightened it (``infer/box_tightening.py``), ``text_bbox`` is the box as the
    model wrote it and ``score`` the segmenter's predicted IoU for its outline; both None otherwise.
    """

    bbox: list[float]
    label: str = ""
    image_index: int = 0
    text_bbox: list[float] | None = None
    score: float | None = None

    def __post_init__(self) -> None:
        self.score = iou_score(self.score)

    def to_dict(self) -> dict:
        out: dict = {"bbox": _rounded(self.bbox), "label": self.label}
        if self.text_bbox is not None:
            out["text_bbox"] = _rounded(self.text_bbox)
            out["score"] = None if self.score is None else round(float(self.score), 4)
        return out


def iou_score(value: float | None) -> float | None:
    """A segmenter's predicted IoU as an IoU: clipped to [0, 1]. SAM's IoU head is a regression
    (no sigmoid): on an out-of-domain prompt it says 2.06 or -0.02, which no IoU is."""
    return None if value is None else min(max(float(value), 0.0), 1.0)


def _rounded(bbox: list[float]) -> list[float]:
    return [round(float(v), 2) for v in bbox]


@dataclass
class Mask:
    """One mask per ``[SEG]``: a boolean array at the original image size (H, W), and the segmenter's
    own 256x256 grid (``low_res``: logits > 0, i.e. sigmoid > 0.5, what the published server encodes)."""

    mask: np.ndarray  # (H, W) bool
    score: float  # the segmenter's predicted IoU for the chosen candidate, clipped to [0, 1]
    label: str = ""
    image_index: int = 0
    low_res: np.ndarray | None = None  # (256, 256) bool; None where only the full-size mask is known

    def __post_init__(self) -> None:
        self.score = iou_score(self.score)


class LogitsMask(Mask):
    """A Mask kept as the segmenter's low-resolution logits and made full-size when ``mask`` is read.

    An answer with many [SEG]s on a large image would otherwise hold a full-size array per [SEG] (a
    40M-pixel image: 40 MB each) until it is sent; this holds (h, w) floats (256 KB) instead. Every
    read upsamples again (``infer.transforms.logits_to_masks``), so read ``mask`` once where it is
    used more than once.
    """

    def __init__(self, logits, size: tuple[int, int], score: float, label: str = "", image_index: int = 0):
        if getattr(logits, "ndim", 0) != 2:
            raise ValueError(f"LogitsMask: logits must be (h, w), got shape {tuple(getattr(logits, 'shape', ()))}")
        self.logits = logits  # (h, w) torch.Tensor
        self.size = (int(size[0]), int(size[1]))  # (H, W) of the original image
        self.score, self.label, self.image_index = score, label, image_index
        self.__post_init__()

    @property
    def mask(self) -> np.ndarray:  # type: ignore[override]
        """(H, W) bool at the original size, made now from the logits."""
        from citrus_v.infer.transforms import logits_to_masks

        return logits_to_masks(self.logits[None], self.size)[0]

    @property
    def low_res(self) -> np.ndarray:  # type: ignore[override]
        """(h, w) bool, the segmenter's own grid (logits > 0: sigmoid > 0.5), what the published server encodes."""
        return (self.logits > 0).cpu().numpy()


@dataclass
class Report:
    findings: str
    impression: str
    boxes: list[Box] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"findings": self.findings, "impression": self.impression, "boxes": [b.to_dict() for b in self.boxes]}


@dataclass
class Tile:
    """One tile of a tiled prediction (``Predictor.predict_tiled``): where it lies in the whole image and
    what the model answered on it alone."""

    window: tuple[int, int, int, int]  # (y0, y1, x0, x1) in the whole image's pixels
    answer: str
    num_masks: int
    num_generated_tokens: int

    def to_dict(self) -> dict:
        return {"window": list(self.window), "answer": self.answer, "num_masks": self.num_masks,
                "num_generated_tokens": self.num_generated_tokens}


@dataclass
class Prediction:
    answer: str  # the answer text (inside <answer> when the model reasoned), special tokens removed
    raw_text: str  # everything the model generated, as decoded
    reasoning: str | None = None  # the <think> part, if any
    boxes: list[Box] = field(default_factory=list)
    masks: list[Mask] = field(default_factory=list)
    report: Report | None = None
    mean_token_prob: float | None = None  # confidence of the generated text
    num_generated_tokens: int = 0
    num_prompt_tokens: int = 0  # the encoded prompt's length (image tokens included); 0 where unknown
    tiles: list[Tile] | None = None  # a tiled prediction's tiles, in reading order; None for a whole image
