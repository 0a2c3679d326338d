"""``citrus-v benchmark``: loaders on fixtures in each release's own format, the protocols on
hand-checkable answers, and the table end to end with a stub predictor whose answers are known."""

from __future__ import annotations

import base64
import csv
import io
import json
from pathlib import Path

import pytest
from PIL import Image

from citrus_v.cli import build_parser
from citrus_v.data.sources.common import SourceError
from citrus_v.errors import UserError
from citrus_v.eval.benchmarks import protocols
from citrus_v.eval.benchmarks.registry import BENCHMARKS
from citrus_v.eval.benchmarks.reports import load_chexpert_plus
from citrus_v.eval.benchmarks.text_qa import load_medmcqa, load_medqa, load_medxpertqa, load_pubmedqa
from citrus_v.eval.commands import run_benchmark
from citrus_v.eval.runner import prompt_of, reference_of
from citrus_v.infer.types import Prediction


def _png(path: Path | None = None) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(buf, format="PNG")
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(buf.getvalue())
    return buf.getvalue()


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


MEDQA_ROW = {"question": "A 23-year-old woman has dysuria. Which drug is best?", "answer": "Nitrofurantoin",
             "options": {"A": "Ampicillin", "B": "Ceftriaxone", "C": "Nitrofurantoin", "D": "Doxycycline"},
             "meta_info": "step1", "answer_idx": "C"}


# --- loaders, each on its release's format -----------------------------------------------------
def test_medqa_jsonl(tmp_path):
    recs = load_medqa(_jsonl(tmp_path / "test.jsonl", [MEDQA_ROW]))
    assert reference_of(recs[0]) == "C"
    assert recs[0].meta["options"]["C"] == "Nitrofurantoin"
    assert "C. Nitrofurantoin" in prompt_of(recs[0]) and protocols.MC_INSTRUCTION in prompt_of(recs[0])
    bad = dict(MEDQA_ROW, answer_idx="F")
    with pytest.raises(SourceError, match="answer_idx"):
        load_medqa(_jsonl(tmp_path / "bad.jsonl", [bad]))


def test_medmcqa_cop_is_one_based_in_the_github_release(tmp_path):
    row = {"id": "e9ad", "question": "Which nerve supplies the deltoid?", "opa": "Radial", "opb": "Axillary",
           "opc": "Ulnar", "opd": "Median", "cop": 2, "choice_type": "single", "exp": "", "subject_name": "Anatomy",
           "topic_name": None}
    path = _jsonl(tmp_path / "dev.json", [row])
    assert reference_of(load_medmcqa(path)[0]) == "B"
    assert reference_of(load_medmcqa(path, cop_base=0)[0]) == "C"  # the Hugging Face class label
    with pytest.raises(SourceError, match="cop"):
        load_medmcqa(_jsonl(tmp_path / "bad.json", [dict(row, cop=5)]))


def test_pubmedqa_object_keyed_by_pmid(tmp_path):
    data = {"21645374": {"QUESTION": "Do statins reduce atrial fibrillation?", "CONTEXTS": ["Methods text.", "Results text."],
                         "LABELS": ["METHODS", "RESULTS"], "MESHES": [], "YEAR": "2011",
                         "reasoning_required_pred": "yes", "reasoning_free_pred": "yes", "final_decision": "Yes",
                         "LONG_ANSWER": "Statins reduce it."}}
    (tmp_path / "test_set.json").write_text(json.dumps(data), encoding="utf-8")
    rec = load_pubmedqa(tmp_path / "test_set.json")[0]
    assert reference_of(rec) == "yes" and rec.meta["pmid"] == "21645374"
    assert "RESULTS: Results text." in prompt_of(rec) and "Statins reduce it" not in prompt_of(rec)


def test_medxpertqa_mm_images_and_listed_choices(tmp_path):
    _png(tmp_path / "MedXpertQA" / "images" / "MM-1-a.jpeg")
    row = {"id": "MM-1", "question": "What is seen?\nAnswer Choices: (A) Fracture (B) Effusion (C) Mass (D) Normal (E) Edema",
           "options": {"A": "Fracture", "B": "Effusion", "C": "Mass", "D": "Normal", "E": "Edema"}, "label": "B",
           "images": ["MM-1-a.jpeg"], "medical_task": "Diagnosis", "body_system": "Respiratory",
           "question_type": "Reasoning"}
    rec = load_medxpertqa(_jsonl(tmp_path / "MedXpertQA" / "MM" / "test.jsonl", [row]))[0]
    assert reference_of(rec) == "B" and Path(rec.images[0]).is_file()
    assert prompt_of(rec).count("Effusion") == 1  # the question lists the choices; not repeated
    with pytest.raises(SourceError, match="images"):
        load_medxpertqa(_jsonl(tmp_path / "MedXpertQA" / "MM" / "x.jsonl", [dict(row, images=["missing.png"])]))


