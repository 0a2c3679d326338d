"""DICOM in: every file of pydicom's own test data and of the committed pydicom-data/dcmqi set
(tests/fixtures/dicom_zoo) gives an image or a one-line reason, never a traceback; the transfer
syntaxes users bring (JPEG lossless process 14, JPEG-LS, RLE, HTJ2K), legacy files without the
DICM preamble, palette colour and enhanced multi-frame CT/MR read; NRRD volumes keep their geometry."""

from __future__ import annotations

import collections
import io
from pathlib import Path

import numpy as np
import pydicom
import pydicom.data
import pytest

from citrus_v.cli import main
from citrus_v.data.dicom_io import LEGACY_NOTE, read_dicom
from citrus_v.data.medical_io import MedicalIOError, load_image, read_volume

ZOO = Path(__file__).resolve().parents[1] / "fixtures" / "dicom_zoo"
PD = ZOO / "pydicom_data"

# the one-line reasons, by what they say
REASONS = {
    "not an image to answer on": "derived object (SEG, RTDOSE, RTSTRUCT, RTPLAN, SR, RWV)",
    "has no pixel data": "no pixel data (DICOMDIR, headers only, waveform)",
    "has no image": "no image (Rows/Columns 0)",
    "not a DICOM file": "not a DICOM file",
    "cannot decode transfer syntax": "no installed decoder reads the stream",
    "corrupt or truncated": "corrupt or truncated pixel data",
    "disagree": "header and pixel data disagree",
}


def _reason(err: MedicalIOError) -> str:
    text = str(err)
    assert "\n" not in text and "Traceback" not in text, text  # one line
    return next((label for key, label in REASONS.items() if key in text), f"other: {text}")


def _files() -> list[Path]:
    shipped = [Path(f) for f in pydicom.data.get_testdata_files() if Path(f).is_file()]
    return sorted(shipped) + sorted(p for p in ZOO.rglob("*.dcm"))


def _survey() -> tuple[dict[str, str], collections.Counter]:
    """{file: 'image' or its reason} and the counts; any exception but MedicalIOError fails the test."""
    outcome, counts = {}, collections.Counter()
    for path in _files():
        try:
            image = read_dicom(path)
            for frame in range(image.num_frames):
                assert image.display(frame=frame).dtype == np.uint8
            outcome[str(path)] = "image"
        except MedicalIOError as err:
            outcome[str(path)] = _reason(err)
        counts[outcome[str(path)]] += 1
    return outcome, counts


def test_every_file_gives_an_image_or_a_one_line_reason():
    outcome, counts = _survey()
    for where, root in (("pydicom's test files", pydicom.data.get_testdata_file("CT_small.dcm").rsplit("/", 1)[0]), ("dicom_zoo", str(ZOO))):
        part = collections.Counter(o for p, o in outcome.items() if p.startswith(root))
        print(f"\n{where}: {sum(part.values())} files tried: " + ", ".join(f"{k} {v}" for k, v in part.most_common()))
    assert not [k for k in counts if k.startswith("other")], counts
    zoo = {Path(p).relative_to(ZOO).as_posix(): o for p, o in outcome.items() if p.startswith(str(ZOO))}
    refused = {p for p, o in zoo.items() if o != "image"}
    assert refused == {
        "pydicom_data/liver_deflate.dcm", "pydicom_data/liver_j2k.dcm", "pydicom_data/liver_rle.dcm",
        "dcmqi/segmentations/sparse-labelmap-ppv5.dcm", "dcmqi/sr-example/sr.dcm", "dcmqi/sr-example/rwvm.dcm",
    }  # fmt: skip
    assert all(zoo[p] == REASONS["not an image to answer on"] for p in refused)
    # of pydicom's own files, only two streams no installed decoder reads (as pydicom's own tests expect)
    undecoded = {Path(p).name for p, o in outcome.items() if o == REASONS["cannot decode transfer syntax"]}
    assert undecoded == {"JPEG-lossy.dcm", "JPEG2000-embedded-sequence-delimiter.dcm"}
    for name in ("rtdose.dcm", "rtstruct.dcm", "test-SR.dcm", "liver_1frame.dcm"):
        assert outcome[pydicom.data.get_testdata_file(name)] == REASONS["not an image to answer on"]


