"""TinyViT's inference path (BatchNorm folded, channels-last, stage 0 in strips of rows, the attention
stages in chunks) equals its training path (the module as written) up to rounding."""

from __future__ import annotations

import pytest
import torch

from citrus_v.model import tinyvit
from citrus_v.model.tinyvit import TinyViT, TinyViTConfig, _FrozenStatsBatchNorm


def _random_vit(image_size: int) -> TinyViT:
    """Small widths, random weights and BatchNorm statistics far from identity (so a wrong fold shows)."""
    torch.manual_seed(0)
    cfg = TinyViTConfig(image_size=image_size, embed_dims=(8, 16, 20, 24), num_heads=(1, 2, 2, 3), out_dim=16)
    vit = TinyViT(cfg).eval()
    with torch.no_grad():
        for m in vit.modules():
            if isinstance(m, _FrozenStatsBatchNorm):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
            elif hasattr(m, "attention_biases"):
                m.attention_biases.normal_()
    return vit


@pytest.mark.parametrize("strip_rows", [5, 16])
def test_inference_path_equals_the_training_path(monkeypatch, strip_rows):
    vit = _random_vit(64)  # stage 0 gives 32 rows: 7 strips of 5 (the last shorter), or 2 of 16
    monkeypatch.setattr(tinyvit, "_STRIP_ROWS", strip_rows)
    monkeypatch.setattr(tinyvit, "_CHUNK_VALUES", 4096)  # several window / token chunks per block
    images = torch.rand(2, 3, 64, 64)
    reference = vit(images)  # grad enabled: the module as written, BatchNorm unfolded, whole maps
    with torch.no_grad():
        fast = vit(images)
    assert reference.requires_grad and not fast.requires_grad
    assert fast.shape == reference.shape == (2, 16, 16, 16)
    torch.testing.assert_close(fast, reference.detach(), atol=2e-5, rtol=1e-4)


def test_strips_cover_every_row_once():
    """The strip forward of stage 0 alone gives the whole-map forward's tokens, row for row."""
    vit = _random_vit(64)
    stage0 = vit.layers[0]
    x = vit.patch_embed(torch.rand(1, 3, 64, 64))  # (1, C0, 64, 64)
    whole = stage0(x)  # grad enabled: whole map
    with torch.no_grad():
        strips = stage0(x.contiguous(memory_format=torch.channels_last))
    assert strips.shape == whole.shape == (1, 32 * 32, 16)
    torch.testing.assert_close(strips, whole.detach(), atol=2e-5, rtol=1e-4)
