"""Abdominal CT phantom: an axial slice with liver, spleen, kidneys, spine and aorta.

Radiological view: the patient's right is on the image's left. The finding is a hypodense
(dark) lesion in the liver or the spleen; "small" and "large" radii do not overlap, so the
size answer is visible at 224 px.
"""

from __future__ import annotations

import numpy as np

from .common import Canvas, ModalitySpec, Phantom, blob, finish_gray, smooth_noise, wobble

SMALL_R, LARGE_R = (0.035, 0.045), (0.07, 0.085)


def render(rng: np.random.Generator, size: int, present: bool, side: int, large: bool) -> Phantom:
    j = lambda s: rng.uniform(-s, s)  # noqa: E731 - small positional jitter
    cv = Canvas(size, 0.02)  # air
    bx, by = 0.5 + j(0.02), 0.52 + j(0.02)
    brx, bry = 0.44 + j(0.02), 0.36 + j(0.02)
    cv.paint(blob(size, bx, by, brx, bry), 0.33)  # subcutaneous fat
    cv.paint(blob(size, bx, by, brx - 0.035, bry - 0.035, wobble=wobble(rng, 0.02)), 0.47)  # muscle / bowel
    liver = blob(size, 0.33 + j(0.02), 0.45 + j(0.02), 0.16 + j(0.01), 0.2 + j(0.01), j(0.3), wobble(rng))
    cv.paint(liver, 0.64, "liver")
    spleen = blob(size, 0.71 + j(0.02), 0.43 + j(0.02), 0.09, 0.13, 0.3 + j(0.2), wobble(rng, 0.04))
    cv.paint(spleen, 0.6, "spleen")
    ky = 0.67 + j(0.02)
    cv.paint(blob(size, 0.36 + j(0.01), ky, 0.055, 0.075, 0.3), 0.72, "right kidney")
    cv.paint(blob(size, 0.64 + j(0.01), ky, 0.055, 0.075, -0.3), 0.72, "left kidney")
    cv.paint(blob(size, 0.5, 0.74 + j(0.01), 0.06, 0.055), 0.95)  # vertebral body
    cv.paint(blob(size, 0.54, 0.62, 0.025, 0.025), 0.78)  # aorta (contrast)
    finding = None
    if present:
        organ = ("liver", "spleen")[side]
        lo, hi = LARGE_R if large else SMALL_R
        r = rng.uniform(lo, hi) * (0.85 if organ == "spleen" else 1.0)
        ys, xs = np.nonzero(cv.masks[organ])
        # centre the lesion near the organ's middle so it is not clipped away
        cx = xs.mean() / size + j(0.03)
        cy = ys.mean() / size + j(0.04)
        lesion = blob(size, cx, cy, r, r * rng.uniform(0.85, 1.0), j(1.0), wobble(rng, 0.05)) & cv.masks[organ]
        cv.paint(lesion, 0.3, "lesion", parent=organ)
        finding = "lesion"
    img = cv.image + smooth_noise(rng, size, 10) * 0.05
    return Phantom(finish_gray(img, rng), cv.masks, finding, {"present": present, "side": side, "large": large})


SPEC = ModalitySpec(
    modality="ct",
    name="CT",
    phrase="an axial CT slice of the abdomen",
    finding="lesion",
    appearance="hypodense",
    locations=("liver", "spleen"),
    location_question="Is the lesion in the liver or the spleen?",
    location_phrase="in the {loc}",
    organs=("liver", "spleen", "right kidney", "left kidney"),
    normal_text="The liver, spleen and kidneys appear normal.",
    render=render,
)
