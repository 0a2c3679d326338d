"""The MLLM: transformers' Qwen2.5-VL, built from our config (the only importer of it)."""

from __future__ import annotations

import torch
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from citrus_v.config import CitrusVConfig


def qwen2_5_vl_config(config: CitrusVConfig) -> Qwen2_5_VLConfig:
    """Explicit HF config (the HF default is 72B-sized, so every field is passed)."""
    llm, vis, tok = config.llm, config.vision, config.tokens
    text = {
        "vocab_size": llm.vocab_size,
        "hidden_size": llm.hidden_size,
        "intermediate_size": llm.intermediate_size,
        "num_hidden_layers": llm.num_hidden_layers,
        "num_attention_heads": llm.num_attention_heads,
        "num_key_value_heads": llm.num_key_value_heads,
        "max_position_embeddings": llm.max_position_embeddings,
        "max_window_layers": llm.num_hidden_layers,
        "rms_norm_eps": llm.rms_norm_eps,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": llm.rope_theta,
            "mrope_section": list(llm.mrope_section),
        },
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
        "tie_word_embeddings": llm.tie_word_embeddings,
        "use_sliding_window": False,
    }
    vision = {
        "depth": vis.depth,
        "hidden_size": vis.hidden_size,
        "intermediate_size": vis.intermediate_size,
        "num_heads": vis.num_heads,
        "patch_size": vis.patch_size,
        "temporal_patch_size": vis.temporal_patch_size,
        "spatial_merge_size": vis.spatial_merge_size,
        "window_size": vis.window_size,
        "tokens_per_second": vis.tokens_per_second,
        "out_hidden_size": llm.hidden_size,
        "fullatt_block_indexes": list(vis.fullatt_block_indexes),
    }
    return Qwen2_5_VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=tok.image_token_id,
        video_token_id=tok.video_token_id,
        vision_start_token_id=tok.vision_start_token_id,
        vision_end_token_id=tok.vision_end_token_id,
        tie_word_embeddings=llm.tie_word_embeddings,
    )


def build_mllm(config: CitrusVConfig) -> Qwen2_5_VLForConditionalGeneration:
    hf_config = qwen2_5_vl_config(config)
    # SDPA: the fast path on CPU and GPU alike; no flash-attn dependency
    hf_config._attn_implementation = "sdpa"
    return Qwen2_5_VLForConditionalGeneration(hf_config)


def mm_token_type_ids(input_ids: torch.Tensor, image_token_id: int, video_token_id: int) -> torch.Tensor:
    """(B, L) int: 0 text, 1 image, 2 video -- what Qwen2.5-VL needs to build M-RoPE positions.

    transformers (v5) computes the 3D (temporal, height, width) rotary positions of vision
    tokens only when it is handed these ids; without them every token, image patches
    included, gets a plain 1-D position and the LLM loses the patches' 2D layout.
    """
    types = torch.zeros_like(input_ids, dtype=torch.int32)  # (B, L)
    types[input_ids == image_token_id] = 1
    types[input_ids == video_token_id] = 2
    return types


def with_mm_token_types(inputs: dict, image_token_id: int, video_token_id: int) -> dict:
    """``inputs`` plus ``mm_token_type_ids`` when it has images and lacks them (a new dict)."""
    if inputs.get("pixel_values") is None or inputs.get("mm_token_type_ids") is not None:
        return inputs
    return {**inputs, "mm_token_type_ids": mm_token_type_ids(inputs["input_ids"], image_token_id, video_token_id)}
