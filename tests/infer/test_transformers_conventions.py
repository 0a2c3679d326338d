"""transformers conventions (issue 23 point 1): Auto classes know citrus_v folders, the tokenizer's
chat template renders what our ChatTemplate renders, a saved folder loads back whole, and a hub id
is looked up in the local cache only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoTokenizer

import citrus_v  # noqa: F401  (registers citrus_v with the Auto classes)
from citrus_v.config import tiny_config
from citrus_v.data.schema import Message, Record
from citrus_v.infer.generation import GenerationSettings
from citrus_v.infer.predictor import Predictor, default_model_dir
from citrus_v.model.citrus_v import CitrusV
from citrus_v.model.loading import published_config_dict, resolve_model_path

ROOT = Path(__file__).resolve().parents[2]
HUB_ID = "jdh-algo/Citrus-V-8B"


def _run(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **env})


def test_import_citrus_v_then_transformers_registers_the_auto_classes():
    code = (
        "import sys, citrus_v\n"
        "light = 'torch' not in sys.modules and 'transformers' not in sys.modules\n"
        "from transformers import AutoConfig, AutoModel\n"
        f"c = AutoConfig.from_pretrained({str(default_model_dir())!r})\n"
        "m = AutoModel.from_pretrained(c.name_or_path)\n"
        "q = AutoConfig.for_model('qwen2_5_vl')\n"  # transformers' own types are untouched
        "print(light, type(c).__name__, c.model_type, type(m).__name__, type(q).__name__)\n"
    )
    done = _run(code)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["True", "CitrusVHFConfig", "citrus_v", "CitrusV", "Qwen2_5_VLConfig"]
    assert "could not register" not in done.stderr


def test_transformers_imported_first_registers_at_import_of_citrus_v():
    code = (
        "from transformers import AutoConfig, AutoModelForImageTextToText\n"
        "import citrus_v\n"
        f"c = AutoConfig.from_pretrained({str(default_model_dir())!r})\n"
        "print(type(c).__name__, type(AutoModelForImageTextToText.from_pretrained(c.name_or_path)).__name__)\n"
    )
    done = _run(code)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["CitrusVHFConfig", "CitrusV"]


def test_automodel_loads_our_folder_with_the_same_weights(tiny_dir):
    auto = AutoModel.from_pretrained(tiny_dir, dtype="float32")
    ours = CitrusV.from_pretrained(tiny_dir)
    assert isinstance(auto, CitrusV) and not auto.training
    a, b = auto.state_dict(), ours.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert AutoConfig.from_pretrained(tiny_dir).to_citrus_config() == ours.config


def test_autoconfig_reads_a_published_layout_folder(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(published_config_dict(tiny_config())))
    config = AutoConfig.from_pretrained(tmp_path)
    assert config.model_type == "citrus_v" and config.layout == "published"
    read = config.to_citrus_config()
    expected = tiny_config()
    assert (read.llm, read.vision, read.tokens) == (expected.llm, expected.vision, expected.tokens)


def test_automodel_loads_a_published_layout_folder(tiny_dir, tmp_path):
    from safetensors.torch import save_file

    from citrus_v.model.checkpoint import to_published_state_dict

    ours = CitrusV.from_pretrained(tiny_dir)
    save_file(to_published_state_dict(ours.state_dict()), str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(published_config_dict(tiny_config())))
    (tmp_path / "tokenizer.json").write_bytes((tiny_dir / "tokenizer.json").read_bytes())
    # the published config names SAM2-L's yaml; the tiny segmenter's shapes come with citrus_config
    auto = AutoModel.from_pretrained(tmp_path, citrus_config=tiny_config())
    a, b = auto.state_dict(), ours.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------- chat template


@pytest.fixture(scope="module")
def image_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("img") / "ct.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (120, 90, 3), dtype=np.uint8)).save(path)
    return path


def _hf_ids(tokenizer, messages, n_tokens: list[int], add_generation_prompt: bool) -> list[int]:
    """apply_chat_template's ids with each image's one <|image_pad|> repeated as a processor does."""
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, return_dict=False)
    pad = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    out, k = [], 0
    for t in ids:
        if t == pad:
            out += [pad] * n_tokens[k]
            k += 1
        else:
            out.append(t)
    assert k == len(n_tokens)
    return out


@pytest.mark.parametrize("system", [None, "You are a radiologist."])
@pytest.mark.parametrize("with_image", [False, True])
def test_apply_chat_template_ids_equal_our_template_on_prompts(predictor, image_file, system, with_image):
    template, tokenizer = predictor.template, predictor.tokenizer
    images = [image_file] if with_image else []
    prompt = "Please segment the liver."
    ours = template.encode_prompt(images, prompt, system=system or "You are a helpful assistant.")
    n_tokens = [int(g.prod()) // template.image_cfg.merge_size**2 for g in ours.image_grid_thw]
    content = ([{"type": "image"}] if with_image else []) + [{"type": "text", "text": prompt}]
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": content}]
    assert _hf_ids(tokenizer, messages, n_tokens, True) == ours.input_ids.tolist()
    # the string form with our <image> placeholder renders the same
    as_string = [*messages[:-1], {"role": "user", "content": "<image>" * len(images) + prompt}]
    assert _hf_ids(tokenizer, as_string, n_tokens, True) == ours.input_ids.tolist()


def test_apply_chat_template_ids_equal_our_template_on_a_training_conversation(predictor, image_file):
    template, tokenizer = predictor.template, predictor.tokenizer
    turns = [("user", "<image>What organ is shown in this CT image?"), ("assistant", "The liver and the spleen."),
             ("user", "Please segment the liver."), ("assistant", "Sure, it is [SEG].")]
    mask = image_file.parent / "liver_mask.png"
    Image.fromarray((np.arange(120 * 90).reshape(120, 90) % 7 == 0).astype(np.uint8) * 255).save(mask)
    record = Record(messages=[Message(r, c) for r, c in turns], images=[str(image_file)], masks=[str(mask)])
    ours = template.encode_record(record)
    n_tokens = [int(g.prod()) // template.image_cfg.merge_size**2 for g in ours.image_grid_thw]
    messages = [{"role": r, "content": c} for r, c in turns]
    assert _hf_ids(tokenizer, messages, n_tokens, False) == ours.input_ids.tolist()


def test_the_shipped_default_carries_the_template_for_autotokenizer():
    folder = default_model_dir()
    assert (folder / "chat_template.jinja").is_file() and (folder / "tokenizer_config.json").is_file()
    assert type(AutoImageProcessor.from_pretrained(folder)).__name__ == "Qwen2VLImageProcessorPil"
    tokenizer = AutoTokenizer.from_pretrained(folder)
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


# ---------------------------------------------------------------- saving


def test_predictor_save_pretrained_writes_a_folder_that_loads_back_whole(predictor, image_file, tmp_path):
    predictor.settings = GenerationSettings(max_new_tokens=6)
    saved = predictor.save_pretrained(tmp_path / "saved")
    names = {p.name for p in saved.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
            "preprocessor_config.json", "generation_config.json"} <= names
    back = Predictor.from_pretrained(saved)
    assert back.settings == predictor.settings
    cfg_a, cfg_b = back.template.image_cfg, predictor.template.image_cfg
    assert (cfg_a.min_pixels, cfg_a.max_pixels) == (cfg_b.min_pixels, cfg_b.max_pixels)
    a = predictor.predict([image_file], "What organ is shown?")
    b = back.predict([image_file], "What organ is shown?")
    assert a.raw_text == b.raw_text and a.mean_token_prob == pytest.approx(b.mean_token_prob)
    # the processor side: AutoImageProcessor gives the ViT patches our processor gives
    image = np.asarray(Image.open(image_file).convert("RGB"))
    hf = AutoImageProcessor.from_pretrained(saved)(images=[image], return_tensors="pt")
    pixels, grid = back.template.processor.qwen([image])
    assert torch.equal(hf["image_grid_thw"], grid) and torch.equal(hf["pixel_values"].float(), pixels)
    tokenizer = AutoTokenizer.from_pretrained(saved)
    messages = [{"role": "user", "content": "Please segment the liver."}]
    assert tokenizer.apply_chat_template(messages, return_dict=False) == predictor.tokenizer.apply_chat_template(
        messages, return_dict=False)


def test_model_save_pretrained_without_a_tokenizer_writes_nothing(tmp_path):
    model = CitrusV(tiny_config()).eval()
    with pytest.raises(ValueError, match="tokenizer"):
        model.save_pretrained(tmp_path / "bare")
    assert not (tmp_path / "bare").exists()


# ---------------------------------------------------------------- hub ids


def test_a_hub_id_missing_from_the_cache_says_how_to_download_it(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(FileNotFoundError) as err:
        resolve_model_path(HUB_ID)
    message = str(err.value)
    assert "\n" not in message and f"hf download {HUB_ID}" in message


def test_a_hub_id_in_the_local_cache_resolves_to_its_snapshot(tmp_path, monkeypatch, tiny_dir):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    repo = tmp_path / "hub" / ("models--" + HUB_ID.replace("/", "--"))
    snapshot = repo / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    for f in tiny_dir.iterdir():
        (snapshot / f.name).write_bytes(f.read_bytes())
    assert resolve_model_path(HUB_ID) == snapshot
    assert Predictor.from_pretrained(HUB_ID).model.config == tiny_config()


def test_cli_names_the_download_command_for_an_uncached_hub_id(tmp_path, image_file):
    done = subprocess.run(
        [sys.executable, "-m", "citrus_v.cli", "predict", "--model", HUB_ID, "--image", str(image_file),
         "--prompt", "Please segment the liver.", "--out", str(tmp_path / "out")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub")},
    )
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and f"hf download {HUB_ID}" in lines[0]


def test_serve_names_the_download_command_for_an_uncached_hub_id(tmp_path, monkeypatch, capsys):
    from huggingface_hub import constants

    from citrus_v.cli import main

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert main(["serve", "--model", HUB_ID, "--port", "1"]) == 2  # refused before any server starts
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and f"hf download {HUB_ID}" in lines[0], lines


def test_a_failed_registration_is_a_warning_not_an_import_error(monkeypatch):
    from citrus_v import _auto_hook
    from citrus_v.model import hf_auto

    def broken() -> None:
        raise RuntimeError("registry changed")

    monkeypatch.setattr(hf_auto, "register_config", broken)
    with pytest.warns(UserWarning, match="could not register with transformers' Auto classes .registry changed."):
        _auto_hook._register("register_config")
