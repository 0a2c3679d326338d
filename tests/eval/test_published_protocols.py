"""`citrus-v eval` on ms-swift grounding records and the published protocols (issue 20 point 9).

Prompts with ``<ref-object>``/``<bbox>`` are sent as training renders the same user turn; the protocols'
settings, prompt and scoring follow the published scripts' facts (docs/published_checkpoint.md), checked
here on hand-computed values.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from citrus_v.cli import build_parser
from citrus_v.data.image_processing import ImageConfig
from citrus_v.data.schema import Record
from citrus_v.data.template import ChatTemplate
from citrus_v.data.tokenizer import build_qwen25_tokenizer
from citrus_v.errors import UserError
from citrus_v.eval import published_protocols as pp
from citrus_v.eval.commands import run_eval
from citrus_v.eval.runner import evaluate
from citrus_v.infer.predictor import Predictor
from citrus_v.infer.types import Box, Mask, Prediction

PADS = "<|vision_start|>" + "<|image_pad|>" * 20 + "<|vision_end|>"  # 150 x 100 -> 140 x 112 in the tiny config


@pytest.fixture(scope="module")
def qwen():
    return build_qwen25_tokenizer()


class Recorder:
    """A predictor with a chat template (so prompts are filled) that answers nothing and records prompts."""

    def __init__(self, template: ChatTemplate, config_name: str, answer: Prediction | None = None):
        self.template, self.model = template, SimpleNamespace(config=SimpleNamespace(name=config_name))
        self.prompts: list[str] = []
        self.answer = answer or Prediction(answer="", raw_text="")

    def predict(self, images, prompt):  # noqa: ANN001
        self.prompts.append(prompt)
        return self.answer

    def predict_batch(self, requests):  # noqa: ANN001
        return [self.predict(*r) for r in requests]


def _image(tmp: Path) -> None:
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (100, 150, 3), dtype=np.uint8)).save(tmp / "a.png")


GROUNDING = [
    {"messages": [{"role": "user", "content": "<image>Find the <ref-object>"}, {"role": "assistant", "content": "<bbox>"}],
     "images": ["a.png"], "objects": {"ref": ["liver"], "bbox": [[30, 20, 90, 60]]}},
    {"messages": [{"role": "user", "content": "<image>What is <bbox>?"}, {"role": "assistant", "content": "<ref-object>"}],
     "images": ["a.png"], "objects": {"ref": ["liver"], "bbox": [[0.2, 0.2, 0.6, 0.6]], "bbox_type": "norm1"}},
    {"messages": [{"role": "user", "content": "<image>Find the <ref-object>"}, {"role": "assistant", "content": "<bbox>"},
                  {"role": "user", "content": "And the <ref-object>?"}, {"role": "assistant", "content": "<bbox>"}],
     "images": ["a.png"], "objects": {"ref": ["liver", "kidney"], "bbox": [[30, 20, 90, 60], [0, 0, 150, 100]]}},
]


@pytest.mark.parametrize("config_name, style", [("8b", "published"), ("published", "published"), ("tiny", "ours")])
def test_eval_prompts_are_the_user_turn_training_renders(qwen, tmp_path, config_name, style):
    _image(tmp_path)
    records = [Record.from_dict(r) for r in GROUNDING]
    template = ChatTemplate(qwen, ImageConfig.tiny(), style=style)
    rec = Recorder(template, config_name)
    evaluate(rec, records, tmp_path, progress=False)
    checker = Predictor.__new__(Predictor)
    checker.tokenizer = qwen
    for record, sent in zip(records, rec.prompts):
        checker.check_prompt(sent)  # the real predictor takes it (no reserved token)
        trained = qwen.decode(template.encode_record(record, tmp_path).input_ids)
        turns = [t for t in trained.split("<|im_start|>") if t.startswith("user\n")]
        assert turns[-1] == "user\n" + sent.replace("<image>", PADS) + "<|im_end|>\n"
        assert "<ref-object>" not in sent
    if style == "published":
        assert rec.prompts[0] == "<image>Find the <|object_ref_start|>liver<|object_ref_end|>"
        assert rec.prompts[1] == '<image>What is ```json\n[\n{"bbox_2d": [28,22,84,67],"label": "liver"}\n]\n```?'
        assert rec.prompts[2] == "And the <|object_ref_start|>kidney<|object_ref_end|>?"  # refs counted from turn one
    else:
        assert rec.prompts[0] == "<image>Find the liver" and rec.prompts[1] == "<image>What is <bbox>?"


def test_the_template_flag_overrides_the_model_style(qwen, tmp_path, capsys):
    _image(tmp_path)
    (tmp_path / "d.jsonl").write_text(json.dumps(GROUNDING[0]) + "\n")
    for flag, want in (("ours", "<image>Find the liver"),
                       ("published", "<image>Find the <|object_ref_start|>liver<|object_ref_end|>")):
        rec = Recorder(ChatTemplate(qwen, ImageConfig.tiny()), "tiny")
        args = build_parser().parse_args(["eval", "--data", str(tmp_path / "d.jsonl"), "--out", str(tmp_path / "o"),
                                          "--template", flag, "--no-progress"])
        assert run_eval(args, predictor=rec) == 0
        assert rec.prompts == [want]
        assert json.loads((tmp_path / "o" / "predictions.jsonl").read_text())["prompt"] == want


def test_a_record_whose_placeholders_cannot_be_filled_is_one_line_naming_it(qwen, tmp_path):
    _image(tmp_path)
    bad = {"messages": [{"role": "user", "content": "<image>Find the <ref-object>"}, {"role": "assistant", "content": "x"}],
           "images": ["a.png"]}
    (tmp_path / "d.jsonl").write_text(json.dumps(GROUNDING[0]) + "\n" + json.dumps(bad) + "\n")
    args = build_parser().parse_args(["eval", "--data", str(tmp_path / "d.jsonl"), "--out", str(tmp_path / "o")])
    with pytest.raises(UserError, match=r"d.jsonl: record 1: messages use box placeholders .* no objects"):
        run_eval(args, predictor=Recorder(ChatTemplate(qwen, ImageConfig.tiny()), "8b"))


def test_grounding_markers_may_be_in_a_prompt_other_special_tokens_not(qwen):
    p = Predictor.__new__(Predictor)
    p.tokenizer = qwen
    reserved = p.reserved_strings()
    assert not {"<|object_ref_start|>", "<|box_end|>", "<bbox>", "</bbox>"} & set(reserved)
    assert {"[SEG]", "<|vision_start|>", "<|image_pad|>", "<|im_end|>"} <= set(reserved)


# --- the protocols' settings -----------------------------------------------------------------------------


def test_protocol_settings_are_the_published_scripts(qwen):
    for name, (lo, hi, tokens, sampled, temp) in {"mecovqa-g": (3136, 65535, 1024, True, 0.2),
                                                  "detection-p1": (3136, 1003520, 512, False, 1.0)}.items():
        rec = Recorder(ChatTemplate(qwen, ImageConfig.tiny(), style="published"), "8b")
        rec.tighten_boxes = True
        pp.configure(rec, pp.PROTOCOLS[name])
        cfg, s = rec.template.image_cfg, rec.settings
        assert (cfg.min_pixels, cfg.max_pixels) == (lo, hi) and rec.template.style == "published"
        assert cfg.pixel_source.startswith(f"--protocol {name}")  # pixel_range says the protocol set it
        assert (s.max_new_tokens, s.do_sample, s.temperature, s.seed) == (tokens, sampled, temp, 0)
        assert rec.tighten_boxes is False
        assert rec.template.processor.resized_hw(1000, 1000)[0] * rec.template.processor.resized_hw(1000, 1000)[1] <= hi


@pytest.mark.parametrize("flag", ["--max-new-tokens", "--min-pixels", "--max-pixels"])
def test_a_flag_the_protocol_sets_and_a_protocol_are_not_both_given(tmp_path, flag):
    (tmp_path / "d.jsonl").write_text(json.dumps(GROUNDING[0]) + "\n")
    args = build_parser().parse_args(["eval", "--data", str(tmp_path / "d.jsonl"), "--out", str(tmp_path / "o"),
                                      "--protocol", "detection-p1", flag, "9"])
    with pytest.raises(UserError, match=f"{flag}: --protocol detection-p1 sets the published value"):
        run_eval(args, predictor=None)


# --- scoring, on hand-computed values --------------------------------------------------------------------


def test_nearest_resize_is_opencvs_floor_rule():
    grid = np.zeros((256, 256), bool)
    grid[:, :128] = True  # left half
    # columns of a 6-wide target read source columns floor(j * 256 / 6) = 0, 42, 85, 128, 170, 213
    assert pp.nearest_resize(grid, (4, 6)).tolist() == [[True, True, True, False, False, False]] * 4
    small = np.array([[1, 0], [0, 1]], bool)
    assert pp.nearest_resize(small, (3, 3)).astype(int).tolist() == [[1, 1, 0], [1, 1, 0], [0, 0, 1]]


def test_first_mask_dice_uses_the_256_grid_of_the_first_mask():
    gt = np.zeros((4, 6), bool)
    gt[:, :2] = True  # 8 pixels
    grid = np.zeros((256, 256), bool)
    grid[:, :128] = True  # resized: 3 columns x 4 rows = 12 pixels, 8 shared
    first = Mask(np.zeros((4, 6), bool), 0.9)
    first.low_res = grid
    other = Mask(gt.copy(), 0.9)
    assert pp.first_mask_dice(Prediction("", "", masks=[first, other]), gt) == pytest.approx(2 * 8 / (12 + 8))
    assert pp.first_mask_dice(Prediction("", "", masks=[other]), gt) == 1.0  # no grid: the full-size mask
    assert pp.first_mask_dice(Prediction("", ""), gt) == 0.0
    assert pp.first_mask_dice(Prediction("", ""), np.zeros((4, 6), bool)) == 1.0  # both empty


def test_written_box_is_truncated_clamped_and_never_the_tightened_one():
    tightened = Box([0, 0, 10, 10], text_bbox=[5.9, 5.2, 20.7, 300.0], score=0.8)
    assert pp.written_box(Prediction("", "", boxes=[tightened, Box([1, 1, 2, 2])]), (100, 50)) == [5, 5, 20, 50]
    assert pp.written_box(Prediction("", "", boxes=[Box([-3.5, 2, 1.5, 1])]), (100, 50)) == [0, 2, 1, 2]
    assert pp.written_box(Prediction("", ""), (100, 50)) == [0, 0, 0, 0]
    assert pp.box_iou([0, 0, 10, 10], [5, 0, 15, 10]) == pytest.approx(50 / 150)
    assert pp.box_iou([0, 0, 0, 0], [0, 0, 10, 10]) == 0.0


def test_detection_p1_end_to_end_sends_the_published_prompt(tmp_path, capsys):
    _image(tmp_path)
    rows = [dict(GROUNDING[0], objects={"ref": ["liver"], "bbox": [[30, 20, 90, 60]]}),
            dict(GROUNDING[0], objects={"ref": ["kidney"], "bbox": [[0, 0, 150, 100]]})]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    answers = {  # liver: written [31, 20, 90, 61] (IoU 59*40/(60*41) = 0.96, a hit) but tightened to a miss
        pp.DETECTION_PROMPT.format("liver"): Prediction("", "", boxes=[Box([0, 0, 1, 1], text_bbox=[31.4, 20.0, 90.0, 61.0])]),
        pp.DETECTION_PROMPT.format("kidney"): Prediction("", "", boxes=[Box([0, 0, 20, 20])]),  # IoU 400/15000: a miss
    }
    asked = []

    class Fake:
        def predict(self, images, prompt):  # noqa: ANN001
            asked.append(prompt)
            return answers[prompt]

    args = build_parser().parse_args(["eval", "--data", str(tmp_path / "d.jsonl"), "--out", str(tmp_path / "o"),
                                      "--protocol", "detection-p1", "--no-progress"])
    assert run_eval(args, predictor=Fake()) == 0
    assert asked == ["<image>\nLocate the liver, output its bbox coordinates using JSON format.",
                     "<image>\nLocate the kidney, output its bbox coordinates using JSON format."]
    meta = json.loads((tmp_path / "o" / "eval.json").read_text())["meta"]["protocol"]
    assert (meta["metric"], meta["value"], meta["n"]) == ("precision_at_1", 0.5, 2)
    assert meta["settings"]["max_pixels"] == 1003520 and meta["settings"]["tighten_boxes"] is False
    rows_out = [json.loads(x) for x in (tmp_path / "o" / "predictions.jsonl").read_text().splitlines()]
    assert [r["scores"]["published_p1_hit"] for r in rows_out] == [1.0, 0.0]
    assert "detection-p1: precision_at_1 = 0.5 (n 2)" in capsys.readouterr().out


def test_mecovqa_g_end_to_end_scores_the_first_mask(tmp_path):
    _image(tmp_path)
    gt = np.zeros((100, 150), np.uint8)
    gt[:, :75] = 255  # left half
    Image.fromarray(gt).save(tmp_path / "m.png")
    row = {"messages": [{"role": "user", "content": "<image>Segment the liver."}, {"role": "assistant", "content": "[SEG]"}],
           "images": ["a.png"], "masks": ["m.png"], "meta": {"query": "<image>\nSegment the liver."}}
    (tmp_path / "d.jsonl").write_text(json.dumps(row) + "\n")
    grid = np.zeros((256, 256), bool)
    grid[:, :128] = True  # the left half on the 256 grid: nearest-resized, columns 0..74 of 150 (floor(j*256/150) < 128)
    first = Mask(np.zeros((100, 150), bool), 0.5)
    first.low_res = grid

    class Fake:
        def predict(self, images, prompt):  # noqa: ANN001
            assert prompt == "<image>\nSegment the liver."  # the item's first human turn, as written
            return Prediction("[SEG]", "[SEG]", masks=[first])

    args = build_parser().parse_args(["eval", "--data", str(tmp_path / "d.jsonl"), "--out", str(tmp_path / "o"),
                                      "--protocol", "mecovqa-g", "--no-progress"])
    assert run_eval(args, predictor=Fake()) == 0
    meta = json.loads((tmp_path / "o" / "eval.json").read_text())["meta"]["protocol"]
    assert (meta["metric"], meta["value"], meta["n"]) == ("dice_mean", 1.0, 1)
    assert meta["settings"]["temperature"] == 0.2 and meta["settings"]["max_pixels"] == 65535


# --- a real (tiny, random) Predictor through the command ---------------------------------------------------


@pytest.fixture(scope="module")
def tiny_predictor(tmp_path_factory):
    import torch

    from citrus_v.config import tiny_config
    from citrus_v.data.tokenizer import train_tiny_tokenizer
    from citrus_v.model.citrus_v import CitrusV

    directory = tmp_path_factory.mktemp("tiny_model")
    train_tiny_tokenizer(["Locate the liver, output its bbox coordinates using JSON format."] * 20,
                         vocab_size=300).save_pretrained(str(directory))
    torch.manual_seed(0)
    CitrusV(tiny_config()).eval().save_pretrained(directory)
    return Predictor.from_pretrained(directory)


def test_a_real_predictor_runs_detection_p1_with_the_published_settings(tiny_predictor, tmp_path):
    _image(tmp_path)
    (tmp_path / "d.jsonl").write_text(json.dumps(GROUNDING[0]) + "\n")
    args = build_parser().parse_args(["eval", "--data", str(tmp_path / "d.jsonl"), "--out", str(tmp_path / "o"),
                                      "--protocol", "detection-p1", "--no-progress"])
    assert run_eval(args, predictor=tiny_predictor) == 0
    cfg, s = tiny_predictor.template.image_cfg, tiny_predictor.settings
    assert (cfg.min_pixels, cfg.max_pixels, s.max_new_tokens, s.do_sample) == (3136, 1003520, 512, False)
    assert tiny_predictor.tighten_boxes is False
    row = json.loads((tmp_path / "o" / "predictions.jsonl").read_text())
    assert row["prompt"] == "<image>\nLocate the liver, output its bbox coordinates using JSON format."
    assert row["scores"]["published_p1_hit"] in (0.0, 1.0)
    meta = json.loads((tmp_path / "o" / "eval.json").read_text())["meta"]
    assert meta["protocol"]["n"] == 1 and meta["tighten_boxes"] is False
    assert (meta["device"], meta["dtype"]) == ("cpu", "float32")  # where and in what precision it ran
    assert meta["pixels"]["source"].startswith("--protocol detection-p1")


def test_a_real_predictor_gets_the_filled_prompt(tiny_predictor, tmp_path):
    _image(tmp_path)
    result = evaluate(tiny_predictor, [Record.from_dict(GROUNDING[0])], tmp_path, progress=False)
    assert result.samples[0].prompt == "<image>Find the liver"  # a tiny model: our template
