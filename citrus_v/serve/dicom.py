"""DICOM bytes from a request -> (H, W, 3) uint8, refusing what the server cannot show as one image.

The header is read first (``stop_before_pixels``) so size limits apply before any pixel decoding.
Display rule: modality LUT (to HU for CT) -> the file's VOI window when it has one, else the
1st..99th percentile -> MONOCHROME1 inverted so that bright means dense, as for MONOCHROME2.
"""

from __future__ import annotations

import io

import numpy as np

from citrus_v.serve.errors import RequestError
from citrus_v.serve.settings import ServeConfig


def decode_dicom(data: bytes, config: ServeConfig, param: str) -> np.ndarray:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        header = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise RequestError(400, f"cannot parse DICOM header ({err})", param, code="corrupt_image") from None
    rows, cols = _int_tag(header, "Rows", param), _int_tag(header, "Columns", param)
    frames = _int_tag(header, "NumberOfFrames", param, default=1)
    samples = _int_tag(header, "SamplesPerPixel", param, default=1)
    if rows is None or cols is None:
        raise RequestError(415, "DICOM has no image (Rows/Columns missing)", param, code="unsupported_dicom")
    if rows < 1 or cols < 1 or frames < 1:
        raise RequestError(400, f"DICOM has an empty size {rows}x{cols}x{frames}", param)
    if rows * cols * frames > config.max_image_pixels:
        raise RequestError(
            413, f"DICOM is {frames} x {rows}x{cols} pixels, above max_image_pixels={config.max_image_pixels}",
            param, code="image_too_large",
        )
    if frames != 1:
        raise RequestError(
            415, f"multi-frame DICOM ({frames} frames) is not supported here; send one frame", param,
            code="unsupported_dicom",
        )
    photometric = str(header.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if samples not in (1, 3):
        raise RequestError(415, f"DICOM SamplesPerPixel={samples} is not supported", param, code="unsupported_dicom")
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
        pixels = ds.pixel_array
    except (NotImplementedError, RuntimeError) as err:  # pydicom: no installed decoder for this transfer syntax
        syntax = getattr(getattr(header, "file_meta", None), "TransferSyntaxUID", "unknown")
        first_line = str(err).splitlines()[0]
        raise RequestError(
            415, f"unsupported DICOM transfer syntax {syntax} ({first_line})", param, code="unsupported_dicom"
        ) from None
    except Exception as err:  # pydicom raises many types for broken pixel data; all are the client's bytes
        raise RequestError(400, f"cannot decode DICOM pixel data ({type(err).__name__}: {err})", param, code="corrupt_image") from None
    if samples == 3:
        return _color_to_rgb8(ds, pixels, photometric, param)
    if pixels.ndim != 2:
        raise RequestError(415, f"DICOM pixel array has shape {pixels.shape}, expected (rows, cols)", param, code="unsupported_dicom")
    grey = _grey_to_uint8(ds, pixels, photometric)
    return np.repeat(grey[:, :, None], 3, axis=2)  # (H, W) -> (H, W, 3)


def _int_tag(ds, name: str, param: str, default: int | None = None) -> int | None:
    value = ds.get(name, default)
    if value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise RequestError(400, f"DICOM tag {name} is not an integer ({value!r})", param) from None


def _grey_to_uint8(ds, pixels: np.ndarray, photometric: str) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut

    values = np.asarray(apply_modality_lut(pixels, ds), dtype=np.float64)
    window = _file_window(ds)
    if window is not None:
        center, width = window
        lo, hi = center - width / 2.0, center + width / 2.0
    else:
        lo, hi = (float(v) for v in np.percentile(values, [1.0, 99.0]))
    scaled = np.zeros_like(values) if hi <= lo else (values - lo) / (hi - lo)
    grey = np.clip(np.rint(scaled * 255.0), 0, 255).astype(np.uint8)
    if photometric == "MONOCHROME1":  # MONOCHROME1: low values are white
        grey = 255 - grey
    return grey


def _file_window(ds) -> tuple[float, float] | None:
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is None or width is None:
        return None
    from pydicom.multival import MultiValue

    try:
        # multi-valued windows: the first is the one the modality recommends
        c = float(center[0] if isinstance(center, MultiValue) else center)
        w = float(width[0] if isinstance(width, MultiValue) else width)
    except (TypeError, ValueError, IndexError):
        return None
    return (c, w) if w > 0 else None


def _color_to_rgb8(ds, pixels: np.ndarray, photometric: str, param: str) -> np.ndarray:
    if pixels.ndim != 3 or pixels.shape[2] != 3:
        raise RequestError(415, f"colour DICOM pixel array has shape {pixels.shape}, expected (rows, cols, 3)", param, code="unsupported_dicom")
    if photometric.startswith("YBR"):
        from pydicom.pixels import convert_color_space

        pixels = convert_color_space(pixels, photometric, "RGB")
    if pixels.dtype != np.uint8:
        top = float(pixels.max()) or 1.0
        pixels = np.clip(np.rint(pixels.astype(np.float64) / top * 255.0), 0, 255)
    return np.ascontiguousarray(pixels.astype(np.uint8))
