"""From a voxel grid to the 2D pictures the model sees, and from 2D masks back to the grid.

A volume is cut along one VOXEL axis (0, 1 or 2). The plane ``data.take(index, axis)`` has the
two remaining voxel axes in order; :class:`SliceView` turns it into a screen picture in the
radiological convention the model was trained on (patient right on the image left; anterior or
superior on top) using only a transpose and flips, so the inverse (mask -> plane) is exact.

For the usual DICOM series (dcm2niix layout, see ``citrus_v.data.volume_io``), axis 2 gives back
each file's own pixel array, row for row.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from citrus_v.data.volume_io import Volume
from citrus_v.data.windowing import WINDOW_PRESETS, DEFAULT_CT_WINDOW, Window, apply_window, resolve_window

# Screen direction each anatomical axis should increase toward: columns toward the patient's
# Left (or Posterior on a sagittal), rows toward Posterior (axial) or Inferior (coronal, sagittal).
_TOWARD = {"L": "L", "R": "L", "A": "P", "P": "P", "S": "I", "I": "I"}
# which anatomical axis goes horizontal when both are present: L/R first, then A/P
_HORIZONTAL_PRIORITY = ("LR", "AP", "SI")


@dataclass(frozen=True)
class SliceView:
    """How a plane ``(n_a, n_b)`` (remaining voxel axes a < b) becomes an image ``(H, W)``.

    ``transpose``: the image rows run along voxel axis b (so W = n_a) when True;
    ``flip_rows`` / ``flip_cols``: reverse the image vertically / horizontally afterwards.
    """

    axis: int
    transpose: bool
    flip_rows: bool
    flip_cols: bool

    def to_image(self, plane: np.ndarray) -> np.ndarray:
        """(n_a, n_b[, ...]) plane -> (H, W[, ...]) image (a view, no copy)."""
        img = np.swapaxes(plane, 0, 1) if self.transpose else plane
        if self.flip_rows:
            img = img[::-1]
        if self.flip_cols:
            img = img[:, ::-1]
        return img

    def to_plane(self, image: np.ndarray) -> np.ndarray:
        """The exact inverse of :meth:`to_image`: (H, W) image -> (n_a, n_b) plane."""
        img = image
        if self.flip_cols:
            img = img[:, ::-1]
        if self.flip_rows:
            img = img[::-1]
        return np.swapaxes(img, 0, 1) if self.transpose else img

    def image_shape(self, volume_shape: tuple[int, ...]) -> tuple[int, int]:
        """(H, W) of every image cut along ``axis`` from a volume of ``volume_shape``."""
        a, b = (volume_shape[d] for d in range(3) if d != self.axis)
        return (b, a) if self.transpose else (a, b)


def slice_view(affine: np.ndarray, axis: int) -> SliceView:
    """The radiological :class:`SliceView` for cutting a grid with ``affine`` along voxel ``axis``."""
    import nibabel as nib

    if axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1 or 2, got {axis}")
    codes = nib.aff2axcodes(np.asarray(affine, dtype=np.float64))  # e.g. ('L', 'A', 'S')
    a, b = (d for d in range(3) if d != axis)

    def rank(d: int) -> int:
        return next(i for i, pair in enumerate(_HORIZONTAL_PRIORITY) if codes[d] in pair)

    horizontal, vertical = (a, b) if rank(a) <= rank(b) else (b, a)
    # plane rows run along a; the image's rows must run along the vertical axis
    transpose = vertical == b
    flip_cols = codes[horizontal] != _TOWARD[codes[horizontal]]
    flip_rows = codes[vertical] != _TOWARD[codes[vertical]]
    return SliceView(axis=axis, transpose=transpose, flip_rows=flip_rows, flip_cols=flip_cols)


@dataclass(frozen=True)
class Windowing:
    """Physical values -> uint8 for the whole volume at once, so every slice shares one scale.

    CT: a (center, width) window (soft tissue unless told); other modalities: the volume's
    1st-99th percentiles (per-slice percentiles would make the same tissue flicker in brightness).
    """

    low: float  # value mapped to 0
    high: float  # value mapped to 255
    center_width: tuple[float, float] | None  # the DICOM linear window when one applies

    def apply(self, values: np.ndarray) -> np.ndarray:
        if self.center_width is not None:
            return apply_window(values, *self.center_width)
        if self.high <= self.low:
            return np.zeros(np.shape(values), np.uint8)
        y = (np.asarray(values, dtype=np.float32) - self.low) / (self.high - self.low) * 255.0
        return np.clip(np.rint(y), 0, 255).astype(np.uint8)


def volume_windowing(volume: Volume, window: Window = None) -> Windowing:
    """The window for ``volume``: explicit preset / (center, width); CT -> soft tissue; else percentile."""
    if window == "percentile" or (window is None and volume.modality != "CT"):
        finite = np.asarray(volume.data, dtype=np.float32)
        finite = finite[np.isfinite(finite)]
        if finite.size == 0:
            return Windowing(0.0, 0.0, None)
        lo, hi = np.percentile(finite, [1.0, 99.0])
        return Windowing(float(lo), float(hi), None)
    cw = resolve_window(window) if window is not None else WINDOW_PRESETS[DEFAULT_CT_WINDOW]
    assert cw is not None  # "percentile" handled above
    return Windowing(cw[0] - cw[1] / 2, cw[0] + cw[1] / 2, cw)


def check_volume(volume: Volume) -> None:
    if volume.data.ndim != 3:
        where = volume.meta.get("path", "volume")
        raise ValueError(f"{where}: slice-by-slice segmentation needs a 3D volume, got shape {volume.data.shape}")


def slice_images(volume: Volume, axis: int, indices: list[int] | None = None, window: Window = None) -> list[np.ndarray]:
    """The (H, W, 3) uint8 pictures of the slices ``indices`` (all when None) along ``axis``."""
    check_volume(volume)
    view = slice_view(volume.affine, axis)
    scale = volume_windowing(volume, window)
    n = volume.data.shape[axis]
    out = []
    for k in range(n) if indices is None else indices:
        if not 0 <= k < n:
            raise IndexError(f"slice {k} out of range: axis {axis} has {n} slices (0..{n - 1})")
        gray = scale.apply(view.to_image(np.take(volume.data, k, axis=axis)))  # (H, W) uint8
        out.append(np.repeat(gray[..., None], 3, axis=-1))  # (H, W, 3)
    return out


def stack_masks(masks: dict[int, np.ndarray], shape: tuple[int, int, int], axis: int, view: SliceView) -> np.ndarray:
    """Per-slice (H, W) bool image masks keyed by slice index -> one (I, J, K) bool volume.

    Slices without an entry stay empty. Each mask must have the slice's image shape.
    """
    out = np.zeros(shape, dtype=bool)
    expect = view.image_shape(shape)
    for k, mask in masks.items():
        if mask.shape != expect:
            raise ValueError(f"mask of slice {k} has shape {mask.shape}; slices along axis {axis} are {expect}")
        index: list[slice | int] = [slice(None)] * 3
        index[axis] = k
        out[tuple(index)] = view.to_plane(mask)  # (n_a, n_b)
    return out
