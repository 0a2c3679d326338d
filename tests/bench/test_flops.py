"""FLOPs by hand: small numbers one can check on paper, and the anchors' own formula."""

import pytest

from citrus_v.bench.flops import multimodal_train_flops, train_flops


def test_hand_checked_case():
    # 6*10*4 (matmuls) + 6*2*3*4*4 (causal attention) = 240 + 576
    assert train_flops(params=10, tokens=4, seq_len=4, n_layers=2, hidden=3) == 816.0


def test_matches_the_anchor_formula_for_one_sequence():
    n, s, layers, h = 7_615_616_512, 4096, 28, 3584  # 8b LLM as counted by hf_baseline.py
    anchor = 6 * n * s + 12 * layers * h * s * s / 2
    assert train_flops(n, s, s, layers, h) == pytest.approx(anchor, rel=1e-12)


def test_tokens_in_several_sequences_scale_linearly():
    one = train_flops(100, 8, 8, 1, 4)
    assert train_flops(100, 16, 8, 1, 4) == 2 * one  # two packed sequences of 8, block-diagonal attention


def test_multimodal_adds_the_vision_term():
    assert multimodal_train_flops(10, 5, tokens=4, patches=16, n_layers=2, hidden=3) == 816.0 + 6 * 5 * 16


def test_negative_counts_are_refused():
    with pytest.raises(ValueError, match="tokens must be >= 0"):
        train_flops(10, -1, 4, 2, 3)
