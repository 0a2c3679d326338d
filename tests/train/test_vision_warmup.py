"""Stage 0 (dense vision warm-up): targets, token layout, and a short real run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from citrus_v.config import CitrusVConfig
from citrus_v.data.image_processing import ImageConfig, ImageProcessor
from citrus_v.data.phantoms.suite import SuiteConfig, make_sample
from citrus_v.train.vision_warmup import (
    MODALITIES,
    STRUCTURES,
    DenseHeads,
    WarmupConfig,
    box_iou,
    dense_losses,
    format_report,
    occupancy_grid,
    presence_by_structure,
    run_warmup,
    structure_boxes,
    token_positions,
)


def test_occupancy_grid_is_the_covered_share_of_each_patch():
    mask = np.zeros((56, 56), dtype=bool)
    mask[:, :28] = True  # left half
    mask[:14, 28:35] = True  # half of the patch at row 0, column 2
    occ = occupancy_grid({"liver": mask}, (4, 4))
    liver = occ[STRUCTURES.index("liver")]
    assert liver.shape == (4, 4)
    assert (liver[:, :2] == 255).all()
    assert liver[0, 2] == 128  # 0.5 x 255, rounded
    assert (liver[1:, 2:] == 0).all() and liver[0, 3] == 0
    assert occ.sum() == liver.sum()  # other channels empty


def test_unknown_structure_is_refused_by_name():
    with pytest.raises(KeyError, match="pancreas"):
        occupancy_grid({"pancreas": np.ones((28, 28), bool)}, (2, 2))


def test_every_suite_structure_and_modality_has_a_channel(tmp_path):
    cfg = SuiteConfig(seed=3, size=112)
    for i in range(60):
        s = make_sample(cfg, "train", i)
        if s.modality == "document":
            continue
        assert s.modality in MODALITIES
        assert set(s.all_masks) <= set(STRUCTURES), set(s.all_masks) - set(STRUCTURES)


def test_heads_map_merged_tokens_back_to_the_patch_grid():
    """The processor orders merged tokens row-major over the (h/2, w/2) grid, each covering a
    2x2 block of patches; DenseHeads must put each token's four outputs back on those patches."""
    proc = ImageProcessor(ImageConfig.for_model(CitrusVConfig.preset("tiny"), min_pixels=56 * 112, max_pixels=56 * 112))
    img = np.zeros((56, 112, 3), dtype=np.uint8)
    img[28:56, 56:84] = 255  # merged token (row 1, col 2) of a 2 x 4 token grid
    pv, grid = proc.qwen([img])
    assert grid.tolist() == [[1, 4, 8]]
    bright = pv.reshape(8, 4, -1).mean(dim=(1, 2)) > 0  # per merged token (groups of 4 patch rows)
    assert bright.nonzero().flatten().tolist() == [1 * 4 + 2]

    heads = DenseHeads(dim=3, merge=2, n_structures=1, n_modalities=2)
    with torch.no_grad():
        heads.occupancy.weight.zero_()
        heads.occupancy.bias.copy_(torch.arange(4.0))  # sub-patch (dy, dx) -> 2*dy + dx
        tokens = torch.zeros(8, 3)
        out = heads(tokens, grid)["occupancy"][0, 0]  # (4, 8)
    expect = torch.tensor([[0.0, 1.0], [2.0, 3.0]]).repeat(2, 4)
    assert torch.equal(out, expect)


def test_structure_boxes_are_tight_pixel_edges_and_nan_when_absent():
    mask = np.zeros((10, 20), dtype=bool)
    mask[2:5, 4:10] = True
    boxes = structure_boxes({"lesion": mask})
    assert np.allclose(boxes[STRUCTURES.index("lesion")], [0.2, 0.2, 0.5, 0.5])
    assert np.isnan(boxes[STRUCTURES.index("liver")]).all()
    assert box_iou(torch.tensor([0.0, 0, 1, 1]), torch.tensor([0.0, 0, 1, 0.5])).item() == pytest.approx(0.5)


def test_global_facts_are_asked_of_every_token():
    heads = DenseHeads(dim=8, merge=2, n_structures=2, n_modalities=3)
    out = heads(torch.randn(2 * 8, 8), torch.tensor([[1, 4, 8], [1, 4, 8]]))
    assert out["presence"].shape == (2, 2, 4, 2) and out["boxes"].shape == (2, 2, 4, 2, 4)
    assert out["modality"].shape == (2, 2, 4, 3)
    boxes = torch.tensor([[[0.1, 0.1, 0.5, 0.5], [float("nan")] * 4]] * 2)  # structure 1 absent
    cfg = WarmupConfig()
    losses = dense_losses(out, torch.zeros(2, 2, 4, 8), torch.tensor([0, 2]), boxes, cfg)
    assert all(torch.isfinite(v) for v in losses.values())
    losses["box_loss"].backward()
    assert heads.boxes.weight.grad[4:].abs().sum() == 0  # the absent structure's box is not trained
    assert heads.boxes.weight.grad[:4].abs().sum() > 0


