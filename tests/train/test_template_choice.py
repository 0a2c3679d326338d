"""`citrus-v train --template`: the chat template that turns box and ref placeholders into text (issue 20
point 7) is chosen per model (published text for the published folder and the 8b preset, ours otherwise)
and can be forced; the stage's dataset encodes with it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from citrus_v.cli import build_parser
from citrus_v.data.checks import FileRules
from citrus_v.data.dataset import JsonlDataset
from citrus_v.train.pipeline import init_model_and_template
from citrus_v.train.stages import get_stage


@pytest.fixture()
def data(tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (100, 150, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    row = {"messages": [{"role": "user", "content": "<image>Find the <ref-object>"}, {"role": "assistant", "content": "<bbox>"}],
           "images": ["a.png"], "objects": {"ref": ["liver"], "bbox": [[30, 20, 90, 60]]}}
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(row) + "\n")
    return path


@pytest.mark.parametrize("flag, style", [("auto", "ours"), ("ours", "ours"), ("published", "published")])
def test_a_fresh_tiny_model_takes_ours_unless_told(data, flag, style):
    _, tokenizer, template = init_model_and_template(None, "tiny", get_stage(2, "tiny"), [data], flag)
    assert template.style == style
    ex = JsonlDataset(data, template, rules=FileRules())[0]
    text = tokenizer.decode(ex.input_ids)
    box = '[\n{"bbox_2d": [28,22,84,67],"label": "liver"}\n]' if style == "published" else "[28, 22, 84, 67]"
    assert box in text


def test_the_train_command_has_the_flag():
    args = build_parser().parse_args(["train", "--stage", "2", "--data", "x.jsonl", "--out", "o", "--template", "published"])
    assert args.template == "published"
    assert build_parser().parse_args(["train", "--stage", "2", "--data", "x.jsonl", "--out", "o"]).template == "auto"
