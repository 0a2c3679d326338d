"""`citrus-v data validate` opens what a record points to, and training refuses what it refuses
(issue 22, point 6): one rule, ``citrus_v.data.checks``, called by both."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from citrus_v.cli import main
from citrus_v.data.checks import FileRules, record_problems
from citrus_v.data.schema import RecordError, iter_jsonl_lines, read_jsonl


def det(image: str = "a.png", box: list | None = None) -> dict:
    return {"messages": [{"role": "user", "content": "<image>Find the lesion."}, {"role": "assistant", "content": "ok"}],
            "images": [image], "objects": {"ref": ["lesion"], "bbox": [box or [1, 2, 30, 20]]}, "task": "detection"}


def seg(image: str = "a.png", mask: str = "m.png") -> dict:
    return {"messages": [{"role": "user", "content": "<image>Segment it."}, {"role": "assistant", "content": "[SEG]"}],
            "images": [image], "masks": [mask], "task": "segmentation"}


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(tmp_path / "a.png")  # 50 wide, 40 high
    Image.fromarray(np.zeros((40, 50), np.uint8)).save(tmp_path / "m.png")
    Image.fromarray(np.zeros((20, 50), np.uint8)).save(tmp_path / "small_mask.png")
    (tmp_path / "notes.png").write_text("this is a text file, not an image\n")
    Image.new("L", (6000, 6000)).save(tmp_path / "bomb.png", optimize=True)  # ~35 KB on disk, 36 Mpx
    ds = pydicom.dcmread(pydicom.data.get_testdata_file("CT_small.dcm"))
    ds.Rows, ds.Columns = 10, 10  # the header lies about its 128x128 pixels
    ds.save_as(tmp_path / "lying.dcm")
    return tmp_path


def write(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def validate(capsys, f: Path, *flags: str) -> tuple[int, str, str]:
    rc = main(["data", "validate", str(f), *flags])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_each_problem_is_named_by_file_line_field(folder: Path, capsys):
    f = write(folder / "d.jsonl", [
        det(),  # fine
        det(box=[10, 10, 60, 20]),  # x2 beyond the 50 px width
        seg(mask="small_mask.png"),  # 50x20 mask on a 50x40 image
        seg(mask="missing.png"),
        det(image="notes.png"),  # a text file
        det(image="bomb.png"),
        det(image="/etc/shadow"),  # outside the data root
        det(image="../elsewhere.png"),
        det(image="lying.dcm", box=[0, 0, 5, 5]),
        seg(),  # fine
    ])
    rc, out, err = validate(capsys, f, "--max-pixels", "1000000")
    assert rc == 1 and "10 valid records" in out
    expected = [
        (2, "objects.bbox[0]", "lies outside its image (50x40 pixels, WxH)"),
        (3, "masks[0]", "small_mask.png: mask is 50x20 (WxH), its image is 50x40"),
        (4, "masks[0]", "missing.png: no such file"),
        (5, "images[0]", "notes.png: not a readable image"),
        (6, "images[0]", "bomb.png: image is 6000x6000 = 36000000 pixels, above the limit of 1000000"),
        (7, "images[0]", "/etc/shadow: outside the data root"),
        (8, "images[0]", "../elsewhere.png: outside the data root"),
        (9, "images[0]", "lying.dcm: header and pixel data disagree"),
    ]
    problem_lines = [ln.strip() for ln in err.splitlines()[1:]]
    assert len(problem_lines) == len(expected), err
    for line, (lineno, field, text) in zip(problem_lines, expected):
        assert line.startswith(f"{f}:{lineno}: field '{field}': "), line
        assert text in line, line
    # the bomb passes under the default limit (40 Mpx), the rest does not
    rc, _, err = validate(capsys, f)
    assert rc == 1 and "bomb.png" not in err and len(err.strip().splitlines()) == 1 + len(expected) - 1


def test_allow_outside_permits_paths_elsewhere(tmp_path: Path, folder: Path, capsys):
    inner = folder / "set"
    inner.mkdir()
    f = write(inner / "d.jsonl", [det(image="../a.png"), det(image=str(folder / "a.png"))])
    rc, _, err = validate(capsys, f)
    assert rc == 1 and err.count("outside the data root") == 2
    assert validate(capsys, f, "--allow-outside")[0] == 0


def test_a_symlink_out_of_the_root_is_outside(tmp_path: Path, folder: Path, capsys):
    inner = folder / "set"
    inner.mkdir()
    (inner / "link.png").symlink_to(folder / "a.png")
    f = write(inner / "d.jsonl", [det(image="link.png")])
    rc, _, err = validate(capsys, f)
    assert rc == 1 and "link.png: outside the data root" in err


def test_non_finite_boxes_are_refused_naming_file_line_field(folder: Path, capsys):
    for bad in ("NaN", "Infinity", "-Infinity"):
        line = json.dumps(det()).replace("[1, 2, 30, 20]", f"[1, 2, {bad}, 20]")
        f = write(folder / "d.jsonl", [det(), line])
        rc, _, err = validate(capsys, f)
        assert rc == 2 and err.strip().count("\n") == 0
        assert f"{f}:2: field 'objects.bbox[0]': box has a NaN or infinite coordinate" in err


def test_non_utf8_jsonl_is_one_line(folder: Path, capsys):
    f = folder / "latin1.jsonl"
    f.write_bytes(json.dumps(det()).encode() + b"\n" + json.dumps(det()).replace("Find", "Tr\u00e8s").encode("latin-1") + b"\n")
    rc, _, err = validate(capsys, f)
    assert rc == 2 and "Traceback" not in err and err.strip().count("\n") == 0
    assert f"{f}:2: not UTF-8 text" in err
    rc, out, _ = validate(capsys, f, "--skip-invalid")
    assert rc == 0 and "skipped 1 invalid line(s): 2" in out
    # a byte-order mark is not an error
    bom = folder / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + json.dumps(det()).encode() + b"\n")
    assert [ln for ln, _ in iter_jsonl_lines(bom)] == [1]


def test_multi_frame_dicom_is_refused_as_a_record_image(folder: Path, capsys):
    import shutil

    # a real enhanced MR of 10 frames (an RTDOSE grid is refused as not an image at all)
    shutil.copy(Path(__file__).resolve().parents[1] / "fixtures" / "dicom_zoo" / "pydicom_data" / "emri_small_RLE.dcm", folder / "mr.dcm")
    f = write(folder / "d.jsonl", [det(image="mr.dcm", box=[0, 0, 5, 5])])
    rc, _, err = validate(capsys, f)
    assert rc == 1 and "mr.dcm: holds 10 frames; a record's image must be one picture" in err


def test_records_only_skips_the_files(folder: Path, capsys):
    f = write(folder / "d.jsonl", [det(image="missing.png")])
    assert validate(capsys, f, "--records-only")[0] == 0
    assert validate(capsys, f)[0] == 1


def test_training_refuses_what_validation_refuses(folder: Path):
    """JsonlDataset (what every training stage reads through) raises the validator's own first problem."""
    from citrus_v.data.dataset import JsonlDataset
    from citrus_v.data.image_processing import ImageConfig
    from citrus_v.data.template import ChatTemplate
    from citrus_v.data.tokenizer import train_tiny_tokenizer

    tiny_tokenizer = train_tiny_tokenizer(["Find the lesion.", "Segment it.", "ok [SEG]"] * 20, vocab_size=400)

    records = [seg(), seg(mask="small_mask.png"), det(box=[10, 10, 60, 20]), det(image="/etc/shadow"), det(image="notes.png")]
    f = write(folder / "d.jsonl", records)
    data = JsonlDataset(f, ChatTemplate(tiny_tokenizer, ImageConfig.tiny(), max_length=400))
    assert data[0].gt_masks.shape[0] == 1  # the good record encodes
    for i in range(1, len(records)):
        (expected,) = record_problems(read_jsonl(f)[i], f, i + 1, folder, FileRules())
        with pytest.raises(RecordError) as info:
            data[i]
        assert str(info.value) == str(expected)
    allowed = JsonlDataset(f, data.template, rules=FileRules(allow_outside=True))
    with pytest.raises(RecordError, match=r"/etc/shadow: not a DICOM file"):  # no suffix: read as DICOM, and it is none
        allowed[3]


