"""Shared pieces of the phantom generators: shapes on a pixel grid, noise, boxes, the Phantom type.

Every generator draws in normalised coordinates (0..1 across the image) and renders at any
``size``; masks are the exact shapes that were painted, so the ground truth is pixel-exact.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable

import numpy as np
from PIL import Image, ImageFilter



@dataclass
class Phantom:
    """One rendered image with its named structure masks.

    image: (S, S) uint8 (grayscale modalities) or (S, S, 3) uint8 (colour photos).
    masks: name -> (S, S) bool; a finding's mask is a subset of its parent organ's mask.
    finding: the mask name of the abnormality, None when the image is normal.
    attrs: the drawn ground-truth attributes (present, side, large) the text is built from.
    """

    image: np.ndarray
    masks: dict[str, np.ndarray]
    finding: str | None
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ModalitySpec:
    """The words a modality's questions and reports are built from, plus its renderer.

    ``render(rng, size, present, side, large) -> Phantom``; ``side`` picks ``locations[side]``.
    """

    modality: str  # schema modality: ct, mr, xray, us, endoscopy, derm
    name: str  # answer to "What imaging modality is this?"
    phrase: str  # "an axial CT slice of the abdomen"
    finding: str  # "lesion"
    appearance: str  # how the finding looks: "hypodense"
    locations: tuple[str, str]  # short location answers: ("liver", "spleen")
    location_question: str  # "Is the lesion in the liver or the spleen?"
    location_phrase: str  # "in the {loc}" -> "in the liver"
    organs: tuple[str, ...]  # always-present structures that can be segmented or located
    normal_text: str  # report sentence for the normal case
    render: Callable[..., Phantom]


@lru_cache(maxsize=8)
def _axes(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in 0..1: x as (1, S), y as (S, 1), broadcastable to (S, S)."""
    c = (np.arange(size, dtype=np.float32) + 0.5) / size
    return c[None, :], c[:, None]


def blob(
    size: int,
    cx: float,
    cy: float,
    rx: float,
    ry: float,
    angle: float = 0.0,
    wobble: np.ndarray | None = None,
) -> np.ndarray:
    """A (S, S) bool ellipse, optionally with a wavy border (organic outlines).

    ``wobble`` is (K, 2): amplitude and phase of harmonics 2..K+1 of the radius. Only the
    ellipse's bounding square is evaluated, which keeps small shapes cheap.
    """
    out = np.zeros((size, size), dtype=bool)
    amp = 1.0 + (float(np.abs(wobble[:, 0]).sum()) if wobble is not None else 0.0)
    reach = max(rx, ry) * amp
    x0, x1 = max(0, int((cx - reach) * size) - 1), min(size, int((cx + reach) * size) + 2)
    y0, y1 = max(0, int((cy - reach) * size) - 1), min(size, int((cy + reach) * size) + 2)
    if x0 >= x1 or y0 >= y1:
        return out
    xs, ys = _axes(size)
    dx, dy = xs[:, x0:x1] - cx, ys[y0:y1, :] - cy  # (1, w), (h, 1)
    c, s = np.cos(angle), np.sin(angle)
    u = (dx * c + dy * s) / rx  # (h, w) in ellipse units
    v = (-dx * s + dy * c) / ry
    r2 = u * u + v * v
    if wobble is None:
        out[y0:y1, x0:x1] = r2 <= 1.0
    else:
        theta = np.arctan2(v, u)
        limit = np.ones_like(theta)
        for k, (a, phi) in enumerate(wobble, start=2):
            limit += a * np.cos(k * theta + phi)
        out[y0:y1, x0:x1] = r2 <= limit * limit
    return out


def wobble(rng: np.random.Generator, strength: float = 0.06, harmonics: int = 3) -> np.ndarray:
    """Random border harmonics for ``blob``: (harmonics, 2) amplitude and phase."""
    amps = rng.uniform(0, strength, harmonics) / np.arange(1, harmonics + 1)
    return np.stack([amps, rng.uniform(0, 2 * np.pi, harmonics)], axis=1)


def smooth_noise(rng: np.random.Generator, size: int, cells: int = 8) -> np.ndarray:
    """Low-frequency texture in about -0.5..0.5, (S, S) float32: a small random grid upsampled."""
    small = rng.random((cells, cells), dtype=np.float32) - 0.5
    return np.asarray(Image.fromarray(small, mode="F").resize((size, size), Image.BILINEAR))


def finish_gray(img: np.ndarray, rng: np.random.Generator, noise: float = 0.02, blur: float = 0.6) -> np.ndarray:
    """Float image in 0..1 -> uint8 with white noise and a slight blur (scanner softness)."""
    img = img + rng.standard_normal(img.shape, dtype=np.float32) * noise
    out = Image.fromarray(np.clip(img * 255.0, 0, 255).astype(np.uint8), mode="L")
    if blur > 0:
        out = out.filter(ImageFilter.GaussianBlur(blur))
    return np.asarray(out)


def finish_rgb(img: np.ndarray, rng: np.random.Generator, noise: float = 0.015, blur: float = 0.7) -> np.ndarray:
    """(S, S, 3) float image in 0..1 -> uint8 RGB with noise and blur."""
    img = img + rng.standard_normal(img.shape[:2], dtype=np.float32)[..., None] * noise
    out = Image.fromarray(np.clip(img * 255.0, 0, 255).astype(np.uint8), mode="RGB")
    if blur > 0:
        out = out.filter(ImageFilter.GaussianBlur(blur))
    return np.asarray(out)


class Canvas:
    """A float image plus the named masks painted on it.

    Painting a structure removes its pixels from every other mask except its ``parent``
    (a lesion stays part of its organ, a kidney cuts into the liver it overlaps), so each
    mask is exactly the pixels that show that structure.
    """

    def __init__(self, size: int, background: float | tuple[float, float, float] = 0.0):
        self.size = size
        shape = (size, size) if isinstance(background, (int, float)) else (size, size, 3)
        self.image = np.empty(shape, dtype=np.float32)
        self.image[...] = background
        self.masks: dict[str, np.ndarray] = {}

    def paint(self, mask: np.ndarray, value: float | tuple[float, ...] | np.ndarray,
              name: str | None = None, parent: str | None = None) -> np.ndarray:
        if isinstance(value, np.ndarray) and value.shape[:2] == mask.shape:
            self.image[mask] = value[mask]
        else:
            self.image[mask] = value
        if name is not None:
            for other, m in self.masks.items():
                if other != parent:
                    m &= ~mask
            self.masks[name] = self.masks.get(name, np.zeros_like(mask)) | mask
        return mask


def save_png(array: np.ndarray, path, compress_level: int = 1) -> None:
    """Write uint8 (S, S) or (S, S, 3); bool masks are written 0/255. Level 1: fast, still lossless."""
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    Image.fromarray(array).save(path, format="PNG", compress_level=compress_level)
