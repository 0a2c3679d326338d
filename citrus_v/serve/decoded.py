"""What decoding a request's image gives: the model's RGB pixels and, for a monochrome DICOM, the
values the viewer windows. Its own module so that the PNG/JPEG and the DICOM decoders share it
without importing each other."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class DecodedImage:
    pixels: np.ndarray  # (H, W, 3) uint8
    source_format: str  # "PNG" | "JPEG" | "DICOM"
    # a monochrome DICOM's modality values (H, W) (Hounsfield units for CT): the viewer windows them
    values: np.ndarray | None = None
    unit: str | None = None  # "HU" for CT, else "modality"
    window: tuple[float, float] | None = None  # (center, width) the values are shown with by default
    invert: bool = False  # MONOCHROME1: high values are shown dark

    @property
    def size(self) -> tuple[int, int]:
        return int(self.pixels.shape[0]), int(self.pixels.shape[1])
