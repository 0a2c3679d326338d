"""ChatML rendering for training and inference (as Qwen2.5-VL), with labels, images, boxes and [SEG].

A conversation becomes::

    <|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n
    <|im_start|>user\\n<|vision_start|><|image_pad|>*n<|vision_end|>Please segment the liver.<|im_end|>\\n
    <|im_start|>assistant\\nSure, it is [SEG].<|im_end|>\\n

with n = t*h*w/4 from the image's ``image_grid_thw``.

Labels (decided here, tested): every assistant turn's content tokens and its closing
``<|im_end|>`` are supervised; everything else is -100, including the "\\n" after
``<|im_end|>`` (it belongs to the next turn's header: at inference generation stops at
``<|im_end|>``, so the model never has to predict it).

Tokenization is done in pieces, split where labels start and stop: the prompt text up to and
including ``<|im_start|>assistant\\n`` is one piece and each assistant content another (as
ms-swift does), so a label boundary never falls inside a token. Image pads are inserted as ids.

Boxes: ``objects`` are ORIGINAL pixels (or norm1 fractions); the placeholders ``<boxes>``,
``<ref-object>`` and ms-swift's ``<bbox>`` become boxes in RESIZED pixels of the record's first image,
in one of two renderings chosen by ``style``: ``"ours"`` or ``"published"`` (the text the released 8B
learned). ``citrus_v.data.placeholders`` has both.

Length: with ``max_length``, a too-long example raises ``TooLongError`` (``truncation="error"``)
or, with ``truncation="right"``, loses its tail only when the tail holds no image token, no
``[SEG]`` and the example keeps at least one label; otherwise ``TooLongError`` names both
lengths. ``JsonlDataset`` can skip such records and count them.

Copy targets: a record whose ``meta["copy_points"]`` says where its first image shows each leading
answer character (lab values on a page) gets ``Example.copy_pairs``, the (query, key) positions of the
copy-attention target (``copy_pairs``; docs/training.md). A record whose ``meta["reading"]`` places the
characters written on its first image gets ``Example.reading``, the token-reading labels
(``reading_labels``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import torch
from transformers import PreTrainedTokenizerBase

from citrus_v.data.placeholders import (  # noqa: F401  (re-exported: the placeholders' home before placeholders.py)
    BOXES_PLACEHOLDER,
    REF_PLACEHOLDER,
    SWIFT_BBOX_PLACEHOLDER,
    TEMPLATE_STYLES,
    fill_box_placeholders,
)
from citrus_v.data.image_processing import MASK_SIZE, ImageConfig, ImageInput, ImageProcessor, load_mask, to_rgb_array
from citrus_v.data.reading import SLOTS, character_class
from citrus_v.data.schema import IMAGE_PLACEHOLDER, Message, Objects, Record, resolve
from citrus_v.data.tokenizer import IM_END, IM_START, TokenIds

DEFAULT_SYSTEM = "You are a helpful assistant."
IGNORE_INDEX = -100


class TooLongError(ValueError):
    """An example is longer than ``max_length`` and cannot be cut safely."""


@dataclass
class Example:
    """One encoded conversation. Shapes as the batch contract in docs/ARCHITECTURE.md, unbatched."""

    input_ids: torch.Tensor  # (L,) long
    labels: torch.Tensor  # (L,) long, -100 where not supervised
    pixel_values: torch.Tensor  # (P, 3*T*p*p) float; P = sum of t*h*w over images (0 rows without images)
    image_grid_thw: torch.Tensor  # (n_img, 3) long
    sam_images: torch.Tensor  # (n_img, 3, S, S) float
    gt_masks: torch.Tensor  # (n_seg, 256, 256) float in {0, 1}
    orig_hw: list[tuple[int, int]] = field(default_factory=list)  # per image (height, width)
    resized_hw: list[tuple[int, int]] = field(default_factory=list)  # per image, what the ViT saw
    truncated: int = 0  # tokens cut from the tail by truncation="right"
    # (n, 2) long: (query, key) positions of the copy-attention target (``copy_pairs``); 0 rows without meta.copy_points
    copy_pairs: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 2, dtype=torch.long))
    # (T, SLOTS) long: the token-reading labels of the first image's T merged tokens (``reading_labels``); 0 rows
    # without meta.reading
    reading: torch.Tensor = field(default_factory=lambda: torch.zeros(0, SLOTS, dtype=torch.long))

    @property
    def num_images(self) -> int:
        return int(self.image_grid_thw.shape[0])


@dataclass
class _Images:
    pixel_values: torch.Tensor
    grid: torch.Tensor
    sam: torch.Tensor
    orig_hw: list[tuple[int, int]]
    resized_hw: list[tuple[int, int]]
    n_tokens: list[int]


class ChatTemplate:
    """Encodes records (training) and prompts (inference) into ``Example``s."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        image_cfg: ImageConfig,
        token_ids: TokenIds | None = None,
        *,
        default_system: str | None = DEFAULT_SYSTEM,
        max_length: int | None = None,
        truncation: Literal["error", "right"] = "error",
        style: str = "ours",
    ):
        if style not in TEMPLATE_STYLES:
            raise ValueError(f"template style must be one of {TEMPLATE_STYLES}, got {style!r}")
        if max_length is not None and max_length <= 0:
            raise ValueError(f"max_length must be > 0 or None, got {max_length}")
        if truncation not in ("error", "right"):
            raise ValueError(f"truncation must be 'error' or 'right', got {truncation!r}")
        self.tokenizer = tokenizer
        self.image_cfg = image_cfg
        self.ids = token_ids if token_ids is not None else TokenIds.from_tokenizer(tokenizer)
        self.processor = ImageProcessor(image_cfg)
        self.default_system = default_system
        self.max_length = max_length
        self.truncation = truncation
        self.style = style  # how box and ref placeholders are rendered (citrus_v.data.placeholders)

    # ------------------------------------------------------------------ public
    def encode_record(self, record: Record, base_dir: str | Path = ".") -> Example:
        """A training record -> ``Example`` with labels and ground-truth masks."""
        images = self._images([resolve(p, base_dir) for p in record.images])
        messages = fill_box_placeholders(record.messages, record.objects, images.orig_hw, images.resized_hw, self.style)
        ids, labels = self._encode_messages(messages, images.n_tokens, add_generation_prompt=False)
        masks = [load_mask(resolve(p, base_dir)) for p in record.masks]
        gt = torch.stack(masks) if masks else torch.zeros(0, MASK_SIZE, MASK_SIZE)  # (n_seg, 256, 256)
        self._check_counts(ids, images.n_tokens, gt.shape[0])
        pairs = copy_pairs(record.meta.get("copy_points"), ids, labels, images, self.ids.image_pad, self.image_cfg)
        ids, labels, cut = self._fit_length(ids, labels)
        pairs = pairs[pairs[:, 0] + 1 < len(ids)]  # a cut answer keeps the pairs of the characters left
        reading = reading_labels(record.meta.get("reading"), images, self.image_cfg)
        return Example(
            torch.tensor(ids, dtype=torch.long), torch.tensor(labels, dtype=torch.long),
            images.pixel_values, images.grid, images.sam, gt, images.orig_hw, images.resized_hw, cut, pairs, reading,
        )  # fmt: skip

    def encode_prompt(self, images: Sequence[ImageInput], prompt: str, system: str | None = DEFAULT_SYSTEM) -> Example:
        """An inference prompt ending in ``<|im_start|>assistant\\n``; labels all -100.

        Without ``<image>`` in ``prompt`` the images go first (Qwen2.5-VL's order).
        """
        n_ph = prompt.count(IMAGE_PLACEHOLDER)
        if n_ph == 0:
            prompt = IMAGE_PLACEHOLDER * len(images) + prompt
        elif n_ph != len(images):
            raise ValueError(f"prompt has {n_ph} '<image>' placeholders but {len(images)} images were given")
        msgs = ([Message("system", system)] if system is not None else []) + [Message("user", prompt)]
        return self.encode_messages_prompt(msgs, images, "prompt")

    def encode_messages_prompt(self, msgs: Sequence[Message], images: Sequence[ImageInput], what: str = "prompt") -> Example:
        """``msgs`` (system first if any; one ``<image>`` per image, in order) rendered as they are, ending
        in ``<|im_start|>assistant\n``; labels all -100. ``what`` names the input in a TooLongError."""
        imgs = self._images(list(images))
        ids, labels = self._encode_messages(list(msgs), imgs.n_tokens, add_generation_prompt=True, use_default_system=False)
        self._check_counts(ids, imgs.n_tokens, None)
        if self.max_length is not None and len(ids) > self.max_length:
            raise TooLongError(f"{what} is {len(ids)} tokens, max_length is {self.max_length}")
        return Example(
            torch.tensor(ids, dtype=torch.long), torch.tensor(labels, dtype=torch.long),
            imgs.pixel_values, imgs.grid, imgs.sam, torch.zeros(0, MASK_SIZE, MASK_SIZE), imgs.orig_hw, imgs.resized_hw,
        )  # fmt: skip

    def render(self, messages: Sequence[Message], image_tokens: Sequence[int] = (), add_generation_prompt: bool = False) -> str:
        """The whole ChatML string (image placeholders expanded); for inspection and tests."""
        out, k = [], 0
        for m in self._with_system(messages, self.default_system):
            content = m.content
            while IMAGE_PLACEHOLDER in content:
                pads = "<|vision_start|>" + "<|image_pad|>" * image_tokens[k] + "<|vision_end|>"
                content = content.replace(IMAGE_PLACEHOLDER, pads, 1)
                k += 1
            out.append(f"{IM_START}{m.role}\n{content}{IM_END}\n")
        if add_generation_prompt:
            out.append(f"{IM_START}assistant\n")
        return "".join(out)

    # ------------------------------------------------------------------ pieces
    def _images(self, sources: list) -> _Images:
        s = self.image_cfg.sam_image_size
        if not sources:
            return _Images(torch.zeros(0, self._patch_dim()), torch.zeros(0, 3, dtype=torch.long), torch.zeros(0, 3, s, s), [], [], [])
        arrays = [to_rgb_array(x) for x in sources]
        pixel_values, grid = self.processor.qwen(arrays)
        p = self.image_cfg.patch_size
        resized = [(int(g[1]) * p, int(g[2]) * p) for g in grid]
        sam = torch.stack([self.processor.sam(a) for a in arrays])  # (n_img, 3, S, S)
        n_tokens = [self.processor.num_image_tokens(g) for g in grid]
        return _Images(pixel_values, grid, sam, [a.shape[:2] for a in arrays], resized, n_tokens)

    def _patch_dim(self) -> int:
        c = self.image_cfg
        return 3 * c.temporal_patch_size * c.patch_size * c.patch_size

    @staticmethod
    def _with_system(messages: Sequence[Message], default_system: str | None) -> list[Message]:
        msgs = list(messages)
        if default_system is not None and (not msgs or msgs[0].role != "system"):
            msgs.insert(0, Message("system", default_system))
        return msgs

    def _text_ids(self, text: str, image_tokens: list[int], k: int) -> tuple[list[int], int]:
        """Unlabelled text with ``<image>`` -> ids; returns the next image index."""
        parts = text.split(IMAGE_PLACEHOLDER)
        ids: list[int] = []
        for i, part in enumerate(parts):
            if i > 0:
                if k >= len(image_tokens):
                    raise ValueError(f"more '<image>' placeholders than the {len(image_tokens)} images given")
                ids += [self.ids.vision_start] + [self.ids.image_pad] * image_tokens[k] + [self.ids.vision_end]
                k += 1
            if part:
                ids += self.tokenizer.encode(part, add_special_tokens=False)
        return ids, k

    def _encode_messages(
        self, messages: Sequence[Message], image_tokens: list[int], *, add_generation_prompt: bool, use_default_system: bool = True
    ) -> tuple[list[int], list[int]]:
        msgs = self._with_system(messages, self.default_system if use_default_system else None)
        ids: list[int] = []
        labels: list[int] = []
        pending = ""  # unlabelled text not yet tokenized: one piece up to the next label boundary
        k = 0

        def flush() -> None:
            nonlocal pending, k
            piece, k = self._text_ids(pending, image_tokens, k)
            ids.extend(piece)
            labels.extend([IGNORE_INDEX] * len(piece))
            pending = ""

        for i, m in enumerate(msgs):
            pending += f"{IM_START}{m.role}\n"
            if m.role != "assistant":
                pending += f"{m.content}{IM_END}\n"
                continue
            if IMAGE_PLACEHOLDER in m.content:
                raise ValueError(f"messages[{i}]: '<image>' in an assistant message (images go in user turns)")
            flush()
            answer = self.tokenizer.encode(m.content, add_special_tokens=False) + [self.ids.im_end]
            ids.extend(answer)
            labels.extend(answer)  # supervised: the content and its closing <|im_end|>
            pending = "\n"
        if add_generation_prompt:
            pending += f"{IM_START}assistant\n"
        flush()
        if k != len(image_tokens):
            raise ValueError(f"{k} '<image>' placeholders but {len(image_tokens)} images")
        return ids, labels

    def _check_counts(self, ids: list[int], image_tokens: list[int], n_masks: int | None) -> None:
        n_pad = sum(1 for t in ids if t == self.ids.image_pad)
        if n_pad != sum(image_tokens):
            raise ValueError(
                f"{n_pad} <|image_pad|> tokens in the text but the images need {sum(image_tokens)} "
                f"({len(image_tokens)} images: {image_tokens}); is '<|image_pad|>' written literally in the text?"
            )
        if n_masks is not None:
            n_seg = sum(1 for t in ids if t == self.ids.seg)
            if n_seg != n_masks:
                raise ValueError(f"{n_seg} [SEG] tokens in the text but {n_masks} masks")

    def _fit_length(self, ids: list[int], labels: list[int]) -> tuple[list[int], list[int], int]:
        if self.max_length is None or len(ids) <= self.max_length:
            return ids, labels, 0
        n, cap = len(ids), self.max_length
        if self.truncation == "error":
            raise TooLongError(f"example is {n} tokens, max_length is {cap}")
        protected = {self.ids.image_pad, self.ids.vision_start, self.ids.vision_end, self.ids.seg}
        if any(t in protected for t in ids[cap:]):
            raise TooLongError(f"example is {n} tokens, max_length is {cap}, and the cut would split an image or a [SEG]")
        if all(lab == IGNORE_INDEX for lab in labels[:cap]):
            raise TooLongError(f"example is {n} tokens, max_length is {cap}: no supervised token would be left")
        return ids[:cap], labels[:cap], n - cap


