"""Interactive refinement through a loaded Predictor: clicks / a box on an image, with or without text.

``refine(predictor, image, points=[(x, y, label)], box=[x1, y1, x2, y2], prompt=None)``:

- no prompt: SAM2-style, the clicks / box alone produce the mask;
- with a prompt: the model answers it as usual and, if it emits [SEG], the ``seg_index``-th
  projected [SEG] embedding goes into the SAME prompt set as the clicks, so the clicks correct
  the text-prompted mask (positive clicks add, negative clicks remove);
- ``mask_input``: the previous mask's (256, 256) logits or a bool mask at the image size, fed
  back as SAM's dense prompt (what SAM2 tools do between two clicks).

Coordinates are ORIGINAL image pixels (x right, y down); the result is a ``Prediction`` whose one
mask is at the original size, like ``Predictor.predict``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from citrus_v.data.image_processing import sam_preprocess
from citrus_v.infer.masks import logits_to_masks
from citrus_v.infer.types import Mask, Prediction
from citrus_v.model.prompting import check_prompts, decode_with_prompts, seg_embeddings, to_sam_coords

Point = tuple[float, float, int]


def mask_to_logits(mask: np.ndarray, size: int = 256, magnitude: float = 10.0) -> torch.Tensor:
    """A bool (H, W) mask -> (size, size) pseudo-logits (+magnitude inside, -magnitude outside)."""
    from PIL import Image

    small = Image.fromarray(np.asarray(mask, bool).astype(np.uint8) * 255).resize((size, size), Image.NEAREST)
    return torch.from_numpy((np.asarray(small) > 127).astype(np.float32) * 2 * magnitude - magnitude)


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
    from citrus_v.infer.generation import generate_sequences

    (rgb,) = predictor.load_images([image] if not isinstance(image, list) else image[:1], "refine")
    orig_hw = (int(rgb.shape[0]), int(rgb.shape[1]))
    check_prompts(points, box, orig_hw, where="refine")
    text = prompt is not None and prompt.strip() != ""
    if not points and box is None and not text:
        raise ValueError("refine: give --point/--box (points=/box=) or a text prompt")

    model = predictor.model
    sam_size = model.config.segmenter.image_size
    answer = raw_text = ""
    reasoning = None
    text_embedding = None
    n_generated, mean_prob = 0, None
    if text:
        enc = predictor._encode([rgb], prompt, where="refine")
        gen = generate_sequences(
            model, predictor._left_padded([enc]), predictor.settings, predictor.eos_token_id, predictor.pad_token_id
        )[0]
        n_generated, mean_prob = len(gen.ids), gen.mean_token_prob
        raw_text = predictor.tokenizer.decode(gen.ids, skip_special_tokens=False)
        from citrus_v.infer.text import split_reasoning

        reasoning, answer = split_reasoning(raw_text)
        n_seg = gen.ids.count(predictor.seg_token_id)
        if n_seg:
            if not 0 <= seg_index < n_seg:
                raise ValueError(f"refine: seg_index {seg_index} but the answer has {n_seg} [SEG] token(s)")
            ids = torch.tensor([enc.input_ids + gen.ids], device=predictor.device)  # (1, L)
            images = predictor._images_of([enc])
            text_embedding = seg_embeddings(model, ids, torch.ones_like(ids), **images)[seg_index]  # (C,)
        sam_image = enc.sam_images[:1]  # (1, 3, S, S)
    else:
        sam_image = sam_preprocess(rgb, sam_size, model.config.segmenter.pixel_norm)[None]  # (1, 3, S, S)
    if not points and box is None and text_embedding is None:
        # text alone and the model did not ask for a mask: nothing to segment with
        return Prediction(answer=answer, raw_text=raw_text, reasoning=reasoning, mean_token_prob=mean_prob,
                          num_generated_tokens=n_generated)  # fmt: skip

    param = next(model.segmenter.parameters())  # the segmenter's device and dtype
    features = model.segmenter.encode(sam_image.to(param.device, param.dtype))
    pts = lbl = bx = None
    if points:
        pts = torch.from_numpy(to_sam_coords([(p[0], p[1]) for p in points], orig_hw, sam_size)).float()  # (N, 2)
        lbl = torch.tensor([int(p[2]) for p in points], dtype=torch.long)  # (N,)
    if box is not None:
        bx = torch.from_numpy(to_sam_coords([box[:2], box[2:]], orig_hw, sam_size)).float().reshape(4)  # (4,)
    dense = None
    if mask_input is not None:
        dense = mask_input if isinstance(mask_input, torch.Tensor) else mask_to_logits(mask_input)
        if dense.ndim != 2:
            raise ValueError(f"refine: mask_input must be 2-D (logits or a mask), got shape {tuple(dense.shape)}")
    logits, iou = decode_with_prompts(
        model.segmenter, features, points_sam=pts, point_labels=lbl, box_sam=bx,
        text_embedding=text_embedding, mask_input=dense, multimask=multimask,
    )  # fmt: skip
    mask = logits_to_masks(logits, orig_hw)[0]  # (H, W) bool
    return Prediction(
        answer=answer,
        raw_text=raw_text,
        reasoning=reasoning,
        masks=[Mask(mask=mask, score=float(iou[0]), label="refined")],
        mean_token_prob=mean_prob,
        num_generated_tokens=n_generated,
    )


def refine_volume_slice(
    predictor,
    segmentation,  # citrus_v.volume.inference.VolumeSegmentation
    index: int,
    *,
    points: Sequence[Point] | None = None,
    box: Sequence[float] | None = None,
    prompt: str | None = None,
    structure: int = 0,
    window=None,
) -> Prediction:
    """Refine ``structure`` on slice ``index`` of a segmented volume in place; returns the slice's Prediction.

    Coordinates are pixels of the slice PICTURE (``slicing.slice_images``: radiological view), the
    same picture the montage and a viewer show. The slice's current mask (if any) is fed back as
    the dense prompt, so a click corrects it rather than starting over.
    """
    from citrus_v.volume.slicing import slice_images

    (picture,) = slice_images(segmentation.volume, segmentation.axis, [index], window)
    previous = segmentation.slice_mask(structure, index)
    pred = refine(
        predictor, picture, points=points, box=box, prompt=prompt, seg_index=structure if prompt else 0,
        mask_input=previous if previous.any() else None,
    )  # fmt: skip
    if pred.masks:
        segmentation.set_slice(structure, index, pred.masks[0].mask)
    return pred
