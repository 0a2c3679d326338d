"""Validated configuration dataclasses.

The model part is :class:`CitrusVConfig` (with :class:`Preset` objects ``tiny``, ``tiny_litemedsam``, ``8b``) and its
sub-configs. Every dataclass checks itself in ``__post_init__`` and names the bad field.
Other areas may add their own dataclasses below the model section.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable


def _require(ok: bool, where: str, message: str) -> None:
    if not ok:
        raise ValueError(f"{where}: {message}")


def _positive(where: str, **values: int | float) -> None:
    for name, value in values.items():
        _require(value > 0, f"{where}.{name}", f"must be > 0, got {value!r}")


@dataclass
class LLMConfig:
    """The Qwen2.5 language model inside Qwen2.5-VL."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    mrope_section: list[int]
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 128_000
    tie_word_embeddings: bool = False

    def __post_init__(self) -> None:
        w = "LLMConfig"
        _positive(
            w,
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads,
            rope_theta=self.rope_theta,
        )
        _require(
            self.hidden_size % self.num_attention_heads == 0,
            f"{w}.hidden_size",
            f"{self.hidden_size} is not divisible by num_attention_heads={self.num_attention_heads}",
        )
        _require(
            self.num_attention_heads % self.num_key_value_heads == 0,
            f"{w}.num_key_value_heads",
            f"{self.num_key_value_heads} does not divide num_attention_heads={self.num_attention_heads}",
        )
        head_dim = self.hidden_size // self.num_attention_heads
        # M-RoPE splits half the head dimension into (temporal, height, width) sections
        _require(
            len(self.mrope_section) == 3 and sum(self.mrope_section) * 2 == head_dim,
            f"{w}.mrope_section",
            f"{self.mrope_section} must be 3 sections summing to head_dim/2={head_dim // 2}",
        )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


VISION_SOURCES = ("vit", "segmenter", "vit+segmenter")


@dataclass
class VisionConfig:
    """The Qwen2.5-VL ViT and its patch merger.

    ``source`` says where the image tokens come from: ``"vit"`` (the published architecture: the
    Qwen2.5-VL ViT and merger), ``"segmenter"`` (a documented deviation for the tiny preset only:
    the segmenter's pretrained LiteMedSAM image encoder, pooled to the ViT's merged grid and
    projected by a merger of its own; citrus_v.model.segmenter_vision) or ``"vit+segmenter"`` (the
    sum of both, token by token). With ``"segmenter"`` the ViT fields still set the patch geometry
    the processor uses; the ViT itself is not built.
    """

    depth: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    fullatt_block_indexes: list[int]
    patch_size: int = 14
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    window_size: int = 112
    tokens_per_second: int = 2
    source: str = "vit"

    def __post_init__(self) -> None:
        w = "VisionConfig"
        _require(self.source in VISION_SOURCES, f"{w}.source", f"must be one of {VISION_SOURCES}, got {self.source!r}")
        _positive(
            w,
            depth=self.depth,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_heads=self.num_heads,
            patch_size=self.patch_size,
            temporal_patch_size=self.temporal_patch_size,
            spatial_merge_size=self.spatial_merge_size,
            window_size=self.window_size,
        )
        _require(
            self.hidden_size % self.num_heads == 0,
            f"{w}.hidden_size",
            f"{self.hidden_size} is not divisible by num_heads={self.num_heads}",
        )
        for i in self.fullatt_block_indexes:
            _require(0 <= i < self.depth, f"{w}.fullatt_block_indexes", f"index {i} outside depth {self.depth}")
        unit = self.patch_size * self.spatial_merge_size
        _require(
            self.window_size % unit == 0,
            f"{w}.window_size",
            f"{self.window_size} must be a multiple of patch_size*spatial_merge_size={unit}",
        )


SEGMENTER_KINDS = ("sam2", "litemedsam")
PIXEL_NORMS = ("imagenet", "minmax")