def test_chexpert_plus_csv_keeps_the_split_and_findings(tmp_path):
    _png(tmp_path / "PNG" / "valid" / "patient1" / "study1" / "view1_frontal.png")
    cols = ["path_to_image", "section_findings", "section_impression", "split"]
    rows = [["valid/patient1/study1/view1_frontal.jpg", "Heart size normal. Lungs clear.", "No acute disease.", "valid"],
            ["valid/patient1/study1/view1_frontal.jpg", "Clear.", "Normal.", "valid"],  # one-word findings: left out
            ["train/patient9/study1/view1_frontal.jpg", "Left effusion present.", "Effusion.", "train"]]
    with (tmp_path / "df_chexpert_plus_240401.csv").open("w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([cols] + rows)
    recs = load_chexpert_plus(tmp_path / "df_chexpert_plus_240401.csv")
    assert len(recs) == 1 and recs[0].task == "report"
    assert reference_of(recs[0]) == "Findings: Heart size normal. Lungs clear. Impression: No acute disease."


# --- protocols on hand-checkable answers -----------------------------------------------------------
OPTS = {"A": "CT scan", "B": "MRI", "C": "X-ray", "D": "left lung"}


@pytest.mark.parametrize("answer, expected", [
    ("B", "B"), ("(b)", "B"), ("C. X-ray", "C"), ("The answer is D.", "D"), ("option a", "A"),  # letters
    ("MRI", "B"), ("It is an X-ray.", "C"), ("the left lung", "D"),  # option text
    ("E.", None), ("lung", None), ("CT scan or MRI", None), ("", None),  # none, not offered, ambiguous
])
def test_extract_option(answer, expected):
    assert protocols.extract_option(answer, OPTS) == expected


def test_multiple_choice_score_counts_no_option_as_wrong():
    assert protocols.score_multiple_choice("(B) MRI", "B", OPTS) == (1.0, True)
    assert protocols.score_multiple_choice("C", "B", OPTS) == (0.0, True)
    assert protocols.score_multiple_choice("I am not sure", "B", OPTS) == (0.0, False)


@pytest.mark.parametrize("answer, expected", [("Yes.", "yes"), ("No, it does not.", "no"),
                                              ("maybe", "maybe"), ("It is unclear", None)])
def test_yes_no_maybe(answer, expected):
    assert protocols.extract_yes_no_maybe(answer) == expected
    assert protocols.score_yes_no_maybe(answer, "no") == (float(expected == "no"), expected is not None)


# --- the table end to end ---------------------------------------------------------------------------
class StubPredictor:
    """Answers by a rule on the prompt; counts its calls."""

    def __init__(self, rule):
        self.rule, self.calls = rule, 0

    def predict(self, images, prompt):
        self.calls += 1
        for image in images:
            assert Path(image).is_file(), image
        return Prediction(answer=self.rule(prompt), raw_text="")

    def predict_batch(self, requests):
        return [self.predict(i, p) for i, p in requests]


def _answer(prompt: str) -> str:
    if "aortic" in prompt:
        return "Yes, there is."  # VQA-RAD closed, right
    if "fracture" in prompt:
        return "no"  # VQA-RAD closed, reference yes: wrong
    if "organ" in prompt:
        return "the left kidney"  # VQA-RAD open, reference "kidney": recall 1
    if "dysuria" in prompt:
        return "Nitrofurantoin"  # MedQA by option text: right
    if "deltoid" in prompt:
        return "I cannot tell"  # MedQA: no option found
    if "statins" in prompt:
        return "Maybe."  # PubMedQA, reference yes: wrong
    if "doctor" in prompt:
        return "Dr Lee"  # MedDocBench: exact
    return "zzz"


def _data_root(tmp: Path) -> Path:
    root = tmp / "data"
    rad = root / "VQA-RAD"
    for name in ("synpic1.jpg", "synpic2.jpg"):
        _png(rad / "images" / name)
    rows = [{"qid": 1, "image_name": "synpic1.jpg", "image_organ": "CHEST", "answer": "yes", "answer_type": "CLOSED",
             "question_type": "PRES", "question": "Is there an aortic aneurysm?", "phrase_type": "freeform"},
            {"qid": 2, "image_name": "synpic1.jpg", "image_organ": "CHEST", "answer": "Yes", "answer_type": "CLOSED",
             "question_type": "PRES", "question": "Is there a rib fracture?", "phrase_type": "para"},
            {"qid": 3, "image_name": "synpic2.jpg", "image_organ": "ABD", "answer": "kidney", "answer_type": "OPEN",
             "question_type": "ORGAN", "question": "Which organ is abnormal?", "phrase_type": "freeform"}]
    (rad / "testset.json").write_text(json.dumps(rows, indent=2), encoding="utf-8")
    deltoid = {"question": "Which nerve supplies the deltoid?", "answer": "Axillary",
               "options": {"A": "Radial", "B": "Axillary", "C": "Ulnar", "D": "Median"}, "meta_info": "", "answer_idx": "B"}
    _jsonl(root / "MedQA/questions/US/4_options/phrases_no_exclude_test.jsonl", [MEDQA_ROW, deltoid])
    (root / "PubMedQA").mkdir()
    (root / "PubMedQA/test_set.json").write_text(json.dumps({"1": {
        "QUESTION": "Do statins help?", "CONTEXTS": ["c"], "LABELS": ["RESULTS"], "final_decision": "yes"}}))
    # MedDocBench: MMBench-style TSV, base64 image, second row pointing at the first row's image
    b64 = base64.b64encode(_png()).decode()
    (root / "MedDocBench").mkdir()
    with (root / "MedDocBench/MedDocBench.tsv").open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, delimiter="\t")
        w.writerows([["index", "image", "question", "answer", "category", "rotation"],
                     ["0", b64, "Who is the doctor?", "Dr Lee", "simple_qa", "0"],
                     ["1", "0", "What is the total dose?", "40 mg", "complex_qa", "90"]])
    return root