def test_positive_weight_scales_only_the_positive_targets():
    heads = DenseHeads(dim=8, merge=2, n_structures=2, n_modalities=3)
    out = {k: torch.zeros_like(v) for k, v in heads(torch.randn(2 * 8, 8), torch.tensor([[1, 4, 8], [1, 4, 8]])).items()}
    out["boxes"] = out["boxes"] + 0.5  # sigmoid(0), as the zero logits give
    occupancy = torch.zeros(2, 2, 4, 8)
    occupancy[0, 1, :2, :2] = 1.0  # 4 of 128 cells of structure 1 are covered
    boxes = torch.tensor([[[float("nan")] * 4, [0.0, 0.0, 0.25, 0.5]], [[float("nan")] * 4] * 2])  # one positive
    plain = dense_losses(out, occupancy, torch.tensor([0, 1]), boxes, WarmupConfig())
    heavy = dense_losses(out, occupancy, torch.tensor([0, 1]), boxes, WarmupConfig(positive_weight=5.0))
    # zero logits: every target costs log 2; weighting the positives by 5 adds 4 * log 2 per positive
    n_occ, n_pres = occupancy.numel(), 2 * 2 * 4 * 2  # cells; tokens x structures
    assert plain["occupancy_loss"].item() == pytest.approx(np.log(2))
    assert heavy["occupancy_loss"].item() == pytest.approx(np.log(2) * (1 + 4 * 4 / n_occ))
    assert heavy["presence_loss"].item() == pytest.approx(np.log(2) * (1 + 4 * 8 / n_pres))
    assert heavy["modality_loss"].item() == pytest.approx(plain["modality_loss"].item())
    with pytest.raises(ValueError, match="positive_weight"):
        WarmupConfig(positive_weight=0)


def test_presence_by_structure_counts_specificity_within_the_modalities_where_it_occurs():
    k = STRUCTURES.index("nodule")
    says = np.zeros((4, len(STRUCTURES)))
    holds = np.zeros((4, len(STRUCTURES)), dtype=bool)
    modality = np.array([MODALITIES.index(m) for m in ("xray", "xray", "mr", "xray")])
    holds[0, k] = True
    says[:, k] = [1.0, 0.5, 1.0, 0.0]  # the MR image's false "present" does not count: no nodules there
    got = presence_by_structure(says, holds, modality)
    assert got["nodule"] == {"recall": 1.0, "specificity": 0.75}
    assert got["liver"] == {"recall": None, "specificity": None}


def test_token_positions_are_centres():
    pos = token_positions(2, 4)
    assert pos.shape == (2, 4, 2)
    assert torch.allclose(pos[1, 3], torch.tensor([0.75, 0.875]))


def test_a_short_warmup_learns_and_writes_a_complete_model_folder(tmp_path):
    from citrus_v.data.phantoms.suite import generate_suite
    from citrus_v.model.loading import load_model_and_tokenizer
    from citrus_v.model.build import build_model
    from citrus_v.train.stages import get_stage

    torch.set_num_threads(1)
    files = generate_suite(tmp_path / "suite", 40, n_val=0, n_test=0, seed=5, size=112, progress=False)
    cfg = WarmupConfig(seed=5, n=48, n_val=16, size=112, steps=30, batch_size=8, lr=3e-3, warmup_steps=3, workers=1)
    report = run_warmup(cfg, tmp_path / "w", data_files=[files["train"]], preset="tiny", progress=False)
    tmp_path = tmp_path / "w"
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 30
    first, last = np.mean([r["loss"] for r in rows[:5]]), np.mean([r["loss"] for r in rows[-5:]])
    assert last < 0.7 * first, (first, last)
    assert report["val_after"]["modality_acc_per_token"] > report["val_before"]["modality_acc_per_token"]
    by_structure = report["val_after"]["presence_by_structure"]
    assert set(by_structure) == set(STRUCTURES)
    seen = [v for v in by_structure.values() if v["recall"] is not None]
    assert seen and all(0.0 <= v["recall"] <= 1.0 for v in seen)
    table = format_report(report)
    assert "presence recall" in table and "modality_acc_per_token" in table
    saved = json.loads((tmp_path / "warmup_eval.json").read_text())
    assert saved["config"]["steps"] == 30
    model, tokenizer, template = load_model_and_tokenizer(tmp_path / "final")  # tokenizer + sizing travel along
    assert template.image_cfg.max_pixels == 224 * 224
    vis = "mllm.model.visual.blocks.0.attn.qkv.weight"
    llm = "mllm.model.language_model.layers.0.mlp.up_proj.weight"
    seeded = build_model("tiny", seed=get_stage(1, "tiny").seed).state_dict()  # how a fresh stage-1 model starts
    assert not torch.equal(model.state_dict()[vis], seeded[vis])  # the vision tower trained
    assert torch.equal(model.state_dict()[llm], seeded[llm])  # the LLM did not
    assert (tmp_path / "loss_curve.png").stat().st_size > 1000


