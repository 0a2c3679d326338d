"""Stages as data, stage files, and the cosine warm-up schedule."""

from __future__ import annotations

import json
import math

import pytest

from citrus_v.train.optim import cosine_with_warmup
from citrus_v.train.stages import (
    PART_NAMES, STAGES, MixtureEntry, StageConfig, StageConfigError, get_stage, load_stage_config, with_data_file,
)


def test_published_defaults_and_trainable_parts():
    for s in STAGES.values():
        assert (s.lr, s.weight_decay, s.betas, s.warmup_steps, s.grad_clip) == (1e-5, 0.1, (0.9, 0.999), 100, 1.0)
        assert (s.micro_batch_size, s.grad_accum, s.max_length, s.gradient_checkpointing) == (1, 8, 12288, True)
    assert STAGES[1].trainable_parts == ("vision_encoder", "merger")
    assert set(STAGES[2].trainable_parts) == {"vision_encoder", "merger", "llm", "lm_head"}
    assert "seg_projector" in STAGES[3].trainable_parts and "llm" in STAGES[3].trainable_parts
    assert STAGES[3].hook_grad_scale == 0.001 and STAGES[2].hook_grad_scale is None
    assert set(STAGES[4].trainable_parts) == {"seg_projector", "sam2_image_encoder", "sam2_prompt_encoder", "sam2_mask_decoder"}
    tiny = get_stage(1, "tiny")
    assert tiny.lr == 1e-3 and tiny.max_steps == 20 and tiny.trainable_parts == STAGES[1].trainable_parts


def test_part_names_match_the_model():
    from citrus_v.model.citrus_v import PART_NAMES as MODEL_PARTS

    assert set(PART_NAMES) == set(MODEL_PARTS)


@pytest.mark.parametrize(
    "change, field",
    [({"trainable_parts": ("llm", "bogus")}, "trainable_parts"), ({"lr": 0.0}, "lr"), ({"grad_accum": 0}, "grad_accum"),
     ({"stage": 5}, "stage"), ({"betas": (0.9, 1.0)}, "betas"), ({"max_steps": None, "epochs": None}, "max_steps"),
     ({"copy_attention": {"head": 0}}, "copy_attention"), ({"copy_attention": {"layer": 2, "heads": 1}}, "copy_attention"),
     ({"copy_attention": {"layer": -1}}, "copy_attention"), ({"copy_attention": {"layer": 2, "weight": -1}}, "copy_attention"),
     ({"token_reading": {"weights": 1.0}}, "token_reading"), ({"token_reading": {"weight": -0.5}}, "token_reading"),
     ({"token_reading": 1.0}, "token_reading")],
)
def test_invalid_stage_names_the_field(change, field):
    with pytest.raises(StageConfigError, match=f"StageConfig.{field}"):
        STAGES[1].replace(**change)


def test_stage_file_json_and_yaml(tmp_path):
    data = tmp_path / "mine.jsonl"
    f = tmp_path / "s.json"
    f.write_text(json.dumps({"base": "4:tiny", "lr": 5e-4, "mixture": [["mine.jsonl", 2.0], "task:segmentation"]}))
    cfg = load_stage_config(f)
    assert cfg.stage == 4 and cfg.lr == 5e-4 and cfg.max_steps == 20  # tiny base kept
    assert cfg.mixture == (MixtureEntry(str(data.resolve()), 2.0), MixtureEntry("task:segmentation", 1.0))
    y = tmp_path / "s.yaml"
    y.write_text("base: 1\nwarmup_steps: 7\n")
    assert load_stage_config(y).warmup_steps == 7
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"base": 2, "learning_rate": 1}))
    with pytest.raises(StageConfigError, match=r"bad.json: unknown field\(s\) \['learning_rate'\]"):
        load_stage_config(bad)
    broken = tmp_path / "broken.json"
    broken.write_text('{"base": 2,\n "lr": }')
    with pytest.raises(StageConfigError, match=r"broken.json:2: invalid JSON"):
        load_stage_config(broken)