def test_the_training_mixture_holds_paths_to_the_data_root_unless_allowed(folder: Path):
    """build_mixture (every `citrus-v train` stage) reads through JsonlDataset with the root rule;
    `citrus-v train --allow-outside` lifts it, as `data validate --allow-outside` does."""
    from citrus_v.data.image_processing import ImageConfig
    from citrus_v.data.template import ChatTemplate
    from citrus_v.data.tokenizer import train_tiny_tokenizer
    from citrus_v.train.pipeline import build_mixture
    from citrus_v.train.stages import get_stage, with_data_file

    inner = folder / "set"
    inner.mkdir()
    f = write(inner / "d.jsonl", [seg(image=str(folder / "a.png"), mask=str(folder / "m.png"))])
    template = ChatTemplate(train_tiny_tokenizer(["Segment it.", "[SEG]"] * 20, vocab_size=400), ImageConfig.tiny())
    stage = with_data_file(get_stage(3, "tiny"), f)
    with pytest.raises(RecordError, match=rf"{f}:1: field 'images\[0\]': .*outside the data root"):
        build_mixture(stage, [f], template)[0]
    assert build_mixture(stage, [f], template, allow_outside=True)[0].gt_masks.shape[0] == 1


def test_the_fine_tune_split_checks_paths_before_making_them_absolute(folder: Path, tmp_path: Path):
    from citrus_v.train.finetune import write_split

    inner = folder / "set"
    inner.mkdir()
    for k in range(4):
        Image.fromarray(np.full((40, 50, 3), k, np.uint8)).save(folder / f"a{k}.png")
    f = write(inner / "d.jsonl", [det(image=f"../a{k}.png") for k in range(4)])
    with pytest.raises(RecordError, match=rf"{f}:1: field 'images\[0\]': \.\./a0\.png: outside the data root"):
        write_split([f], tmp_path / "out", fraction=0.25, seed=0)
    train, _, _ = write_split([f], tmp_path / "out", fraction=0.25, seed=0, allow_outside=True)
    assert all(Path(r.images[0]).is_absolute() for r in read_jsonl(train))
