"""Where a pixel of one image lies in each frame the model works in, and back.

    original (H, W)    the user's image: every box, click and mask a user gives or gets
    resized (h, w)     the smart-resized image the ViT sees: the frame of the boxes the model writes
    segmenter (S, S)   the image stretched to the segmenter's square input (aspect not kept):
                       the frame of box and click prompts
    mask (256, 256)    the segmenter's logit maps (MASK_SIZE); stretched back to (H, W) they undo
                       the square

x runs right and y down in every frame, so each map is one scale per axis. ``ImageTransforms``
holds one image's sizes and does every map; the prompt encoder adds SAM's half-pixel shift itself.

>>> t = ImageTransforms(orig_hw=(90, 130), sam_size=256, resized_hw=(84, 112))
>>> t.to_segmenter([[65, 45]]).tolist()
[[128.0, 128.0]]
>>> t.box_to_original([28, 14, 56, 42])
[32.5, 15.0, 65.0, 45.0]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from citrus_v.data.boxes import to_original
from citrus_v.model.segmenter import MASK_SIZE


@dataclass(frozen=True)
class ImageTransforms:
    """The frames of ONE image: ``orig_hw`` (H, W), the segmenter side ``sam_size`` and, when the
    image went through the ViT, its smart-resized ``resized_hw`` (h, w)."""

    orig_hw: tuple[int, int]
    sam_size: int
    resized_hw: tuple[int, int] | None = None

    # ------------------------------------------------------------- original <-> segmenter input
    def to_segmenter(self, xy: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
        """(N, 2) original-pixel (x, y) -> (N, 2) segmenter-input (x, y), float64."""
        xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        h, w = self.orig_hw
        return xy * np.array([self.sam_size / w, self.sam_size / h])

    def from_segmenter(self, xy: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
        """Inverse of :meth:`to_segmenter`."""
        xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        h, w = self.orig_hw
        return xy * np.array([w / self.sam_size, h / self.sam_size])

    def points_to_segmenter(self, points: Sequence[Sequence[float]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Clicks (x, y, label) in original pixels -> points (N, 2) float32 in segmenter pixels, labels (N,)."""
        xy = torch.from_numpy(self.to_segmenter([(p[0], p[1]) for p in points])).float()  # (N, 2)
        return xy, torch.tensor([int(p[2]) for p in points], dtype=torch.long)

    def box_to_segmenter(self, box: Sequence[float]) -> torch.Tensor:
        """[x1, y1, x2, y2] in original pixels -> (4,) float32 in segmenter pixels."""
        return torch.from_numpy(self.to_segmenter([box[:2], box[2:]])).float().reshape(4)

    # ------------------------------------------------------------- resized -> original
    def box_to_original(self, box: Sequence[float]) -> list[float]:
        """A box the model wrote (resized pixels) -> original pixels."""
        if self.resized_hw is None:
            raise ValueError("box_to_original: this image has no resized size (it never went through the ViT)")
        return list(to_original(box, orig_hw=self.orig_hw, resized_hw=self.resized_hw))

    # ------------------------------------------------------------- mask logits <-> original
    def masks_to_original(self, mask_logits: torch.Tensor) -> np.ndarray:
        """(n, 256, 256) logits -> (n, H, W) bool masks of the original image."""
        return logits_to_masks(mask_logits, self.orig_hw)


def logits_to_masks(mask_logits: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """Bilinear-upsample logits (n, h, w) to ``size`` = (H, W), then threshold at 0.

    Upsampling the LOGITS (not a thresholded mask) keeps boundaries smooth; the SAM input
    was the image stretched to a square, so stretching back to (H, W) undoes it.
    Returns a bool array (n, H, W).
    """
    if mask_logits.dim() != 3:
        raise ValueError(f"logits_to_masks: mask_logits must be (n, h, w), got shape {tuple(mask_logits.shape)}")
    height, width = int(size[0]), int(size[1])
    if height < 1 or width < 1:
        raise ValueError(f"logits_to_masks: size must be positive (H, W), got {size}")
    if mask_logits.shape[0] == 0:
        return np.zeros((0, height, width), dtype=bool)
    out = np.empty((mask_logits.shape[0], height, width), dtype=bool)
    for k, logits in enumerate(mask_logits.float()):  # one at a time: a full-size float map is 4 bytes a pixel
        up = F.interpolate(logits[None, None], size=(height, width), mode="bilinear", align_corners=False)
        torch.gt(up[0, 0].cpu(), 0, out=torch.from_numpy(out[k]))  # (H, W), written in place
        del up
    return out  # (n, H, W)


def mask_to_logits(mask: np.ndarray, size: int = MASK_SIZE, magnitude: float = 10.0) -> torch.Tensor:
    """A bool (H, W) mask -> (size, size) pseudo-logits (+magnitude inside, -magnitude outside):
    a previous mask fed back as the segmenter's dense prompt."""
    small = Image.fromarray(np.asarray(mask, bool).astype(np.uint8) * 255).resize((size, size), Image.NEAREST)
    return torch.from_numpy((np.asarray(small) > 127).astype(np.float32) * 2 * magnitude - magnitude)
