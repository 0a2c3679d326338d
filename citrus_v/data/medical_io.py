"""Medical file I/O: one entry point from any file a user brings to an RGB image for the model.

``load_image(path)`` reads PNG/JPEG/TIFF/BMP, DICOM (one frame), NIfTI and NRRD (one axial slice) and
returns an ``(H, W, 3)`` uint8 RGB display image. ``read_dicom`` keeps physical units (HU);
``read_volume`` reads a NIfTI or NRRD file or a DICOM series folder as a ``Volume`` (axis convention in
``citrus_v.data.volume_io``). Every failure is a ``MedicalIOError`` naming the file.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import BinaryIO

import numpy as np

from citrus_v.data.dicom_io import BYTES_NAME, DicomImage, read_dicom
from citrus_v.data.volume_io import PLANES, Volume, read_dicom_series, read_multiframe_volume, read_nifti, read_nrrd, write_nifti
from citrus_v.data.windowing import (
    WINDOW_PRESETS,
    MedicalIOError,
    Window,
    apply_window,
    check_finite,
    gray_to_rgb,
    percentile_scale,
    resolve_window,
)

__all__ = [
    "PLANES",
    "WINDOW_PRESETS",
    "MAX_IMAGE_PIXELS",
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
    "read_nrrd",
    "read_volume",
    "write_nifti",
]

RASTER_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".gif"}
NIFTI_SUFFIXES = (".nii", ".nii.gz")
NRRD_SUFFIXES = (".nrrd", ".nhdr")


def file_kind(path: str | Path) -> str:
    """'dicom_series' | 'nifti' | 'nrrd' | 'raster' | 'dicom' for a path, by folder/suffix/magic bytes."""
    p = Path(path)
    if p.is_dir():
        return "dicom_series"
    if not p.exists():
        raise MedicalIOError(p, "no such file")
    name = p.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(NRRD_SUFFIXES):
        return "nrrd"
    if p.suffix.lower() in RASTER_SUFFIXES:
        return "raster"
    if p.suffix.lower() in (".dcm", ".dicom", ".ima") or p.suffix == "":
        return "dicom"
    with p.open("rb") as fh:
        head = fh.read(132)
    if head[128:132] == b"DICM":
        return "dicom"
    raise MedicalIOError(p, f"unsupported file type '{p.suffix}' (expected DICOM, NIfTI, NRRD, PNG, JPEG or TIFF)")


MAX_IMAGE_PIXELS = 40_000_000  # width x height (x frames for DICOM) read from a header before decoding

Frame = int | tuple[int, int] | None


def load_image(
    path: str | Path | bytes,
    *,
    window: Window = None,
    frame: Frame = None,
    name: str | None = None,
    max_pixels: int | None = MAX_IMAGE_PIXELS,
) -> np.ndarray:
    """Any supported image file (a path, or the bytes of a DICOM/raster file) -> ``(H, W, 3)`` uint8 RGB.

    ``window``: a ``WINDOW_PRESETS`` name, ``(center, width)`` or ``"percentile"`` (None = the
    file's own rule: DICOM VOI/window, CT soft tissue, else percentile). ``frame``: which picture of
    a file holding several: DICOM frame, TIFF/GIF page, NIfTI axial slice (counted from inferior;
    radiological view), or ``(time point, axial slice)`` of a 4D NIfTI. None = the file must hold
    one picture: a file with several is refused rather than silently read at its first.
    ``max_pixels``: refused above it, from the header, before decoding. Non-finite pixels are refused.
    Bytes are DICOM when they carry the part-10 ``DICM`` marker, else a raster image; errors name
    ``name`` or "<request bytes>".
    """
    if window is not None:
        resolve_window(window)  # a bad preset is the caller's error, reported before any I/O
    if isinstance(path, (bytes, bytearray, memoryview)):
        data, label = bytes(path), name or BYTES_NAME
        if data[128:132] == b"DICM":  # part 10: 128-byte preamble, then the marker
            return _dicom_frame(read_dicom(data, name=label, max_pixels=max_pixels), frame, window)
        return _load_raster(io.BytesIO(data), window=window, frame=frame, label=label, max_pixels=max_pixels)
    kind = file_kind(path)
    if kind == "dicom":
        return _dicom_frame(read_dicom(path, max_pixels=max_pixels), frame, window)
    if kind in ("nifti", "nrrd", "dicom_series"):
        vol = {"nifti": read_nifti, "nrrd": read_nrrd, "dicom_series": read_dicom_series}[kind](path)
        t, k = _volume_frame(vol, frame, path)
        return gray_to_rgb(vol.display_slice("axial", k, window=window, t=t))
    return _load_raster(Path(path), window=window, frame=frame, max_pixels=max_pixels)


def _int_frame(frame: Frame, label: str | Path, n: int) -> int:
    """The frame index of a file with ``n`` pictures in one sequence (DICOM frames, TIFF pages)."""
    if isinstance(frame, tuple):
        raise MedicalIOError(label, f"frame {frame}: a (time point, slice) pair applies to a 4D NIfTI only")
    if frame is None:
        if n > 1:
            raise MedicalIOError(label, f"holds {n} frames; choose one (--frame N, 0..{n - 1})")
        return 0
    if not 0 <= frame < n:
        raise MedicalIOError(label, f"frame {frame} out of range: the file has {n} frame(s)")
    return frame


def _dicom_frame(image: DicomImage, frame: Frame, window: Window) -> np.ndarray:
    return image.display(frame=_int_frame(frame, image.path, image.num_frames), window=window)


def _volume_frame(vol: Volume, frame: Frame, path: str | Path) -> tuple[int, int]:
    """(time point, axial slice) of a volume read as one image; several of either need ``frame``."""
    n_t = vol.shape[3] if vol.data.ndim == 4 else 1
    n_k = vol.num_slices("axial")
    if isinstance(frame, tuple):
        t, k = frame
        if not 0 <= t < n_t:
            raise MedicalIOError(path, f"time point {t} out of range: the file has {n_t}")
    elif n_t > 1:
        raise MedicalIOError(path, f"is 4D ({n_t} time points x {n_k} axial slices); choose one (--frame T,N)")
    else:
        t, k = 0, _int_frame(frame, path, n_k)
    if not 0 <= k < n_k:
        raise MedicalIOError(path, f"axial slice {k} out of range: the file has {n_k}")
    return t, k


def _load_raster(
    path: Path | BinaryIO, *, window: Window, frame: Frame, label: str | None = None, max_pixels: int | None = MAX_IMAGE_PIXELS
) -> np.ndarray:
    import warnings

    from PIL import Image, UnidentifiedImageError

    label = label or str(path)  # what errors name: the file, or the bytes' name
    try:
        with warnings.catch_warnings():
            # PIL warns (and past 2x its own limit raises) on decompression bombs; ``max_pixels`` is the rule
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:  # lazy: the header only
                check_raster_size(im.size, label, max_pixels)
                im.seek(_int_frame(frame, label, getattr(im, "n_frames", 1)))
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
    except Image.DecompressionBombError as err:
        raise MedicalIOError(label, f"rejected as a decompression bomb ({err})") from None
    except UnidentifiedImageError:
        raise MedicalIOError(label, "not a readable image (unknown or corrupt format)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise MedicalIOError(label, f"corrupt or truncated image ({err})") from None
    check_finite(label, arr)
    # 16-bit / float grayscale (common for CT/MR exports): window if asked, else percentile
    if arr.ndim == 3:
        arr = arr[..., 0] if arr.shape[-1] == 1 else arr
    if arr.ndim == 3:
        return np.clip(arr, 0, 255).astype(np.uint8)[..., :3]
    cw = resolve_window(window)
    gray = percentile_scale(arr) if cw is None else apply_window(arr, *cw)
    return gray_to_rgb(gray)


def check_raster_size(size: tuple[int, int], label: str | Path, max_pixels: int | None) -> None:
    """(width, height) from a raster header: refused when empty or above ``max_pixels``."""
    width, height = size
    if width < 1 or height < 1:
        raise MedicalIOError(label, f"image has an empty size {width}x{height}")
    if max_pixels is not None and width * height > max_pixels:
        raise MedicalIOError(label, f"image is {width}x{height} = {width * height} pixels, above the limit of {max_pixels}")


def read_volume(path: str | Path, *, modality: str | None = None) -> Volume:
    """A folder (DICOM series), a multi-frame DICOM file, a .nii/.nii.gz or a .nrrd/.nhdr file -> Volume (with its geometry)."""
    kind = file_kind(path)
    if kind == "dicom_series":
        vol = read_dicom_series(path)
        if modality is not None:
            vol.modality = modality
        return vol
    if kind == "nifti":
        return read_nifti(path, modality=modality)
    if kind == "nrrd":
        return read_nrrd(path, modality=modality)
    if kind == "dicom" and _frames_in(path) > 1:  # an enhanced (multi-frame) CT/MR file
        return read_multiframe_volume(path, modality=modality)
    raise MedicalIOError(path, "a volume must be a DICOM series folder, a multi-frame DICOM file, a .nii/.nii.gz or a .nrrd/.nhdr file")


def _frames_in(path: str | Path) -> int:
    from citrus_v.data.dicom_io import check_is_image, dcmread

    ds = dcmread(path, stop_before_pixels=True)
    check_is_image(ds, path)  # a SEG or RTDOSE is multi-frame too, but not a volume to segment
    try:
        return int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        return 1
