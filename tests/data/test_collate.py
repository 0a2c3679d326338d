"""collate: the batch contract of docs/ARCHITECTURE.md (shapes, right padding, seg_image_index)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from citrus_v.data.collate import collate, make_collate_fn
from citrus_v.data.image_processing import ImageConfig, load_mask
from citrus_v.data.template import ChatTemplate, Example
from citrus_v.data.tokenizer import train_tiny_tokenizer

TEXT = ["Please segment the liver.", "Sure, it is [SEG].", "What organ is this?", "The liver."] * 20


@pytest.fixture(scope="module")
def template():
    return ChatTemplate(train_tiny_tokenizer(TEXT, vocab_size=400), ImageConfig.tiny())


def img(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def mask(value: int) -> np.ndarray:
    m = np.zeros((64, 64), np.uint8)
    m[: 16 * value, :] = 1  # mask i covers i/4 of the rows: tells masks apart after collation
    return m


def seg_example(template: ChatTemplate, n_images: int, n_seg: int, seed: int) -> Example:
    """A training-like example from in-memory arrays: ``n_images`` images, ``n_seg`` [SEG] and masks.

    Built as an inference prompt plus a supervised answer (``encode_record`` needs files; its own
    tests cover that path), so mask k covers (k+1)/4 of the rows and can be told apart.
    """
    ex = template.encode_prompt([img(60 + 10 * i, 90, seed + i) for i in range(n_images)], "Please segment the liver.")
    answer = template.tokenizer.encode("Sure, it is " + "[SEG] " * n_seg, add_special_tokens=False)
    answer = torch.tensor(answer + [template.ids.im_end])
    ex.input_ids = torch.cat([ex.input_ids, answer])
    ex.labels = torch.cat([ex.labels, answer])
    ex.gt_masks = torch.stack([load_mask(mask(k + 1)) for k in range(n_seg)]) if n_seg else torch.zeros(0, 256, 256)
    return ex


def test_shapes_padding_and_masks(template):
    a = seg_example(template, n_images=1, n_seg=1, seed=0)
    b = seg_example(template, n_images=2, n_seg=2, seed=1)
    c = template.encode_prompt([], "What organ is this?")  # text only, no masks
    c.gt_masks = torch.zeros(0, 256, 256)
    batch = collate([a, b, c], pad_token_id=template.ids.pad, seg_token_id=template.ids.seg)
    la, lb, lc = (int(e.input_ids.shape[0]) for e in (a, b, c))
    L = max(la, lb, lc)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (3, L)
    assert batch["input_ids"].dtype == batch["attention_mask"].dtype == batch["labels"].dtype == torch.long
    for row, n, e in ((0, la, a), (1, lb, b), (2, lc, c)):
        assert torch.equal(batch["input_ids"][row, :n], e.input_ids)
        assert (batch["input_ids"][row, n:] == template.ids.pad).all() and template.ids.pad == 0
        assert (batch["labels"][row, n:] == -100).all() and torch.equal(batch["labels"][row, :n], e.labels)
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (L - n)
    grid = batch["image_grid_thw"]
    assert grid.shape == (3, 3) and torch.equal(grid, torch.cat([a.image_grid_thw, b.image_grid_thw]))
    assert batch["pixel_values"].shape == (int(grid.prod(dim=1).sum()), 1176)
    assert batch["sam_images"].shape == (3, 3, 256, 256)
    # i-th [SEG] (row-major) <-> i-th mask; each [SEG] points at the first image of its row
    assert batch["gt_masks"].shape == (3, 256, 256)
    assert [round(m.mean().item(), 2) for m in batch["gt_masks"]] == [0.25, 0.25, 0.5]
    assert batch["seg_image_index"].tolist() == [0, 1, 1]
    n_pad = (batch["input_ids"] == template.ids.image_pad).sum().item()
    assert n_pad == int(grid.prod(dim=1).sum()) // 4


def test_text_only_batch_has_no_image_tensors(template):
    e = template.encode_prompt([], "What organ is this?")
    batch = collate([e, e], pad_token_id=template.ids.pad, seg_token_id=template.ids.seg)
    assert batch["pixel_values"] is None and batch["image_grid_thw"] is None and batch["sam_images"] is None
    assert batch["gt_masks"].shape == (0, 256, 256) and batch["seg_image_index"].shape == (0,)
    assert batch["attention_mask"].all()


def test_seg_without_image_or_mask_is_an_error(template):
    e = seg_example(template, n_images=0, n_seg=1, seed=0)
    with pytest.raises(ValueError, match=r"example 0: 1 \[SEG\] tokens but no image"):
        collate([e], pad_token_id=0, seg_token_id=template.ids.seg)
    ok = seg_example(template, n_images=1, n_seg=1, seed=0)
    short = seg_example(template, n_images=1, n_seg=2, seed=0)
    short.gt_masks = short.gt_masks[:1]
    with pytest.raises(ValueError, match=r"example 1: 2 \[SEG\] tokens but 1 masks"):
        collate([ok, short], pad_token_id=0, seg_token_id=template.ids.seg)


def test_dataloader_collate_fn(template):
    examples = [seg_example(template, 1, 1, seed=s) for s in range(4)]
    loader = DataLoader(examples, batch_size=2, collate_fn=make_collate_fn(template.ids.pad, template.ids.seg))
    batches = list(loader)
    assert len(batches) == 2
    assert [b["seg_image_index"].tolist() for b in batches] == [[0, 1], [0, 1]]
    assert all(b["sam_images"].shape == (2, 3, 256, 256) for b in batches)


def test_empty_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        collate([], pad_token_id=0, seg_token_id=10)


def test_copy_pairs_gain_their_row_and_keep_their_positions(template):
    a = seg_example(template, n_images=1, n_seg=0, seed=0)
    b = seg_example(template, n_images=1, n_seg=0, seed=1)
    assert collate([a, b], pad_token_id=0, seg_token_id=template.ids.seg)["copy_pairs"] is None
    b.copy_pairs = torch.tensor([[7, 3], [8, 4]])
    got = collate([a, b, b], pad_token_id=0, seg_token_id=template.ids.seg)["copy_pairs"]
    assert got.tolist() == [[1, 7, 3], [1, 8, 4], [2, 7, 3], [2, 8, 4]]  # right padding: positions unchanged


def test_reading_labels_line_up_with_every_image_token_of_the_batch(template):
    from citrus_v.data.reading import IGNORE, SLOTS

    a = seg_example(template, n_images=2, n_seg=0, seed=0)  # labels on its first image only
    b = template.encode_prompt([], "What organ is this?")  # no image
    b.gt_masks = torch.zeros(0, 256, 256)
    c = seg_example(template, n_images=1, n_seg=0, seed=2)  # an image without labels
    assert collate([a, b, c], pad_token_id=0, seg_token_id=template.ids.seg)["reading"] is None
    tokens = [t * h * w // 4 for t, h, w in torch.cat([a.image_grid_thw, c.image_grid_thw]).tolist()]
    a.reading = torch.arange(tokens[0] * SLOTS).reshape(tokens[0], SLOTS) % 7
    got = collate([a, b, c], pad_token_id=0, seg_token_id=template.ids.seg)["reading"]
    assert got.shape == (sum(tokens), SLOTS)
    assert torch.equal(got[: tokens[0]], a.reading) and bool((got[tokens[0]:] == IGNORE).all())
    a.reading = a.reading[1:]
    with pytest.raises(ValueError, match=rf"example 0: reading labels \({tokens[0] - 1}, 4\) for an image of {tokens[0]} tokens"):
        collate([a, b, c], pad_token_id=0, seg_token_id=template.ids.seg)