@dataclass
class SegmenterConfig:
    """The segmentation side: ``kind="sam2"`` or ``kind="litemedsam"``.

    SAM2: Hiera image encoder + FPN neck, prompt encoder, mask decoder, memory modules. The
    memory modules (memory attention / encoder, object pointers) are unused for single images
    but held so every published tensor has a home.

    LiteMedSAM (citrus_v/model/litemedsam.py): TinyViT-5M encoder (its geometry is fixed by the
    pretrained checkpoint) + SAM-1 prompt encoder and mask decoder. It reads ``image_size``,
    ``hidden_size`` and the ``decoder_*`` fields; the Hiera and memory fields are ignored.
    """

    image_size: int  # SAM2 input side S (1024 for 8b); images are stretched to S x S
    embed_dim: int  # Hiera stage-1 width; doubles each stage
    blocks_per_stage: list[int]
    num_heads: int  # stage-1 heads; doubles each stage
    global_attention_blocks: list[int]
    window_size_per_stage: list[int]
    window_pos_embed_bkg_size: list[int] = field(default_factory=lambda: [7, 7])
    hidden_size: int = 256  # FPN / prompt / decoder width: the [SEG] projection target
    decoder_mlp_dim: int = 2048
    decoder_num_layers: int = 2
    decoder_num_heads: int = 8
    memory_attention_num_layers: int = 4
    memory_attention_ff_dim: int = 2048
    memory_channels: int = 64
    memory_fuser_num_layers: int = 2
    memory_fuser_dim: int = 1024
    num_maskmem: int = 7
    # Stock SAM2 replaces the masks of prompts whose object score is <= 0 with a large negative
    # constant. The published Citrus-V path has that step commented out (from Sa2VA) and never
    # trains the object-score head, so the 8b preset and published folders keep it off; off too
    # for small models in training, where it would cut the mask gradient of every "no object" guess.
    object_score_gate: bool = False
    kind: str = "sam2"
    # how SAM images are scaled: "imagenet" (SAM2: /255 then ImageNet mean/std) or "minmax"
    # (LiteMedSAM: each image's own min -> 0, max -> 1)
    pixel_norm: str = "imagenet"

    def __post_init__(self) -> None:
        w = "SegmenterConfig"
        _require(self.kind in SEGMENTER_KINDS, f"{w}.kind", f"must be one of {SEGMENTER_KINDS}, got {self.kind!r}")
        _require(
            self.pixel_norm in PIXEL_NORMS, f"{w}.pixel_norm", f"must be one of {PIXEL_NORMS}, got {self.pixel_norm!r}"
        )
        _require(
            not (self.kind == "litemedsam" and self.object_score_gate),
            f"{w}.object_score_gate",
            "LiteMedSAM (SAM-1 decoder) has no object-score head; set it to False",
        )
        _positive(
            w,
            image_size=self.image_size,
            embed_dim=self.embed_dim,
            num_heads=self.num_heads,
            hidden_size=self.hidden_size,
            decoder_mlp_dim=self.decoder_mlp_dim,
            decoder_num_layers=self.decoder_num_layers,
            memory_attention_num_layers=self.memory_attention_num_layers,
            memory_fuser_num_layers=self.memory_fuser_num_layers,
        )
        _require(len(self.blocks_per_stage) == 4, f"{w}.blocks_per_stage", f"needs 4 stages, got {self.blocks_per_stage}")
        _require(
            len(self.window_size_per_stage) == 4,
            f"{w}.window_size_per_stage",
            f"needs 4 stages, got {self.window_size_per_stage}",
        )
        n_blocks = sum(self.blocks_per_stage)
        for i in self.global_attention_blocks:
            _require(0 <= i < n_blocks, f"{w}.global_attention_blocks", f"block {i} outside 0..{n_blocks - 1}")
        # patch stride 4, then 3 query-pool stages of 2: the lowest-resolution map is S/32,
        # and the mask decoder's 4x upscaling of the S/16 map gives S/4 = the mask side
        _require(self.image_size % 32 == 0, f"{w}.image_size", f"{self.image_size} must be a multiple of 32")
        _require(self.hidden_size % 8 == 0, f"{w}.hidden_size", f"{self.hidden_size} must be a multiple of 8")

    @property
    def embed_dims(self) -> list[int]:
        return [self.embed_dim * 2**i for i in range(4)]

    @property
    def mask_size(self) -> int:
        """Side of the low-resolution logits the decoder emits (256 for a 1024 input)."""
        return self.image_size // 4


@dataclass
class TokenIds:
    """Special-token ids the model needs (tokenizer-specific; see docs/ARCHITECTURE.md)."""

    eos_token_id: int
    bos_token_id: int
    image_token_id: int
    video_token_id: int
    vision_start_token_id: int
    vision_end_token_id: int
    vision_token_id: int
    seg_token_id: int
    pad_token_id: int

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            _require(isinstance(value, int) and value >= 0, f"TokenIds.{f.name}", f"must be an id >= 0, got {value!r}")


