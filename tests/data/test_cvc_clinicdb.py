"""The CVC-ClinicDB converter on three synthetic frames in the set's layout (images/ + masks/ JPEGs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from citrus_v.cli import main
from citrus_v.data.schema import read_jsonl
from citrus_v.data.sources import SourceError, convert
from citrus_v.data.sources.cvc_clinicdb import sequence_of


def fake_set(root: Path, frames: dict[int, tuple[int, int, int, int]], size: int = 32) -> Path:
    """Frames as JPEGs with a bright box (the 'polyp') whose JPEG mask carries compression noise."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for frame, (y0, y1, x0, x1) in frames.items():
        img = rng.integers(0, 120, (size, size, 3), dtype=np.uint8)
        img[y0:y1, x0:x1] = 220
        mask = np.zeros((size, size, 3), np.uint8)
        mask[y0:y1, x0:x1] = 255
        Image.fromarray(img).save(root / "images" / f"{frame}.jpg", quality=90)
        Image.fromarray(mask).save(root / "masks" / f"{frame}.jpg", quality=70)
    return root


BOXES = {30: (4, 12, 6, 20), 1: (10, 20, 10, 20), 26: (0, 8, 0, 8)}


def test_frames_become_polyp_records_with_binary_masks_and_sequences(tmp_path: Path):
    src = fake_set(tmp_path / "CVC-ClinicDB", BOXES)
    jsonl, records = convert("cvc-clinicdb", src, tmp_path / "out")
    assert [(r.meta["frame"], r.task) for r in records] == [
        (f, t) for f in (1, 26, 30) for t in ("segmentation", "detection")]  # frame order, not file-system order
    assert [r.meta["sequence"] for r in records[::2]] == [1, 2, 2]
    again = [r for r in read_jsonl(jsonl) if r.task == "segmentation"]
    assert [r.messages[0].content for r in again] == ["<image>Please segment the polyp."] * 3
    assert [r.messages[1].content for r in again] == ["Sure, it is [SEG]."] * 3
    assert {r.task for r in again} == {"segmentation"} and {r.modality for r in again} == {"endoscopy"}
    for rec, frame in zip(again, (1, 26, 30)):
        y0, y1, x0, x1 = BOXES[frame]
        mask = np.asarray(Image.open(tmp_path / "out" / rec.masks[0]))
        assert mask.shape == (32, 32) and set(np.unique(mask)) <= {0, 255}
        want = np.zeros((32, 32), bool)
        want[y0:y1, x0:x1] = True
        assert ((mask > 0) == want).mean() > 0.97  # the JPEG noise at the edges is thresholded away
        assert np.asarray(Image.open(tmp_path / "out" / rec.images[0])).shape == (32, 32, 3)


def test_cli_converts_a_folder_and_the_result_validates(tmp_path: Path, capsys):
    src = fake_set(tmp_path / "cvc", {5: (2, 9, 2, 9), 6: (3, 9, 3, 9)})
    assert main(["data", "convert", "--format", "cvc-clinicdb", str(src), "--out", str(tmp_path / "out")]) == 0
    assert "wrote 4 records" in capsys.readouterr().out
    assert main(["data", "validate", str(tmp_path / "out" / "data.jsonl")]) == 0


def test_frames_filter_and_refusals(tmp_path: Path):
    src = fake_set(tmp_path / "cvc", BOXES)
    _, records = convert("cvc-clinicdb", src, tmp_path / "out", frames={26, 30, 999})
    assert [r.meta["frame"] for r in records] == [26, 26, 30, 30]
    (src / "masks" / "26.jpg").unlink()
    with pytest.raises(SourceError, match=r"masks: no mask for frame\(s\) \[26\]"):
        convert("cvc-clinicdb", src, tmp_path / "out2")
    with pytest.raises(SourceError, match="expected the folders images/ and masks/"):
        convert("cvc-clinicdb", tmp_path / "out", tmp_path / "out3")


def test_locate_records_carry_each_component_box_top_to_bottom(tmp_path: Path):
    src = fake_set(tmp_path / "cvc", {7: (10, 20, 2, 9)})
    mask = np.zeros((32, 32, 3), np.uint8)
    mask[10:20, 2:9] = 255  # the fake polyp
    mask[1:5, 20:30] = 255  # a second one, higher up
    mask[30, 30] = 255  # one pixel of dust: no box
    Image.fromarray(mask).save(src / "masks" / "7.png")
    (src / "masks" / "7.jpg").unlink()
    _, records = convert("cvc-clinicdb", src, tmp_path / "out")
    det = [r for r in records if r.task == "detection"]
    assert len(det) == 1 and det[0].messages[0].content == "<image>Please locate the polyp."
    assert det[0].messages[1].content == "<boxes>" and det[0].objects.ref == ["polyp", "polyp"]
    assert det[0].objects.bbox == [[20.0, 1.0, 30.0, 5.0], [2.0, 10.0, 9.0, 20.0]]
    assert det[0].images == [r for r in records if r.task == "segmentation"][0].images


def test_sequence_table_edges():
    assert [sequence_of(f) for f in (1, 25, 26, 199, 200, 205, 206, 591, 592, 612)] == [1, 1, 2, 9, 10, 10, 11, 28, 29, 29]
    with pytest.raises(ValueError, match="outside"):
        sequence_of(613)
