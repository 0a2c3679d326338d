"""The embedded default model: it ships with the package, loads with no argument, and its
outputs have the formats the rest of the project reads (quality is in docs/default_model.md)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from citrus_v.cli import main
from citrus_v.data.boxes import parse_boxes
from citrus_v.eval.metrics.detection import box_iou
from citrus_v.infer.predictor import Predictor, default_model_dir

EXAMPLES = Path(__file__).resolve().parents[2] / "citrus_v" / "assets" / "examples"


@pytest.fixture(scope="module")
def default() -> Predictor:
    assert (default_model_dir() / "model.safetensors").is_file(), "citrus_v/assets/default must ship with the package"
    return Predictor.from_pretrained(None)


def test_default_model_is_small_and_complete():
    files = {p.name: p.stat().st_size for p in default_model_dir().iterdir()}
    for name in ("config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json"):
        assert name in files
    assert files["model.safetensors"] <= 50 * 1024 * 1024


def test_segmentation_prompt_on_the_real_ct_slice_gives_one_mask_per_seg(default):
    pred = default.predict([EXAMPLES / "ct_abdomen_liver.dcm"], "Please segment the liver.")
    assert pred.answer.count("[SEG]") == len(pred.masks) >= 1
    mask = pred.masks[0]
    assert mask.mask.shape == (512, 512) and mask.mask.dtype == bool
    assert 0.0 <= mask.score <= 1.5  # SAM's IoU head is a regression, not a probability
    assert 0.0 < pred.mean_token_prob <= 1.0


def test_lung_prompt_on_the_bundled_real_chest_xray_covers_both_sides_of_the_chest(default):
    # a real PA X-ray the default never trained on (NOTICE.md); its lungs fill about 0.36 of the image,
    # 0.37 of the left half and 0.34 of the right, and nothing of the bottom eighth (measured on this machine)
    pred = default.predict([EXAMPLES / "chest_xray_pa.jpg"], "Please segment the lungs.")
    assert pred.answer.count("[SEG]") == len(pred.masks) == 1
    mask = pred.masks[0].mask
    h, w = mask.shape
    assert (h, w) == (512, 512)
    assert mask[:, : w // 2].mean() > 0.2 and mask[:, w // 2 :].mean() > 0.2  # both lungs, not one
    assert mask.mean() < 0.6 and mask[7 * h // 8 :].mean() < 0.05  # not the whole image, not below the chest


def test_detection_answer_is_valid_box_json_in_original_pixels(default):
    image = np.asarray(Image.open(EXAMPLES / "phantom_ct_lesion.png").convert("RGB"))
    pred = default.predict([image], "Please locate the lesion.")
    parsed = parse_boxes(pred.raw_text)
    assert parsed, f"no parsable box in {pred.raw_text!r}"
    assert len(pred.boxes) == len(parsed)
    h, w = image.shape[:2]
    for box in pred.boxes:
        assert len(box.bbox) == 4 and all(-1 <= v <= max(h, w) + 1 for v in box.bbox)
    # the segmenter tightened the first box around what the written one framed, not somewhere else
    first = pred.boxes[0]
    assert first.text_bbox is not None and np.isfinite(first.score)
    assert box_iou(first.bbox, first.text_bbox) > 0.2, (first.bbox, first.text_bbox)


def test_reasoning_and_report_prompts_give_their_structures(default):
    image = EXAMPLES / "phantom_ct_lesion.png"
    cot = default.predict([image], "Is the lesion in the liver or the spleen? Think step by step.")
    assert cot.reasoning and cot.answer.strip()
    report = default.predict([image], "Write a report for this image.")
    assert report.report is not None and report.report.findings and report.report.impression


def test_predict_cli_json_on_the_bundled_ct(tmp_path, capsys):
    assert main(["predict", "--image", str(EXAMPLES / "ct_abdomen_liver.dcm"), "--prompt", "Please segment the liver.",
                 "--out", str(tmp_path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("answer", "reasoning", "boxes", "masks", "report"):
        assert key in out
    assert out["masks"] and all(Path(p).is_file() for p in out["masks"])
    assert Path(out["overlay"]).is_file()


def test_tiled_vessels_on_the_bundled_fundus_stay_inside_the_eye(default):
    # a real fundus photograph (CC0, NOTICE.md) at DRIVE's 565 px, in 2x2 tiles: every tile answers with a
    # mask; the stitched mask covers 0.16 of the eye's disc and 0.008 of the black border outside it
    # (measured on this machine), so vessels-like coverage inside and next to nothing outside
    image = EXAMPLES / "fundus_retina.jpg"
    rgb = default.load_images([image])[0]
    eye = rgb.astype(int).sum(axis=2) > 60  # the lit disc; the border is black
    pred = default.predict_tiled(image, "Please segment the retinal vessels.")
    assert pred.answer == "Sure, it is [SEG]." and len(pred.masks) == 1
    mask = pred.masks[0].mask
    assert mask.shape == (565, 565)
    assert 0.05 < mask[eye].mean() < 0.35 and mask[~eye].mean() < 0.03
