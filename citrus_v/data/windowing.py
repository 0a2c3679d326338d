"""Intensity windows: from physical units (HU, MR signal) to 8-bit display values.

Kept apart from the file readers so every reader (DICOM, NIfTI, 16-bit PNG) shares one rule
and one error type.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from citrus_v.errors import UserError


class MedicalIOError(UserError, ValueError):
    """A medical file cannot be read or is not what it claims. The message names the file."""

    def __init__(self, path: str | Path | None, problem: str):
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


def check_finite(path: str | Path | None, values: np.ndarray, what: str = "pixels") -> None:
    """Refuse values with NaN or infinity: windowing and measurements would turn them into a finding."""
    arr = np.asarray(values)
    if not np.issubdtype(arr.dtype, np.floating):
        return  # integers are always finite
    bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
    if bad:
        raise MedicalIOError(path, f"{bad} of {arr.size} {what} are NaN or infinite: not a meaningful image")


# (center, width) in Hounsfield units; the usual radiology reading windows.
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "ct_lung": (-600.0, 1500.0),
    "ct_soft_tissue": (40.0, 400.0),
    "ct_abdomen": (40.0, 400.0),  # same as soft tissue: the default reading of the abdomen
    "ct_mediastinum": (50.0, 350.0),
    "ct_bone": (400.0, 1800.0),
    "ct_brain": (40.0, 80.0),
}
DEFAULT_CT_WINDOW = "ct_soft_tissue"
PERCENTILE_RANGE = (1.0, 99.0)

Window = str | tuple[float, float] | None


def apply_window(arr: np.ndarray, center: float, width: float) -> np.ndarray:
    """Map values to uint8 with the DICOM linear VOI function (PS3.3 C.11.2.1.2.1).

    Values at or below ``center - 0.5 - (width - 1) / 2`` become 0, those above
    ``center - 0.5 + (width - 1) / 2`` become 255, linear between.

    >>> apply_window(np.array([-1000.0, 40.0, 1000.0]), 40, 400).tolist()
    [0, 128, 255]
    """
    if not np.isfinite(center) or not np.isfinite(width) or width < 1:
        raise ValueError(f"window width must be >= 1 and finite, got center={center}, width={width}")
    x = np.asarray(arr, dtype=np.float32)
    y = ((x - (center - 0.5)) / (width - 1.0) + 0.5) * 255.0
    return np.clip(np.rint(y), 0, 255).astype(np.uint8)


def percentile_scale(arr: np.ndarray, lo: float = PERCENTILE_RANGE[0], hi: float = PERCENTILE_RANGE[1]) -> np.ndarray:
    """Stretch the [lo, hi] percentiles to 0..255 (the default for MR and other non-CT images).

    A constant image maps to zeros rather than dividing by zero.
    """
    x = np.asarray(arr, dtype=np.float32)
    finite = x[np.isfinite(x)]
    if finite.size == 0:
        return np.zeros(x.shape, np.uint8)
    p_lo, p_hi = np.percentile(finite, [lo, hi])
    if p_hi <= p_lo:
        return np.zeros(x.shape, np.uint8)
    y = (np.nan_to_num(x, nan=p_lo) - p_lo) / (p_hi - p_lo) * 255.0
    return np.clip(np.rint(y), 0, 255).astype(np.uint8)


def resolve_window(window: Window) -> tuple[float, float] | None:
    """A preset name or an explicit (center, width) -> (center, width); None or 'percentile' -> None."""
    if window is None or window == "percentile":
        return None
    if isinstance(window, str):
        if window not in WINDOW_PRESETS:
            raise ValueError(f"unknown window preset {window!r}; known: {sorted(WINDOW_PRESETS)} or 'percentile'")
        return WINDOW_PRESETS[window]
    if isinstance(window, (tuple, list)) and len(window) == 2:
        center, width = float(window[0]), float(window[1])
        if width < 1:
            raise ValueError(f"window width must be >= 1, got {width}")
        return center, width
    raise ValueError(f"window must be a preset name, (center, width) or None, got {window!r}")


def parse_window(text: str) -> str | tuple[float, float]:
    """A command-line window: a preset name, ``percentile``, or ``C,W``, center first as in the Python
    API's ``(center, width)`` (``40,400`` is L40/W400) -> what ``resolve_window`` takes. ValueError
    names the accepted forms."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) == 2:
        try:
            center, width = float(parts[0]), float(parts[1])
        except ValueError:
            center = width = float("nan")
        if np.isfinite(center) and np.isfinite(width) and width >= 1:
            return center, width
        raise ValueError(f"{text!r}: C,W needs a finite center and a width >= 1 (e.g. 40,400)")
    if text in WINDOW_PRESETS or text == "percentile":
        return text
    raise ValueError(f"{text!r}: expected one of {sorted(WINDOW_PRESETS)}, 'percentile' or C,W (e.g. 40,400)")


def window_argument(text: str) -> str | tuple[float, float]:
    """argparse type for ``--window``: a bad value is one line naming the flag."""
    import argparse

    try:
        return parse_window(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"--window {err}") from None


def to_display(arr: np.ndarray, window: Window, *, default: tuple[float, float] | None = None) -> np.ndarray:
    """Physical values -> uint8: the given window, else ``default``, else percentile scaling."""
    cw = resolve_window(window) if window is not None else default
    if window == "percentile":
        cw = None
    return percentile_scale(arr) if cw is None else apply_window(arr, *cw)


def gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    """(H, W) uint8 -> (H, W, 3) uint8."""
    return np.repeat(gray[..., None], 3, axis=-1)
