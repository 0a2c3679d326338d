"""Colour photo phantoms: colonoscopy frames with polyps, and dermoscopy-like skin lesions."""

from __future__ import annotations

import numpy as np

from .common import Canvas, ModalitySpec, Phantom, _axes, blob, finish_rgb, smooth_noise, wobble

POLYP_SMALL, POLYP_LARGE = (0.06, 0.075), (0.11, 0.135)
DERM_SMALL, DERM_LARGE = (0.08, 0.1), (0.15, 0.18)
SKIN_TONES = np.array([[0.93, 0.78, 0.66], [0.85, 0.66, 0.52], [0.72, 0.52, 0.38], [0.96, 0.84, 0.76]], np.float32)


def render_endoscopy(rng: np.random.Generator, size: int, present: bool, side: int, large: bool) -> Phantom:
    j = lambda s: rng.uniform(-s, s)  # noqa: E731
    xs, ys = _axes(size)
    lx, ly = 0.5 + j(0.08), 0.5 + j(0.08)
    dist = np.sqrt((xs - lx) ** 2 + (ys - ly) ** 2)  # (S, S)
    # mucosa brightens away from the dark lumen (the scope's light falls off with depth)
    shade = np.clip(dist * 2.2, 0.25, 1.0)[..., None]
    base = np.array([0.88, 0.45, 0.38], np.float32) + rng.uniform(-0.04, 0.04, 3).astype(np.float32)
    tex = smooth_noise(rng, size, 14)[..., None] * np.array([0.08, 0.05, 0.05], np.float32)
    cv = Canvas(size, (0.0, 0.0, 0.0))
    cv.image[...] = base * shade + tex
    lumen = blob(size, lx, ly, 0.1 + j(0.02), 0.09 + j(0.02), j(1.0), wobble(rng, 0.1))
    cv.paint(lumen, np.array([0.12, 0.04, 0.04], np.float32), "lumen")
    finding = None
    if present:
        lo, hi = POLYP_LARGE if large else POLYP_SMALL
        r = rng.uniform(lo, hi)
        # side 0 = left half of the image, kept clear of the lumen
        px = (0.24 if side == 0 else 0.76) + j(0.04)
        py = 0.5 + j(0.2)
        polyp = blob(size, px, py, r, r * rng.uniform(0.8, 1.0), j(1.0), wobble(rng, 0.05))
        d = np.sqrt((xs - px) ** 2 + (ys - py) ** 2) / r  # dome shading, (S, S)
        dome = np.array([1.0, 0.72, 0.62], np.float32) * (1.05 - 0.35 * np.clip(d, 0, 1))[..., None]
        cv.paint(polyp, dome, "polyp")
        spec = blob(size, px - r * 0.3, py - r * 0.35, r * 0.15, r * 0.1) & polyp
        cv.image[spec] = 1.0  # specular highlight
        finding = "polyp"
    fov = blob(size, 0.5, 0.5, 0.53, 0.53)  # round field of view, dark corners
    cv.image[~fov] = 0.0
    for m in cv.masks.values():
        m &= fov
    return Phantom(finish_rgb(cv.image, rng), cv.masks, finding, {"present": present, "side": side, "large": large})


def render_derm(rng: np.random.Generator, size: int, present: bool, side: int, large: bool) -> Phantom:
    j = lambda s: rng.uniform(-s, s)  # noqa: E731
    skin = SKIN_TONES[rng.integers(len(SKIN_TONES))] + rng.uniform(-0.03, 0.03, 3).astype(np.float32)
    cv = Canvas(size, (0.0, 0.0, 0.0))
    cv.image[...] = skin + smooth_noise(rng, size, 16)[..., None] * 0.06
    finding = None
    if present:
        lo, hi = DERM_LARGE if large else DERM_SMALL
        r = rng.uniform(lo, hi)
        cx, cy = (0.3 if side == 0 else 0.7) + j(0.05), 0.5 + j(0.15)
        lesion = blob(size, cx, cy, r, r * rng.uniform(0.75, 1.0), j(1.0), wobble(rng, 0.12, 4))
        brown = np.array([0.42, 0.25, 0.15], np.float32) * rng.uniform(0.7, 1.1)
        cv.paint(lesion, brown + smooth_noise(rng, size, 12)[..., None] * 0.12, "lesion")
        core = blob(size, cx + j(r * 0.2), cy + j(r * 0.2), r * 0.45, r * 0.4) & lesion
        cv.image[core] *= 0.6  # darker pigment network centre
        finding = "lesion"
    # a few hairs: thin dark straight strokes, texture only
    xs, ys = _axes(size)
    for _ in range(rng.integers(0, 4)):
        a, b, c = rng.normal(), rng.normal(), rng.uniform(-0.5, 0.5)
        n = np.hypot(a, b)
        cv.image[np.abs((a * (xs - 0.5) + b * (ys - 0.5)) / n - c) < 0.004] *= 0.35
    vign = blob(size, 0.5, 0.5, 0.62, 0.62)  # dermatoscope's circular vignette
    cv.image[~vign] *= 0.15
    return Phantom(finish_rgb(cv.image, rng, blur=0.6), cv.masks, finding, {"present": present, "side": side, "large": large})


ENDOSCOPY = ModalitySpec(
    modality="endoscopy",
    name="endoscopy",
    phrase="a colonoscopy image",
    finding="polyp",
    appearance="raised",
    locations=("left", "right"),
    location_question="Is the polyp on the left or the right side?",
    location_phrase="on the {loc} side",
    organs=("lumen",),
    normal_text="The colonic mucosa appears normal.",
    render=render_endoscopy,
)

DERM = ModalitySpec(
    modality="derm",
    name="dermoscopy",
    phrase="a dermoscopy image of the skin",
    finding="lesion",
    appearance="pigmented",
    locations=("left", "right"),
    location_question="Is the lesion on the left or the right side?",
    location_phrase="on the {loc} side",
    organs=(),
    normal_text="The skin appears normal.",
    render=render_derm,
)
