"""Examples -> one batch, exactly the contract in docs/ARCHITECTURE.md (Batch).

Right padding with the ``<|endoftext|>`` id, labels padded with -100, images concatenated in
row order. With no image in the batch, ``pixel_values``, ``image_grid_thw`` and ``sam_images``
are ``None`` (the model's text-only path) rather than empty tensors.
"""

from __future__ import annotations

from functools import partial
from typing import Callable, Sequence

import torch

from citrus_v.data.image_processing import MASK_SIZE
from citrus_v.data.reading import IGNORE, SLOTS
from citrus_v.data.template import IGNORE_INDEX, Example


def collate(examples: Sequence[Example], *, pad_token_id: int, seg_token_id: int,
            merge_size: int = 2) -> dict[str, torch.Tensor | None]:
    """Pad and concatenate (see the module docstring). ``seg_image_index[i]`` is the index (into ``sam_images``) of the first
    image of the row holding the i-th ``[SEG]`` (row-major); a ``[SEG]`` in a row without an
    image is a ``ValueError``, and so is a row whose ``[SEG]`` count differs from its masks
    (unless no example has masks: an inference batch, ``gt_masks`` then has 0 rows).
    """
    if not examples:
        raise ValueError("collate() got an empty list of examples")
    B = len(examples)
    merge2 = merge_size * merge_size
    L = max(int(e.input_ids.shape[0]) for e in examples)
    input_ids = torch.full((B, L), pad_token_id, dtype=torch.long)
    labels = torch.full((B, L), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((B, L), dtype=torch.long)
    seg_image_index: list[int] = []
    copy_pairs: list[torch.Tensor] = []
    reading: list[torch.Tensor] = []  # per image of the batch, its merged tokens' reading labels
    image_offset = 0
    for b, e in enumerate(examples):
        n = int(e.input_ids.shape[0])
        if e.labels.shape != e.input_ids.shape:
            raise ValueError(f"example {b}: labels {tuple(e.labels.shape)} vs input_ids {tuple(e.input_ids.shape)}")
        input_ids[b, :n] = e.input_ids
        labels[b, :n] = e.labels
        attention_mask[b, :n] = 1
        n_seg = int((e.input_ids == seg_token_id).sum())
        # Inference batches carry no masks at all; otherwise the i-th [SEG] needs the i-th mask.
        if n_seg != int(e.gt_masks.shape[0]) and any(x.gt_masks.shape[0] for x in examples):
            raise ValueError(f"example {b}: {n_seg} [SEG] tokens but {e.gt_masks.shape[0]} masks")
        if n_seg and e.num_images == 0:
            raise ValueError(f"example {b}: {n_seg} [SEG] tokens but no image to segment")
        seg_image_index += [image_offset] * n_seg
        image_offset += e.num_images
        if e.copy_pairs.shape[0]:
            copy_pairs.append(torch.cat([torch.full((e.copy_pairs.shape[0], 1), b), e.copy_pairs], 1))
        for i, (t, h, w) in enumerate(e.image_grid_thw.tolist()):
            n_tok = t * h * w // merge2
            if i == 0 and e.reading.shape[0]:
                if e.reading.shape != (n_tok, SLOTS):
                    raise ValueError(f"example {b}: reading labels {tuple(e.reading.shape)} for an image of {n_tok} tokens")
                reading.append(e.reading)
            else:
                reading.append(torch.full((n_tok, SLOTS), IGNORE, dtype=torch.long))

    with_images = [e for e in examples if e.num_images]
    batch: dict[str, torch.Tensor | None] = {
        "input_ids": input_ids,  # (B, L)
        "attention_mask": attention_mask,  # (B, L)
        "labels": labels,  # (B, L)
        "pixel_values": torch.cat([e.pixel_values for e in with_images]) if with_images else None,  # (P, 1176)
        "image_grid_thw": torch.cat([e.image_grid_thw for e in with_images]) if with_images else None,  # (n_img, 3)
        "sam_images": torch.cat([e.sam_images for e in with_images]) if with_images else None,  # (n_img, 3, S, S)
        "gt_masks": torch.cat([e.gt_masks.reshape(-1, MASK_SIZE, MASK_SIZE) for e in examples]),  # (n_seg, 256, 256)
        "seg_image_index": torch.tensor(seg_image_index, dtype=torch.long),  # (n_seg,)
        # (n, 3) long (row, query, key): the copy-attention target, None when no example has one
        "copy_pairs": torch.cat(copy_pairs) if copy_pairs else None,
        # (N, SLOTS) long: every merged image token's reading labels (IGNORE rows for images without any),
        # None when no example has them
        "reading": torch.cat(reading) if any(e.reading.shape[0] for e in examples) else None,
    }
    return batch


def make_collate_fn(pad_token_id: int, seg_token_id: int,
                    merge_size: int = 2) -> Callable[[Sequence[Example]], dict[str, torch.Tensor | None]]:
    """A one-argument ``collate_fn`` for ``torch.utils.data.DataLoader``."""
    return partial(collate, pad_token_id=pad_token_id, seg_token_id=seg_token_id, merge_size=merge_size)
