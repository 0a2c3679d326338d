"""The issue-21 converters (COVID-19 chest X-ray fork, MoNuSeg, DRIVE, BCCD) on tiny synthetic copies of
their layouts: records, boxes, masks, what they leave out, and each split rule."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from citrus_v.cli import main
from citrus_v.data.sources import SourceError, convert
from citrus_v.data.sources.covid_cxr import patient_groups, patient_split
from citrus_v.data.sources.cvc_clinicdb import sequence_of
from citrus_v.data.sources.masks import grid_tiles
from citrus_v.data.sources.splits import hash_split
from tests.data.real_fixtures import bccd_set, covid_set, drive_set, monuseg_set


def _mask(out: Path, rel: str) -> np.ndarray:
    return np.asarray(Image.open(out / rel)) > 0


def _qa(records) -> list[tuple[str, str, str]]:
    return [(r.meta["image"], r.messages[0].content, r.messages[1].content) for r in records]


def test_covid_records_boxes_masks_and_left_out(tmp_path: Path):
    skipped: Counter = Counter()
    _, recs = convert("covid-chestxray", covid_set(tmp_path / "covid"), tmp_path / "out", skipped=skipped)
    assert _qa(recs) == [
        ("p1a.png", "<image>What imaging modality is this?", "X-ray"),
        ("p1a.png", "<image>Is this a lateral view?", "no"),
        ("p1a.png", "<image>Please locate the right lung.", "<boxes>"),
        ("p1a.png", "<image>Please locate the left lung.", "<boxes>"),
        ("p1a.png", "<image>Please segment the lungs.", "Sure, it is [SEG]."),
        ("p1b.png", "<image>What imaging modality is this?", "X-ray"),
        ("p1b.png", "<image>Is this a lateral view?", "yes"),
        ("p2.png", "<image>What imaging modality is this?", "CT"),  # CT: no view question, no lung mask
        ("p3.png", "<image>What imaging modality is this?", "X-ray"),
        ("p3.png", "<image>Is this a lateral view?", "no"),
        ("p3.png", "<image>Please locate the left lung.", "<boxes>"),  # its right-lung box has no coordinates
        ("p9.png", "<image>What imaging modality is this?", "X-ray"),
        ("p9.png", "<image>Is this a lateral view?", "no"),
    ]  # the second row of p1a.png is left out
    boxes = [(r.objects.ref, r.objects.bbox) for r in recs if r.task == "detection"]
    assert boxes == [(["right lung"], [[2, 3, 12, 23]]), (["left lung"], [[20, 4, 29, 22]]), (["left lung"], [[18, 2, 28, 18]])]  # COCO xywh -> xyxy
    seg = next(r for r in recs if r.task == "segmentation")
    want = np.zeros((32, 32), bool)
    want[4:20, 2:12] = True  # the soft edge (100 < 128) is not lung
    assert (_mask(tmp_path / "out", seg.masks[0]) == want).all()
    assert "model-generated" in seg.meta["mask_origin"]
    assert skipped == Counter({
        "a volumes/ entry of metadata.csv (not in the repository)": 1,
        "image in metadata.csv absent (the snapshot leaves out files >= 4 MiB)": 1,
        "lung box without coordinates in the COCO file": 1,
        "lung mask of another size than its image": 1,
        "a second metadata.csv row for an image (under another patient id)": 1,
    })
    assert {r.meta["license"] for r in recs if r.meta["patientid"] == "1"} == {"CC BY 4.0"}
    assert {r.meta["license"] for r in recs if r.meta["patientid"] == "2"} == {None}


def test_covid_split_is_by_patient(tmp_path: Path):
    _, recs = convert("covid-chestxray", covid_set(tmp_path / "covid"), tmp_path / "out")
    group = {"1": "1", "2": "2", "3": "3", "11": "1"}  # 11 lists patient 1's image p1a.png; alone it would be test, 1 is train
    assert patient_split("11") != patient_split("1")
    assert all(r.meta["split"] == patient_split(group[r.meta["patientid"]]) for r in recs)
    assert patient_groups([{"patientid": p, "filename": f} for p, f in (("7", "a"), ("5", "b"), ("7", "b"), ("6", "c"), ("6", "a"))]) == {
        "7": "5", "5": "5", "6": "5"}  # linked through two shared files
    # the rule's shares hold over many patients, and a patient's images never straddle splits
    shares = Counter(patient_split(str(p)) for p in range(20000))
    assert abs(shares["train"] / 20000 - 0.7) < 0.02 and abs(shares["val"] / 20000 - 0.1) < 0.02
    assert abs(shares["test"] / 20000 - 0.2) < 0.02
    with pytest.raises(ValueError, match="sum below 1"):
        hash_split("x", val=0.5, test=0.5)


def test_monuseg_tiles_masks_and_folder_splits(tmp_path: Path):
    fgs = monuseg_set(tmp_path / "MoNuSeg")
    skipped: Counter = Counter()
    _, recs = convert("monuseg", tmp_path / "MoNuSeg", tmp_path / "out", grid=2, skipped=skipped)
    assert [(r.meta["split"], r.meta["tile"]) for r in recs] == [
        (split, tile) for split in ("train", "val", "test") for tile in ([0, 20, 0, 20], [0, 20, 20, 40], [20, 40, 0, 20])
    ]  # the empty bottom-right tile of each image is left out
    assert skipped == Counter({"tile with an empty mask": 3, "image without a mask": 1})
    folder = {"train": "Train_Folder", "val": "Val_Folder", "test": "Test_Folder"}
    for r in recs:
        y0, y1, x0, x1 = r.meta["tile"]
        assert (_mask(tmp_path / "out", r.masks[0]) == fgs[folder[r.meta["split"]]][y0:y1, x0:x1]).all()
        assert np.asarray(Image.open(tmp_path / "out" / r.images[0])).shape == (20, 20, 3)
    assert {r.messages[0].content for r in recs} == {"<image>Please segment the cell nuclei."}
    assert {r.modality for r in recs} == {"pathology"}


def test_drive_splits_and_tiles(tmp_path: Path):
    fgs = drive_set(tmp_path / "DRIVE")
    _, recs = convert("drive", tmp_path / "DRIVE", tmp_path / "out")  # default grid 2
    assert Counter((r.meta["image"], r.meta["split"]) for r in recs) == Counter({(21, "train"): 4, (38, "val"): 4, (1, "test"): 4})
    for r in recs:
        y0, y1, x0, x1 = r.meta["tile"]
        key = ("test" if r.meta["split"] == "test" else "training", r.meta["image"])
        assert (_mask(tmp_path / "out", r.masks[0]) == fgs[key][y0:y1, x0:x1]).all()
    assert grid_tiles(30, 28, 2) == [(0, 15, 0, 14), (0, 15, 14, 28), (15, 30, 0, 14), (15, 30, 14, 28)]


def test_bccd_boxes_classes_and_imagesets_split(tmp_path: Path):
    skipped: Counter = Counter()
    _, recs = convert("bccd", bccd_set(tmp_path / "repo"), tmp_path / "out", skipped=skipped)  # the repository's root
    got = [(r.meta["image"], r.meta["split"], r.messages[0].content, r.objects.bbox) for r in recs]
    assert got == [
        ("BloodImage_00000", "train", "<image>Please locate the white blood cell.", [[5, 10, 20, 25], [30, 20, 50, 40]]),
        ("BloodImage_00000", "train", "<image>Please locate the platelets.", [[40, 2, 44, 6]]),
        ("BloodImage_00001", "test", "<image>Please locate the white blood cell.", [[10, 10, 30, 30]]),
    ]  # boxes top to bottom; the zero-area platelet box is left out, and 00002 holds only RBCs
    assert skipped == Counter({"box outside its image or empty": 1})
    assert recs[0].objects.ref == ["white blood cell"] * 2 and recs[0].messages[1].content == "<boxes>"
    _, with_rbc = convert("bccd", tmp_path / "repo" / "BCCD", tmp_path / "out2", classes=("RBC",))
    assert [(r.meta["image"], r.meta["split"]) for r in with_rbc] == [
        ("BloodImage_00000", "train"), ("BloodImage_00001", "test"), ("BloodImage_00002", "val")]
    with pytest.raises(SourceError, match="unknown classes"):
        convert("bccd", tmp_path / "repo", tmp_path / "out3", classes=("Neutrophil",))


@pytest.mark.parametrize("fmt, build", [
    ("covid-chestxray", covid_set), ("bccd", bccd_set), ("monuseg", monuseg_set), ("drive", drive_set),
])
def test_cli_convert_validates_and_names_what_it_left_out(tmp_path: Path, capsys, fmt, build):
    build(tmp_path / "src")
    assert main(["data", "convert", "--format", fmt, str(tmp_path / "src"), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "wrote" in out and (fmt == "drive" or "left out" in out)
    assert main(["data", "validate", str(tmp_path / "out" / "data.jsonl")]) == 0


@pytest.mark.parametrize("fmt, problem", [
    ("covid-chestxray", "expected metadata.csv"), ("bccd", "expected Annotations/"),
    ("monuseg", "expected Train_Folder/"), ("drive", "expected training/ and test/"),
])
def test_a_wrong_folder_is_one_line_naming_the_layout(tmp_path: Path, capsys, fmt, problem):
    (tmp_path / "empty").mkdir()
    assert main(["data", "convert", "--format", fmt, str(tmp_path / "empty"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert problem in err and len(err.splitlines()) == 1


def test_cvc_split_blocks_hold_whole_sequences():
    from citrus_v.data.sources.cvc_clinicdb import LAST_FRAME, split_of

    by_sequence: dict[int, set[str]] = {}
    for frame in range(1, LAST_FRAME + 1):
        by_sequence.setdefault(sequence_of(frame), set()).add(split_of(frame))
    assert all(len(s) == 1 for s in by_sequence.values())  # no video sequence straddles two splits
    order = [next(iter(by_sequence[q])) for q in sorted(by_sequence)]
    assert order == sorted(order, key=("train", "val", "test").index)  # contiguous blocks, in split order
    assert Counter(order) == Counter({"train": 19, "val": 4, "test": 6})