def test_an_interrupted_warmup_resumes_to_the_same_weights(tmp_path):
    """Checkpoint at step 3 of 6; drop everything after it (the step-6 checkpoint too, as a crash
    would) and resume: the final weights equal those of the uninterrupted run."""
    import shutil

    from citrus_v.data.phantoms.suite import generate_suite
    from citrus_v.model.citrus_v import CitrusV

    torch.set_num_threads(1)
    files = generate_suite(tmp_path / "suite", 30, n_val=0, n_test=0, seed=2, size=112, progress=False)
    cfg = WarmupConfig(seed=2, n=24, n_val=8, size=112, steps=6, batch_size=4, warmup_steps=1, workers=1, save_every=3)
    run_warmup(cfg, tmp_path / "a", data_files=[files["train"]], progress=False)
    assert sorted(p.name for p in (tmp_path / "a" / "checkpoints").glob("step_*")) == ["step_000003", "step_000006"]
    full = CitrusV.from_pretrained(tmp_path / "a" / "final").state_dict()

    shutil.rmtree(tmp_path / "a" / "final")
    shutil.rmtree(tmp_path / "a" / "checkpoints" / "step_000006")
    lines = (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    (tmp_path / "a" / "metrics.jsonl").write_text("\n".join(lines[:4]) + "\n")  # the crash hit during step 5
    run_warmup(cfg, tmp_path / "a", data_files=[files["train"]], progress=False, resume=True)
    resumed = CitrusV.from_pretrained(tmp_path / "a" / "final").state_dict()
    assert all(torch.equal(full[k], resumed[k]) for k in full)
    steps = [json.loads(line)["step"] for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_a_resumed_warmup_with_more_steps_extends_its_schedule_and_with_fewer_is_refused(tmp_path, caplog):
    """Stage 0 runs in the one recipe: --resume with another --steps behaves as in every stage."""
    import logging

    from citrus_v.data.phantoms.suite import generate_suite
    from citrus_v.train.recipe import TrainingRefused

    torch.set_num_threads(1)
    files = generate_suite(tmp_path / "suite", 20, n_val=0, n_test=0, seed=3, size=112, progress=False)
    cfg = WarmupConfig(seed=3, n=8, n_val=4, size=112, steps=4, batch_size=4, warmup_steps=1, workers=1, save_every=2)
    run_warmup(cfg, tmp_path / "r", data_files=[files["train"]], progress=False)
    longer = WarmupConfig(**{**cfg.__dict__, "steps": 6})
    with caplog.at_level(logging.INFO, logger="citrus_v.train.recipe"):
        run_warmup(longer, tmp_path / "r", data_files=[files["train"]], progress=False, resume=True)
    assert [r.getMessage() for r in caplog.records if "re-laid" in r.getMessage()] == [
        "stage0_vision_warmup: schedule re-laid over 6 steps (the checkpoint's run had 4); resuming at step 4"]
    steps = [json.loads(line)["step"] for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
    shorter = WarmupConfig(**{**cfg.__dict__, "steps": 3})
    with pytest.raises(TrainingRefused, match=r"^stage0_vision_warmup: the checkpoint is at step 6, past the 3 steps"):
        run_warmup(shorter, tmp_path / "r", data_files=[files["train"]], progress=False, resume=True)


def test_train_stage_0_reaches_the_warmup_and_refuses_flags_it_does_not_take(tmp_path, monkeypatch, capsys):
    from citrus_v.cli import main
    from citrus_v.train import vision_warmup

    data = tmp_path / "train.jsonl"
    data.write_text("")
    seen = {}
    monkeypatch.setattr(vision_warmup, "run_warmup", lambda cfg, out, **kw: seen.update(cfg=cfg, out=out, **kw) or {})
    monkeypatch.setattr(vision_warmup, "format_report", lambda report: "report")
    argv = ["train", "--stage", "0", "--data", str(data), "--out", str(tmp_path / "o"), "--steps", "7", "--lr", "0.01"]
    assert main(argv + ["--resume"]) == 0
    assert seen["cfg"].steps == 7 and seen["cfg"].lr == 0.01 and seen["resume"] and seen["data_files"] == [data]
    assert main(argv + ["--epochs", "2"]) == 2
    assert capsys.readouterr().err.strip() == "citrus-v train: --stage 0 (the vision warm-up) does not take --epochs"
