import json

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from citrus_v.cli import main
from citrus_v.data.volume_io import Volume, write_nifti
from citrus_v.data.windowing import apply_window
from citrus_v.volume.inference import segment_volume
from citrus_v.volume.quantify import _max_pairwise_distance, measure_structure
from citrus_v.volume.report import montage_slices, write_montage

from .conftest import ThresholdPredictor


def test_montage_tiles_for_the_20_slice_series(dicom_series, tmp_path):
    seg = segment_volume(ThresholdPredictor(), dicom_series, "Segment the liver", axis=2, batch_size=20)
    m = write_montage(seg, tmp_path / "m.png")
    assert m.slice_indices == list(range(20)) and m.grid == (4, 5) and m.tile_hw == (256, 256)
    with Image.open(m.path) as im:
        assert im.size == (5 * 256, 4 * 256)
        sheet = np.asarray(im.convert("RGB"))
    # tile 7 (row 1, col 2) is slice 7: its overlay shows the structure's colour where the mask is
    tile = sheet[256:512, 512:768]
    assert tile.shape == (256, 256, 3) and (tile[..., 2] != tile[..., 0]).any()


def test_montage_samples_slices_holding_a_structure():
    vol = Volume(np.full((8, 8, 60), -1000.0), np.eye(4), (1, 1, 1), modality="CT")
    vol.data[2:5, 2:5, 30:50] = 500
    seg = segment_volume(ThresholdPredictor(), vol, "Segment the liver", batch_size=64)
    picks = montage_slices(seg, max_tiles=10)
    assert len(picks) == 10 and picks[0] == 30 and picks[-1] == 49 and picks == sorted(picks)


def test_flat_and_collinear_diameters_match_brute_force():
    rng = np.random.default_rng(0)
    plane = np.c_[rng.uniform(0, 50, (300, 2)), np.full(300, 7.0)] @ np.array([[0.6, 0.8, 0], [-0.8, 0.6, 0], [0, 0, 1]])
    line = np.outer(rng.uniform(-3, 9, 200), [1.0, 2.0, 2.0])
    for pts in (plane, line):
        brute = np.sqrt(((pts[:, None] - pts[None]) ** 2).sum(-1).max())
        assert _max_pairwise_distance(pts) == pytest.approx(brute, rel=1e-12)


@pytest.fixture()
def fake_from_pretrained(monkeypatch):
    from citrus_v.infer.predictor import Predictor

    fake = ThresholdPredictor()
    monkeypatch.setattr(Predictor, "from_pretrained", classmethod(lambda cls, *a, **k: fake))
    return fake


def test_cli_volume_json_and_files(fake_from_pretrained, tmp_path, capsys):
    rng = np.random.default_rng(5)
    data = rng.integers(-200, 300, size=(12, 10, 6)).astype(np.int16)
    affine = np.array([[-0.9, 0, 0, 3], [0, 0.9, 0, -4], [0, 0, 3.0, 8], [0, 0, 0, 1]])
    src = write_nifti(data, affine, tmp_path / "in.nii.gz")
    affine = nib.load(src).affine  # as stored (float32 sform): the geometry every output must keep
    rc = main(["predict", "--volume", str(src), "--modality", "CT", "--prompt", "Segment the liver",
               "--out", str(tmp_path / "out"), "--json", "--axis", "1", "--batch-size", "3"])  # fmt: skip
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    expected = apply_window(data, 40, 400) > 127
    ref = measure_structure(expected, affine, image=data, axis=1)
    assert result["structures"]["liver"]["volume_ml"] == ref.volume_ml
    assert result["structures"]["liver"]["mean_hu"] == ref.mean_intensity
    assert result["report"].startswith("Findings:") and "Impression:" in result["report"]
    out = nib.load(result["nifti"])
    assert out.shape == data.shape
    np.testing.assert_array_equal(out.affine, affine)
    np.testing.assert_array_equal(np.asarray(out.dataobj), expected)
    assert fake_from_pretrained.calls == [3, 3, 3, 1]  # 10 slices along axis 1, batches of 3
    with Image.open(result["montage"]) as im:
        assert im.size == (4 * 12, 3 * 6)  # 10 tiles in 3 x 4, each the (K, I) = (6, 12) picture


