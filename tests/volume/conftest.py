"""Fixtures for the volume tests: test-double predictors whose masks are known functions of the
slice picture, a tiny random CitrusV saved to disk, and small volumes in known orientations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from citrus_v.infer.types import Mask, Prediction
from tests.infer.conftest import ScriptedHead  # forces a scripted answer (shared with the serve tests)


class ThresholdPredictor:
    """predict_batch -> one mask per threshold: structure k is ``picture[..., 0] > thresholds[k]``
    minus the structures before it, so the 3D result is a known function of the windowed volume."""

    def __init__(self, thresholds=(127,), answer="Sure, it is [SEG]."):
        self.thresholds = thresholds
        self.answer = answer
        self.calls: list[int] = []  # batch sizes seen
        self.shapes: set[tuple[int, ...]] = set()

    def predict_batch(self, requests):
        self.calls.append(len(requests))
        out = []
        for picture, prompt in requests:
            assert isinstance(prompt, str) and picture.dtype == np.uint8 and picture.ndim == 3
            self.shapes.add(picture.shape)
            masks = [Mask(mask=picture[..., 0] > t, score=0.5) for t in self.thresholds]
            out.append(Prediction(answer=self.answer, raw_text=self.answer, masks=masks))
        return out


class LookupPredictor:
    """Returns, for a slice picture it was shown before, the reference masks of that slice."""

    def __init__(self, table: dict[bytes, list[np.ndarray]]):
        self.table = table

    def predict_batch(self, requests):
        return [
            Prediction(answer="", raw_text="", masks=[Mask(mask=m, score=1.0) for m in self.table[p.tobytes()]])
            for p, _ in requests
        ]


@pytest.fixture()
def threshold_predictor():
    return ThresholdPredictor()


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    from citrus_v.config import tiny_config
    from citrus_v.data.tokenizer import train_tiny_tokenizer
    from citrus_v.model.citrus_v import CitrusV

    directory = tmp_path_factory.mktemp("tiny_volume_model")
    sentences = ["Please segment the liver.", "Sure, it is [SEG].", "The liver is [SEG] and the spleen is [SEG]."] * 20
    train_tiny_tokenizer(sentences, vocab_size=400).save_pretrained(str(directory))
    torch.manual_seed(0)
    CitrusV(tiny_config()).eval().save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_predictor(tiny_dir):
    from citrus_v.infer.generation import GenerationSettings
    from citrus_v.infer.predictor import Predictor

    return Predictor.from_pretrained(tiny_dir, settings=GenerationSettings(max_new_tokens=8))


@pytest.fixture()
def force_answer(tiny_predictor):
    """``force_answer(text)``: the tiny model generates ``text`` + <|im_end|> on its next call."""
    original = tiny_predictor.model.mllm.lm_head

    def install(text: str) -> None:
        ids = tiny_predictor.tokenizer.encode(text, add_special_tokens=False) + [tiny_predictor.eos_token_id]
        tiny_predictor.model.mllm.lm_head = ScriptedHead(original, ids)

    yield install
    tiny_predictor.model.mllm.lm_head = original


@pytest.fixture(scope="session")
def dicom_series(ct_series_dir):
    from citrus_v.data.medical_io import read_volume

    return read_volume(ct_series_dir / "ct_dicom")
