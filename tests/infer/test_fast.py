"""The fast greedy path equals the plain one: same tokens, same masks (tiny random CitrusV)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from citrus_v.infer.fast import FastDecoder
from citrus_v.infer.generation import GenerationSettings, generate_sequences
from citrus_v.infer.session import decode_seg_states


class RowScriptedHead(nn.Module):
    """Forces row r to emit scripts[r][k] at its k-th step (then the plain head decides)."""

    def __init__(self, head: nn.Module, scripts: list[list[int]]):
        super().__init__()
        self.head, self.scripts, self.calls = head, scripts, 0

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.head(hidden)  # (B, L, V)
        for row, script in enumerate(self.scripts):
            if self.calls < len(script):
                logits[row, -1, script[self.calls]] += 1e4
        self.calls += 1
        return logits


def _requests(predictor, image, prompts: list[str]):
    rng = np.random.default_rng(3)
    images = [image, rng.integers(0, 256, (60, 200, 3), dtype=np.uint8), rng.integers(0, 256, (120, 80, 3), dtype=np.uint8)]
    rows = [predictor._encode([images[i % 3]], p, where=f"request {i}") for i, p in enumerate(prompts)]
    return rows, predictor._left_padded(rows)


def _plain(predictor, inputs, n):
    # CitrusV.generate: the HF generate, handed the token types that give images 2D M-RoPE positions
    return generate_sequences(predictor.model, inputs, GenerationSettings(max_new_tokens=n), predictor.eos_token_id, predictor.pad_token_id)


def _fast(predictor, inputs, n):
    return FastDecoder(predictor.model.mllm).generate(
        inputs, n, predictor.eos_token_id, predictor.pad_token_id, predictor.seg_token_id
    )


@pytest.mark.parametrize(
    "prompts",
    [
        ["What organ is shown?"],
        ["What organ is shown?", "Please segment the liver and the spleen in this image.", "Locate the kidney."],
    ],
    ids=["batch1", "batch3-mixed-lengths"],
)
def test_greedy_tokens_equal_plain_generate(predictor, image, prompts):
    rows, inputs = _requests(predictor, image, prompts)
    assert len({len(r.input_ids) for r in rows}) == len(rows)  # mixed lengths: left padding is exercised
    plain = _plain(predictor, inputs, 24)
    fast = _fast(predictor, inputs, 24).sequences
    for p, f in zip(plain, fast):
        assert f.ids == p.ids
        assert f.stopped == p.stopped
        np.testing.assert_allclose(f.token_probs, p.token_probs, rtol=1e-5, atol=1e-6)


def test_rows_stop_on_their_own_eos(predictor, image):
    rows, inputs = _requests(predictor, image, ["What organ is shown?", "Please segment the liver."])
    eos = predictor.eos_token_id
    original = predictor.model.mllm.lm_head
    try:
        outs = []
        for _ in range(2):  # plain, then fast, each from the start of the script
            predictor.model.mllm.lm_head = RowScriptedHead(original, [[11, 12, eos], [13, 14, 15, 16, 17, eos]])
            outs.append(_plain(predictor, inputs, 10) if not outs else _fast(predictor, inputs, 10).sequences)
    finally:
        predictor.model.mllm.lm_head = original
    plain, fast = outs
    assert [s.ids for s in fast] == [[11, 12, eos], [13, 14, 15, 16, 17, eos]]
    assert [s.ids for s in fast] == [s.ids for s in plain]
    assert all(s.stopped for s in fast)


def test_seg_states_from_decoding_give_the_teacher_forced_masks(predictor, image):
    """Masks from the [SEG] states kept during decoding == CitrusV.segment over prompt + answer,
    for a batch of 2 rows of different lengths; row 1 ends on a [SEG] at max_new_tokens."""
    seg, eos, n_new = predictor.seg_token_id, predictor.eos_token_id, 7
    scripts = [[20, seg, 21, seg, eos], [22, 23, 24, 25, 26, 27, seg]]
    rows, inputs = _requests(predictor, image, ["Please segment the liver and the spleen.", "Segment it."])
    original = predictor.model.mllm.lm_head
    try:
        predictor.model.mllm.lm_head = RowScriptedHead(original, scripts)
        plain = _plain(predictor, inputs, n_new)
        predictor.model.mllm.lm_head = RowScriptedHead(original, scripts)
        fast = _fast(predictor, inputs, n_new)
    finally:
        predictor.model.mllm.lm_head = original
    assert [s.ids for s in fast.sequences] == [s.ids for s in plain] == scripts
    assert [h.shape[0] for h in fast.seg_hidden] == [2, 1]  # the trailing [SEG] got its state too

    # the plain path: ONE right-padded teacher-forced pass (what Predictor._seg_states does)
    model = predictor.model
    seqs = [r.input_ids + s.ids for r, s in zip(rows, plain)]
    length = max(map(len, seqs))
    ids = torch.full((2, length), predictor.pad_token_id)
    mask = torch.zeros(2, length, dtype=torch.long)
    for k, s in enumerate(seqs):
        ids[k, : len(s)], mask[k, : len(s)] = torch.tensor(s), 1
    sam_images = torch.stack([r.session.sam_image for r in rows])  # (2, 3, S, S)
    index = torch.tensor([0, 0, 1])
    ref_logits, ref_iou = model.segment(ids, mask, **predictor._images_of(rows), sam_images=sam_images, seg_image_index=index)

    # the fast path's states through the predictor's image sessions
    logits, iou = decode_seg_states([r.session for r in rows], torch.cat(fast.seg_hidden), index.tolist())
    assert logits.shape == (3, 256, 256)
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(iou, ref_iou, atol=1e-5, rtol=0)


def test_predictor_fast_setting_gives_the_same_prediction(predictor, image, scripted):
    text = "Sure, it is [SEG] and [SEG]."
    settings = GenerationSettings(max_new_tokens=20)
    scripted(text)
    plain = predictor.predict([image], "Please segment the liver.", settings=settings)
    scripted(text)
    fast = predictor.predict([image], "Please segment the liver.", settings=GenerationSettings(max_new_tokens=20, fast=True))
    assert fast.answer == plain.answer == text
    assert fast.num_generated_tokens == plain.num_generated_tokens
    assert len(fast.masks) == len(plain.masks) == 2
    for f, p in zip(fast.masks, plain.masks):
        assert f.mask.shape == (90, 130)
        assert np.array_equal(f.mask, p.mask)
        assert f.score == pytest.approx(p.score, abs=1e-5)


def test_fast_is_greedy_only():
    with pytest.raises(ValueError, match="fast.*greedy only"):
        GenerationSettings(fast=True, do_sample=True)


def test_bad_batches_are_refused(predictor, image):
    _, inputs = _requests(predictor, image, ["What organ is shown?", "Please segment the liver and the spleen."])
    right_padded = {**inputs, "attention_mask": inputs["attention_mask"].flip(1)}
    with pytest.raises(ValueError, match="LEFT-padded"):
        FastDecoder(predictor.model.mllm).generate(right_padded, 4, 2, 0)
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1"):
        FastDecoder(predictor.model.mllm).generate(inputs, 0, 2, 0)
