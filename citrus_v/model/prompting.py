"""Interactive prompts for the segmenter: clicks and boxes, alone or next to a [SEG] embedding.

SAM2 users correct a mask by clicking: a positive point (label 1) adds a region, a negative
point (label 0) removes one, a box (two corners, labels 2 and 3 inside the prompt encoder)
frames the object. Here those prompts go through the segmenter's own prompt encoder (SAM2's or LiteMedSAM's), and a
projected [SEG] embedding (what the language model asked for) may be appended after them exactly
as ``decode`` appends it after its padding point, so a click refines a text-prompted
mask instead of replacing it. A previous mask's logits can also be fed back as the dense prompt.

Coordinates: users give pixels of the ORIGINAL image (x right, y down). The segmenter sees the
image stretched to S x S, so x -> x * S / W and y -> y * S / H (``to_sam_coords``); the prompt
encoder adds the half-pixel shift itself.

Only the ``Segmenter`` interface is used (``prompt_encoder``, ``mask_input_size``, ``decode_sparse``),
so either segmenter works unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from citrus_v.model.segmenter import Segmenter, SegmenterFeatures, padding_point

POINT_LABELS = {0: "negative", 1: "positive"}


def to_sam_coords(xy: np.ndarray, orig_hw: tuple[int, int], sam_size: int) -> np.ndarray:
    """(N, 2) original-pixel (x, y) -> (N, 2) segmenter-input (x, y), float64."""
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    h, w = orig_hw
    return xy * np.array([sam_size / w, sam_size / h])


def from_sam_coords(xy: np.ndarray, orig_hw: tuple[int, int], sam_size: int) -> np.ndarray:
    """Inverse of :func:`to_sam_coords`."""
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    h, w = orig_hw
    return xy * np.array([w / sam_size, h / sam_size])


def check_prompts(
    points: Sequence[tuple[float, float, int]] | None,
    box: Sequence[float] | None,
    orig_hw: tuple[int, int],
    where: str = "prompt",
) -> None:
    """Points (x, y, label in {0, 1}) and box [x1, y1, x2, y2] must lie on the image; clear errors otherwise."""
    h, w = orig_hw
    for i, p in enumerate(points or ()):
        if len(p) != 3:
            raise ValueError(f"{where}: point {i} must be (x, y, label), got {tuple(p)}")
        x, y, label = p
        if int(label) not in POINT_LABELS or label != int(label):
            raise ValueError(f"{where}: point {i} label must be 1 (positive) or 0 (negative), got {label}")
        if not (0 <= x < w and 0 <= y < h):
            raise ValueError(f"{where}: point {i} ({x}, {y}) lies outside the {w}x{h} image (x in 0..{w - 1}, y in 0..{h - 1})")
    if box is not None:
        if len(box) != 4:
            raise ValueError(f"{where}: box must be [x1, y1, x2, y2], got {list(box)}")
        x1, y1, x2, y2 = (float(v) for v in box)
        if not (x1 < x2 and y1 < y2):
            raise ValueError(f"{where}: box {list(box)} must have x1 < x2 and y1 < y2")
        if x1 < 0 or y1 < 0 or x2 > w or y2 > h:
            raise ValueError(f"{where}: box {list(box)} reaches outside the {w}x{h} image")


def prompt_embeddings(
    segmenter: Segmenter,
    points_sam: torch.Tensor | None,
    point_labels: torch.Tensor | None,
    box_sam: torch.Tensor | None,
    text_embedding: torch.Tensor | None,
    mask_input: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sparse (1, 1, T, C) and dense (1, C, h, w) prompt embeddings for ONE prompt set.

    points_sam (N, 2) segmenter-input pixels with point_labels (N,); box_sam (4,);
    text_embedding (C,) a projected [SEG] state; mask_input (h_m, w_m) previous logits.
    """
    if points_sam is None and box_sam is None and text_embedding is None:
        raise ValueError("give at least one prompt: a point, a box or a text [SEG] embedding")
    param = next(segmenter.parameters())
    device, dtype = param.device, param.dtype
    if points_sam is None and box_sam is None:
        # text only: the same padding point decode uses
        points_sam, point_labels = padding_point(1, device, dtype)  # (1, 1, 1, 2), (1, 1, 1)
    pts = None if points_sam is None else points_sam.to(device, dtype).view(1, 1, -1, 2)  # (1, 1, N, 2)
    lbl = None if point_labels is None else point_labels.to(device, torch.long).view(1, 1, -1)  # (1, 1, N)
    boxes = None if box_sam is None else box_sam.to(device, dtype).view(1, 1, 4)  # (1, 1 box, 4)
    dense_in = None
    if mask_input is not None:
        # SAM's mask prompt is a logit map at 4x the embedding resolution
        dense_in = F.interpolate(mask_input.to(device, dtype)[None, None], size=segmenter.mask_input_size, mode="bilinear", align_corners=False)
    sparse, dense = segmenter.prompt_encoder(pts, lbl, boxes, dense_in)  # (1, 1, T, C), (1, C, h, w)
    if text_embedding is not None:
        text = text_embedding.to(device, sparse.dtype).view(1, 1, 1, -1)  # (1, 1, 1, C)
        sparse = torch.cat([sparse, text], dim=2)
    return sparse, dense


@torch.no_grad()
def decode_with_prompts(
    segmenter: Segmenter,
    features: SegmenterFeatures,
    *,
    points_sam: torch.Tensor | None = None,
    point_labels: torch.Tensor | None = None,
    box_sam: torch.Tensor | None = None,
    text_embedding: torch.Tensor | None = None,
    mask_input: torch.Tensor | None = None,
    multimask: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One mask for one image (``features`` of a single image) from any mix of prompts.

    ``multimask`` None follows SAM's advice: several candidates (best predicted IoU kept) when
    the prompt is ambiguous (text alone, or one click without a box), one mask otherwise.
    Returns logits (1, 256, 256) and the predicted IoU (1,).
    """
    if features.image_embeddings.shape[0] != 1:
        raise ValueError(f"decode_with_prompts takes the features of ONE image, got {features.image_embeddings.shape[0]}")
    sparse, dense = prompt_embeddings(segmenter, points_sam, point_labels, box_sam, text_embedding, mask_input)
    if multimask is None:
        n_points = 0 if points_sam is None else int(points_sam.reshape(-1, 2).shape[0])
        multimask = box_sam is None and n_points <= 1
    return segmenter.decode_sparse(features, sparse, dense, multimask)


@torch.no_grad()
def seg_embeddings(
    model,  # CitrusV
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    pixel_values: torch.Tensor | None,
    image_grid_thw: torch.Tensor | None,
) -> torch.Tensor:
    """Projected [SEG] states (n_seg, C) of ONE teacher-forced pass over ``input_ids`` (1, L)."""
    hidden = model.hidden_states(input_ids, attention_mask, pixel_values, image_grid_thw)  # (1, L, H), as in forward
    seg_hidden = hidden[input_ids == model.config.tokens.seg_token_id]  # (n_seg, H)
    return model.seg_projector(seg_hidden)  # (n_seg, C)
