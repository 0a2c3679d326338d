"""The Predictor: load a model once, then ``predict(images, prompt) -> Prediction``.

One request goes through five steps:

1. encode: images are read (PNG/JPEG/DICOM/NIfTI slice -> HxWx3 uint8) and the prompt becomes
   ChatML with expanded image pads (``ChatTemplate.encode_prompt``); the first image gets an
   ``ImageSession`` (``infer/session.py``), which encodes it for the segmenter once, on first need;
2. generate: the MLLM's own ``generate`` (KV cache, greedy or sampling, stop on ``<|im_end|>``)
   on a LEFT-padded batch, keeping each emitted token's probability;
3. segment: if any row emitted ``[SEG]``, ONE teacher-forced pass over prompt + generated ids
   (``CitrusV.hidden_states``) gives the ``[SEG]`` states, and the sessions turn them into one
   256x256 logit map and one predicted IoU per ``[SEG]``;
4. read out: answer / reasoning / boxes (mapped to original pixels) / masks (upsampled to the
   original size) / report;
5. tighten boxes (``tighten_boxes``; by default the model folder's choice,
   ``CitrusVConfig.tighten_boxes``: on for ours, off for the published layout): each written box
   prompts the segmenter on the same session's features, and its outline's bounding box replaces
   it (``infer/box_tightening.py``; the written box stays in ``Box.text_bbox``).

The published code regenerates text to get the ``[SEG]`` hidden states; we do not: step 3
reads them from a single forward over the ids step 2 produced (the fast path keeps them while
decoding). Pass ``predictor.image_session(image)`` in place of an image to keep its features
for later requests and clicks on it (as sam2's ``set_image``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from citrus_v.config import CitrusVConfig
from citrus_v.infer.conversation import Conversation
from citrus_v.infer.generation import GeneratedSequence, GenerationSettings, generate_sequences
from citrus_v.infer.session import ImageSession, decode_seg_states, encode_sessions
from citrus_v.infer.text import label_masks, parse_report, split_reasoning
from citrus_v.infer.types import Box, LogitsMask, Mask, Prediction

ImageInput = str | os.PathLike | np.ndarray | Image.Image | ImageSession
Request = tuple[Sequence[ImageInput] | ImageInput, "str | Conversation"]

SEG_TOKEN = "[SEG]"


def default_model_dir() -> Path:
    """``citrus_v/assets/default``: the embedded default model shipped inside the package."""
    return Path(__file__).resolve().parents[1] / "assets" / "default"


# Qwen2.5-VL's grounding markers and Citrus' box tags: text a prompt may hold (``Predictor.reserved_strings``)
GROUNDING_MARKERS = ("<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>", "<|box_end|>", "<bbox>", "</bbox>")


@dataclass
class _Encoded:
    """One request after encoding: its prompt ids and image tensors, and its first image's session
    (the image its [SEG]s segment and its boxes are on)."""

    input_ids: list[int]
    pixel_values: torch.Tensor | None  # (P, C) patches of all images of the request
    image_grid_thw: torch.Tensor | None  # (n_img, 3)
    session: ImageSession | None  # None when the request has no image


def _default_settings(model_dir: Path, settings: GenerationSettings | None, overrides: dict) -> GenerationSettings:
    """``settings``, else the folder's generation_config.json, else greedy; then ``overrides`` field by field."""
    from citrus_v.infer.generation_config import merge_settings, read_generation_config

    base = settings or read_generation_config(model_dir) or GenerationSettings()
    return merge_settings(base, **overrides)


