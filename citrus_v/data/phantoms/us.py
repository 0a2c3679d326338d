"""Renal ultrasound phantom: a sector image with speckle, a kidney, and an anechoic cyst.

The kidney lies horizontally with its upper pole on the image's left (longitudinal view);
the cyst sits in the upper or lower pole and shows posterior acoustic enhancement.
"""

from __future__ import annotations

import numpy as np

from .common import Canvas, ModalitySpec, Phantom, _axes, blob, finish_gray, smooth_noise, wobble

SMALL_R, LARGE_R = (0.04, 0.05), (0.075, 0.09)


def _sector(size: int) -> np.ndarray:
    """(S, S) bool fan: apex above the image, +-38 degrees, radius 0.25..1.1."""
    xs, ys = _axes(size)
    dx, dy = xs - 0.5, ys + 0.1
    r = np.sqrt(dx * dx + dy * dy)
    ang = np.abs(np.arctan2(dx, dy))
    return (r > 0.25) & (r < 1.1) & (ang < np.deg2rad(38))


def render(rng: np.random.Generator, size: int, present: bool, side: int, large: bool) -> Phantom:
    j = lambda s: rng.uniform(-s, s)  # noqa: E731
    fan = _sector(size)
    cv = Canvas(size, 0.0)
    xs, ys = _axes(size)
    depth_gain = 1.0 - 0.35 * ys  # attenuation with depth, (S, 1)
    cv.paint(fan, np.broadcast_to(0.38 * depth_gain, (size, size)))
    kx, ky = 0.5 + j(0.02), 0.56 + j(0.03)
    tilt = j(0.15)
    kidney = blob(size, kx, ky, 0.28, 0.15, tilt, wobble(rng, 0.03)) & fan
    cv.paint(kidney, 0.25, "kidney")
    cv.paint(blob(size, kx, ky, 0.15, 0.05, tilt, wobble(rng, 0.08)) & kidney, 0.75)  # echogenic sinus
    finding = None
    cyst = None
    if present:
        lo, hi = LARGE_R if large else SMALL_R
        r = rng.uniform(lo, hi)
        # side 0 = upper pole = image left along the tilted long axis
        off = (-1 if side == 0 else 1) * rng.uniform(0.13, 0.16)
        cx, cy = kx + off * np.cos(tilt), ky + off * np.sin(tilt) + j(0.02)
        cyst = blob(size, cx, cy, r, r * rng.uniform(0.85, 1.0), j(1.0)) & kidney
        below = blob(size, cx, cy + 2.2 * r, r * 0.9, 1.4 * r) & fan & ~cyst
        cv.image[below] += 0.15  # posterior acoustic enhancement (texture only)
        cv.paint(cyst, 0.02, "cyst", parent="kidney")
        finding = "cyst"
    # multiplicative speckle: fine granular noise blurred slightly
    speckle = 0.55 + rng.random((size, size), dtype=np.float32) * 0.9
    img = cv.image * speckle + smooth_noise(rng, size, 8) * 0.04 * fan
    img[~fan] = 0.0
    return Phantom(finish_gray(img, rng, noise=0.01, blur=0.8), cv.masks, finding,
                   {"present": present, "side": side, "large": large})


SPEC = ModalitySpec(
    modality="us",
    name="ultrasound",
    phrase="a longitudinal ultrasound image of the kidney",
    finding="cyst",
    appearance="anechoic",
    locations=("upper", "lower"),
    location_question="Is the cyst in the upper or the lower pole?",
    location_phrase="in the {loc} pole of the kidney",
    organs=("kidney",),
    normal_text="The kidney has normal size and echogenicity.",
    render=render,
)