@dataclass
class LossConfig:
    """LM cross-entropy + bce_weight x sigmoid BCE + dice_weight x Dice (eps in num and den)."""

    bce_weight: float = 2.0
    dice_weight: float = 1.0
    dice_eps: float = 1.0
    # Published: BCE/Dice on the candidate with the best PREDICTED IoU, no IoU-head loss (its SAM2
    # starts pretrained). A segmenter trained from scratch needs the IoU head taught and benefits
    # from SAM's own min-loss candidate rule: the tiny preset sets iou_weight=1, "min_loss".
    iou_weight: float = 0.0
    mask_selection: str = "predicted_iou"
    # Not in the published recipe (0 = off): pull each projected [SEG] embedding towards the
    # segmenter's own prompt embedding of a positive point at its ground-truth mask's centroid,
    # a way in for location when SAM2 is trained from scratch (docs/default_model.md).
    point_align_weight: float = 0.0

    def __post_init__(self) -> None:
        for name in ("bce_weight", "dice_weight", "iou_weight", "point_align_weight"):
            _require(getattr(self, name) >= 0, f"LossConfig.{name}", f"must be >= 0, got {getattr(self, name)}")
        _positive("LossConfig", dice_eps=self.dice_eps)
        _require(
            self.mask_selection in ("predicted_iou", "min_loss"),
            "LossConfig.mask_selection",
            f"must be 'predicted_iou' or 'min_loss', got {self.mask_selection!r}",
        )

    @property
    def over_candidates(self) -> bool:
        """Whether the mask loss needs every multimask candidate (IoU-head loss or min-loss pick)."""
        return self.iou_weight > 0 or self.mask_selection != "predicted_iou"


@dataclass
class CitrusVConfig:
    """Qwen2.5-VL + [SEG] projector + SAM2, as one validated config."""

    llm: LLMConfig
    vision: VisionConfig
    segmenter: SegmenterConfig
    tokens: TokenIds
    loss: LossConfig = field(default_factory=LossConfig)
    # Stage-3 "HookGrad": scale the gradient flowing back through the projector output
    # (1.0 = off; the published stage 3 uses 0.001). The forward value is unchanged.
    seg_grad_scale: float = 1.0
    name: str = "custom"
    # whether the Predictor replaces each box the model writes by the segmenter's outline of it by
    # default (--tighten-boxes / --text-boxes override): the shipped default does; the published
    # model (and the 8b preset, its shapes) returns the box as written
    tighten_boxes: bool = True

    def __post_init__(self) -> None:
        # accept plain dicts (from config.json) for the nested parts
        for key, cls in _SUBCONFIGS.items():
            value = getattr(self, key)
            if isinstance(value, dict):
                setattr(self, key, _from_dict(cls, value, f"CitrusVConfig.{key}"))
            elif not isinstance(value, cls):
                raise ValueError(f"CitrusVConfig.{key}: expected {cls.__name__} or dict, got {type(value).__name__}")
        _require(self.seg_grad_scale >= 0, "CitrusVConfig.seg_grad_scale", f"must be >= 0, got {self.seg_grad_scale}")
        _require(
            self.vision.source == "vit" or self.segmenter.kind == "litemedsam",
            "CitrusVConfig.vision.source",
            f"{self.vision.source!r} needs segmenter.kind 'litemedsam' (a TinyViT to read images with), got {self.segmenter.kind!r}",
        )
        _require(isinstance(self.tighten_boxes, bool), "CitrusVConfig.tighten_boxes", f"must be true or false, got {self.tighten_boxes!r}")
        vocab = self.llm.vocab_size
        for f in dataclasses.fields(self.tokens):
            value = getattr(self.tokens, f.name)
            _require(value < vocab, f"CitrusVConfig.tokens.{f.name}", f"id {value} >= llm.vocab_size {vocab}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CitrusVConfig:
        return _from_dict(cls, data, "CitrusVConfig")

    @classmethod
    def preset(cls, name: str) -> CitrusVConfig:
        """A fresh config of the preset called ``name`` (see :class:`Preset`)."""
        return get_preset(name).config()


_SUBCONFIGS: dict[str, type] = {
    "llm": LLMConfig,
    "vision": VisionConfig,
    "segmenter": SegmenterConfig,
    "tokens": TokenIds,
    "loss": LossConfig,
}


def _from_dict(cls: type, data: dict[str, Any], where: str) -> Any:
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown}; known: {sorted(known)}")
    try:
        return cls(**data)
    except TypeError as err:  # a missing required field
        raise ValueError(f"{where}: {err}") from None


