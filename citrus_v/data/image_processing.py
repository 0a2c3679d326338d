"""Images into the two encoders: Qwen2-VL patches (smart resize) and SAM2's square input.

No torchvision: transformers' ``Qwen2VLImageProcessorPil`` (the PIL/numpy backend) does the
Qwen side; the SAM2 side is a stretch, /255 and ImageNet normalisation written here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from PIL import Image
# The PIL module, not image_processing_qwen2_vl: that one imports torchvision at module level.
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil, smart_resize

ImageInput = Union[str, os.PathLike, np.ndarray, Image.Image]

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # SAM2's normalisation
IMAGENET_STD = (0.229, 0.224, 0.225)
MASK_SIZE = 256  # SAM2's low-resolution mask logits; ground truth is compared at this size
SAM_PIXEL_NORMS = ("imagenet", "minmax")
# where the segmenter's square input is made from: "original" (the image as read, bilinear) or
# "smart_resized" (as the published Citrus-V: the ViT's smart-resized image, LANCZOS; docs/published_checkpoint.md)
SAM_SOURCES = ("original", "smart_resized")


@dataclass(frozen=True)
class ImageConfig:
    """How images are sized for the Qwen ViT and for SAM2.

    ``patch_size``, ``merge_size`` and ``temporal_patch_size`` must match the model's vision
    config (``CitrusVConfig.vision``); ``sam_image_size`` its segmenter input size.
    """

    min_pixels: int = 112 * 112
    max_pixels: int = 224 * 224
    patch_size: int = 14
    merge_size: int = 2
    temporal_patch_size: int = 2
    sam_image_size: int = 256
    sam_pixel_norm: str = "imagenet"  # the segmenter's SegmenterConfig.pixel_norm: "imagenet" | "minmax"
    sam_source: str = "original"  # one of SAM_SOURCES
    # where min/max_pixels came from (a flag, a file, a layout's default): said, never compared
    pixel_source: str = field(default="default", compare=False)

    def __post_init__(self) -> None:
        if self.sam_pixel_norm not in SAM_PIXEL_NORMS:
            raise ValueError(f"ImageConfig.sam_pixel_norm must be one of {SAM_PIXEL_NORMS}, got {self.sam_pixel_norm!r}")
        if self.sam_source not in SAM_SOURCES:
            raise ValueError(f"ImageConfig.sam_source must be one of {SAM_SOURCES}, got {self.sam_source!r}")
        for name in ("min_pixels", "max_pixels", "patch_size", "merge_size", "temporal_patch_size", "sam_image_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or v <= 0:
                raise ValueError(f"ImageConfig.{name} must be a positive int, got {v!r}")
        if self.min_pixels > self.max_pixels:
            raise ValueError(f"ImageConfig.min_pixels {self.min_pixels} > max_pixels {self.max_pixels}")
        if self.max_pixels < self.factor**2:
            raise ValueError(f"ImageConfig.max_pixels {self.max_pixels} < one merged patch ({self.factor}^2)")

    @property
    def factor(self) -> int:
        """Resized sides are multiples of this (28 for Qwen2.5-VL)."""
        return self.patch_size * self.merge_size

    @classmethod
    def tiny(cls) -> ImageConfig:
        """Small images for the tiny default: 16..64 image tokens each."""
        return cls(min_pixels=112 * 112, max_pixels=224 * 224, sam_image_size=256)

    @classmethod
    def for_model(cls, model_cfg: Any, *, min_pixels: int, max_pixels: int) -> ImageConfig:
        """Patch/merge/temporal sizes and the SAM2 side from a ``CitrusVConfig`` (``.vision``,
        ``.segmenter``), so the processor can never disagree with the model it feeds."""
        v = model_cfg.vision
        return cls(
            min_pixels=min_pixels,
            max_pixels=max_pixels,
            patch_size=v.patch_size,
            merge_size=v.spatial_merge_size,
            temporal_patch_size=v.temporal_patch_size,
            sam_image_size=model_cfg.segmenter.image_size,
            sam_pixel_norm=model_cfg.segmenter.pixel_norm,
        )

    @classmethod
    def published(cls) -> ImageConfig:
        """Citrus-V's published training range (256..1280 image tokens) and SAM2-L's 1024 input."""
        return cls(min_pixels=200704, max_pixels=1003520, sam_image_size=1024)


def to_rgb_array(image: ImageInput) -> np.ndarray:
    """Any accepted image -> (H, W, 3) uint8.

    Paths go through ``citrus_v.data.medical_io.load_image`` (DICOM, NIfTI, PNG/JPEG...). Grey images are repeated to 3 channels; float images are taken as 0..1 if their
    maximum is <= 1, else 0..255 (and clipped).
    """
    if isinstance(image, (str, os.PathLike)):
        arr = _load_path(Path(image))
    elif isinstance(image, Image.Image):
        arr = np.asarray(image.convert("RGB"))
    elif isinstance(image, np.ndarray):
        arr = image
    else:
        raise TypeError(f"image must be a path, numpy array or PIL image, got {type(image).__name__}")
    return _as_rgb_uint8(arr)


def _load_path(path: Path) -> np.ndarray:
    # DICOM (windowed), NIfTI (one axial slice), PNG/JPEG/TIFF; errors name the file. Imported here
    # so that importing the template does not pull in pydicom/nibabel.
    from citrus_v.data.medical_io import load_image

    return load_image(path)


def _as_rgb_uint8(arr: np.ndarray) -> np.ndarray:
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)  # (H, W) -> (H, W, 3)
    if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
        raise ValueError(f"image must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got shape {arr.shape}")
    arr = arr[..., :3]
    if arr.dtype != np.uint8:
        a = arr.astype(np.float64)
        if a.size and np.nanmax(a) <= 1.0:
            a = a * 255.0
        arr = np.clip(np.nan_to_num(a), 0, 255).round().astype(np.uint8)
    return np.ascontiguousarray(arr)


class ImageProcessor:
    """Qwen2-VL patches + SAM2 input for a list of RGB images."""

    def __init__(self, cfg: ImageConfig):
        self.cfg = cfg
        self._qwen = Qwen2VLImageProcessorPil(
            size={"shortest_edge": cfg.min_pixels, "longest_edge": cfg.max_pixels},
            patch_size=cfg.patch_size,
            merge_size=cfg.merge_size,
            temporal_patch_size=cfg.temporal_patch_size,
        )

    def resized_hw(self, height: int, width: int) -> tuple[int, int]:
        """The smart-resized (height, width) the ViT sees: multiples of ``cfg.factor`` in range."""
        return smart_resize(height, width, factor=self.cfg.factor, min_pixels=self.cfg.min_pixels, max_pixels=self.cfg.max_pixels)

    def num_image_tokens(self, grid_thw: torch.Tensor) -> int:
        """``<|image_pad|>`` tokens for one image: t*h*w / merge^2."""
        t, h, w = (int(v) for v in grid_thw)
        return t * h * w // (self.cfg.merge_size**2)

    def qwen(self, images: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """-> pixel_values (P, 3*T*p*p) float32, image_grid_thw (n_img, 3) long."""
        if not images:
            raise ValueError("qwen() needs at least one image")
        small = [self._to_vit_size(img) for img in images]  # one full-size PIL copy at a time, freed at once
        # channels_last said outright: a 3-px-high (3, W, 3) image is otherwise taken as channels-first
        out = self._qwen(images=small, return_tensors="pt", input_data_format="channels_last")
        grid = out["image_grid_thw"].long()
        for i, (img, g) in enumerate(zip(images, grid)):
            expect = self.resized_hw(img.shape[0], img.shape[1])
            got = (int(g[1]) * self.cfg.patch_size, int(g[2]) * self.cfg.patch_size)
            if got != expect:  # our box mapping relies on this being the processor's size
                raise RuntimeError(f"image {i}: processor resized to {got}, smart_resize says {expect}")
        return out["pixel_values"].float(), grid

    def _to_vit_size(self, image: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 -> the ViT's (h, w, 3), resized in PIL as the processor would (same filter,
        so its own resize is then a copy and the patches are equal): the processor's full-size
        channels-first and float copies (about 7 bytes a pixel) are never made. Other inputs pass as
        they are."""
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
            return image
        height, width = self.resized_hw(image.shape[0], image.shape[1])
        if (height, width) == image.shape[:2] or self.resized_hw(height, width) != (height, width):
            return image  # the second: a size the processor would resize again (extreme aspect ratios)
        return np.asarray(Image.fromarray(image).resize((width, height), self._qwen.resample))

    def sam(self, image: np.ndarray) -> torch.Tensor:
        """(H, W, 3) uint8 -> (3, S, S) float: stretched to S x S (aspect not kept), then
        ``cfg.sam_pixel_norm`` (/255 + ImageNet, or per-image min-max). With ``sam_source
        "smart_resized"`` the image is first brought to the ViT's size as qwen_vl_utils does
        (PIL's default, bicubic) and then stretched with LANCZOS, as the published template."""
        if self.cfg.sam_source == "original":
            return sam_preprocess(image, self.cfg.sam_image_size, self.cfg.sam_pixel_norm)
        rgb = _as_rgb_uint8(image)
        height, width = self.resized_hw(rgb.shape[0], rgb.shape[1])
        resized = np.asarray(Image.fromarray(rgb).resize((width, height), Image.BICUBIC))
        return sam_preprocess(resized, self.cfg.sam_image_size, self.cfg.sam_pixel_norm, Image.LANCZOS)


