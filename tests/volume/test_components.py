"""Stray islands do not inflate a structure's numbers: the largest connected component is kept by default
and what was left out is stated (issue 23 point 5)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from citrus_v.cli import main
from citrus_v.data.volume_io import Volume, write_nifti
from citrus_v.volume.components import ComponentReport, keep_components
from citrus_v.volume.inference import segment_volume
from citrus_v.volume.quantify import measure_structure

from .conftest import ThresholdPredictor


def blob_and_islands() -> tuple[np.ndarray, np.ndarray]:
    mask = np.zeros((12, 10, 8), dtype=bool)
    mask[2:6, 2:6, 2:6] = True  # the structure: 64 voxels
    blob = mask.copy()
    mask[6, 6, 6] = True  # touches the blob's corner diagonally: part of it (26-connected)
    blob[6, 6, 6] = True
    mask[10, 8, 1] = True  # two islands, 1 and 2 voxels
    mask[0, 9, 7] = mask[1, 9, 7] = True
    return mask, blob


def test_largest_keeps_the_structure_and_counts_what_it_left_out():
    mask, blob = blob_and_islands()
    kept, report = keep_components(mask, "largest")
    np.testing.assert_array_equal(kept, blob)
    assert report == ComponentReport("largest", found=3, kept=1, removed_voxels=3)
    assert report.to_dict(voxel_ml=0.5) == {"rule": "largest", "found": 3, "kept": 1, "removed_voxels": 3, "removed_ml": 1.5}


def test_all_keeps_every_voxel_and_empty_masks_pass():
    mask, _ = blob_and_islands()
    kept, report = keep_components(mask, "all")
    np.testing.assert_array_equal(kept, mask)
    assert report == ComponentReport("all", found=3, kept=3, removed_voxels=0)
    empty, report = keep_components(np.zeros((3, 3, 3), bool))
    assert not empty.any() and report.found == 0 and report.removed_voxels == 0
    with pytest.raises(ValueError, match="components rule"):
        keep_components(mask, "biggest")


def ct_with_an_island() -> Volume:
    mask, blob = blob_and_islands()
    data = np.where(mask, 500.0, -1000.0)  # the threshold predictor segments exactly ``mask``
    affine = np.diag([0.8, 0.8, 2.0, 1.0])
    return Volume(data, affine, (0.8, 0.8, 2.0), modality="CT")


def test_segment_volume_measures_the_structure_not_its_islands():
    vol = ct_with_an_island()
    _, blob = blob_and_islands()
    seg = segment_volume(ThresholdPredictor(), vol, "Segment the liver", batch_size=16)
    np.testing.assert_array_equal(seg.masks[0], blob)
    expected = measure_structure(blob, vol.affine)
    assert seg.stats()["liver"].max_diameter_mm == expected.max_diameter_mm
    everything = segment_volume(ThresholdPredictor(), vol, "Segment the liver", batch_size=16, components="all")
    assert everything.stats()["liver"].max_diameter_mm > expected.max_diameter_mm + 3  # what the islands did


def test_cli_states_the_component_rule_and_what_it_removed(monkeypatch, tmp_path, capsys):
    from citrus_v.infer.predictor import Predictor

    monkeypatch.setattr(Predictor, "from_pretrained", classmethod(lambda cls, *a, **k: ThresholdPredictor()))
    vol = ct_with_an_island()
    src = write_nifti(vol.data.astype(np.int16), vol.affine, tmp_path / "ct.nii.gz")
    base = ["predict", "--volume", str(src), "--modality", "CT", "--prompt", "Segment the liver", "--json"]
    assert main(base) == 0
    liver = json.loads(capsys.readouterr().out)
    components = liver["structures"]["liver"]["components"]
    assert components == {"rule": "largest", "found": 3, "kept": 1, "removed_voxels": 3, "removed_ml": round(3 * 0.8 * 0.8 * 2.0 / 1000, 3)}
    assert "largest connected component of 3" in liver["report"]
    assert main([*base, "--components", "all"]) == 0
    everything = json.loads(capsys.readouterr().out)
    assert everything["structures"]["liver"]["components"]["rule"] == "all"
    assert "connected component" not in everything["report"]
    assert everything["structures"]["liver"]["voxels"] == liver["structures"]["liver"]["voxels"] + 3