def _as_list(images: Sequence[ImageInput] | ImageInput) -> list[ImageInput]:
    """One image (a path, an array, a PIL image or a session) or several -> a list of them."""
    if isinstance(images, (str, os.PathLike, np.ndarray, Image.Image, ImageSession)):
        return [images]
    return list(images)


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
        tighten_boxes: bool | None = None,
    ):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.template = template
        self.settings = settings or GenerationSettings()
        self.window = window  # DICOM/NIfTI display window preset used when reading files
        # step 5: the segmenter tightens written boxes (None: as the model folder declares)
        self.tighten_boxes = model.config.tighten_boxes if tighten_boxes is None else tighten_boxes
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
        dtype: torch.dtype | str | None = None,
        settings: GenerationSettings | None = None,
        window: str | None = None,
        config: CitrusVConfig | None = None,
        tighten_boxes: bool | None = None,
        generation: dict | None = None,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
    ) -> Predictor:
        """Load a model folder: ours (config.json + model.safetensors + tokenizer files) or the
        published Citrus-V checkpoint layout (Qwen2.5-VL config + sharded safetensors). ``None``
        loads the embedded default model from ``citrus_v/assets/default``. ``config``, when given,
        must agree with the folder's (for a published folder it supplies the SAM2 shapes).
        ``tighten_boxes`` (None: the folder's ``tighten_boxes``) False returns boxes exactly as the
        model wrote them. The weights load straight into ``dtype`` on ``device``; ``min_pixels`` /
        ``max_pixels`` override the folder's image range (``pixel_range`` says which one is used).

        Generation defaults: ``settings`` when given; else the folder's ``generation_config.json``
        (``citrus_v/infer/generation_config.py``), else greedy; ``generation`` (GenerationSettings field
        -> value, None = unset) then replaces single fields, as command-line flags do.
        """
        from citrus_v.model.loading import load_model_and_tokenizer, resolve_model_path

        model_dir = default_model_dir() if path is None else resolve_model_path(path)
        if path is None and not (model_dir / "config.json").is_file():
            raise FileNotFoundError(
                f"the embedded default model is missing: {model_dir} has no config.json "
                "(train it with `citrus-v train` or pass --model DIR)"
            )
        settings = _default_settings(model_dir, settings, generation or {})
        if isinstance(dtype, str):  # "bfloat16", as --dtype spells it
            if not isinstance(getattr(torch, dtype, None), torch.dtype):
                raise ValueError(f"dtype {dtype!r} is not a torch dtype (float32, bfloat16, float16)")
            dtype = getattr(torch, dtype)
        model, tokenizer, template = load_model_and_tokenizer(
            model_dir, device=device, dtype=dtype, config=config, min_pixels=min_pixels, max_pixels=max_pixels
        )
        return cls(model, tokenizer, template, settings=settings, window=window, tighten_boxes=tighten_boxes)

    def save_pretrained(self, directory: str | os.PathLike, dtype: torch.dtype | None = None) -> Path:
        """The whole folder: weights and config, the tokenizer with its chat template, the image
        sizing (preprocessor_config.json) and the generation defaults (generation_config.json), so
        ``Predictor.from_pretrained(directory)`` and transformers' Auto classes load it back."""
        from citrus_v.infer.generation_config import write_generation_config
        from citrus_v.model.loading import write_preprocessor_config

        directory = Path(directory)
        self.model.save_pretrained(directory, dtype=dtype, tokenizer=self.tokenizer)
        write_preprocessor_config(directory, self.template.image_cfg)
        write_generation_config(directory, self.settings)
        return directory

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def pixel_range(self) -> dict[str, int | str]:
        """The ViT's image range in use and where it came from (a flag, a file, a layout default)."""
        cfg = self.template.image_cfg
        return {"min_pixels": cfg.min_pixels, "max_pixels": cfg.max_pixels, "source": cfg.pixel_source}

    # ------------------------------------------------------------------ public API
    def predict(
        self, images: Sequence[ImageInput] | ImageInput, prompt: str, settings: GenerationSettings | None = None
    ) -> Prediction:
        """Answer ``prompt`` about ``images`` (paths or HxWx3 uint8 arrays; may be empty)."""
        return self.predict_batch([(images, prompt)], settings=settings)[0]

    @torch.no_grad()
    def predict_batch(
        self, requests: Sequence[Request], settings: GenerationSettings | None = None, streamer=None
    ) -> list[Prediction]:
        """Predict several requests in one generation call (left padding).

        Greedy decoding gives the same tokens as one-by-one calls (tested). Every row keeps
        its own images; the rows that emit ``[SEG]`` share ONE teacher-forced pass, their images
        one image-encoder call and their [SEG]s one mask-decoder call. ``streamer`` (one request
        only; ``citrus_v.infer.streaming.TokenStreamer``) receives the text while it is generated.
        """
        if not requests:
            return []
        settings = settings or self.settings
        if streamer is not None and (len(requests) != 1 or settings.fast):
            raise ValueError("predict_batch: a streamer takes one request, decoded by generate (fast=False)")
        encoded = [self._encode(images, prompt, where=f"request {i}") for i, (images, prompt) in enumerate(requests)]
        if settings.fast:  # the fast greedy path keeps the [SEG] states while decoding (citrus_v/infer/fast.py)
            from citrus_v.infer.fast import generate_rows_fast

            generated, seg_states = generate_rows_fast(self, encoded, settings)
        else:
            generated = generate_sequences(
                self.model, self._left_padded(encoded), settings, self.eos_token_id, self.pad_token_id, streamer
            )
            seg_states = self._seg_states(encoded, generated)
        masks = self._masks(encoded, seg_states)
        predictions = [self._read_out(enc, gen, row_masks) for enc, gen, row_masks in zip(encoded, generated, masks)]
        for (_, prompt), prediction in zip(requests, predictions):
            if isinstance(prompt, str):  # a mask is named after the structure the prompt asks for
                label_masks(prediction.masks, prompt)
        if self.tighten_boxes:
            self._tighten(encoded, predictions)
        return predictions

    def predict_tiled(
        self, image: ImageInput, prompt: str, tiles: str | int | tuple[int, int] = "auto", **kwargs
    ) -> Prediction:
        """``prompt`` on each tile of a large image, the masks stitched back at the image's size: for
        whole pathology or fundus images, whose nuclei or vessels the model learned on ~300 px tiles.
        ``tiles``: "auto" (tiles of about 300 px), N (N x N) or (rows, cols); ``batch_size``, ``settings``
        and ``progress`` as in :func:`citrus_v.infer.tiling.predict_tiled`, which implements it."""
        from citrus_v.infer.tiling import predict_tiled

        return predict_tiled(self, image, prompt, tiles, **kwargs)

    def refine(self, image: ImageInput, **prompts) -> Prediction:
        """Clicks / a box (and optionally a text prompt) on one image -> one mask (issue 7).

        ``points=[(x, y, label)]`` (1 add, 0 remove), ``box=[x1, y1, x2, y2]`` in original pixels,
        ``prompt=`` text whose [SEG] joins the clicks, ``mask_input=`` the previous mask.
        Implemented in :func:`citrus_v.infer.refine.refine`.
        """
        from citrus_v.infer.refine import refine

        return refine(self, image, **prompts)

    def image_session(self, image: ImageInput, where: str = "image") -> ImageSession:
        """An image the segmenter encodes once (on first need) however many requests and clicks
        follow: pass it to ``predict``/``predict_batch`` in place of the image, and to ``refine``."""
        if isinstance(image, ImageSession):
            return self._own(image, where)
        (rgb,) = self.load_images([image], where)
        processor = self.template.processor  # the segmenter input as requests make it (sam_source)
        return ImageSession(self.model, rgb, sam_image=processor.sam(rgb), resized_hw=processor.resized_hw(*rgb.shape[:2]))

    def _own(self, session: ImageSession, where: str) -> ImageSession:
        if session.model is not self.model:
            raise ValueError(f"{where}: the image session was made for another model")
        return session

    # ------------------------------------------------------------------ step 1: encode
    def load_images(self, images: Sequence[ImageInput] | ImageInput, where: str = "images") -> list[np.ndarray]:
        """Paths are read with the predictor's window; arrays / PIL images become (H, W, 3) uint8."""
        from citrus_v.data.image_processing import to_rgb_array
        from citrus_v.data.medical_io import load_image

        images = _as_list(images)
        arrays = []
        for j, image in enumerate(images):
            try:
                if isinstance(image, ImageSession):
                    rgb = self._own(image, f"{where}, image {j}").rgb
                    if rgb is None:
                        raise ValueError("the image session's pixels were released; pass the image again")
                    arrays.append(rgb)
                elif isinstance(image, (str, os.PathLike)):
                    arrays.append(load_image(image, window=self.window))
                else:
                    arrays.append(to_rgb_array(image))
            except (ValueError, TypeError) as err:
                raise ValueError(f"{where}, image {j}: {err}") from err
        return arrays

    def reserved_strings(self) -> list[str]:
        """The token strings a user's text may not hold: [SEG] and every special or added token of the
        tokenizer (``<|vision_start|>``, ``<|image_pad|>``...). Written in a prompt, each would be read as
        that token, not as text: an [SEG] steals a mask, an image pad breaks the image count. Qwen's
        grounding markers (``<|object_ref_start|>``...) and Citrus' ``<bbox>``/``</bbox>`` are allowed: they
        only mark text, and the templates write them into prompts (a ``<ref-object>`` becomes one in the
        published template; our template leaves a user-turn ``<bbox>`` as written)."""
        if not hasattr(self, "_reserved"):
            found = {SEG_TOKEN, *getattr(self.tokenizer, "all_special_tokens", [])}
            added = getattr(self.tokenizer, "added_tokens_decoder", {}) or {}
            found.update(str(getattr(token, "content", token)) for token in added.values())
            found -= set(GROUNDING_MARKERS)
            self._reserved = sorted((t for t in found if t), key=lambda t: (-len(t), t))  # longest first
        return self._reserved

    def check_prompt(self, prompt: str, where: str = "prompt") -> None:
        """ValueError naming the first reserved token string the prompt holds (see ``reserved_strings``)."""
        for token in self.reserved_strings():
            if token in prompt:
                raise ValueError(f"{where}: the prompt contains the reserved token {token}")

    def check_image_size(self, height: int, width: int, where: str = "image") -> None:
        """ValueError when the ViT cannot take an image of this size (e.g. an aspect ratio over 200)."""
        try:
            self.template.processor.resized_hw(height, width)
        except ValueError as err:
            raise ValueError(f"{where}: {height}x{width} cannot be resized for the model ({err})") from None

    def check_conversation(self, conversation: Conversation, where: str = "conversation") -> None:
        """ValueError naming a reserved token in a system or user turn, or one other than [SEG] in an
        earlier answer (the [SEG] the model wrote there is context: it makes no mask now)."""
        for i, text in conversation.user_texts():
            self.check_prompt(text, f"{where}, turn {i}")
        for i, text in conversation.assistant_texts():
            self.check_prompt(text.replace(SEG_TOKEN, ""), f"{where}, turn {i}")
        if not conversation.last_user_text.strip() and conversation.num_images() == 0:
            raise ValueError(f"{where}: the last user turn is empty")

    def _encode_text(self, arrays: list[np.ndarray], prompt: str | Conversation, where: str):
        """The prompt (one user turn) or a whole conversation -> the template's ``Example``."""
        if isinstance(prompt, Conversation):
            from citrus_v.infer.conversation import encode_conversation

            self.check_conversation(prompt, where)
            return encode_conversation(self.template, arrays, prompt)
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"{where}: the prompt is empty")
        self.check_prompt(prompt, where)
        return self.template.encode_prompt(arrays, prompt)

    def _encode(self, images: Sequence[ImageInput] | ImageInput, prompt: str | Conversation, where: str) -> _Encoded:
        images = _as_list(images)
        arrays = self.load_images(images, where)
        example = self._encode_text(arrays, prompt, where)
        if not arrays:
            return _Encoded(example.input_ids.tolist(), None, None, None)
        first = images[0]
        resized = (int(example.resized_hw[0][0]), int(example.resized_hw[0][1]))
        if isinstance(first, ImageSession):
            session = first
            if session.transforms.resized_hw is None:  # made without the ViT's size: now it is known
                session.transforms = replace(session.transforms, resized_hw=resized)
        else:
            session = ImageSession(self.model, arrays[0], sam_image=example.sam_images[0], resized_hw=resized)
        return _Encoded(example.input_ids.tolist(), example.pixel_values, example.image_grid_thw, session)

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
    def _seg_states(self, rows: Sequence[_Encoded], generated: Sequence[GeneratedSequence]) -> list[torch.Tensor]:
        """Final-norm states (n_seg_row, H) at each row's [SEG] tokens, from ONE teacher-forced pass
        over prompt + generated ids of every row that emitted [SEG] ((0, H) for the others).

        The batch is RIGHT-padded, as in training: causal attention keeps the pads out of the
        [SEG] hidden states.
        """
        hidden_size = self.model.config.llm.hidden_size
        out = [torch.zeros(0, hidden_size, device=self.device) for _ in rows]
        seg_rows = [i for i, g in enumerate(generated) if self.seg_token_id in g.ids]
        if not seg_rows:
            return out
        sequences = [rows[i].input_ids + generated[i].ids for i in seg_rows]
        length = max(len(s) for s in sequences)
        ids = torch.full((len(sequences), length), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(sequences), length), dtype=torch.long)
        for k, seq in enumerate(sequences):
            ids[k, : len(seq)] = torch.tensor(seq)
            mask[k, : len(seq)] = 1
        ids = ids.to(self.device)
        images = self._images_of([rows[i] for i in seg_rows])
        hidden = self.model.hidden_states(ids, mask.to(self.device), images.get("pixel_values"), images.get("image_grid_thw"))
        for k, i in enumerate(seg_rows):
            # only the [SEG]s of this answer: one in the prompt (an earlier answer of a conversation) is context
            generated_part = torch.arange(length, device=ids.device) >= len(rows[i].input_ids)
            out[i] = hidden[k][(ids[k] == self.seg_token_id) & generated_part]  # (B, L, H) -> (n_seg_row, H)
        return out

    def _masks(self, rows: Sequence[_Encoded], seg_states: Sequence[torch.Tensor]) -> list[list[Mask]]:
        """One Mask per [SEG] state, on its row's first image (original size). Every image is
        encoded once, every [SEG] of the batch decoded in one call; the i-th [SEG] of a row pairs
        with its i-th mask."""
        out: list[list[Mask]] = [[] for _ in rows]
        seg_rows = [i for i, s in enumerate(seg_states) if s.shape[0] > 0]
        if not seg_rows:
            return out
        for i in seg_rows:
            if rows[i].session is None:
                raise ValueError(f"request {i}: the model emitted {SEG_TOKEN} but the request has no image to segment")
        counts = [seg_states[i].shape[0] for i in seg_rows]
        owner = [k for k, n in enumerate(counts) for _ in range(n)]
        logits, iou = decode_seg_states(
            [rows[i].session for i in seg_rows], torch.cat([seg_states[i] for i in seg_rows]), owner
        )  # (n_seg, 256, 256), (n_seg,), row-major
        if logits.shape[0] != len(owner) or iou.shape[0] != len(owner):
            raise ValueError(
                f"segment returned {logits.shape[0]} masks and {iou.shape[0]} scores for {len(owner)} [SEG] tokens"
            )
        start = 0
        for i, n in zip(seg_rows, counts):
            size = rows[i].session.transforms.orig_hw  # masks are made at this size when read, one at a time
            out[i] = [LogitsMask(m, size, score=float(s), image_index=0) for m, s in zip(logits[start : start + n], iou[start : start + n])]
            start += n
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
            num_prompt_tokens=len(enc.input_ids),
        )

    # ------------------------------------------------------------------ step 5: tighten boxes
    def _tighten(self, rows: Sequence[_Encoded], predictions: Sequence[Prediction]) -> None:
        """The segmenter outlines what each written box frames; the outline's box replaces it.

        Each row's first image is encoded at most once: a row that segmented already has its
        features, the others are encoded in one call; then one box-prompted decode per box. The
        report's boxes are the same objects, so they follow.
        """
        from citrus_v.infer.box_tightening import tighten_boxes

        todo = [i for i, p in enumerate(predictions) if p.boxes and rows[i].session is not None]
        encode_sessions([rows[i].session for i in todo])
        for i in todo:
            tighten_boxes(rows[i].session, predictions[i].boxes)

    def _boxes(self, answer: str, enc: _Encoded) -> list[Box]:
        """Boxes in the answer (resized-image pixels) mapped to the FIRST image's original pixels."""
        from citrus_v.data.boxes import parse_boxes

        if enc.session is None:
            return []
        return [
            Box(bbox=enc.session.transforms.box_to_original(bbox), label=label, image_index=0)
            for bbox, label in parse_boxes(answer)
        ]