def tiny_config() -> CitrusVConfig:
    """CPU-sized model: the shipped default is trained from this on 2 cores (<= 50 MB fp32)."""
    return CitrusVConfig(
        name="tiny",
        llm=LLMConfig(
            vocab_size=4096,
            hidden_size=256,
            intermediate_size=768,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            mrope_section=[8, 12, 12],  # head_dim 64
            max_position_embeddings=8192,
        ),
        vision=VisionConfig(
            depth=4,
            hidden_size=128,
            intermediate_size=384,
            num_heads=4,
            fullatt_block_indexes=[1, 3],
        ),
        segmenter=SegmenterConfig(
            image_size=256,
            embed_dim=24,
            blocks_per_stage=[1, 1, 2, 1],
            num_heads=1,
            global_attention_blocks=[3],
            window_size_per_stage=[8, 4, 8, 4],
            decoder_mlp_dim=512,
            memory_attention_num_layers=1,
            memory_attention_ff_dim=256,
            memory_fuser_num_layers=1,
            memory_fuser_dim=256,
        ),
        tokens=TokenIds(
            eos_token_id=2,  # <|im_end|> ends an assistant turn
            bos_token_id=0,
            image_token_id=6,
            video_token_id=7,
            vision_start_token_id=3,
            vision_end_token_id=4,
            vision_token_id=5,
            seg_token_id=10,
            pad_token_id=0,
        ),
        # its SAM2 starts from random weights: teach the IoU head, train the best-fitting candidate
        loss=LossConfig(iou_weight=1.0, mask_selection="min_loss"),
    )


def citrus_v_8b_config() -> CitrusVConfig:
    """The published Citrus-V 8B shapes (reference/citrus_v_8b_config.json, SAM2 Hiera-L)."""
    return CitrusVConfig(
        name="8b",
        llm=LLMConfig(
            vocab_size=152064,
            hidden_size=3584,
            intermediate_size=18944,
            num_hidden_layers=28,
            num_attention_heads=28,
            num_key_value_heads=4,
            mrope_section=[16, 24, 24],
            rope_theta=1_000_000.0,
            rms_norm_eps=1e-6,
            max_position_embeddings=128_000,
        ),
        vision=VisionConfig(
            depth=32,
            hidden_size=1280,
            intermediate_size=3420,
            num_heads=16,
            fullatt_block_indexes=[7, 15, 23, 31],
        ),
        segmenter=SegmenterConfig(
            image_size=1024,
            embed_dim=144,
            blocks_per_stage=[2, 6, 36, 4],
            num_heads=2,
            global_attention_blocks=[23, 33, 43],
            window_size_per_stage=[8, 4, 16, 8],
        ),
        tokens=TokenIds(
            eos_token_id=151645,
            bos_token_id=151643,
            image_token_id=151655,
            video_token_id=151656,
            vision_start_token_id=151652,
            vision_end_token_id=151653,
            vision_token_id=151654,
            seg_token_id=151665,
            pad_token_id=151643,
        ),
        tighten_boxes=False,
    )


def tiny_litemedsam_config() -> CitrusVConfig:
    """The tiny LLM/ViT with LiteMedSAM as the segmenter (initialise it with
    ``citrus_v.model.litemedsam.load_litemedsam_weights``): SAM-1 decoder sizes, min-max pixels."""
    config = tiny_config()
    config.name = "tiny_litemedsam"
    config.segmenter = dataclasses.replace(
        config.segmenter,
        kind="litemedsam",
        pixel_norm="minmax",
        image_size=256,
        hidden_size=256,
        decoder_mlp_dim=2048,
        decoder_num_layers=2,
        decoder_num_heads=8,
    )
    return config


@dataclass(frozen=True)
class Preset:
    """A named model size: its config and what the rest of the package needs to know about it.

    Code asks the preset (``get_preset(name).cpu_sized``), never compares its name.
    """

    name: str
    build: Callable[[], CitrusVConfig]  # a fresh CitrusVConfig (mutable: one per call)
    # small enough for a CPU: trained on the tiny smoke schedule, with a BPE tokenizer trained on
    # the run's own text (the 8b uses the published schedule and the real Qwen2.5 tokenizer)
    cpu_sized: bool
    description: str

    def config(self) -> CitrusVConfig:
        return self.build()


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("tiny", tiny_config, cpu_sized=True, description="CPU-sized SAM2 model (the shipped default's shape)"),
        Preset("tiny_litemedsam", tiny_litemedsam_config, cpu_sized=True,
               description="tiny with the pretrained LiteMedSAM segmenter"),
        Preset("8b", citrus_v_8b_config, cpu_sized=False, description="the published Citrus-V 8B shapes"),
    )
}  # fmt: skip


def get_preset(name: str) -> Preset:
    """The preset called ``name``; a ValueError naming the known ones otherwise."""
    if name not in PRESETS:
        raise ValueError(f"unknown config preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]
