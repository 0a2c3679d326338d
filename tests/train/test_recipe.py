"""The recipe on the tiny CitrusV: freezing per stage, learning, accumulation, outputs."""

from __future__ import annotations

import contextlib
import json
import logging

import pytest
import torch

from citrus_v.model.citrus_v import part_of
from citrus_v.model.objectives import MASK_TERMS, Objective
from citrus_v.train.distributed import DistContext
from citrus_v.train.recipe import _accumulate, train
from citrus_v.train.stages import get_stage
from tests.train.synthetic import collate, make_dataset, tiny_model


def _snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_stage1_step_changes_only_vision_and_merger(tmp_path, caplog):
    model = tiny_model(0)
    before = _snapshot(model)
    stage = get_stage(1, "tiny").replace(max_steps=1, grad_accum=1)
    with caplog.at_level(logging.INFO, logger="citrus_v.train.recipe"):
        res = train(stage, model, make_dataset(2), collate, tmp_path, progress=False)
    changed = {part_of(n) for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == {"vision_encoder", "merger"}
    expect = sum(p.numel() for n, p in model.named_parameters() if part_of(n) in ("vision_encoder", "merger"))
    assert res.trainable_params == expect and res.total_params == sum(p.numel() for p in model.parameters())
    assert f"trainable {expect} / total {res.total_params} parameters" in caplog.text


def test_stage4_trains_only_segmentation_side(tmp_path):
    model = tiny_model(0)
    before = _snapshot(model)
    train(get_stage(4, "tiny").replace(max_steps=1, grad_accum=1), model, make_dataset(2), collate, tmp_path, progress=False)
    changed = {part_of(n) for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    # the prompt encoder's used tables get gradients only through the padding point / no-mask embedding
    assert {"seg_projector", "sam2_image_encoder", "sam2_mask_decoder"} <= changed
    assert changed <= {"seg_projector", "sam2_image_encoder", "sam2_prompt_encoder", "sam2_mask_decoder"}


def test_loss_decreases_on_a_fixed_batch_and_outputs_are_written(tmp_path):
    model = tiny_model(0)
    stage = get_stage(3, "tiny").replace(max_steps=20, grad_accum=1, save_every=100, warmup_steps=1)
    res = train(stage, model, make_dataset(1), collate, tmp_path, progress=False)
    assert len(res.losses) == 20
    assert res.losses[-1] < 0.5 * res.losses[0], res.losses
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 21))
    assert rows[0]["lr"] < rows[1]["lr"]  # warm-up, then cosine decay
    assert rows[-1]["lr"] < rows[2]["lr"]
    assert all(r["mask_loss"] > 0 and r["grad_norm"] > 0 for r in rows)
    assert (tmp_path / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert res.final_dir.name == "step_000020"  # the last step is always saved


def test_accumulation_equals_one_big_batch():
    """2 micro-batches x accumulation 2 give the gradients of 1 micro-batch of 2: the LM loss
    is averaged over the window and mask losses are divided by the WINDOW's mask count
    (without that normalisation the mask gradient would be twice as large)."""
    data = make_dataset(2, seed=3)
    grads = []
    for micro in ([collate([data[0]]), collate([data[1]])], [collate(data)]):
        model = tiny_model(0)
        model.set_trainable(["llm", "lm_head", "seg_projector", "sam2_mask_decoder"])
        window = _accumulate(Objective(model), micro, DistContext(), contextlib.nullcontext())
        lm, mask = window.terms["lm"], sum(window.terms[n] for n in MASK_TERMS)
        grads.append(({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, lm, mask))
    (g1, lm1, m1), (g2, lm2, m2) = grads
    assert lm1 == pytest.approx(lm2, rel=1e-5) and m1 == pytest.approx(m2, rel=1e-5) and m1 > 0
    assert set(g1) == set(g2) and any(n.startswith("seg_projector") for n in g1)
    for n in g1:
        torch.testing.assert_close(g1[n], g2[n], rtol=1e-4, atol=1e-6)  # fp32 summation-order noise


def test_a_stage_with_copy_attention_trains_it_and_logs_its_loss(tmp_path):
    data = make_dataset(2, seed=2)
    for item in data:  # each answer token copies from image token 1 (the second <|image_pad|>)
        sup = (item["labels"] != -100).nonzero().flatten()
        item["copy_pairs"] = torch.stack([sup[:3] - 1, torch.full((3,), 2)], 1)

    def with_pairs(items):
        batch = collate(items)
        batch["copy_pairs"] = torch.cat([torch.cat([torch.full((3, 1), b), it["copy_pairs"]], 1) for b, it in enumerate(items)])
        return batch

    model = tiny_model(0)
    stage = get_stage(3, "tiny").replace(max_steps=15, grad_accum=1, micro_batch_size=2, warmup_steps=1, save_every=100,
                                         copy_attention={"layer": 1, "head": 2, "weight": 2.0})
    train(stage, model, data, with_pairs, tmp_path, progress=False)
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["copy_loss"] < 0.5 * rows[0]["copy_loss"] and rows[0]["copy_loss"] > 0
    assert all(r["loss"] == pytest.approx(r["lm_loss"] + r["mask_loss"] + r["copy_loss"]) for r in rows)
    assert model.copy_attention.layer == 1 and model.copy_attention.weight == 2.0
    train(get_stage(3, "tiny").replace(max_steps=1, grad_accum=1), model, data, with_pairs, tmp_path / "b", progress=False)
    assert model.copy_attention is None  # a stage without it turns it off
    with pytest.raises(ValueError, match="copy_attention is not supported with --strategy fsdp2"):
        train(stage, model, data, with_pairs, tmp_path / "c", progress=False, dist_ctx=DistContext(strategy="fsdp2"))


def test_a_stage_with_token_reading_trains_its_head_and_logs_its_loss(tmp_path):
    from citrus_v.model.token_reading import SLOTS

    data = make_dataset(2, seed=3)
    g = torch.Generator().manual_seed(0)
    for item in data:  # a fixed set of characters on each merged token of the item's image
        n = int(item["image_grid_thw"].prod(1).sum()) // 4
        item["reading"] = torch.randint(1, 20, (n, SLOTS), generator=g)

    def with_reading(items):
        batch = collate(items)
        batch["reading"] = torch.cat([it["reading"] for it in items])
        return batch

    model = tiny_model(0)
    stage = get_stage(1, "tiny").replace(max_steps=20, grad_accum=1, micro_batch_size=2, warmup_steps=1, save_every=100,
                                         lr=3e-3, token_reading={"weight": 0.5}, part_lr_scale={"reading_head": 2.0})
    train(stage, model, data, with_reading, tmp_path, progress=False)
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["reading_loss"] < 0.5 * rows[0]["reading_loss"] and rows[0]["reading_loss"] > 0
    assert all(r["loss"] == pytest.approx(r["lm_loss"] + r["mask_loss"] + r["reading_loss"]) for r in rows)
    assert model.token_reading.weight == 0.5 and all(p.requires_grad for p in model.token_reading.parameters())
    train(get_stage(1, "tiny").replace(max_steps=1, grad_accum=1), model, data, with_reading, tmp_path / "b", progress=False)
    assert model.token_reading is None  # a stage without it turns it off


def test_hook_grad_scale_is_set_per_stage(tmp_path):
    model = tiny_model(0)
    train(get_stage(3, "tiny").replace(max_steps=1, grad_accum=1), model, make_dataset(1), collate, tmp_path, progress=False)
    assert model.config.seg_grad_scale == 0.001
    train(get_stage(4, "tiny").replace(max_steps=1, grad_accum=1), model, make_dataset(1), collate, tmp_path / "b", progress=False)
    assert model.config.seg_grad_scale == 1.0


def test_loader_workers_give_the_same_batches_in_the_same_order(tmp_path):
    stage = get_stage(3, "tiny").replace(max_steps=4, grad_accum=2, micro_batch_size=1, save_every=100)
    runs = []
    for workers in (0, 2):
        res = train(stage, tiny_model(0), make_dataset(5), collate, tmp_path / f"w{workers}", progress=False,
                    device="cpu", loader_workers=workers)
        runs.append(res.losses)
    assert len(runs[0]) == 4 and runs[0] == runs[1]


def test_time_budget_shortens_the_run_and_its_schedule(tmp_path):
    from citrus_v.train import checkpointing as ckpt

    stage = get_stage(3, "tiny").replace(max_steps=500, grad_accum=1, micro_batch_size=1, save_every=1000, warmup_steps=1)
    # 25 steps are timed (5 + 20); a budget of ~0 leaves none beyond them
    res = train(stage, tiny_model(0), make_dataset(3), collate, tmp_path, progress=False, device="cpu", time_budget_s=1e-3)
    assert len(res.losses) == 25
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 25
    # the cosine was re-aimed at step 25: the next lr is the floor, where a 500-step decay would still be near the top
    state = ckpt.load_checkpoint(res.final_dir)
    assert state.trainer["total_steps"] == 25
    assert state.scheduler["_last_lr"][0] < 0.05 * stage.lr < 0.9 * stage.lr < rows[-1]["lr"]


def test_time_budget_refits_while_the_step_time_settles():
    from citrus_v.train.recipe import _TimeBudget

    now = [0.0]
    budget = _TimeBudget(100.0, start_step=0, cap=1000, skip=5, measure=20, clock=lambda: now[0])
    ends = {}
    for step in range(1, 1001):
        now[0] += 1.0 if step <= 25 else 0.25  # slow start-up steps, then four times faster
        if (end := budget.fit(step)) is not None:
            ends[step] = end
    # step 25: 25 s spent, 75 s left at 1 s/step -> 100; step 45: 30 s spent, 70 s at 0.25 -> 325;
    # then the end holds while the window's rate does; no re-fit once half the run is done
    assert ends[25] == 100 and ends[45] == 325
    assert set(ends.values()) == {100, 325}
    assert max(ends) <= 325 / 2 + 20
    # one slow window (something else ran beside the training) does not cut the run short; a lasting
    # slowdown does, after three windows
    for slow_steps, expect_short in ((range(106, 126), False), (range(106, 400), True)):
        now[0] = 0.0
        budget = _TimeBudget(300.0, start_step=0, cap=5000, skip=5, measure=20, clock=lambda: now[0])
        ends = []
        for step in range(1, 1001):
            now[0] += 1.0 if step in slow_steps else 0.25
            if (end := budget.fit(step)) is not None:
                ends.append(end)
        assert ends[0] == 1200  # step 25: 6.25 s spent, 293.75 s left at 0.25 s a step -> 25 + 1175
        assert (min(ends) < 700) == expect_short, ends
    # the cap bounds any fit
    capped = _TimeBudget(1e6, start_step=0, cap=50, clock=lambda: now[0])
    assert [capped.fit(s) for s in range(1, 26)][-1] == 50


def test_gradient_checkpointing_reaches_the_transformers_parts_without_deprecated_calls():
    import warnings

    from citrus_v.train.recipe import _enable_gradient_checkpointing

    model = tiny_model().train()
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # transformers' renamed gradient_* methods warn
        _enable_gradient_checkpointing(model)
    on = {type(m).__name__ for m in model.modules() if getattr(m, "is_activation_checkpointing", False)}
    assert {"Qwen2_5_VLTextModel", "Qwen2_5_VisionTransformerPretrainedModel"} <= on
    ids = torch.randint(0, 100, (1, 12))
    model.mllm(input_ids=ids, labels=ids).loss.backward()  # recomputation works (non-reentrant)
    assert model.mllm.lm_head.weight.grad is not None
