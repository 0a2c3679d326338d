"""vision.source "segmenter": image tokens from the segmenter's TinyViT, in the ViT's merged-token order."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from citrus_v.config import PRESETS, CitrusVConfig
from citrus_v.data.image_processing import ImageConfig, ImageProcessor
from citrus_v.model.build import build_model
from citrus_v.model.citrus_v import CitrusV, with_segmenter_vision
from citrus_v.model.segmenter_vision import QWEN_IMAGE_MEAN, QWEN_IMAGE_STD, SegmenterVision, unpatchify
from tests.model.conftest import make_batch


def _lite_config() -> CitrusVConfig:
    return CitrusVConfig.preset("tiny_litemedsam")


def _seg_vision_config() -> CitrusVConfig:
    config = _lite_config()
    config.vision = dataclasses.replace(config.vision, source="segmenter")
    config.__post_init__()
    return config


def _images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [(rng.random((150, 200, 3)) * 255).astype(np.uint8), (rng.random((90, 60, 3)) * 255).astype(np.uint8)]


def test_normalisation_constants_are_the_processors():
    proc = Qwen2VLImageProcessorPil()
    assert tuple(proc.image_mean) == QWEN_IMAGE_MEAN and tuple(proc.image_std) == QWEN_IMAGE_STD


def test_unpatchify_rebuilds_each_resized_image():
    processor = ImageProcessor(ImageConfig.tiny())
    images = _images()
    pixel_values, grids = processor.qwen(images)
    offset = 0
    for image, grid in zip(images, grids):
        n = int(grid.prod())
        rebuilt = unpatchify(pixel_values[offset : offset + n], tuple(grid.tolist()), 14, 2, 2)  # (3, H, W)
        offset += n
        h, w = processor.resized_hw(*image.shape[:2])
        assert rebuilt.shape == (3, h, w)
        expected = np.asarray(Image.fromarray(image).resize((w, h), processor._qwen.resample), dtype=np.float32) / 255
        pixels = rebuilt.permute(1, 2, 0).numpy() * np.array(QWEN_IMAGE_STD) + np.array(QWEN_IMAGE_MEAN)
        np.testing.assert_allclose(pixels, expected, atol=1e-5)


class _CoordinateEncoder(nn.Module):
    """A stand-in encoder whose map holds each cell's (row, column) in channels 0 and 1."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        n, side = images.shape[0], images.shape[-1] // 4
        rows, cols = torch.meshgrid(torch.arange(side, dtype=torch.float32), torch.arange(side, dtype=torch.float32), indexing="ij")
        fmap = torch.zeros(n, 256, side, side)
        fmap[:, 0], fmap[:, 1] = rows, cols
        return fmap


def test_tokens_follow_the_merged_patch_order():
    vision = SegmenterVision(_seg_vision_config(), _CoordinateEncoder())
    grids = torch.tensor([[1, 8, 8], [1, 12, 16]])
    pixel_values = torch.randn(int(grids.prod(1).sum()), 3 * 2 * 14 * 14)
    with torch.no_grad():
        out = vision(pixel_values, grid_thw=grids)
    assert out.pooler_output.shape == (16 + 48, 256)
    tokens = out.last_hidden_state[16:].reshape(6, 8, 2, 2, 256)  # image 2: (h/2, w/2, 2, 2, C)
    # patch (r, c) of a 12 x 16 grid averages the 64 x 64 map's rows r*64/12.. and columns c*4..c*4+3
    for hb, wb, hm, wm in [(0, 0, 0, 0), (2, 5, 1, 0), (5, 7, 1, 1)]:
        r, c = 2 * hb + hm, 2 * wb + wm
        row_lo, row_hi = (r * 64) // 12, -((-(r + 1) * 64) // 12)
        assert tokens[hb, wb, hm, wm, 0].item() == pytest.approx((row_lo + row_hi - 1) / 2)
        assert tokens[hb, wb, hm, wm, 1].item() == pytest.approx(4 * c + 1.5)


def _counting(encoder: nn.Module) -> list[int]:
    calls = [0]
    encoder.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_a_frozen_encoder_runs_once_per_image_and_changed_weights_are_not_served_stale():
    model = build_model(_seg_vision_config(), seed=1).eval()
    model.set_trainable(["merger", "llm"])
    vision = model.mllm.model.visual
    calls = _counting(model.segmenter.image_encoder)
    pixel_values, grids = ImageProcessor(ImageConfig.tiny()).qwen(_images())
    first = vision(pixel_values, grid_thw=grids).pooler_output
    again = vision(pixel_values, grid_thw=grids).pooler_output
    assert calls[0] == 1 and torch.equal(first, again)
    with torch.no_grad():
        next(model.segmenter.image_encoder.parameters()).mul_(1.5)
    changed = vision(pixel_values, grid_thw=grids).pooler_output
    assert calls[0] == 2 and not torch.allclose(first, changed)


