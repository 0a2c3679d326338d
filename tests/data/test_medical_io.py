"""Medical I/O on real files: pydicom's and nibabel's sample files and the totalseg CT series."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image

from citrus_v.data.medical_io import (
    WINDOW_PRESETS,
    MedicalIOError,
    Volume,
    apply_window,
    load_image,
    read_dicom,
    read_dicom_series,
    read_nifti,
    read_volume,
    write_nifti,
)

NIB_DATA = Path(os.path.dirname(nib.__file__)) / "tests" / "data"


def sample(name: str) -> str:
    from pydicom.data import get_testdata_file

    p = get_testdata_file(name)
    if p is None:  # "download on demand" files are absent offline
        pytest.skip(f"pydicom test file {name} not available offline")
    return str(p)


@pytest.fixture(scope="session")
def ct_series(ct_series_dir: Path) -> Volume:
    return read_dicom_series(ct_series_dir / "ct_dicom")


# --- windows -------------------------------------------------------------------------------


def test_apply_window_follows_the_dicom_linear_rule():
    # W400/L40: [-160.5, 239.5] maps linearly onto 0..255
    out = apply_window(np.array([-1000.0, -160.0, 40.0, 239.0, 240.0, 3000.0]), 40, 400)
    assert out.dtype == np.uint8
    assert out.tolist() == [0, 0, 128, 255, 255, 255]
    assert out[1] == 0 and apply_window(np.array([-100.0]), 40, 400)[0] == round((-100 - 39.5) / 399 * 255 + 127.5)


def test_window_presets_are_the_radiology_ones():
    assert WINDOW_PRESETS["ct_soft_tissue"] == (40.0, 400.0)
    assert WINDOW_PRESETS["ct_lung"] == (-600.0, 1500.0)
    assert WINDOW_PRESETS["ct_brain"] == (40.0, 80.0)
    assert WINDOW_PRESETS["ct_bone"][1] >= 1500
    with pytest.raises(ValueError, match="width"):
        apply_window(np.zeros(3), 0, 0)


# --- single DICOM files --------------------------------------------------------------------


def test_ct_small_is_rescaled_to_hounsfield_units():
    path = sample("CT_small.dcm")
    img = read_dicom(path)
    raw = pydicom.dcmread(path).pixel_array
    assert img.pixels.shape == (1, 128, 128) and img.pixels.dtype == np.float32
    np.testing.assert_array_equal(img.hu, raw.astype(np.float32) * 1 - 1024)  # slope 1, intercept -1024
    assert img.hu.min() == -896 and img.hu.max() == 1167
    assert img.modality == "CT" and img.spacing == pytest.approx((0.661468, 0.661468))
    # no window in the file: CT defaults to soft tissue W400/L40
    rgb = img.display()
    assert rgb.shape == (128, 128, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[..., 0], apply_window(img.hu, 40, 400))
    np.testing.assert_array_equal(load_image(path, window="ct_lung")[..., 1], apply_window(img.hu, -600, 1500))


def test_mr_uses_the_file_window_and_percentile_on_request():
    img = read_dicom(sample("MR_small.dcm"))
    assert img.modality == "MR" and img.file_window == (600.0, 1600.0)
    np.testing.assert_array_equal(img.display()[..., 0], apply_window(img.pixels[0], 600, 1600))
    pct = img.display(window="percentile")[..., 0]
    lo, hi = np.percentile(img.pixels[0], [1, 99])
    assert pct[img.pixels[0] <= lo].max() == 0 and pct[img.pixels[0] >= hi].min() == 255


def test_jpeg2000_lossless_decodes_to_the_same_pixels():
    ref = read_dicom(sample("MR_small.dcm"))
    j2k = read_dicom(sample("MR_small_jp2klossless.dcm"))
    assert "2000" in j2k.metadata["TransferSyntax"]
    np.testing.assert_array_equal(j2k.pixels, ref.pixels)


def test_monochrome1_display_is_inverted_but_values_are_not():
    from pydicom.data import get_testdata_file

    ct = get_testdata_file("CT_small.dcm")
    path = Path(ct).parent / "dicomdirtests" / "77654033" / "CR1" / "6154"
    if not path.is_file():
        pytest.skip("MONOCHROME1 CR sample not in this pydicom wheel")
    img = read_dicom(path)
    assert img.photometric == "MONOCHROME1" and img.modality == "CR"
    ds = pydicom.dcmread(path)
    raw = ds.pixel_array
    assert (float(ds.RescaleSlope), float(ds.RescaleIntercept)) == (0.684, 200.0)
    np.testing.assert_allclose(img.pixels[0], raw * 0.684 + 200.0, rtol=1e-6)  # physical values not inverted
    expected = 255 - apply_window(img.pixels[0], *img.file_window)
    np.testing.assert_array_equal(img.display()[..., 2], expected)
    # the highest stored value (most attenuating in MONOCHROME1) is drawn darkest
    assert img.display()[..., 0][raw == raw.max()].max() < img.display()[..., 0][raw == raw.min()].min()


def test_rgb_ultrasound_and_multiframe():
    rgb = read_dicom(sample("examples_rgb_color.dcm"))
    assert rgb.is_color and rgb.pixels.shape == (1, 240, 320, 3)
    np.testing.assert_array_equal(rgb.display(), pydicom.dcmread(sample("examples_rgb_color.dcm")).pixel_array)
    cine = read_dicom(sample("examples_ybr_color.dcm"))  # 30-frame JPEG ultrasound, YBR -> RGB
    assert cine.num_frames == 30 and cine.pixels.shape == (30, 240, 320, 3)
    assert not np.array_equal(cine.display(frame=0), cine.display(frame=29))
    assert load_image(sample("examples_ybr_color.dcm"), frame=29).shape == (240, 320, 3)
    with pytest.raises(MedicalIOError, match="frame 30 out of range"):
        cine.display(frame=30)


def test_palette_color_is_expanded_to_rgb():
    img = read_dicom(sample("examples_palette.dcm"))
    assert img.is_color and img.pixels.shape == (1, 350, 800, 3)
    assert img.pixels.max() <= 255


def test_unreadable_files_give_clear_errors(tmp_path: Path):
    with pytest.raises(MedicalIOError, match=r"MR_truncated\.dcm: corrupt or truncated"):
        read_dicom(sample("MR_truncated.dcm"))
    # JPEG-LS decodes now (pylibjpeg-libjpeg, pyjpegls), to the uncompressed file's exact values
    np.testing.assert_array_equal(read_dicom(sample("MR_small_jpeg_ls_lossless.dcm")).pixels, read_dicom(sample("MR_small.dcm")).pixels)
    # a 12-bit JPEG extended stream that neither libjpeg ("misplaced marker segment") nor Pillow (no 12 bit) decodes
    with pytest.raises(MedicalIOError, match=r"JPEG-lossy\.dcm: cannot decode transfer syntax 'JPEG Extended"):
        read_dicom(sample("JPEG-lossy.dcm"))
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"\x00" * 50 + b"not dicom")
    with pytest.raises(MedicalIOError, match="junk.dcm"):
        load_image(junk)
    fake_png = tmp_path / "fake.png"
    fake_png.write_text("hello")
    with pytest.raises(MedicalIOError, match="fake.png: not a readable image"):
        load_image(fake_png)
    with pytest.raises(MedicalIOError, match="no such file"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(MedicalIOError, match=r"rtplan\.dcm: is a radiotherapy plan \(RTPLAN\) \(RT Plan Storage\), not an image"):
        read_dicom(sample("rtplan.dcm"))
    header_only = pydicom.dcmread(sample("CT_small.dcm"))
    del header_only.PixelData
    header_only.save_as(tmp_path / "header_only.dcm")
    with pytest.raises(MedicalIOError, match=r"header_only\.dcm: has no pixel data \(SOP class 1\.2\.840\.10008\.5\.1\.4\.1\.1\.2, modality CT\)"):
        read_dicom(tmp_path / "header_only.dcm")
    with pytest.raises(MedicalIOError, match="unsupported file type"):
        (tmp_path / "x.xyz").write_text("abc")
        load_image(tmp_path / "x.xyz")
    with pytest.raises(ValueError, match="unknown window preset"):
        load_image(sample("CT_small.dcm"), window="ct_liverish")


def test_bytes_read_like_the_file_and_errors_name_them():
    path = Path(sample("MR_small.dcm"))
    from_bytes = read_dicom(path.read_bytes())
    np.testing.assert_array_equal(from_bytes.pixels, read_dicom(path).pixels)
    assert from_bytes.path == "<request bytes>" and from_bytes.file_window == (600.0, 1600.0)
    assert load_image(path.read_bytes()).tobytes() == load_image(path).tobytes()
    with pytest.raises(MedicalIOError, match=r"^upload\.dcm: corrupt or truncated"):
        read_dicom(Path(sample("MR_truncated.dcm")).read_bytes(), name="upload.dcm")
    with pytest.raises(MedicalIOError, match=r"^<request bytes>: cannot decode transfer syntax 'JPEG Extended"):
        read_dicom(Path(sample("JPEG-lossy.dcm")).read_bytes())
    with pytest.raises(MedicalIOError, match=r"^<request bytes>: not a readable image"):
        load_image(b"hello")


# --- rasters -------------------------------------------------------------------------------


def test_raster_formats(tmp_path: Path):
    rgb = (np.arange(12 * 10 * 3) % 256).astype(np.uint8).reshape(12, 10, 3)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    Image.fromarray(rgb).save(tmp_path / "a.tiff")
    np.testing.assert_array_equal(load_image(tmp_path / "a.png"), rgb)
    np.testing.assert_array_equal(load_image(tmp_path / "a.tiff"), rgb)
    Image.fromarray(rgb).save(tmp_path / "a.jpg", quality=95)
    assert np.abs(load_image(tmp_path / "a.jpg").astype(int) - rgb).mean() < 8
    gray = Image.fromarray(rgb[..., 0]).convert("L")
    gray.save(tmp_path / "g.png")
    out = load_image(tmp_path / "g.png")
    assert out.shape == (12, 10, 3) and np.array_equal(out[..., 0], out[..., 2])
    # 16-bit CT export (HU + 1024) windowed by the caller
    hu = np.array([[0, 1024, 1064, 4000]], dtype=np.uint16).repeat(4, 0)
    Image.fromarray(hu).save(tmp_path / "ct16.png")
    win = load_image(tmp_path / "ct16.png", window=(1064, 400))[..., 0]
    np.testing.assert_array_equal(win, apply_window(hu.astype(np.float32), 1064, 400))
    # a PNG cut in half is reported, not a crash
    data = (tmp_path / "a.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(MedicalIOError, match="cut.png"):
        load_image(tmp_path / "cut.png")


# --- NIfTI ---------------------------------------------------------------------------------


def test_nifti_keeps_orientation_and_spacing(tmp_path: Path):
    vol = read_nifti(NIB_DATA / "anatomical.nii")
    ref = nib.load(NIB_DATA / "anatomical.nii")
    assert vol.shape == (33, 41, 25) and vol.spacing == (2.0, 2.0, 2.0)
    np.testing.assert_allclose(vol.affine, ref.affine)
    assert vol.axcodes == ("L", "A", "S")
    assert vol.slice(2, 10).shape == (33, 41) and vol.slice(0, 3).shape == (41, 25)
    np.testing.assert_array_equal(vol.slice(1, 7), np.asarray(ref.dataobj)[:, 7, :])
    # radiological display of the axial plane: rows anterior->posterior, columns right->left
    ax = vol.display_slice("axial", 10)
    assert ax.shape == (41, 33) and ax.dtype == np.uint8
    assert vol.display_slice("coronal", 5).shape == (25, 33) and vol.display_slice("sagittal", 5).shape == (25, 41)
    # round trip through write_nifti keeps data and affine
    out = write_nifti(vol.data, vol.affine, tmp_path / "rt.nii.gz")
    back = read_volume(out)
    np.testing.assert_array_equal(back.data, vol.data)
    np.testing.assert_allclose(back.affine, vol.affine)
    with pytest.raises(IndexError):
        vol.slice(2, 25)


def test_nifti_4d_and_load_image():
    vol = read_volume(NIB_DATA / "example4d.nii.gz")
    assert vol.shape == (128, 96, 24, 2)
    assert vol.spacing == pytest.approx((2.0, 2.0, 2.2), abs=1e-5)
    assert vol.slice(2, 3).shape == (128, 96, 2)
    img = load_image(NIB_DATA / "example4d.nii.gz", frame=(1, 12))
    assert img.shape == (96, 128, 3) and img.dtype == np.uint8 and img.max() == 255


# --- the totalseg DICOM series -------------------------------------------------------------


def test_series_geometry_matches_the_label_nifti(ct_series: Volume, ct_series_dir: Path):
    seg = nib.load(ct_series_dir / "example_seg_dicom.nii.gz")
    assert ct_series.shape == seg.shape == (512, 512, 20)
    np.testing.assert_allclose(ct_series.affine, seg.affine, atol=1e-3)
    assert ct_series.spacing == pytest.approx((0.9765625, 0.9765625, 2.0))
    assert ct_series.modality == "CT" and ct_series.axcodes == ("L", "A", "S")
    labels = json_labels(ct_series_dir)
    lab = np.asarray(seg.dataobj)
    # the labels land on the right tissue: liver is soft tissue, lungs are air
    liver = ct_series.data[lab == labels["liver"]]
    assert 20 < np.median(liver) < 150
    lung_ids = [v for k, v in labels.items() if k.startswith("lung")]
    lung = ct_series.data[np.isin(lab, lung_ids)]
    if lung.size:
        assert np.median(lung) < -500


def json_labels(ct_series_dir: Path) -> dict[str, int]:
    import json

    raw = json.loads((ct_series_dir / "labels.json").read_text())
    table = next(v for k, v in raw.items() if k.startswith("ct"))  # {"ct (example_seg*.nii.gz)": {"1": "spleen", ...}}
    return {str(name): int(k) for k, name in table.items()}


def test_series_display_slice_is_the_original_dicom_image(ct_series: Volume, ct_series_dir: Path):
    # the slice at k=0 is the most inferior one; its file is the first in sorted position order
    name = ct_series.meta["files"][0]
    ds = pydicom.dcmread(ct_series_dir / "ct_dicom" / name)
    assert float(ds.ImagePositionPatient[2]) == pytest.approx(ct_series.affine[2, 3])
    hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_array_equal(ct_series.display_slice("axial", 0, window="ct_bone"), apply_window(hu, *WINDOW_PRESETS["ct_bone"]))
    assert ct_series.display_slice("coronal").shape == (20, 512)


def test_series_errors(tmp_path: Path, ct_series_dir: Path):
    files = sorted((ct_series_dir / "ct_dicom").iterdir())
    folder = tmp_path / "s"
    folder.mkdir()
    for f in (files[0], files[1], files[3]):  # slice 2 missing: the spacing is uneven
        shutil.copy(f, folder / f.name)
    (folder / "README.txt").write_text("not dicom")
    with pytest.raises(MedicalIOError, match="uneven slice spacing"):
        read_dicom_series(folder)
    (folder / files[3].name).unlink()
    vol = read_dicom_series(folder)
    assert vol.shape == (512, 512, 2) and vol.meta["skipped_files"] == ["README.txt"]
    shutil.copy(files[0], folder / "dup.dcm")
    with pytest.raises(MedicalIOError, match="same position"):
        read_dicom_series(folder)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MedicalIOError, match="no DICOM image slices"):
        read_volume(empty)
