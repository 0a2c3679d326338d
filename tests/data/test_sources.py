"""Each public-format loader on a small fixture written in that set's published layout."""

from __future__ import annotations

import base64
import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from citrus_v.data.schema import read_jsonl
from citrus_v.data.sources import (
    SourceError,
    convert,
    load_meddocbench,
    load_medsegbench,
    load_medxray_cot,
    load_mecovqa_g,
    load_pathvqa,
    load_pmc_vqa,
    load_slake,
    load_vqa_rad,
)


def png(path: Path, value: int = 100, size: tuple[int, int] = (16, 12)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), value, np.uint8)).save(path)
    return path


def png_bytes(value: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 10, 3), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_vqa_rad(tmp_path: Path):
    png(tmp_path / "VQA_RAD Image Folder" / "synpic54610.jpg")
    items = [
        {"qid": 1, "image_name": "synpic54610.jpg", "image_organ": "HEAD", "answer": "Yes", "answer_type": "CLOSED",
         "question_type": "PRES", "question": "Are regions of the brain infarcted?", "phrase_type": "freeform"},
        {"qid": 2, "image_name": "synpic54610.jpg", "image_organ": "HEAD", "answer": "left temporal lobe", "answer_type": "OPEN",
         "question_type": "POS", "question": "Where is the lesion?", "phrase_type": "freeform"},
    ]
    src = tmp_path / "VQA_RAD Dataset Public.json"
    src.write_text(json.dumps(items))
    recs = load_vqa_rad(src)
    assert [r.task for r in recs] == ["vqa_closed", "vqa_open"]
    assert recs[0].messages[0].content == "<image>Are regions of the brain infarcted?"
    assert recs[1].messages[1].content == "left temporal lobe"
    assert recs[0].meta["organ"] == "HEAD" and Path(recs[0].images[0]).is_file()
    items[1]["image_name"] = "missing.jpg"
    src.write_text(json.dumps(items))
    with pytest.raises(SourceError, match=r":1: field 'image_name': image 'missing.jpg' not found"):
        load_vqa_rad(src)


def test_slake_language_filter_and_modality(tmp_path: Path):
    png(tmp_path / "imgs" / "xmlab102" / "source.jpg")
    png(tmp_path / "imgs" / "xmlab7" / "source.jpg", 30)
    items = [
        {"img_id": 102, "img_name": "xmlab102/source.jpg", "question": "Which organ is abnormal?", "answer": "Lung",
         "q_lang": "en", "location": "Lung", "modality": "X-Ray", "answer_type": "OPEN", "qid": 1},
        {"img_id": 102, "img_name": "xmlab102/source.jpg", "question": "哪个器官不正常?", "answer": "肺",
         "q_lang": "zh", "location": "Lung", "modality": "X-Ray", "answer_type": "OPEN", "qid": 2},
        {"img_id": 7, "img_name": "xmlab7/source.jpg", "question": "Is this an MRI?", "answer": "No",
         "q_lang": "en", "location": "Abdomen", "modality": "CT", "answer_type": "CLOSED", "qid": 3},
    ]
    src = tmp_path / "train.json"
    src.write_text(json.dumps(items, ensure_ascii=False))
    assert len(load_slake(src)) == 3
    recs = load_slake(src, languages=("en",))
    assert [r.modality for r in recs] == ["X-ray", "CT"] and [r.task for r in recs] == ["vqa_open", "vqa_closed"]
    # the converter keeps same-named images from different folders apart
    jsonl, written = convert("slake", src, tmp_path / "out")
    assert len({r.images[0] for r in written}) == 2
    back = read_jsonl(jsonl)
    assert [r.to_dict() for r in back] == [r.to_dict() for r in written]
    assert all((jsonl.parent / r.images[0]).is_file() for r in back)


