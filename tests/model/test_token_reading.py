"""The token-reading target (citrus_v.model.token_reading): its loss is the head's cross-entropy on the
merged image tokens, added with its weight and only when on; training on it teaches the vision side to
tell tokens apart; the head never reaches a model folder."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from citrus_v.model.build import build_model
from citrus_v.model.objectives import forward_and_score
from citrus_v.model.token_reading import CHARSET, IGNORE, SLOTS, character_class
from tests.model.conftest import SEED


def _labels(batch: dict) -> torch.Tensor:
    """(N, SLOTS) labels for every merged token of the batch: a fixed, arbitrary pattern per token, the
    last image's tokens unlabelled."""
    n = [t * h * w // 4 for t, h, w in batch["image_grid_thw"].tolist()]
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, len(CHARSET) + 1, (sum(n), SLOTS), generator=g)
    labels[sum(n) - n[-1]:] = IGNORE
    return labels


def test_character_classes():
    assert character_class("!") == 1 and character_class("~") == len(CHARSET) == 94
    assert character_class("A") == CHARSET.index("A") + 1
    assert character_class(" ") == character_class("é") == character_class("ab") == 0


def test_loss_is_the_heads_cross_entropy_added_with_its_weight_and_only_when_on(tiny_config, batch):
    model = build_model(tiny_config, seed=SEED).eval()
    labels = _labels(batch)
    batch = dict(batch, reading=labels)
    out, plain = forward_and_score(model, batch)
    assert "token_reading" not in plain.terms and out.reading_logits is None
    model.set_token_reading(0.5)
    on = forward_and_score(model, batch)[1]
    with torch.no_grad():
        tokens = model.mllm.model.visual(batch["pixel_values"], grid_thw=batch["image_grid_thw"]).pooler_output
        logits = model.token_reading.logits(tokens)
    raw = F.cross_entropy(logits.reshape(-1, len(CHARSET) + 1), labels.reshape(-1), ignore_index=IGNORE)
    assert on.terms["token_reading"].item() == pytest.approx(0.5 * raw.item(), rel=1e-5)
    assert on.total.item() == pytest.approx(plain.total.item() + on.terms["token_reading"].item(), rel=1e-5)
    written = labels > 0
    assert on.metrics["token_reading_acc"].item() == pytest.approx(float((logits.argmax(-1)[written] == labels[written]).float().mean()))
    model.set_token_reading(None)
    assert forward_and_score(model, batch)[1].total.item() == pytest.approx(plain.total.item(), rel=1e-6)


def test_training_on_it_makes_the_tokens_readable(tiny_config, batch):
    model = build_model(tiny_config, seed=SEED)
    model.set_trainable(["vision_encoder", "merger"])
    model.set_token_reading(1.0)  # after set_trainable: the head trains too
    labels = _labels(batch)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    first = None
    for _ in range(40):
        t = forward_and_score(model, dict(batch, reading=labels))[1]
        first = first if first is not None else (t.terms["token_reading"].item(), t.metrics["token_reading_acc"].item())
        opt.zero_grad()
        t.terms["token_reading"].backward()
        opt.step()
    t = forward_and_score(model, dict(batch, reading=labels))[1]
    # Measured (AMD EPYC, fp32): from 4.65-4.74 the loss ends at 0.97e-3 to 1.05e-3, accuracy 1.0, for
    # model seeds 1234, 1, 2, 3, 4 at 1 thread and 1234, 1 at 2 threads (the same numbers), and it
    # falls smoothly (the last 10 steps all below 1.6e-3): the bounds leave >1000x and a 0.1 margin.
    assert t.terms["token_reading"].item() < 0.3 * first[0] and t.metrics["token_reading_acc"].item() > 0.9 > first[1]
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.mllm.model.visual.parameters())


def test_the_head_is_in_training_state_but_never_in_a_model_folder(tiny_config, tmp_path):
    from safetensors import safe_open

    model = build_model(tiny_config, seed=SEED)
    model.set_token_reading(1.0)
    assert {k for k in model.state_dict() if k.startswith("token_reading.")} == {"token_reading.proj.weight", "token_reading.proj.bias"}
    assert model.parameter_counts()["reading_head"] == tiny_config.llm.hidden_size * SLOTS * 95 + SLOTS * 95
    model.save_pretrained(tmp_path / "m", weights_only=True)
    with safe_open(str(tmp_path / "m" / "model.safetensors"), "pt") as f:
        assert not any("reading" in k for k in f.keys())
    type(model).from_pretrained(tmp_path / "m")  # loads strictly without it
    model.set_token_reading(None)
    assert not any(k.startswith("token_reading.") for k in model.state_dict())


def test_labels_that_do_not_match_the_images_and_bad_weights_are_refused(tiny_config, batch):
    model = build_model(tiny_config, seed=SEED)
    with pytest.raises(ValueError, match="token_reading weight must be >= 0"):
        model.set_token_reading(-1.0)
    model.set_token_reading(1.0)
    labels = _labels(batch)
    with pytest.raises(ValueError, match=rf"reading labels cover {len(labels) - 1} image tokens, the vision tower gave {len(labels)}"):
        forward_and_score(model, dict(batch, reading=labels[1:]))
