"""CitrusV: Qwen2.5-VL whose [SEG] states, projected to 256-d, prompt a SAM2 mask decoder."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from citrus_v.config import CitrusVConfig
from citrus_v.model.checkpoint import load_state_into, read_config, save_pretrained
from citrus_v.model.copy_attention import CopyAttention
from citrus_v.model import token_reading
from citrus_v.model.token_reading import TokenReading
from citrus_v.model.losses import candidate_mask_losses, lm_cross_entropy, lm_cross_entropy_supervised, mask_bce, mask_dice, mask_window_factor
from citrus_v.model.seg_projector import build_seg_projector, scale_grad
from citrus_v.model.litemedsam import LiteMedSAMSegmenter
from citrus_v.model.segmenter import MASK_SIZE, Sam2Segmenter, SegmenterFeatures, pick_masks
from citrus_v.model.vlm import build_mllm, with_mm_token_types

# Named parts for freeze plans (training stages list these). Every parameter belongs to exactly
# one part; first matching prefix wins, so the merger is listed before the rest of the ViT.
# The sam2_* part names also cover a LiteMedSAM segmenter (segmenter.image_encoder = TinyViT,
# segmenter.prompt_encoder, segmenter.mask_decoder), so stage configs work for either kind;
# sam2_memory is empty for LiteMedSAM.
PARTS: dict[str, tuple[str, ...]] = {
    "merger": ("mllm.model.visual.merger.",),
    "vision_encoder": ("mllm.model.visual.",),
    "llm": ("mllm.model.language_model.",),
    "lm_head": ("mllm.lm_head.",),
    "seg_projector": ("seg_projector.",),
    "sam2_image_encoder": (
        "segmenter.sam2.vision_encoder.", "segmenter.sam2.no_memory_embedding", "segmenter.image_encoder.",
    ),
    "sam2_prompt_encoder": (
        "segmenter.sam2.prompt_encoder.", "segmenter.sam2.shared_image_embedding.", "segmenter.prompt_encoder.",
    ),
    "sam2_mask_decoder": ("segmenter.sam2.mask_decoder.", "segmenter.mask_decoder."),
    # video-memory modules: unused on single images, held for checkpoint compatibility
    "sam2_memory": ("segmenter.sam2.",),
    # the token-reading target's head (set_token_reading): trained by the stages that turn it on, never saved
    "reading_head": (token_reading.PREFIX,),
}
PART_NAMES: tuple[str, ...] = tuple(PARTS)


def part_of(param_name: str) -> str:
    for part, prefixes in PARTS.items():
        if param_name.startswith(prefixes):
            return part
    raise KeyError(f"parameter {param_name!r} belongs to no part in PARTS")


def build_segmenter(config: CitrusVConfig) -> Sam2Segmenter | LiteMedSAMSegmenter:
    """The segmenter ``config.segmenter.kind`` names (randomly initialised)."""
    if config.segmenter.kind == "litemedsam":
        return LiteMedSAMSegmenter(config.segmenter)
    return Sam2Segmenter(config.segmenter)


@dataclass
class CitrusVOutput:
    loss: torch.Tensor | None  # lm_loss + bce_weight * mask_bce_loss + dice_weight * mask_dice_loss
    lm_loss: torch.Tensor | None
    mask_bce_loss: torch.Tensor | None  # already multiplied by the accumulation-window factor
    mask_dice_loss: torch.Tensor | None  # idem
    logits: torch.Tensor | None  # (B, L, V); None when forward(..., return_logits=False)
    pred_masks: torch.Tensor  # (n_seg, 256, 256) logits
    iou_scores: torch.Tensor  # (n_seg,)
    mask_iou_loss: torch.Tensor | None = None  # IoU-head MSE (window-weighted), when LossConfig.iou_weight > 0
    copy_loss: torch.Tensor | None = None  # weight x copy-attention loss, as in `loss` (set_copy_attention on, copy_pairs given)
    copy_attention_acc: torch.Tensor | None = None  # share of copy pairs whose key gets the head's most attention
    reading_loss: torch.Tensor | None = None  # weight x token-reading loss, as in `loss` (set_token_reading on, reading given)
    reading_acc: torch.Tensor | None = None  # share of written characters the reading head reads right


class CitrusV(nn.Module):
    """The whole model. Parts are built here from one config; see ``forward`` for the batch."""

    def __init__(self, config: CitrusVConfig) -> None:
        super().__init__()
        self.config = config
        self.mllm = build_mllm(config)
        self.segmenter = build_segmenter(config)
        self.seg_projector = build_seg_projector(config.llm.hidden_size, self.segmenter.prompt_dim)
        self.copy_attention: CopyAttention | None = None  # a training target, set by a stage (set_copy_attention)
        self.token_reading: TokenReading | None = None  # idem (set_token_reading); a submodule only while on

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.Tensor | None = None,
        sam_images: torch.Tensor | None = None,
        gt_masks: torch.Tensor | None = None,
        seg_image_index: torch.Tensor | None = None,
        num_masks_in_window: int | None = None,
        return_logits: bool = True,
        copy_pairs: torch.Tensor | None = None,
        reading: torch.Tensor | None = None,
    ) -> CitrusVOutput:
        """One teacher-forced pass: LM logits, one mask per [SEG] and, given labels, the loss.

        input_ids/attention_mask/labels (B, L); pixel_values (P, 3*2*14*14); image_grid_thw
        (n_img, 3); sam_images (n_img, 3, S, S); gt_masks (n_seg, 256, 256); seg_image_index
        (n_seg,). The i-th [SEG] in row-major order pairs with the i-th mask.
        ``return_logits=False`` (training) skips the full (B, L, V) projection: the LM loss is
        then computed on supervised positions only, with the same value. ``copy_pairs`` (n, 3: row,
        query, key) add the copy-attention loss when ``set_copy_attention`` has turned it on;
        ``reading`` (N, SLOTS: one row per merged image token) the token-reading loss when
        ``set_token_reading`` has.
        """
        seg_positions = input_ids == self.config.tokens.seg_token_id  # (B, L)
        n_seg = int(seg_positions.sum())
        self._check_seg_counts(n_seg, gt_masks, seg_image_index, sam_images)

        copy = self.copy_attention if copy_pairs is not None and len(copy_pairs) else None
        read = self.token_reading if reading is not None and pixel_values is not None else None
        with contextlib.ExitStack() as stack:
            if copy is not None:
                stack.enter_context(copy.capture())
            if read is not None:
                stack.enter_context(read.capture())
            hidden = self.hidden_states(input_ids, attention_mask, pixel_values, image_grid_thw)  # (B, L, H)
        copy_loss = copy_acc = None
        if copy is not None:
            copy_loss, copy_acc = copy.loss(copy_pairs, attention_mask)
            copy_loss = copy.weight * copy_loss
        reading_loss, reading_acc = read.loss(reading) if read is not None else (None, None)
        logits = self.mllm.lm_head(hidden) if return_logits or labels is None else None  # (B, L, V)

        loss_cfg = self.config.loss
        # training losses over SAM's multimask candidates (IoU-head loss, min-loss rule) need them all
        over_candidates = (
            labels is not None and gt_masks is not None and n_seg > 0
            and loss_cfg.over_candidates
        )  # fmt: skip
        masks, ious = self._segment_from_hidden(hidden, seg_positions, sam_images, seg_image_index, over_candidates)
        # the published pick (best predicted IoU), what inference returns: (n_seg, 256, 256), (n_seg,)
        pred_masks, iou_scores = pick_masks(masks, ious, candidates=False) if over_candidates else (masks, ious)

        loss = lm_loss = bce = dice = iou_loss = None
        if labels is not None:
            if logits is not None:
                lm_loss = lm_cross_entropy(logits, labels)
            else:
                lm_loss = lm_cross_entropy_supervised(hidden, self.mllm.lm_head, labels)
            loss = lm_loss
            if gt_masks is not None and n_seg > 0:
                factor = mask_window_factor(n_seg, num_masks_in_window)
                bce, dice, iou_loss = self.mask_losses(masks, ious, gt_masks, candidates=over_candidates)
                bce, dice = bce * factor, dice * factor
                if iou_loss is not None:
                    iou_loss = iou_loss * factor
                    loss = loss + loss_cfg.iou_weight * iou_loss
                loss = loss + loss_cfg.bce_weight * bce + loss_cfg.dice_weight * dice
                if loss_cfg.point_align_weight > 0:
                    align = self._point_align_loss(hidden[seg_positions], gt_masks.to(pred_masks.dtype))
                    loss = loss + loss_cfg.point_align_weight * factor * align
            if copy_loss is not None:
                loss = loss + copy_loss
            if reading_loss is not None:
                loss = loss + reading_loss
        return CitrusVOutput(loss, lm_loss, bce, dice, logits, pred_masks, iou_scores, iou_loss, copy_loss, copy_acc,
                             reading_loss, reading_acc)

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        pixel_values: torch.Tensor | None,
        image_grid_thw: torch.Tensor | None,
    ) -> torch.Tensor:
        """Last-layer states (B, L, H) after the final RMSNorm, with M-RoPE positions for images."""
        inputs = self.mllm_inputs(
            {"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": pixel_values,
             "image_grid_thw": image_grid_thw}
        )  # fmt: skip
        return self.mllm.model(**inputs, use_cache=False, return_dict=True).last_hidden_state

    def mllm_inputs(self, inputs: dict) -> dict:
        """``inputs`` for the HF MLLM, with the token types it needs to place image tokens in 2D."""
        tok = self.config.tokens
        return with_mm_token_types(inputs, tok.image_token_id, tok.video_token_id)

    def _check_seg_counts(
        self,
        n_seg: int,
        gt_masks: torch.Tensor | None,
        seg_image_index: torch.Tensor | None,
        sam_images: torch.Tensor | None,
    ) -> None:
        # bookkeeping fails loudly: a mismatch is never truncated
        if gt_masks is not None:
            if gt_masks.ndim != 3 or tuple(gt_masks.shape[1:]) != (MASK_SIZE, MASK_SIZE):
                raise ValueError(f"gt_masks must be (n_seg, {MASK_SIZE}, {MASK_SIZE}), got {tuple(gt_masks.shape)}")
            if gt_masks.shape[0] != n_seg:
                raise ValueError(
                    f"[SEG] count mismatch: input_ids hold {n_seg} [SEG] tokens but gt_masks has {gt_masks.shape[0]} masks"
                )
        if n_seg == 0:
            return
        if sam_images is None or seg_image_index is None:
            raise ValueError(f"input_ids hold {n_seg} [SEG] tokens but sam_images/seg_image_index were not given")
        if seg_image_index.shape != (n_seg,):
            raise ValueError(
                f"[SEG] count mismatch: input_ids hold {n_seg} [SEG] tokens but seg_image_index has shape "
                f"{tuple(seg_image_index.shape)}"
            )
        n_img = sam_images.shape[0]
        if int(seg_image_index.min()) < 0 or int(seg_image_index.max()) >= n_img:
            raise ValueError(f"seg_image_index {seg_image_index.tolist()} points outside the {n_img} sam_images")

    def _segment_from_hidden(
        self,
        hidden: torch.Tensor,
        seg_positions: torch.Tensor,
        sam_images: torch.Tensor | None,
        seg_image_index: torch.Tensor | None,
        candidates: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        seg_hidden = hidden[seg_positions]  # (n_seg, H), row-major order of the [SEG] tokens
        if seg_hidden.shape[0] == 0:
            empty = hidden.new_zeros(0, MASK_SIZE, MASK_SIZE)
            return empty, hidden.new_zeros(0)
        assert sam_images is not None and seg_image_index is not None  # checked by _check_seg_counts
        # encode each referenced image once, however many [SEG] point at it
        used, per_seg = torch.unique(seg_image_index, return_inverse=True)
        sam_param = next(self.segmenter.parameters())  # the segmenter's device and dtype
        features = self.segmenter.encode(sam_images[used].to(sam_param.dtype))
        return self.decode_seg_states(seg_hidden, features, per_seg, candidates=candidates)

    def decode_seg_states(
        self, seg_hidden: torch.Tensor, features: SegmenterFeatures, image_index: torch.Tensor, candidates: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """[SEG] states (n_seg, H) + encoded images -> masks and predicted IoU, as ``segmenter.decode``
        returns them: the projector and the mask decoder, all that stage 4 trains (so its cached
        variant, ``citrus_v.train.cached_seg``, calls exactly this)."""
        prompts = self.seg_projector(seg_hidden)  # (n_seg, 256)
        prompts = scale_grad(prompts, self.config.seg_grad_scale)
        dtype = features.image_embeddings.dtype
        return self.segmenter.decode(features, image_index, prompts.unsqueeze(1).to(dtype), candidates=candidates)

    def mask_losses(
        self, masks: torch.Tensor, ious: torch.Tensor, gt_masks: torch.Tensor, candidates: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(BCE, Dice, IoU-head MSE or None) of the decoder output against (n_seg, 256, 256) ground
        truth, unweighted: over every candidate (``candidates``, LossConfig.mask_selection) or on the
        picked mask (the published loss)."""
        cfg = self.config.loss
        gt = gt_masks.to(masks.dtype)
        if candidates:
            return candidate_mask_losses(
                masks, ious, gt, bce_weight=cfg.bce_weight, dice_weight=cfg.dice_weight, dice_eps=cfg.dice_eps,
                selection=cfg.mask_selection,
            )  # fmt: skip
        return mask_bce(masks, gt), mask_dice(masks, gt, cfg.dice_eps), None

    def _point_align_loss(self, seg_hidden: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        """Mean squared distance between each projected [SEG] embedding (n_seg, C) and the
        segmenter's embedding of a positive point at its ground-truth mask's centroid (a fixed
        target: no gradient into the prompt encoder). Empty ground truths are skipped."""
        if not self.segmenter.supports_point_embedding:
            raise ValueError(f"LossConfig.point_align_weight needs a SAM2 segmenter, not {self.config.segmenter.kind!r}")
        area = gt.sum(dim=(1, 2))  # (n_seg,)
        keep = area > 0
        if not bool(keep.any()):
            return gt.new_zeros(())
        side = gt.shape[-1]
        coords = (torch.arange(side, device=gt.device, dtype=gt.dtype) + 0.5) / side  # pixel centres in 0..1
        x = (gt.sum(dim=1) * coords).sum(-1) / area.clamp_min(1)  # (n_seg,)
        y = (gt.sum(dim=2) * coords).sum(-1) / area.clamp_min(1)
        with torch.no_grad():
            target = self.segmenter.point_prompt_embedding(torch.stack([x, y], dim=-1)[keep])
        prompts = scale_grad(self.seg_projector(seg_hidden[keep]), self.config.seg_grad_scale)
        return F.mse_loss(prompts, target.to(prompts.dtype))

    @torch.no_grad()
    def segment(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        pixel_values: torch.Tensor | None,
        image_grid_thw: torch.Tensor | None,
        sam_images: torch.Tensor,
        seg_image_index: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Masks for the [SEG] tokens of prompt + generated ids, from ONE teacher-forced pass.

        Returns mask logits (n_seg, 256, 256) and predicted IoU (n_seg,).
        """
        out = self.forward(
            input_ids=input_ids,
            attention_mask=attention_mask,
            pixel_values=pixel_values,
            image_grid_thw=image_grid_thw,
            sam_images=sam_images,
            seg_image_index=seg_image_index,
        )
        return out.pred_masks, out.iou_scores

    def generate(self, *args, **kwargs):  # noqa: ANN002, ANN003 - transformers' own signature
        """The MLLM's ``generate`` (text only; call ``segment`` afterwards for [SEG] masks)."""
        return self.mllm.generate(*args, **self.mllm_inputs(kwargs))

    # ------------------------------------------------------------- training knobs
    def set_seg_grad_scale(self, scale: float) -> None:
        """Stage-3 HookGrad: 0.001 scales the gradient through the projector output; 1.0 is off."""
        if scale < 0:
            raise ValueError(f"seg_grad_scale must be >= 0, got {scale}")
        self.config.seg_grad_scale = float(scale)

    def set_copy_attention(self, layer: int | None, head: int = 0, weight: float = 1.0) -> None:
        """Turn the copy-attention target on (``layer``'s ``head`` learns to look where answers copy from,
        see citrus_v.model.copy_attention) or off (``layer=None``)."""
        if self.copy_attention is not None:
            self.copy_attention.remove()
            self.copy_attention = None
        if layer is not None:
            self.copy_attention = CopyAttention(self.mllm.model.language_model, layer, head, weight)

    def set_token_reading(self, weight: float | None) -> None:
        """Turn the token-reading target on (a new, trainable head on the merged vision tokens, its loss
        times ``weight``; see citrus_v.model.token_reading) or off (``None``: the head is dropped)."""
        if self.token_reading is not None:
            self.token_reading.remove()
            self.token_reading = None
        if weight is not None:
            p = next(self.mllm.model.visual.parameters())
            self.token_reading = TokenReading(self.mllm.model.visual, self.config.llm.hidden_size, weight).to(p.device)

    def set_trainable(self, parts: Iterable[str]) -> None:
        """Train exactly the named parts (see PART_NAMES); freeze every other parameter."""
        wanted = set(parts)
        unknown = sorted(wanted - set(PART_NAMES))
        if unknown:
            raise ValueError(f"unknown part(s) {unknown}; known parts: {list(PART_NAMES)}")
        for name, param in self.named_parameters():
            param.requires_grad_(part_of(name) in wanted)

    def trainable_parts(self) -> list[str]:
        """Parts with at least one trainable parameter, in PART_NAMES order."""
        on = {part_of(n) for n, p in self.named_parameters() if p.requires_grad}
        return [p for p in PART_NAMES if p in on]

    def parameter_counts(self) -> dict[str, int]:
        """Parameters (and persistent buffers, e.g. SAM2's positional table) per part."""
        counts = {part: 0 for part in PART_NAMES}
        for name, tensor in self.state_dict(keep_vars=True).items():
            if name == "segmenter.sam2.prompt_encoder.shared_embedding.positional_embedding":
                continue  # the tied copy of shared_image_embedding's table
            counts[part_of(name)] += tensor.numel()
        return counts

    # ------------------------------------------------------------- persistence
    def save_pretrained(
        self, directory: str | Path, tokenizer_file: str | Path | None = None, dtype: torch.dtype | None = None
    ) -> Path:
        """``dtype`` (e.g. torch.float16) stores floating-point tensors at that precision; loading
        casts them back to the model's own dtype."""
        return save_pretrained(self, directory, tokenizer_file=tokenizer_file, dtype=dtype)

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, device: str | torch.device = "cpu", config: CitrusVConfig | None = None
    ) -> CitrusV:
        """Build from config.json (or ``config``) and load the weights (strict); eval mode."""
        with torch.device(device):
            model = cls(config or read_config(directory))
        load_state_into(model, directory)
        return model.eval()
