"""Medical file I/O: one entry point from any file a user brings to an RGB image for the model.

``load_image(path)`` reads PNG/JPEG/TIFF/BMP, DICOM (one frame) and NIfTI (one axial slice) and
returns an ``(H, W, 3)`` uint8 RGB display image. ``read_dicom`` keeps physical units (HU);
``read_volume`` reads a NIfTI file or a DICOM series folder as a ``Volume`` (axis convention in
``citrus_v.data.volume_io``). Every failure is a ``MedicalIOError`` naming the file.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import BinaryIO

import numpy as np

from citrus_v.data.dicom_io import BYTES_NAME, DicomImage, read_dicom
from citrus_v.data.volume_io import PLANES, Volume, read_dicom_series, read_nifti, write_nifti
from citrus_v.data.windowing import (
    WINDOW_PRESETS,
    MedicalIOError,
    Window,
    apply_window,
    gray_to_rgb,
    percentile_scale,
    resolve_window,
)

__all__ = [
    "PLANES",
    "WINDOW_PRESETS",
    "DicomImage",
    "MedicalIOError",
    "Volume",
    "apply_window",
    "file_kind",
    "load_image",
    "percentile_scale",
    "read_dicom",
    "read_dicom_series",
    "read_nifti",
    "read_volume",
    "write_nifti",
]

RASTER_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".gif"}
NIFTI_SUFFIXES = (".nii", ".nii.gz")


def file_kind(path: str | Path) -> str:
    """'dicom_series' | 'nifti' | 'raster' | 'dicom' for a path, by folder/suffix/magic bytes."""
    p = Path(path)
    if p.is_dir():
        return "dicom_series"
    if not p.exists():
        raise MedicalIOError(p, "no such file")
    name = p.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if p.suffix.lower() in RASTER_SUFFIXES:
        return "raster"
    if p.suffix.lower() in (".dcm", ".dicom", ".ima") or p.suffix == "":
        return "dicom"
    with p.open("rb") as fh:
        head = fh.read(132)
    if head[128:132] == b"DICM":
        return "dicom"
    raise MedicalIOError(p, f"unsupported file type '{p.suffix}' (expected DICOM, NIfTI, PNG, JPEG or TIFF)")


def load_image(path: str | Path | bytes, *, window: Window = None, frame: int = 0, name: str | None = None) -> np.ndarray:
    """Any supported image file (a path, or the bytes of a DICOM/raster file) -> ``(H, W, 3)`` uint8 RGB.

    ``window``: a ``WINDOW_PRESETS`` name, ``(center, width)`` or ``"percentile"`` (None = the
    file's own rule: DICOM VOI/window, CT soft tissue, else percentile). ``frame``: DICOM frame,
    TIFF/GIF page, or NIfTI axial slice (counted from inferior; radiological view). Bytes are DICOM
    when they carry the part-10 ``DICM`` marker, else a raster image; errors name ``name`` or
    "<request bytes>".
    """
    if window is not None:
        resolve_window(window)  # a bad preset is the caller's error, reported before any I/O
    if isinstance(path, (bytes, bytearray, memoryview)):
        data, label = bytes(path), name or BYTES_NAME
        if data[128:132] == b"DICM":  # part 10: 128-byte preamble, then the marker
            return read_dicom(data, name=label).display(frame=frame, window=window)
        return _load_raster(io.BytesIO(data), window=window, frame=frame, label=label)
    kind = file_kind(path)
    if kind == "dicom":
        return read_dicom(path).display(frame=frame, window=window)
    if kind == "nifti":
        return gray_to_rgb(read_nifti(path).display_slice("axial", frame, window=window))
    if kind == "dicom_series":
        vol = read_dicom_series(path)
        return gray_to_rgb(vol.display_slice("axial", frame, window=window))
    return _load_raster(Path(path), window=window, frame=frame)


def _load_raster(path: Path | BinaryIO, *, window: Window, frame: int, label: str | None = None) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    label = label or str(path)  # what errors name: the file, or the bytes' name
    try:
        with Image.open(path) as im:
            n = getattr(im, "n_frames", 1)
            if not 0 <= frame < n:
                raise MedicalIOError(label, f"frame {frame} out of range: the file has {n} frame(s)")
            im.seek(frame)
            im.load()
            mode = im.mode
            if mode in ("RGB", "L") and window is None:
                return np.asarray(im.convert("RGB"))
            if mode in ("RGBA", "LA", "P", "PA", "CMYK", "YCbCr", "1"):
                # colour or palette images: alpha is dropped, palettes are expanded
                return np.asarray(im.convert("RGB"))
            arr = np.asarray(im)
    except MedicalIOError:
        raise
    except UnidentifiedImageError:
        raise MedicalIOError(label, "not a readable image (unknown or corrupt format)") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise MedicalIOError(label, f"corrupt or truncated image ({err})") from None
    # 16-bit / float grayscale (common for CT/MR exports): window if asked, else percentile
    if arr.ndim == 3:
        arr = arr[..., 0] if arr.shape[-1] == 1 else arr
    if arr.ndim == 3:
        return np.clip(arr, 0, 255).astype(np.uint8)[..., :3]
    cw = resolve_window(window)
    gray = percentile_scale(arr) if cw is None else apply_window(arr, *cw)
    return gray_to_rgb(gray)


def read_volume(path: str | Path, *, modality: str | None = None) -> Volume:
    """A folder (DICOM series) or a .nii/.nii.gz file -> Volume."""
    kind = file_kind(path)
    if kind == "dicom_series":
        vol = read_dicom_series(path)
        if modality is not None:
            vol.modality = modality
        return vol
    if kind == "nifti":
        return read_nifti(path, modality=modality)
    raise MedicalIOError(path, "a volume must be a DICOM series folder or a .nii/.nii.gz file")
