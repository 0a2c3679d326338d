"""Image URLs from chat messages -> (H, W, 3) uint8 arrays, with every size limit checked before decoding.

Accepted: ``data:`` URLs holding base64 PNG, JPEG, TIFF (one page: pathology fields and fundus photographs
come so) or DICOM (the format is sniffed from the bytes, so a wrong media type does not matter), and, only when ``ServeConfig.allowed_image_dirs`` is set, local
paths / ``file://`` URLs inside those directories. Remote URLs are never fetched: a server that fetches
what a client names is a server-side request forgery waiting to happen.
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings
from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
from PIL import Image

from citrus_v.serve.decoded import DecodedImage  # noqa: F401 - re-exported: the type decode_image_bytes returns
from citrus_v.serve.errors import RequestError
from citrus_v.serve.settings import ServeConfig

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
TIFF_MAGICS = (b"II*\x00", b"MM\x00*")  # little- and big-endian classic TIFF (BigTIFF is not read)


def sniff_format(data: bytes) -> str | None:
    """PNG / JPEG / TIFF / DICOM from the leading bytes (DICOM part 10: 128-byte preamble + ``DICM``)."""
    if data.startswith(PNG_MAGIC):
        return "PNG"
    if data.startswith(JPEG_MAGIC):
        return "JPEG"
    if len(data) >= 132 and data[128:132] == b"DICM":
        return "DICOM"
    if data.startswith(TIFF_MAGICS):  # after DICOM: a DICOM preamble may itself be a TIFF header (pydicom's CT_small)
        return "TIFF"
    return None


Reserve = Callable[[int, str], None]  # (pixels, param): count them before decoding, or raise a RequestError


def decode_image_url(url: str, config: ServeConfig, param: str, reserve: Reserve | None = None) -> DecodedImage:
    """Any accepted image URL -> a decoded image; a :class:`RequestError` naming ``param`` otherwise.

    ``reserve`` is called with the image's pixel count from its header, before its pixels are decoded
    (the server's :class:`citrus_v.serve.budget.PixelLease`)."""
    data = read_image_bytes(url, config, param)
    return decode_image_bytes(data, config, param, reserve)


def read_image_bytes(url: str, config: ServeConfig, param: str) -> bytes:
    if url.startswith("data:"):
        return _decode_data_url(url, config, param)
    scheme = urlparse(url).scheme.lower()
    if scheme in ("http", "https", "ftp"):
        raise RequestError(400, f"remote image URLs are not fetched ({scheme}://); send the image as a data: URL", param)
    if not config.allowed_image_dirs:
        raise RequestError(
            400, "only data: URLs are accepted here: local paths and file:// URLs need the server started with "
            "--allow-image-dir DIR (ServeConfig.allowed_image_dirs)", param,
        )
    path_text = unquote(urlparse(url).path) if scheme == "file" else url
    if scheme not in ("", "file"):
        raise RequestError(400, f"unsupported URL scheme {scheme!r}", param)
    return _read_allowed_file(Path(path_text), config, param)


def _decode_data_url(url: str, config: ServeConfig, param: str) -> bytes:
    header, sep, payload = url.partition(",")
    if not sep:
        raise RequestError(400, "malformed data: URL (no ',' between header and payload)", param)
    if not header.lower().endswith(";base64"):
        raise RequestError(400, "data: URL must be base64 encoded (data:<type>;base64,...)", param)
    # some clients wrap base64 at 76 columns; whitespace is never data
    payload = "".join(payload.split())
    if len(payload) // 4 * 3 > config.max_image_bytes:
        raise RequestError(
            413, f"image is larger than max_image_bytes={config.max_image_bytes} ({len(payload) // 4 * 3} bytes)", param
        )
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as err:
        raise RequestError(400, f"invalid base64 in data: URL ({err})", param) from None
    if not data:
        raise RequestError(400, "data: URL holds no bytes", param)
    return data


def _read_allowed_file(path: Path, config: ServeConfig, param: str) -> bytes:
    # the allow-list first, on the path as resolved so far: a path outside it is 403 whether or not
    # it exists (a 400 "does not exist" would let a client probe the disk); resolve() follows the
    # symlinks that exist, so a link out of an allowed directory is refused too
    try:
        resolved = path.resolve(strict=False)
    except (OSError, RuntimeError, ValueError):
        resolved = None
    if resolved is None or not any(resolved.is_relative_to(root) for root in config.allowed_image_dirs):
        where = "" if path.is_absolute() else " (a relative path is read from the server's working directory)"
        raise RequestError(403, f"image path is outside the allowed directories{where}", param, code="forbidden_path")
    try:
        resolved = path.resolve(strict=True)
    except (OSError, RuntimeError, ValueError):
        raise RequestError(400, "image path does not exist", param) from None
    if not any(resolved.is_relative_to(root) for root in config.allowed_image_dirs):
        raise RequestError(403, "image path is outside the allowed directories", param, code="forbidden_path")
    if not resolved.is_file():
        raise RequestError(400, "image path is not a file", param)
    if resolved.stat().st_size > config.max_image_bytes:
        raise RequestError(413, f"image file is larger than max_image_bytes={config.max_image_bytes}", param)
    return resolved.read_bytes()


def decode_image_bytes(data: bytes, config: ServeConfig, param: str, reserve: Reserve | None = None) -> DecodedImage:
    kind = sniff_format(data)
    if kind is None:
        raise RequestError(415, "bytes are not a PNG, JPEG, TIFF or DICOM image", param, code="unsupported_image")
    if kind == "DICOM":
        from citrus_v.serve.dicom import decode_dicom_image  # pydicom only when a DICOM arrives

        return decode_dicom_image(data, config, param, reserve)
    if kind == "TIFF":
        return DecodedImage(_decode_tiff(data, config, param, reserve), kind)
    return DecodedImage(_decode_pil(data, config, param, reserve), kind)


def _decode_tiff(data: bytes, config: ServeConfig, param: str, reserve: Reserve | None = None) -> np.ndarray:
    """One-page TIFF -> (H, W, 3) uint8. PIL's TIFF reader fails on malformed files in more ways than its
    PNG/JPEG readers (of 20,000 byte-mutated TIFFs, 316 raised a TypeError, which would have been a 500):
    every failure to read a client's TIFF is that client's 400."""
    try:
        with Image.open(io.BytesIO(data)) as probe:
            pages = getattr(probe, "n_frames", 1)
    except Image.DecompressionBombError as err:
        raise RequestError(413, f"image rejected as a decompression bomb ({err})", param, code="image_too_large") from None
    except Exception as err:  # noqa: BLE001 - any failure to read a client's header is a bad image, not a 500
        raise RequestError(400, f"cannot read TIFF header ({type(err).__name__}: {err})"[:300], param,
                           code="corrupt_image") from None
    if pages != 1:
        raise RequestError(400, f"a TIFF of {pages} pages: send one page (e.g. as PNG)", param, code="unsupported_image")
    try:
        return _decode_pil(data, config, param, reserve)
    except RequestError:
        raise
    except Exception as err:  # noqa: BLE001 - as above, for the pixel data
        raise RequestError(400, f"truncated or corrupt TIFF data ({type(err).__name__}: {err})"[:300], param,
                           code="corrupt_image") from None


def _check_pixels(width: int, height: int, config: ServeConfig, param: str) -> None:
    if width < 1 or height < 1:
        raise RequestError(400, f"image has an empty size {width}x{height}", param)
    if width * height > config.max_image_pixels:
        raise RequestError(
            413, f"image is {width}x{height} = {width * height} pixels, above max_image_pixels={config.max_image_pixels}",
            param, code="image_too_large",
        )


def _decode_pil(data: bytes, config: ServeConfig, param: str, reserve: Reserve | None = None) -> np.ndarray:
    with warnings.catch_warnings():
        # PIL warns (and past 2x its own limit raises) on decompression bombs; our limit is the rule
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))  # lazy: reads the header only
        except Image.DecompressionBombError as err:
            raise RequestError(413, f"image rejected as a decompression bomb ({err})", param, code="image_too_large") from None
        except (OSError, SyntaxError, ValueError) as err:
            raise RequestError(400, f"cannot read image header ({err})", param, code="corrupt_image") from None
        width, height = image.size
        _check_pixels(width, height, config, param)  # BEFORE the pixels are decoded
        if reserve is not None:
            reserve(width * height, param)
        try:
            image.load()
        except Image.DecompressionBombError as err:
            raise RequestError(413, f"image rejected as a decompression bomb ({err})", param, code="image_too_large") from None
        except (OSError, SyntaxError, ValueError, EOFError) as err:
            raise RequestError(400, f"truncated or corrupt image data ({err})", param, code="corrupt_image") from None
    return _to_rgb8(image)


