"""Loading a model folder (for inference, training and evaluation): ours or the published Citrus-V checkpoint.

Two layouts are accepted:

* ours (``citrus-v train`` / ``CitrusV.save_pretrained``): config.json with ``format_version``,
  model.safetensors, tokenizer.json;
* published (the released 8B folder): a flat Qwen2.5-VL style config.json with
  ``"model_type": "citrus_v"``, ``seg_token_idx`` and ``grounding_encoder_config.cfg_path`` naming
  the SAM2 yaml, weights sharded behind model.safetensors.index.json (either MLLM key spelling),
  the tokenizer's own files, preprocessor_config.json.

Weights go through ``citrus_v.model.checkpoint`` (published-name mapping) in both cases; the
tokenizer always comes from the folder's own files (``load_tokenizer``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import torch

from citrus_v.config import CitrusVConfig, LLMConfig, SegmenterConfig, TokenIds, VisionConfig, citrus_v_8b_config
from citrus_v.model.checkpoint import ModelFolderError

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
PREPROCESSOR_FILE = "preprocessor_config.json"
# SAM2 yaml named by the published config -> our segmenter shapes
SAM2_CONFIGS = {"sam2_hiera_l.yaml": lambda: citrus_v_8b_config().segmenter}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: missing (a model folder needs {path.name})") from None
    except json.JSONDecodeError as err:
        raise ModelFolderError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise ModelFolderError(f"{path}: expected a JSON object")
    return data


def checkpoint_layout(directory: Path) -> str:
    """``"citrus_v"`` (ours: config.json has format_version) or ``"published"``."""
    data = _read_json(directory / CONFIG_FILE)
    if "format_version" in data:
        return "citrus_v"
    if "vision_config" in data and "hidden_size" in data:
        return "published"
    raise ModelFolderError(f"{directory / CONFIG_FILE}: neither our layout (format_version) nor the published one (vision_config)")


def published_config(data: dict[str, Any], segmenter: SegmenterConfig | None = None, where: str = CONFIG_FILE) -> CitrusVConfig:
    """CitrusVConfig from a published config.json. The SAM2 shapes are not in that file: they come
    from the yaml it names (``grounding_encoder_config.cfg_path``) unless ``segmenter`` is given."""

    def get(mapping: dict[str, Any], key: str, ctx: str) -> Any:
        if key not in mapping:
            raise ModelFolderError(f"{where}: field {ctx}{key} is missing")
        return mapping[key]

    vis = get(data, "vision_config", "")
    rope = data.get("rope_scaling") or data.get("rope_parameters") or {}
    llm = LLMConfig(
        vocab_size=get(data, "vocab_size", ""),
        hidden_size=get(data, "hidden_size", ""),
        intermediate_size=get(data, "intermediate_size", ""),
        num_hidden_layers=get(data, "num_hidden_layers", ""),
        num_attention_heads=get(data, "num_attention_heads", ""),
        num_key_value_heads=get(data, "num_key_value_heads", ""),
        mrope_section=list(get(rope, "mrope_section", "rope_scaling.")),
        rope_theta=float(data.get("rope_theta", rope.get("rope_theta", 1_000_000.0))),
        rms_norm_eps=float(data.get("rms_norm_eps", 1e-6)),
        max_position_embeddings=int(data.get("max_position_embeddings", 128_000)),
        tie_word_embeddings=bool(data.get("tie_word_embeddings", False)),
    )
    vision = VisionConfig(
        **{k: get(vis, k, "vision_config.") for k in ("depth", "hidden_size", "intermediate_size", "num_heads")},
        fullatt_block_indexes=list(get(vis, "fullatt_block_indexes", "vision_config.")),
        **{k: vis[k] for k in ("patch_size", "temporal_patch_size", "spatial_merge_size", "window_size", "tokens_per_second") if k in vis},
    )
    bos = get(data, "bos_token_id", "")
    tokens = TokenIds(
        eos_token_id=get(data, "eos_token_id", ""),
        bos_token_id=bos,
        image_token_id=get(data, "image_token_id", ""),
        video_token_id=get(data, "video_token_id", ""),
        vision_start_token_id=get(data, "vision_start_token_id", ""),
        vision_end_token_id=get(data, "vision_end_token_id", ""),
        vision_token_id=get(data, "vision_token_id", ""),
        seg_token_id=get(data, "seg_token_idx", ""),
        pad_token_id=data.get("pad_token_id", bos),  # Qwen2.5 pads with <|endoftext|> = its bos
    )
    if segmenter is None:
        yaml = Path(str(get(get(data, "grounding_encoder_config", ""), "cfg_path", "grounding_encoder_config."))).name
        if yaml not in SAM2_CONFIGS:
            raise ModelFolderError(f"{where}: grounding_encoder_config.cfg_path names {yaml!r}; known SAM2 configs: {sorted(SAM2_CONFIGS)}")
        segmenter = SAM2_CONFIGS[yaml]()
    # the published SAM2 path never applies the object-score gate (its torch.where is commented
    # out, architectures/sam2_base.py), and its boxes are the ones the model writes
    segmenter = dataclasses.replace(segmenter, object_score_gate=False)
    return CitrusVConfig(llm=llm, vision=vision, segmenter=segmenter, tokens=tokens, name="published", tighten_boxes=False)


def published_config_dict(config: CitrusVConfig, sam2_yaml: str = "sam2_hiera_l.yaml") -> dict[str, Any]:
    """The published config.json for ``config`` (inverse of :func:`published_config`)."""
    llm, vis, tok = config.llm, config.vision, config.tokens
    return {
        "architectures": ["CitrusV"],
        "model_type": "citrus_v",
        **{k: getattr(llm, k) for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                         "num_attention_heads", "num_key_value_heads", "rope_theta", "rms_norm_eps",
                                         "max_position_embeddings", "tie_word_embeddings")},
        "rope_scaling": {"type": "mrope", "mrope_section": list(llm.mrope_section)},
        "vision_config": {k: getattr(vis, k) for k in ("depth", "hidden_size", "intermediate_size", "num_heads",
                                                       "fullatt_block_indexes", "patch_size", "temporal_patch_size",
                                                       "spatial_merge_size", "window_size", "tokens_per_second")},
        **{k: getattr(tok, k) for k in ("eos_token_id", "bos_token_id", "image_token_id", "video_token_id",
                                         "vision_start_token_id", "vision_end_token_id", "vision_token_id", "pad_token_id")},
        "seg_token_idx": tok.seg_token_id,
        "grounding_encoder_config": {"cfg_path": sam2_yaml},
    }  # fmt: skip


def _check_same(loaded: CitrusVConfig, given: CitrusVConfig, where: Path) -> None:
    diffs = [
        f"{part}.{k}: file {v!r} vs given {getattr(getattr(given, part), k)!r}"
        for part in ("llm", "vision", "tokens")
        for k, v in vars(getattr(loaded, part)).items()
        if getattr(getattr(given, part), k) != v
    ]
    if diffs:
        raise ModelFolderError(f"{where}: the given config disagrees with the checkpoint's: " + "; ".join(diffs))


# The published deploy / segmentation-eval range: swift passes MAX_PIXELS=65535 to qwen_vl_utils
# (README "Deploy", eval/eval_segmentation.py) and leaves MIN_PIXELS at qwen_vl_utils' 4*28*28.
PUBLISHED_DEPLOY_PIXELS = (4 * 28 * 28, 65_535)
# Qwen2.5-VL's stock preprocessor_config.json range: not a choice of the published model (its
# template resizes every image with the range above before the processor sees it)
QWEN_STOCK_PIXELS = (3_136, 12_845_056)


def pixel_range(
    directory: Path, layout: str, min_pixels: int | None = None, max_pixels: int | None = None
) -> tuple[int, int, str]:
    """(min_pixels, max_pixels, where they came from): the flags, else the folder's
    preprocessor_config.json, else the layout's default. A published folder's file that carries
    Qwen's stock range does not count (the published template never used it)."""
    from citrus_v.data.image_processing import ImageConfig

    if layout == "published":
        low, high, source = *PUBLISHED_DEPLOY_PIXELS, "the published deploy range"
    else:
        low, high, source = ImageConfig.min_pixels, ImageConfig.max_pixels, "the default range"
    path = directory / PREPROCESSOR_FILE
    if path.is_file():
        pre = _read_json(path)
        found = (int(pre.get("min_pixels", low)), int(pre.get("max_pixels", high)))
        if layout == "published" and found == QWEN_STOCK_PIXELS:
            source += f" ({PREPROCESSOR_FILE}'s Qwen stock range {found[0]}..{found[1]} ignored)"
        elif "min_pixels" in pre or "max_pixels" in pre:
            low, high, source = *found, str(path)
    if min_pixels is not None or max_pixels is not None:
        low, high = min_pixels or low, max_pixels or high
        source = "--min-pixels/--max-pixels"
    return low, high, source