@pytest.mark.parametrize(
    ("name", "syntax"),
    [("JPGLosslessP14SV1_1s_1f_8b.dcm", "Process 14"), ("JPEG-LL.dcm", "Process 14"),
     ("JLSL_08_07_0_1F.dcm", "JPEG-LS Lossless"), ("JLSL_16_15_1_1F.dcm", "JPEG-LS Lossless"),
     ("JLSN_RGB_ILV0.dcm", "JPEG-LS Lossy (Near-Lossless)"), ("HTJ2K_08_RGB.dcm", "High-Throughput JPEG 2000"),
     ("OBXXXX1A_rle.dcm", "RLE Lossless")],
)  # fmt: skip
def test_compressed_syntaxes_decode(name, syntax):
    image = read_dicom(PD / name)
    assert syntax in image.metadata["TransferSyntax"]
    assert image.pixels.std() > 0  # a real picture, not a blank


def test_lossless_syntaxes_equal_the_uncompressed_pixels():
    """The same enhanced MR stored three ways decodes to the same values (lossless is lossless)."""
    jls, rle = read_dicom(PD / "emri_small_jpeg_ls_lossless.dcm"), read_dicom(PD / "emri_small_RLE.dcm")
    assert jls.pixels.shape == (10, 64, 64)
    np.testing.assert_array_equal(jls.pixels, rle.pixels)


def test_legacy_file_without_preamble_is_read_and_said(tmp_path, capsys):
    legacy = read_dicom(PD / "OT-PAL-8-face.dcm")  # no preamble, no DICM, palette colour
    assert legacy.metadata["ReadNote"] == LEGACY_NOTE and legacy.is_color and legacy.pixels.shape == (1, 480, 640, 3)
    # an ACR-NEMA style copy of CT_small (no preamble, no file meta) reads to the same HU
    source = pydicom.dcmread(pydicom.data.get_testdata_file("CT_small.dcm"))
    del source.file_meta
    source.preamble = None
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, source, enforce_file_format=False, implicit_vr=True, little_endian=True)
    (tmp_path / "old.dcm").write_bytes(buf.getvalue())
    assert buf.getvalue()[128:132] != b"DICM"
    np.testing.assert_array_equal(read_dicom(tmp_path / "old.dcm").hu, read_dicom(pydicom.data.get_testdata_file("CT_small.dcm")).hu)
    assert "ReadNote" not in read_dicom(pydicom.data.get_testdata_file("CT_small.dcm")).metadata
    # the CLI names the legacy read (stderr) before the model loads (none here: exit 2)
    assert main(["predict", "--image", str(tmp_path / "old.dcm"), "--prompt", "What?", "--model", str(tmp_path / "none")]) == 2
    assert f"[dicom] {tmp_path / 'old.dcm'}: {LEGACY_NOTE}" in capsys.readouterr().err


def test_palette_colour_matches_pydicoms_lut():
    from pydicom.pixels import apply_color_lut

    ds = pydicom.dcmread(PD / "OBXXXX1A_rle.dcm")
    expected = apply_color_lut(ds.pixel_array, ds).astype(np.float32)
    if int(ds.RedPaletteColorLookupTableDescriptor[2]) == 16:
        expected /= 257.0
    np.testing.assert_array_equal(read_dicom(PD / "OBXXXX1A_rle.dcm").pixels[0], expected)


