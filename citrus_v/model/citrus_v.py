"""CitrusV: Qwen2.5-VL whose [SEG] states, projected to 256-d, prompt a SAM2 mask decoder."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from citrus_v.config import CitrusVConfig
from citrus_v.model.checkpoint import load_state_into, read_config, save_pretrained
from citrus_v.model.copy_attention import CopyAttention
from citrus_v.model import token_reading
from citrus_v.model.token_reading import TokenReading
from citrus_v.model.seg_projector import build_seg_projector, scale_grad
from citrus_v.model.litemedsam import LiteMedSAMSegmenter
from citrus_v.model.segmenter_vision import use_segmenter_vision
from citrus_v.model.segmenter import MASK_SIZE, Sam2Segmenter, SegmenterFeatures, pick_masks
from citrus_v.model.vlm import build_mllm, with_mm_token_types

# Named parts for freeze plans (training stages list these). Every parameter belongs to exactly
# one part; first matching prefix wins, so the merger is listed before the rest of the ViT.
# The sam2_* part names also cover a LiteMedSAM segmenter (segmenter.image_encoder = TinyViT,
# segmenter.prompt_encoder, segmenter.mask_decoder), so stage configs work for either kind;
# sam2_memory is empty for LiteMedSAM.
PARTS: dict[str, tuple[str, ...]] = {
    "merger": ("mllm.model.visual.merger.", "mllm.model.visual_segmenter."),
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
    """What one teacher-forced pass computes; citrus_v.model.objectives scores it."""

    hidden: torch.Tensor  # (B, L, H) last-layer states after the final norm
    logits: torch.Tensor | None  # (B, L, V); None when forward(..., logits=False)
    seg_states: torch.Tensor  # (n_seg, H) the [SEG] tokens' states, row-major order
    seg_prompts: torch.Tensor  # (n_seg, 256) their projection, the segmenter's prompts
    pred_masks: torch.Tensor  # (n_seg, 256, 256) logits of the candidate with the best predicted IoU
    iou_scores: torch.Tensor  # (n_seg,) its predicted IoU
    mask_candidates: torch.Tensor | None = None  # (n_seg, M, 256, 256) every candidate (mask_candidates=True)
    candidate_iou: torch.Tensor | None = None  # (n_seg, M)
    copy_log_probs: torch.Tensor | None = None  # (n_pairs, L) the copy-attention head's log attention per pair's query
    reading_logits: torch.Tensor | None = None  # (N, SLOTS, classes) the token-reading head on every merged image token


class CitrusV(nn.Module):
    """The whole model. Parts are built here from one config; see ``forward`` for the batch."""

    def __init__(self, config: CitrusVConfig) -> None:
        super().__init__()
        self.config = config
        self.mllm = build_mllm(config)
        self.segmenter = build_segmenter(config)
        if config.vision.source != "vit":  # the tiny preset's deviation: image tokens from the segmenter's encoder
            use_segmenter_vision(self.mllm, config, self.segmenter.image_encoder)
        self.seg_projector = build_seg_projector(config.llm.hidden_size, self.segmenter.prompt_dim)
        self.copy_attention: CopyAttention | None = None  # a training target, set by a stage (set_copy_attention)
        self.token_reading: TokenReading | None = None  # idem (set_token_reading); a submodule only while on

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.Tensor | None = None,
        sam_images: torch.Tensor | None = None,
        seg_image_index: torch.Tensor | None = None,
        *,
        logits: bool = True,
        mask_candidates: bool = False,
        copy_pairs: torch.Tensor | None = None,
        read_tokens: bool = False,
    ) -> CitrusVOutput:
        """One teacher-forced pass: hidden states, LM logits, and one mask per [SEG].

        input_ids/attention_mask (B, L); pixel_values (P, 3*2*14*14); image_grid_thw (n_img, 3);
        sam_images (n_img, 3, S, S); seg_image_index (n_seg,): the i-th [SEG] in row-major order
        segments image seg_image_index[i]. ``logits=False`` (training) skips the (B, L, V)
        projection; ``mask_candidates`` also returns every multimask candidate. The training
        targets' heads run only when on (``set_copy_attention``, ``set_token_reading``) and asked
        for: ``copy_pairs`` (n, 3: row, query, key) -> the head's log attention from each query;
        ``read_tokens`` -> the reading head's logits. Losses: citrus_v.model.objectives.
        """
        seg_positions = input_ids == self.config.tokens.seg_token_id  # (B, L)
        self._check_seg_counts(int(seg_positions.sum()), seg_image_index, sam_images)
        copy = self.copy_attention if copy_pairs is not None and len(copy_pairs) else None
        read = self.token_reading if read_tokens and pixel_values is not None else None
        with contextlib.ExitStack() as stack:
            for head in (copy, read):
                if head is not None:
                    stack.enter_context(head.capture())
            hidden = self.hidden_states(input_ids, attention_mask, pixel_values, image_grid_thw)  # (B, L, H)
        copy_log_probs = copy.read_out(copy_pairs, attention_mask) if copy is not None else None
        reading_logits = read.read_out() if read is not None else None
        seg_states = hidden[seg_positions]  # (n_seg, H)
        # projected even when there is no [SEG]: an empty (0, 256) output that still holds the projector, so
        # that every rank's backward under FSDP2 starts from the same module (objectives.Objective)
        prompts = self.seg_prompts(seg_states)  # (n_seg, 256)
        masks, ious = self._segment(prompts, sam_images, seg_image_index, mask_candidates)
        # the published pick (best predicted IoU), what inference returns: (n_seg, 256, 256), (n_seg,)
        pred_masks, iou_scores = pick_masks(masks, ious, candidates=False) if mask_candidates else (masks, ious)
        return CitrusVOutput(
            hidden=hidden, logits=self.mllm.lm_head(hidden) if logits else None, seg_states=seg_states, seg_prompts=prompts,
            pred_masks=pred_masks, iou_scores=iou_scores, mask_candidates=masks if mask_candidates else None,
            candidate_iou=ious if mask_candidates else None, copy_log_probs=copy_log_probs, reading_logits=reading_logits,
        )  # fmt: skip

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

    def _check_seg_counts(self, n_seg: int, seg_image_index: torch.Tensor | None, sam_images: torch.Tensor | None) -> None:
        # bookkeeping fails loudly: a mismatch is never truncated (gt_masks: objectives.score)
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

    def _segment(
        self, prompts: torch.Tensor, sam_images: torch.Tensor | None, seg_image_index: torch.Tensor | None,
        candidates: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if prompts.shape[0] == 0:
            lead = (0, 1) if candidates else (0,)  # one (absent) candidate per [SEG]
            return prompts.new_zeros(*lead, MASK_SIZE, MASK_SIZE), prompts.new_zeros(*lead)
        assert sam_images is not None and seg_image_index is not None  # checked by _check_seg_counts
        # encode each referenced image once, however many [SEG] point at it
        used, per_seg = torch.unique(seg_image_index, return_inverse=True)
        sam_param = next(self.segmenter.parameters())  # the segmenter's device and dtype
        features = self.segmenter.encode(sam_images[used].to(sam_param.dtype))
        return self.decode_prompts(prompts, features, per_seg, candidates=candidates)

    def decode_seg_states(
        self, seg_hidden: torch.Tensor, features: SegmenterFeatures, image_index: torch.Tensor, candidates: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """[SEG] states (n_seg, H) + encoded images -> masks and predicted IoU, as ``segmenter.decode``
        returns them: the projector and the mask decoder, all that stage 4 trains (so its cached
        variant, ``citrus_v.train.cached_seg``, calls exactly this)."""
        return self.decode_prompts(self.seg_prompts(seg_hidden), features, image_index, candidates=candidates)

    def seg_prompts(self, seg_hidden: torch.Tensor) -> torch.Tensor:
        """[SEG] states (n_seg, H) -> the segmenter's prompt embeddings (n_seg, 256), HookGrad-scaled."""
        return scale_grad(self.seg_projector(seg_hidden), self.config.seg_grad_scale)

    def decode_prompts(
        self, prompts: torch.Tensor, features: SegmenterFeatures, image_index: torch.Tensor, candidates: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt embeddings (n_seg, 256) + encoded images -> masks and predicted IoU (``segmenter.decode``)."""
        dtype = features.image_embeddings.dtype
        return self.segmenter.decode(features, image_index, prompts.unsqueeze(1).to(dtype), candidates=candidates)

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
            logits=False,
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
        self, directory: str | Path, tokenizer_file: str | Path | None = None, dtype: torch.dtype | None = None,
        *, tokenizer=None, weights_only: bool = False,
    ) -> Path:
        """``dtype`` (e.g. torch.float16) stores floating-point tensors at that precision; loading
        casts them back to the model's own dtype. The folder gets ``tokenizer``'s files (with the chat
        template); without one it must already hold tokenizer.json, unless ``weights_only``
        (``citrus_v.model.checkpoint.save_pretrained``). ``Predictor.save_pretrained`` writes the whole folder."""
        return save_pretrained(self, directory, tokenizer_file=tokenizer_file, dtype=dtype, tokenizer=tokenizer,
                               weights_only=weights_only)

    @classmethod
    def from_pretrained(
        cls,
        directory: str | Path,
        device: str | torch.device = "cpu",
        config: CitrusVConfig | None = None,
        dtype: torch.dtype | None = None,
    ) -> CitrusV:
        """Build from config.json (or ``config``) and load the weights (strict); eval mode.

        The model is built on ``device`` directly in ``dtype`` (default float32) without random
        initialisation, then filled tensor by tensor from the shards (``load_state_into``): loading
        holds the weights once in that dtype, plus one stored tensor.
        """
        config = config or read_config(directory)
        with torch.device(device), _default_dtype(dtype or torch.float32), _no_init():
            model = cls(config)
        model.mllm.tie_weights()  # skipped with the random initialisation
        load_state_into(model, directory)
        for param in model.parameters():  # any a module built in float32 on purpose
            if param.is_floating_point() and param.dtype != (dtype or torch.float32):
                param.data = param.data.to(dtype or torch.float32)
        # float32 rotary tables (inv_freq, not stored) stay float32, as transformers loads them
        return model.eval()


def with_segmenter_vision(model: CitrusV, source: str = "segmenter") -> CitrusV:
    """A copy of a ``vision.source="vit"`` CitrusV whose image tokens come from its segmenter's encoder
    (``source`` "segmenter") or from both (``"vit+segmenter"``). Every other tensor is carried over; a
    new merger starts from random (zero last layer beside the ViT); "segmenter" drops the ViT."""
    if model.config.vision.source != "vit":
        raise ValueError(f"with_segmenter_vision: the model already reads images with its segmenter's encoder "
                         f"(vision.source {model.config.vision.source!r})")
    config = copy.deepcopy(model.config)
    config.vision.source = source
    config.vision.__post_init__()
    config.__post_init__()  # the litemedsam check
    new = CitrusV(config).to(next(model.parameters()).device)
    new_merger = "mllm.model.visual.merger." if source == "segmenter" else "mllm.model.visual_segmenter."
    drop_vit = source == "segmenter"
    state = {k: v for k, v in model.state_dict().items() if not (drop_vit and k.startswith("mllm.model.visual."))}
    missing, unexpected = new.load_state_dict(state, strict=False)
    left = [k for k in missing if not k.startswith(new_merger)]
    if left or unexpected:
        raise RuntimeError(f"with_segmenter_vision: {len(left)} tensor(s) not carried over {left[:5]}, {len(unexpected)} unexpected {unexpected[:5]}")
    return new.train(model.training)


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    """Tensors created inside (parameters of the modules built) default to ``dtype``."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _no_init():
    """Modules built inside skip their random initialisation (every weight is loaded afterwards)."""
    from transformers.initialization import no_init_weights

    return no_init_weights()