def _args(*argv: str):
    return build_parser().parse_args(["benchmark", *argv])


def _cells(table: dict, name: str) -> dict:
    row = next(r for r in table["rows"] if r["benchmark"] == name)
    return {c["column"]: c for c in row["cells"]}


def test_table_end_to_end(tmp_path, capsys):
    root = _data_root(tmp_path)
    stub = StubPredictor(_answer)
    assert run_benchmark(_args("--data-root", str(root), "--out", str(tmp_path / "out"), "--no-progress"), stub) == 0
    table = json.loads((tmp_path / "out/table.json").read_text())
    assert [r["benchmark"] for r in table["rows"]] == [b.name for b in BENCHMARKS]

    rad = _cells(table, "vqa-rad")
    assert (rad["closed"]["value"], rad["closed"]["n"]) == (50.0, 2)
    assert (rad["open"]["value"], rad["open"]["n"]) == (100.0, 1)
    assert rad["all"]["value"] == pytest.approx(200 / 3) and rad["all"]["published"] == 64.3
    medqa = _cells(table, "medqa-usmle")["accuracy"]
    assert (medqa["value"], medqa["n"], medqa["note"]) == (50.0, 2, "no option found in 1")
    assert _cells(table, "pubmedqa")["accuracy"]["value"] == 0.0
    doc = _cells(table, "meddocbench")
    assert doc["simple_qa (ANLS)"]["value"] == 100.0 and doc["complex_qa (ANLS)"]["value"] == 0.0
    assert doc["all (ANLS)"]["n"] == 2
    assert stub.calls == 3 + 2 + 1 + 2

    slake = _cells(table, "slake")
    assert list(slake) == ["closed", "open", "all"] and slake["all"]["published"] == 84.9
    assert all(c["status"] == "skipped" and c["value"] is None and "SLAKE/test.json" in c["note"] for c in slake.values())
    out = capsys.readouterr().out
    assert f"skip slake: looked for {root / 'SLAKE/test.json'}" in out
    md = (tmp_path / "out/table.md").read_text()
    assert "| VQA-RAD | closed | 50.0 | 2 | " in md
    preds = (tmp_path / "out/medqa-usmle/predictions.jsonl").read_text().splitlines()
    assert json.loads(preds[1])["option_found"] is False


def test_only_runs_one_and_names_are_checked(tmp_path):
    root = _data_root(tmp_path)
    stub = StubPredictor(_answer)
    run_benchmark(_args("--data-root", str(root), "--out", str(tmp_path / "o"), "--only", "pubmedqa", "--no-progress"), stub)
    table = json.loads((tmp_path / "o/table.json").read_text())
    assert [r["benchmark"] for r in table["rows"]] == ["pubmedqa"] and stub.calls == 1
    with pytest.raises(UserError, match="--only 'nope'"):
        run_benchmark(_args("--data-root", str(root), "--out", str(tmp_path / "o"), "--only", "nope"), stub)


def test_report_rate_is_not_computed_without_a_scorer(tmp_path):
    from citrus_v.eval.benchmarks.registry import by_name
    from citrus_v.eval.benchmarks.suite import run_one

    _png(tmp_path / "PNG" / "valid" / "p1" / "s1" / "view1_frontal.png")
    csv_path = tmp_path / "df_chexpert_plus_240401.csv"
    with csv_path.open("w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([["path_to_image", "section_findings", "section_impression", "split"],
                                  ["valid/p1/s1/view1_frontal.jpg", "Lungs are clear.", "Normal chest.", "valid"]])
    stub = StubPredictor(lambda p: "Findings: Lungs are clear. Impression: Normal chest.")
    row = run_one(by_name("chexpert-plus"), csv_path, stub, tmp_path / "w")
    cells = {c.column: c for c in row.cells}
    assert cells["rougeL"].value == pytest.approx(100.0) and cells["rougeL"].n == 1
    assert cells["rate"].status == "not computed" and cells["rate"].value is None
    row = run_one(by_name("chexpert-plus"), csv_path, stub, tmp_path / "w2", rate_scorer=lambda p, r: 0.25)
    assert {c.column: c for c in row.cells}["rate"].value == 25.0


