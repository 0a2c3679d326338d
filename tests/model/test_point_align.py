"""The optional point-alignment loss (LossConfig.point_align_weight, off in the published recipe)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from citrus_v.config import CitrusVConfig, LossConfig
from citrus_v.model.citrus_v import CitrusV
from citrus_v.model.objectives import forward_and_score, point_align
from tests.train.synthetic import collate, make_dataset


def _model(weight: float) -> CitrusV:
    torch.manual_seed(0)
    cfg = CitrusVConfig.preset("tiny")
    return CitrusV(dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, point_align_weight=weight)))


def test_point_embedding_is_the_prompt_encoders_positive_click():
    model = _model(0.0)
    encoder = model.segmenter.sam2.prompt_encoder
    xy = torch.tensor([[0.25, 0.75], [0.9, 0.1]])
    ours = model.segmenter.point_prompt_embedding(xy)
    side = encoder.input_image_size
    sparse, _ = encoder(xy[:, None, None, :] * side - 0.5, torch.ones(2, 1, 1, dtype=torch.long), None, None)
    assert torch.allclose(ours, sparse[:, 0, 0], atol=1e-6)  # the public path pads a second point after it


def test_the_target_is_the_click_at_the_mask_centroid_and_empty_masks_are_skipped(monkeypatch):
    model = _model(1.0)
    seen = {}

    def fake(xy):
        seen["xy"] = xy.clone()
        return torch.zeros(xy.shape[0], model.config.segmenter.hidden_size)

    monkeypatch.setattr(model.segmenter, "point_prompt_embedding", fake)
    gt = torch.zeros(3, 256, 256)
    gt[0, 64:128, 0:32] = 1  # centroid x = 16/256, y = 96/256
    gt[2, 200:202, 250:256] = 1
    hidden = torch.randn(3, model.config.llm.hidden_size, requires_grad=True)
    loss = point_align(model, hidden, gt)
    assert seen["xy"].shape == (2, 2)  # the empty second mask is skipped
    assert torch.allclose(seen["xy"][0], torch.tensor([16 / 256, 96 / 256]))
    assert torch.allclose(seen["xy"][1], torch.tensor([253 / 256, 201 / 256]))
    kept = model.seg_projector(hidden[[0, 2]]).detach()
    assert loss.item() == pytest.approx(float((kept**2).mean()), rel=1e-5)  # MSE to the (zero) targets
    assert point_align(model, hidden, torch.zeros(2, 256, 256)).item() == 0.0


def test_the_loss_trains_the_projector_not_the_prompt_encoder():
    batch = collate(make_dataset(2, seed=1))
    plain, aligned = _model(0.0), _model(1.0)
    out0, out1 = forward_and_score(plain, batch)[1], forward_and_score(aligned, batch)[1]
    assert set(out1.terms) - set(out0.terms) == {"point_align"}  # same weights, same data: only the new term differs
    assert out1.total.item() > out0.total.item()
    out1.total.backward()
    out0.total.backward()
    assert not torch.allclose(aligned.seg_projector[0].weight.grad, plain.seg_projector[0].weight.grad)
    enc = aligned.segmenter.sam2.prompt_encoder.point_embed.weight
    assert enc.grad is None or float(enc.grad.abs().sum()) == 0.0


def test_negative_weight_is_refused():
    with pytest.raises(ValueError, match="point_align_weight"):
        LossConfig(point_align_weight=-1.0)


def test_segmenters_declare_which_prompt_embeddings_they_offer():
    """The capability flags on the Segmenter protocol, not ``hasattr``, decide what a caller may ask."""
    sam2 = _model(0.0).segmenter
    torch.manual_seed(0)
    lite = CitrusV(CitrusVConfig.preset("tiny_litemedsam")).segmenter
    assert (sam2.supports_point_embedding, sam2.supports_box_token) == (True, False)
    assert (lite.supports_point_embedding, lite.supports_box_token) == (False, True)
    boxes = torch.tensor([[10.0, 20.0, 60.0, 90.0]])
    assert lite.box_prompt_token(boxes).shape == (1, lite.prompt_dim)
    with pytest.raises(NotImplementedError, match="supports_box_token"):
        sam2.box_prompt_token(boxes)
    with pytest.raises(NotImplementedError, match="supports_point_embedding"):
        lite.point_prompt_embedding(torch.tensor([[0.5, 0.5]]))


def test_point_alignment_with_a_segmenter_without_point_embeddings_names_the_field():
    torch.manual_seed(0)
    cfg = CitrusVConfig.preset("tiny_litemedsam")
    model = CitrusV(dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, point_align_weight=1.0)))
    with pytest.raises(ValueError, match="point_align_weight needs a SAM2 segmenter, not 'litemedsam'"):
        point_align(model, torch.randn(1, cfg.llm.hidden_size), torch.ones(1, 256, 256))
