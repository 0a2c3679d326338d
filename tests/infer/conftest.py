"""A tiny random CitrusV + tiny tokenizer saved in our layout, shared by the inference tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from citrus_v.config import tiny_config
from citrus_v.data.tokenizer import train_tiny_tokenizer
from citrus_v.infer.predictor import Predictor
from citrus_v.model.citrus_v import CitrusV

SENTENCES = [
    "Please segment the liver.",
    "Sure, it is [SEG].",
    "Findings: The heart is normal. Impression: No acute disease.",
    "What organ is shown in this CT image? The liver and the spleen.",
    "Locate the kidney and answer with a box.",
] * 20


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("tiny_model")
    tokenizer = train_tiny_tokenizer(SENTENCES, vocab_size=400)
    tokenizer.save_pretrained(str(directory))
    torch.manual_seed(0)
    model = CitrusV(tiny_config()).eval()
    model.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def predictor(tiny_dir) -> Predictor:
    return Predictor.from_pretrained(tiny_dir)


@pytest.fixture()
def image() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(90, 130, 3), dtype=np.uint8)  # not square, not a multiple of 28


class ScriptedHead(nn.Module):
    """Wraps lm_head and forces a script of tokens: the k-th generation step emits script[k].

    Only the last position of each call is forced (prefill and decode steps alike), so a
    teacher-forced pass afterwards sees the plain head on every other position.
    """

    def __init__(self, head: nn.Module, script: list[int]):
        super().__init__()
        self.head, self.script, self.calls = head, script, 0

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.head(hidden)  # (B, L, V)
        if self.calls < len(self.script):
            logits[:, -1, self.script[self.calls]] += 1e4
        self.calls += 1
        return logits


@pytest.fixture()
def scripted(predictor):
    """``scripted(text)``: the predictor's model will generate ``text`` + <|im_end|> next time."""
    original = predictor.model.mllm.lm_head

    def install(text: str) -> ScriptedHead:
        ids = predictor.tokenizer.encode(text, add_special_tokens=False) + [predictor.eos_token_id]
        head = ScriptedHead(original, ids)
        predictor.model.mllm.lm_head = head
        return head

    yield install
    predictor.model.mllm.lm_head = original
