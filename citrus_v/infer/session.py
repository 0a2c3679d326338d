"""One image, its segmenter features computed once, and every way the model makes a mask on it.

As sam2's ``SAM2ImagePredictor.set_image``: the segmenter's image encoder is the expensive part
(SAM2-L: 26 ms on an H200; the default's LiteMedSAM: about 0.75 s per image on 2 CPU threads), the prompt encoder and mask
decoder are cheap. An ``ImageSession`` encodes its image on first need and keeps the features, so
the [SEG] masks of an answer, the tightening of the boxes it wrote and any number of clicks after
it share one encoder pass::

    session = ImageSession(model, rgb)                        # nothing computed yet
    logits, iou = session.masks_from_seg_states(seg_hidden)   # (n, H) [SEG] states -> (n, 256, 256), (n,)
    logits, iou = session.masks_from_prompts(points=[(x, y, 1)], box=None)  # original pixels
    masks = session.transforms.masks_to_original(logits)      # (n, H, W) bool

Every mask inference returns comes from here. [SEG] states become masks through
``CitrusV.decode_seg_states`` (projector + segmenter decode: the step training takes, one path
for both); clicks, boxes and a previous mask through ``citrus_v.model.prompting``.
``encode_sessions`` / ``decode_seg_states`` do the same for several images in one batch (a
``predict_batch``), ``SessionCache`` keeps the sessions of the last few images a client sent (the
server, whose viewer sends the image again with every click).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from citrus_v.data.image_processing import sam_preprocess
from citrus_v.infer.transforms import ImageTransforms, mask_to_logits
from citrus_v.model.prompting import decode_with_prompts
from citrus_v.model.segmenter import SegmenterFeatures

if TYPE_CHECKING:
    from citrus_v.model.citrus_v import CitrusV

Point = tuple[float, float, int]  # x, y in original pixels; label 1 adds, 0 removes


class ImageSession:
    """One (H, W, 3) uint8 image of ``model``: its segmenter input, features (on first need) and frames.

    ``sam_image`` (3, S, S), when the caller already has it (the chat template makes it), spares
    preprocessing the image again; ``resized_hw`` is the ViT's size of it (for the boxes it writes).
    """

    def __init__(
        self,
        model: CitrusV,
        rgb: np.ndarray,
        sam_image: torch.Tensor | None = None,
        resized_hw: tuple[int, int] | None = None,
    ) -> None:
        if rgb.ndim != 3 or rgb.shape[-1] != 3:
            raise ValueError(f"ImageSession: rgb must be (H, W, 3), got shape {rgb.shape}")
        self.model = model
        self.rgb: np.ndarray | None = rgb  # None while a SessionCache keeps the session without its pixels
        cfg = model.config.segmenter
        self.transforms = ImageTransforms((int(rgb.shape[0]), int(rgb.shape[1])), cfg.image_size, resized_hw)
        self._sam_image = sam_image
        self._features: SegmenterFeatures | None = None

    @property
    def sam_image(self) -> torch.Tensor:
        """(3, S, S): the image stretched to the segmenter's square and scaled as it was trained."""
        if self._sam_image is None:
            if self.rgb is None:
                raise ValueError("ImageSession: its pixels were released (SessionCache.release_pixels); get it again")
            cfg = self.model.config.segmenter
            self._sam_image = sam_preprocess(self.rgb, cfg.image_size, cfg.pixel_norm)
        return self._sam_image

    @property
    def encoded(self) -> bool:
        return self._features is not None

    @property
    def features(self) -> SegmenterFeatures:
        """The segmenter's features of this one image (batch of 1), encoded on first use."""
        if self._features is None:
            encode_sessions([self])
        assert self._features is not None
        return self._features

    @torch.no_grad()
    def masks_from_seg_states(self, seg_hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[SEG] final-norm states (n, H) -> mask logits (n, 256, 256) and predicted IoU (n,):
        multimask output, the best predicted IoU kept (the published rule)."""
        return decode_seg_states([self], seg_hidden, [0] * seg_hidden.shape[0])

    @torch.no_grad()
    def masks_from_prompts(
        self,
        *,
        points: Sequence[Point] | None = None,
        box: Sequence[float] | None = None,
        seg_embedding: torch.Tensor | None = None,
        mask_input: np.ndarray | torch.Tensor | None = None,
        multimask: bool | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One mask from clicks (x, y, label) and / or a box [x1, y1, x2, y2], both in ORIGINAL
        pixels, optionally with a projected [SEG] embedding (C,) after them and a previous mask as
        the dense prompt: (256, 256) logits or a bool (H, W) mask. ``multimask`` None: SAM's advice
        (several candidates, best IoU kept, when the prompt is ambiguous). Returns logits
        (1, 256, 256) and the predicted IoU (1,)."""
        pts = lbl = box_sam = dense = None
        if points:
            pts, lbl = self.transforms.points_to_segmenter(points)  # (N, 2), (N,)
        if box is not None:
            box_sam = self.transforms.box_to_segmenter(box)  # (4,)
        if mask_input is not None:
            dense = mask_input if isinstance(mask_input, torch.Tensor) else mask_to_logits(mask_input)
            if dense.ndim != 2:
                raise ValueError(f"mask_input must be 2-D (logits or a mask), got shape {tuple(dense.shape)}")
        return decode_with_prompts(
            self.model.segmenter, self.features, points_sam=pts, point_labels=lbl, box_sam=box_sam,
            text_embedding=seg_embedding, mask_input=dense, multimask=multimask,
        )  # fmt: skip


def encode_sessions(sessions: Sequence[ImageSession]) -> None:
    """Encode, in ONE image-encoder call, every session that has no features yet."""
    todo = list({id(s): s for s in sessions if not s.encoded}.values())  # each once, in order
    if not todo:
        return
    model = _one_model(todo)
    segmenter = model.segmenter
    param = next(segmenter.parameters())  # the segmenter's device and dtype
    with torch.no_grad():
        images = torch.stack([s.sam_image for s in todo]).to(param.device, param.dtype)  # (n, 3, S, S)
        features = segmenter.encode(images)
    for k, session in enumerate(todo):
        session._features = features.select(torch.tensor([k], device=param.device))


@torch.no_grad()
def decode_seg_states(
    sessions: Sequence[ImageSession], seg_hidden: torch.Tensor, owner: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The i-th [SEG] state of ``seg_hidden`` (n_seg, H) segments ``sessions[owner[i]]`` -> logits
    (n_seg, 256, 256), IoU (n_seg,): every image encoded at most once (the missing ones in one
    batch), every [SEG] decoded in one batch by ``CitrusV.decode_seg_states``."""
    if seg_hidden.ndim != 2 or len(owner) != seg_hidden.shape[0]:
        raise ValueError(f"{len(owner)} owners for [SEG] states of shape {tuple(seg_hidden.shape)} (want (n_seg, H))")
    if not sessions:
        raise ValueError("decode_seg_states needs at least one image session")
    model = _one_model(sessions)
    encode_sessions(sessions)
    features = SegmenterFeatures.cat([s.features for s in sessions])  # (n_img, ...)
    image_index = torch.tensor(list(owner), dtype=torch.long, device=features.image_embeddings.device)
    return model.decode_seg_states(seg_hidden, features, image_index)


def _one_model(sessions: Sequence[ImageSession]) -> CitrusV:
    model = sessions[0].model
    if any(s.model is not model for s in sessions):
        raise ValueError("these image sessions belong to different models")
    return model


class SessionCache:
    """The sessions of the last ``size`` images, found again by their pixels.

    A client that sends the same image with every request (the server's viewer: an answer, then
    clicks) has it encoded once. ``make`` builds a session for an image not seen (recently).
    """

    def __init__(self, make: Callable[[np.ndarray], ImageSession], size: int = 4) -> None:
        if size < 1:
            raise ValueError(f"SessionCache size must be >= 1, got {size}")
        self.make, self.size = make, size
        self._sessions: OrderedDict[tuple, ImageSession] = OrderedDict()

    def get(self, image: np.ndarray) -> ImageSession:
        image = np.ascontiguousarray(image)
        key = (image.shape, image.dtype.str, hashlib.blake2b(image, digest_size=16).digest())  # no copy
        session = self._sessions.pop(key, None)
        if session is None:
            session = self.make(image)
        else:
            session.rgb = image  # the same pixels (by their hash), given back for this use
        self._sessions[key] = session  # the most recent last
        while len(self._sessions) > self.size:
            self._sessions.popitem(last=False)
        return session

    def release_pixels(self) -> None:
        """Drop the kept sessions' full-size pixels (their features and segmenter input stay): a
        server keeps only what it is charged for. ``get`` gives a session its pixels again."""
        for session in self._sessions.values():
            session.rgb = None

    def __len__(self) -> int:
        return len(self._sessions)
