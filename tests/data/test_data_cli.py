"""`citrus-v data validate|convert|show` end to end through the CLI entry point."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from citrus_v.cli import main


def write_lines(path: Path, items: list) -> Path:
    path.write_text("\n".join(i if isinstance(i, str) else json.dumps(i) for i in items) + "\n")
    return path


def vqa(answer: str = "yes") -> dict:
    return {"messages": [{"role": "user", "content": "<image>Is it?"}, {"role": "assistant", "content": answer}],
            "images": ["a.png"], "task": "vqa_closed"}


def seg() -> dict:
    return {"messages": [{"role": "user", "content": "<image>Segment the liver."}, {"role": "assistant", "content": "Sure, it is [SEG]."}],
            "images": ["a.png"], "masks": ["m.png"], "task": "segmentation"}


def test_validate_counts_per_task(tmp_path: Path, capsys):
    f = write_lines(tmp_path / "d.jsonl", [vqa(), vqa("no"), "", seg()])
    assert main(["data", "validate", str(f), "--records-only"]) == 0  # the files do not exist: form only
    out = capsys.readouterr().out
    assert "3 valid records" in out and "vqa_closed: 2" in out and "segmentation: 1" in out


def test_validate_stops_on_a_bad_record_naming_file_line_field(tmp_path: Path, capsys):
    bad = seg()
    bad["masks"] = []
    f = write_lines(tmp_path / "d.jsonl", [vqa(), bad, "{not json"])
    assert main(["data", "validate", str(f)]) == 2  # a user error: one line, status 2
    err = capsys.readouterr().err
    assert f"{f}:2: field 'masks': 1 [SEG] tokens in assistant messages but 0 masks" in err
    assert main(["data", "validate", str(f), "--skip-invalid", "--records-only"]) == 0
    out = capsys.readouterr().out
    assert "1 valid records" in out and "skipped 2 invalid line(s): 2, 3" in out and "invalid JSON" in out


def test_validate_check_files(tmp_path: Path, capsys):
    f = write_lines(tmp_path / "d.jsonl", [vqa()])
    for flags in ([], ["--check-files"]):  # opening the files is the default; the old flag still works
        assert main(["data", "validate", str(f), *flags]) == 1
        assert f"{f}:1: field 'images[0]': {tmp_path / 'a.png'}: no such file" in capsys.readouterr().err
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "a.png")
    assert main(["data", "validate", str(f), "--check-files"]) == 0


def test_show_draws_boxes_and_masks(tmp_path: Path, capsys):
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(tmp_path / "a.png")
    m = np.zeros((40, 50), np.uint8)
    m[10:20, 10:30] = 255
    Image.fromarray(m).save(tmp_path / "m.png")
    det = {"messages": [{"role": "user", "content": "<image>Find the lesion."}, {"role": "assistant", "content": "ok"}],
           "images": ["a.png"], "objects": {"ref": ["lesion"], "bbox": [[30, 25, 45, 35]]}, "task": "detection"}
    f = write_lines(tmp_path / "d.jsonl", [det, seg()])
    out = tmp_path / "shown.png"
    assert main(["data", "show", str(f), "--index", "1", "--out", str(out)]) == 0
    img = np.asarray(Image.open(out))
    assert img.shape == (40, 50, 3)
    assert img[15, 20].sum() > 0 and img[5, 5].sum() == 0  # mask tinted, background untouched
    assert main(["data", "show", str(f), "--index", "0", "--out", str(out)]) == 0
    img = np.asarray(Image.open(out))
    assert img[25, 38].sum() > 0 and img[30, 38].sum() == 0  # box outline drawn, inside left clear
    assert "1 boxes, 0 masks" in capsys.readouterr().out
    assert main(["data", "show", str(f), "--index", "5"]) == 2
    assert "no record at index 5" in capsys.readouterr().err


def test_show_dicom_record(tmp_path: Path):
    from pydicom.data import get_testdata_file

    ct = get_testdata_file("CT_small.dcm")
    rec = {"messages": [{"role": "user", "content": "<image>Box the spine."}, {"role": "assistant", "content": "ok"}],
           "images": [ct], "objects": {"ref": ["x"], "bbox": [[10, 10, 50, 50]]}}
    f = write_lines(tmp_path / "d.jsonl", [rec])
    assert main(["data", "show", str(f), "--window", "ct_bone"]) == 0
    assert np.asarray(Image.open(tmp_path / "d.0.png")).shape == (128, 128, 3)


def test_convert_command(tmp_path: Path, capsys):
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "img1.jpg")
    src = tmp_path / "vqa.json"
    src.write_text(json.dumps([{"qid": 1, "image_name": "img1.jpg", "question": "Is it normal?", "answer": "no", "answer_type": "CLOSED"}]))
    out = tmp_path / "out"
    assert main(["data", "convert", "--format", "vqa-rad", str(src), "--out", str(out)]) == 0
    assert "wrote 1 records" in capsys.readouterr().out
    assert main(["data", "validate", str(out / "data.jsonl"), "--check-files"]) == 0
    assert main(["data", "convert", "--format", "nope", str(src), "--out", str(out)]) == 2
    assert "unknown format 'nope'" in capsys.readouterr().err
    src.write_text("[1, 2]")
    assert main(["data", "convert", "--format", "vqa-rad", str(src), "--out", str(out)]) == 2
    assert "vqa.json:0: item is int" in capsys.readouterr().err


def test_help_lists_the_data_commands(capsys):
    with pytest.raises(SystemExit):
        main(["data", "--help"])
    out = capsys.readouterr().out
    for cmd in ("validate", "convert", "show"):
        assert cmd in out
