"""Image tokens from the segmenter's pretrained image encoder: ``vision.source`` "segmenter" or "vit+segmenter".

A documented deviation for the tiny model only (the 8b preset keeps the published Qwen2.5-VL ViT):
the issue's pretrained-encoder lever. The tiny ViT is trained from scratch on our images; LiteMedSAM's
TinyViT, the segmenter's encoder, was pretrained by its authors on medical image-mask pairs. What it did
on VQA-RAD: docs/default_model.md, "Image tokens from LiteMedSAM's encoder". ``SegmenterVision`` stands where transformers' Qwen2.5-VL calls its vision tower
(``mllm.model.visual``) and keeps its contract: ``(pixel_values (P, C*T*p*p), grid_thw (n, 3))`` ->
``pooler_output`` (n_tokens, llm_hidden) in the merged-token order the LLM's ``<|image_pad|>`` tokens
expect (``"vit+segmenter"``: it sits beside the ViT and its tokens are added to the ViT's). For each image it:

1. rebuilds the smart-resized image from the processor's patches (``unpatchify``) and undoes the
   processor's normalisation;
2. stretches it to the segmenter's square input and scales it as the segmenter does
   (``pixel_norm``), then runs the segmenter's image encoder: (C, S/4, S/4);
3. averages that map over each ViT patch (the (h, w) patch grid) and concatenates each
   ``merge x merge`` block of patches, as Qwen2.5-VL's merger does: (h*w/merge^2, merge^2*C);
4. projects with its own ``merger`` (LayerNorm + 2-layer MLP), the only parameters it owns, under
   ``mllm.model.visual.merger.`` (the "merger" part of the freeze plans).

The encoder is the segmenter's own module, shared, never a second copy (nor a submodule here: the
state dict holds it once, under ``segmenter.image_encoder.``). While it is frozen, the pooled map of
each image is kept in a bounded cache keyed by the image's patches and the encoder weights' versions,
so a training epoch on a frozen encoder runs it once per distinct image.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPooling

from citrus_v.config import CitrusVConfig
from citrus_v.data.image_processing import scale_sam_pixels

# what Qwen2VLImageProcessor normalises with (OpenAI CLIP's mean and std); tests hold them to the processor's
QWEN_IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
QWEN_IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)
CACHE_IMAGES = 2048  # pooled maps kept, least recently used dropped (fp16, C*h*w each: 128 KiB for a 16x16 grid at C=256, 256 MiB in all)


def unpatchify(rows: torch.Tensor, grid_thw: tuple[int, int, int], patch: int, merge: int, temporal: int) -> torch.Tensor:
    """One image's processor rows (t*h*w, 3*T*p*p) -> its first frame (3, h*p, w*p), still normalised.

    The processor orders rows (t, h/m, w/m, m, m) and each row's values (channel, T, p, p).
    """
    t, h, w = grid_thw
    x = rows.reshape(t, h // merge, w // merge, merge, merge, 3, temporal, patch, patch)
    x = x.permute(0, 6, 5, 1, 3, 7, 2, 4, 8)  # (t, T, C, h/m, m, p, w/m, m, p)
    return x.reshape(t * temporal, 3, h * patch, w * patch)[0]


class SegmenterVision(nn.Module):
    """The vision tower of ``vision.source="segmenter"``: segmenter encoder features -> merged image tokens."""

    def __init__(self, config: CitrusVConfig, encoder: nn.Module) -> None:
        super().__init__()
        vis, seg = config.vision, config.segmenter
        self.patch_size, self.spatial_merge_size, self.temporal_patch_size = vis.patch_size, vis.spatial_merge_size, vis.temporal_patch_size
        self.image_size, self.pixel_norm = seg.image_size, seg.pixel_norm
        channels = seg.hidden_size * vis.spatial_merge_size**2
        self.merger = nn.Sequential(
            nn.LayerNorm(channels), nn.Linear(channels, channels), nn.GELU(), nn.Linear(channels, config.llm.hidden_size)
        )
        self._encoder = [encoder]  # a list, so that it is not a submodule (its weights live in the segmenter)
        self._cache: collections.OrderedDict[tuple, torch.Tensor] = collections.OrderedDict()
        self._cache_weights: tuple | None = None

    @property
    def dtype(self) -> torch.dtype:
        return self.merger[1].weight.dtype

    @property
    def device(self) -> torch.device:
        return self.merger[1].weight.device

    @property
    def encoder(self) -> nn.Module:
        return self._encoder[0]

    # ------------------------------------------------------------------ forward
    def forward(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor, **kwargs) -> BaseModelOutputWithPooling:  # noqa: ANN003
        """pixel_values (P, 3*T*p*p), grid_thw (n, 3) -> pooler_output (sum_i t*h*w/m^2, llm_hidden)."""
        grids = [tuple(int(v) for v in g) for g in grid_thw]
        sizes = [t * h * w for t, h, w in grids]
        if sum(sizes) != pixel_values.shape[0]:
            raise ValueError(f"SegmenterVision: grid_thw {grids} covers {sum(sizes)} patch rows, pixel_values has {pixel_values.shape[0]}")
        pooled = self.pooled_maps(pixel_values, grids, sizes)  # n x (C, h, w)
        m = self.spatial_merge_size
        blocks = []
        for fmap in pooled:
            c, h, w = fmap.shape
            x = fmap.reshape(c, h // m, m, w // m, m).permute(1, 3, 2, 4, 0)  # (h/m, w/m, m, m, C)
            blocks.append(x.reshape((h // m) * (w // m), m * m * c))
        tokens = torch.cat(blocks).to(self.dtype)  # (N, m*m*C)
        return BaseModelOutputWithPooling(last_hidden_state=tokens, pooler_output=self.merger(tokens))

    def pooled_maps(self, pixel_values: torch.Tensor, grids: list[tuple[int, int, int]], sizes: list[int]) -> list[torch.Tensor]:
        """Each image's encoder map averaged over its ViT patches: n x (C, h, w) (from the cache when it can)."""
        fixed = not any(p.requires_grad for p in self.encoder.parameters())  # no gradient to give it
        frozen = fixed or not torch.is_grad_enabled()
        if frozen:
            weights = tuple((p.data_ptr(), p._version) for p in self.encoder.parameters())
            if weights != self._cache_weights:  # new or changed encoder weights: nothing cached holds
                self._cache.clear()
                self._cache_weights = weights
        out: list[torch.Tensor | None] = []
        todo: list[int] = []
        keys: list[tuple] = []
        for i, rows in enumerate(torch.split(pixel_values, sizes)):
            key = (grids[i], hashlib.sha1(rows.detach().float().cpu().numpy().tobytes()).hexdigest()) if frozen else ()
            keys.append(key)
            hit = self._cache.get(key) if frozen else None
            if hit is not None:
                self._cache.move_to_end(key)
                out.append(hit.to(self.device, torch.float32))
            else:
                out.append(None)
                todo.append(i)
        if todo:
            rows = torch.split(pixel_values, sizes)
            images = torch.stack([self.segmenter_input(rows[i], grids[i]) for i in todo])  # (k, 3, S, S)
            with torch.no_grad() if fixed else contextlib.nullcontext():  # no_grad: TinyViT's inference path
                fmaps = self.encoder(images.to(self.dtype)).float()  # (k, C, S/4, S/4)
            for j, i in enumerate(todo):
                _, h, w = grids[i]
                out[i] = F.adaptive_avg_pool2d(fmaps[j], (h, w))  # (C, h, w)
                if frozen:  # kept in fp16, and served so at once: a cached image gives what a fresh one gives
                    kept = self._cache[keys[i]] = out[i].detach().to("cpu", torch.float16)
                    out[i] = kept.to(self.device, torch.float32)
                    while len(self._cache) > CACHE_IMAGES:
                        self._cache.popitem(last=False)
        return out  # type: ignore[return-value]

    def segmenter_input(self, rows: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """One image's patch rows -> (3, S, S) as the segmenter takes it: stretched, then ``pixel_norm``."""
        img = unpatchify(rows.float(), grid, self.patch_size, self.spatial_merge_size, self.temporal_patch_size)
        mean = torch.tensor(QWEN_IMAGE_MEAN, device=img.device).view(3, 1, 1)
        std = torch.tensor(QWEN_IMAGE_STD, device=img.device).view(3, 1, 1)
        img = (img * std + mean).clamp(0, 1)  # (3, H, W) in [0, 1]
        s = self.image_size
        img = F.interpolate(img[None], size=(s, s), mode="bilinear", align_corners=False, antialias=True)[0]
        return scale_sam_pixels(img, self.pixel_norm)

def use_segmenter_vision(mllm: nn.Module, config: CitrusVConfig, encoder: nn.Module) -> SegmenterVision:
    """Give ``mllm`` (Qwen2_5_VLForConditionalGeneration) the image tokens ``config.vision.source`` names.

    ``"segmenter"``: a ``SegmenterVision`` stands where the ViT was (``mllm.model.visual``).
    ``"vit+segmenter"``: the ViT stays, a ``SegmenterVision`` sits beside it (``mllm.model.visual_segmenter``)
    and a forward hook on the ViT adds its tokens to the ViT's; its last layer starts at zero, so a
    model given the branch computes what it computed before until the branch is trained.
    """
    vision = SegmenterVision(config, encoder)
    if config.vision.source == "segmenter":
        mllm.model.visual = vision
    elif config.vision.source == "vit+segmenter":
        nn.init.zeros_(vision.merger[-1].weight)
        nn.init.zeros_(vision.merger[-1].bias)
        mllm.model.visual_segmenter = vision
        mllm.model.visual.register_forward_hook(_add_branch(vision), with_kwargs=True)
    else:
        raise ValueError(f"use_segmenter_vision: vision.source {config.vision.source!r} reads no segmenter features")
    return vision


def _add_branch(branch: SegmenterVision):
    def hook(module: nn.Module, args: tuple, kwargs: dict, output):  # noqa: ANN202
        pixel_values = args[0] if args else kwargs["hidden_states"]
        grid_thw = kwargs["grid_thw"] if "grid_thw" in kwargs else args[1]
        output.pooler_output = output.pooler_output + branch(pixel_values, grid_thw).pooler_output.to(output.pooler_output.dtype)
        return output

    return hook

