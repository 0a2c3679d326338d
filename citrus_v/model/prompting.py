"""Interactive prompts for the segmenter: clicks and boxes, alone or next to a [SEG] embedding.

SAM2 users correct a mask by clicking: a positive point (label 1) adds a region, a negative
point (label 0) removes one, a box (two corners, labels 2 and 3 inside the prompt encoder)
frames the object. Here those prompts go through the segmenter's own prompt encoder (SAM2's or LiteMedSAM's), and a
projected [SEG] embedding (what the language model asked for) may be appended after them exactly
as ``decode`` appends it after its padding point, so a click refines a text-prompted
mask instead of replacing it. A previous mask's logits can also be fed back as the dense prompt.

Coordinates here are pixels of the segmenter's S x S input; the prompt encoder adds the
half-pixel shift itself. Users give ORIGINAL image pixels: ``citrus_v.infer.transforms`` maps
them, ``citrus_v.infer.session.ImageSession`` calls these functions with its cached features.

Only the ``Segmenter`` interface is used (``prompt_encoder``, ``mask_input_size``, ``decode_sparse``),
so either segmenter works unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from citrus_v.model.segmenter import Segmenter, SegmenterFeatures, padding_point


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
