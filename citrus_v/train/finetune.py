"""Fine-tuning a trained model on one's own data: the schedule, the validation slice, its loss.

``citrus-v train --stage N --data my.jsonl --init <model folder>`` is a fine-tune: the model already
knows its trade, so it gets a small learning rate, a length in epochs over the user's records and a
short warm-up (:func:`finetune_stage`), not the from-scratch "smoke" schedule that tests use
(``--schedule smoke``). A seeded slice of the records, whole images at a time, is held out
(:func:`split_records`) unless ``--val`` names a file, and its loss is measured before and after
(:func:`validation_loss`).

The tiny presets' lr (1e-4) was set before its sweep finished; the sweep (docs/training.md,
"Fine-tuning on your own data": VQA-RAD train, one epoch over 400 records, LM loss on a 5% slice held
out by image, 13.84 before) ended 1e-4 -> 7.08, 3e-4 -> 5.46, 1e-3 -> 4.22, but the VQA-RAD benchmark
rerun at 1e-3 bought its lower loss by answering "yes" to nearly every test question, so a lower
validation loss alone did not move the default. On the polyp benchmark
(scripts/bench_finetune_polyp.py: CVC-ClinicDB, split by video sequence) the default 1e-4, one epoch,
lifted held-out Dice from 0.156 to 0.750 (benchmarks/finetune_polyp_cpu.json), so it stays.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from citrus_v.train.stages import StageConfig

log = logging.getLogger(__name__)

# "auto" is "finetune" with --init, else the preset's own from-scratch schedule ("smoke" for the
# tiny presets: lr 1e-3, 20 steps; "published" for the 8b); with a stage file, the file's ("file")
SCHEDULES = ("auto", "finetune", "smoke", "published")
SPLIT_DIR = "data"  # under --out: train.jsonl and val.jsonl of the split
REPORT_FILE = "finetune.json"  # under --out: the schedule, the split and the validation losses


@dataclass(frozen=True)
class FinetuneSchedule:
    """How a trained model is fine-tuned; ``warmup_fraction`` of the optimizer steps warm up."""

    lr: float
    epochs: float
    warmup_fraction: float = 0.05
    micro_batch_size: int = 1
    grad_accum: int = 8

    def __post_init__(self) -> None:
        for name in ("lr", "epochs"):
            if not getattr(self, name) > 0:
                raise ValueError(f"FinetuneSchedule.{name}: must be > 0, got {getattr(self, name)!r}")
        if not 0 <= self.warmup_fraction < 1:
            raise ValueError(f"FinetuneSchedule.warmup_fraction: must be in [0, 1), got {self.warmup_fraction!r}")


# tiny: lr 1e-4 (set before the sweeps in the module docstring; not yet moved by a held-out metric), 8 records a step; 8b: the published stage lr
# (1e-5, itself a fine-tune of a pretrained Qwen2.5-VL) and its batch; not measured here
FINETUNE = {
    "tiny": FinetuneSchedule(lr=1e-4, epochs=1.0, micro_batch_size=4, grad_accum=2),
    "tiny_litemedsam": FinetuneSchedule(lr=1e-4, epochs=1.0, micro_batch_size=4, grad_accum=2),
    "8b": FinetuneSchedule(lr=1e-5, epochs=1.0, micro_batch_size=1, grad_accum=8),
}


def choose_schedule(requested: str, init: Path | None, preset: str, *, stage_file: bool = False) -> str:
    """The schedule a run gets: ``requested`` unless it is "auto"; a stage file (``--stage-config``)
    keeps its own schedule ("file") unless one is named."""
    if requested not in SCHEDULES:
        raise ValueError(f"--schedule {requested!r}: choose one of {', '.join(SCHEDULES)}")
    if requested != "auto":
        return requested
    if stage_file:
        return "file"
    if init is not None:
        return "finetune"
    return "published" if preset == "8b" else "smoke"


def finetune_stage(stage: StageConfig, preset: str, n_train: int, world_size: int = 1) -> StageConfig:
    """``stage`` (its parts and mixture) with the fine-tune schedule of ``preset`` over ``n_train``
    records: lr, length in epochs, warm-up of a few % of the steps, cosine to 0. A data set smaller
    than one step's window gets a smaller window (fewer accumulated micro-batches) rather than an error."""
    s = FINETUNE[preset]
    micro = min(s.micro_batch_size, max(1, n_train // world_size))
    accum = max(1, min(s.grad_accum, n_train // (micro * world_size)))
    return stage.replace(lr=s.lr, epochs=s.epochs, max_steps=None, micro_batch_size=micro, grad_accum=accum,
                         warmup_steps=0, min_lr_ratio=0.0)


def with_warmup(stage: StageConfig, n_train: int, world_size: int = 1, fraction: float = 0.05) -> StageConfig:
    """``stage`` with ``fraction`` of its optimizer steps (at least 1) as warm-up."""
    window = stage.micro_batch_size * stage.grad_accum * world_size
    per_epoch = max(1, n_train // window)
    total = stage.max_steps if stage.max_steps is not None else max(1, math.ceil((stage.epochs or 1.0) * per_epoch))
    return stage.replace(warmup_steps=max(1, round(fraction * total)))


# ---------------------------------------------------------------------------------------
# The validation slice


def image_groups(records: Sequence[Any]) -> list[int]:
    """A group id per record: records that share an image (directly or through others) share a
    group; a record without images is a group of its own. (Union-find over image paths.)"""
    parent = list(range(len(records)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first_with: dict[str, int] = {}
    for i, rec in enumerate(records):
        for img in rec.images:
            j = first_with.setdefault(img, i)
            parent[root(i)] = root(j)
    return [root(i) for i in range(len(records))]


def split_records(records: Sequence[Any], *, fraction: float = 0.05, min_count: int = 1, max_count: int = 200,
                  seed: int = 0) -> tuple[list[int], list[int]]:
    """(train indices, val indices): a seeded slice of about ``fraction`` of the records (clamped to
    [min_count, max_count]), drawn whole image groups at a time so no image is on both sides.
    At least one group always stays for training."""
    if not 0 < fraction < 1:
        raise ValueError(f"validation fraction must be in (0, 1), got {fraction}")
    groups = image_groups(records)
    members: dict[int, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    if len(members) < 2:
        raise ValueError(f"{len(records)} record(s) on {len(members)} image group(s): too few to hold out a "
                         "validation slice; pass --val FILE")
    want = min(max_count, max(min_count, round(fraction * len(records))))
    import torch

    order = torch.randperm(len(members), generator=torch.Generator().manual_seed(seed)).tolist()
    keys = list(members)
    val: list[int] = []
    for k in order[:-1]:  # the last group in the order always trains
        if len(val) >= want:
            break
        val += members[keys[k]]
    held = set(val)
    return [i for i in range(len(records)) if i not in held], sorted(val)


def write_split(data_files: Sequence[Path], out_dir: Path, *, fraction: float, seed: int,
                allow_outside: bool = False) -> tuple[Path, Path, dict]:
    """Pool ``data_files``, split them (:func:`split_records`) and write ``out_dir/data/{train,val}.jsonl``
    with absolute file paths (the records leave their folders, so each path is first held to its own
    file's folder unless ``allow_outside``). -> (train file, val file, summary)."""
    from citrus_v.data.checks import check_paths
    from citrus_v.data.schema import iter_jsonl_lines, resolve, write_jsonl

    records = []
    for f in data_files:
        for line, rec in iter_jsonl_lines(f):
            if not allow_outside:
                check_paths(rec, f, line, f.parent)
            records.append(dataclasses.replace(rec, images=[str(resolve(p, f.parent).resolve()) for p in rec.images],
                                               masks=[str(resolve(p, f.parent).resolve()) for p in rec.masks]))
    train_idx, val_idx = split_records(records, fraction=fraction, seed=seed)
    folder = out_dir / SPLIT_DIR
    train_file, val_file = folder / "train.jsonl", folder / "val.jsonl"
    write_jsonl((records[i] for i in train_idx), train_file)
    write_jsonl((records[i] for i in val_idx), val_file)
    n_groups = len(set(image_groups([records[i] for i in val_idx])))
    summary = {"train_records": len(train_idx), "val_records": len(val_idx), "val_image_groups": n_groups,
               "fraction": fraction, "seed": seed, "train_file": str(train_file), "val_file": str(val_file)}
    return train_file, val_file, summary


# ---------------------------------------------------------------------------------------
# The validation loss


def forward_losses(model: Any, batch: dict[str, Any]) -> tuple[float, float | None, int]:
    """(LM loss, mask loss or None, masks) of one batch, as the model's own forward scores it.
    The one place that knows how the model reports its losses."""
    from citrus_v.model.objectives import MASK_TERMS, forward_and_score

    _, scored = forward_and_score(model, batch)
    n_masks = 0 if batch.get("gt_masks") is None else int(batch["gt_masks"].shape[0])
    # the weighted mask terms of the batch's masks (2 x BCE + Dice, + IoU head / point-align where on)
    mask = float(sum(v for k, v in scored.terms.items() if k in MASK_TERMS)) if n_masks else None
    return float(scored.terms["lm"]), mask, n_masks


def validation_loss(model_dir: Path, val_file: Path, *, max_length: int, batch_size: int = 4,
                    device: str = "cpu", allow_outside: bool = False, template_style: str = "auto") -> dict[str, float | int | None]:
    """The model folder's loss on ``val_file`` in eval mode: the LM loss as a mean over supervised
    tokens, the mask loss as a mean over masks (None when no record has one)."""
    import torch

    from citrus_v.data.collate import make_collate_fn
    from citrus_v.data.checks import FileRules
    from citrus_v.data.dataset import JsonlDataset
    from citrus_v.data.template import IGNORE_INDEX, ChatTemplate
    from citrus_v.model.loading import load_model_and_tokenizer
    from citrus_v.data.placeholders import template_style_for
    from citrus_v.train.recipe import batch_to_device

    model, tokenizer, loaded = load_model_and_tokenizer(model_dir, device=device)
    model.eval()
    style = template_style_for(model.config.name, template_style)
    template = ChatTemplate(tokenizer, loaded.image_cfg, max_length=max_length, style=style)
    data = JsonlDataset(val_file, template, rules=FileRules(allow_outside=allow_outside))
    collate = make_collate_fn(template.ids.pad, model.config.tokens.seg_token_id, model.config.vision.spatial_merge_size)
    lm_sum = mask_sum = 0.0
    tokens = masks = 0
    for start in range(0, len(data), batch_size):
        batch = collate([data[i] for i in range(start, min(start + batch_size, len(data)))])
        n_tok = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())  # positions the LM loss averages over
        with torch.no_grad():
            lm, mask, n_masks = forward_losses(model, batch_to_device(batch, torch.device(device)))
        lm_sum, tokens = lm_sum + lm * n_tok, tokens + n_tok
        if mask is not None:
            mask_sum, masks = mask_sum + mask * n_masks, masks + n_masks
    return {"lm_loss": lm_sum / max(tokens, 1), "mask_loss": mask_sum / masks if masks else None,
            "records": len(data), "masks": masks}


def format_losses(losses: dict[str, Any]) -> str:
    mask = "" if losses["mask_loss"] is None else f", mask loss {losses['mask_loss']:.4f} ({losses['masks']} masks)"
    return f"LM loss {losses['lm_loss']:.4f}{mask} on {losses['records']} records"


def write_report(out_dir: Path, report: dict[str, Any]) -> Path:
    path = out_dir / REPORT_FILE
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return path
