"""Stage 4 trains only the segmenter side: a micro-batch without [SEG] has no term to train there. It is
skipped and counted, never a crash; a stage whose whole data set has no mask is refused before it starts."""

from __future__ import annotations

import json

import pytest
import torch

from citrus_v.cli import main
from citrus_v.model.citrus_v import part_of
from citrus_v.train.recipe import train
from citrus_v.train.stages import get_stage
from tests.train.synthetic import collate, make_dataset, tiny_model


def _stage4(steps: int):
    return get_stage(4, "tiny").replace(max_steps=steps, micro_batch_size=1, grad_accum=2, save_every=100, warmup_steps=1)


def test_micro_batches_without_seg_are_skipped_and_counted(tmp_path):
    model = tiny_model(0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    # 4 samples, every other one with a [SEG]: 4 steps x 2 micro-batches = two epochs, 4 of them without
    res = train(_stage4(4), model, make_dataset(4, seg_every=2), collate, tmp_path, progress=False)
    assert res.steps == 4 and res.skipped_micro_batches == 4
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["skipped_micro_batches"] == 4
    assert [r["skipped_micro_batches"] for r in rows] == sorted(r["skipped_micro_batches"] for r in rows)  # a running count
    assert all(r["loss"] == pytest.approx(r["lm_loss"] + r["mask_loss"]) for r in rows)
    assert all(r["mask_loss"] == pytest.approx(r["mask_bce"] + r["mask_dice"] + r["mask_iou"]) for r in rows)
    changed = {part_of(n) for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert "seg_projector" in changed and changed <= {"seg_projector", "sam2_image_encoder", "sam2_prompt_encoder",
                                                      "sam2_mask_decoder"}


def test_a_skipped_micro_batch_leaves_the_windows_gradient_as_its_other_micro_batch_gives_it(tmp_path):
    """A window of one [SEG] micro-batch and one without trains as that [SEG] micro-batch alone in a
    window of its own: the skip adds nothing (and the mask terms keep the window's normalisation)."""
    import contextlib

    from citrus_v.model.objectives import Objective
    from citrus_v.train.distributed import DistContext
    from citrus_v.train.recipe import _accumulate

    data = make_dataset(2, seg_every=2)  # sample 0 has a [SEG], sample 1 not
    grads = []
    for micro in ([collate([data[0]]), collate([data[1]])], [collate([data[0]])]):
        model = tiny_model(0)
        model.set_trainable(_stage4(1).trainable_parts)
        window = _accumulate(Objective(model), micro, DistContext(), contextlib.nullcontext())
        grads.append(({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, window))
    (g_mixed, w_mixed), (g_alone, w_alone) = grads
    assert (w_mixed.skipped, w_mixed.trained, w_alone.skipped) == (1, 1, 0)
    assert set(g_mixed) == set(g_alone) and g_mixed
    for n in g_mixed:
        torch.testing.assert_close(g_mixed[n], g_alone[n], rtol=1e-5, atol=1e-7)


def test_a_window_with_nothing_to_train_leaves_the_weights_alone(tmp_path):
    model = tiny_model(0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    res = train(_stage4(2), model, make_dataset(2, seg_every=0), collate, tmp_path, progress=False)
    assert res.steps == 2 and res.skipped_micro_batches == 4
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_a_stage_whose_records_have_no_mask_stops_before_the_first_step(tmp_path, capsys):
    from citrus_v.data.phantoms import generate_suite

    files = generate_suite(tmp_path / "suite", 4, n_val=0, n_test=0, size=112, tasks=["detection"], progress=False)
    n = len(files["train"].read_text().splitlines())
    assert main(["train", "--stage", "4", "--data", str(files["train"]), "--steps", "2", "--out", str(tmp_path / "a"),
                 "--no-progress"]) == 2
    msg = capsys.readouterr().err.strip()  # one line, exit status 2 (citrus_v.cli)
    assert msg == (
        f"citrus-v train: stage 4 trains the segmenter only (seg_projector, sam2_image_encoder, sam2_prompt_encoder, "
        f"sam2_mask_decoder): none of the {n} records has a mask ([SEG] in the answer + \"masks\"); add segmentation records"
    )
    assert not (tmp_path / "a" / "metrics.jsonl").exists() and not (tmp_path / "a" / "checkpoints").exists()
    # a stage that trains the language model has work on the same records
    assert main(["train", "--stage", "2", "--data", str(files["train"]), "--steps", "1", "--out", str(tmp_path / "b"),
                 "--no-progress"]) == 0
