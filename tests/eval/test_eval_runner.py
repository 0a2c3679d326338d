"""The runner end to end on a tiny JSONL with a test-double predictor whose answers are known,
so every aggregate below is computed by hand."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from citrus_v.errors import UserError
from citrus_v.cli import build_parser
from citrus_v.data.schema import Record, read_jsonl
from citrus_v.eval.commands import run_eval
from citrus_v.eval.runner import METRIC_KEYS, SampleResult, evaluate, summarize, write_outputs
from citrus_v.infer.types import Box, Mask, Prediction, Report

ROWS2 = np.array([[1] * 4] * 2 + [[0] * 4] * 2, bool)  # (4, 4), top two rows: 8 pixels
ROW1 = np.array([[1] * 4] + [[0] * 4] * 3, bool)  # (4, 4), top row: 4 pixels
EMPTY = np.zeros((4, 4), bool)


class FakePredictor:
    """Answers by prompt; remembers what it was asked."""

    def __init__(self, answers: dict[str, Prediction]):
        self.answers, self.calls = answers, []

    def predict(self, images: list[str], prompt: str) -> Prediction:
        self.calls.append((images, prompt))
        return self.answers[prompt]

    def predict_batch(self, requests):
        return [self.predict(images, prompt) for images, prompt in requests]


def _p(answer: str = "", boxes=(), masks=(), report=None) -> Prediction:
    return Prediction(answer=answer, raw_text=answer, boxes=[Box(list(b)) for b in boxes],
                      masks=[Mask(m, 0.9) for m in masks], report=report)


def _rec(prompt: str, answer: str, task: str | None, modality: str | None, **extra) -> dict:
    n_img = extra.pop("n_img", 1)
    d = {"messages": [{"role": "user", "content": "<image>" * n_img + prompt},
                      {"role": "assistant", "content": answer}],
         "images": [f"img{i}.png" for i in range(n_img)], **extra}
    if task:
        d["task"] = task
    if modality:
        d["modality"] = modality
    return d


REPORT_A = "Findings: heart size is normal. Impression: no acute disease."
REPORT_B = "Findings: right pleural effusion with basal atelectasis. Impression: effusion."


# the segmenter tightened the written box [5, 5, 20, 20] (IoU 25/300 with the truth: a miss) to a hit
TIGHTENED = Prediction(answer="liver", raw_text="liver", boxes=[Box([0, 0, 10, 10], text_bbox=[5, 5, 20, 20], score=0.8)])


def _dataset(tmp: Path) -> tuple[Path, FakePredictor]:
    for name, arr in {"m_rows2.png": ROWS2, "m_empty.png": EMPTY, "m_row1.png": ROW1}.items():
        Image.fromarray(arr.astype(np.uint8) * 255).save(tmp / name)
    rows = [
        (_rec("Is there a fracture?", "Yes", "vqa_closed", "CT"), _p("Yes, clearly.")),
        (_rec("A or B?", "B", "vqa_closed", "MR"), _p("A")),
        (_rec("Where is it?", "left lung mass", "vqa_open", "CT"), _p("mass in the left lung")),
        (_rec("Effusion?", "<think>blunted angle? no</think><answer>no</answer>", "cot", "X-ray"), _p("No.")),
        (_rec("Find the liver.", "liver", "detection", "CT", objects={"ref": ["liver"], "bbox": [[0, 0, 10, 10]]}),
         TIGHTENED),
        (_rec("Find the kidney.", "kidney", "detection", "MR", objects={"ref": ["kidney"], "bbox": [[0, 0, 10, 10]]}),
         _p("kidney", boxes=[[20, 20, 30, 30], [0, 0, 10, 10]])),
        (_rec("Find a nodule.", "none", "detection", None, objects={"ref": [], "bbox": []}), _p("none")),
        (_rec("Segment the liver.", "[SEG]", None, "CT", masks=["m_rows2.png"]), _p("[SEG]", masks=[ROW1])),
        (_rec("Segment a tumour.", "[SEG]", "segmentation", "CT", masks=["m_empty.png"]), _p("[SEG]", masks=[EMPTY])),
        (_rec("Segment both.", "[SEG] [SEG]", "segmentation", "MR", masks=["m_row1.png", "m_rows2.png"]),
         _p("[SEG]", masks=[ROW1])),  # the second [SEG] got no mask
        (_rec("Report A.", REPORT_A, "report", "X-ray"), _p(REPORT_A)),
        (_rec("Report B.", REPORT_B, "report", "X-ray"),
         _p("", report=Report("right pleural effusion with basal atelectasis.", "effusion."))),
        (_rec("Glucose?", "12.5 mg/dL", "document", None, n_img=0), _p("12.5 MG/dL")),
        (_rec("Code?", "abcd", "document", None, n_img=0), _p("abce")),
        (_rec("Describe.", "A chest film.", "caption", "X-ray"), _p("A film.")),
    ]
    path = tmp / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r, _ in rows))
    return path, FakePredictor({r["messages"][0]["content"]: p for r, p in rows})


# AP at every IoU threshold: detections by score are TP (1.0, sample 5), FP (1.0, sample 6's first
# box), TP (0.5); precision/recall (1, 1/2), (1/2, 1/2), (2/3, 1); 101-point interpolation gives
# 51 recall points at precision 1 and 50 at 2/3.
AP = (51 + 50 * 2 / 3) / 101


def test_runner_end_to_end_values(tmp_path):
    data, predictor = _dataset(tmp_path)
    result = evaluate(predictor, read_jsonl(data), data.parent, progress=False)
    m = {k: (a.value, a.n) for k, a in result.metrics.items()}
    approx = pytest.approx
    assert m["vqa_closed_acc"] == (approx(2 / 3), 3)  # yes ok, B wrong, CoT "no" ok
    assert m["vqa_open_recall"] == (1.0, 1)
    assert m["vqa_open_f1"] == (approx(2 * 0.75 / 1.75), 1)  # P 3/4, R 1
    assert m["det_p50"] == (0.5, 2)  # the sample without GT is left out
    assert m["det_p50_text"] == (0.0, 2)  # the liver's box as written missed
    assert m["det_map"] == (approx(AP), 2) and m["det_map50"] == (approx(AP), 2)
    # Dice per mask: rows2 vs row1 = 8/12, empty vs empty = 1, MR: 1 and 0 (missing prediction)
    assert m["seg_dice_mean"] == (approx((2 / 3 + 1 + 1 + 0) / 4), 4)
    assert m["seg_dice_median"] == (approx((2 / 3 + 1) / 2), 4)
    # HD95: row1 vs rows2 = 1 (rows2's second row is 1 px from row1), empty/empty 0, MR identical 0; the
    # missing prediction has no distance (left out). NSD at 2 px: 1, 1, 1 and 0 for the missing one
    assert m["seg_hd95_mean"] == (approx(1 / 3), 3)
    assert m["seg_nsd_mean"] == (0.75, 4)
    assert m["report_rougeL"] == (1.0, 2)  # report B rebuilt from the structured Report
    assert m["report_bleu4"] == (approx(1.0, abs=1e-6), 2)
    assert m["report_cider"] == (approx(10.0), 2)
    # A's impression "no acute disease." is normal, B's "effusion." abnormal; both reports agree
    assert m["report_verdict_acc"] == (1.0, 2) and m["report_abnormal_recall"] == (1.0, 1)
    assert m["doc_anls"] == (approx((1.0 + 0.75) / 2), 2)
    assert m["doc_exact"] == (0.5, 2)
    assert result.counts == {"records": 15, "unscored": 1, "det_without_gt": 1, "scored_vqa_closed": 3,
                             "scored_vqa_open": 1, "scored_detection": 3, "scored_segmentation": 3,
                             "scored_report": 2, "scored_document": 2}
    ct, mr = result.per_modality["CT"], result.per_modality["MR"]
    assert (ct["seg_dice_mean"].value, ct["seg_dice_mean"].n) == (approx(5 / 6), 2)
    assert (mr["seg_dice_mean"].value, mr["seg_dice_median"].value, mr["seg_dice_mean"].n) == (0.5, 0.5, 2)
    assert (ct["vqa_closed_acc"].value, mr["vqa_closed_acc"].value) == (1.0, 0.0)
    assert (ct["det_p50"].value, mr["det_p50"].value) == (1.0, 0.0)
    assert (ct["det_p50_text"].value, mr["det_p50_text"].value) == (0.0, 0.0)
    liver = next(s for s in result.samples if s.prompt.endswith("Find the liver."))
    assert liver.pred_boxes == [[0, 0, 10, 10]] and liver.text_boxes == [[5, 5, 20, 20]]
    assert result.per_modality["X-ray"]["seg_dice_mean"].value is None
    assert sorted(result.per_modality) == ["CT", "MR", "X-ray", "unknown"]
    # what the predictor was given: resolved image paths, the prompt with its <image> placeholder
    images, prompt = predictor.calls[0]
    assert images == [str(tmp_path / "img0.png")] and prompt == "<image>Is there a fracture?"


def test_outputs_written(tmp_path):
    data, predictor = _dataset(tmp_path)
    result = evaluate(predictor, read_jsonl(data), data.parent, progress=False)
    paths = write_outputs(result, tmp_path / "out", meta={"data": "x"})
    js = json.loads(paths["json"].read_text())
    for key in ("seg_dice_mean", "seg_dice_median", "vqa_closed_acc", "vqa_open_f1", "det_p50", "report_rougeL",
                "doc_exact"):
        assert set(js[key]) == {"value", "n", "aggregation"} and js[key]["n"] > 0
    assert js["per_modality"]["MR"]["seg_dice_mean"] == {"value": 0.5, "n": 2,
                                                         "aggregation": METRIC_KEYS["seg_dice_mean"]}
    assert js["meta"] == {"data": "x"}
    md = paths["md"].read_text()
    assert "| metric | value | n | aggregation |" in md
    assert "| seg_dice_median | 0.8333 | 4 | median over masks (one per [SEG]) |" in md
    assert "| MR | seg_dice_mean | 0.5000 | 2 |" in md
    preds = [json.loads(line) for line in paths["predictions"].read_text().splitlines()]
    assert len(preds) == 15
    assert preds[9]["dice"] == [1.0, 0.0] and preds[9]["num_pred_masks"] == 1
    assert preds[9]["hd95"] == [0.0, None] and preds[9]["nsd"] == [1.0, 0.0]
    assert preds[3]["task"] == "vqa_closed" and preds[3]["reference"] == "no"
    assert preds[14]["task"] == "unscored"


def test_absent_tasks_are_null_with_zero_count(tmp_path):
    rec = Record.from_dict(_rec("Is it?", "yes", "vqa_closed", None, n_img=0))
    result = evaluate(FakePredictor({"Is it?": _p("no")}), [rec], tmp_path, progress=False)
    js = result.to_json()
    assert js["vqa_closed_acc"] == {"value": 0.0, "n": 1, "aggregation": "mean over samples"}
    for key in METRIC_KEYS:
        if key != "vqa_closed_acc":
            assert js[key]["value"] is None and js[key]["n"] == 0, key


def test_mask_errors_name_the_record(tmp_path):
    Image.fromarray(ROWS2.astype(np.uint8)).save(tmp_path / "m.png")
    rec = Record.from_dict(_rec("Seg.", "[SEG]", "segmentation", None, masks=["m.png"]))
    wrong_size = FakePredictor({"<image>Seg.": _p("[SEG]", masks=[np.zeros((5, 4), bool)])})
    with pytest.raises(ValueError, match=r"record 0: predicted mask 0 has shape \(5, 4\).*m.png has \(4, 4\)"):
        evaluate(wrong_size, [rec], tmp_path, progress=False)
    missing = Record.from_dict(_rec("Seg.", "[SEG]", "segmentation", None, masks=["nope.png"]))
    with pytest.raises(FileNotFoundError, match="nope.png does not exist"):
        evaluate(wrong_size, [missing], tmp_path, progress=False)


def test_cli_eval_with_limit_and_progress_bar(tmp_path, capsys):
    data, predictor = _dataset(tmp_path)
    args = build_parser().parse_args(["eval", "--data", str(data), "--out", str(tmp_path / "o"), "--limit", "2"])
    assert args.func is run_eval and args.model is None
    assert run_eval(args, predictor=predictor) == 0
    js = json.loads((tmp_path / "o" / "eval.json").read_text())
    assert js["counts"]["records"] == 2 and js["vqa_closed_acc"] == {"value": 0.5, "n": 2,
                                                                    "aggregation": "mean over samples"}
    assert js["meta"]["model"] == "embedded default" and js["meta"]["limit"] == 2
    out, err = capsys.readouterr()
    assert "| vqa_closed_acc | 0.5000 | 2 | mean over samples |" in out
    assert "citrus-v eval" in err and "2/2" in err  # tqdm's bar on stderr
    bad = build_parser().parse_args(["eval", "--data", str(data), "--out", str(tmp_path), "--limit", "0"])
    with pytest.raises(UserError, match="--limit must be >= 1, got 0"):
        run_eval(bad, predictor=predictor)


class BatchFakePredictor(FakePredictor):
    def __init__(self, answers):
        super().__init__(answers)
        self.batch_sizes = []

    def predict_batch(self, requests):
        self.batch_sizes.append(len(requests))
        return [self.predict(images, prompt) for images, prompt in requests]


def test_batched_evaluation_matches_one_by_one(tmp_path):
    data, single = _dataset(tmp_path)
    batched = BatchFakePredictor(single.answers)
    records = read_jsonl(data)
    one = evaluate(single, records, data.parent, progress=False)
    many = evaluate(batched, records, data.parent, batch_size=4, progress=False)
    assert batched.batch_sizes == [4, 4, 4, 3]
    assert many.to_json() == one.to_json()
    assert [s.index for s in many.samples] == list(range(15))
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        evaluate(batched, records, data.parent, batch_size=0)


def test_report_verdicts_count_missed_and_false_lesions():
    def rep(answer, reference):
        return SampleResult(index=0, task="report", modality="CT", prompt="", reference=reference, answer=answer)

    lesion, normal = "Findings: A lesion. Impression: Lesion in the liver.", "Findings: Normal. Impression: No abnormality."
    samples = [rep(lesion, lesion), rep(normal, lesion), rep(normal, lesion), rep(lesion, normal), rep(normal, normal)]
    m = summarize(samples)
    assert (m["report_verdict_acc"].value, m["report_verdict_acc"].n) == (pytest.approx(2 / 5), 5)
    # three abnormal references, one called abnormal
    assert (m["report_abnormal_recall"].value, m["report_abnormal_recall"].n) == (pytest.approx(1 / 3), 3)


def test_rescoring_predictions_gives_the_same_figures(tmp_path, capsys):
    data, predictor = _dataset(tmp_path)
    args = build_parser().parse_args(["eval", "--data", str(data), "--out", str(tmp_path / "first")])
    assert run_eval(args, predictor=predictor) == 0
    first = json.loads((tmp_path / "first" / "eval.json").read_text())
    again = build_parser().parse_args(["eval", "--from-predictions", str(tmp_path / "first" / "predictions.jsonl"),
                                       "--out", str(tmp_path / "again")])
    assert run_eval(again) == 0  # no predictor: none is loaded
    second = json.loads((tmp_path / "again" / "eval.json").read_text())
    # the first run's eval.json lies beside its predictions: its meta says what made them
    assert second["meta"] == {"from_predictions": str(tmp_path / "first" / "predictions.jsonl"),
                              "predicted_by": first["meta"]}
    for key in METRIC_KEYS:
        assert second[key] == first[key], key
    assert second["per_modality"] == first["per_modality"] and second["counts"] == first["counts"]
    assert (tmp_path / "again" / "predictions.jsonl").read_text() == (tmp_path / "first" / "predictions.jsonl").read_text()


def test_rescoring_refuses_bad_files_and_model_flags(tmp_path):
    good = json.dumps({"index": 0, "task": "report", "modality": "CT", "prompt": "", "reference": "x", "answer": "x"})
    bad = tmp_path / "p.jsonl"
    bad.write_text(good + "\n{not json\n")
    args = build_parser().parse_args(["eval", "--from-predictions", str(bad), "--out", str(tmp_path / "o")])
    with pytest.raises(UserError, match=r"p.jsonl:2: not JSON"):
        run_eval(args)
    bad.write_text(good + "\n" + json.dumps({"index": 1, "task": "report", "answr": "x"}) + "\n")
    with pytest.raises(UserError, match=r"p.jsonl:2: not a predictions.jsonl row \(unknown fields \['answr'\]"):
        run_eval(args)
    with pytest.raises(UserError, match="does not exist"):
        run_eval(build_parser().parse_args(["eval", "--from-predictions", str(tmp_path / "none.jsonl"), "--out", "o"]))
    with_model = build_parser().parse_args(["eval", "--from-predictions", str(bad), "--model", "m", "--out", "o"])
    with pytest.raises(UserError, match="--model would not apply"):
        run_eval(with_model)
    with pytest.raises(SystemExit):  # one source only
        build_parser().parse_args(["eval", "--from-predictions", str(bad), "--data", str(bad), "--out", "o"])


class TilingFakePredictor(FakePredictor):
    """``predict_tiled`` answers as ``predict`` does and remembers the tiles and tiles per call."""

    def __init__(self, answers):
        super().__init__(answers)
        self.tiled = []

    def predict_tiled(self, image: str, prompt: str, tiles, batch_size: int = 1) -> Prediction:
        self.tiled.append((Path(image).name, tiles, batch_size))
        return self.predict([image], prompt)


def test_eval_tiles_go_to_predict_tiled_one_record_at_a_time(tmp_path):
    data, single = _dataset(tmp_path)
    one_image = [json.loads(line) for line in data.read_text().splitlines()]
    one_image = [r for r in one_image if len(r["images"]) == 1]
    (tmp_path / "one.jsonl").write_text("".join(json.dumps(r) + "\n" for r in one_image))
    tiled = TilingFakePredictor(single.answers)
    args = build_parser().parse_args(["eval", "--data", str(tmp_path / "one.jsonl"), "--out", str(tmp_path / "o"),
                                      "--tiles", "2x3", "--batch-size", "4", "--no-progress"])
    assert run_eval(args, predictor=tiled) == 0
    assert tiled.tiled == [("img0.png", (2, 3), 4)] * len(one_image)
    whole = evaluate(FakePredictor(single.answers), read_jsonl(tmp_path / "one.jsonl"), tmp_path, progress=False)
    js = json.loads((tmp_path / "o" / "eval.json").read_text())
    assert js["seg_dice_mean"] == whole.to_json()["seg_dice_mean"]  # the same answers score the same
    assert js["meta"]["tiles"] == [2, 3]
    # a record of two images (or none) cannot be tiled: named by its index, before any record runs
    tiled.tiled.clear()
    with pytest.raises(UserError, match=r"record 12: tiles take one image per record, got 0"):
        run_eval(build_parser().parse_args(["eval", "--data", str(data), "--out", str(tmp_path / "o2"),
                                            "--tiles", "auto", "--no-progress"]), predictor=tiled)
    assert tiled.tiled == []


def test_eval_tiles_refusals(tmp_path):
    data, single = _dataset(tmp_path)
    with pytest.raises(UserError, match="--tiles: --protocol mecovqa-g scores the published way"):
        run_eval(build_parser().parse_args(["eval", "--data", str(data), "--out", str(tmp_path / "o"),
                                            "--protocol", "mecovqa-g", "--tiles", "auto"]), predictor=single)
    with pytest.raises(UserError, match="--data .*: tiles: this predictor has no predict_tiled"):
        run_eval(build_parser().parse_args(["eval", "--data", str(data), "--out", str(tmp_path / "o"),
                                            "--tiles", "auto", "--no-progress"]), predictor=single)
    predictions = tmp_path / "p.jsonl"
    predictions.write_text(json.dumps({"index": 0, "task": "report", "modality": "CT", "prompt": "", "reference": "x",
                                       "answer": "x"}) + "\n")
    with pytest.raises(UserError, match="--tiles would not apply"):
        run_eval(build_parser().parse_args(["eval", "--from-predictions", str(predictions), "--out", "o",
                                            "--tiles", "auto"]))
