"""DICOM SEG output for a volume read from a DICOM series, made with highdicom.

``write_dicom_seg(segmentation, path)`` writes one Segmentation instance (binary, one segment per
structure) that references every source slice, so OHIF, 3D Slicer and a PACS place it on the
series. highdicom builds the object (geometry, references, dimension index, encoding): writing
DICOM SEG by hand is where viewers' compatibility is lost, and highdicom is the field's
maintained library for it.

Segment ``k`` holds exactly the voxels of value ``k + 1`` in ``segmentation.nii.gz`` (the label
map, where the first structure named wins an overlap), so the two outputs always agree.

Axis bridge: ``Volume.data[i, j, k]`` is (column, row counted from the bottom, slice k of
``meta["file_paths"]``); a SEG frame is the source slice's (row from the top, column) plane. An
enhanced multi-frame source (``meta["multiframe_path"]``) is matched to its frames by position.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from citrus_v.volume.inference import VolumeSegmentation

ALGORITHM_NAME = "citrus-v"
SERIES_NUMBER = 900  # a derived series; viewers list it after the source
_LESION_WORDS = ("lesion", "tumor", "tumour", "nodule", "mass", "cyst", "metasta", "polyp", "stone", "hemorrhage")


def can_write_dicom_seg(segmentation: VolumeSegmentation) -> bool:
    """True when the volume came from DICOM: a series whose slices are known by path, or one multi-frame file."""
    meta = segmentation.volume.meta
    return bool(meta.get("file_paths") or meta.get("multiframe_path"))


def write_dicom_seg(segmentation: VolumeSegmentation, path: str | Path) -> Path:
    """Write ``segmentation`` as a DICOM SEG referencing its source series; returns ``path``."""
    import highdicom as hd

    from citrus_v import __version__

    sources, pixels = _sources_and_pixels(segmentation)
    algorithm = hd.AlgorithmIdentificationSequence(name=ALGORITHM_NAME, version=__version__, family=_ai_family())
    descriptions = [_segment_description(k + 1, name, algorithm) for k, name in enumerate(segmentation.names)]
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=SERIES_NUMBER,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=ALGORITHM_NAME,
        manufacturer_model_name=ALGORITHM_NAME,
        software_versions=__version__,
        device_serial_number="none",
        series_description=f"{ALGORITHM_NAME} segmentation",
        content_label="CITRUSV",
        content_description=(segmentation.prompt or "citrus-v segmentation")[:64],
        omit_empty_frames=False,  # every source slice keeps its frame: a reader sees where nothing was found
    )  # fmt: skip
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(p)
    return p


def seg_frames(segmentation: VolumeSegmentation) -> np.ndarray:
    """The label map as SEG frames: ``(K, rows, cols, n_segments)`` bool, frame k = source slice k."""
    labels = segmentation.labels  # (I=cols, J=rows bottom-up, K)
    planes = np.transpose(labels, (2, 1, 0))[:, ::-1, :]  # (K, rows top-down, cols)
    return np.stack([planes == k + 1 for k in range(len(segmentation.names))], axis=-1)


def _sources_and_pixels(segmentation: VolumeSegmentation) -> tuple[list[Any], Any]:
    """The source headers and what highdicom encodes: frames in source-slice order for a series;
    for one multi-frame file, the label map as a highdicom Volume (its affine in LPS) that highdicom
    matches, plane by plane, to the source's frames by their positions."""
    import highdicom as hd

    from citrus_v.data.dicom_io import dcmread

    path = segmentation.volume.meta.get("multiframe_path")
    if not path:
        return _source_datasets(segmentation), seg_frames(segmentation)  # (K, rows, cols, n_segments) bool
    source = dcmread(path, stop_before_pixels=True)
    segmentation.volume.meta["dicom_seg_notes"] = complete_identifiers([source])
    labels = segmentation.labels  # (I=cols, J=rows bottom-up, K)
    rows = labels.shape[1]
    # highdicom's (slice, row from the top, column) -> our (i, j, k) -> RAS -> LPS
    to_ours = np.array([[0, 0, 1, 0], [0, -1, 0, rows - 1], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=np.float64)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ segmentation.volume.affine @ to_ours
    planes = np.ascontiguousarray(np.transpose(labels, (2, 1, 0))[:, ::-1, :])  # label map: value = segment number
    return [source], hd.Volume(array=planes, affine=lps, coordinate_system="PATIENT")


def _source_datasets(segmentation: VolumeSegmentation) -> list[Any]:
    """The source slices' headers, in the volume's slice order (k = 0, 1, ...)."""
    from citrus_v.data.dicom_io import dcmread

    vol = segmentation.volume
    if vol.data.ndim != 3:
        raise ValueError(f"a DICOM SEG needs a 3D volume, got shape {vol.data.shape}")
    paths = vol.meta.get("file_paths") or []
    if len(paths) != vol.data.shape[2]:
        raise ValueError(f"the volume has {vol.data.shape[2]} slices but {len(paths)} source files are known")
    datasets = [dcmread(p, stop_before_pixels=True) for p in paths]
    segmentation.volume.meta["dicom_seg_notes"] = complete_identifiers(datasets)
    return datasets


def complete_identifiers(datasets: list[Any]) -> list[str]:
    """Fill the identifiers a SEG must reference where an anonymiser emptied them; returns what was done.

    SOP Class/Instance UIDs come from each file's own meta header (the same values, stored twice);
    an empty Study Instance UID or Frame of Reference UID is derived once for the whole series from
    its Series Instance UID (the same series always gets the same UIDs), and the note says so.
    """
    from pydicom.uid import generate_uid

    notes = []
    for tag, meta_tag in (("SOPClassUID", "MediaStorageSOPClassUID"), ("SOPInstanceUID", "MediaStorageSOPInstanceUID")):
        empty = [ds for ds in datasets if not ds.get(tag) and ds.file_meta.get(meta_tag)]
        for ds in empty:
            setattr(ds, tag, ds.file_meta.get(meta_tag))
        if empty:
            notes.append(f"{tag} of {len(empty)} slice(s) taken from the file meta header")
    series_uid = str(datasets[0].get("SeriesInstanceUID", "") or "")
    for tag in ("StudyInstanceUID", "FrameOfReferenceUID"):
        if not any(ds.get(tag) for ds in datasets):
            uid = generate_uid(entropy_srcs=[series_uid, tag])
            for ds in datasets:
                setattr(ds, tag, uid)
            notes.append(f"the source series has no {tag}; the SEG carries {uid}, derived from its SeriesInstanceUID")
    return notes


def _ai_family() -> Any:
    from pydicom.sr.codedict import codes

    return codes.cid7162.ArtificialIntelligence


def _segment_description(number: int, name: str, algorithm: Any) -> Any:
    """One segment: the structure's name as its label, coded by SNOMED CT where pydicom knows the word."""
    import highdicom as hd

    category, prop = _property_codes(name)
    return hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=name[:64],
        segmented_property_category=category,
        segmented_property_type=prop,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
    )


def _property_codes(name: str) -> tuple[Any, Any]:
    """(category, type) codes: a lesion word -> abnormal structure/lesion; a SNOMED CT concept
    pydicom names like the structure (e.g. "liver" -> Liver) -> anatomical structure/that concept;
    else anatomical structure/anatomical structure (the label still says which)."""
    from pydicom.sr.codedict import codes

    lowered = name.lower()
    if any(w in lowered for w in _LESION_WORDS):
        return codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Lesion
    words = [w for w in lowered.replace("-", " ").replace("_", " ").split() if w not in ("left", "right")]
    keyword = "".join(w.capitalize() for w in words)  # "left kidney" -> Kidney (the label keeps the side)
    try:
        concept = getattr(codes.SCT, keyword) if keyword else None
    except AttributeError:
        concept = None
    return codes.SCT.AnatomicalStructure, concept or codes.SCT.AnatomicalStructure
