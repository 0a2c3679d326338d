"""Meaningless input is refused, never turned into a finding (issue 22, point 5).

Real files where they exist: pydicom's test files (CT_small), a 10-frame enhanced MR from tests/fixtures/dicom_zoo and nibabel's
(anatomical.nii, example4d.nii.gz); the broken ones are made from them.
"""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image

from citrus_v.cli import main
from citrus_v.data.medical_io import MedicalIOError, load_image, read_dicom, read_nifti

NIB_DATA = Path(os.path.dirname(nib.__file__)) / "tests" / "data"
# a real multi-frame image: enhanced MR, 10 frames of 64x64, RLE (pydicom-data; an RTDOSE is refused as not an image)
MULTI_FRAME = str(Path(__file__).resolve().parents[1] / "fixtures" / "dicom_zoo" / "pydicom_data" / "emri_small_RLE.dcm")


def sample(name: str) -> str:
    from pydicom.data import get_testdata_file

    return get_testdata_file(name)


def one_line_error(capsys, argv: list[str], *needles: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.fixture
def nan_nifti(tmp_path: Path) -> Path:
    path = tmp_path / "nan.nii.gz"
    nib.save(nib.Nifti1Image(np.full((8, 8, 4), np.nan, np.float32), np.eye(4)), path)
    return path


@pytest.fixture
def lying_dicom(tmp_path: Path) -> Path:
    """CT_small (128x128 pixels) with a header claiming 10x10: pydicom alone would read a 10x10 crop."""
    ds = pydicom.dcmread(sample("CT_small.dcm"))
    ds.Rows, ds.Columns = 10, 10
    path = tmp_path / "lying.dcm"
    ds.save_as(path)
    return path


def test_non_finite_volumes_and_images_are_refused(nan_nifti: Path, tmp_path: Path):
    with pytest.raises(MedicalIOError, match=r"nan\.nii\.gz: 256 of 256 voxels are NaN or infinite"):
        read_nifti(nan_nifti)
    partly = tmp_path / "partly.nii.gz"
    data = np.zeros((8, 8, 4), np.float32)
    data[0, 0, 0] = np.inf
    nib.save(nib.Nifti1Image(data, np.eye(4)), partly)
    with pytest.raises(MedicalIOError, match=r"1 of 256 voxels"):
        read_nifti(partly)
    tiff = tmp_path / "nan.tiff"
    Image.fromarray(np.full((6, 5), np.nan, np.float32)).save(tiff)
    with pytest.raises(MedicalIOError, match=r"nan\.tiff: 30 of 30 pixels are NaN"):
        load_image(tiff)
    # finite floats still read
    ok = tmp_path / "ok.tiff"
    Image.fromarray(np.arange(30, dtype=np.float32).reshape(6, 5)).save(ok)
    assert load_image(ok).shape == (6, 5, 3)


def test_all_nan_volume_is_refused_by_predict_before_the_model_loads(capsys, nan_nifti: Path):
    one_line_error(capsys, ["predict", "--volume", str(nan_nifti), "--prompt", "Segment the liver.", "--model", "/nonexistent"],
                   "nan.nii.gz", "NaN or infinite")


def test_dicom_header_that_disagrees_with_its_pixels_is_refused(lying_dicom: Path):
    with pytest.raises(MedicalIOError, match=r"lying\.dcm: header and pixel data disagree: the header says 10x10.*200 bytes.*32768"):
        read_dicom(lying_dicom)
    with pytest.raises(MedicalIOError, match="header and pixel data disagree"):
        load_image(lying_dicom.read_bytes(), name="upload")  # the bytes path (the server's reader) too
    # the honest file reads at its full size
    assert load_image(sample("CT_small.dcm")).shape == (128, 128, 3)


def test_server_refuses_the_lying_dicom_with_a_400(lying_dicom: Path):
    from citrus_v.serve.dicom import decode_dicom
    from citrus_v.serve.errors import RequestError
    from citrus_v.serve.settings import ServeConfig

    with pytest.raises(RequestError) as info:
        decode_dicom(lying_dicom.read_bytes(), ServeConfig(), "messages[0].content[0].image_url")
    assert info.value.status == 400 and "disagree" in info.value.message


def test_multi_frame_dicom_needs_an_explicit_frame():
    path = MULTI_FRAME  # 10 frames of 64x64
    with pytest.raises(MedicalIOError, match=r"emri_small_RLE\.dcm: holds 10 frames; choose one \(--frame N, 0\.\.9\)"):
        load_image(path)
    frames = read_dicom(path)
    np.testing.assert_array_equal(load_image(path, frame=3), frames.display(frame=3))
    with pytest.raises(MedicalIOError, match="frame 10 out of range"):
        load_image(path, frame=10)
    with pytest.raises(MedicalIOError, match="4D NIfTI only"):
        load_image(path, frame=(0, 3))


def test_nifti_as_an_image_needs_an_explicit_slice_and_time_point():
    anatomical = NIB_DATA / "anatomical.nii"  # 3D, many axial slices
    with pytest.raises(MedicalIOError, match=r"anatomical\.nii: holds \d+ frames; choose one"):
        load_image(anatomical)
    assert load_image(anatomical, frame=5).ndim == 3
    four_d = NIB_DATA / "example4d.nii.gz"  # (128, 96, 24, 2)
    for frame in (None, 12):
        with pytest.raises(MedicalIOError, match=r"is 4D \(2 time points x 24 axial slices\); choose one \(--frame T,N\)"):
            load_image(four_d, frame=frame)
    t0, t1 = load_image(four_d, frame=(0, 12)), load_image(four_d, frame=(1, 12))
    assert t0.shape == t1.shape == (96, 128, 3)
    with pytest.raises(MedicalIOError, match="time point 2 out of range"):
        load_image(four_d, frame=(2, 12))


def test_multi_page_tiff_needs_an_explicit_frame(tmp_path: Path):
    pages = [Image.fromarray(np.full((4, 4), v, np.uint8)) for v in (10, 200)]
    path = tmp_path / "two.tiff"
    pages[0].save(path, save_all=True, append_images=pages[1:])
    with pytest.raises(MedicalIOError, match="holds 2 frames"):
        load_image(path)
    assert load_image(path, frame=1)[0, 0, 0] == 200


def test_a_bomb_is_refused_from_its_header(tmp_path: Path):
    path = tmp_path / "bomb.png"
    Image.new("L", (6000, 6000)).save(path, optimize=True)
    assert path.stat().st_size < 100_000
    with pytest.raises(MedicalIOError, match=r"bomb\.png: image is 6000x6000 = 36000000 pixels, above the limit of 1000000"):
        load_image(path, max_pixels=1_000_000)
    with pytest.raises(MedicalIOError, match=r"image is 10 x 64x64 pixels, above the limit of 1000"):
        read_dicom(MULTI_FRAME, max_pixels=1000)


def test_predict_cli_refuses_a_multi_frame_file_without_frame_and_names_the_frame_used(capsys):
    path = MULTI_FRAME
    one_line_error(capsys, ["predict", "--image", path, "--prompt", "What is shown?"], "emri_small_RLE.dcm", "--frame N")
    one_line_error(capsys, ["predict", "--image", path, "--image", path, "--frame", "1", "--frame", "2", "--frame", "3",
                            "--prompt", "What is shown?"], "--frame given 3 times for 2 --image files")


def test_predict_reports_the_frame_it_used(capsys):
    import json

    path = MULTI_FRAME
    assert main(["predict", "--image", path, "--frame", "3", "--prompt", "What is shown?", "--max-new-tokens", "2",
                 "--device", "cpu", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["frames"] == {path: 3}
