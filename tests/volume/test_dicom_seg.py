"""DICOM SEG out: ``predict --volume <DICOM series> --out D`` writes segmentation.dcm beside the NIfTI;
pydicom and highdicom read it back with the NIfTI's voxels, placed by the SEG's own geometry."""

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from citrus_v import __version__
from citrus_v.cli import main
from citrus_v.data.medical_io import read_volume
from citrus_v.volume.dicom_seg import _property_codes

from .conftest import ThresholdPredictor

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


@pytest.fixture()
def two_structure_predictor(monkeypatch):
    from citrus_v.infer.predictor import Predictor

    fake = ThresholdPredictor(thresholds=(127, 200))  # two masks per slice: liver, spleen
    monkeypatch.setattr(Predictor, "from_pretrained", classmethod(lambda cls, *a, **k: fake))
    return fake


@pytest.fixture()
def predicted(two_structure_predictor, ct_series_dir, tmp_path, capsys):
    series = ct_series_dir / "ct_dicom"
    rc = main(["predict", "--volume", str(series), "--prompt", "Segment the liver and the spleen",
               "--out", str(tmp_path / "out"), "--json", "--batch-size", "20"])  # fmt: skip
    assert rc == 0
    return json.loads(capsys.readouterr().out), series


def _labels_at(seg_frame: np.ndarray, position, iop, spacing, nifti) -> np.ndarray:
    """The NIfTI's labels at the world position of every pixel of one SEG frame (by the SEG's geometry)."""
    rows, cols = seg_frame.shape
    r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    row_dir, col_dir = np.asarray(iop[:3], float), np.asarray(iop[3:], float)
    lps = np.asarray(position, float) + c[..., None] * spacing[1] * row_dir + r[..., None] * spacing[0] * col_dir
    ras = lps @ _LPS_TO_RAS.T
    ijk = (ras - nifti.affine[:3, 3]) @ np.linalg.inv(nifti.affine[:3, :3]).T
    idx = np.rint(ijk).astype(int)
    assert np.abs(ijk - idx).max() < 1e-3  # every SEG pixel centre lies on a NIfTI voxel centre
    data = np.asarray(nifti.dataobj)
    return data[idx[..., 0], idx[..., 1], idx[..., 2]]


def test_pydicom_reads_the_seg_with_the_niftis_voxels_and_references(predicted):
    result, series = predicted
    nifti = nib.load(result["nifti"])
    seg = pydicom.dcmread(result["dicom_seg"])
    assert seg.SOPClassUID == pydicom.uid.SegmentationStorage and seg.SegmentationType == "BINARY"
    sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in sorted(series.iterdir())]
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == sources[0].SeriesInstanceUID
    referenced = {item.ReferencedSOPInstanceUID for item in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == {ds.file_meta.MediaStorageSOPInstanceUID for ds in sources}  # all 20 slices
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["liver", "spleen"] == list(result["labels"].values())
    for s in seg.SegmentSequence:
        assert s.SegmentAlgorithmType == "AUTOMATIC" and s.SegmentAlgorithmName == "citrus-v"
        algo = s.SegmentationAlgorithmIdentificationSequence[0]
        assert (algo.AlgorithmName, algo.AlgorithmVersion) == ("citrus-v", __version__)
        assert algo.AlgorithmFamilyCodeSequence[0].CodeMeaning == "Artificial Intelligence"
    assert seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeMeaning == "Liver"
    frames = seg.pixel_array  # (frames, rows, cols): one per (segment, slice), empty ones kept
    shared = seg.SharedFunctionalGroupsSequence[0]
    iop = shared.PlaneOrientationSequence[0].ImageOrientationPatient
    spacing = [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing]
    assert frames.shape[0] == 2 * 20
    painted = 0
    for f, group in enumerate(seg.PerFrameFunctionalGroupsSequence):
        number = group.SegmentIdentificationSequence[0].ReferencedSegmentNumber
        labels = _labels_at(frames[f], group.PlanePositionSequence[0].ImagePositionPatient, iop, spacing, nifti)
        np.testing.assert_array_equal(frames[f].astype(bool), labels == number)
        painted += int(frames[f].sum())
    assert painted == int((np.asarray(nifti.dataobj) > 0).sum()) > 0  # every labelled voxel, once


def test_highdicom_reads_the_seg_back_per_source_slice(predicted):
    import highdicom as hd

    result, series = predicted
    labels = np.asarray(nib.load(result["nifti"]).dataobj)  # (cols, rows bottom-up, K)
    seg = hd.seg.segread(result["dicom_seg"])
    assert result["shape"] == [512, 512, 20]
    # the volume's slices are sorted along the normal: ask highdicom for the source slices in that order
    order = [pydicom.dcmread(p, stop_before_pixels=True).file_meta.MediaStorageSOPInstanceUID
             for p in read_volume(series).meta["file_paths"]]  # fmt: skip
    pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=order, segment_numbers=[1, 2])
    assert pixels.shape == (20, 512, 512, 2)
    for k in range(20):
        plane = labels[:, ::-1, k].T  # (rows top-down, cols)
        for s in (0, 1):
            np.testing.assert_array_equal(pixels[k, ..., s].astype(bool), plane == s + 1)
    assert result["dicom_seg_notes"]  # this anonymised series lacks SOP/Study UIDs: the output says what was filled


