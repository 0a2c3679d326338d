"""Stage 4 on cached frozen features: the [SEG] projector and mask decoder, many steps for little CPU.

In stage 4 only the segmentation side trains (DESIGN §3): the MLLM is frozen, so the hidden
state of every ``[SEG]`` in a training record is a fixed function of that record. When the
segmenter's image encoder is frozen as well (the LiteMedSAM default: its pretrained features
are the point of using it, and its stride-1 TinyViT costs ~2 s per image on one CPU thread),
every image embedding is fixed too. This module computes both once per record and trains the
rest, ``CitrusV.decode_seg_states`` (projector + prompt / mask decoder) with the model's own
``objectives.mask_terms``, on the stored tensors: the same loss and gradients as
``citrus-v train --stage 4`` with the image encoder frozen, at a fraction of the cost per step.
Caching is a preparation step; the training is a stage of the one recipe (``recipe.train`` with
``stages.CACHED_STAGE4``, ``CachedMaskObjective``), so its optimizer, checkpoints and ``--resume``
(a different ``--steps`` included) are those of every stage.

    citrus-v train --stage 4 --cached --init runs/default/stage3/final \\
        --data runs/default/suite/train.jsonl --val runs/default/suite/val.jsonl --out runs/default/stage4
    citrus-v train-seg-cached --init runs/default/stage3/final --segmenter litemedsam \\
        --data runs/default/suite/train.jsonl --val runs/default/suite/val.jsonl --out runs/default/stage4

Layout under ``--out``: ``image_cache/`` (encoder outputs, ground-truth masks; reusable by any
run with the same data, records and image encoder: ``--image-cache``), ``states/`` ([SEG]
states of this ``--init``), ``checkpoints/`` (the recipe's, ``--resume``), ``best_val.safetensors``
(the trained parts at the best validation Dice so far) and ``val_curve.json``, ``metrics.jsonl``,
``loss_curve.png``, ``box_align/`` (the projector warm start's own run, when asked for),
``report.json`` and ``final/`` (a complete model folder, the best-validation weights).
Caching resumes too: finished shards are kept, so an interrupted run loses at most one shard.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from citrus_v.model.citrus_v import CitrusV
from citrus_v.model.losses import mask_window_factor
from citrus_v.model.objectives import LossTerms, mask_terms
from citrus_v.model.segmenter import SegmenterFeatures
from citrus_v.train.feature_cache import (
    CACHED_PREFIXES, CachedSet, atomic_save, cache_images, cache_states, load_cached_set, segmentation_records, shards,
)
from citrus_v.train.stages import CACHED_STAGE4, StageConfig

log = logging.getLogger(__name__)

TRAINED_PARTS = CACHED_STAGE4.trainable_parts  # seg_projector, sam2_prompt_encoder, sam2_mask_decoder


@dataclass(frozen=True)
class CachedSegConfig:
    steps: int = 3000
    batch_size: int = 16  # masks per step
    lr: float = 3e-4
    weight_decay: float = 0.01
    warmup_steps: int = 100
    max_records: int | None = 1500  # segmentation records of --data to cache (file order); None = all
    val_every: int = 250
    save_every: int = 500
    seed: int = 1
    trainable: tuple[str, ...] = TRAINED_PARTS
    # projector warm start before the mask loss (LiteMedSAM only; 0 = off): regress each projected
    # [SEG] onto the segmenter's box prompt of its ground-truth mask, folded into one token
    box_align_steps: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "val_every", "save_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"CachedSegConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.max_records is not None and self.max_records < 1:
            raise ValueError(f"CachedSegConfig.max_records must be >= 1 or None, got {self.max_records}")
        if self.box_align_steps < 0:
            raise ValueError(f"CachedSegConfig.box_align_steps must be >= 0, got {self.box_align_steps}")
        if not self.lr > 0:
            raise ValueError(f"CachedSegConfig.lr must be > 0, got {self.lr}")


# ------------------------------------------------------------------------------ the model
def with_litemedsam(model: CitrusV) -> CitrusV:
    """``model`` with its segmenter replaced by pretrained LiteMedSAM (same MLLM and projector).

    The projector's output width is the segmenter's prompt width (256 for both), so the
    projector trained with SAM2 is kept as the starting point."""
    from citrus_v.config import CitrusVConfig
    from citrus_v.model.litemedsam import load_litemedsam_weights

    if model.config.segmenter.kind == "litemedsam":
        return model
    name = "tiny_litemedsam" if model.config.name == "tiny" else f"{model.config.name}+litemedsam"
    config = dataclasses.replace(model.config, name=name, segmenter=CitrusVConfig.preset("tiny_litemedsam").segmenter)
    swapped = CitrusV(config)
    kept = {k: v for k, v in model.state_dict().items() if not k.startswith("segmenter.")}
    missing, unexpected = swapped.load_state_dict(kept, strict=False)
    if unexpected or any(not k.startswith("segmenter.") for k in missing):
        raise ValueError(f"segmenter swap: unexpected {unexpected[:5]}, missing {[k for k in missing if not k.startswith('segmenter.')][:5]}")
    log.info("segmenter: LiteMedSAM from %s", load_litemedsam_weights(swapped.segmenter))
    return swapped


# ------------------------------------------------------------------------------ training
class CachedMaskObjective(nn.Module):
    """forward(batch) -> LossTerms of cached stage 4: ``model.decode_seg_states`` on the batch's stored
    [SEG] states and image features, scored by ``objectives.mask_terms`` as the full pass scores them."""

    def __init__(self, model: CitrusV) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: dict[str, torch.Tensor], masks_in_window: int | None = None) -> LossTerms:
        cfg = self.model.config.loss
        high = sorted((k for k in batch if k.startswith("high_res_")), key=lambda k: int(k.rsplit("_", 1)[1]))
        feats = SegmenterFeatures(batch["image_embeddings"], [batch[k] for k in high])
        masks, ious = self.model.decode_seg_states(batch["seg_hidden"], feats, batch["image_index"], candidates=cfg.over_candidates)
        gt = batch["gt_masks"]
        factor = mask_window_factor(len(gt), masks_in_window)
        return LossTerms(mask_terms(cfg, masks, ious, gt.to(masks.dtype), candidates=cfg.over_candidates, factor=factor))


def dice_of_picked(model: CitrusV, data: CachedSet, batch_size: int = 32) -> list[float]:
    """Per-mask Dice of what inference returns (best predicted IoU, logits > 0) at 256 x 256;
    1.0 when prediction and ground truth are both empty."""
    from citrus_v.eval.metrics.segmentation import dice

    device = next(model.parameters()).device
    out: list[float] = []
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            rows = torch.arange(start, min(start + batch_size, len(data)))
            feats, per_seg = data.features(rows)
            feats = SegmenterFeatures(feats.image_embeddings.to(device), [h.to(device) for h in feats.high_resolution_features])
            masks, _ = model.decode_seg_states(data.seg_hidden[rows].to(device), feats, per_seg.to(device))
            for m, g in zip(masks.cpu(), data.gt_masks[rows]):
                out.append(float(dice((m > 0).numpy(), g.numpy())))
    return out


class BestOnValidation:
    """Cached stage 4's ``on_step`` hook for the recipe: Dice on ``val`` every ``every`` steps and at the
    run's end; the trained parts at the best Dice so far go to ``out_dir/best_val.safetensors`` and the
    curve to ``val_curve.json``, which a resumed run reads back without the entries its redone steps
    write again."""

    def __init__(self, model: CitrusV, val: CachedSet, every: int, out_dir: Path, resume: bool) -> None:
        self.model, self.val, self.every = model, val, every
        self.curve_file, self.best_file = out_dir / "val_curve.json", out_dir / "best_val.safetensors"
        self.curve = json.loads(self.curve_file.read_text(encoding="utf-8")) if resume and self.curve_file.is_file() else []
        self.started = False

    @property
    def best(self) -> dict[str, Any]:
        """{"step", "dice"} of the best validation so far (the first on ties)."""
        step, dice = max(self.curve, key=lambda e: e[1]) if self.curve else (None, -1.0)
        return {"step": step, "dice": dice}

    def __call__(self, step: int, end: int) -> dict[str, float]:
        if not self.started:  # a resumed run redoes the steps after its checkpoint
            self.curve, self.started = [e for e in self.curve if e[0] < step], True
        if step % self.every and step != end:
            return {}
        self.model.eval()
        dice = float(np.mean(dice_of_picked(self.model, self.val)))
        self.model.train()
        if dice > self.best["dice"]:
            atomic_save(_trained_state(self.model), self.best_file)
        self.curve.append([step, dice])
        tmp = self.curve_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.curve) + "\n", encoding="utf-8")
        tmp.replace(self.curve_file)
        return {"val_dice": dice}


def mask_boxes(gt_masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, H, W) bool -> boxes (m, 4) as pixel edges x1, y1, x2, y2 of the non-empty masks, and their rows (m,)."""
    from citrus_v.data.boxes import bbox_of  # the convention of the suite's ground-truth boxes

    rows = torch.nonzero(gt_masks.flatten(1).any(dim=1)).flatten()
    boxes = [bbox_of(gt_masks[r].cpu().numpy()) for r in rows.tolist()]
    return torch.tensor(boxes, dtype=torch.float32).view(-1, 4), rows