def test_shipped_stage_files_load():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "configs" / "train"
    files = sorted(root.glob("stage*.json"))
    assert len(files) >= 4
    for f in files:
        cfg = load_stage_config(f)
        assert cfg.stage in (1, 2, 3, 4)
    assert with_data_file(STAGES[4], "my.jsonl").mixture == (MixtureEntry("my.jsonl", 1.0),)


def test_default_model_stage_files_load_as_their_stage():
    # scripts/train_default.sh runs configs/default/stage<k>.json as --stage ${k:0:1} (3b, 3c -> 3)
    from pathlib import Path

    files = sorted((Path(__file__).resolve().parents[2] / "configs" / "default").glob("stage*.json"))
    assert {f.stem for f in files} >= {"stage1", "stage2", "stage3", "stage3b", "stage3c"}
    for f in files:
        assert load_stage_config(f).stage == int(f.stem[len("stage")]), f.name


def test_stage_roundtrip_dict():
    s = STAGES[3]
    assert StageConfig.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    s = s.replace(copy_attention={"layer": 2, "head": 0, "weight": 0.5}, token_reading={"weight": 0.25},
                  part_lr_scale={"reading_head": 2.0})
    assert StageConfig.from_dict(json.loads(json.dumps(s.to_dict()))) == s


def test_cosine_with_warmup_values():
    f = lambda s: cosine_with_warmup(s, warmup_steps=4, total_steps=14)  # noqa: E731
    assert [f(s) for s in range(4)] == pytest.approx([0.2, 0.4, 0.6, 0.8])  # linear, never 0
    assert f(4) == pytest.approx(1.0)
    assert f(9) == pytest.approx(0.5)  # half-way through the 10 decay steps
    assert f(14) == pytest.approx(0.0) and f(20) == pytest.approx(0.0)
    assert f(6) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.2)))
    assert cosine_with_warmup(14, warmup_steps=4, total_steps=14, min_lr_ratio=0.1) == pytest.approx(0.1)
    vals = [f(s) for s in range(4, 15)]
    assert all(a >= b for a, b in zip(vals, vals[1:]))  # monotone decay


def test_part_lr_scale_sets_group_learning_rates():
    from citrus_v.train.optim import build_optimizer
    from tests.train.synthetic import tiny_model

    model = tiny_model(0)
    model.set_trainable(["vision_encoder", "merger", "llm"])
    stage = get_stage(2, "tiny").replace(lr=1e-3, part_lr_scale={"vision_encoder": 3.0, "merger": 2.0})
    opt = build_optimizer(model, stage)
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            assert id(p) not in lr_of
        elif name.startswith("mllm.model.visual.merger."):
            assert lr_of[id(p)] == pytest.approx(2e-3)
        elif name.startswith("mllm.model.visual."):
            assert lr_of[id(p)] == pytest.approx(3e-3)
        else:
            assert lr_of[id(p)] == pytest.approx(1e-3)
    # without scales the groups are the plain (decay, no decay) pair
    assert [g["lr"] for g in build_optimizer(model, stage.replace(part_lr_scale={})).param_groups] == [1e-3, 1e-3]
    with pytest.raises(StageConfigError, match="part_lr_scale.*unknown part 'vit'"):
        stage.replace(part_lr_scale={"vit": 2.0})
    with pytest.raises(StageConfigError, match="part_lr_scale.*must be > 0"):
        stage.replace(part_lr_scale={"llm": 0})


def test_a_stage_file_can_start_from_another(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps({"base": "3:tiny", "name": "a", "lr": 5e-4, "micro_batch_size": 128}))
    (tmp_path / "b.json").write_text(json.dumps({"base": "a.json", "name": "b", "warmup_steps": 30}))
    b = load_stage_config(tmp_path / "b.json")
    assert (b.name, b.lr, b.micro_batch_size, b.warmup_steps, b.stage) == ("b", 5e-4, 128, 30, 3)
    (tmp_path / "loop.json").write_text(json.dumps({"base": "loop.json"}))
    with pytest.raises(StageConfigError, match="leads back to itself"):
        load_stage_config(tmp_path / "loop.json")
    (tmp_path / "orphan.json").write_text(json.dumps({"base": "missing.json"}))
    with pytest.raises(StageConfigError, match="no such stage file"):
        load_stage_config(tmp_path / "orphan.json")