def test_pathvqa_json_and_parquet(tmp_path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    png(tmp_path / "images" / "train_0422.jpg")
    src = tmp_path / "train_qa.json"
    src.write_text(json.dumps([{"image": "train_0422", "question": "Is there fibrosis?", "answer": "yes"},
                               {"image": "train_0422", "question": "What is present?", "answer": "granuloma"}]))
    recs = load_pathvqa(src)
    assert [r.task for r in recs] == ["vqa_closed", "vqa_open"] and recs[0].modality == "pathology"
    table = pa.table({"image": [{"bytes": png_bytes(10), "path": None}, {"bytes": png_bytes(200), "path": None}],
                      "question": ["Is this benign?", "what organ is shown?"], "answer": ["no", "liver"]})
    pq.write_table(table, tmp_path / "train.parquet")
    jsonl, written = convert("pathvqa", tmp_path / "train.parquet", tmp_path / "out")
    assert len(written) == 2
    img = np.asarray(Image.open(jsonl.parent / written[1].images[0]))
    assert img.shape == (8, 10, 3) and img[0, 0, 0] == 200
    with pytest.raises(SourceError, match="image_dir"):
        load_pathvqa(tmp_path / "train.parquet")


def test_pmc_vqa_csv(tmp_path: Path):
    png(tmp_path / "figures" / "PMC1_fig2.jpg")
    src = tmp_path / "train.csv"
    with src.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["index", "Figure_path", "Caption", "Question", "Choice A", "Choice B", "Choice C", "Choice D", "Answer", "split"])
        w.writerow([0, "PMC1_fig2.jpg", "cap", "What imaging is shown?", " A:CT ", " B:MRI ", " C:X-ray ", " D:PET ", "B", "train"])
        w.writerow([1, "PMC1_fig2.jpg", "cap", "Which side?", "A:left", "B:right", "C:both", "D:none", "right", "train"])
        w.writerow([2, "PMC1_fig2.jpg", "cap", "Which?", "A:x", "B:y", "C:z", "D:w", "Q", "train"])
    with pytest.raises(SourceError, match=r"train.csv:4: field 'Answer': answer 'Q' matches none"):
        load_pmc_vqa(src)
    rows = src.read_text().splitlines()[:-1]
    src.write_text("\n".join(rows) + "\n")
    recs = load_pmc_vqa(src)
    assert [r.messages[1].content for r in recs] == ["B", "B"]
    assert recs[0].messages[0].content.startswith("<image>What imaging is shown?\nA: CT\nB: MRI")
    assert recs[0].meta["answer_text"] == "MRI" and recs[0].task == "vqa_closed"


def test_mecovqa_g_seg_markers(tmp_path: Path):
    png(tmp_path / "SAMed2D" / "ct_00001.png")
    png(tmp_path / "SAMed2D" / "ct_00001_liver.png", 255)
    png(tmp_path / "SAMed2D" / "ct_00001_spleen.png", 255)
    items = [{"id": "a1", "image": "SAMed2D/ct_00001.png", "modality": "ct", "conversations": [
        {"from": "human", "value": "<image>\nPlease segment the liver and the spleen."},
        {"from": "gpt", "value": "Liver: <SEG><mask>SAMed2D/ct_00001_liver.png</mask>, spleen: <SEG><mask>SAMed2D/ct_00001_spleen.png</mask>."}]},
        {"id": "a2", "image": "SAMed2D/ct_00001.png", "mask": "SAMed2D/ct_00001_liver.png", "conversations": [
            {"from": "human", "value": "Where is the liver?"}, {"from": "gpt", "value": "Here: <SEG>"}]}]
    src = tmp_path / "MeCoVQA_Grounding_train.json"
    src.write_text(json.dumps(items))
    recs = load_mecovqa_g(src)
    assert recs[0].messages[1].content == "Liver: [SEG], spleen: [SEG]."
    assert recs[0].messages[0].content == "<image>Please segment the liver and the spleen."
    assert recs[0].meta["query"] == "<image>\nPlease segment the liver and the spleen."  # as the published eval sends it
    assert [Path(m).name for m in recs[0].masks] == ["ct_00001_liver.png", "ct_00001_spleen.png"]
    assert recs[0].modality == "CT" and recs[0].task == "segmentation"
    assert recs[1].messages[0].content == "<image>Where is the liver?" and recs[1].num_seg_tokens == len(recs[1].masks) == 1
    items[1]["mask"] = []
    src.write_text(json.dumps(items))
    with pytest.raises(SourceError, match=r":1: field 'conversations\[1\]': a <SEG> has no"):
        load_mecovqa_g(src)