class BoxAlignObjective(nn.Module):
    """forward(batch) -> the box_align term: MSE between each projected [SEG] (n, H) -> (n, C) and its
    mask's box prompt token (n, C), a fixed target."""

    def __init__(self, model: CitrusV) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: dict[str, torch.Tensor], masks_in_window: int | None = None) -> LossTerms:
        return LossTerms({"box_align": F.mse_loss(self.model.seg_projector(batch["seg_hidden"]), batch["target"])})


def box_align(model: CitrusV, data: CachedSet, steps: int, out_dir: Path, *, lr: float = 1e-3, batch_size: int = 64,
              seed: int = 0, progress: bool = False) -> list[float]:
    """Warm-start the [SEG] projector (nothing else moves), a short stage of the recipe at a constant
    ``lr`` under ``out_dir``: MSE between each projected [SEG] and ``segmenter.box_prompt_token`` of
    its mask's box. Cheap (no decoder in the loop); the mask loss then teaches the decoder to read the
    token. Returns the loss per step."""
    from citrus_v.train.recipe import train

    if not model.segmenter.supports_box_token:
        raise ValueError(f"box_align_steps needs a LiteMedSAM segmenter, not {model.config.segmenter.kind!r}")
    boxes, rows = mask_boxes(data.gt_masks)
    scale = model.config.segmenter.image_size / data.gt_masks.shape[-1]  # mask pixels -> SAM input pixels
    with torch.no_grad():
        target = model.segmenter.box_prompt_token(boxes * scale).to(data.seg_hidden.dtype)  # (m, C)
    hidden = data.seg_hidden[rows]
    stage = CACHED_STAGE4.replace(name="stage4_box_align", trainable_parts=("seg_projector",), lr=lr, weight_decay=0.0,
                                  warmup_steps=0, min_lr_ratio=1.0, grad_clip=None, max_steps=steps, seed=seed,
                                  micro_batch_size=min(batch_size, len(rows)), save_every=steps)
    result = train(stage, model, range(len(rows)), lambda picked: {"seg_hidden": hidden[picked], "target": target[picked]},
                   out_dir, progress=progress, objective=BoxAlignObjective(model))
    return result.losses