def test_a_nifti_volume_gets_no_dicom_seg(two_structure_predictor, tmp_path, capsys):
    from citrus_v.data.volume_io import write_nifti

    src = write_nifti(np.zeros((6, 5, 4), np.int16), np.eye(4), tmp_path / "in.nii.gz")
    assert main(["predict", "--volume", str(src), "--prompt", "Segment the liver", "--out", str(tmp_path / "o"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["dicom_seg"] is None and not (tmp_path / "o" / "segmentation.dcm").exists()


@pytest.mark.parametrize(
    ("name", "category", "prop"),
    [("liver", "Anatomical Structure", "Liver"), ("left kidney", "Anatomical Structure", "Kidney"),
     ("liver tumor", "Morphologically Abnormal Structure", "Lesion"),
     ("structure_3", "Anatomical Structure", "Anatomical Structure")],
)  # fmt: skip
def test_structure_names_get_snomed_codes(name, category, prop):
    cat, typ = _property_codes(name)
    assert (cat.meaning, typ.meaning) == (category, prop)


def test_an_enhanced_multi_frame_ct_gets_a_seg_on_its_frames(two_structure_predictor, tmp_path, capsys):
    import highdicom as hd

    src = Path(__file__).resolve().parents[1] / "fixtures" / "dicom_zoo" / "pydicom_data" / "eCT_Supplemental.dcm"
    rc = main(["predict", "--volume", str(src), "--prompt", "Segment the liver and the spleen",
               "--out", str(tmp_path), "--json"])  # fmt: skip
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    nifti = nib.load(result["nifti"])
    assert (np.asarray(nifti.dataobj) > 0).any()
    seg = pydicom.dcmread(result["dicom_seg"])
    source = pydicom.dcmread(src, stop_before_pixels=True)
    refs = seg.ReferencedSeriesSequence[0]
    assert refs.SeriesInstanceUID == source.SeriesInstanceUID
    assert [r.ReferencedSOPInstanceUID for r in refs.ReferencedInstanceSequence] == [source.SOPInstanceUID]
    frames, shared = seg.pixel_array, seg.SharedFunctionalGroupsSequence[0]
    iop = shared.PlaneOrientationSequence[0].ImageOrientationPatient
    spacing = [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing]
    for f, group in enumerate(seg.PerFrameFunctionalGroupsSequence):  # each frame placed by its own position
        number = group.SegmentIdentificationSequence[0].ReferencedSegmentNumber
        labels = _labels_at(frames[f], group.PlanePositionSequence[0].ImagePositionPatient, iop, spacing, nifti)
        np.testing.assert_array_equal(frames[f].astype(bool), labels == number)
    assert frames.shape[0] == 2 * 2  # 2 segments x the source's 2 frames
    by_frame = hd.seg.segread(result["dicom_seg"]).get_pixels_by_source_frame(
        source_sop_instance_uid=source.SOPInstanceUID, source_frame_numbers=[1, 2], segment_numbers=[1, 2])
    assert by_frame.shape == (2, 512, 512, 2) and int(by_frame.sum()) == int((np.asarray(nifti.dataobj) > 0).sum())