def copy_pairs(points: Any, ids: list[int], labels: list[int], images: _Images, image_pad: int,
               image_cfg: ImageConfig) -> torch.Tensor:
    """The copy-attention target of a record whose answers copy characters shown in its first image:
    ``meta["copy_points"]`` holds, for each assistant turn, the centre (x, y in the image's own pixels) of
    each leading answer token's character, one point per token. Returns (n, 2) long (query, key): the
    position that predicts the token, and the ``<|image_pad|>`` of the merged token holding its point.
    None -> no pairs. Points that do not fit the record are a ValueError naming ``meta.copy_points``."""
    if points is None:
        return torch.zeros(0, 2, dtype=torch.long)
    where = "meta.copy_points"
    if not images.n_tokens:
        raise ValueError(f"{where}: the record has no image to copy from")
    sup = [i for i, lab in enumerate(labels) if lab != IGNORE_INDEX]
    turns = [[sup[0]]] if sup else []
    for q in sup[1:]:  # each assistant turn is one run of supervised positions (its answer and <|im_end|>)
        if q == turns[-1][-1] + 1:
            turns[-1].append(q)
        else:
            turns.append([q])
    if not isinstance(points, list) or len(points) != len(turns):
        raise ValueError(f"{where}: must be a list with one entry per assistant turn ({len(turns)}), got {points!r:.80}")
    pads = [i for i, t in enumerate(ids) if t == image_pad][: images.n_tokens[0]]
    pairs = []
    for t, (turn, pts) in enumerate(zip(turns, points)):
        if not isinstance(pts, list) or len(pts) > len(turn) - 1:
            raise ValueError(f"{where}[{t}]: must be a list of at most {len(turn) - 1} points (the answer's tokens)")
        for j, pt in enumerate(pts):
            pairs.append((turn[j] - 1, pads[_point_token(pt, images, image_cfg, f"{where}[{t}][{j}]")]))
    return torch.tensor(pairs, dtype=torch.long).reshape(-1, 2)


