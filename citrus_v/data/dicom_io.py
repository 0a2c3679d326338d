"""Single DICOM files: pixels in modality units (HU for CT), photometric handling, display.

``read_dicom`` decodes every transfer syntax that pydicom's installed plugins handle: raw,
deflate, RLE (pylibjpeg-rle), JPEG baseline/extended (Pillow, pylibjpeg-libjpeg), JPEG lossless
process 14 and JPEG-LS lossless/near-lossless (pylibjpeg-libjpeg; pyjpegls too), JPEG 2000 and
HTJ2K (pylibjpeg-openjpeg). Legacy files without the 128-byte preamble and ``DICM`` marker are
read with pydicom's ``force=True`` (``metadata["ReadNote"]`` says so). Derived objects (SEG,
RTDOSE, RTSTRUCT, SR, ...) are refused in one line as not images. Anything else, or a damaged
file, raises ``MedicalIOError`` naming the file and the reason (``UnsupportedDicomError``, a
subclass, when the file is valid but cannot be decoded here).
``dcmread``/``read_dicom`` take a path or the file's bytes (e.g. from an HTTP request): the same
bytes give the same pixels and display either way; errors on bytes name ``name`` or "<request bytes>".
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from citrus_v.data.windowing import (
    DEFAULT_CT_WINDOW,
    WINDOW_PRESETS,
    MedicalIOError,
    Window,
    apply_window,
    check_finite,
    gray_to_rgb,
    percentile_scale,
    resolve_window,
)

BYTES_NAME = "<request bytes>"  # what errors name when the DICOM came as bytes without a name

DicomSource = str | Path | bytes


class UnsupportedDicomError(MedicalIOError):
    """A readable DICOM that cannot become an image here: no pixel data, or no installed decoder for its transfer syntax."""


# header fields worth carrying along (no patient identifiers)
_META_TAGS = (
    "Modality",
    "BodyPartExamined",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "InstanceNumber",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "SliceThickness",
    "Manufacturer",
    "SeriesDescription",
)


@dataclass
class DicomImage:
    """One decoded DICOM file.

    ``pixels``: float32, ``(F, H, W)`` for monochrome in modality units (rescale slope/intercept or
    the modality LUT applied: Hounsfield units for CT), or ``(F, H, W, 3)`` RGB 0..255 for colour.
    ``F`` is the number of frames (1 for a single-frame file). Values of a MONOCHROME1 file are left
    as stored (physical); only the display is inverted.
    """

    path: str
    pixels: np.ndarray
    photometric: str
    modality: str | None
    spacing: tuple[float, float] | None  # (row spacing, column spacing) in mm
    file_window: tuple[float, float] | None  # first (center, width) of the file's VOI module
    metadata: dict[str, Any] = field(default_factory=dict)
    _voi_lut: Any = field(default=None, repr=False)  # the file's VOI LUT sequence item, if any
    voi_function: str = "LINEAR"  # the file's VOI LUT Function for its window: LINEAR, LINEAR_EXACT or SIGMOID
    _voi_header: Any = field(default=None, repr=False)  # what pydicom's apply_windowing reads (window, bits, rescale)

    @property
    def num_frames(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def is_color(self) -> bool:
        return self.pixels.ndim == 4

    @property
    def hu(self) -> np.ndarray:
        """Frame 0 in modality units, ``(H, W)``; only for monochrome files."""
        if self.is_color:
            raise MedicalIOError(self.path, "a colour image has no modality units")
        return self.pixels[0]

    def display(self, frame: int = 0, window: Window = None) -> np.ndarray:
        """An ``(H, W, 3)`` uint8 RGB image of one frame.

        Window rule for monochrome: an explicit ``window`` (preset name, ``(center, width)`` or
        ``"percentile"``) wins; else the file's VOI LUT, else the file's window center/width;
        else CT gets the soft-tissue window (W400/L40) and everything else 1-99 percentile scaling.
        MONOCHROME1 is inverted after windowing so bright means dense, as on a monochrome2 screen.
        """
        if not -self.num_frames <= frame < self.num_frames:
            raise MedicalIOError(self.path, f"frame {frame} out of range: the file has {self.num_frames} frame(s)")
        img = self.pixels[frame]
        if self.is_color:
            return np.clip(np.rint(img), 0, 255).astype(np.uint8)
        if window is not None:
            cw = resolve_window(window)
            gray = percentile_scale(img) if cw is None else apply_window(img, *cw)
        elif self._voi_lut is not None:
            gray = _apply_lut_item(img, self._voi_lut)
        elif self.file_window is not None:
            gray = file_window_display(img, self._voi_header)
        elif self.modality == "CT":
            gray = apply_window(img, *WINDOW_PRESETS[DEFAULT_CT_WINDOW])
        else:
            gray = percentile_scale(img)
        if self.photometric == "MONOCHROME1":
            gray = 255 - gray
        return gray_to_rgb(gray)


def _apply_lut_item(values: np.ndarray, item: Any) -> np.ndarray:
    """Apply one VOI LUT sequence item (descriptor: entries, first mapped value, bits) -> uint8."""
    n_entries, first, bits = (int(v) for v in item.LUTDescriptor)
    n_entries = n_entries or 65536  # 0 means 2**16 entries (PS3.3 C.11.2.1.1)
    lut = np.asarray(item.LUTData, dtype=np.float32).reshape(-1)[:n_entries]
    idx = np.clip(np.rint(values).astype(np.int64) - first, 0, len(lut) - 1)
    top = float(lut.max()) if lut.max() > 0 else float(2**bits - 1)
    return np.clip(np.rint(lut[idx] / top * 255.0), 0, 255).astype(np.uint8)


VOI_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")  # PS3.3 C.11.2.1.3
_VOI_TAGS = ("WindowCenter", "WindowWidth", "VOILUTFunction", "BitsStored", "PixelRepresentation",
             "RescaleSlope", "RescaleIntercept", "ModalityLUTSequence", "PhotometricInterpretation")
BAND_ROWS = 256  # pydicom windows in float64 with masks: a band at a time keeps that off the whole frame


def _voi_header(ds: Any, path: str | Path) -> tuple[str, Any]:
    """(the VOI LUT Function, a small dataset of what pydicom's windowing reads); an unknown function
    is refused rather than drawn as LINEAR."""
    from pydicom.dataset import Dataset

    function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
    if function not in VOI_FUNCTIONS:
        raise MedicalIOError(path, f"VOILUTFunction {function!r} is not one of {', '.join(VOI_FUNCTIONS)}")
    header = Dataset()
    for tag in _VOI_TAGS:
        if tag in ds:
            header[tag] = ds[tag]
    return function, header


def file_window_display(values: np.ndarray, header: Any) -> np.ndarray:
    """The file's first window with its own VOI LUT Function (LINEAR, LINEAR_EXACT, SIGMOID), computed
    by pydicom's ``apply_windowing`` (the standard's formulas; not written again here), its output range
    mapped to 0..255. ``values`` (H, W) in modality units -> (H, W) uint8, a band of rows at a time."""
    from pydicom.pixels import apply_windowing

    lo, hi = _windowing_range(header)  # what apply_windowing maps below and above the window to
    out = np.empty(values.shape, dtype=np.uint8)
    for top in range(0, values.shape[0], BAND_ROWS):
        y = apply_windowing(np.asarray(values[top : top + BAND_ROWS], dtype=np.float64), header)
        out[top : top + BAND_ROWS] = np.clip(np.rint((y - lo) / (hi - lo) * 255.0), 0, 255)
    return out


def _windowing_range(header: Any) -> tuple[float, float]:
    """The output range pydicom's ``apply_windowing`` maps a window onto (PS3.3 C.11.2.1.2: the stored
    bits, or the modality LUT's, through the rescale)."""
    bits = int(header.get("BitsStored", 16) or 16)
    if header.get("ModalityLUTSequence"):
        lo, hi = 0.0, float(2 ** int(header.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    elif int(header.get("PixelRepresentation", 0) or 0) == 0:
        lo, hi = 0.0, float(2**bits - 1)
    else:
        lo, hi = float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    slope, intercept = header.get("RescaleSlope"), header.get("RescaleIntercept")
    if slope is not None and intercept is not None:  # as pydicom does (a negative slope turns the range round)
        lo, hi = lo * float(slope) + float(intercept), hi * float(slope) + float(intercept)
    return lo, hi


def _first_window(ds: Any) -> tuple[float, float] | None:
    if "WindowCenter" not in ds or "WindowWidth" not in ds:
        return None
    # multi-valued windows: the first is the one the modality proposes as default
    wc, ww = _first_value(ds.WindowCenter), _first_value(ds.WindowWidth)
    return (wc, ww) if ww >= 1 else None


def _first_value(v: Any) -> float:
    from pydicom.multival import MultiValue

    return float(v[0]) if isinstance(v, (MultiValue, list, tuple)) else float(v)


def dcmread(source: DicomSource, *, stop_before_pixels: bool = False, name: str | None = None) -> Any:
    """pydicom.dcmread that raises MedicalIOError (file named) instead of pydicom's errors.

    ``source``: a path, or the file's bytes (errors then name ``name``, default "<request bytes>").
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    if isinstance(source, (bytes, bytearray, memoryview)):
        label: str | Path = name or BYTES_NAME
        fp: Any = io.BytesIO(bytes(source))
    else:
        label = fp = Path(source)
        if not fp.is_file():
            raise MedicalIOError(fp, "no such file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns about harmless header quirks
            try:
                return pydicom.dcmread(fp, stop_before_pixels=stop_before_pixels)
            except InvalidDicomError:
                if hasattr(fp, "seek"):
                    fp.seek(0)
                return _read_legacy(fp, stop_before_pixels, label)
    except MedicalIOError:
        raise
    except Exception as err:  # noqa: BLE001 - any parse failure is a bad file, reported as such
        raise MedicalIOError(label, f"unreadable DICOM ({type(err).__name__}: {err})") from None


# (implicit VR, little endian) of a file read without file meta -> the transfer syntax it was written in
_LEGACY_SYNTAX = {(True, True): "1.2.840.10008.1.2", (False, True): "1.2.840.10008.1.2.1", (False, False): "1.2.840.10008.1.2.2"}
LEGACY_NOTE = "read without the DICM preamble and file meta (pydicom force=True)"
NOT_DICOM = "not a DICOM file (no DICM marker, and not a legacy DICOM dataset either)"


def _read_legacy(fp: Any, stop_before_pixels: bool, label: str | Path) -> Any:
    """A pre-part-10 (ACR-NEMA style) file: no 128-byte preamble, no ``DICM``, no file meta.

    pydicom reads it with ``force=True``; anything without an image or SOP class header is still
    "not a DICOM file" (force=True parses any bytes into a one-element dataset). The transfer syntax
    is taken from the encoding pydicom detected, so the pixels decode; ``ds.citrus_legacy`` marks it.
    """
    import pydicom
    from pydicom.dataset import FileMetaDataset

    head = _first_bytes(fp, 4)
    # a legacy file opens with a tag of group 0002 (meta without preamble) or 0008 (identifying
    # elements), in either byte order: anything else (PNG, text, NIfTI) is not parsed at all
    if len(head) < 4 or head[:2] not in (b"\x02\x00", b"\x08\x00", b"\x00\x02", b"\x00\x08"):
        raise MedicalIOError(label, NOT_DICOM)
    ds = pydicom.dcmread(fp, stop_before_pixels=stop_before_pixels, force=True)
    if "SOPClassUID" not in ds and "Rows" not in ds and "PixelData" not in ds:
        raise MedicalIOError(label, NOT_DICOM)
    if not isinstance(getattr(ds, "file_meta", None), FileMetaDataset):
        ds.file_meta = FileMetaDataset()
    if "TransferSyntaxUID" not in ds.file_meta:
        syntax = _LEGACY_SYNTAX.get(tuple(ds.original_encoding))  # type: ignore[arg-type]
        if syntax is None:
            raise MedicalIOError(label, "legacy DICOM without file meta in an unknown encoding")
        ds.file_meta.TransferSyntaxUID = syntax
    ds.citrus_legacy = True  # a plain attribute, not a DICOM element
    return ds


def _first_bytes(fp: Any, n: int) -> bytes:
    """The first ``n`` bytes of a path or a seekable stream (left at its start)."""
    if isinstance(fp, Path):
        with fp.open("rb") as fh:
            return fh.read(n)
    head = fp.read(n)
    fp.seek(0)
    return head


def decode_pixels(ds: Any, path: str | Path) -> np.ndarray:
    """The raw stored pixel array (colour converted to RGB), or MedicalIOError."""
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise UnsupportedDicomError(path, f"has no pixel data (SOP class {ds.get('SOPClassUID', '?')}, modality {ds.get('Modality', '?')})")
    check_pixel_length(ds, path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return ds.pixel_array
    except Exception as err:  # noqa: BLE001 - decoder plugins raise many types; all mean "cannot decode"
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        ts_name = getattr(ts, "name", str(ts))
        msg = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
        if isinstance(err, (RuntimeError, NotImplementedError)):
            raise UnsupportedDicomError(path, f"cannot decode transfer syntax '{ts_name}' with the installed decoders: {msg}") from None
        raise MedicalIOError(path, f"corrupt or truncated pixel data ({ts_name}): {msg}") from None


# modalities whose objects are derived data about images, not pictures to answer on
NOT_IMAGES = {
    "SEG": "a segmentation (DICOM SEG)",
    "RTDOSE": "a radiotherapy dose grid (RTDOSE)",
    "RTSTRUCT": "radiotherapy contours (RTSTRUCT)",
    "RTPLAN": "a radiotherapy plan (RTPLAN)",
    "SR": "a structured report (SR)",
    "KO": "a key object selection (KO)",
    "PR": "a presentation state (PR)",
    "REG": "a spatial registration (REG)",
    "RWV": "a real world value mapping (RWV)",
}


def check_is_image(ds: Any, path: str | Path) -> None:
    """Refuse, in one line, an object that is derived data (SEG, RTDOSE, RTSTRUCT, SR, ...), not an image."""
    from pydicom.uid import UID

    modality = str(ds.get("Modality", "") or "").upper()
    sop = ds.get("SOPClassUID")
    sop_name = UID(str(sop)).name if sop else "unknown SOP class"
    if modality in NOT_IMAGES or "Segmentation Storage" in sop_name:
        what = NOT_IMAGES.get(modality, NOT_IMAGES["SEG"])
        raise UnsupportedDicomError(path, f"is {what} ({sop_name}), not an image to answer on")


def is_legacy_dicom(path: str | Path) -> bool:
    """True when a readable DICOM file lacks the 128-byte preamble + ``DICM`` (read with force=True)."""
    with Path(path).open("rb") as fh:
        return fh.read(132)[128:132] != b"DICM"


def check_pixel_length(ds: Any, path: str | Path) -> None:
    """Uncompressed pixel data must be as long as Rows x Columns x frames x samples x bits says.

    pydicom reshapes whatever bytes it finds by the header: a header claiming 10x10 over 128x128
    pixels would decode as a 10x10 crop (plus "extra frames"). Compressed data is checked by the
    frame count after decoding (``read_dicom``).
    """
    from pydicom.pixels.utils import get_expected_length

    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if "PixelData" not in ds or ts is None or ts.is_compressed:
        return
    try:
        expected = int(get_expected_length(ds, unit="bytes"))
    except Exception as err:  # noqa: BLE001 - missing or non-numeric Rows/Columns/BitsAllocated
        raise MedicalIOError(path, f"image header is incomplete ({type(err).__name__}: {err})") from None
    stored = len(ds.PixelData)
    if stored not in (expected, expected + 1):  # one pad byte makes an odd length even
        size = f"{ds.get('Rows')}x{ds.get('Columns')}, {ds.get('NumberOfFrames', 1) or 1} frame(s), {ds.get('BitsAllocated')} bits"
        what = "corrupt or truncated pixel data" if stored < expected else "header and pixel data disagree"
        raise MedicalIOError(path, f"{what}: the header says {size} = {expected} bytes, the pixel data holds {stored}")


def check_image_size(ds: Any, path: str | Path, max_pixels: int | None) -> tuple[int, int, int]:
    """(frames, rows, columns) from the header; refused above ``max_pixels`` (rows x columns x frames)
    before any pixel is decoded."""
    try:
        rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError) as err:
        raise MedicalIOError(path, f"Rows/Columns/NumberOfFrames are not integers ({err})") from None
    if rows < 1 or cols < 1 or frames < 1:
        raise UnsupportedDicomError(path, f"has no image (Rows={rows}, Columns={cols}, NumberOfFrames={frames})")
    if max_pixels is not None and rows * cols * frames > max_pixels:
        raise MedicalIOError(path, f"image is {frames} x {rows}x{cols} pixels, above the limit of {max_pixels}")
    return frames, rows, cols


def _spacing(ds: Any) -> tuple[float, float] | None:
    for tag in ("PixelSpacing", "ImagerPixelSpacing"):
        if tag in ds and ds.get(tag) is not None and len(ds.get(tag)) == 2:
            return float(ds.get(tag)[0]), float(ds.get(tag)[1])
    return None


def read_dicom(source: DicomSource, *, name: str | None = None, max_pixels: int | None = None) -> DicomImage:
    """Read and decode one DICOM file (a path or its bytes) into modality units. See ``DicomImage``.

    ``max_pixels``: refuse, from the header and before decoding, a file of more rows x columns x frames.
    A header that disagrees with its pixel data, or pixels that are NaN/infinite, are refused.
    """
    ds = dcmread(source, name=name)
    # what errors and DicomImage.path name: the file, or the given name for bytes
    path = (name or BYTES_NAME) if isinstance(source, (bytes, bytearray, memoryview)) else source
    check_is_image(ds, path)
    if "PixelData" in ds or "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
        check_image_size(ds, path, max_pixels)
    raw = decode_pixels(ds, path)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    pixels, samples = _to_units(ds, raw, photometric, path)
    # normalise to a leading frame axis: (F, H, W) or (F, H, W, 3)
    per_frame_ndim = 3 if samples == 3 else 2
    if pixels.ndim == per_frame_ndim:
        pixels = pixels[None]
    if pixels.shape[0] != n_frames:
        raise MedicalIOError(path, f"header and pixel data disagree: NumberOfFrames={n_frames} but decoded {pixels.shape[0]} frames")
    check_finite(path, pixels)
    voi_item = None
    if "VOILUTSequence" in ds and len(ds.VOILUTSequence) > 0 and samples == 1:
        voi_item = ds.VOILUTSequence[0]
    voi_function, voi_header = _voi_header(ds, path) if samples == 1 else ("LINEAR", None)
    metadata = {tag: _plain(ds.get(tag)) for tag in _META_TAGS if tag in ds}
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    metadata["TransferSyntax"] = getattr(ts, "name", None)
    if getattr(ds, "citrus_legacy", False):
        metadata["ReadNote"] = LEGACY_NOTE
    return DicomImage(
        path=str(path),
        pixels=np.ascontiguousarray(pixels, dtype=np.float32),
        photometric=photometric if samples == 1 else "RGB",
        modality=str(ds.get("Modality")) if ds.get("Modality") else None,
        spacing=_spacing(ds),
        file_window=_first_window(ds) if samples == 1 else None,
        metadata=metadata,
        _voi_lut=voi_item,
        voi_function=voi_function,
        _voi_header=voi_header,
    )


def _to_units(ds, raw: np.ndarray, photometric: str, path) -> tuple[np.ndarray, int]:  # noqa: ANN001
    """Decoded stored values -> (float32 pixels in modality units or 0..255 RGB, samples per pixel)."""
    from pydicom.pixels import apply_color_lut, apply_modality_lut

    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    try:
        if photometric == "PALETTE COLOR":
            rgb = apply_color_lut(raw, ds)
            bits = int(ds.RedPaletteColorLookupTableDescriptor[2])  # 16-bit palette entries are scaled to 8 bits
            return rgb.astype(np.float32) / (257.0 if bits == 16 else 1.0), 3
        if samples == 3:
            pixels = raw.astype(np.float32)
            if raw.dtype.itemsize > 1:  # 16/32-bit colour (e.g. RLE 16 bit): scale to 0..255
                pixels = pixels / float(2 ** int(ds.BitsStored) - 1) * 255.0
            return pixels, 3
        return np.asarray(apply_modality_lut(raw, ds), dtype=np.float32), samples
    except MedicalIOError:
        raise
    except Exception as err:  # noqa: BLE001 - a LUT that does not fit the data is a bad file
        raise MedicalIOError(path, f"cannot apply the modality/colour LUT: {err}") from None


def _plain(v: Any) -> Any:
    """pydicom values -> JSON-friendly Python values."""
    if v is None or isinstance(v, (int, float, str)):
        return v
    if hasattr(v, "__iter__") and not isinstance(v, (bytes, str)):
        return [_plain(x) for x in v]
    try:
        return float(v)
    except (TypeError, ValueError):
        return str(v)
