"""The published checkpoint layout loads to the same model; ``citrus-v predict`` writes its files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import load_file, save_file

from citrus_v import cli
from citrus_v.config import citrus_v_8b_config, tiny_config
from citrus_v.infer.generation import GenerationSettings
from citrus_v.model.loading import checkpoint_layout, published_config, published_config_dict
from citrus_v.infer.predictor import Predictor

def _published_spelling(key: str) -> str:
    # the other on-disk MLLM spelling the published folder may use
    if key.startswith("mllm.model.visual."):
        return "mllm.visual." + key[len("mllm.model.visual.") :]
    if key.startswith("mllm.model.language_model."):
        return "mllm.model." + key[len("mllm.model.language_model.") :]
    return key


@pytest.fixture(scope="module")
def published_dir(tiny_dir, tmp_path_factory) -> Path:
    """The tiny model in the published layout: flat config, 2 shards + index, its own tokenizer files."""
    out = tmp_path_factory.mktemp("published")
    tensors = {_published_spelling(k): v for k, v in load_file(str(tiny_dir / "model.safetensors")).items()}
    keys = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    weight_map = {}
    for name, part in shards.items():
        save_file({k: tensors[k] for k in part}, str(out / name))
        weight_map.update({k: name for k in part})
    (out / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (out / "config.json").write_text(json.dumps(published_config_dict(tiny_config())))
    # the published folder states its pixel range here; use the tiny model's
    (out / "preprocessor_config.json").write_text(json.dumps({"min_pixels": 112 * 112, "max_pixels": 224 * 224}))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_dir / name, out / name)
    return out


def test_reference_8b_config_reads_as_our_8b_preset(reference_dir):
    loaded = published_config(json.loads((reference_dir / "citrus_v_8b_config.json").read_text()))
    preset = citrus_v_8b_config()
    assert (loaded.llm, loaded.vision, loaded.tokens, loaded.segmenter) == (
        preset.llm, preset.vision, preset.tokens, preset.segmenter,
    )  # fmt: skip


def test_published_layout_gives_identical_outputs(tiny_dir, published_dir, predictor, image):
    assert checkpoint_layout(published_dir) == "published" and checkpoint_layout(tiny_dir) == "citrus_v"
    published = Predictor.from_pretrained(published_dir, config=tiny_config())
    # same weights, whatever the names on disk
    ours_state, theirs_state = predictor.model.state_dict(), published.model.state_dict()
    assert all((ours_state[k] == theirs_state[k]).all() for k in ours_state)
    settings = GenerationSettings(max_new_tokens=4)
    a = predictor.predict([image], "What organ is shown?", settings=settings)
    ours_cfg, theirs_cfg = predictor.template.image_cfg, published.template.image_cfg
    # the range read from preprocessor_config.json; the SAM input made as the published template makes it
    assert (theirs_cfg.min_pixels, theirs_cfg.max_pixels) == (ours_cfg.min_pixels, ours_cfg.max_pixels)
    assert (theirs_cfg.sam_source, ours_cfg.sam_source) == ("smart_resized", "original")
    b = published.predict([image], "What organ is shown?", settings=settings)
    assert a.raw_text == b.raw_text and a.mean_token_prob == pytest.approx(b.mean_token_prob)


def test_published_layout_rejects_a_disagreeing_config(published_dir):
    wrong = tiny_config()
    wrong.llm.num_hidden_layers = 3
    with pytest.raises(ValueError, match=r"llm.num_hidden_layers: file 4 vs given 3"):
        Predictor.from_pretrained(published_dir, config=wrong)


def _run_cli(argv, capsys) -> str:
    assert cli.main(argv) == 0
    return capsys.readouterr().out


def test_cli_json_overlay_and_masks(tmp_path, image, predictor, scripted, monkeypatch, capsys):
    png = tmp_path / "scan.png"
    Image.fromarray(image).save(png)
    scripted('Sure, it is [SEG]. ```json\n[{"bbox_2d": [28, 14, 56, 42], "label": "liver"}]\n```')
    monkeypatch.setattr(Predictor, "from_pretrained", classmethod(lambda cls, *a, **kw: predictor))
    out_dir = tmp_path / "out"
    argv = ["predict", "--image", str(png), "--prompt", "Segment the liver.", "--out", str(out_dir), "--json",
            "--max-new-tokens", "60"]  # fmt: skip
    result = json.loads(_run_cli(argv, capsys))
    assert {"answer", "reasoning", "boxes", "masks", "report"} <= set(result)
    assert result["answer"].startswith("Sure, it is [SEG].")
    assert result["boxes"][0]["label"] == "liver" and len(result["boxes"][0]["bbox"]) == 4
    assert result["masks"] == [str(out_dir / "mask_0.png")] and len(result["mask_scores"]) == 1
    mask = np.asarray(Image.open(result["masks"][0]))
    assert mask.shape == (90, 130) and set(np.unique(mask)) <= {0, 255}
    overlay = np.asarray(Image.open(out_dir / "overlay.png"))
    assert overlay.shape == (90, 130, 3) and not np.array_equal(overlay, image)  # something was drawn


def test_cli_text_output_on_a_real_model_folder(tmp_path, tiny_dir, image, capsys):
    png = tmp_path / "scan.png"
    Image.fromarray(image).save(png)
    text = _run_cli(["predict", "--image", str(png), "--prompt", "What organ?", "--model", str(tiny_dir),
                     "--max-new-tokens", "3"], capsys)  # fmt: skip
    assert "[confidence] mean token probability" in text


def test_cli_missing_image_file(tmp_path, capsys):
    assert cli.main(["predict", "--image", str(tmp_path / "nope.png"), "--prompt", "x"]) == 2
    assert capsys.readouterr().err == f"citrus-v predict: --image {tmp_path / 'nope.png'}: no such file\n"
