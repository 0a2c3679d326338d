"""A CT series with a DICOM SEG: dcmqi's test data (github:QIICR/dcmqi, ``data/segmentations/``, BSD-3).

The folder holds ``ct-3slice/`` (3 axial CT slices, 512 x 512, 1 mm apart) and ``liver.dcm``, a binary
DICOM SEG of the liver on those slices ("QIICR QIN IOWA", "Iowa QIN segmentation result"). The SEG is
read with highdicom; each of its segments on each slice becomes one record, "Please segment the
<segment>." -> "Sure, it is [SEG].", the slice windowed as every CT slice of the real suite (L40 W400).

The other DICOM SEG objects in dcmqi's folder are its encoding tests (overlapping coloured shapes on the
same CT, label maps of 24 x 38 synthetic images), not anatomy, and the ``.nrrd`` files are label maps,
not DICOM SEG: all left out and counted. Split (``splits.RULES["dcmqi"]``): slice blocks for a series of
10 slices or more, else the whole series by the hash of its SeriesInstanceUID.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from citrus_v.data.phantoms.totalseg import window01
from citrus_v.data.schema import Record
from citrus_v.data.sources.common import SourceError, save_array_png
from citrus_v.data.sources.masks import segmentation_record
from citrus_v.data.sources.splits import hash_split, slice_blocks, slice_split

SEGS = ("liver.dcm",)  # the anatomical DICOM SEG objects of dcmqi's data/segmentations/
MIN_AREA_FRAC = 0.004  # of the slice's longer side squared, as for the TotalSegmentator slices


def series_split(series_uid: str, n_slices: int, k: int) -> str | None:
    """Split of slice ``k``: the slice blocks when the series is long enough, else one split by hash."""
    try:
        slice_blocks(n_slices)
    except ValueError:
        return hash_split(f"dcmqi:{series_uid}", val=0.1, test=0.2)
    return slice_split(n_slices, k)


def _read_seg(path: Path) -> Any:
    import highdicom as hd

    if not path.is_file():
        raise SourceError(path, "missing: the dcmqi folder holds the DICOM SEG liver.dcm beside ct-3slice/")
    try:
        return hd.seg.segread(path)
    except Exception as err:  # noqa: BLE001 - pydicom and highdicom raise many kinds for a bad SEG
        raise SourceError(path, f"not a readable DICOM SEG ({err})") from None


def _series_of(src: Path, series_uid: str, seg_path: Path) -> list[Path]:
    """The slice files of the referenced series (first folder under ``src`` holding it), in position order."""
    from citrus_v.data.medical_io import MedicalIOError
    from citrus_v.data.volume_io import read_dicom_series

    for folder in sorted({p.parent for p in src.rglob("*.dcm")}):
        try:
            vol = read_dicom_series(folder, series_uid=series_uid)
        except MedicalIOError:
            continue
        return [Path(p) for p in vol.meta["file_paths"]]
    raise SourceError(seg_path, f"the series it segments ({series_uid}) is in no folder under {src}")


def _frame_positions(seg: Any) -> dict[str, np.ndarray]:
    """SOP Instance UID of a source slice -> the ImagePositionPatient of the SEG frames drawn on it."""
    out = {}
    for frame in seg.PerFrameFunctionalGroupsSequence:
        uid = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        out[str(uid)] = np.asarray(frame.PlanePositionSequence[0].ImagePositionPatient, dtype=np.float64)
    return out


def _masks(seg: Any, ds: Any, seg_path: Path) -> dict[str, np.ndarray]:
    """Segment name -> (H, W) bool mask of the SEG on the slice ``ds`` (empty dict if it has no frame)."""
    uid = str(ds.SOPInstanceUID)
    positions = _frame_positions(seg)
    if uid not in positions:
        return {}
    if (int(seg.Rows), int(seg.Columns)) != (int(ds.Rows), int(ds.Columns)) or not np.allclose(
            positions[uid], np.asarray(ds.ImagePositionPatient, dtype=np.float64), atol=0.01):
        raise SourceError(seg_path, f"its frame on {uid} does not lie on that slice's pixel grid")
    numbers = list(seg.segment_numbers)
    px = seg.get_pixels_by_source_instance(source_sop_instance_uids=[uid], segment_numbers=numbers,
                                           combine_segments=False, ignore_spatial_locations=True)  # (1, H, W, S)
    names = [seg.get_segment_description(n).segmented_property_type.meaning.lower() for n in numbers]
    return {name: px[0, :, :, j] > 0 for j, name in enumerate(names)}


def _slice_records(path: Path, k: int, split: str, seg: Any, seg_path: Path, image_dir: Path,
                   skipped: Counter | None) -> list[Record]:
    from citrus_v.data.dicom_io import dcmread, read_dicom

    ds = dcmread(path, stop_before_pixels=True)
    masks = _masks(seg, ds, seg_path)
    hu = read_dicom(path).pixels[0]  # (H, W) Hounsfield units
    min_area = MIN_AREA_FRAC * max(hu.shape) ** 2
    kept = {name: m for name, m in masks.items() if m.sum() >= min_area}
    if skipped is not None and len(kept) < len(masks):
        skipped["segment too small on a slice"] += len(masks) - len(kept)
    if not kept:
        return []
    stem = f"dcmqi_{seg_path.stem}_k{k:03d}"
    img_path = save_array_png((window01(hu, "ct") * 255).astype(np.uint8), image_dir / f"{stem}.png")
    records = []
    for name, mask in kept.items():
        mask_path = save_array_png(mask.astype(np.uint8) * 255, image_dir / f"{stem}_{name.replace(' ', '_')}.png")
        meta = {"source": "dcmqi", "series": str(ds.SeriesInstanceUID), "slice": k, "organ": name, "split": split,
                "mask_origin": f"DICOM SEG {seg_path.name}"}
        records.append(segmentation_record(img_path, mask_path, f"Please segment the {name}.", "ct", meta))
    return records


def _count_left_out(src: Path, segs: tuple[str, ...], skipped: Counter) -> None:
    from citrus_v.data.dicom_io import dcmread
    from citrus_v.data.medical_io import MedicalIOError

    for p in sorted(q for q in src.rglob("*") if q.is_file() and q.suffix in (".dcm", ".seg", ".nrrd")):
        if p.suffix == ".nrrd":
            skipped["NRRD label map (not a DICOM SEG)"] += 1
            continue
        try:
            modality = str(dcmread(p, stop_before_pixels=True).get("Modality", ""))
        except MedicalIOError:
            continue
        if modality == "SEG" and p.relative_to(src).as_posix() not in segs:
            skipped["DICOM SEG of dcmqi's encoding tests (not anatomy)"] += 1


def load_dcmqi(src: str | Path, *, image_dir: str | Path, segs: tuple[str, ...] = SEGS,
               skipped: Counter | None = None) -> list[Record]:
    """Records of the DICOM SEG objects ``segs`` (paths under ``src``) on the CT slices they reference."""
    src, image_dir = Path(src), Path(image_dir)
    records = []
    for name in segs:
        seg_path = src / name
        seg = _read_seg(seg_path)
        series_uid = str(seg.ReferencedSeriesSequence[0].SeriesInstanceUID)
        files = _series_of(src, series_uid, seg_path)
        for k, path in enumerate(files):
            split = series_split(series_uid, len(files), k)
            if split is None:
                if skipped is not None:
                    skipped["gap slice between split blocks"] += 1
                continue
            records += _slice_records(path, k, split, seg, seg_path, image_dir, skipped)
    if skipped is not None:
        _count_left_out(src, segs, skipped)
    return records
