"""scripts/readme_real_picture.py without a model: which records it draws (the first N in file order,
nothing chosen), what its caption says, the bundled CT slice's truth, and its scores."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.scripts.conftest import load_script

from citrus_v.infer.types import Box, Mask, Prediction

@pytest.fixture(scope="module")
def script():
    yield from load_script("readme_real_picture")


def _record(prompt: str, image: str, task: str, **extra) -> dict:
    answer = "Sure, it is [SEG]." if task == "segmentation" else "<boxes>"
    return {"messages": [{"role": "user", "content": f"<image>{prompt}"}, {"role": "assistant", "content": answer}],
            "images": [image], "task": task, **extra}


@pytest.fixture()
def suite(tmp_path):
    """A real-suite-like folder: cvc-clinicdb and covid-chestxray val splits, with masks on disk."""
    for source, rows in {
        "cvc-clinicdb": [("Please segment the polyp.", f"cvc_{k}", "segmentation", None) for k in (5, 3, 9, 1)],
        "covid-chestxray": [("What imaging modality is this?", "a", "vqa_open", None),
                            ("Please segment the lungs.", "b", "segmentation", "X-ray"),
                            ("Please locate the right lung.", "c", "detection", "X-ray"),
                            ("Please segment the lungs.", "d", "segmentation", "CT"),
                            ("Please locate the left lung.", "e", "detection", "X-ray"),
                            ("Please segment the lungs.", "f", "segmentation", None),
                            ("Please segment the lungs.", "g", "segmentation", "ct"),
                            ("Please segment the lungs.", "h", "segmentation", "mr")],
    }.items():
        folder = tmp_path / source / "images"
        folder.mkdir(parents=True)
        lines = []
        for prompt, name, task, modality in rows:
            Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / f"{name}.png")
            extra = {"modality": modality} if modality else {}
            if task == "segmentation":
                truth = np.zeros((8, 8), np.uint8)
                truth[2:6, 2:6] = 255
                Image.fromarray(truth).save(folder / f"{name}_mask.png")
                extra["masks"] = [f"images/{name}_mask.png"]
            elif task == "detection":
                extra["objects"] = {"ref": ["lung"], "bbox": [[1.0, 1.0, 5.0, 7.0]]}
            lines.append(json.dumps(_record(prompt, f"images/{name}.png", task, **extra)))
        (tmp_path / source / "val.jsonl").write_text("\n".join(lines) + "\n")
    return tmp_path


def test_rows_take_the_first_records_of_their_question_in_file_order(script, suite):
    polyp, lungs, boxes = (next(r for r in script.ROWS if r.title.startswith(t)) for t in
                           ("endoscopy", "chest X-ray: lung masks", "chest X-ray: right-lung box"))
    names = lambda recs: [Path(r.images[0]).stem for r in recs]  # noqa: E731
    assert names(script.first_records(suite / "cvc-clinicdb" / "val.jsonl", polyp, 3)) == ["cvc_5", "cvc_3", "cvc_9"]
    assert names(script.first_records(suite / "covid-chestxray" / "val.jsonl", lungs, 3)) == ["b", "d", "f"]
    assert names(script.first_records(suite / "covid-chestxray" / "val.jsonl", boxes, 5)) == ["c"]  # not the left lung
    ct_only = script.Row("ct", "covid-chestxray", "segmentation", None, "CT")
    # f has no modality and passes; g's "ct" is CT in another case; h (mr) does not pass
    assert names(script.first_records(suite / "covid-chestxray" / "val.jsonl", ct_only, 5)) == ["d", "f", "g"]
    assert script.first_records(suite / "cvc-clinicdb" / "test.jsonl", polyp, 3) == []  # that split is not there


def test_rows_skip_images_whose_own_licence_does_not_allow_showing_them(script, tmp_path):
    folder = tmp_path / "covid-chestxray"
    (folder / "images").mkdir(parents=True)
    licences = {"a": None, "b": "CC BY-NC-SA 4.0", "c": "CC BY 3.0", "d": "CC BY-NC-ND", "e": "CC BY-SA", "f": "CC0"}
    lines = []
    for name, licence in licences.items():
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / "images" / f"{name}.png")
        lines.append(json.dumps(_record("Please locate the right lung.", f"images/{name}.png", "detection",
                                        objects={"ref": ["lung"], "bbox": [[1.0, 1.0, 5.0, 7.0]]},
                                        meta={"license": licence})))
    lines.append(json.dumps(_record("Please locate the right lung.", "images/a.png", "detection",
                                    objects={"ref": ["lung"], "bbox": [[1.0, 1.0, 5.0, 7.0]]})))  # a set-wide licence
    (folder / "val.jsonl").write_text("\n".join(lines) + "\n")
    boxes = next(r for r in script.ROWS if r.title == "chest X-ray: right-lung box")
    picked = script.first_records(folder / "val.jsonl", boxes, 5)
    assert [(Path(r.images[0]).stem, r.meta.get("license", "set")) for r in picked] == [
        ("b", "CC BY-NC-SA 4.0"), ("c", "CC BY 3.0"), ("e", "CC BY-SA"), ("f", "CC0"), ("a", "set")]
    assert script.case_of(picked[0], folder).licence == "CC BY-NC-SA 4.0"


def test_pick_cases_falls_back_to_the_bundled_ct_slice_and_says_so(script, suite):
    rows, notes = script.pick_cases(suite, "val", 2)
    titles = [row.title for row, _ in rows]
    assert titles == ["CT slice", "chest X-ray: lung masks", "chest X-ray: right-lung box", "endoscopy: polyp"]
    ct = rows[0][1]
    assert len(ct) == 1 and ct[0].name == "ct_abdomen_liver.dcm" and ct[0].prompt.endswith("Please segment the liver.")
    liver = ct[0].truth_masks[0]
    assert liver.shape == (512, 512) and 10_000 < liver.sum() < 40_000  # the liver on this slice: 19,281 px
    assert [c.name for c in rows[3][1]] == ["cvc_5.png", "cvc_3.png"]
    assert rows[2][1][0].truth_boxes == [[1.0, 1.0, 5.0, 7.0]] and rows[2][1][0].truth_masks == []
    assert rows[1][1][0].truth_masks[0].sum() == 16
    assert len(notes) == 1 and "bundled real CT slice" in notes[0]
    text = " ".join(script.caption(2, "val", "m", notes))
    assert "the first 2 of the val split, file order" in text and "model-generated" in text and "bundled" in text


def test_scores_are_the_evaluators_dice_iou_and_box_iou(script):
    truth = np.zeros((4, 4), bool)
    truth[:2, :2] = True  # 4 px
    half = np.zeros((4, 4), bool)
    half[:2, :1] = True  # 2 px inside the truth: Dice 2*2/6, IoU 2/4
    case = script.Case("x", "x.png", "<image>q", truth_masks=[truth])
    assert script.scores(case, Prediction("a", "a", masks=[Mask(half, 0.5)])) == "Dice 0.67  IoU 0.50"
    assert script.scores(case, Prediction("no", "no")) == "Dice 0.00  IoU 0.00"  # no mask: an empty one
    boxed = script.Case("x", "x.png", "<image>q", truth_boxes=[[0, 0, 4, 4]])
    pred = Prediction("b", "b", boxes=[Box([0, 0, 4, 2], text_bbox=[0, 0, 2, 2], score=0.9)])
    assert script.scores(boxed, pred) == "box IoU 0.50 (as written 0.25)"
    assert script.scores(boxed, Prediction("none", "none")) == "no box written: IoU 0"


def test_bad_flags_are_one_line_errors(script, tmp_path, capsys):
    with pytest.raises(SystemExit):
        script.parse(["--suite", str(tmp_path / "absent"), "--split", "val"])
    assert "--suite" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        script.parse(["--suite", str(tmp_path), "--split", "val", "--n", "0"])
    assert "--n must be >= 1" in capsys.readouterr().err


def test_a_totalseg_source_gives_the_ct_row_without_a_note(script, suite):
    folder = suite / "totalseg" / "images"
    folder.mkdir(parents=True)
    lines = []
    for name, modality in (("mr_1", "mr"), ("ct_7", "ct"), ("ct_2", "ct")):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / f"{name}.png")
        Image.fromarray(np.full((8, 8), 255, np.uint8)).save(folder / f"{name}_liver.png")
        lines.append(json.dumps(_record("Please segment the liver.", f"images/{name}.png", "segmentation",
                                        masks=[f"images/{name}_liver.png"], modality=modality)))
    (suite / "totalseg" / "val.jsonl").write_text("\n".join(lines) + "\n")
    rows, notes = script.pick_cases(suite, "val", 3)
    assert [c.name for c in rows[0][1]] == ["ct_7.png", "ct_2.png"] and rows[0][1][0].truth_masks[0].all()
    assert notes == []