HIGH_BIT_MODES = ("I", "I;16", "I;16B", "I;16L", "F")  # grey stretched min..max
BAND_ROWS = 256  # rows converted at a time: full-size temporaries would cost more than the kept array


def _to_rgb8(image: Image.Image) -> np.ndarray:
    """Any PIL mode -> (H, W, 3) uint8; 16-bit and float grey are stretched min..max (no window known).

    Written band by band into one preallocated array: beside PIL's own decoded copy (1-4 bytes a
    pixel), the only full-size buffer is the 3-byte result (no converted, float or composited copy
    of the whole image), which is what the server's pixel budget charges (``serve/budget.py``)."""
    width, height = image.size
    extrema = image.getextrema() if image.mode in HIGH_BIT_MODES else None  # PIL's own pass, no copy
    out = np.empty((height, width, 3), dtype=np.uint8)
    for top in range(0, height, BAND_ROWS):
        band = image.crop((0, top, width, min(top + BAND_ROWS, height)))
        out[top : top + band.size[1]] = _band_to_rgb8(band, extrema)
    return out


def _band_to_rgb8(band: Image.Image, extrema: tuple | None) -> np.ndarray:
    """One band of rows -> (h, W, 3) uint8; ``extrema`` the whole image's (lo, hi) for high-bit grey."""
    if extrema is not None:
        arr = np.asarray(band, dtype=np.float64)
        lo, hi = float(extrema[0]), float(extrema[1])
        scaled = np.zeros_like(arr) if hi <= lo else (arr - lo) / (hi - lo) * 255.0
        grey = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)  # (h, W) -> (h, W, 3)
    if band.mode in ("RGBA", "LA", "PA") or (band.mode == "P" and "transparency" in band.info):
        band = band.convert("RGBA")
        background = Image.new("RGBA", band.size, (0, 0, 0, 255))  # transparent -> black, as scanners pad
        band = Image.alpha_composite(background, band)
    return np.asarray(band if band.mode == "RGB" else band.convert("RGB"), dtype=np.uint8)


def encode_values(image: DecodedImage) -> dict | None:
    """A monochrome DICOM's modality values for the viewer's window/level: little-endian raw bytes,
    base64; None for an image without them (PNG, JPEG, colour DICOM)."""
    if image.values is None:
        return None
    values = image.values.astype(image.values.dtype.newbyteorder("<"), copy=False)
    return {"unit": image.unit, "dtype": values.dtype.name, "shape": list(values.shape), "invert": image.invert,
            "window": [round(float(v), 3) for v in image.window], "data": base64.b64encode(values.tobytes()).decode("ascii")}


def encode_png_data_url(pixels: np.ndarray) -> str:
    """(H, W, 3) uint8 -> ``data:image/png;base64,...`` (the viewer shows what the model saw, e.g. a DICOM)."""
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
