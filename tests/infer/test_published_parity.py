"""Issue 20 points 1, 3, 5: a folder in the published layout runs as the published Citrus-V does.

The reference below is the published decode written out from the published code's facts, not
from ours (docs/published_checkpoint.md cites the files):

* SAM2 input: qwen_vl_utils' ``fetch_image`` smart-resizes the image (PIL's default resample,
  MAX_PIXELS=65535 and qwen_vl_utils' MIN_PIXELS 4*28*28 in deploy), the template stretches that
  image to 1024 x 1024 with LANCZOS, /255 and ImageNet mean/std (numpy, float64 then float32);
* features: the lowest FPN level plus the no-memory embedding; conv_s0/conv_s1 on the two others;
* prompt: no points, so two "not a point" tokens (the empty point and the encoder's padding),
  then the projected [SEG]: three sparse tokens; the no-mask dense embedding;
* multimask output, the candidate with the best predicted IoU, 256 x 256 logits, and NO
  object-score gate (its torch.where is commented out).
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

import citrus_v.infer.predictor as predictor_module
from citrus_v import cli
from citrus_v.config import CitrusVConfig, citrus_v_8b_config, tiny_config
from citrus_v.infer.commands import model_kwargs_from_args
from citrus_v.infer.predictor import Predictor
from citrus_v.model.checkpoint import to_published_state_dict
from citrus_v.model.citrus_v import CitrusV
from citrus_v.model.loading import pixel_range, published_config_dict

from tests.infer.conftest import ScriptedHead

STOCK_QWEN = {"min_pixels": 3136, "max_pixels": 12845056}  # Qwen2.5-VL's preprocessor_config.json
DEPLOY = (4 * 28 * 28, 65535)  # published deploy: MAX_PIXELS=65535, qwen_vl_utils' MIN_PIXELS


def _gated_1024_config() -> CitrusVConfig:
    """The tiny LLM/ViT with a 1024-input SAM2 (256 x 256 logits as published), gate ON as the 8b
    preset had it: the published layout must turn it off."""
    config = tiny_config()
    config.segmenter = replace(config.segmenter, image_size=1024, object_score_gate=True)
    return config


def write_published_folder(out: Path, model: CitrusV, tokenizer_dir: Path, preprocessor: dict | None) -> Path:
    """``model`` in the published layout: flat config, two shards + index, tokenizer files."""
    tensors = to_published_state_dict(model.state_dict())
    keys = sorted(tensors)
    weight_map = {}
    for i, part in enumerate((keys[::2], keys[1::2])):
        name = f"model-0000{i + 1}-of-00002.safetensors"
        save_file({k: tensors[k] for k in part}, str(out / name))
        weight_map.update(dict.fromkeys(part, name))
    (out / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (out / "config.json").write_text(json.dumps(published_config_dict(model.config)))
    if preprocessor is not None:
        (out / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizer_dir / name, out / name)
    return out


@pytest.fixture(scope="module")
def parity_dir(tiny_dir, tmp_path_factory) -> Path:
    torch.manual_seed(3)
    model = CitrusV(_gated_1024_config()).eval()
    with torch.no_grad():  # the object-score head says "no object" everywhere: a gate would blank every mask
        model.segmenter.sam2.mask_decoder.pred_obj_score_head.proj_out.bias.fill_(-50.0)
    return write_published_folder(tmp_path_factory.mktemp("published1024"), model, tiny_dir, STOCK_QWEN)


@pytest.fixture(scope="module")
def parity_predictor(parity_dir) -> Predictor:
    return Predictor.from_pretrained(parity_dir, config=_gated_1024_config())


# ------------------------------------------------------------------ the published rules, written out
def published_smart_resize(height: int, width: int, min_pixels: int, max_pixels: int, factor: int = 28) -> tuple[int, int]:
    """qwen_vl_utils' smart_resize: sides rounded to the factor, then scaled into the pixel range."""
    h_bar, w_bar = max(factor, round(height / factor) * factor), max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar, w_bar = math.floor(height / beta / factor) * factor, math.floor(width / beta / factor) * factor
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar, w_bar = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def published_sam_input(rgb: np.ndarray) -> torch.Tensor:
    height, width = published_smart_resize(*rgb.shape[:2], *DEPLOY)
    fetched = Image.fromarray(rgb).resize((width, height))  # fetch_image: PIL's default resample
    square = np.array(fetched.resize((1024, 1024), Image.Resampling.LANCZOS), dtype=np.float32) / 255.0
    normed = (square - (0.485, 0.456, 0.406)) / (0.229, 0.224, 0.225)  # float64, as numpy makes it
    return torch.from_numpy(np.transpose(normed, (2, 0, 1)).astype(np.float32))[None]  # (1, 3, 1024, 1024)


