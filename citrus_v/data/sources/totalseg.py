"""TotalSegmentator's test reference volumes (github:wasserth/TotalSegmentator, ``tests/reference_files/``).

Three real volumes with TotalSegmentator's own labels (its output, not manual annotation; Apache-2.0):
the small abdominal CT and MR the package also ships (``citrus_v/assets/totalseg_example``, 3 mm) and
a 20-slice 512 x 512 DICOM CT series of another patient with its label NIfTI. Each axial slice
becomes one record per organ of ``ORGANS`` whose cross-section is large enough:
"Please segment the <organ>." -> "Sure, it is [SEG].", the slice windowed as the synthetic suite
windows these volumes (CT: L40 W400; MR: 1st-99.5th percentile of the volume) and shown the same way
(anterior up, the patient's right on the image left). Slices smaller than 224 px (the 3 mm CT and MR,
about 120 x 100) are padded to a centred square and resized to 224 x 224 as the suite shows them
(``phantoms.totalseg.square_slice``, no jitter); the 512 x 512 DICOM CT keeps its size. Chosen on val
(docs/default_model.md): at their own size the shipped default's val Dice was 0.29 on the 3 mm CT.

Split (``splits.RULES["totalseg"]``): contiguous slice blocks with gaps, ``splits.slice_blocks`` per
volume, the blocks the synthetic suite draws its real slices from; gap slices are left out (counted).
``example_ct.nii.gz`` (the same CT as ``example_ct_sm``, 112 slices) is not read: its other 82 slices
carry vertebra labels only.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from citrus_v.data.phantoms.totalseg import ORGANS, axial_stack, default_dir, organ_text, square_slice, window01
from citrus_v.data.schema import Record
from citrus_v.data.sources.common import SourceError, save_array_png
from citrus_v.data.sources.masks import segmentation_record
from citrus_v.data.sources.splits import slice_split

MIN_AREA_FRAC = 0.004  # of the slice's longer side squared: the synthetic suite's MIN_PIXELS_FRAC (200 px at 224)
SMALL_SIDE = 224  # slices whose longer side is below this are shown as the synthetic suite shows them


@dataclass(frozen=True)
class RefVolume:
    name: str  # meta.volume
    image: str  # a NIfTI file or a folder of DICOM slices, relative to the source folder
    labels: str  # the label NIfTI
    table: str  # the key of the package's labels.json
    modality: str  # "ct" or "mr"


VOLUMES = (
    RefVolume("ct", "example_ct_sm.nii.gz", "example_seg.nii.gz", "ct (example_seg*.nii.gz)", "ct"),
    RefVolume("mr", "example_mr_sm.nii.gz", "example_seg_mr.nii.gz", "mr (example_seg_mr.nii.gz)", "mr"),
    RefVolume("ct_dicom", "example_ct_dicom", "example_seg_dicom.nii.gz", "ct (example_seg*.nii.gz)", "ct"),
)


def _canonical(image) -> tuple[np.ndarray, np.ndarray]:  # noqa: ANN001 - a nibabel image
    """The voxels reordered to RAS (flips and axis swaps only) and the matching affine."""
    import nibabel as nib

    ras = nib.as_closest_canonical(image)
    return np.asarray(ras.dataobj), ras.affine


def read_pair(src: Path, vol: RefVolume) -> tuple[np.ndarray, np.ndarray]:
    """(Z, H, W) image in 0..1 and (Z, H, W) labels of one volume, both in RAS order, axial slices."""
    import nibabel as nib

    from citrus_v.data.volume_io import read_dicom_series

    image_path, label_path = src / vol.image, src / vol.labels
    try:
        if image_path.is_dir():
            series = read_dicom_series(image_path)
            image = nib.Nifti1Image(np.asarray(series.data, dtype=np.float32), series.affine)
        else:
            image = nib.load(image_path)
        labels = nib.load(label_path)
        a, a_affine = _canonical(image)
        s, s_affine = _canonical(labels)
    except (OSError, ValueError) as err:  # nibabel's ImageFileError is a ValueError; MedicalIOError too
        raise SourceError(image_path, f"unreadable volume ({err})") from None
    if a.shape != s.shape or not np.allclose(a_affine, s_affine, atol=0.01):
        raise SourceError(label_path, f"labels {s.shape} do not lie on the image grid {a.shape} of {vol.image}")
    return axial_stack(window01(a.astype(np.float32), vol.modality)), axial_stack(s.astype(np.int16))


def _organ_values(vol: RefVolume) -> dict[str, int]:
    table = json.loads((default_dir() / "labels.json").read_text(encoding="utf-8"))[vol.table]
    return {name: int(value) for value, name in table.items() if name in ORGANS}


def presented(plane: np.ndarray, lab: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(H, W) 0..1 slice and its labels -> the uint8 image and labels written (squared to 224 if small)."""
    from PIL import Image

    image = (plane * 255).astype(np.uint8)
    if max(image.shape) >= SMALL_SIDE:
        return image, lab
    labels = lab.astype(np.uint8)  # TotalSegmentator's label values are below 256
    return square_slice(image, SMALL_SIDE, Image.BILINEAR), square_slice(labels, SMALL_SIDE, Image.NEAREST)


def slice_records(image: np.ndarray, labels: np.ndarray, z: int, vol: RefVolume, split: str, image_dir: Path,
                  skipped: Counter | None) -> list[Record]:
    """The records of slice ``z``: one per organ of ``ORGANS`` with at least MIN_AREA_FRAC of the slice."""
    plane, lab = presented(image[z], labels[z])  # (S, S) uint8 and labels, or (H, W) as read
    min_area = MIN_AREA_FRAC * max(plane.shape) ** 2
    present = [(o, lab == v) for o, v in _organ_values(vol).items() if (lab == v).sum() >= min_area]
    if not present:
        if skipped is not None:
            skipped[f"{vol.name} slice without a large enough cross-section of {'/'.join(ORGANS)}"] += 1
        return []
    stem = f"totalseg_{vol.name}_z{z:03d}"
    img_path = save_array_png(plane, image_dir / f"{stem}.png")
    records = []
    for organ, mask in present:
        mask_path = save_array_png(mask.astype(np.uint8) * 255, image_dir / f"{stem}_{organ}.png")
        meta = {"source": "totalseg", "volume": vol.name, "slice": z, "organ": organ, "split": split,
                "mask_origin": "TotalSegmentator output"}
        records.append(segmentation_record(img_path, mask_path, f"Please segment the {organ_text(organ)}.",
                                           vol.modality, meta))
    return records


def load_totalseg(src: str | Path, *, image_dir: str | Path, skipped: Counter | None = None) -> list[Record]:
    """Records of every reference volume found in ``src`` (the contents of ``tests/reference_files/``),
    slice by slice; PNGs are written under ``image_dir``."""
    src, image_dir = Path(src), Path(image_dir)
    found = [v for v in VOLUMES if (src / v.image).exists() and (src / v.labels).is_file()]
    if not found:
        wanted = ", ".join(f"{v.image} + {v.labels}" for v in VOLUMES)
        raise SourceError(src, f"no reference volume: expected {wanted}")
    records = []
    for vol in VOLUMES:
        if vol not in found:
            if skipped is not None:
                skipped[f"volume absent: {vol.image}"] += 1
            continue
        image, labels = read_pair(src, vol)
        for z in range(image.shape[0]):
            split = slice_split(image.shape[0], z)
            if split is None:
                if skipped is not None:
                    skipped[f"{vol.name} gap slice between split blocks"] += 1
                continue
            records += slice_records(image, labels, z, vol, split, image_dir, skipped)
    return records
