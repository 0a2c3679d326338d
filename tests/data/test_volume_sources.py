"""The TotalSegmentator and dcmqi converters on tiny synthetic stand-ins (tests/fixtures/real_sources,
made by its make_fixtures.py): slice-block splits, orientation, windowing, the DICOM SEG masks, what is
left out, and that the synthetic suite's train split never draws a slice these sources hold out."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from citrus_v.cli import main
from citrus_v.data.phantoms import totalseg as phantom_totalseg
from citrus_v.data.schema import read_jsonl
from citrus_v.data.sources import SourceError, convert
from citrus_v.data.sources.dcmqi import load_dcmqi, series_split
from citrus_v.data.sources.splits import hash_split, slice_blocks, slice_split
from citrus_v.data.sources.totalseg import load_totalseg

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "real_sources"
FIXTURE_UID = "1.2.826.0.1.3680043.8.498.9999.2"  # the fixture series' SeriesInstanceUID


def _png(out: Path, rel: str) -> np.ndarray:
    return np.asarray(Image.open(out / rel))


def test_totalseg_slices_split_by_blocks_and_small_organs_are_left_out(tmp_path: Path):
    skipped: Counter = Counter()
    records = load_totalseg(FIXTURES / "totalseg", image_dir=tmp_path, skipped=skipped)
    for vol in ("ct", "mr"):
        recs = [r for r in records if r.meta["volume"] == vol]
        assert {r.meta["slice"] for r in recs} == set(range(12)) - {2, 3, 5, 6, 8, 9}  # the gaps of 12 slices
        assert all(r.meta["split"] == slice_split(12, r.meta["slice"]) for r in recs)
    spleen = sorted(r.meta["slice"] for r in records if r.meta["organ"] == "spleen")
    assert spleen == [0, 1, 4]  # one voxel on slices 6-11 is below the area threshold
    assert skipped == {"ct gap slice between split blocks": 6, "mr gap slice between split blocks": 6,
                       "volume absent: example_ct_dicom": 1}
    assert {r.messages[0].content for r in records} == {"<image>Please segment the liver.", "<image>Please segment the spleen."}
    assert {r.modality for r in records} == {"ct", "mr"}


def test_totalseg_slices_are_radiological_and_windowed(tmp_path: Path):
    records = load_totalseg(FIXTURES / "totalseg", image_dir=tmp_path)
    for vol in ("ct", "mr"):  # the CT is stored RAS, the MR LPS: both come out the same way round
        rec = next(r for r in records if r.meta["volume"] == vol and r.meta["organ"] == "liver")
        mask = _png(tmp_path, Path(rec.masks[0]).name) > 0
        ys, xs = np.nonzero(mask)
        assert xs.mean() < mask.shape[1] / 2 and ys.mean() < mask.shape[0] / 2  # patient's right on the left, front up
    ct = next(r for r in records if r.meta["volume"] == "ct" and r.meta["organ"] == "liver")
    image, mask = _png(tmp_path, Path(ct.images[0]).name), _png(tmp_path, Path(ct.masks[0]).name) > 0
    assert image.shape == mask.shape == (224, 224)  # a 16 x 12 slice is padded to a square and enlarged
    assert not image[:20].any() and not image[-20:].any()  # the padding above and below the 12 rows is black
    ys, xs = np.nonzero(mask)
    inside = image[int(np.median(ys)) - 5:int(np.median(ys)) + 5, int(np.median(xs)) - 5:int(np.median(xs)) + 5]
    assert set(np.unique(inside)) == {int((60 + 160) / 400 * 255)}  # 60 HU through L40 W400
    area = mask.sum() / (224 / 16) ** 2  # back in voxels of the 16-px-wide slice
    assert 5 * 5 * 0.8 < area < 5 * 5 * 1.2  # the 5 x 5 liver box


@pytest.mark.parametrize("n_z", [30, 20])  # the reference CT and MR (and the DICOM CT)
def test_the_suites_train_split_never_draws_a_held_out_slice(n_z: int):
    held_out = set(slice_blocks(n_z)["val"]) | set(slice_blocks(n_z)["test"])
    assert held_out == {z for z in range(n_z) if slice_split(n_z, z) in ("val", "test")}
    which = "ct" if n_z == 30 else "mr"
    assert phantom_totalseg.load(str(phantom_totalseg.default_dir()), which).image.shape[0] == n_z
    rng = np.random.default_rng(0)
    drawn = {phantom_totalseg.sample(phantom_totalseg.default_dir(), which, "train", "segmentation", k, rng, 32).meta["slice"]
             for k in range(60)}
    assert drawn and not drawn & held_out


def test_dcmqi_seg_masks_on_their_slices(tmp_path: Path):
    skipped: Counter = Counter()
    records = load_dcmqi(FIXTURES / "dcmqi", image_dir=tmp_path, skipped=skipped)
    assert [r.meta["slice"] for r in records] == [0, 1, 2]
    assert {r.meta["split"] for r in records} == {hash_split(f"dcmqi:{FIXTURE_UID}", val=0.1, test=0.2)}
    assert skipped == {"DICOM SEG of dcmqi's encoding tests (not anatomy)": 1}
    want = np.zeros((16, 16), bool)
    want[3:10, 2:9] = True
    for rec in records:
        assert rec.messages[0].content == "<image>Please segment the liver." and rec.modality == "ct"
        np.testing.assert_array_equal(_png(tmp_path, Path(rec.masks[0]).name) > 0, want)
        image = _png(tmp_path, Path(rec.images[0]).name)
        assert set(np.unique(image[want])) == {int((60 + 160) / 400 * 255)}


def test_dcmqi_split_uses_blocks_for_a_long_series():
    assert [series_split("x", 30, k) for k in range(30)] == [slice_split(30, k) for k in range(30)]
    assert {series_split("x", 3, k) for k in range(3)} == {hash_split("dcmqi:x", val=0.1, test=0.2)}


def test_dcmqi_refusals_name_the_file(tmp_path: Path):
    src = tmp_path / "dcmqi"
    shutil.copytree(FIXTURES / "dcmqi", src)
    shutil.rmtree(src / "ct-3slice")
    with pytest.raises(SourceError, match="liver.dcm: the series it segments .* is in no folder"):
        load_dcmqi(src, image_dir=tmp_path / "out")
    (src / "liver.dcm").unlink()
    with pytest.raises(SourceError, match="liver.dcm: missing"):
        load_dcmqi(src, image_dir=tmp_path / "out")
    with pytest.raises(SourceError, match="no reference volume"):
        load_totalseg(tmp_path, image_dir=tmp_path / "out")


@pytest.mark.parametrize("fmt", ["totalseg", "dcmqi"])
def test_convert_format_writes_a_valid_folder(tmp_path: Path, fmt: str, capsys):
    out = tmp_path / "out"
    assert main(["data", "convert", "--format", fmt, str(FIXTURES / fmt), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    records = read_jsonl(out / "data.jsonl")
    assert f"wrote {len(records)} records" in printed and "left out" in printed
    assert main(["data", "validate", str(out / "data.jsonl")]) == 0
    _, again = convert(fmt, FIXTURES / fmt, tmp_path / "again")
    assert [r.meta for r in again] == [r.meta for r in records]
