import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from citrus_v.cli import main as cli_main
from citrus_v.config import CitrusVConfig
from citrus_v.model.build import build_model
from citrus_v.model.checkpoint import (
    INDEX_FILE,
    ModelFolderError,
    TIED_ALIAS,
    load_state_into,
    published_shapes,
    to_published_state_dict,
)
from citrus_v.model.citrus_v import CitrusV


def test_8b_on_meta_has_exactly_the_published_names_and_shapes(reference_dir):
    reference = json.loads((reference_dir / "citrus_v_8b_state_dict_shapes.json").read_text())
    reference = {k: tuple(v) for k, v in reference.items()}
    model = build_model("8b", device="meta")
    ours = published_shapes({k: tuple(v.shape) for k, v in model.state_dict().items()})
    assert sorted(set(ours) - set(reference)) == []
    assert sorted(set(reference) - set(ours)) == []
    assert {k: v for k, v in ours.items() if reference[k] != v} == {}
    assert len(ours) == 1633
    assert sum(math.prod(s) for s in ours.values()) == 8_530_363_442
    assert sum(model.parameter_counts().values()) == 8_530_363_442


def test_describe_prints_parts_and_plain_total(capsys):
    assert cli_main(["describe", "--config", "8b"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == "total 8530363442"
    assert any(line.split()[0] == "sam2_mask_decoder" for line in lines)


def test_save_and_load_round_trip_is_bit_exact(tmp_path, tiny_model, batch):
    tiny_model.save_pretrained(tmp_path, weights_only=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    loaded = CitrusV.from_pretrained(tmp_path)
    assert loaded.config == tiny_model.config
    a, b = tiny_model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # the positional table stays tied after loading
    sam2 = loaded.segmenter.sam2
    assert sam2.prompt_encoder.shared_embedding is sam2.shared_image_embedding
    with torch.no_grad():
        torch.testing.assert_close(loaded(**_inputs(batch)).pred_masks, tiny_model(**_inputs(batch)).pred_masks, rtol=0, atol=0)


def _legacy_spelling(key: str) -> str:
    """The other on-disk MLLM spelling of a published key."""
    if key.startswith("mllm.model.visual."):
        return "mllm.visual." + key[len("mllm.model.visual."):]
    if key.startswith("mllm.model.language_model."):
        return "mllm.model." + key[len("mllm.model.language_model."):]
    return key


def test_published_layout_sharded_with_legacy_names_loads_identically(tmp_path, tiny_model, tiny_config, batch, seed):
    published = to_published_state_dict(tiny_model.state_dict())
    assert any(k.startswith("grounding_encoder.sam2_model.sam_prompt_encoder.point_embeddings.3") for k in published)
    legacy = {_legacy_spelling(k): v for k, v in published.items()}
    keys = sorted(legacy)
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    weight_map = {}
    for name, shard_keys in shards.items():
        save_file({k: legacy[k] for k in shard_keys}, str(tmp_path / name))
        weight_map.update(dict.fromkeys(shard_keys, name))
    (tmp_path / INDEX_FILE).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    fresh = build_model(tiny_config, seed=seed + 1).eval()
    with torch.no_grad():
        assert not torch.equal(fresh(**_inputs(batch)).pred_masks, tiny_model(**_inputs(batch)).pred_masks)
        load_state_into(fresh, tmp_path)
        torch.testing.assert_close(fresh(**_inputs(batch)).pred_masks, tiny_model(**_inputs(batch)).pred_masks, rtol=0, atol=0)
        torch.testing.assert_close(fresh(**_inputs(batch)).logits, tiny_model(**_inputs(batch)).logits, rtol=0, atol=0)


def test_missing_and_unexpected_tensors_are_listed(tmp_path, tiny_model):
    tiny_model.save_pretrained(tmp_path, weights_only=True)
    tensors = load_file(str(tmp_path / "model.safetensors"))
    tensors.pop("seg_projector.2.bias")
    tensors["grounding_encoder.sam2_model.extra"] = torch.zeros(1)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(ModelFolderError, match=r"1 missing tensor\(s\) \['seg_projector.2.bias'\], 1 unexpected .*sam2_model.extra"):
        CitrusV.from_pretrained(tmp_path)


def test_bad_config_file_names_the_file_and_field(tmp_path, tiny_model):
    tiny_model.save_pretrained(tmp_path, weights_only=True)
    data = json.loads((tmp_path / "config.json").read_text())
    data["segmenter"]["image_size"] = 100
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"config.json: .*SegmenterConfig.image_size"):
        CitrusV.from_pretrained(tmp_path)
    assert TIED_ALIAS.endswith("shared_embedding.positional_embedding")
    assert CitrusVConfig.preset("tiny") == tiny_model.config


def _inputs(batch: dict) -> dict:
    """The model's inputs of a batch (its targets are the objectives')."""
    return {k: v for k, v in batch.items() if k not in ("labels", "gt_masks")}
