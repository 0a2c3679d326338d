"""The feature cache of stage 4 on cached features (``cached_seg``): what the frozen parts compute, once.

The image encoder's output for every image of the chosen records (``cache_images``, fp16) and the
frozen MLLM's hidden state at every ``[SEG]`` (``cache_states``), in shards of 8 records that an
interrupted run keeps; ``meta.json`` names the inputs a cache serves (data, records, a fingerprint
of the weights), so a cache is never read for other ones. ``CachedSet`` holds a split in memory
and collates batches of masks for the recipe.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from citrus_v.model.citrus_v import CitrusV
from citrus_v.model.segmenter import SegmenterFeatures

SHARD = 8  # records per cache shard (one encoder / MLLM batch)


# Everything ``segmenter.encode`` computes with: frozen while features are cached. SAM2's
# decoder projects the skip features inside ``encode`` (conv_s0/conv_s1), so those stay fixed too.
CACHED_PREFIXES = (
    "segmenter.image_encoder.", "segmenter.sam2.vision_encoder.", "segmenter.sam2.no_memory_embedding",
    "segmenter.sam2.mask_decoder.conv_s0.", "segmenter.sam2.mask_decoder.conv_s1.",
)


def _weights_fingerprint(model: CitrusV, prefixes: tuple[str, ...], settings: str = "") -> str:
    """sha256 (16 hex digits) over ``settings`` and the names and values of the tensors under ``prefixes``."""
    h = hashlib.sha256(settings.encode())
    for name, t in sorted(model.state_dict().items()):
        if name.startswith(prefixes):
            h.update(name.encode())
            h.update(t.detach().float().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def encoder_fingerprint(model: CitrusV) -> str:
    """What the image cache depends on: the tensors ``segmenter.encode`` uses and the SAM input settings."""
    seg = model.config.segmenter
    return _weights_fingerprint(model, CACHED_PREFIXES, f"{seg.kind}|{seg.image_size}|{seg.pixel_norm}")


# ------------------------------------------------------------------------------ caching
def segmentation_records(dataset: Any, max_records: int | None) -> list[int]:
    """Indices of ``dataset``'s records that carry masks, in file order, at most ``max_records``."""
    picked = [i for i, r in enumerate(dataset.records) if r.masks]
    if not picked:
        raise ValueError(f"{dataset.path}: no segmentation records (none has 'masks')")
    return picked[:max_records] if max_records is not None else picked