@torch.no_grad()
def published_decode(model: CitrusV, sam_input: torch.Tensor, seg_states: torch.Tensor):
    """-> logits (n, 256, 256), predicted IoU (n,), chosen candidate (n,), object logits (n,)."""
    sam2 = model.segmenter.sam2
    s4, s8, s16 = sam2.vision_encoder(sam_input, return_dict=True).fpn_hidden_states
    n = seg_states.shape[0]
    embeddings = (s16 + sam2.no_memory_embedding.view(1, -1, 1, 1)).expand(n, -1, -1, -1)
    high_res = [sam2.mask_decoder.conv_s0(s4).expand(n, -1, -1, -1), sam2.mask_decoder.conv_s1(s8).expand(n, -1, -1, -1)]
    not_a_point = sam2.prompt_encoder.not_a_point_embed.weight.expand(n, 2, -1)  # (n, 2, C)
    sparse = torch.cat([not_a_point, model.seg_projector(seg_states)[:, None]], dim=1)[:, None]  # (n, 1, 3, C)
    dense = sam2.prompt_encoder.no_mask_embed.weight.view(1, -1, 1, 1).expand(n, -1, *embeddings.shape[-2:])
    masks, iou, _, object_logits = sam2.mask_decoder(
        image_embeddings=embeddings,
        image_positional_embeddings=sam2.get_image_wide_positional_embeddings().expand(n, -1, -1, -1),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=True,
        high_resolution_features=high_res,
    )
    masks, iou = masks[:, 0], iou[:, 0]  # (n, 3, 256, 256), (n, 3)
    pick = iou.argmax(dim=-1)
    rows = torch.arange(n)
    return masks[rows, pick], iou[rows, pick], pick, object_logits.reshape(n)


# ------------------------------------------------------------------ point 1
def test_8b_preset_and_published_folders_have_no_object_score_gate(parity_predictor):
    assert citrus_v_8b_config().segmenter.object_score_gate is False
    assert parity_predictor.model.config.segmenter.object_score_gate is False  # even though the config given had it


def test_predictor_masks_equal_the_published_decode(parity_predictor, monkeypatch):
    predictor = parity_predictor
    rng = np.random.default_rng(7)
    rgb = rng.integers(0, 256, size=(300, 400, 3), dtype=np.uint8)  # 120,000 px: the deploy range shrinks it
    captured = {}
    original = predictor_module.decode_seg_states

    def spy(sessions, seg_states, owner):
        captured["states"] = seg_states.detach().clone()
        captured["out"] = original(sessions, seg_states, owner)
        return captured["out"]

    monkeypatch.setattr(predictor_module, "decode_seg_states", spy)
    script = predictor.tokenizer.encode("Sure, it is [SEG].", add_special_tokens=False) + [predictor.eos_token_id]
    head = predictor.model.mllm.lm_head
    predictor.model.mllm.lm_head = ScriptedHead(head, script)
    try:
        pred = predictor.predict([rgb], "Please segment the liver.")
    finally:
        predictor.model.mllm.lm_head = head
    assert len(pred.masks) == 1
    ours_logits, ours_iou = captured["out"]

    sam_input = published_sam_input(rgb)
    # the old path (the original image, bilinear) gives a different input: the test can tell them apart
    from citrus_v.data.image_processing import sam_preprocess

    assert (sam_preprocess(rgb, 1024) - sam_input[0]).abs().max() > 0.1
    logits, iou, pick, object_logits = published_decode(predictor.model, sam_input, captured["states"])
    assert (object_logits < 0).all()  # a gate would have replaced every logit by -1024
    assert ours_logits.shape == logits.shape == (1, 256, 256)
    assert (ours_logits - logits).abs().max().item() <= 1e-5
    assert torch.equal(ours_iou, iou) and pred.masks[0].score == pytest.approx(float(iou[0]))
    _, candidates_iou = predictor.model.segmenter.decode(
        predictor.image_session(rgb).features, torch.tensor([0]),
        predictor.model.seg_projector(captured["states"])[:, None], candidates=True,
    )  # fmt: skip
    assert int(candidates_iou.argmax(dim=-1)[0]) == int(pick[0])  # same candidate picked
    upsampled = F.interpolate(logits[:, None], size=rgb.shape[:2], mode="bilinear", align_corners=False)[0, 0] > 0
    assert np.array_equal(pred.masks[0].mask, upsampled.numpy())


