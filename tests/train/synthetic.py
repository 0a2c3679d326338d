"""A tiny CitrusV and a fixed synthetic multimodal dataset for the training tests.

Each sample: one 56x56 image (grid 1x4x4 -> 4 image tokens), a short ChatML-shaped id
sequence whose assistant part ends in one [SEG], and one disk mask. Built from a seed, so
every process (the SIGKILL subprocess, torchrun ranks) sees the same data.
"""

from __future__ import annotations

from typing import Any

import torch

from citrus_v.config import CitrusVConfig
from citrus_v.model.citrus_v import CitrusV
from citrus_v.model.token_reading import CHARSET, IGNORE, SLOTS

GRID = (1, 4, 4)  # (t, h, w) patches; 4 merged image tokens
PATCH_DIM = 3 * 2 * 14 * 14


def tiny_model(seed: int = 0) -> CitrusV:
    torch.manual_seed(seed)
    return CitrusV(CitrusVConfig.preset("tiny"))


def make_dataset(n: int, seed: int = 0, *, seg_every: int = 1, with_reading: bool = False) -> list[dict[str, torch.Tensor]]:
    """``seg_every``: sample i asks for a mask when i % seg_every == 0 (0: none does); the others hold a
    plain token where the [SEG] would be, so every sample has the same length. ``with_reading``: even
    samples carry token-reading labels (a character class per slot of each merged token), odd ones
    IGNORE rows, as images without text do in a real batch."""
    cfg = CitrusVConfig.preset("tiny")
    tok = cfg.tokens
    g = torch.Generator().manual_seed(seed)
    side = cfg.segmenter.image_size
    items = []
    for i in range(n):
        n_img_tokens = GRID[0] * GRID[1] * GRID[2] // 4
        prompt = torch.randint(20, 200, (6,), generator=g)
        answer = torch.randint(20, 200, (5,), generator=g)
        with_seg = seg_every > 0 and i % seg_every == 0
        tail = [tok.seg_token_id if with_seg else 21]
        ids = torch.cat([
            torch.tensor([tok.vision_start_token_id]),
            torch.full((n_img_tokens,), tok.image_token_id),
            torch.tensor([tok.vision_end_token_id]),
            prompt, answer, torch.tensor(tail + [tok.eos_token_id]),
        ])
        labels = ids.clone()
        labels[: 2 + n_img_tokens + len(prompt)] = -100  # only the answer is supervised
        yy, xx = torch.meshgrid(torch.arange(256.0), torch.arange(256.0), indexing="ij")
        cy, cx, r = (torch.rand(3, generator=g) * torch.tensor([120.0, 120.0, 40.0]) + torch.tensor([68.0, 68.0, 20.0])).tolist()
        mask = (((yy - cy) ** 2 + (xx - cx) ** 2) < r * r).float()  # (256, 256)
        sam = torch.randn(3, side, side, generator=g) * 0.1
        sam[0] += mask[:: 256 // side, :: 256 // side][:side, :side] * 2  # the disk is visible to SAM
        item = {
            "input_ids": ids, "labels": labels,
            "pixel_values": torch.randn(GRID[0] * GRID[1] * GRID[2], PATCH_DIM, generator=g),
            "image_grid_thw": torch.tensor([GRID]), "sam_images": sam[None],
        }
        if with_seg:
            item["gt_masks"] = mask[None]
        if with_reading:
            labelled = torch.randint(0, len(CHARSET) + 1, (n_img_tokens, SLOTS), generator=g)
            item["reading"] = labelled if i % 2 == 0 else torch.full((n_img_tokens, SLOTS), IGNORE)
        items.append(item)
    return items


def collate(items: list[dict[str, torch.Tensor]]) -> dict[str, Any]:
    """Same-length samples: stack ids; concatenate images and masks in row-major order."""
    batch: dict[str, Any] = {
        "input_ids": torch.stack([it["input_ids"] for it in items]),
        "labels": torch.stack([it["labels"] for it in items]),
        "pixel_values": torch.cat([it["pixel_values"] for it in items]),
        "image_grid_thw": torch.cat([it["image_grid_thw"] for it in items]),
        "sam_images": torch.cat([it["sam_images"] for it in items]),
    }
    batch["attention_mask"] = torch.ones_like(batch["input_ids"])
    if "reading" in items[0]:
        reading = torch.cat([it["reading"] for it in items])
        batch["reading"] = reading if bool((reading != IGNORE).any()) else None
    with_seg = [i for i, it in enumerate(items) if "gt_masks" in it]
    if with_seg:
        batch["gt_masks"] = torch.cat([items[i]["gt_masks"] for i in with_seg])
        batch["seg_image_index"] = torch.tensor(with_seg)  # one image per row; its [SEG], if any
    return batch
