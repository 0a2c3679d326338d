"""Fine-tuning a trained model: which schedule a run gets, the held-out slice, the loss before/after."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from citrus_v.cli import build_parser, main
from citrus_v.data.schema import Message, Record, read_jsonl
from citrus_v.train import commands, finetune
from citrus_v.train.stages import get_stage

DEFAULT = Path(commands.__file__).resolve().parents[1] / "assets" / "default"


def _args(*extra: str):
    return build_parser().parse_args(["train", "--stage", "3", "--data", "my.jsonl", "--out", "runs/x", *extra])


def _stage(*extra: str, n_train: int = 1000):
    args = _args(*extra)
    schedule = finetune.choose_schedule(args.schedule, args.init, args.config, stage_file=args.stage_config is not None)
    (stage,) = commands._stage_list(args, [Path("my.jsonl")], schedule, n_train, 1)
    return schedule, stage


def test_a_trained_init_gets_the_finetune_schedule():
    schedule, s = _stage("--init", "some/model")
    assert schedule == "finetune"
    # 1,000 records, 8 a step, one epoch: 125 steps, 5% of them (6) warm up; nothing like the smoke schedule
    assert (s.lr, s.epochs, s.max_steps, s.micro_batch_size * s.grad_accum, s.warmup_steps) == (1e-4, 1.0, None, 8, 6)
    smoke = get_stage(3, "tiny")
    assert s.lr < smoke.lr / 5 and s.trainable_parts == smoke.trainable_parts and s.max_length == smoke.max_length


def test_no_init_or_schedule_smoke_gets_the_smoke_schedule():
    for extra in ((), ("--init", "some/model", "--schedule", "smoke")):
        schedule, s = _stage(*extra)
        assert schedule == "smoke"
        assert (s.lr, s.max_steps, s.epochs, s.warmup_steps) == (1e-3, 20, None, 2)
    assert finetune.choose_schedule("auto", None, "8b") == "published"
    assert finetune.choose_schedule("auto", Path("m"), "tiny", stage_file=True) == "file"  # a stage file keeps its own
    with pytest.raises(ValueError, match="--schedule 'fast'"):
        finetune.choose_schedule("fast", None, "tiny")


def test_flags_override_the_finetune_schedule():
    _, s = _stage("--init", "m", "--lr", "3e-5", "--epochs", "3")
    assert (s.lr, s.epochs, s.max_steps, s.warmup_steps) == (3e-5, 3.0, None, 19)  # 375 steps, 5% warm up
    _, s = _stage("--init", "m", "--steps", "40")
    assert (s.lr, s.epochs, s.max_steps, s.warmup_steps) == (1e-4, None, 40, 2)
    _, s = _stage("--epochs", "2")  # on the smoke schedule too
    assert (s.epochs, s.max_steps) == (2.0, None)


def test_a_small_data_set_gets_a_smaller_window_not_an_error():
    _, s = _stage("--init", "m", n_train=3)
    assert s.micro_batch_size * s.grad_accum <= 3 and s.warmup_steps == 1


def _rec(image: str | None, k: int = 0) -> Record:
    return Record([Message("user", ("<image>" if image else "") + f"q{k}"), Message("assistant", "yes")],
                  images=[image] if image else [])


def test_the_split_is_seeded_disjoint_and_keeps_each_image_on_one_side():
    records = [_rec(f"img{i // 4}.png", i) for i in range(400)]  # 100 images, 4 questions each
    train, val = finetune.split_records(records, fraction=0.05, seed=0)
    assert (train, val) == finetune.split_records(records, fraction=0.05, seed=0)
    assert val != finetune.split_records(records, fraction=0.05, seed=1)[1]
    assert sorted(train + val) == list(range(400)) and not set(train) & set(val)
    assert len(val) == 20  # 5% of 400, five whole images
    assert not {records[i].images[0] for i in train} & {records[i].images[0] for i in val}
    assert len(finetune.split_records(records, fraction=0.5, max_count=12)[1]) == 12
    assert len(finetune.split_records(records[:8], fraction=0.01)[1]) == 4  # min_count 1 -> one whole image


def test_images_shared_through_a_third_record_are_one_group_and_text_records_stand_alone():
    a = Record([Message("user", "<image><image>q"), Message("assistant", "a")], images=["x.png", "y.png"])
    groups = finetune.image_groups([_rec("x.png"), _rec("y.png"), a, _rec(None), _rec(None), _rec("z.png")])
    assert groups[0] == groups[1] == groups[2]
    assert len({groups[0], groups[3], groups[4], groups[5]}) == 4
    with pytest.raises(ValueError, match="too few to hold out"):
        finetune.split_records([_rec("x.png", k) for k in range(5)])


def test_finetune_prints_the_validation_loss_before_and_after(tmp_path, capsys):
    from citrus_v.data.phantoms import generate_suite

    files = generate_suite(tmp_path / "suite", 6, n_val=0, n_test=0, size=112, tasks=["segmentation"], progress=False)
    out = tmp_path / "ft"
    # the fine-tune schedule (from --init), two steps long so that the test is quick
    assert main(["train", "--stage", "4", "--data", str(files["train"]), "--init", str(DEFAULT), "--steps", "2",
                 "--val-fraction", "0.2", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "schedule finetune: lr 0.0001, 2 steps" in printed
    assert "validation before: LM loss" in printed and "validation after: LM loss" in printed
    report = json.loads((out / "finetune.json").read_text())
    assert report["schedule"] == "finetune" and report["steps"] == 2
    assert report["validation"]["val_records"] == 1 and report["validation"]["train_records"] == 5
    for when in ("val_before", "val_after"):
        v = report[when]
        assert v["records"] == 1 and v["masks"] >= 1 and v["lm_loss"] > 0 and v["mask_loss"] > 0
    # stage 4 trains the segmenter side: its mask loss on the held-out image moves, the frozen LM's does not
    assert report["val_after"]["mask_loss"] != report["val_before"]["mask_loss"]
    assert report["val_after"]["lm_loss"] == pytest.approx(report["val_before"]["lm_loss"], rel=1e-5)
    held = {r.images[0] for r in read_jsonl(out / "data" / "val.jsonl")}
    assert held and not held & {r.images[0] for r in read_jsonl(out / "data" / "train.jsonl")}
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in held)


def test_smoke_schedule_by_name_holds_nothing_out_and_val_file_is_used_as_given(tmp_path, capsys):
    from citrus_v.data.phantoms import generate_suite

    files = generate_suite(tmp_path / "suite", 3, n_val=1, n_test=0, size=112, tasks=["segmentation"], progress=False)
    out = tmp_path / "smoke"
    # the smoke schedule, by name, for this test's speed
    assert main(["train", "--stage", "4", "--data", str(files["train"]), "--init", str(DEFAULT), "--schedule", "smoke",
                 "--steps", "1", "--out", str(out), "--no-progress"]) == 0
    assert "schedule smoke: lr 0.001, 1 steps" in capsys.readouterr().out
    assert not (out / "data").exists() and not (out / "finetune.json").exists()
    out = tmp_path / "given"
    assert main(["train", "--stage", "4", "--data", str(files["train"]), "--init", str(DEFAULT), "--val", str(files["val"]),
                 "--steps", "1", "--out", str(out), "--no-progress"]) == 0
    report = json.loads((out / "finetune.json").read_text())
    assert not (out / "data").exists() and report["validation"] == {"val_file": str(files["val"])}
    assert report["val_before"]["records"] == report["val_after"]["records"] == 1