def _point_token(pt: Any, images: _Images, image_cfg: ImageConfig, where: str) -> int:
    """The row-major index of the first image's merged token holding ``pt`` ([x, y] in the image's own
    pixels, mapped through its resize); a point that is not [x, y] inside the image is a ValueError naming ``where``."""
    h_orig, w_orig = images.orig_hw[0]
    if not (isinstance(pt, (list, tuple)) and len(pt) == 2 and all(isinstance(v, (int, float)) for v in pt)
            and 0 <= pt[0] < w_orig and 0 <= pt[1] < h_orig):
        raise ValueError(f"{where}: must be [x, y] inside the {w_orig}x{h_orig} image, got {pt!r}")
    h_res, w_res = images.resized_hw[0]
    token = image_cfg.patch_size * image_cfg.merge_size
    cols, rows = w_res // token, h_res // token
    return min(int(pt[1] * h_res / h_orig // token), rows - 1) * cols + min(int(pt[0] * w_res / w_orig // token), cols - 1)


def reading_labels(lines: Any, images: _Images, image_cfg: ImageConfig) -> torch.Tensor:
    """The token-reading labels (citrus_v.model.token_reading) of a record whose first image shows text:
    ``meta["reading"]`` lists its lines in reading order, each ``{"text": ..., "points": [[x, y], ...]}`` with
    the centre of each character in the image's own pixels. Returns (T, SLOTS) long, one row per merged
    token of the first image (row-major, as the merger orders them): the ``character_class`` of the
    characters whose centre falls in the token, in reading order, 0 for an empty slot; characters past
    ``SLOTS`` in one token, and spaces, are left out. None -> 0 rows. A malformed entry is a ValueError
    naming ``meta.reading``."""
    if lines is None:
        return torch.zeros(0, SLOTS, dtype=torch.long)
    where = "meta.reading"
    if not images.n_tokens:
        raise ValueError(f"{where}: the record has no image to read")
    if not isinstance(lines, list):
        raise ValueError(f"{where}: must be a list of {{text, points}} lines, got {lines!r:.80}")
    out = torch.zeros(images.n_tokens[0], SLOTS, dtype=torch.long)
    filled = [0] * images.n_tokens[0]
    for i, line in enumerate(lines):
        if not (isinstance(line, dict) and isinstance(line.get("text"), str) and isinstance(line.get("points"), list)
                and len(line["points"]) == len(line["text"])):
            raise ValueError(f"{where}[{i}]: must be {{\"text\": str, \"points\": one [x, y] per character}}, got {line!r:.80}")
        for j, (ch, pt) in enumerate(zip(line["text"], line["points"])):
            k = _point_token(pt, images, image_cfg, f"{where}[{i}].points[{j}]")
            cls = character_class(ch)
            if cls and filled[k] < SLOTS:
                out[k, filled[k]] = cls
                filled[k] += 1
    return out