def atomic_save(tensors: dict[str, torch.Tensor], path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
    tmp.replace(path)


def shards(indices: list[int]) -> list[list[int]]:
    return [indices[i : i + SHARD] for i in range(0, len(indices), SHARD)]


def _shard_file(folder: Path, kind: str, k: int) -> Path:
    """``kind`` is "images" or "states"."""
    return folder / f"{kind}_{k:05d}.safetensors"


def _check_meta(folder: Path, meta: dict[str, Any]) -> None:
    """A cache folder serves only the inputs it was made for; a longer record list that starts
    with the cached one extends it (shards are by position, so the finished ones stay valid)."""
    f = folder / "meta.json"
    if f.is_file():
        old = json.loads(f.read_text(encoding="utf-8"))
        old_records, new_records = old.get("records", []), meta["records"]
        extends = len(new_records) >= len(old_records) and new_records[: len(old_records)] == old_records
        wrong = [f"{k}: cache has {old.get(k)!r}, this run {v!r}" for k, v in meta.items()
                 if old.get(k) != v and not (k == "records" and extends)]
        if len(old_records) % SHARD and len(new_records) > len(old_records):
            wrong.append(f"records: the cache's last shard is partial ({len(old_records)} records), so it cannot be extended")
        if wrong:
            raise ValueError(f"{folder} was made for other inputs ({'; '.join(wrong)}); use another --out or --image-cache")
        if new_records == old_records:
            return
    folder.mkdir(parents=True, exist_ok=True)
    f.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


@torch.inference_mode()
def cache_images(model: CitrusV, dataset: Any, indices: list[int], folder: Path, *, progress: bool = True) -> None:
    """Shard k of ``folder``: the image encoder's output for the images of 8 records (fp16), their
    ground-truth masks and each mask's image index. Existing shards are kept."""
    from tqdm import tqdm

    from citrus_v.data.collate import collate

    _check_meta(folder, {"data": str(Path(dataset.path).resolve()), "records": indices,
                         "encoder": encoder_fingerprint(model)})
    todo = [(k, chunk) for k, chunk in enumerate(shards(indices)) if not _shard_file(folder, "images", k).is_file()]
    tok = model.config.tokens
    for k, chunk in tqdm(todo, desc=f"caching image features ({folder.name})", disable=not progress):
        batch = collate([dataset.encode(i) for i in chunk], pad_token_id=0, seg_token_id=tok.seg_token_id)
        feats = model.segmenter.encode(batch["sam_images"].to(next(model.segmenter.parameters()).dtype))
        out = {"image_embeddings": feats.image_embeddings.half(), "gt_masks": batch["gt_masks"].bool(),
               "seg_image_index": batch["seg_image_index"]}
        for j, hr in enumerate(feats.high_resolution_features):
            out[f"high_res_{j}"] = hr.half()
        atomic_save(out, _shard_file(folder, "images", k))


@torch.inference_mode()
def cache_states(model: CitrusV, dataset: Any, indices: list[int], folder: Path, *, pad_token_id: int,
                 progress: bool = True) -> None:
    """Shard k of ``folder``: the frozen MLLM's last hidden state at every [SEG] of 8 records
    (teacher-forced on the record's answer, as stage 4 sees it). Existing shards are kept."""
    from tqdm import tqdm

    from citrus_v.data.collate import collate

    _check_meta(folder, {"data": str(Path(dataset.path).resolve()), "records": indices,
                         "mllm": _weights_fingerprint(model, ("mllm.",))})
    todo = [(k, chunk) for k, chunk in enumerate(shards(indices)) if not _shard_file(folder, "states", k).is_file()]
    seg_id = model.config.tokens.seg_token_id
    for k, chunk in tqdm(todo, desc=f"caching [SEG] states ({folder.name})", disable=not progress):
        batch = collate([dataset.encode(i) for i in chunk], pad_token_id=pad_token_id, seg_token_id=seg_id)
        hidden = model.hidden_states(batch["input_ids"], batch["attention_mask"], batch["pixel_values"], batch["image_grid_thw"])
        atomic_save({"seg_hidden": hidden[batch["input_ids"] == seg_id].float()}, _shard_file(folder, "states", k))


@dataclass
class CachedSet:
    """Every cached mask of one split, in memory: [SEG] states, image features and targets."""

    seg_hidden: torch.Tensor  # (n_seg, H)
    image_embeddings: torch.Tensor  # (n_img, C, h, w) fp16
    high_res: list[torch.Tensor]  # SAM2's skip features (fp16); empty for LiteMedSAM
    gt_masks: torch.Tensor  # (n_seg, 256, 256) bool
    image_of: torch.Tensor  # (n_seg,) index into image_embeddings

    def __len__(self) -> int:
        return int(self.seg_hidden.shape[0])

    def features(self, rows: torch.Tensor) -> tuple[SegmenterFeatures, torch.Tensor]:
        """Features of the images of masks ``rows`` (each image once, fp32) and each mask's index into them."""
        used, per_seg = torch.unique(self.image_of[rows], return_inverse=True)
        feats = SegmenterFeatures(self.image_embeddings[used].float(), [h[used].float() for h in self.high_res])
        return feats, per_seg

    def batch(self, rows: list[int]) -> dict[str, torch.Tensor]:
        """The collated batch of masks ``rows`` (the recipe's collate_fn, over ``range(len(self))``):
        seg_hidden (n, H), the images' features (image_embeddings, high_res_j), gt_masks (n, 256, 256)
        and image_index (n,) into the features."""
        picked = torch.tensor(rows)
        feats, per_seg = self.features(picked)
        return {"seg_hidden": self.seg_hidden[picked], "image_embeddings": feats.image_embeddings,
                **{f"high_res_{j}": h for j, h in enumerate(feats.high_resolution_features)},
                "gt_masks": self.gt_masks[picked], "image_index": per_seg}


def load_cached_set(images: Path, states: Path, n_shards: int) -> CachedSet:
    hidden, emb, gt, image_of, high = [], [], [], [], []
    offset = 0
    for k in range(n_shards):
        a = load_file(str(_shard_file(images, "images", k)))
        s = load_file(str(_shard_file(states, "states", k)))
        if s["seg_hidden"].shape[0] != a["gt_masks"].shape[0]:
            raise ValueError(f"shard {k}: {s['seg_hidden'].shape[0]} [SEG] states but {a['gt_masks'].shape[0]} masks")
        hidden.append(s["seg_hidden"])
        emb.append(a["image_embeddings"])
        gt.append(a["gt_masks"])
        image_of.append(a["seg_image_index"] + offset)
        high.append([a[key] for key in sorted(k2 for k2 in a if k2.startswith("high_res_"))])
        offset += a["image_embeddings"].shape[0]
    return CachedSet(torch.cat(hidden), torch.cat(emb), [torch.cat(h) for h in zip(*high)], torch.cat(gt), torch.cat(image_of))