# the transformers image processor ImageProcessor.qwen runs: AutoImageProcessor builds it from the file
QWEN_IMAGE_PROCESSOR = "Qwen2VLImageProcessorPil"


def write_preprocessor_config(directory: Path, image_cfg) -> Path:
    """preprocessor_config.json: the image sizing ``pixel_range`` reads back, written so that
    ``AutoImageProcessor.from_pretrained(directory)`` is the ViT side of our processor (same patches)."""
    pre = {"image_processor_type": QWEN_IMAGE_PROCESSOR,
           "min_pixels": image_cfg.min_pixels, "max_pixels": image_cfg.max_pixels, "patch_size": image_cfg.patch_size,
           "merge_size": image_cfg.merge_size, "temporal_patch_size": image_cfg.temporal_patch_size,
           "size": {"shortest_edge": image_cfg.min_pixels, "longest_edge": image_cfg.max_pixels}}
    path = Path(directory) / PREPROCESSOR_FILE
    path.write_text(json.dumps(pre, indent=2) + "\n", encoding="utf-8")
    return path


def image_config_for(
    directory: Path, config: CitrusVConfig, layout: str, min_pixels: int | None = None, max_pixels: int | None = None
):
    """Image sizing: the pixel range of :func:`pixel_range`; patch sizes always from the model config
    (the ViT fixes them) and SAM size from the segmenter; a published folder's SAM input is made
    from the smart-resized image (``sam_source``), as its template does."""
    from citrus_v.data.image_processing import ImageConfig

    low, high, source = pixel_range(directory, layout, min_pixels, max_pixels)
    try:
        return ImageConfig(
            min_pixels=low,
            max_pixels=high,
            patch_size=config.vision.patch_size,
            merge_size=config.vision.spatial_merge_size,
            temporal_patch_size=config.vision.temporal_patch_size,
            sam_image_size=config.segmenter.image_size,
            sam_pixel_norm=config.segmenter.pixel_norm,
            sam_source="smart_resized" if layout == "published" else "original",
            pixel_source=source,
        )
    except ValueError as err:
        raise ModelFolderError(f"pixel range from {source}: {err}") from None