def sam_preprocess(
    image: np.ndarray, size: int, pixel_norm: str = "imagenet", resample: int = Image.BILINEAR
) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, size, size) float32, stretch (``resample``, bilinear unless told), then
    the segmenter's scaling.

    ``"imagenet"`` (SAM2): /255 and ImageNet mean/std. ``"minmax"`` (LiteMedSAM): the image's own
    minimum -> 0 and maximum -> 1 over all channels (a flat image becomes all zeros). LiteMedSAM
    itself resizes the longest side and pads; we stretch, like the SAM2 path, so that boxes and
    masks map to the segmenter input the same way for both kinds.
    """
    if pixel_norm not in SAM_PIXEL_NORMS:
        raise ValueError(f"sam_preprocess: pixel_norm must be one of {SAM_PIXEL_NORMS}, got {pixel_norm!r}")
    rgb = _as_rgb_uint8(image)
    stretched = Image.fromarray(rgb).resize((size, size), resample)
    x = torch.from_numpy(np.asarray(stretched, dtype=np.float32) / 255.0)  # (S, S, 3)
    return scale_sam_pixels(x.permute(2, 0, 1), pixel_norm).contiguous()  # (3, S, S)


def scale_sam_pixels(x: torch.Tensor, pixel_norm: str) -> torch.Tensor:
    """(3, H, W) in [0, 1] -> the segmenter's scaling (``sam_preprocess``): the image's own minimum -> 0
    and maximum -> 1 (``"minmax"``), or ImageNet mean/std (``"imagenet"``)."""
    if pixel_norm == "minmax":
        lo, hi = x.min(), x.max()
        return (x - lo) / (hi - lo).clamp_min(1e-8)
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(3, 1, 1)
    return (x - mean) / std


def load_mask(mask: ImageInput, size: int = MASK_SIZE) -> torch.Tensor:
    """A mask (path, array or PIL) -> (size, size) float32 in {0, 1}: nonzero is foreground, nearest resize."""
    if isinstance(mask, (str, os.PathLike)):
        path = Path(mask)
        if not path.is_file():
            raise FileNotFoundError(f"mask file not found: {path}")
        with Image.open(path) as im:
            arr = np.asarray(im)
    elif isinstance(mask, Image.Image):
        arr = np.asarray(mask)
    elif isinstance(mask, np.ndarray):
        arr = mask
    else:
        raise TypeError(f"mask must be a path, numpy array or PIL image, got {type(mask).__name__}")
    if arr.ndim == 3:
        arr = arr.max(axis=-1)  # colour masks: any channel set is foreground
    if arr.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {arr.shape}")
    binary = Image.fromarray((arr > 0).astype(np.uint8) * 255)
    resized = np.asarray(binary.resize((size, size), Image.NEAREST))
    return torch.from_numpy((resized > 0).astype(np.float32))
