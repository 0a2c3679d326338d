"""Measure segmented structures in a volume: volume (mL), largest diameters (mm), extent, mean intensity.

Every measurement uses the volume's affine (voxel index -> millimetres), so anisotropic and
oblique voxel grids are measured in physical space, not in voxels.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class StructureStats:
    """Measurements of one binary structure.

    volume_ml:          voxel count x voxel volume (|det| of the affine's 3x3 part), in millilitres
    max_diameter_mm:    largest distance between two voxel centres of the structure (3D Feret diameter)
    max_axial_diameter_mm: the same, restricted to one slice along ``axis`` (what RECIST-style reads measure)
    slice_range:        first and last slice index along ``axis`` that contain the structure
    mean_intensity:     mean image value inside the structure (Hounsfield units for CT), None without an image
    """

    label: str
    voxels: int
    volume_ml: float
    max_diameter_mm: float
    max_axial_diameter_mm: float
    slice_range: tuple[int, int] | None
    mean_intensity: float | None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["slice_range"] = list(self.slice_range) if self.slice_range is not None else None
        return d


def voxel_volume_ml(affine: np.ndarray) -> float:
    """Volume of one voxel in mL (1 mL = 1000 mm^3)."""
    return float(abs(np.linalg.det(np.asarray(affine, dtype=np.float64)[:3, :3]))) / 1000.0


def _max_pairwise_distance(points_mm: np.ndarray) -> float:
    """Largest distance between any two points (N, 3); the convex hull keeps this exact and cheap."""
    n = len(points_mm)
    if n < 2:
        return 0.0
    if n > 64:
        points_mm = _hull_vertices(points_mm)
    best = 0.0
    # chunked brute force over the (few) remaining points: (chunk, N) distances at a time
    for start in range(0, len(points_mm), 512):
        block = points_mm[start : start + 512]
        d2 = ((block[:, None, :] - points_mm[None, :, :]) ** 2).sum(-1)
        best = max(best, float(d2.max()))
    return float(np.sqrt(best))


def _hull_vertices(points_mm: np.ndarray) -> np.ndarray:
    """The convex hull's vertices (the farthest pair is among them), also for flat or collinear sets.

    One slice's voxels are coplanar, where a 3D hull fails: they are then expressed in their own
    plane (an orthonormal basis from the SVD keeps distances exact) and hulled in 2D.
    """
    from scipy.spatial import ConvexHull, QhullError

    centred = points_mm - points_mm.mean(axis=0)
    _, sv, vt = np.linalg.svd(centred, full_matrices=False)
    rank = int((sv > 1e-9 * max(float(sv[0]), 1e-12)).sum())
    if rank <= 1:  # collinear: the two extremes along the line
        t = centred @ vt[0]
        return points_mm[[int(t.argmin()), int(t.argmax())]]
    coords = centred if rank == 3 else centred @ vt[:2].T  # (N, 3) or in-plane (N, 2)
    try:
        return points_mm[ConvexHull(coords).vertices]
    except QhullError:  # numerically degenerate: every point is a candidate
        return points_mm


def _boundary_voxels(mask: np.ndarray) -> np.ndarray:
    """Indices (N, 3) of mask voxels with at least one 6-neighbour outside: the diameter lies on these."""
    padded = np.pad(mask, 1)
    interior = padded[1:-1, 1:-1, 1:-1].copy()
    for axis in range(3):
        for shift in (1, -1):
            interior &= np.roll(padded, shift, axis=axis)[1:-1, 1:-1, 1:-1]
    return np.argwhere(mask & ~interior)


def _to_mm(ijk: np.ndarray, affine: np.ndarray) -> np.ndarray:
    affine = np.asarray(affine, dtype=np.float64)
    return ijk.astype(np.float64) @ affine[:3, :3].T + affine[:3, 3]


def measure_structure(
    mask: np.ndarray,
    affine: np.ndarray,
    *,
    image: np.ndarray | None = None,
    axis: int = 2,
    label: str = "",
) -> StructureStats:
    """Measure one binary 3D ``mask`` (X, Y, Z) whose voxel grid is described by ``affine``.

    ``image`` (same shape) gives the mean intensity (HU for CT); ``axis`` is the slice axis.
    """
    mask = np.asarray(mask).astype(bool)
    if mask.ndim != 3:
        raise ValueError(f"mask must be 3D (X, Y, Z), got shape {mask.shape}")
    if image is not None and np.shape(image) != mask.shape:
        raise ValueError(f"image shape {np.shape(image)} does not match mask shape {mask.shape}")
    if not 0 <= axis < 3:
        raise ValueError(f"axis must be 0, 1 or 2, got {axis}")
    n = int(mask.sum())
    if n == 0:
        return StructureStats(label, 0, 0.0, 0.0, 0.0, None, None)
    boundary = _boundary_voxels(mask)
    max_d = _max_pairwise_distance(_to_mm(boundary, affine))
    max_axial = 0.0
    present = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
    for s in present:
        in_slice = boundary[boundary[:, axis] == s]
        max_axial = max(max_axial, _max_pairwise_distance(_to_mm(in_slice, affine)))
    mean_val = float(np.asarray(image, dtype=np.float64)[mask].mean()) if image is not None else None
    return StructureStats(
        label=label,
        voxels=n,
        volume_ml=n * voxel_volume_ml(affine),
        max_diameter_mm=max_d,
        max_axial_diameter_mm=max_axial,
        slice_range=(int(present[0]), int(present[-1])),
        mean_intensity=mean_val,
    )


def measure_labels(
    labels: np.ndarray,
    affine: np.ndarray,
    names: dict[int, str] | None = None,
    *,
    image: np.ndarray | None = None,
    axis: int = 2,
) -> dict[str, StructureStats]:
    """Measure every nonzero label value of an integer label volume; keys are names (or the value)."""
    labels = np.asarray(labels)
    out: dict[str, StructureStats] = {}
    for value in np.unique(labels):
        if value == 0:
            continue
        name = (names or {}).get(int(value), str(int(value)))
        out[name] = measure_structure(labels == value, affine, image=image, axis=axis, label=name)
    return out