def test_a_trainable_encoder_gets_gradients_and_no_cache():
    model = build_model(_seg_vision_config(), seed=1).train()
    model.set_trainable(["merger", "sam2_image_encoder"])
    calls = _counting(model.segmenter.image_encoder)
    pixel_values, grids = ImageProcessor(ImageConfig.tiny()).qwen(_images()[:1])
    for _ in range(2):
        model.mllm.model.visual(pixel_values, grid_thw=grids).pooler_output.square().mean().backward()
    assert calls[0] == 2
    assert all(p.grad is not None for p in model.segmenter.image_encoder.parameters() if p.requires_grad)


def test_with_segmenter_vision_keeps_every_other_tensor_and_round_trips(tmp_path):
    source = build_model(_lite_config(), seed=3).eval()
    model = with_segmenter_vision(source).eval()
    assert model.config.vision.source == "segmenter" and source.config.vision.source == "vit"
    old, new = source.state_dict(), model.state_dict()
    visual = {k for k in new if k.startswith("mllm.model.visual.")}
    assert visual and all(k.startswith("mllm.model.visual.merger.") for k in visual)
    assert model.parameter_counts()["vision_encoder"] == 0
    for key in set(new) - visual:
        assert torch.equal(new[key], old[key]), key
    model.save_pretrained(tmp_path, weights_only=True)
    assert json.loads((tmp_path / "config.json").read_text())["vision"]["source"] == "segmenter"
    loaded = CitrusV.from_pretrained(tmp_path)
    batch = make_batch(model.config)
    batch = {k: v for k, v in batch.items() if k not in ("labels", "gt_masks")}
    with torch.no_grad():
        a, b = model(**batch), loaded(**batch)
    torch.testing.assert_close(a.logits, b.logits)
    torch.testing.assert_close(a.pred_masks, b.pred_masks)
    with pytest.raises(ValueError, match="already reads images"):
        with_segmenter_vision(model)


def test_source_is_validated_and_opt_in():
    with pytest.raises(ValueError, match=r"VisionConfig\.source: must be one of"):
        dataclasses.replace(_lite_config().vision, source="clip")
    config = CitrusVConfig.preset("tiny")  # a SAM2 segmenter: no TinyViT to read with
    config.vision = dataclasses.replace(config.vision, source="segmenter")
    with pytest.raises(ValueError, match=r"CitrusVConfig\.vision\.source: 'segmenter' needs segmenter\.kind 'litemedsam'"):
        config.__post_init__()
    # every preset, the published 8b above all, keeps the Qwen2.5-VL ViT
    assert {p.config().vision.source for p in PRESETS.values()} == {"vit"}


def test_beside_the_vit_the_branch_starts_silent_then_adds_its_tokens(tmp_path):
    source = build_model(_lite_config(), seed=5).eval()
    model = with_segmenter_vision(source, "vit+segmenter").eval()
    branch = {k for k in model.state_dict() if k not in source.state_dict()}
    assert branch and all(k.startswith("mllm.model.visual_segmenter.merger.") for k in branch)
    assert model.parameter_counts()["merger"] == source.parameter_counts()["merger"] + sum(
        model.state_dict()[k].numel() for k in branch)
    batch = {k: v for k, v in make_batch(model.config).items() if k not in ("labels", "gt_masks")}
    with torch.no_grad():
        before, start = source(**batch), model(**batch)
        torch.testing.assert_close(start.logits, before.logits)  # zero last layer: the model it came from
        vit_only = source.mllm.model.visual(batch["pixel_values"], grid_thw=batch["image_grid_thw"]).pooler_output
        model.mllm.model.visual_segmenter.merger[-1].bias.fill_(0.5)
        both = model.mllm.model.visual(batch["pixel_values"], grid_thw=batch["image_grid_thw"]).pooler_output
    torch.testing.assert_close(both, vit_only + 0.5)
    model.save_pretrained(tmp_path, weights_only=True)
    loaded = CitrusV.from_pretrained(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, model(**batch).logits)
