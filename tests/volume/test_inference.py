import json

import nibabel as nib
import numpy as np
import pytest

from citrus_v.data.medical_io import read_volume
from citrus_v.data.volume_io import Volume, write_nifti
from citrus_v.data.windowing import apply_window
from citrus_v.volume.inference import segment_volume
from citrus_v.volume.quantify import measure_structure
from citrus_v.volume.report import write_outputs
from citrus_v.volume.slicing import slice_images, slice_view

from .conftest import LookupPredictor, ThresholdPredictor


@pytest.fixture(scope="module")
def oblique_nifti(tmp_path_factory):
    """A small asymmetric CT-like NIfTI with a permuted, flipped, anisotropic affine."""
    rng = np.random.default_rng(3)
    data = rng.integers(-1000, 1000, size=(7, 9, 11)).astype(np.int16)
    affine = np.array([[0, -1.5, 0, 40], [0, 0, 2.5, -10], [0.8, 0, 0, 5], [0, 0, 0, 1]], float)
    path = write_nifti(data, affine, tmp_path_factory.mktemp("nii") / "ct.nii.gz")
    return read_volume(path, modality="CT")


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_nifti_stack_is_voxel_exact_on_every_axis(oblique_nifti, axis, tmp_path):
    fake = ThresholdPredictor(thresholds=(127,))
    seg = segment_volume(fake, oblique_nifti, "Segment the liver", axis=axis, batch_size=4)
    expected = apply_window(oblique_nifti.data, 40, 400) > 127  # what each slice's mask says, per voxel
    np.testing.assert_array_equal(seg.masks[0], expected)
    n = oblique_nifti.data.shape[axis]
    assert fake.calls == [4] * (n // 4) + ([n % 4] if n % 4 else [])
    assert fake.shapes == {(*slice_view(oblique_nifti.affine, axis).image_shape(oblique_nifti.shape), 3)}
    assert seg.names == ["liver"]

    result = write_outputs(seg, tmp_path)
    written = nib.load(result["nifti"])
    assert written.shape == oblique_nifti.shape
    np.testing.assert_array_equal(written.affine, oblique_nifti.affine)
    np.testing.assert_array_equal(np.asarray(written.dataobj), expected.astype(np.uint8))
    ref = measure_structure(expected, oblique_nifti.affine, image=oblique_nifti.data, axis=axis)
    liver = result["structures"]["liver"]
    assert liver["volume_ml"] == ref.volume_ml
    assert liver["max_diameter_mm"] == ref.max_diameter_mm
    assert liver["max_axial_diameter_mm"] == ref.max_axial_diameter_mm
    assert liver["slice_range"] == list(ref.slice_range)
    assert liver["mean_hu"] == ref.mean_intensity
    json.dumps(result)  # the --json object is plain JSON


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_dicom_series_stack_is_voxel_exact_on_every_axis(dicom_series, axis):
    fake = ThresholdPredictor(thresholds=(127, 250))  # two structures, the second inside the first
    seg = segment_volume(fake, dicom_series, "Segment the liver and the spleen", axis=axis, batch_size=64,
                         components="all")  # the stacking itself, islands and all
    windowed = apply_window(dicom_series.data, 40, 400)
    np.testing.assert_array_equal(seg.masks[0], windowed > 127)
    np.testing.assert_array_equal(seg.masks[1], windowed > 250)
    assert seg.names == ["liver", "spleen"]
    labels = seg.labels  # overlap: the first structure wins
    np.testing.assert_array_equal(labels, (windowed > 127).astype(np.uint8))


def test_reference_labels_through_the_pipeline_match_numpy(dicom_series, ct_series_dir, tmp_path):
    """Feed the reference liver/spleen masks as the 'model' output: the stacked label map must be the
    reference, and volumes / mean HU must equal an independent numpy computation exactly."""
    ref = np.asarray(nib.load(ct_series_dir / "example_seg_dicom.nii.gz").dataobj)
    names = json.loads((ct_series_dir / "labels.json").read_text())
    ct_names = next(v for k, v in names.items() if k.startswith("ct"))
    present = [int(v) for v in np.unique(ref) if v]
    wanted = [v for v in present if ct_names[str(v)] in ("liver", "spleen")] or present[:2]
    view = slice_view(dicom_series.affine, 2)
    pictures = slice_images(dicom_series, 2)
    table = {p.tobytes(): [view.to_image(ref[:, :, k] == v) for v in wanted] for k, p in enumerate(pictures)}
    prompt = "Segment the " + " and the ".join(ct_names[str(v)] for v in wanted)
    seg = segment_volume(LookupPredictor(table), dicom_series, prompt, axis=2)
    result = write_outputs(seg, tmp_path)
    voxel_ml = float(np.prod(dicom_series.spacing)) / 1000.0
    for k, v in enumerate(wanted):
        name = ct_names[str(v)]
        truth = ref == v
        np.testing.assert_array_equal(seg.masks[k], truth)
        s = result["structures"][name]
        assert s["voxels"] == int(truth.sum())
        assert s["volume_ml"] == pytest.approx(truth.sum() * voxel_ml, rel=1e-12)
        assert s["mean_hu"] == pytest.approx(float(dicom_series.data[truth].astype(np.float64).mean()), rel=1e-12)
        z = np.flatnonzero(truth.any(axis=(0, 1)))
        assert s["slice_range"] == [int(z[0]), int(z[-1])]
    written = nib.load(result["nifti"])
    np.testing.assert_array_equal(written.affine, dicom_series.affine)
    np.testing.assert_allclose(written.affine, nib.load(ct_series_dir / "example_seg_dicom.nii.gz").affine, atol=1e-4)
    assert f"{result['structures'][ct_names[str(wanted[0])]]['volume_ml']:.1f} mL" in result["report"]


def test_uneven_mask_counts_and_names_from_answers():
    vol = Volume(np.zeros((4, 4, 3)), np.eye(4), (1, 1, 1), modality="CT")

    class Varying:
        def predict_batch(self, requests):
            from citrus_v.infer.types import Mask, Prediction

            out = []
            for i, (picture, _) in enumerate(requests):
                n = i  # slice 0: no mask, slice 1: one, slice 2: two
                out.append(Prediction(answer="The liver is [SEG] and the kidney is [SEG].", raw_text="",
                                      masks=[Mask(np.ones(picture.shape[:2], bool), 0.1) for _ in range(n)]))
            return out

    seg = segment_volume(Varying(), vol, "What can you see?", axis=2, batch_size=3)
    assert seg.names == ["liver", "kidney"]
    assert seg.masks[0].sum(axis=(0, 1)).tolist() == [0, 16, 16]
    assert seg.masks[1].sum(axis=(0, 1)).tolist() == [0, 0, 16]


def test_bad_arguments_are_clear():
    vol = Volume(np.zeros((4, 4, 3)), np.eye(4), (1, 1, 1))
    with pytest.raises(ValueError, match="batch_size"):
        segment_volume(ThresholdPredictor(), vol, "Segment the liver", batch_size=0)
    with pytest.raises(ValueError, match="axis must be 0, 1 or 2"):
        segment_volume(ThresholdPredictor(), vol, "Segment the liver", axis=5)


def test_real_predictor_masks_land_on_their_slices(tiny_predictor, force_answer):
    """The tiny random CitrusV forced to answer with one [SEG]: each slice's 3D plane equals the mask
    the same predictor gives for that slice picture on its own."""
    rng = np.random.default_rng(4)
    vol = Volume(rng.normal(size=(40, 30, 3)).astype(np.float32), np.diag([1.0, 1.0, 2.0, 1.0]), (1, 1, 2), modality="MR")
    force_answer("Sure, it is [SEG].")
    seg = segment_volume(tiny_predictor, vol, "Please segment the liver.", axis=2, batch_size=3, components="all")
    assert seg.masks.shape == (1, 40, 30, 3) and seg.names == ["liver"]
    for k, picture in enumerate(slice_images(vol, 2)):
        force_answer("Sure, it is [SEG].")
        alone = tiny_predictor.predict(picture, "Please segment the liver.")
        assert len(alone.masks) == 1 and alone.masks[0].mask.shape == (30, 40)
        np.testing.assert_array_equal(seg.slice_mask(0, k), alone.masks[0].mask)
