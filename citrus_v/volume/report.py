"""What a volume segmentation hands to a user: label NIfTI, PNG montage, numbers as JSON, a short report."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from citrus_v.data.volume_io import write_nifti
from citrus_v.data.windowing import Window
from citrus_v.infer.overlay import draw_overlay
from citrus_v.infer.types import Mask
from citrus_v.volume.inference import VolumeSegmentation
from citrus_v.volume.quantify import StructureStats, voxel_volume_ml
from citrus_v.volume.slicing import slice_images

MAX_TILES = 20  # the 20-slice example shows whole; longer volumes are sampled evenly
TILE_SIDE = 256  # longest side of one tile in pixels (slices are only ever shrunk)


@dataclass(frozen=True)
class Montage:
    path: Path
    slice_indices: list[int]  # which slice each tile shows, row-major
    grid: tuple[int, int]  # (rows, cols)
    tile_hw: tuple[int, int]


def montage_slices(segmentation: VolumeSegmentation, max_tiles: int = MAX_TILES) -> list[int]:
    """Slices to show: all if they fit, else evenly spread over the slices holding any structure."""
    n = segmentation.volume.data.shape[segmentation.axis]
    other = tuple(d for d in range(3) if d != segmentation.axis)
    present = np.flatnonzero(segmentation.masks.any(axis=0).any(axis=other))  # slices with any structure
    pool = np.arange(n) if n <= max_tiles or present.size == 0 else present
    if pool.size <= max_tiles:
        return [int(k) for k in pool]
    picks = np.unique(np.round(np.linspace(0, pool.size - 1, max_tiles)).astype(int))
    return [int(pool[i]) for i in picks]


def tile_size(image_hw: tuple[int, int], side: int = TILE_SIDE) -> tuple[int, int]:
    """(h, w) of a tile: the slice shrunk (never enlarged) so its longest side is at most ``side``."""
    h, w = image_hw
    scale = min(1.0, side / max(h, w))
    return max(1, round(h * scale)), max(1, round(w * scale))


def write_montage(
    segmentation: VolumeSegmentation, path: str | Path, *, window: Window = None, max_tiles: int = MAX_TILES
) -> Montage:
    """A PNG grid (near-square) of slice pictures with every structure blended in its colour."""
    indices = montage_slices(segmentation, max_tiles)
    pictures = slice_images(segmentation.volume, segmentation.axis, indices, window)
    th, tw = tile_size(pictures[0].shape[:2])
    cols = math.ceil(math.sqrt(len(indices)))
    rows = math.ceil(len(indices) / cols)
    sheet = Image.new("RGB", (cols * tw, rows * th))
    for t, (k, picture) in enumerate(zip(indices, pictures)):
        masks = [Mask(mask=segmentation.slice_mask(s, k), score=1.0) for s in range(len(segmentation.names))]
        tile = Image.fromarray(draw_overlay(picture, masks, [])).resize((tw, th), Image.BILINEAR)
        ImageDraw.Draw(tile).text((3, 2), str(k), fill=(255, 255, 0))
        sheet.paste(tile, ((t % cols) * tw, (t // cols) * th))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return Montage(path, indices, (rows, cols), (th, tw))


def structure_json(stats: StructureStats, modality: str | None) -> dict:
    """The JSON numbers of one structure; ``mean_hu`` only for CT (other modalities have no HU)."""
    ct = modality == "CT"
    return {
        "label": stats.label,
        "voxels": stats.voxels,
        "volume_ml": stats.volume_ml,
        "max_diameter_mm": stats.max_diameter_mm,
        "max_axial_diameter_mm": stats.max_axial_diameter_mm,
        "slice_range": None if stats.slice_range is None else list(stats.slice_range),
        "mean_hu": stats.mean_intensity if ct else None,
        "mean_intensity": stats.mean_intensity,
    }


def structured_report(segmentation: VolumeSegmentation, stats: dict[str, StructureStats]) -> str:
    """One paragraph "Findings: ... Impression: ..." stating the measured numbers, nothing more."""
    vol = segmentation.volume
    n = vol.data.shape[segmentation.axis]
    where = f"{n} slices along voxel axis {segmentation.axis}, voxel size " + " x ".join(f"{s:.2g}" for s in vol.spacing) + " mm"
    findings, impressions = [], []
    names = {name: k for k, name in enumerate(segmentation.names)}
    for name, s in stats.items():
        if s.voxels == 0:
            findings.append(f"{name}: not found on any slice.")
            impressions.append(f"no {name} segmented")
            continue
        first, last = s.slice_range  # type: ignore[misc]
        mean = ""
        if s.mean_intensity is not None:
            mean = f", mean attenuation {s.mean_intensity:.0f} HU" if vol.modality == "CT" else f", mean signal {s.mean_intensity:.1f}"
        findings.append(
            f"{name}: volume {s.volume_ml:.1f} mL, largest diameter {s.max_diameter_mm:.1f} mm "
            f"(largest in-slice {s.max_axial_diameter_mm:.1f} mm), slices {first}-{last}{mean}"
            f"{_islands_note(segmentation, names.get(name), vol.affine)}."
        )
        impressions.append(f"{name} {s.volume_ml:.1f} mL")
    return (
        f"Findings: Automated slice-by-slice segmentation ({where}). " + " ".join(findings)
        + " Impression: " + "; ".join(impressions) + " (automated measurement, to be confirmed by a reader)."
    )  # fmt: skip


def write_outputs(
    segmentation: VolumeSegmentation, out_dir: str | Path, *, window: Window = None, max_tiles: int = MAX_TILES
) -> dict:
    """segmentation.nii.gz (label map, input affine), montage.png, and segmentation.dcm (a DICOM SEG
    referencing the source series) when the volume came from a DICOM series; returns the ``--json`` object."""
    from citrus_v.volume.dicom_seg import can_write_dicom_seg, write_dicom_seg

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vol = segmentation.volume  # a NIfTI input's header (qform/sform codes, description) is kept
    nifti = write_nifti(segmentation.labels, vol.affine, out / "segmentation.nii.gz", header=vol.meta.get("nifti_header"))
    montage = write_montage(segmentation, out / "montage.png", window=window, max_tiles=max_tiles)
    dicom_seg = write_dicom_seg(segmentation, out / "segmentation.dcm") if can_write_dicom_seg(segmentation) else None
    result = summary(segmentation)
    result.update(nifti=str(nifti), montage=str(montage.path), montage_slices=montage.slice_indices,
                  dicom_seg=None if dicom_seg is None else str(dicom_seg),
                  dicom_seg_notes=segmentation.volume.meta.get("dicom_seg_notes", []))  # fmt: skip
    return result


def _islands_note(segmentation: VolumeSegmentation, structure: int | None, affine: np.ndarray) -> str:
    """", largest connected component of 3 (0.4 mL of islands left out)" when islands were removed."""
    report = segmentation.components.get(structure) if structure is not None else None
    if report is None or report.removed_voxels == 0:
        return ""
    removed_ml = report.removed_voxels * voxel_volume_ml(affine)
    return f", largest connected component of {report.found} ({removed_ml:.1f} mL of islands left out)"


def components_json(segmentation: VolumeSegmentation, structure: int) -> dict | None:
    """What keep_components did to a structure (None when nothing was run, e.g. clicks only)."""
    report = segmentation.components.get(structure)
    return None if report is None else report.to_dict(voxel_volume_ml(segmentation.volume.affine))


def summary(segmentation: VolumeSegmentation) -> dict:
    """The JSON object without file paths: structures with their numbers, label values, report."""
    stats = segmentation.stats()
    vol = segmentation.volume
    return {
        "structures": {
            name: {**structure_json(s, vol.modality), "components": components_json(segmentation, k)}
            for k, (name, s) in enumerate(stats.items())
        },
        "labels": {str(v): name for v, name in segmentation.label_names.items()},
        "axis": segmentation.axis,
        "shape": list(vol.data.shape[:3]),
        "spacing_mm": [float(s) for s in vol.spacing],
        "modality": vol.modality,
        "nifti": None,
        "montage": None,
        "dicom_seg": None,
        "report": structured_report(segmentation, stats),
    }
