"""Interactive refinement of one image: clicks / a box, with or without text (``Predictor.refine``).

``refine(predictor, image, points=[(x, y, label)], box=[x1, y1, x2, y2], prompt=None)``:

- no prompt: SAM2-style, the clicks / box alone produce the mask;
- with a prompt: the model answers it as usual and, if it emits [SEG], the ``seg_index``-th
  projected [SEG] embedding goes into the SAME prompt set as the clicks, so the clicks correct
  the text-prompted mask (positive clicks add, negative clicks remove);
- ``mask_input``: the previous mask's (256, 256) logits or a bool mask at the image size, fed
  back as SAM's dense prompt (what SAM2 tools do between two clicks).

``image`` may be an ``ImageSession`` (``Predictor.image_session``): its features, computed once,
serve every click. Coordinates are ORIGINAL image pixels (x right, y down); the result is a
``Prediction`` whose one mask is at the original size, like ``Predictor.predict``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from citrus_v.infer.generation import generate_sequences
from citrus_v.infer.session import Point
from citrus_v.infer.text import split_reasoning
from citrus_v.infer.types import Mask, Prediction

POINT_LABELS = {0: "negative", 1: "positive"}


def check_prompts(
    points: Sequence[Point] | None,
    box: Sequence[float] | None,
    orig_hw: tuple[int, int],
    where: str = "prompt",
) -> None:
    """Points (x, y, label in {0, 1}) and box [x1, y1, x2, y2] must lie on the image; clear errors otherwise."""
    h, w = orig_hw
    for i, p in enumerate(points or ()):
        if len(p) != 3:
            raise ValueError(f"{where}: point {i} must be (x, y, label), got {tuple(p)}")
        x, y, label = p
        if int(label) not in POINT_LABELS or label != int(label):
            raise ValueError(f"{where}: point {i} label must be 1 (positive) or 0 (negative), got {label}")
        if not (0 <= x < w and 0 <= y < h):
            raise ValueError(f"{where}: point {i} ({x}, {y}) lies outside the {w}x{h} image (x in 0..{w - 1}, y in 0..{h - 1})")
    if box is not None:
        if len(box) != 4:
            raise ValueError(f"{where}: box must be [x1, y1, x2, y2], got {list(box)}")
        x1, y1, x2, y2 = (float(v) for v in box)
        if not (x1 < x2 and y1 < y2):
            raise ValueError(f"{where}: box {list(box)} must have x1 < x2 and y1 < y2")
        if x1 < 0 or y1 < 0 or x2 > w or y2 > h:
            raise ValueError(f"{where}: box {list(box)} reaches outside the {w}x{h} image")


@torch.no_grad()
def refine(
    predictor,  # citrus_v.infer.predictor.Predictor
    image,
    *,
    points: Sequence[Point] | None = None,
    box: Sequence[float] | None = None,
    prompt: str | None = None,
    seg_index: int = 0,
    mask_input: np.ndarray | torch.Tensor | None = None,
    multimask: bool | None = None,
) -> Prediction:
    """One mask for ``image`` from clicks / a box, optionally together with a text prompt's [SEG]."""
    session = predictor.image_session(image[0] if isinstance(image, list) else image, where="refine")
    check_prompts(points, box, session.transforms.orig_hw, where="refine")
    text = prompt is not None and prompt.strip() != ""
    if not points and box is None and not text:
        raise ValueError("refine: give --point/--box (points=/box=) or a text prompt")

    answer = raw_text = ""
    reasoning = None
    seg_embedding = None
    n_generated, mean_prob = 0, None
    if text:
        enc = predictor._encode([session], prompt, where="refine")
        gen = generate_sequences(
            predictor.model, predictor._left_padded([enc]), predictor.settings, predictor.eos_token_id, predictor.pad_token_id
        )[0]
        n_generated, mean_prob = len(gen.ids), gen.mean_token_prob
        raw_text = predictor.tokenizer.decode(gen.ids, skip_special_tokens=False)
        reasoning, answer = split_reasoning(raw_text)
        n_seg = gen.ids.count(predictor.seg_token_id)
        if n_seg:
            if not 0 <= seg_index < n_seg:
                raise ValueError(f"refine: seg_index {seg_index} but the answer has {n_seg} [SEG] token(s)")
            (states,) = predictor._seg_states([enc], [gen])  # (n_seg, H), one teacher-forced pass
            seg_embedding = predictor.model.seg_projector(states)[seg_index]  # (C,)
    if not points and box is None and seg_embedding is None:
        # text alone and the model did not ask for a mask: nothing to segment with
        return Prediction(answer=answer, raw_text=raw_text, reasoning=reasoning, mean_token_prob=mean_prob,
                          num_generated_tokens=n_generated)  # fmt: skip

    logits, iou = session.masks_from_prompts(
        points=points, box=box, seg_embedding=seg_embedding, mask_input=mask_input, multimask=multimask
    )  # (1, 256, 256), (1,)
    mask = session.transforms.masks_to_original(logits)[0]  # (H, W) bool
    return Prediction(
        answer=answer,
        raw_text=raw_text,
        reasoning=reasoning,
        masks=[Mask(mask=mask, score=float(iou[0]), label="refined", low_res=(logits[0] > 0).cpu().numpy())],
        mean_token_prob=mean_prob,
        num_generated_tokens=n_generated,
    )