def _trained_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.named_parameters() if v.requires_grad}


def freeze_cached(model: nn.Module) -> None:
    """Freeze what ``segmenter.encode`` computes with: its output is in the cache."""
    for name, p in model.named_parameters():
        if name.startswith(CACHED_PREFIXES):
            p.requires_grad_(False)


def cached_stage(cfg: CachedSegConfig) -> StageConfig:
    """Cached stage 4 (``stages.CACHED_STAGE4``) with ``cfg``'s schedule: one step is ``cfg.batch_size`` masks."""
    return CACHED_STAGE4.replace(trainable_parts=cfg.trainable, max_steps=cfg.steps, micro_batch_size=cfg.batch_size,
                                 lr=cfg.lr, weight_decay=cfg.weight_decay, warmup_steps=cfg.warmup_steps,
                                 save_every=cfg.save_every, seed=cfg.seed)


def train_cached(model: CitrusV, train: CachedSet, val: CachedSet | None, cfg: CachedSegConfig, out_dir: Path, *,
                 resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Train ``cfg.trainable`` on cached features with the one training loop (``recipe.train``,
    ``cached_stage(cfg)``); returns the report. The best-validation trained parts are loaded into
    ``model`` at the end (the last step's without ``val``)."""
    from citrus_v.train import recipe

    stage = cached_stage(cfg).replace(micro_batch_size=min(cfg.batch_size, len(train)))
    validate = BestOnValidation(model, val, cfg.val_every, out_dir, resume) if val is not None else None
    t0 = time.time()
    recipe.train(stage, model, range(len(train)), train.batch, out_dir, resume=resume, progress=progress,
                 adjust_trainable=freeze_cached, objective=CachedMaskObjective(model), on_step=validate)
    model.cpu()
    best = validate.best if validate is not None else {"step": None, "dice": -1.0}
    if best["step"] is not None:
        model.load_state_dict(load_file(str(validate.best_file)), strict=False)
    model.eval()
    return {"config": asdict(cfg), "train_masks": len(train), "val_masks": len(val) if val is not None else 0,
            "val_dice_curve": validate.curve if validate is not None else [], "best": best,
            "seconds": round(time.time() - t0, 1)}


def run_cached_stage4(cfg: CachedSegConfig, *, init: str | Path, data: str | Path, out_dir: str | Path,
                      val_data: str | Path | None = None, segmenter: str | None = None, image_cache: str | Path | None = None,
                      save_dtype: torch.dtype | None = None, resume: bool = False, cache_only: bool = False,
                      progress: bool = True) -> dict[str, Any]:
    """Everything ``citrus-v train-seg-cached`` does (module docstring); returns the report."""
    from citrus_v.data.dataset import JsonlDataset
    from citrus_v.data.image_processing import ImageConfig
    from citrus_v.data.template import ChatTemplate
    from citrus_v.model.loading import load_model_and_tokenizer
    from citrus_v.train.checkpointing import latest_checkpoint
    from citrus_v.train.pipeline import write_model_folder

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    model, tokenizer, template = load_model_and_tokenizer(init)
    if segmenter == "litemedsam":
        model = with_litemedsam(model)
    elif segmenter is not None:
        raise ValueError(f"--segmenter: only 'litemedsam' can replace the init model's segmenter, got {segmenter!r}")
    model.eval()
    base = template.image_cfg
    image_cfg = ImageConfig.for_model(model.config, min_pixels=base.min_pixels, max_pixels=base.max_pixels)
    template = ChatTemplate(tokenizer, image_cfg, template.ids)
    image_root = Path(image_cache) if image_cache is not None else out_dir / "image_cache"

    # validation first: it is small, and a run stopped early can already be judged on it
    splits = ({"val": Path(val_data)} if val_data is not None else {}) | {"train": Path(data)}
    sets: dict[str, CachedSet] = {}
    records: dict[str, int] = {}
    for split, path in splits.items():
        ds = JsonlDataset(path, template)
        indices = segmentation_records(ds, cfg.max_records if split == "train" else None)
        records[f"{split}_records"] = len(indices)
        log.info("%s: %d segmentation records of %s", split, len(indices), path)
        cache_images(model, ds, indices, image_root / split, progress=progress)
        if cache_only:
            continue
        cache_states(model, ds, indices, out_dir / "states" / split, pad_token_id=template.ids.pad, progress=progress)
        sets[split] = load_cached_set(image_root / split, out_dir / "states" / split, len(shards(indices)))
    if cache_only:
        return {"cached": {s: str(image_root / s) for s in splits}}

    def val_dice() -> float | None:
        return float(np.mean(dice_of_picked(model, sets["val"]))) if "val" in sets else None

    before, aligned = val_dice(), {}
    resuming = resume and latest_checkpoint(out_dir / "checkpoints") is not None  # the checkpoint holds the aligned projector
    if cfg.box_align_steps and not resuming:
        losses = box_align(model, sets["train"], cfg.box_align_steps, out_dir / "box_align", seed=cfg.seed, progress=progress)
        aligned = {"box_align_loss_first_last": [losses[0], losses[-1]], "val_dice_after_box_align": val_dice()}
        log.info("box-align warm start: loss %.4f -> %.4f, val Dice %s", losses[0], losses[-1], aligned["val_dice_after_box_align"])
    report = train_cached(model, sets["train"], sets.get("val"), cfg, out_dir, resume=resume, progress=progress)
    report |= {"init": str(init), "segmenter": model.config.segmenter.kind, "val_dice_before": before, **aligned, **records}
    write_model_folder(model, tokenizer, out_dir / "final", image_cfg, dtype=save_dtype)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report


# ------------------------------------------------------------------------------ CLI
def add_arguments(p) -> None:  # noqa: ANN001
    d = CachedSegConfig()
    p.add_argument("--init", required=True, type=Path, help="model folder after stage 3 (its MLLM stays frozen)")
    p.add_argument("--data", required=True, type=Path, help="training JSONL (its segmentation records are used)")
    p.add_argument("--val", type=Path, default=None, help="validation JSONL: Dice every --val-every steps; the best is kept")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--segmenter", choices=["litemedsam"], default=None,
                   help="replace the init model's segmenter by pretrained LiteMedSAM before training")
    p.add_argument("--image-cache", type=Path, default=None, help="where image features are cached (default OUT/image_cache)")
    p.add_argument("--max-records", type=int, default=d.max_records, help="segmentation records to cache (0 = all)")
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="masks per step")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--val-every", type=int, default=d.val_every)
    p.add_argument("--save-every", type=int, default=d.save_every)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--box-align-steps", type=int, default=d.box_align_steps,
                   help="projector warm start on box-prompt targets before the mask loss (LiteMedSAM; 0 = off)")
    p.add_argument("--save-dtype", choices=["float32", "float16", "bfloat16"], default=None,
                   help="precision of the saved weights (default: float16 with LiteMedSAM, to stay under 50 MB)")
    p.add_argument("--cache-only", action="store_true", help="only fill the image-feature cache, then stop")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint under --out")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run_cli)


