"""From the segmenter's low-resolution logits to boolean masks at the original image size."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


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
    up = F.interpolate(mask_logits.float().unsqueeze(1), size=(height, width), mode="bilinear", align_corners=False)
    return (up.squeeze(1) > 0).cpu().numpy()  # (n, H, W)