def test_sam_input_is_the_smart_resized_image_with_lanczos(parity_predictor):
    rgb = np.random.default_rng(1).integers(0, 256, size=(300, 400, 3), dtype=np.uint8)
    processor = parity_predictor.template.processor
    assert processor.resized_hw(300, 400) == published_smart_resize(300, 400, *DEPLOY)
    assert (processor.sam(rgb) - published_sam_input(rgb)[0]).abs().max().item() <= 1e-5


def test_a_stock_qwen_processor_range_does_not_win(parity_predictor, parity_dir, tmp_path):
    pixels = parity_predictor.pixel_range
    assert (pixels["min_pixels"], pixels["max_pixels"]) == DEPLOY
    assert "published deploy range" in pixels["source"] and "ignored" in pixels["source"]
    low, high, source = pixel_range(parity_dir, "published", max_pixels=1_003_520)  # the detection-eval setting
    assert (low, high, source) == (DEPLOY[0], 1_003_520, "--min-pixels/--max-pixels")
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"min_pixels": 200704, "max_pixels": 1003520}))
    assert pixel_range(tmp_path, "published") == (200704, 1003520, str(tmp_path / "preprocessor_config.json"))
    assert pixel_range(tmp_path / "none", "published")[:2] == DEPLOY  # no file: the deploy range


def test_pixel_flags_reach_the_predictor(parity_dir):
    flagged = Predictor.from_pretrained(parity_dir, config=_gated_1024_config(), min_pixels=200704, max_pixels=1003520)
    assert flagged.pixel_range == {"min_pixels": 200704, "max_pixels": 1003520, "source": "--min-pixels/--max-pixels"}
    assert flagged.template.processor.resized_hw(300, 400) == published_smart_resize(300, 400, 200704, 1003520)


@pytest.mark.parametrize("command", [["predict", "--image", "x.png", "--prompt", "p"], ["eval", "--data", "d.jsonl", "--out", "o"], ["serve"]])
def test_model_flags_on_predict_eval_and_serve(command):
    parser = cli.build_parser()
    args = parser.parse_args([*command, "--device", "cpu", "--dtype", "bfloat16", "--min-pixels", "3136",
                              "--max-pixels", "65535", "--text-boxes"])  # fmt: skip
    assert model_kwargs_from_args(args) == {"device": "cpu", "dtype": torch.bfloat16, "min_pixels": 3136,
                                            "max_pixels": 65535, "tighten_boxes": False}  # fmt: skip
    args = parser.parse_args([*command, "--tighten-boxes"])
    assert model_kwargs_from_args(args)["tighten_boxes"] is True and model_kwargs_from_args(args)["dtype"] is None
    assert model_kwargs_from_args(parser.parse_args(command))["tighten_boxes"] is None  # the folder decides


def test_bad_model_flags_are_one_line_errors(capsys):
    for bad in (["--dtype", "int8"], ["--tighten-boxes", "--text-boxes"]):
        with pytest.raises(SystemExit) as exit_info:  # argparse: usage and one line, status 2
            cli.main(["predict", "--image", "x.png", "--prompt", "p", *bad])
        assert exit_info.value.code == 2
    parser = cli.build_parser()
    from citrus_v.errors import UserError

    with pytest.raises(UserError, match=r"--min-pixels 9000 is above --max-pixels 8000"):
        model_kwargs_from_args(parser.parse_args(["serve", "--min-pixels", "9000", "--max-pixels", "8000"]))
    with pytest.raises(UserError, match=r"--max-pixels must be >= 1"):
        model_kwargs_from_args(parser.parse_args(["serve", "--max-pixels", "0"]))
    with pytest.raises(UserError, match=r"--device 'gpu0'"):
        model_kwargs_from_args(parser.parse_args(["serve", "--device", "gpu0"]))
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match=r"--device cuda:1: no CUDA device"):
            model_kwargs_from_args(parser.parse_args(["eval", "--data", "d", "--out", "o", "--device", "cuda:1"]))


def test_serve_loads_with_the_model_flags(tiny_dir, capsys):
    from citrus_v.serve.commands import _load

    kwargs = {"device": "cpu", "dtype": torch.bfloat16, "min_pixels": 3136, "max_pixels": 65535, "tighten_boxes": False}
    adapter = _load(tiny_dir, kwargs)
    predictor = adapter.predictor
    assert next(predictor.model.parameters()).dtype == torch.bfloat16 and predictor.tighten_boxes is False
    assert predictor.pixel_range["max_pixels"] == 65535 and "[pixels] 3136..65535" in capsys.readouterr().err
