"""The Predictor: load a model once, then ``predict(images, prompt) -> Prediction``.

One request goes through five steps:

1. encode: images are read (PNG/JPEG/DICOM/NIfTI slice -> HxWx3 uint8) and the prompt becomes
   ChatML with expanded image pads (``ChatTemplate.encode_prompt``);
2. generate: the MLLM's own ``generate`` (KV cache, greedy or sampling, stop on ``<|im_end|>``)
   on a LEFT-padded batch, keeping each emitted token's probability;
3. segment: if any row emitted ``[SEG]``, ONE teacher-forced pass over prompt + generated ids
   (``CitrusV.segment``) gives one 256x256 logit map and one predicted IoU per ``[SEG]``;
4. read out: answer / reasoning / boxes (mapped to original pixels) / masks (upsampled to the
   original size) / report;
5. tighten boxes (``tighten_boxes=True``, the default): each written box prompts the segmenter,
   and its outline's bounding box replaces it (``infer/box_tightening.py``; the written box stays
   in ``Box.text_bbox``).

The published code regenerates text to get the ``[SEG]`` hidden states; we do not: step 3
reads them from a single forward over the ids step 2 produced.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from citrus_v.config import CitrusVConfig
from citrus_v.infer.generation import GeneratedSequence, GenerationSettings, generate_sequences
from citrus_v.infer.masks import logits_to_masks
from citrus_v.infer.text import parse_report, split_reasoning
from citrus_v.infer.types import Box, Mask, Prediction

ImageInput = str | os.PathLike | np.ndarray | Image.Image
Request = tuple[Sequence[ImageInput] | ImageInput, str]

SEG_TOKEN = "[SEG]"


def default_model_dir() -> Path:
    """``citrus_v/assets/default``: the embedded default model shipped inside the package."""
    return Path(__file__).resolve().parents[1] / "assets" / "default"


@dataclass
class _Encoded:
    """One request after encoding: its prompt ids and image tensors, plus what read-out needs."""

    input_ids: list[int]
    pixel_values: torch.Tensor | None  # (P, C) patches of all images of the request
    image_grid_thw: torch.Tensor | None  # (n_img, 3)
    sam_images: torch.Tensor | None  # (n_img, 3, S, S)
    original_sizes: list[tuple[int, int]]  # (H, W) per image
    resized_sizes: list[tuple[int, int]]  # (H, W) per image after the processor's smart resize


class Predictor:
    """Inference with a loaded :class:`~citrus_v.model.citrus_v.CitrusV`.

    >>> predictor = Predictor.from_pretrained("runs/tiny")            # doctest: +SKIP
    >>> pred = predictor.predict(["ct.dcm"], "Please segment the liver.")  # doctest: +SKIP
    >>> pred.answer, pred.masks[0].mask.shape, pred.masks[0].score   # doctest: +SKIP
    ('Sure, it is [SEG].', (512, 512), 0.93)
    """

    def __init__(
        self,
        model,
        tokenizer,
        template,
        settings: GenerationSettings | None = None,
        window: str | None = None,
        tighten_boxes: bool = True,
    ):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.template = template
        self.settings = settings or GenerationSettings()
        self.window = window  # DICOM/NIfTI display window preset used when reading files
        self.tighten_boxes = tighten_boxes  # step 5: the segmenter tightens written boxes
        tokens = model.config.tokens
        self.eos_token_id = tokens.eos_token_id
        self.pad_token_id = tokens.pad_token_id
        self.seg_token_id = tokens.seg_token_id

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike | None = None,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        settings: GenerationSettings | None = None,
        window: str | None = None,
        config: CitrusVConfig | None = None,
        tighten_boxes: bool = True,
    ) -> Predictor:
        """Load a model folder: ours (config.json + model.safetensors + tokenizer files) or the
        published Citrus-V checkpoint layout (Qwen2.5-VL config + sharded safetensors). ``None``
        loads the embedded default model from ``citrus_v/assets/default``. ``config``, when given,
        must agree with the folder's (for a published folder it supplies the SAM2 shapes).
        ``tighten_boxes=False`` returns boxes exactly as the model wrote them.
        """
        from citrus_v.model.loading import load_model_and_tokenizer

        model_dir = default_model_dir() if path is None else Path(path)
        if path is None and not (model_dir / "config.json").is_file():
            raise FileNotFoundError(
                f"the embedded default model is missing: {model_dir} has no config.json "
                "(train it with `citrus-v train` or pass --model DIR)"
            )
        model, tokenizer, template = load_model_and_tokenizer(model_dir, device=device, dtype=dtype, config=config)
        return cls(model, tokenizer, template, settings=settings, window=window, tighten_boxes=tighten_boxes)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ------------------------------------------------------------------ public API
    def predict(
        self, images: Sequence[ImageInput] | ImageInput, prompt: str, settings: GenerationSettings | None = None
    ) -> Prediction:
        """Answer ``prompt`` about ``images`` (paths or HxWx3 uint8 arrays; may be empty)."""
        return self.predict_batch([(images, prompt)], settings=settings)[0]

    @torch.no_grad()
    def predict_batch(self, requests: Sequence[Request], settings: GenerationSettings | None = None) -> list[Prediction]:
        """Predict several requests in one generation call (left padding).

        Greedy decoding gives the same tokens as one-by-one calls (tested). Every row keeps
        its own images; the rows that emit ``[SEG]`` share ONE teacher-forced segment pass.
        """
        if not requests:
            return []
        settings = settings or self.settings
        encoded = [self._encode(images, prompt, where=f"request {i}") for i, (images, prompt) in enumerate(requests)]
        if settings.fast:  # hook for the fast greedy path (citrus_v/infer/fast.py, issue 8)
            from citrus_v.infer.fast import predict_rows_fast

            generated, masks = predict_rows_fast(self, encoded, settings)
        else:
            generated = generate_sequences(
                self.model, self._left_padded(encoded), settings, self.eos_token_id, self.pad_token_id
            )
            masks = self._segment(encoded, generated)
        predictions = [self._read_out(enc, gen, row_masks) for enc, gen, row_masks in zip(encoded, generated, masks)]
        if self.tighten_boxes:
            self._tighten(encoded, predictions)
        return predictions

    def refine(self, image: ImageInput, **prompts) -> Prediction:
        """Clicks / a box (and optionally a text prompt) on one image -> one mask (issue 7).

        ``points=[(x, y, label)]`` (1 add, 0 remove), ``box=[x1, y1, x2, y2]`` in original pixels,
        ``prompt=`` text whose [SEG] joins the clicks, ``mask_input=`` the previous mask.
        Implemented in :func:`citrus_v.volume.interactive.refine`.
        """
        from citrus_v.volume.interactive import refine

        return refine(self, image, **prompts)

    # ------------------------------------------------------------------ step 1: encode
    def load_images(self, images: Sequence[ImageInput] | ImageInput, where: str = "images") -> list[np.ndarray]:
        """Paths are read with the predictor's window; arrays / PIL images become (H, W, 3) uint8."""
        from citrus_v.data.image_processing import to_rgb_array
        from citrus_v.data.medical_io import load_image

        if isinstance(images, (str, os.PathLike, np.ndarray, Image.Image)):
            images = [images]
        arrays = []
        for j, image in enumerate(images):
            try:
                if isinstance(image, (str, os.PathLike)):
                    arrays.append(load_image(image, window=self.window))
                else:
                    arrays.append(to_rgb_array(image))
            except (ValueError, TypeError) as err:
                raise ValueError(f"{where}, image {j}: {err}") from err
        return arrays

    def _encode(self, images: Sequence[ImageInput] | ImageInput, prompt: str, where: str) -> _Encoded:
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"{where}: the prompt is empty")
        if SEG_TOKEN in prompt:
            # every [SEG] in the ids becomes a mask query; one in the prompt would steal a mask
            raise ValueError(f"{where}: the prompt contains the reserved token {SEG_TOKEN}")
        arrays = self.load_images(images, where)
        example = self.template.encode_prompt(arrays, prompt)
        has_images = bool(arrays)
        return _Encoded(
            input_ids=example.input_ids.tolist(),
            pixel_values=example.pixel_values if has_images else None,
            image_grid_thw=example.image_grid_thw if has_images else None,
            sam_images=example.sam_images if has_images else None,
            original_sizes=[(int(h), int(w)) for h, w in example.orig_hw],
            resized_sizes=[(int(h), int(w)) for h, w in example.resized_hw],
        )

    def _images_of(self, rows: Sequence[_Encoded]) -> dict[str, torch.Tensor]:
        with_images = [r for r in rows if r.pixel_values is not None]
        if not with_images:
            return {}
        dtype = next(self.model.parameters()).dtype
        return {
            "pixel_values": torch.cat([r.pixel_values for r in with_images]).to(self.device, dtype),  # (P_total, C)
            "image_grid_thw": torch.cat([r.image_grid_thw for r in with_images]).to(self.device),  # (n_img, 3)
        }

    def _left_padded(self, rows: Sequence[_Encoded]) -> dict[str, torch.Tensor]:
        length = max(len(r.input_ids) for r in rows)
        ids = torch.full((len(rows), length), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), length), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, length - len(r.input_ids) :] = torch.tensor(r.input_ids)
            mask[i, length - len(r.input_ids) :] = 1
        return {"input_ids": ids.to(self.device), "attention_mask": mask.to(self.device), **self._images_of(rows)}

    # ------------------------------------------------------------------ step 3: segment
    def _segment(self, rows: Sequence[_Encoded], generated: Sequence[GeneratedSequence]) -> list[list[Mask]]:
        """ONE teacher-forced pass over prompt + generated ids of every row that emitted [SEG].

        The batch is RIGHT-padded, as in training: causal attention keeps the pads out of the
        [SEG] hidden states. The i-th [SEG] (row-major) pairs with the i-th mask.
        """
        out: list[list[Mask]] = [[] for _ in rows]
        seg_rows = [i for i, g in enumerate(generated) if self.seg_token_id in g.ids]
        if not seg_rows:
            return out
        for i in seg_rows:
            if rows[i].sam_images is None:
                raise ValueError(f"request {i}: the model emitted {SEG_TOKEN} but the request has no image to segment")
        sequences = [rows[i].input_ids + generated[i].ids for i in seg_rows]
        length = max(len(s) for s in sequences)
        ids = torch.full((len(sequences), length), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(sequences), length), dtype=torch.long)
        seg_image_index, seg_owner, first_image = [], [], 0
        for k, (i, seq) in enumerate(zip(seg_rows, sequences)):
            ids[k, : len(seq)] = torch.tensor(seq)
            mask[k, : len(seq)] = 1
            n_seg = seq.count(self.seg_token_id)
            seg_image_index += [first_image] * n_seg  # a row's [SEG]s segment its first image
            seg_owner += [i] * n_seg
            first_image += rows[i].sam_images.shape[0]
        chosen = [rows[i] for i in seg_rows]
        dtype = next(self.model.parameters()).dtype
        mask_logits, iou_scores = self.model.segment(
            input_ids=ids.to(self.device),
            attention_mask=mask.to(self.device),
            **self._images_of(chosen),
            sam_images=torch.cat([r.sam_images for r in chosen]).to(self.device, dtype),  # (n_img, 3, S, S)
            seg_image_index=torch.tensor(seg_image_index, dtype=torch.long, device=self.device),
        )
        if mask_logits.shape[0] != len(seg_owner) or iou_scores.shape[0] != len(seg_owner):
            raise ValueError(
                f"segment returned {mask_logits.shape[0]} masks and {iou_scores.shape[0]} scores "
                f"for {len(seg_owner)} [SEG] tokens"
            )
        for n, owner in enumerate(seg_owner):
            size = rows[owner].original_sizes[0]
            mask_np = logits_to_masks(mask_logits[n : n + 1], size)[0]  # (H, W) bool
            out[owner].append(Mask(mask=mask_np, score=float(iou_scores[n]), image_index=0))
        return out

    # ------------------------------------------------------------------ step 4: read out
    def _read_out(self, enc: _Encoded, gen: GeneratedSequence, masks: list[Mask]) -> Prediction:
        raw_text = self.tokenizer.decode(gen.ids, skip_special_tokens=False)
        reasoning, answer = split_reasoning(raw_text)
        boxes = self._boxes(answer, enc)
        return Prediction(
            answer=answer,
            raw_text=raw_text,
            reasoning=reasoning,
            boxes=boxes,
            masks=masks,
            report=parse_report(answer, boxes),
            mean_token_prob=gen.mean_token_prob,
            num_generated_tokens=len(gen.ids),
        )

    # ------------------------------------------------------------------ step 5: tighten boxes
    def _tighten(self, rows: Sequence[_Encoded], predictions: Sequence[Prediction]) -> None:
        """The segmenter outlines what each written box frames; the outline's box replaces it.

        One image-encoder pass over the first image of every row that has boxes, then one
        box-prompted decode per box. The report's boxes are the same objects, so they follow.
        """
        from citrus_v.infer.box_tightening import tighten_boxes

        todo = [i for i, p in enumerate(predictions) if p.boxes and rows[i].sam_images is not None]
        if not todo:
            return
        segmenter = self.model.segmenter
        param = next(segmenter.parameters())  # the segmenter's device and dtype
        sam_images = torch.cat([rows[i].sam_images[:1] for i in todo]).to(param.device, param.dtype)  # (n, 3, S, S)
        features = segmenter.encode(sam_images)
        sam_size = self.model.config.segmenter.image_size
        for k, i in enumerate(todo):
            one = features.select(torch.tensor([k], device=param.device))
            tighten_boxes(segmenter, one, predictions[i].boxes, rows[i].original_sizes[0], sam_size)

    def _boxes(self, answer: str, enc: _Encoded) -> list[Box]:
        """Boxes in the answer (resized-image pixels) mapped to the FIRST image's original pixels."""
        from citrus_v.data.boxes import parse_boxes, to_original

        if not enc.original_sizes:
            return []
        resized, original = enc.resized_sizes[0], enc.original_sizes[0]
        boxes = []
        for bbox, label in parse_boxes(answer):
            x1, y1, x2, y2 = to_original(bbox, orig_hw=original, resized_hw=resized)
            boxes.append(Box(bbox=[x1, y1, x2, y2], label=label, image_index=0))
        return boxes