def test_medsegbench_both_layouts(tmp_path: Path):
    imgs = np.zeros((2, 8, 8), np.uint8)
    imgs[1] = 50
    labels = np.zeros((2, 8, 8), np.uint8)
    labels[0, 2:4, 2:5] = 1
    labels[0, 6:, 6:] = 2
    labels[1, 0, 0] = 1
    np.savez(tmp_path / "kvasirmsbench_64.npz", train_images=imgs, train_label=labels, test_images=imgs[:1], test_label=labels[:1])
    recs = load_medsegbench(tmp_path / "kvasirmsbench_64.npz", image_dir=tmp_path / "out", label_names={1: "polyp", 2: "instrument"})
    assert len(recs) == 3 + 2  # train: 2 classes + 1 class; test: 2 classes
    assert recs[0].messages[0].content == "<image>Please segment the polyp." and recs[0].messages[1].content == "Sure, it is [SEG]."
    mask = np.asarray(Image.open(recs[0].masks[0]))
    assert mask.shape == (8, 8) and mask.sum() == 6 * 255 and mask[2, 2] == 255
    assert recs[1].meta["label"] == 2 and "instrument" in recs[1].messages[0].content
    meta = json.dumps({"modality": "ultrasound", "labels": {"1": "thyroid nodule"}})
    np.savez(tmp_path / "d.npz", images=imgs, masks=(labels > 0).astype(np.uint8), metadata=np.array(meta))
    recs = load_medsegbench(tmp_path / "d.npz", image_dir=tmp_path / "out2")
    assert len(recs) == 2 and recs[0].modality == "US" and "thyroid nodule" in recs[0].messages[0].content
    np.savez(tmp_path / "bad.npz", train_images=imgs)
    with pytest.raises(SourceError, match="no 'train_label'"):
        load_medsegbench(tmp_path / "bad.npz", image_dir=tmp_path / "out3")


def test_medxray_cot_boxes(tmp_path: Path):
    png(tmp_path / "cxr" / "p1.png", size=(64, 64))
    items = [{"id": "p1", "image": "cxr/p1.png", "question": "Is there a pneumothorax?",
              "reasoning": "The right apex shows a visceral pleural line.", "answer": "Yes, right apical pneumothorax.",
              "boxes": [{"bbox": [30, 2, 60, 20], "label": "right apex"}]},
             {"id": "p2", "image": "cxr/p1.png", "report": "Findings: clear lungs. Impression: normal.",
              "boxes": [{"bbox_2d": [1, 1, 5, 5], "ref": "heart"}]}]
    src = tmp_path / "medxray_cot.json"
    src.write_text(json.dumps(items))
    recs = load_medxray_cot(src)
    assert recs[0].task == "cot" and recs[0].messages[1].content == (
        "<think>The right apex shows a visceral pleural line.</think><answer>Yes, right apical pneumothorax.</answer>")
    assert recs[0].objects.ref == ["right apex"] and recs[0].objects.bbox == [[30.0, 2.0, 60.0, 20.0]]
    assert recs[1].task == "report" and recs[1].objects.ref == ["heart"] and recs[1].modality == "X-ray"
    items[0]["boxes"] = [{"bbox": [30, 2, 20, 20], "label": "bad"}]
    src.write_text(json.dumps(items))
    with pytest.raises(SourceError, match=r":0: field 'objects.bbox\[0\]'"):
        load_medxray_cot(src)


def test_meddocbench_tsv_with_base64_and_index_refs(tmp_path: Path):
    b64 = base64.b64encode(png_bytes(77)).decode()
    src = tmp_path / "MedDocBench.tsv"
    with src.open("w", newline="") as fh:
        w = csv.writer(fh, delimiter="\t")
        w.writerow(["index", "image", "question", "answer", "category", "rotation"])
        w.writerow([0, b64, "What is the hemoglobin value?", "13.2 g/dL", "lab_report", 0])
        w.writerow([1, "0", "What is the patient's age?", "54", "lab_report", 90])
    recs = load_meddocbench(src, image_dir=tmp_path / "imgs")
    assert [r.task for r in recs] == ["document", "document"]
    assert recs[0].images == recs[1].images and np.asarray(Image.open(recs[0].images[0]))[0, 0, 0] == 77
    assert recs[1].meta["rotation"] == 90 and recs[1].messages[1].content == "54"
    with src.open("a", newline="") as fh:
        csv.writer(fh, delimiter="\t").writerow([2, "@@notbase64@@", "q", "a", "x", 0])
    with pytest.raises(SourceError, match=r"MedDocBench.tsv:4: field 'image': not valid base64"):
        load_meddocbench(src, image_dir=tmp_path / "imgs")


def test_meddocbench_parquet(tmp_path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    b64 = base64.b64encode(png_bytes(5)).decode()
    pq.write_table(pa.table({"index": [0], "image": [b64], "question": ["Date?"], "answer": ["2024-01-02"],
                             "A": ["2024-01-02"], "B": ["2023-12-01"], "rotation": [180]}), tmp_path / "doc.parquet")
    jsonl, written = convert("meddocbench", tmp_path / "doc.parquet", tmp_path / "out")
    assert written[0].meta["rotation"] == 180 and written[0].messages[0].content.endswith("A: 2024-01-02\nB: 2023-12-01")
    assert (jsonl.parent / written[0].images[0]).is_file() and written[0].images[0].startswith("images/")
