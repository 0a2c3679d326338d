import json

import nibabel as nib
import numpy as np
import pytest

from citrus_v.volume.quantify import measure_labels, measure_structure, voxel_volume_ml


def test_box_volume_and_diameters_by_hand():
    # a 4 x 3 x 2 voxel box on a 2 x 1 x 5 mm grid
    mask = np.zeros((10, 10, 10), bool)
    mask[2:6, 3:6, 4:6] = True
    affine = np.diag([2.0, 1.0, 5.0, 1.0])
    s = measure_structure(mask, affine, axis=2, label="box")
    assert s.voxels == 24
    assert s.volume_ml == pytest.approx(24 * 2 * 1 * 5 / 1000)
    # voxel centres span 3*2 = 6 mm, 2*1 = 2 mm, 1*5 = 5 mm
    assert s.max_diameter_mm == pytest.approx(np.sqrt(6**2 + 2**2 + 5**2))
    assert s.max_axial_diameter_mm == pytest.approx(np.sqrt(6**2 + 2**2))
    assert s.slice_range == (4, 5)
    assert s.mean_intensity is None


def test_mean_intensity_and_empty_mask():
    image = np.arange(27, dtype=float).reshape(3, 3, 3)
    mask = np.zeros((3, 3, 3), bool)
    mask[0, 0, 0] = mask[2, 2, 2] = True
    s = measure_structure(mask, np.eye(4), image=image)
    assert s.mean_intensity == pytest.approx((0 + 26) / 2)
    assert s.max_diameter_mm == pytest.approx(np.sqrt(12))
    empty = measure_structure(np.zeros((3, 3, 3), bool), np.eye(4))
    assert (empty.voxels, empty.volume_ml, empty.slice_range) == (0, 0.0, None)


def test_oblique_affine_uses_physical_space():
    # a 90-degree rotation with anisotropic spacing keeps the voxel volume and permutes the extents
    affine = np.array([[0, -3.0, 0, 10], [1.5, 0, 0, -5], [0, 0, 2.0, 0], [0, 0, 0, 1]])
    assert voxel_volume_ml(affine) == pytest.approx(3 * 1.5 * 2 / 1000)
    mask = np.zeros((5, 5, 5), bool)
    mask[0:3, 1, 1] = True  # 3 voxels along i: 2 steps of 1.5 mm
    assert measure_structure(mask, affine).max_diameter_mm == pytest.approx(3.0)


def test_bad_shapes_are_clear_errors():
    with pytest.raises(ValueError, match="3D"):
        measure_structure(np.zeros((3, 3), bool), np.eye(4))
    with pytest.raises(ValueError, match="does not match"):
        measure_structure(np.zeros((3, 3, 3), bool), np.eye(4), image=np.zeros((3, 3, 2)))


def test_totalseg_reference_volumes_match_numpy(totalseg_dir):
    seg = nib.load(totalseg_dir / "example_seg.nii.gz")
    ct = nib.load(totalseg_dir / "example_ct_sm.nii.gz")
    labels = np.asarray(seg.dataobj)
    image = np.asarray(ct.dataobj, dtype=np.float64)
    names_map = json.load(open(totalseg_dir / "labels.json"))
    ct_names = next(v for k, v in names_map.items() if k.startswith("ct"))
    names = {int(k): v for k, v in ct_names.items()}
    stats = measure_labels(labels, seg.affine, names, image=image)
    assert len(stats) == len([v for v in np.unique(labels) if v != 0])
    # independent computation: count * product of header zooms / 1000, and a plain masked mean
    zooms = np.prod(seg.header.get_zooms()[:3], dtype=np.float64)
    liver_value = next(k for k, v in names.items() if v == "liver")
    liver = labels == liver_value
    assert stats["liver"].voxels == int(liver.sum())
    assert stats["liver"].volume_ml == pytest.approx(liver.sum() * zooms / 1000, rel=1e-12)
    assert stats["liver"].mean_intensity == pytest.approx(image[liver].mean(), rel=1e-12)
    zs = np.flatnonzero(liver.any(axis=(0, 1)))
    assert stats["liver"].slice_range == (zs[0], zs[-1])
    # every structure: diameter at least the extent along each axis and at most the bounding-box diagonal
    for name, s in stats.items():
        idx = np.argwhere(labels == next(k for k, v in names.items() if v == name))
        ext = (idx.max(0) - idx.min(0)) * 3.0
        assert ext.max() - 1e-6 <= s.max_diameter_mm <= np.linalg.norm(ext) + 1e-6