def test_enhanced_multi_frame_ct_and_mr_need_a_frame():
    ct = PD / "eCT_Supplemental.dcm"
    assert read_dicom(ct).pixels.shape == (2, 512, 512) and read_dicom(ct).modality == "CT"
    with pytest.raises(MedicalIOError, match=r"eCT_Supplemental\.dcm: holds 2 frames; choose one \(--frame N, 0\.\.1\)"):
        load_image(ct)
    assert load_image(ct, frame=1).shape == (512, 512, 3)
    mf = read_dicom(ZOO / "dcmqi/segmentations/23x38x3/multiframe/mf.dcm")
    series = read_volume(ZOO / "dcmqi/segmentations/23x38x3/image")
    assert mf.pixels.shape == (3, 38, 23) and series.shape == (23, 38, 3)
    # the enhanced file holds the same three slices as the classic series (frame k = slice k, rows top-down)
    np.testing.assert_array_equal(mf.pixels, np.transpose(series.data[:, ::-1, :], (2, 1, 0)))


def test_nrrd_volume_keeps_its_geometry():
    """dcmqi's label.nrrd was made on the 23x38x3 series: its voxels sit where the series' voxels sit."""
    labels = read_volume(ZOO / "dcmqi/segmentations/23x38x3/nrrd/label.nrrd")
    series = read_volume(ZOO / "dcmqi/segmentations/23x38x3/image")
    assert labels.shape == series.shape == (23, 38, 3) and labels.spacing == pytest.approx((0.7, 0.7, 2.5))
    assert labels.axcodes == ("L", "P", "S")  # the file's LPS space directions, in RAS+ terms
    ijk = np.array([[0, 0, 0, 1], [22, 37, 2, 1], [5, 9, 1, 1]], float)
    flipped = ijk.copy()
    flipped[:, 1] = 37 - ijk[:, 1]  # the series counts rows from the bottom
    np.testing.assert_allclose((labels.affine @ ijk.T).T, (series.affine @ flipped.T).T, atol=1e-4)
    liver = read_volume(ZOO / "dcmqi/segmentations/liver_seg.nrrd")
    assert liver.shape == (512, 512, 3)
    np.testing.assert_allclose(liver.affine[:3, 3], [235.2, 226.8, -128.69])  # LPS origin -> RAS


def test_nrrd_through_predict_volume(monkeypatch, tmp_path, capsys):
    import json

    import nibabel as nib

    from citrus_v.infer.predictor import Predictor
    from tests.volume.conftest import ThresholdPredictor

    monkeypatch.setattr(Predictor, "from_pretrained", classmethod(lambda cls, *a, **k: ThresholdPredictor()))
    src = ZOO / "dcmqi/segmentations/liver_seg.nrrd"
    assert main(["predict", "--volume", str(src), "--prompt", "Segment the liver", "--out", str(tmp_path), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    out = nib.load(result["nifti"])
    assert out.shape == (512, 512, 3) and result["dicom_seg"] is None
    np.testing.assert_allclose(out.affine, read_volume(src).affine, atol=1e-4)


def test_an_enhanced_multi_frame_file_is_a_volume_like_its_classic_series():
    """dcmqi's mf.dcm is the 23x38x3 series as one enhanced file: same voxels, same affine."""
    enhanced = read_volume(ZOO / "dcmqi/segmentations/23x38x3/multiframe/mf.dcm")
    series = read_volume(ZOO / "dcmqi/segmentations/23x38x3/image")
    np.testing.assert_array_equal(enhanced.data, series.data)
    np.testing.assert_allclose(enhanced.affine, series.affine, atol=1e-4)
    ct = read_volume(PD / "eCT_Supplemental.dcm")
    assert ct.shape == (512, 512, 2) and ct.modality == "CT" and ct.spacing == pytest.approx((0.388672, 0.388672, 10.0))
    with pytest.raises(MedicalIOError, match=r"liver_rle\.dcm: is a segmentation"):
        read_volume(PD / "liver_rle.dcm")
    with pytest.raises(MedicalIOError, match="a volume must be a DICOM series folder, a multi-frame DICOM file"):
        read_volume(ZOO / "dcmqi/segmentations/23x38x3/image/IMG0001.dcm")
