"""Chest X-ray phantom (PA view): dark lungs, bright mediastinum and heart, ribs, a nodule.

The patient's right lung is on the image's left. The nodule is a bright round opacity.
"""

from __future__ import annotations

import numpy as np

from .common import Canvas, ModalitySpec, Phantom, _axes, blob, finish_gray, smooth_noise, wobble

SMALL_R, LARGE_R = (0.035, 0.045), (0.065, 0.08)


def render(rng: np.random.Generator, size: int, present: bool, side: int, large: bool) -> Phantom:
    j = lambda s: rng.uniform(-s, s)  # noqa: E731
    cv = Canvas(size, 0.05)
    cv.paint(blob(size, 0.5, 0.6 + j(0.02), 0.47, 0.55), 0.62)  # torso soft tissue
    rl = blob(size, 0.31 + j(0.015), 0.46 + j(0.02), 0.14, 0.3 + j(0.02), 0.05, wobble(rng, 0.03))
    ll = blob(size, 0.69 + j(0.015), 0.46 + j(0.02), 0.13, 0.29 + j(0.02), -0.05, wobble(rng, 0.03))
    xs, ys = _axes(size)
    # ribs: faint horizontal bands over the lungs (texture only, not a structure)
    ribs = 0.05 * (np.sin(ys * (60 + j(6)) + xs * 0.0) > 0.6)
    lung_val = 0.18 + ribs + smooth_noise(rng, size, 10) * 0.06
    cv.paint(rl, lung_val, "right lung")
    cv.paint(ll, lung_val, "left lung")
    cv.paint(blob(size, 0.5, 0.45, 0.05, 0.45), 0.78)  # mediastinum and spine
    cv.paint(blob(size, 0.57 + j(0.02), 0.63 + j(0.02), 0.13, 0.11, -0.3, wobble(rng, 0.03)), 0.8, "heart")
    finding = None
    if present:
        lung = ("right lung", "left lung")[side]
        lo, hi = LARGE_R if large else SMALL_R
        r = rng.uniform(lo, hi)
        ys_, xs_ = np.nonzero(cv.masks[lung])
        cx = xs_.mean() / size + j(0.03)
        cy = ys_.mean() / size - 0.06 + j(0.06)  # upper-to-mid zone, clear of the heart
        nod = blob(size, cx, cy, r, r * rng.uniform(0.9, 1.0), wobble=wobble(rng, 0.04)) & cv.masks[lung]
        cv.paint(nod, 0.62, "nodule", parent=lung)
        finding = "nodule"
    return Phantom(finish_gray(cv.image, rng, blur=0.9), cv.masks, finding, {"present": present, "side": side, "large": large})


SPEC = ModalitySpec(
    modality="xray",
    name="X-ray",
    phrase="a frontal chest X-ray",
    finding="nodule",
    appearance="round",
    locations=("right", "left"),
    location_question="Is the nodule in the right or the left lung?",
    location_phrase="in the {loc} lung",
    organs=("right lung", "left lung", "heart"),
    normal_text="The lungs are clear and the heart size is normal.",
    render=render,
)
