"""Tiny deterministic models and a synthetic batch (2 images, 3 [SEG]) for the model tests."""

from __future__ import annotations

import pytest
import torch

from citrus_v.config import CitrusVConfig
from citrus_v.model.build import build_model
from citrus_v.model.citrus_v import CitrusV

SEED = 1234


def make_batch(config: CitrusVConfig, seg_per_row: tuple[int, int] = (1, 2), seed: int = 0) -> dict:
    """Two rows, one image each (112x112 and 168x224 px), [SEG] tokens in the answers."""
    g = torch.Generator().manual_seed(seed)
    tok = config.tokens
    grids = torch.tensor([[1, 8, 8], [1, 12, 16]])  # (t, h/14, w/14) per image
    n_patches = int(grids.prod(1).sum())
    pixel_values = torch.randn(n_patches, 3 * 2 * 14 * 14, generator=g)
    rows = []
    for grid, n_seg in zip(grids, seg_per_row):
        n_pad = int(grid.prod()) // 4  # merged 2x2 patches -> one <|image_pad|> each
        prompt = [1, 20, 21, tok.vision_start_token_id] + [tok.image_token_id] * n_pad + [tok.vision_end_token_id]
        prompt += [30, 31, 32, tok.eos_token_id, 1, 40]
        answer = [41, 42] + [43, tok.seg_token_id] * n_seg + [44, tok.eos_token_id]
        rows.append((prompt, answer))
    length = max(len(p) + len(a) for p, a in rows)
    input_ids = torch.full((2, length), tok.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros(2, length, dtype=torch.long)
    labels = torch.full((2, length), -100, dtype=torch.long)
    for i, (p, a) in enumerate(rows):
        ids = torch.tensor(p + a)
        input_ids[i, : len(ids)] = ids
        attention_mask[i, : len(ids)] = 1
        labels[i, len(p) : len(ids)] = torch.tensor(a)
    n_seg = sum(seg_per_row)
    side = config.segmenter.image_size
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": labels,
        "pixel_values": pixel_values,
        "image_grid_thw": grids,
        "sam_images": torch.randn(2, 3, side, side, generator=g),
        "gt_masks": (torch.rand(n_seg, 256, 256, generator=g) > 0.5).float(),
        "seg_image_index": torch.tensor([0] * seg_per_row[0] + [1] * seg_per_row[1]),
    }


@pytest.fixture(scope="session")
def tiny_config() -> CitrusVConfig:
    return CitrusVConfig.preset("tiny")


@pytest.fixture()
def tiny_model(tiny_config: CitrusVConfig) -> CitrusV:
    return build_model(tiny_config, seed=SEED).eval()


@pytest.fixture(scope="session")
def batch_factory():
    """make_batch(config, seg_per_row=(1, 2), seed=0) -> batch dict."""
    return make_batch


@pytest.fixture(scope="session")
def seed() -> int:
    return SEED


@pytest.fixture()
def batch(tiny_config: CitrusVConfig) -> dict:
    return make_batch(tiny_config)
