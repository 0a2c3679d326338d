"""DICOM bytes from a request -> (H, W, 3) uint8, refusing what the server cannot show as one image.

The header is read first (``stop_before_pixels``) so size limits apply before any pixel decoding.
Pixels and display then go through :mod:`citrus_v.data.dicom_io`, the rule ``citrus-v predict`` and
the volume code use (VOI LUT, else the file's window, else CT soft tissue W400/L40, else 1-99
percentile; MONOCHROME1 inverted), so one file reaches the model identically through CLI and server.
"""

from __future__ import annotations

import numpy as np

from citrus_v.serve.errors import RequestError
from citrus_v.serve.settings import ServeConfig


# A DICOM pixel passes through its stored integers, rescaled floats and the window's temporaries before
# it is RGB: about 16 bytes at peak (measured on a 4000x4000 CT frame), twice what the pixel budget
# allows an RGB pixel (serve/budget.py, 8 bytes), so each one is charged as two.
DICOM_PIXEL_CHARGE = 2


def decode_dicom(data: bytes, config: ServeConfig, param: str, reserve=None) -> np.ndarray:
    """``reserve(pixels, param)``: count the frame's pixels (from the header, each as
    ``DICOM_PIXEL_CHARGE``) before decoding them."""
    return decode_dicom_image(data, config, param, reserve).pixels


def decode_dicom_image(data: bytes, config: ServeConfig, param: str, reserve=None):
    """A ``DecodedImage``: the display (what the model sees) and, for a monochrome file, its modality
    values with the window they are shown with (the viewer's window/level works on them)."""
    from citrus_v.serve.decoded import DecodedImage

    image = _read(data, config, param, reserve)
    display = _display(image, param)
    if image.is_color:
        return DecodedImage(display, "DICOM")
    values = image.hu
    if np.array_equal(values, np.rint(values)) and values.min() >= -32768 and values.max() <= 32767:
        values = values.astype(np.int16)  # CT and most MR: integers; half the bytes of float32
    unit = "HU" if image.modality == "CT" else "modality"
    invert = image.photometric == "MONOCHROME1"
    return DecodedImage(display, "DICOM", values, unit, _shown_window(image), invert)


def _shown_window(image) -> tuple[float, float]:
    """(center, width) close to how the display shows the values: the file's window, CT's soft tissue
    window, else the 1st..99th percentile (the display rule of ``DicomImage.display``)."""
    if image.file_window is not None:
        return tuple(float(v) for v in image.file_window)
    if image.modality == "CT":
        return (40.0, 400.0)
    lo, hi = (float(v) for v in np.percentile(image.hu, [1, 99]))
    return ((lo + hi) / 2, max(hi - lo, 1.0))


def _read(data: bytes, config: ServeConfig, param: str, reserve=None):
    from citrus_v.data.dicom_io import UnsupportedDicomError, dcmread, read_dicom
    from citrus_v.data.windowing import MedicalIOError

    try:
        header = dcmread(data, stop_before_pixels=True, name=param)
    except MedicalIOError as err:
        raise RequestError(400, f"cannot parse DICOM header ({err.problem})", param, code="corrupt_image") from None
    _check_header(header, config, param)
    if reserve is not None:
        reserve(DICOM_PIXEL_CHARGE * int(header.Rows) * int(header.Columns), param)
    try:
        return read_dicom(data, name=param)
    except UnsupportedDicomError as err:
        problem = err.problem.replace("cannot decode transfer syntax", "unsupported DICOM transfer syntax")
        raise RequestError(415, problem, param, code="unsupported_dicom") from None
    except MedicalIOError as err:
        raise RequestError(400, f"cannot decode DICOM ({err.problem})", param, code="corrupt_image") from None
    except Exception as err:  # noqa: BLE001 - odd header values (non-numeric windows, LUTs) are the client's bytes
        raise RequestError(400, f"cannot decode DICOM ({type(err).__name__}: {err})", param, code="corrupt_image") from None


def _display(image, param: str) -> np.ndarray:
    from citrus_v.data.windowing import MedicalIOError

    try:
        return image.display(frame=0)
    except MedicalIOError as err:
        raise RequestError(400, f"cannot decode DICOM ({err.problem})", param, code="corrupt_image") from None
    except Exception as err:  # noqa: BLE001 - odd header values (non-numeric windows, LUTs) are the client's bytes
        raise RequestError(400, f"cannot decode DICOM ({type(err).__name__}: {err})", param, code="corrupt_image") from None


def _check_header(header, config: ServeConfig, param: str) -> None:
    """Size, frame count and samples from the header alone: a bomb is refused before its pixels are decoded."""
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
    if samples not in (1, 3):
        raise RequestError(415, f"DICOM SamplesPerPixel={samples} is not supported", param, code="unsupported_dicom")


def _int_tag(ds, name: str, param: str, default: int | None = None) -> int | None:
    value = ds.get(name, default)
    if value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise RequestError(400, f"DICOM tag {name} is not an integer ({value!r})", param) from None