def test_segmentation_by_modality_and_detection(tmp_path):
    """MeCoVQA-G's json (bare <SEG> + mask field) and citrus-v JSONL detection through the suite."""
    import numpy as np

    from citrus_v.eval.benchmarks.registry import by_name
    from citrus_v.eval.benchmarks.suite import run_one
    from citrus_v.infer.types import Box, Mask

    top = np.zeros((4, 4), bool)
    top[:2] = True  # (4, 4): top half
    for name in ("ct.png", "us.png"):
        _png(tmp_path / name)
    Image.fromarray(top.astype(np.uint8) * 255).save(tmp_path / "m.png")
    rows = [{"id": i, "image": img, "modality": mod, "mask": ["m.png"],
             "conversations": [{"from": "human", "value": f"<image>\nSegment the {organ}."},
                               {"from": "gpt", "value": "It is here <SEG>."}]}
            for i, (img, mod, organ) in enumerate([("ct.png", "CT", "liver"), ("us.png", "ultrasound", "kidney")])]
    (tmp_path / "MeCoVQA_G_test.json").write_text(json.dumps(rows), encoding="utf-8")

    class Seg(StubPredictor):
        def predict(self, images, prompt):
            self.calls += 1
            mask = top if "liver" in prompt else np.zeros((4, 4), bool)  # CT: Dice 1; US: Dice 0
            return Prediction(answer="[SEG]", raw_text="", masks=[Mask(mask, 0.9)])

    cells = {c.column: c for c in run_one(by_name("mecovqa-g"), tmp_path / "MeCoVQA_G_test.json", Seg(None),
                                          tmp_path / "w").cells}
    assert (cells["CT"].value, cells["CT"].n, cells["CT"].published) == (100.0, 1, 64.0)
    assert (cells["US"].value, cells["MR"].value, cells["MR"].n) == (0.0, None, 0)
    assert (cells["all"].value, cells["all"].n) == (50.0, 2)

    rec = {"messages": [{"role": "user", "content": "<image>Find the nodule."},
                        {"role": "assistant", "content": "nodule <box>[0,0,2,2]</box>"}],
           "images": ["ct.png"], "objects": {"ref": ["nodule"], "bbox": [[0, 0, 2, 2]]}, "task": "detection"}
    det = _jsonl(tmp_path / "detection" / "test.jsonl", [rec, dict(rec, objects={"ref": ["n"], "bbox": [[2, 2, 4, 4]]})])
    (tmp_path / "detection" / "ct.png").write_bytes(_png())

    class Det(StubPredictor):
        def predict(self, images, prompt):
            return Prediction(answer="", raw_text="", boxes=[Box([0.0, 0.0, 2.0, 2.0])])

    p50 = run_one(by_name("detection"), det, Det(None), tmp_path / "d").cells[0]
    assert (p50.column, p50.value, p50.n, p50.published) == ("p50", 50.0, 2, 44.6)


def test_pmc_vqa_scores_by_its_choices(tmp_path):
    """PMC-VQA's CSV (letters in 'A:text' choices) through the multiple-choice protocol."""
    from citrus_v.eval.benchmarks.registry import by_name
    from citrus_v.eval.benchmarks.suite import run_one

    _png(tmp_path / "figures" / "PMC1_fig1.jpg")
    cols = ["Figure_path", "Question", "Answer", "Choice A", "Choice B", "Choice C", "Choice D", "Answer_label"]
    rows = [["PMC1_fig1.jpg", "What modality is shown?", "B:MRI", "A:CT", "B:MRI", "C:PET", "D:Ultrasound", "B"],
            ["PMC1_fig1.jpg", "Which plane is used?", "Axial", "A:Axial", "B:Coronal", "C:Sagittal", "D:Oblique", "A"]]
    with (tmp_path / "test_clean.csv").open("w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([cols] + rows)
    stub = StubPredictor(lambda p: "It is an MRI." if "modality" in p else "coronal")  # right by text, wrong
    cell = run_one(by_name("pmc-vqa"), tmp_path / "test_clean.csv", stub, tmp_path / "w").cells[0]
    assert (cell.value, cell.n, cell.note, cell.published) == (50.0, 2, "no option found in 0", 55.6)