def run_cli(args) -> int:  # noqa: ANN001
    """``citrus-v train-seg-cached``: ``citrus-v train --stage 4 --cached`` with the cache's own flags."""
    cfg = CachedSegConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                          max_records=args.max_records or None, val_every=args.val_every, save_every=args.save_every,
                          seed=args.seed, box_align_steps=args.box_align_steps)
    return _run(cfg, args, args.data, segmenter=args.segmenter, image_cache=args.image_cache,
                save_dtype=args.save_dtype, cache_only=args.cache_only)


def run_train_cli(args) -> int:  # noqa: ANN001
    """``citrus-v train --stage 4 --cached``: the cache's settings at CachedSegConfig's defaults; --steps,
    --lr and --save-every set its schedule."""
    given = [flag for flag, value in (("--epochs", args.epochs), ("--stage-config", args.stage_config), ("--lora", args.lora),
                                      ("--time-budget-min", args.time_budget_min)) if value]
    if given:
        raise SystemExit(f"--stage 4 --cached does not take {', '.join(given)}")
    if args.init is None:
        raise SystemExit("--stage 4 --cached needs --init (a model folder after stage 3: its MLLM stays frozen)")
    if len(args.data) != 1:
        raise SystemExit(f"--stage 4 --cached reads one --data file, got {len(args.data)}")
    d = CachedSegConfig()
    cfg = CachedSegConfig(steps=args.steps or d.steps, lr=args.lr or d.lr, save_every=args.save_every or d.save_every)
    return _run(cfg, args, args.data[0])


def _run(cfg: CachedSegConfig, args, data: Path, *, segmenter: str | None = None, image_cache: Path | None = None,  # noqa: ANN001
         save_dtype: str | None = None, cache_only: bool = False) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if not (args.init / "config.json").is_file():
        raise SystemExit(f"{args.init}: --init must be a model folder (config.json + model.safetensors)")
    for f in [data] + ([args.val] if args.val else []):
        if not f.is_file():
            raise SystemExit(f"{f}: no such data file")
    dtype = save_dtype or ("float16" if segmenter == "litemedsam" else None)
    report = run_cached_stage4(cfg, init=args.init, data=data, out_dir=args.out, val_data=args.val,
                               segmenter=segmenter, image_cache=image_cache,
                               save_dtype=getattr(torch, dtype) if dtype else None, resume=args.resume,
                               cache_only=cache_only, progress=not args.no_progress)
    if cache_only:
        print(f"image features cached: {report['cached']}")
        return 0
    print(f"val Dice before {report['val_dice_before']}, best {report['best']['dice']:.4f} at step {report['best']['step']}")
    print(f"model: {args.out / 'final'}; report: {args.out / 'report.json'}")
    return 0
