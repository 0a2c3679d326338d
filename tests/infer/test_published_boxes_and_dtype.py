"""Issue 20 point 3 (a model folder declares whether its written boxes are tightened) and point 5
(weights load tensor by tensor straight into the asked dtype)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from citrus_v.config import CitrusVConfig, citrus_v_8b_config, tiny_config
from citrus_v.infer.predictor import Predictor
from citrus_v.model import checkpoint
from citrus_v.model.checkpoint import ModelFolderError, to_published_state_dict
from citrus_v.model.citrus_v import CitrusV
from citrus_v.model.loading import published_config
from tests.infer.conftest import ScriptedHead

BOX_ANSWER = 'The liver. ```json\n[{"bbox_2d": [28, 14, 56, 42], "label": "liver"}]\n```'


@pytest.fixture(scope="module")
def published_tiny(tiny_dir, tmp_path_factory) -> Path:
    """The tiny test model in the published layout (one shard), no preprocessor file."""
    from tests.infer.test_published_parity import write_published_folder

    model = CitrusV.from_pretrained(tiny_dir)
    return write_published_folder(tmp_path_factory.mktemp("published_tiny"), model, tiny_dir, None)


def _boxes(predictor: Predictor, image) -> list:
    ids = predictor.tokenizer.encode(BOX_ANSWER, add_special_tokens=False) + [predictor.eos_token_id]
    head = predictor.model.mllm.lm_head
    predictor.model.mllm.lm_head = ScriptedHead(head, ids)
    try:
        return predictor.predict([image], "Locate the liver.").boxes
    finally:
        predictor.model.mllm.lm_head = head


# ------------------------------------------------------------------ point 3
def test_the_folder_declares_tightening(predictor, published_tiny, image):
    assert predictor.model.config.tighten_boxes is True and predictor.tighten_boxes is True  # ours: tightened
    published = Predictor.from_pretrained(published_tiny, config=tiny_config())
    assert published.model.config.tighten_boxes is False and published.tighten_boxes is False
    (box,) = _boxes(published, image)
    h, w = published.template.processor.resized_hw(*image.shape[:2])  # the frame the model writes in
    written = [28 * image.shape[1] / w, 14 * image.shape[0] / h, 56 * image.shape[1] / w, 42 * image.shape[0] / h]
    assert box.text_bbox is None and box.label == "liver" and box.bbox == pytest.approx(written)  # as written
    forced = Predictor.from_pretrained(published_tiny, config=tiny_config(), tighten_boxes=True)
    (tightened,) = _boxes(forced, image)
    assert tightened.text_bbox == pytest.approx(written)  # the written box kept beside the tightened one


def test_text_boxes_override_the_shipped_choice(tiny_dir, image):
    written = Predictor.from_pretrained(tiny_dir, tighten_boxes=False)
    assert written.model.config.tighten_boxes is True and written.tighten_boxes is False
    assert _boxes(written, image)[0].text_bbox is None


def test_our_layout_stores_the_choice_and_old_folders_keep_tightening(tmp_path, tiny_dir):
    config = tiny_config()
    assert config.tighten_boxes is True and citrus_v_8b_config().tighten_boxes is False
    assert published_config(_published_dict()).tighten_boxes is False
    data = json.loads((tiny_dir / "config.json").read_text())
    data.pop("tighten_boxes", None)  # a folder written before the field: tightened, as it was
    assert CitrusVConfig.from_dict({k: v for k, v in data.items() if k not in ("model_type", "format_version")}).tighten_boxes
    with pytest.raises(ValueError, match=r"CitrusVConfig.tighten_boxes: must be true or false"):
        CitrusVConfig.from_dict({**{k: v for k, v in data.items() if k not in ("model_type", "format_version")}, "tighten_boxes": "no"})
    for name in ("model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_dir / name, tmp_path / name)
    (tmp_path / "config.json").write_text(json.dumps({**data, "tighten_boxes": False}))
    assert Predictor.from_pretrained(tmp_path).tighten_boxes is False


def _published_dict() -> dict:
    from citrus_v.model.loading import published_config_dict

    return published_config_dict(citrus_v_8b_config())


# ------------------------------------------------------------------ point 5
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_weights_load_straight_into_the_dtype(published_tiny, tiny_dir, dtype):
    model = CitrusV.from_pretrained(published_tiny, config=tiny_config(), dtype=dtype)
    stored = to_published_state_dict(CitrusV.from_pretrained(tiny_dir).state_dict())
    ours = to_published_state_dict(model.state_dict())
    assert {p.dtype for p in model.parameters()} == {dtype}
    assert set(ours) == set(stored)
    assert all(torch.equal(ours[k], stored[k].to(ours[k].dtype)) for k in stored)


def test_a_half_precision_checkpoint_loads_into_float32_exactly(tmp_path, tiny_dir, monkeypatch):
    monkeypatch.setattr(checkpoint, "READ_BLOCK_BYTES", 1000)  # converted in many blocks, tensors cut mid-row
    half = CitrusV.from_pretrained(tiny_dir)
    half.save_pretrained(tmp_path, dtype=torch.bfloat16, weights_only=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_dir / name, tmp_path / name)
    on_disk = load_file(str(tmp_path / "model.safetensors"))
    loaded = to_published_state_dict(CitrusV.from_pretrained(tmp_path).state_dict())
    assert all(torch.equal(loaded[k], on_disk[k].float()) for k in on_disk if on_disk[k].is_floating_point())
    predictor = Predictor.from_pretrained(tmp_path, dtype="bfloat16", device="cpu")  # as --dtype spells it
    assert next(predictor.model.parameters()).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="dtype 'bf16' is not a torch dtype"):
        Predictor.from_pretrained(tmp_path, dtype="bf16", device="cpu")


def test_a_truncated_shard_is_named(tmp_path, tiny_dir):
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_dir / name, tmp_path / name)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    with pytest.raises(ModelFolderError, match=r"model.safetensors: truncated"):
        CitrusV.from_pretrained(tmp_path)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_half_precision_predictor_answers_segments_and_tightens(published_tiny, image, dtype):
    predictor = Predictor.from_pretrained(published_tiny, config=tiny_config(), dtype=dtype, tighten_boxes=True)
    answer = "Sure, it is [SEG]. " + BOX_ANSWER
    ids = predictor.tokenizer.encode(answer, add_special_tokens=False) + [predictor.eos_token_id]
    predictor.model.mllm.lm_head = ScriptedHead(predictor.model.mllm.lm_head, ids)
    pred = predictor.predict([image], "Segment and locate the liver.")
    assert len(pred.masks) == 1 and pred.masks[0].mask.shape == image.shape[:2]
    assert len(pred.boxes) == 1 and pred.boxes[0].text_bbox is not None  # the segmenter ran on the box