def resolve_model_path(name: str | Path) -> Path:
    """A model folder on disk as it is; a hub id (``org/name``) that is no folder here -> its
    snapshot in the local Hugging Face cache (never downloaded at run time); otherwise a one-line
    FileNotFoundError that says how to download it."""
    path = Path(name)
    text = str(name)
    if path.exists() or text.count("/") != 1 or text.startswith((".", "/")):
        return path
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(text, local_files_only=True))
    except (LocalEntryNotFoundError, ValueError, OSError):
        raise FileNotFoundError(
            f"{text}: no such folder, and the hub model {text} is not in the local Hugging Face cache "
            f"({constants.HF_HUB_CACHE}); download it first with `hf download {text}` (nothing is fetched "
            "at run time), or pass a model folder"
        ) from None


def folder_config(directory: Path, config: CitrusVConfig | None = None) -> tuple[CitrusVConfig, str]:
    """(the folder's CitrusVConfig, its layout) for either layout; ``config``, when given, must agree
    with the folder's (for a published folder it supplies the SAM2 shapes)."""
    from citrus_v.model.checkpoint import read_config

    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: no such model folder")
    layout = checkpoint_layout(directory)
    if layout == "published":
        loaded = published_config(_read_json(directory / CONFIG_FILE), config.segmenter if config else None, str(directory / CONFIG_FILE))
    else:
        loaded = read_config(directory)
    if config is not None:
        _check_same(loaded, config, directory)
    return loaded, layout


def load_model_and_tokenizer(
    directory: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    config: CitrusVConfig | None = None,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
):
    """-> (CitrusV in eval mode, tokenizer, ChatTemplate) for a folder of either layout, its weights
    loaded straight into ``dtype`` on ``device``; ``min/max_pixels`` override the folder's range."""
    from citrus_v.data.template import ChatTemplate
    from citrus_v.data.tokenizer import TokenIds as TokenizerIds
    from citrus_v.data.tokenizer import load_tokenizer
    from citrus_v.model.citrus_v import CitrusV

    directory = resolve_model_path(directory)
    loaded, layout = folder_config(directory, config)
    model = CitrusV.from_pretrained(directory, device=device, config=loaded, dtype=dtype)
    tokenizer = load_tokenizer(directory)
    ids = TokenizerIds.from_tokenizer(tokenizer)
    pairs = {"seg_token_id": ids.seg, "image_token_id": ids.image_pad, "eos_token_id": ids.im_end}
    wrong = [f"{k}={getattr(loaded.tokens, k)} but the tokenizer says {v}" for k, v in pairs.items() if getattr(loaded.tokens, k) != v]
    if wrong:
        raise ModelFolderError(f"{directory}: config and tokenizer disagree: " + "; ".join(wrong))
    image_cfg = image_config_for(directory, loaded, layout, min_pixels, max_pixels)
    logger.info("%s: images resized to %d..%d pixels (%s)", directory, image_cfg.min_pixels, image_cfg.max_pixels, image_cfg.pixel_source)
    return model, tokenizer, ChatTemplate(tokenizer, image_cfg, ids)
