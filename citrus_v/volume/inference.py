"""Slice-by-slice segmentation of a volume with a Predictor, stacked back into the volume's grid.

``segment_volume(predictor, volume, "Segment the liver and the spleen", axis=2)``:

1. every slice along voxel ``axis`` becomes a radiological picture (``slicing.slice_images``;
   CT soft-tissue window unless told, one window for the whole volume);
2. pictures go to ``predictor.predict_batch`` ``batch_size`` at a time; the predictor returns
   masks at the picture's own size;
3. the k-th mask of a slice belongs to the k-th structure (one [SEG] per structure named in the
   prompt); each structure's masks are mapped back to voxel planes and stacked, so the 3D mask
   has exactly the input's shape and affine.

A slice on which the model emits fewer masks than structures simply has those structures empty
there; extra masks beyond the named structures become extra structures (``structure_<k>``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from citrus_v.data.volume_io import Volume
from citrus_v.data.windowing import Window
from citrus_v.volume.components import ComponentReport, keep_components
from citrus_v.volume.quantify import StructureStats, measure_structure
from citrus_v.volume.slicing import check_volume, slice_images, slice_view, stack_masks
from citrus_v.volume.structures import names_from_prompt, structure_names


@dataclass
class VolumeSegmentation:
    """Per-structure 3D masks in the grid of ``volume`` (same shape, same affine)."""

    volume: Volume
    axis: int
    prompt: str
    names: list[str]
    masks: np.ndarray  # (n_structures, I, J, K) bool
    answers: dict[int, str] = field(default_factory=dict)  # slice index -> the model's answer on it
    scores: dict[int, list[float]] = field(default_factory=dict)  # slice index -> predicted IoU per mask
    components: dict[int, ComponentReport] = field(default_factory=dict)  # structure -> what keep_components did

    def __post_init__(self) -> None:
        if self.masks.shape != (len(self.names), *self.volume.data.shape[:3]):
            raise ValueError(
                f"masks shape {self.masks.shape} does not match {len(self.names)} names x volume {self.volume.data.shape[:3]}"
            )

    @property
    def labels(self) -> np.ndarray:
        """(I, J, K) integer label map: structure k -> value k + 1; where structures overlap, the first wins."""
        dtype = np.uint8 if len(self.names) < 256 else np.uint16
        out = np.zeros(self.masks.shape[1:], dtype=dtype)
        for k in range(len(self.names) - 1, -1, -1):  # paint the last first so the first ends on top
            out[self.masks[k]] = k + 1
        return out

    @property
    def label_names(self) -> dict[int, str]:
        return {k + 1: name for k, name in enumerate(self.names)}

    def stats(self) -> dict[str, StructureStats]:
        """quantify.measure_structure of every structure's own 3D mask (mean value from the volume)."""
        image = self.volume.data if self.volume.data.ndim == 3 else None
        return {
            name: measure_structure(self.masks[k], self.volume.affine, image=image, axis=self.axis, label=name)
            for k, name in enumerate(self.names)
        }

    def set_slice(self, structure: int, index: int, image_mask: np.ndarray) -> None:
        """Replace one structure's mask on slice ``index`` by a (H, W) picture-space mask."""
        if not 0 <= structure < len(self.names):
            raise IndexError(f"structure {structure} out of range: {len(self.names)} structure(s) {self.names}")
        plane = stack_masks({index: image_mask}, self.masks.shape[1:], self.axis, slice_view(self.volume.affine, self.axis))
        where: list[slice | int] = [slice(None)] * 3
        where[self.axis] = index
        self.masks[structure][tuple(where)] = plane[tuple(where)]

    def slice_mask(self, structure: int, index: int) -> np.ndarray:
        """Structure ``structure`` on slice ``index`` as a (H, W) picture-space bool mask."""
        return slice_view(self.volume.affine, self.axis).to_image(np.take(self.masks[structure], index, axis=self.axis))


def segment_volume(
    predictor,  # citrus_v.infer.predictor.Predictor, or anything with predict_batch(requests)
    volume: Volume,
    prompt: str,
    *,
    axis: int = 2,
    batch_size: int = 8,
    window: Window = None,
    slices: Sequence[int] | None = None,
    progress: Callable[[int, int], None] | None = None,
    components: str = "largest",
) -> VolumeSegmentation:
    """Segment ``volume`` slice by slice along voxel ``axis``; see the module docstring.

    ``slices``: only these slice indices (default all); ``progress(done, total)`` after each batch;
    ``components``: "largest" keeps each structure's largest connected component (stray islands
    removed, ``VolumeSegmentation.components`` says what was), "all" keeps every voxel predicted.
    """
    check_volume(volume)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = volume.data.shape[axis] if axis in (0, 1, 2) else 0
    indices = list(range(n)) if slices is None else [int(k) for k in slices]
    images = slice_images(volume, axis, indices, window)  # validates axis and indices
    view = slice_view(volume.affine, axis)

    per_slice: dict[int, list[np.ndarray]] = {}
    answers: dict[int, str] = {}
    scores: dict[int, list[float]] = {}
    for start in range(0, len(indices), batch_size):
        chunk = indices[start : start + batch_size]
        preds = predictor.predict_batch([(images[start + j], prompt) for j in range(len(chunk))])
        if len(preds) != len(chunk):
            raise ValueError(f"predict_batch returned {len(preds)} predictions for {len(chunk)} slices")
        for k, pred in zip(chunk, preds):
            per_slice[k] = [np.asarray(m.mask, bool) for m in pred.masks]
            answers[k] = pred.answer
            scores[k] = [float(m.score) for m in pred.masks]
        if progress is not None:
            progress(min(start + batch_size, len(indices)), len(indices))

    n_structures = max([len(names_from_prompt(prompt)), 1] + [len(v) for v in per_slice.values()])
    names = structure_names(prompt, n_structures, [answers[k] for k in indices])
    masks = np.zeros((n_structures, *volume.data.shape), dtype=bool)  # (S, I, J, K)
    kept: dict[int, ComponentReport] = {}
    for s in range(n_structures):
        stacked = stack_masks({k: m[s] for k, m in per_slice.items() if s < len(m)}, volume.data.shape, axis, view)
        masks[s], kept[s] = keep_components(stacked, components)
    return VolumeSegmentation(volume, axis, prompt, names, masks, answers, scores, kept)


def empty_segmentation(volume: Volume, axis: int, names: Sequence[str], prompt: str = "") -> VolumeSegmentation:
    """No mask anywhere yet (a click-only session starts here)."""
    check_volume(volume)
    slice_view(volume.affine, axis)  # validates the axis
    masks = np.zeros((len(names), *volume.data.shape), dtype=bool)
    return VolumeSegmentation(volume, axis, prompt, list(names), masks)