def test_cli_clicks_on_an_image_with_the_tiny_model(tiny_dir, tmp_path, capsys):
    image = tmp_path / "img.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (70, 100, 3), dtype=np.uint8)).save(image)
    rc = main(["predict", "--image", str(image), "--prompt", "", "--point", "30,40", "--point", "5,5,0",
               "--box", "2,3,90,60", "--model", str(tiny_dir), "--out", str(tmp_path / "o"), "--json"])  # fmt: skip
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    assert result["points"] == [[30.0, 40.0, 1], [5.0, 5.0, 0]] and result["box"] == [2.0, 3.0, 90.0, 60.0]
    with Image.open(result["masks"][0]) as m:
        assert m.size == (100, 70)


def test_cli_errors_are_clear(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["predict", "--image", "x.png", "--prompt", "p", "--point", "1,2,7"])
    assert "--point '1,2,7': expected X,Y or X,Y,LABEL with LABEL 1" in capsys.readouterr().err
    assert main(["predict", "--volume", str(tmp_path), "--prompt", "p", "--point", "1,2"]) == 2
    assert capsys.readouterr().err == "citrus-v predict: --point/--box on a volume need --slice N (the slice they are on)\n"


def test_cli_volume_output_keeps_the_input_nifti_header(fake_from_pretrained, tmp_path, capsys):
    """sform code 2 (aligned to another scan) and a qform of its own, the description and units: all kept,
    not rebuilt as code 1 (issue 23 point 4)."""
    data = np.random.default_rng(1).integers(-200, 300, size=(9, 8, 5)).astype(np.int16)
    sform = np.array([[-0.8, 0, 0, 30], [0, 0.8, 0, -40], [0, 0, 2.5, 12], [0, 0, 0, 1]])
    qform = sform.copy()
    qform[:3, 3] += [1.0, -2.0, 0.5]
    img = nib.Nifti1Image(data, sform)
    img.set_sform(sform, code=2)
    img.set_qform(qform, code=1)
    img.header["descrip"] = b"resampled to atlas"
    img.header.set_xyzt_units("mm", "sec")
    img.header.set_slope_inter(2.0, -10.0)  # the input's intensity scaling must not scale the labels
    nib.save(img, tmp_path / "in.nii.gz")
    source = nib.load(tmp_path / "in.nii.gz")
    rc = main(["predict", "--volume", str(tmp_path / "in.nii.gz"), "--modality", "CT", "--prompt", "Segment the liver",
               "--out", str(tmp_path / "out"), "--json"])  # fmt: skip
    assert rc == 0
    out = nib.load(json.loads(capsys.readouterr().out)["nifti"])
    assert (int(out.header["sform_code"]), int(out.header["qform_code"])) == (2, 1)
    np.testing.assert_array_equal(out.get_sform(), source.get_sform())
    np.testing.assert_array_equal(out.get_qform(), source.get_qform())
    np.testing.assert_array_equal(out.affine, source.affine)
    assert out.header["descrip"].tobytes().rstrip(b"\0") == b"resampled to atlas"
    assert out.header.get_xyzt_units() == ("mm", "sec")
    labels = np.asarray(out.dataobj)
    assert out.get_data_dtype() == np.uint8 and set(np.unique(labels)) <= {0, 1} and labels.any()
    np.testing.assert_array_equal(labels, apply_window(np.asarray(source.dataobj), 40, 400) > 127)


def test_write_nifti_refuses_an_affine_that_is_not_the_headers(tmp_path):
    img = nib.Nifti1Image(np.zeros((3, 3, 3), np.int16), np.eye(4))
    with pytest.raises(ValueError, match="not the source header's"):
        write_nifti(np.zeros((3, 3, 3), bool), np.diag([2.0, 2, 2, 1]), tmp_path / "x.nii.gz", header=img.header)
