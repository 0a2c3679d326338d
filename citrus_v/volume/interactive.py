"""Clicks on one slice of a segmented volume (2-D click refinement itself: ``citrus_v.infer.refine``)."""

from __future__ import annotations

from collections.abc import Sequence

from citrus_v.infer.session import Point, SessionCache
from citrus_v.infer.types import Prediction
from citrus_v.volume.slicing import slice_images


def refine_volume_slice(
    predictor,  # citrus_v.infer.predictor.Predictor
    segmentation,  # citrus_v.volume.inference.VolumeSegmentation
    index: int,
    *,
    points: Sequence[Point] | None = None,
    box: Sequence[float] | None = None,
    prompt: str | None = None,
    structure: int = 0,
    window=None,
    sessions: SessionCache | None = None,
) -> Prediction:
    """Refine ``structure`` on slice ``index`` of a segmented volume in place; returns the slice's Prediction.

    Coordinates are pixels of the slice PICTURE (``slicing.slice_images``: radiological view), the
    same picture the montage and a viewer show. The slice's current mask (if any) is fed back as
    the dense prompt, so a click corrects it rather than starting over. ``sessions``
    (``SessionCache(predictor.image_session)``, kept across calls) lets the clicks on a slice share
    one image-encoder pass.
    """
    (picture,) = slice_images(segmentation.volume, segmentation.axis, [index], window)
    previous = segmentation.slice_mask(structure, index)
    pred = predictor.refine(
        picture if sessions is None else sessions.get(picture), points=points, box=box, prompt=prompt, seg_index=structure if prompt else 0,
        mask_input=previous if previous.any() else None,
    )  # fmt: skip
    if pred.masks:
        segmentation.set_slice(structure, index, pred.masks[0].mask)
    return pred
