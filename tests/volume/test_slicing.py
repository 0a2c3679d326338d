import itertools

import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut

from citrus_v.data.volume_io import Volume
from citrus_v.data.windowing import apply_window
from citrus_v.volume.slicing import slice_images, slice_view, stack_masks, volume_windowing


def _affines():
    """Every axis permutation x sign flip, with anisotropic spacing: 48 orientations."""
    spacing = np.array([0.7, 1.3, 2.9])
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1, -1), repeat=3):
            a = np.eye(4)
            a[:3, :3] = 0
            for col, (row, s) in enumerate(zip(perm, signs)):
                a[row, col] = s * spacing[col]
            a[:3, 3] = [10, -20, 30]
            yield a


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_to_image_to_plane_round_trip_every_orientation(axis):
    plane_shape = [s for d, s in enumerate((5, 6, 7)) if d != axis]
    plane = np.arange(np.prod(plane_shape)).reshape(plane_shape)
    for affine in _affines():
        view = slice_view(affine, axis)
        image = view.to_image(plane)
        assert image.shape == view.image_shape((5, 6, 7))
        np.testing.assert_array_equal(view.to_plane(image), plane)


def _world_dir(affine, ijk_from, ijk_to):
    a = affine[:3, :3]
    return a @ (np.asarray(ijk_to, float) - np.asarray(ijk_from, float))


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_pictures_are_radiological_for_every_orientation(axis):
    # walking right along a picture row goes to the patient's Left (or Posterior on a sagittal),
    # walking down a column goes Posterior (axial) or Inferior (coronal / sagittal): check in RAS mm
    shape = (4, 5, 6)
    ijk = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=-1)  # (I, J, K, 3)
    for affine in _affines():
        codes_world = np.abs(affine[:3, :3]).argmax(axis=0)  # RAS axis each voxel axis runs along
        if codes_world[axis] == 2:
            right_world, down_world = 0, 1  # axial: x (R->L is -x), y (A->P is -y)
        elif codes_world[axis] == 1:
            right_world, down_world = 0, 2  # coronal
        else:
            right_world, down_world = 1, 2  # sagittal
        view = slice_view(affine, axis)
        pic = view.to_image(np.take(ijk, 0, axis=axis))  # (H, W, 3) voxel indices per pixel
        world = pic.astype(float) @ affine[:3, :3].T
        step_right = world[0, 1] - world[0, 0]
        step_down = world[1, 0] - world[0, 0]
        assert step_right[right_world] < 0 and step_down[down_world] < 0, (affine, axis)


def test_dicom_axial_picture_is_each_files_pixel_array(dicom_series, ct_series_dir):
    view = slice_view(dicom_series.affine, 2)
    pictures = slice_images(dicom_series, 2, [0, 7, 19])
    for k, picture in zip([0, 7, 19], pictures):
        ds = pydicom.dcmread(ct_series_dir / "ct_dicom" / dicom_series.meta["files"][k])
        hu = apply_modality_lut(ds.pixel_array, ds)
        np.testing.assert_array_equal(view.to_image(dicom_series.data[:, :, k]), hu)
        np.testing.assert_array_equal(picture[..., 0], apply_window(hu, 40, 400))  # CT: soft tissue
        assert picture.shape == (512, 512, 3)


def test_windowing_rules():
    data = np.linspace(-1000, 1000, 2 * 3 * 101).reshape(2, 3, 101)
    ct = Volume(data, np.eye(4), (1, 1, 1), modality="CT")
    assert volume_windowing(ct).center_width == (40.0, 400.0)
    assert volume_windowing(ct, "ct_lung").center_width == (-600.0, 1500.0)
    mr = Volume(data, np.eye(4), (1, 1, 1), modality="MR")
    w = volume_windowing(mr)  # one percentile scale for the whole volume
    assert w.center_width is None
    assert (w.low, w.high) == pytest.approx(tuple(np.percentile(data, [1, 99])))
    with pytest.raises(ValueError, match="unknown window preset"):
        volume_windowing(ct, "ct_nonsense")


def test_stack_masks_and_errors():
    view = slice_view(np.eye(4), 1)
    shape = (3, 4, 5)
    pic = np.zeros(view.image_shape(shape), bool)
    pic[0, 0] = True
    out = stack_masks({2: pic}, shape, 1, view)
    assert out.sum() == 1 and out[:, 2].sum() == 1 and not out[:, [0, 1, 3]].any()
    with pytest.raises(ValueError, match="slice 1 has shape"):
        stack_masks({1: np.zeros((2, 2), bool)}, shape, 1, view)
    with pytest.raises(ValueError, match="axis must be 0, 1 or 2"):
        slice_view(np.eye(4), 3)
    with pytest.raises(IndexError, match="slice 9 out of range"):
        slice_images(Volume(np.zeros(shape), np.eye(4), (1, 1, 1)), 0, [9])
    with pytest.raises(ValueError, match="3D volume"):
        slice_images(Volume(np.zeros((*shape, 2)), np.eye(4), (1, 1, 1)), 0)
