"""The segmentation side: SAM2 with its own image encoder, prompted by projected [SEG] states.

A segmenter is anything with the interface below (``Segmenter``), so another SAM-family model
(LiteMedSAM, a SAM-1 decoder without high-resolution features, ``litemedsam.py``) can replace SAM2:

    features = segmenter.encode(sam_images)                 # once per image
    logits, iou = segmenter.decode(features, image_index, sparse_prompt_embeddings)
    # interactive prompts (clicks, boxes, a previous mask): model/prompting.py
    sparse, dense = segmenter.prompt_encoder(points, labels, boxes, mask_input)
    logits, iou = segmenter.decode_sparse(features, sparse, dense, multimask)

The compute is transformers' ``Sam2VideoModel`` (chosen over ``Sam2Model`` because it also
holds the video-memory modules, so every tensor of the published SAM2 checkpoint has a home).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Sam2VideoConfig, Sam2VideoModel

from citrus_v.config import SegmenterConfig
from citrus_v.data.image_processing import MASK_SIZE  # every [SEG] yields one MASK_SIZE x MASK_SIZE logit map (the published loss size)

NO_OBJECT_SCORE = -1024.0  # SAM2's logit for "no object here" when the object-score gate is on


@dataclass
class SegmenterFeatures:
    """Per-image encoder output, computed once and indexed per [SEG]."""

    image_embeddings: torch.Tensor  # (n_img, C, S/16, S/16), no-memory embedding already added
    high_resolution_features: list[torch.Tensor]  # [(n_img, C/8, S/4, S/4), (n_img, C/4, S/8, S/8)]

    def select(self, image_index: torch.Tensor) -> SegmenterFeatures:
        return SegmenterFeatures(
            self.image_embeddings[image_index], [f[image_index] for f in self.high_resolution_features]
        )

    @staticmethod
    def cat(parts: list[SegmenterFeatures]) -> SegmenterFeatures:
        """The features of several image batches as one, in order."""
        levels = zip(*(p.high_resolution_features for p in parts))
        return SegmenterFeatures(torch.cat([p.image_embeddings for p in parts]), [torch.cat(list(f)) for f in levels])


class Segmenter(Protocol):
    """What the rest of the package may ask of a segmenter (SAM2 or LiteMedSAM). Optional abilities
    are declared by the ``supports_*`` flags; callers check the flag, never ``hasattr``."""

    prompt_dim: int  # C of a sparse prompt embedding (what the [SEG] projector must produce)
    # point_prompt_embedding works (the point-alignment auxiliary loss needs it)
    supports_point_embedding: bool
    # box_prompt_token works (cached stage 4's box-alignment warm start needs it)
    supports_box_token: bool
    prompt_encoder: nn.Module  # SAM's: (points, labels, boxes, mask logits) -> sparse, dense embeddings
    mask_input_size: tuple[int, int]  # the dense (mask-logit) prompt's side: 4x the embedding side

    def encode(self, sam_images: torch.Tensor) -> SegmenterFeatures: ...

    def point_prompt_embedding(self, xy: torch.Tensor) -> torch.Tensor: ...

    def box_prompt_token(self, boxes: torch.Tensor) -> torch.Tensor: ...

    def decode_sparse(
        self,
        features: SegmenterFeatures,
        sparse: torch.Tensor,
        dense: torch.Tensor,
        multimask: bool,
        candidates: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]: ...

    def decode(
        self,
        features: SegmenterFeatures,
        image_index: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        candidates: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


def check_decode_inputs(
    sparse_prompt_embeddings: torch.Tensor, image_index: torch.Tensor, prompt_dim: int, candidates: bool
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Validate ``decode``'s inputs (shared by every segmenter); with no prompt at all, return the
    empty result ``decode`` gives, else None."""
    n_seg = sparse_prompt_embeddings.shape[0]
    if sparse_prompt_embeddings.shape[1:] != (1, prompt_dim):
        raise ValueError(
            f"sparse_prompt_embeddings must be (n_seg, 1, {prompt_dim}), got {tuple(sparse_prompt_embeddings.shape)}"
        )
    if image_index.shape != (n_seg,):
        raise ValueError(f"image_index must be ({n_seg},), got {tuple(image_index.shape)}")
    if n_seg > 0:
        return None
    shape = (0, 3) if candidates else (0,)
    return sparse_prompt_embeddings.new_zeros(*shape, MASK_SIZE, MASK_SIZE), sparse_prompt_embeddings.new_zeros(*shape)


