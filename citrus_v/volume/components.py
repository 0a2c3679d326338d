"""Keep what a structure is, not the islands around it: connected components of a 3D mask.

Slice-by-slice segmentation leaves stray islands (a few voxels of "liver" in the arm), and one island
far away is enough to double a reported maximum diameter. ``keep_components(mask, "largest")``
keeps the largest 26-connected component (diagonal neighbours count as touching, so a structure
that is thin on some slice is not cut in two); ``"all"`` keeps the mask as it is. What was found and
removed is reported with the measurements, so a reader knows the numbers are of one component.
Labelling is scipy's (``scipy.ndimage.label``), not written here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

COMPONENT_RULES = ("largest", "all")


@dataclass(frozen=True)
class ComponentReport:
    """What ``keep_components`` did to one structure's mask."""

    rule: str  # "largest" | "all"
    found: int  # 26-connected components in the mask as predicted
    kept: int
    removed_voxels: int

    def __post_init__(self) -> None:
        if self.rule not in COMPONENT_RULES:
            raise ValueError(f"ComponentReport.rule must be one of {COMPONENT_RULES}, got {self.rule!r}")
        if not 0 <= self.kept <= self.found or self.removed_voxels < 0:
            raise ValueError(f"ComponentReport: kept {self.kept} of {self.found}, removed {self.removed_voxels} voxels")

    def to_dict(self, voxel_ml: float) -> dict:
        return {"rule": self.rule, "found": self.found, "kept": self.kept, "removed_voxels": self.removed_voxels,
                "removed_ml": round(self.removed_voxels * voxel_ml, 3)}  # fmt: skip


def keep_components(mask: np.ndarray, rule: str = "largest") -> tuple[np.ndarray, ComponentReport]:
    """(I, J, K) bool mask -> (the mask keeping what ``rule`` keeps, what was done). Ties between
    equally large components keep the first in voxel order."""
    from scipy import ndimage

    if rule not in COMPONENT_RULES:
        raise ValueError(f"components rule must be one of {COMPONENT_RULES}, got {rule!r}")
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 3:
        raise ValueError(f"keep_components: mask must be 3-D (I, J, K), got shape {mask.shape}")
    labels, found = ndimage.label(mask, structure=ndimage.generate_binary_structure(3, 3))  # (I, J, K) int
    if rule == "all" or found <= 1:
        return mask, ComponentReport(rule, found, found, 0)
    sizes = np.bincount(labels.ravel())[1:]  # voxels of components 1..found
    kept = labels == int(np.argmax(sizes)) + 1
    return kept, ComponentReport(rule, found, 1, int(mask.sum()) - int(kept.sum()))
