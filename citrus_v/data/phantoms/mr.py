"""Brain MR phantom (FLAIR-like axial slice): scalp, skull, brain, dark ventricles, bright tumour.

The patient's left hemisphere is on the image's right (radiological view).
"""

from __future__ import annotations

import numpy as np

from .common import Canvas, ModalitySpec, Phantom, blob, finish_gray, smooth_noise, wobble

SMALL_R, LARGE_R = (0.04, 0.05), (0.08, 0.095)


def render(rng: np.random.Generator, size: int, present: bool, side: int, large: bool) -> Phantom:
    j = lambda s: rng.uniform(-s, s)  # noqa: E731
    cv = Canvas(size, 0.0)
    cx, cy = 0.5 + j(0.02), 0.5 + j(0.02)
    rx, ry = 0.38 + j(0.02), 0.45 + j(0.02)
    cv.paint(blob(size, cx, cy, rx, ry), 0.6)  # scalp
    cv.paint(blob(size, cx, cy, rx - 0.025, ry - 0.025), 0.07)  # skull (dark on MR)
    brain = blob(size, cx, cy, rx - 0.045, ry - 0.045, wobble=wobble(rng, 0.015, 4))
    cv.paint(brain, 0.45 + smooth_noise(rng, size, 12) * 0.08, "brain")
    tilt = 0.25 + j(0.1)
    vent = blob(size, cx - 0.045, cy + j(0.02), 0.035, 0.1, tilt) | blob(size, cx + 0.045, cy + j(0.02), 0.035, 0.1, -tilt)
    cv.paint(vent & brain, 0.12, "ventricles", parent="brain")
    finding = None
    if present:
        lo, hi = LARGE_R if large else SMALL_R
        r = rng.uniform(lo, hi)
        # side 0 = patient's left = image right
        tx = cx + (1 if side == 0 else -1) * rng.uniform(0.17, 0.2)
        ty = cy + j(0.15)
        cv.paint(blob(size, tx, ty, r * 1.6, r * 1.5) & brain & ~cv.masks["ventricles"], 0.62)  # oedema halo
        tumour = blob(size, tx, ty, r, r * rng.uniform(0.85, 1.0), j(1.0), wobble(rng, 0.05)) & brain
        cv.paint(tumour, 0.92, "tumor", parent="brain")
        finding = "tumor"
    return Phantom(finish_gray(cv.image, rng), cv.masks, finding, {"present": present, "side": side, "large": large})


SPEC = ModalitySpec(
    modality="mr",
    name="MRI",
    phrase="an axial FLAIR MRI slice of the brain",
    finding="tumor",
    appearance="hyperintense",
    locations=("left", "right"),
    location_question="Is the tumor in the left or the right hemisphere?",
    location_phrase="in the {loc} hemisphere",
    organs=("brain", "ventricles"),
    normal_text="The brain parenchyma and ventricles appear normal.",
    render=render,
)
