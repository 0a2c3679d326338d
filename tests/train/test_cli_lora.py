"""The one-command fine-tune on one's own data, and LoRA."""

from __future__ import annotations

import json

import torch

from citrus_v.cli import main
from citrus_v.model.citrus_v import part_of
from citrus_v.model.objectives import forward_inputs
from citrus_v.train.lora import LoraSettings, apply_lora, merge_lora_state_dict, restrict_to_lora
from citrus_v.train.recipe import train
from citrus_v.train.stages import get_stage
from tests.train.synthetic import collate, make_dataset, tiny_model


def test_finetune_command_from_init(tmp_path):
    from citrus_v.data.phantoms import generate_suite
    from citrus_v.model.loading import load_model_and_tokenizer

    files = generate_suite(tmp_path / "suite", 4, n_val=0, n_test=0, size=112, tasks=["segmentation"], progress=False)
    assert main(["train", "--stage", "4", "--data", str(files["train"]), "--steps", "2", "--out", str(tmp_path / "a"), "--no-progress"]) == 0
    base = tmp_path / "a" / "final"
    assert main(["train", "--stage", "4", "--data", str(files["train"]), "--init", str(base), "--steps", "1",
                 "--out", str(tmp_path / "b"), "--no-progress"]) == 0
    # the image sizing the model trained with travels with it
    pre = json.loads((base / "preprocessor_config.json").read_text())
    assert (pre["min_pixels"], pre["max_pixels"]) == (112 * 112, 224 * 224)
    m0, _, tpl0 = load_model_and_tokenizer(base)
    assert (tpl0.image_cfg.min_pixels, tpl0.image_cfg.max_pixels) == (112 * 112, 224 * 224)
    m1, tok, _ = load_model_and_tokenizer(tmp_path / "b" / "final")
    changed = {part_of(n) for (n, a), b in zip(m0.state_dict().items(), m1.state_dict().values()) if not torch.equal(a, b)}
    assert changed and changed <= {"seg_projector", "sam2_image_encoder", "sam2_prompt_encoder", "sam2_mask_decoder"}
    rows = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1] and rows[0]["mask_loss"] > 0
    assert (tmp_path / "b" / "loss_curve.png").is_file()


def test_lora_trains_only_adapters_inside_the_mllm_and_merges(tmp_path):
    model = tiny_model(0)
    settings = LoraSettings(r=4, alpha=8)
    apply_lora(model, settings)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    stage = get_stage(3, "tiny").replace(max_steps=1, grad_accum=1)
    res = train(stage, model, make_dataset(1), collate, tmp_path, progress=False, adjust_trainable=restrict_to_lora)
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    mllm_changed = [n for n in changed if n.startswith("mllm.")]
    assert mllm_changed and all("lora_" in n for n in mllm_changed)
    assert any(n.startswith("seg_projector") for n in changed)  # stage 3 still trains the seg side
    lora_numel = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    assert res.trainable_params < lora_numel + sum(p.numel() for n, p in model.named_parameters() if not n.startswith("mllm.")) + 1
    # merged plain weights reproduce the adapted model's logits
    plain = tiny_model(1)
    plain.load_state_dict(merge_lora_state_dict(model.state_dict(), settings.scaling), strict=True)
    batch = collate(make_dataset(1))
    model.eval(), plain.eval()
    with torch.no_grad():
        logits = [m(**forward_inputs(m, batch, logits=True)).logits for m in (plain, model)]
    torch.testing.assert_close(logits[0], logits[1], rtol=1e-4, atol=1e-4)


def test_a_token_reading_stage_from_files_ends_in_a_model_folder_without_its_head(tmp_path):
    from safetensors import safe_open

    from citrus_v.data.phantoms import generate_suite

    files = generate_suite(tmp_path / "suite", 4, n_val=0, n_test=0, size=112, tasks=["document"], progress=False)
    cfg = tmp_path / "stage.json"
    cfg.write_text(json.dumps({"base": "3:tiny", "name": "reading_smoke", "mixture": [["task:document", 1.0]],
                               "micro_batch_size": 2, "token_reading": {"weight": 1.0}}))
    out = tmp_path / "run"
    assert main(["train", "--stage", "3", "--stage-config", str(cfg), "--data", str(files["train"]), "--steps", "2",
                 "--out", str(out), "--no-progress"]) == 0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all(r["reading_loss"] > 0 for r in rows)
    with safe_open(str(out / "final" / "model.safetensors"), "pt") as f:
        assert not any("reading" in k for k in f.keys())
    from citrus_v.model.loading import load_model_and_tokenizer

    model, _, _ = load_model_and_tokenizer(out / "final")
    assert model.token_reading is None