def padding_point(n: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The prompt SAM gets when no user point is given: one empty point labelled -1 per prompt set
    (the prompt encoder pads a second when there is no box, as the originals do).
    Returns points (n, 1, 1, 2) and labels (n, 1, 1), the prompt encoder's layout."""
    points = torch.zeros(n, 1, 1, 2, device=device, dtype=dtype)
    labels = -torch.ones(n, 1, 1, device=device, dtype=torch.long)
    return points, labels


def decode_seg_prompts(
    segmenter: Segmenter,
    features: SegmenterFeatures,
    image_index: torch.Tensor,
    sparse_prompt_embeddings: torch.Tensor,
    candidates: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``decode`` for any segmenter: each projected [SEG] (n_seg, 1, C) goes after the padding
    point (no user points), on the features of its image (image_index (n_seg,)); multimask output,
    the best predicted IoU kept (every candidate with ``candidates``)."""
    empty = check_decode_inputs(sparse_prompt_embeddings, image_index, segmenter.prompt_dim, candidates)
    if empty is not None:
        return empty
    feats = features.select(image_index)
    points, labels = padding_point(len(image_index), feats.image_embeddings.device, feats.image_embeddings.dtype)
    sparse, dense = segmenter.prompt_encoder(points, labels, None, None)  # (n_seg, 1, 2, C), (n_seg, C, h, w)
    sparse = torch.cat([sparse, sparse_prompt_embeddings.to(sparse.dtype).unsqueeze(1)], dim=2)  # (n_seg, 1, 3, C)
    return segmenter.decode_sparse(feats, sparse, dense, multimask=True, candidates=candidates)


def pick_masks(masks: torch.Tensor, iou: torch.Tensor, candidates: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Multimask decoder output -> what ``decode`` returns, at MASK_SIZE.

    masks (n, M, h, w) logits and iou (n, M) predicted IoU. ``candidates=False``: the candidate
    with the best predicted IoU, (n, 256, 256) and (n,) (the published rule); ``True``: all of
    them, (n, M, 256, 256) and (n, M) (training losses over candidates).
    """
    if not candidates:
        rows = torch.arange(masks.shape[0], device=masks.device)
        best = iou.argmax(dim=-1)  # (n,)
        masks, iou = masks[rows, best][:, None], iou[rows, best][:, None]  # (n, 1, h, w), (n, 1)
    if masks.shape[-1] != MASK_SIZE:  # smaller SAM inputs (tiny) are brought to the loss size
        n, m = masks.shape[:2]
        masks = F.interpolate(masks.flatten(0, 1)[:, None], size=(MASK_SIZE, MASK_SIZE), mode="bilinear", align_corners=False)
        masks = masks[:, 0].unflatten(0, (n, m))  # (n, M, 256, 256)
    return (masks, iou) if candidates else (masks[:, 0], iou[:, 0])


def sam2_hf_config(config: SegmenterConfig) -> Sam2VideoConfig:
    """The transformers config for our SAM2 (SAM2.0 layout: no occlusion or pointer-time embeddings)."""
    dims = config.embed_dims
    side = config.image_size
    backbone = {
        "model_type": "sam2_hiera_det_model",
        "hidden_size": config.embed_dim,
        "num_attention_heads": config.num_heads,
        "image_size": [side, side],
        "blocks_per_stage": list(config.blocks_per_stage),
        "embed_dim_per_stage": dims,
        "num_attention_heads_per_stage": [config.num_heads * 2**i for i in range(4)],
        "window_size_per_stage": list(config.window_size_per_stage),
        "global_attention_blocks": list(config.global_attention_blocks),
        "window_positional_embedding_background_size": list(config.window_pos_embed_bkg_size),
    }
    vision = {
        "model_type": "sam2_vision_model",
        "backbone_config": backbone,
        "backbone_channel_list": dims[::-1],
        "backbone_feature_sizes": [[side // 4, side // 4], [side // 8, side // 8], [side // 16, side // 16]],
        "fpn_hidden_size": config.hidden_size,
    }
    return Sam2VideoConfig(
        vision_config=vision,
        prompt_encoder_config={"hidden_size": config.hidden_size, "image_size": side, "patch_size": 16},
        mask_decoder_config={
            "hidden_size": config.hidden_size,
            "mlp_dim": config.decoder_mlp_dim,
            "num_hidden_layers": config.decoder_num_layers,
            "num_attention_heads": config.decoder_num_heads,
            "iou_head_hidden_dim": config.hidden_size,
        },
        image_size=side,
        num_maskmem=config.num_maskmem,
        memory_attention_hidden_size=config.hidden_size,
        memory_attention_num_layers=config.memory_attention_num_layers,
        memory_attention_feed_forward_hidden_size=config.memory_attention_ff_dim,
        memory_attention_rope_feat_sizes=[side // 16, side // 16],
        memory_encoder_hidden_size=config.hidden_size,
        memory_encoder_output_channels=config.memory_channels,
        mask_downsampler_embed_dim=config.hidden_size,
        memory_fuser_num_layers=config.memory_fuser_num_layers,
        memory_fuser_embed_dim=config.hidden_size,
        memory_fuser_intermediate_dim=config.memory_fuser_dim,
        # the published SAM2 (2.0) has neither of these tensors
        enable_occlusion_spatial_embedding=False,
        enable_temporal_pos_encoding_for_object_pointers=False,
    )


class Sam2Segmenter(nn.Module):
    """SAM2 prompted by language embeddings, as published (no memory, multimask, best IoU)."""

    supports_point_embedding = True
    supports_box_token = False

    def __init__(self, config: SegmenterConfig) -> None:
        super().__init__()
        self.config = config
        self.prompt_dim = config.hidden_size
        self.sam2 = Sam2VideoModel(sam2_hf_config(config))
        # SAM2 uses ONE random-Fourier positional table for points and for the dense image PE
        # (sam_prompt_encoder.pe_layer); transformers keeps two copies, so we tie them.
        self.sam2.prompt_encoder.shared_embedding = self.sam2.shared_image_embedding

    @property
    def prompt_encoder(self) -> nn.Module:
        return self.sam2.prompt_encoder

    @property
    def mask_input_size(self) -> tuple[int, int]:
        return tuple(self.prompt_encoder.mask_input_size)

    def encode(self, sam_images: torch.Tensor) -> SegmenterFeatures:
        """sam_images (n_img, 3, S, S), normalised -> features of every image."""
        side = self.config.image_size
        if sam_images.ndim != 4 or tuple(sam_images.shape[1:]) != (3, side, side):
            raise ValueError(f"sam_images must be (n_img, 3, {side}, {side}), got {tuple(sam_images.shape)}")
        out = self.sam2.vision_encoder(sam_images, return_dict=True)
        s4, s8, s16 = out.fpn_hidden_states  # high -> low resolution, each (n_img, C, h, w)
        decoder = self.sam2.mask_decoder
        # no memory attention for single images: SAM2 adds the learned no-memory embedding to
        # the lowest-resolution map instead
        no_mem = self.sam2.no_memory_embedding.view(1, -1, 1, 1)  # (1, C, 1, 1)
        return SegmenterFeatures(s16 + no_mem, [decoder.conv_s0(s4), decoder.conv_s1(s8)])

    def point_prompt_embedding(self, xy: torch.Tensor) -> torch.Tensor:
        """(n, 2) points as (x, y) fractions of the image -> (n, C): the prompt encoder's sparse
        embedding of each as a positive click (what SAM2 gives a user's foreground point)."""
        encoder = self.prompt_encoder
        points = (xy * encoder.input_image_size - 0.5)[:, None, None, :]  # pixel coords; the encoder adds 0.5
        labels = torch.ones(xy.shape[0], 1, 1, dtype=torch.long, device=xy.device)
        return encoder._embed_points(points, labels, pad=False)[:, 0, 0]

    def box_prompt_token(self, boxes: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError("Sam2Segmenter has no box prompt token (supports_box_token is False)")

    def decode(
        self,
        features: SegmenterFeatures,
        image_index: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        candidates: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One mask per prompt.

        image_index (n_seg,) picks each prompt's image; sparse_prompt_embeddings (n_seg, 1, C)
        are the projected [SEG] states. Returns logits (n_seg, 256, 256) and the predicted IoU
        of the chosen candidate (n_seg,); with ``candidates`` every multimask candidate,
        (n_seg, 3, 256, 256) and (n_seg, 3).
        """
        return decode_seg_prompts(self, features, image_index, sparse_prompt_embeddings, candidates)

    def decode_sparse(
        self, features: SegmenterFeatures, sparse: torch.Tensor, dense: torch.Tensor, multimask: bool, candidates: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """features of n images, sparse (n, 1, T, C), dense (n, C, h, w) -> best logits (n, 256, 256)
        and IoU (n,) (every candidate, (n, M, 256, 256) and (n, M), with ``candidates``); masks
        judged absent by the object-score head are blanked when ``object_score_gate`` is on."""
        n = sparse.shape[0]
        image_pe = self.sam2.get_image_wide_positional_embeddings().expand(n, -1, -1, -1)
        masks, iou, _, object_logits = self.sam2.mask_decoder(
            image_embeddings=features.image_embeddings,
            image_positional_embeddings=image_pe,
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask,
            high_resolution_features=features.high_resolution_features,
        )
        masks, iou = masks[:, 0], iou[:, 0]  # (n, M, S/4, S/4), (n, M) with M = 3 or 1
        if self.config.object_score_gate:
            present = object_logits[:, 0] > 0  # (n, 1)
            masks = torch.where(present[:, :, None, None], masks, torch.full_like(masks, NO_OBJECT_SCORE))
        return pick_masks(masks, iou, candidates)


def build_segmenter(config: SegmenterConfig) -> Sam2Segmenter:
    return Sam2Segmenter(config)
