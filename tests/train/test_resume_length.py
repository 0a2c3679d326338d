"""``--resume`` with a different length than the checkpoint's run: the cosine is re-laid over the new
length (one log line), or, asked for fewer steps than already done, the run is refused; never silently."""

from __future__ import annotations

import json
import logging

import pytest

from citrus_v.train.optim import cosine_with_warmup
from citrus_v.train.recipe import TrainingRefused, train
from citrus_v.train.stages import get_stage
from tests.train.synthetic import collate, make_dataset, tiny_model


def _stage(steps: int):
    return get_stage(3, "tiny").replace(max_steps=steps, micro_batch_size=1, grad_accum=1, save_every=100, warmup_steps=1)


def _lrs(out) -> dict[int, float]:
    return {r["step"]: r["lr"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())}


def test_more_steps_re_lay_the_cosine_and_say_so(tmp_path, caplog):
    data = make_dataset(4)
    train(_stage(4), tiny_model(0), data, collate, tmp_path / "run", progress=False)
    with caplog.at_level(logging.INFO, logger="citrus_v.train.recipe"):
        res = train(_stage(6), tiny_model(0), data, collate, tmp_path / "run", resume=True, progress=False)
    assert res.steps == 6 and len(res.losses) == 2
    lines = [r.getMessage() for r in caplog.records if "re-laid" in r.getMessage()]
    assert lines == ["stage3_instruction_tuning: schedule re-laid over 6 steps (the checkpoint's run had 4); resuming at step 4"]
    stage = _stage(6)
    want = {k: stage.lr * cosine_with_warmup(k - 1, warmup_steps=1, total_steps=6, min_lr_ratio=stage.min_lr_ratio)
            for k in (5, 6)}
    got = _lrs(tmp_path / "run")
    assert {k: got[k] for k in (5, 6)} == pytest.approx(want, rel=1e-9)
    # the same lr a 6-step run has at those steps, and not the 4-step run's cosine continued
    train(_stage(6), tiny_model(0), data, collate, tmp_path / "fresh", progress=False)
    assert {k: _lrs(tmp_path / "fresh")[k] for k in (5, 6)} == pytest.approx(want, rel=1e-9)
    assert got[5] > stage.lr * stage.min_lr_ratio


def test_the_same_length_resumes_without_a_word_and_fewer_than_done_is_refused(tmp_path, caplog):
    data = make_dataset(4)
    train(_stage(4), tiny_model(0), data, collate, tmp_path, progress=False)
    with caplog.at_level(logging.INFO, logger="citrus_v.train.recipe"):
        assert train(_stage(4), tiny_model(0), data, collate, tmp_path, resume=True, progress=False).steps == 4
    assert not [r for r in caplog.records if "re-laid" in r.getMessage()]
    with pytest.raises(TrainingRefused, match=r"^stage3_instruction_tuning: the checkpoint is at step 4, past the 2 steps asked "
                                              r"for; ask for 4 steps or more \(its run had 4\)$"):
        train(_stage(2), tiny_model(0), data, collate, tmp_path, resume=True, progress=False)
