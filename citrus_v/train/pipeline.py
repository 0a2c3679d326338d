"""From files to a trained model folder: init model + tokenizer, the stage's data mixture,
``recipe.train``, and the exported ``final/`` folder (``save_pretrained`` layout) that the
next stage, ``citrus-v predict`` and ``--init`` read."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from citrus_v.train.distributed import DistContext, barrier
from citrus_v.train.recipe import TrainingRefused, TrainResult, train
from citrus_v.train.stages import SEG_PARTS, StageConfig

log = logging.getLogger(__name__)


@dataclass
class MixtureDataset:
    """The stage's samples: (source dataset, index) pairs, each source repeated by its weight."""

    sources: list[Any]  # JsonlDataset objects
    items: list[tuple[int, int]]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Any:
        s, j = self.items[i]
        return self.sources[s][j]


def _weighted(indices: list[int], weight: float, seed: int) -> list[int]:
    """floor(weight) copies of every index plus a seeded fraction of one more copy."""
    whole, frac = int(weight), weight - int(weight)
    out = indices * whole
    if frac > 0:
        g = torch.Generator().manual_seed(seed)
        pick = torch.randperm(len(indices), generator=g)[: round(frac * len(indices))].tolist()
        out += [indices[k] for k in sorted(pick)]
    return out


def build_mixture(stage: StageConfig, data_files: Sequence[str | Path], template: Any, *,
                  allow_outside: bool = False) -> MixtureDataset:
    """Resolve the stage's mixture: JSONL entries are read directly; ``task:X`` entries select
    records of task X from ``data_files``. An entry that yields nothing is an error. Each record's
    files are checked as it is read, by the rule of ``citrus-v data validate`` (``allow_outside``:
    its ``--allow-outside``)."""
    from citrus_v.data.checks import FileRules
    from citrus_v.data.dataset import JsonlDataset

    rules = FileRules(allow_outside=allow_outside)
    pool = [JsonlDataset(f, template, rules=rules) for f in data_files]
    sources: list[Any] = list(pool)
    items: list[tuple[int, int]] = []
    for k, entry in enumerate(stage.mixture):
        picked: list[tuple[int, int]] = []
        if entry.task is not None:
            for s, ds in enumerate(pool):
                idx = [i for i, r in enumerate(ds.records) if r.task == entry.task]
                picked += [(s, i) for i in _weighted(idx, entry.weight, stage.seed + k)]
        else:
            sources.append(JsonlDataset(entry.source, template, rules=rules))
            s = len(sources) - 1
            picked = [(s, i) for i in _weighted(list(range(len(sources[s]))), entry.weight, stage.seed + k)]
        if not picked:
            where = f"in {[str(f) for f in data_files]}" if entry.task else ""
            raise ValueError(f"stage {stage.name}: mixture entry {entry.source!r} matched no records {where}".rstrip())
        items += picked
    return MixtureDataset(sources, items)


def check_stage_has_work(stage: StageConfig, dataset: MixtureDataset, lora: bool = False) -> None:
    """Refuse, before any step, a stage whose data has nothing it trains on: a stage that trains only
    the segmenter side (seg projector, SAM2) learns from mask terms alone, so it needs records with
    [SEG] + masks. (Any other stage trains its LM term on every record.)"""
    segmenter_only = set(stage.trainable_parts) <= {*SEG_PARTS, "sam2_memory"} and not lora
    if not segmenter_only or stage.token_reading or stage.copy_attention:
        return
    used = {(s, j) for s, j in dataset.items}
    if any(dataset.sources[s].records[j].masks for s, j in used):
        return
    raise NothingToTrainError(
        f"stage {stage.stage} trains the segmenter only ({', '.join(stage.trainable_parts)}): none of the {len(used)} "
        f"records has a mask ([SEG] in the answer + \"masks\"); add segmentation records"
    )


class NothingToTrainError(TrainingRefused):
    """The stage's data holds no record that any of its loss terms trains on."""


def init_model_and_template(init: str | Path | None, preset: str, stage: StageConfig, data_files: Sequence[str | Path],
                            template_style: str = "auto"):
    """-> (model, tokenizer, template). ``init`` is a model folder (save_pretrained or the
    published layout); without it a fresh ``preset`` model is built, and for ``tiny`` a small
    BPE is trained on the data's text (the 8b uses the real Qwen2.5 tokenizer). ``template_style``
    renders box and ref placeholders (``citrus_v.data.placeholders``); ``auto``: the published text
    for the published folder and the 8b preset, ours otherwise."""
    from citrus_v.data.image_processing import ImageConfig
    from citrus_v.data.placeholders import template_style_for
    from citrus_v.data.template import ChatTemplate

    if init is not None:
        from citrus_v.model.loading import load_model_and_tokenizer

        model, tokenizer, template = load_model_and_tokenizer(init)
        model.train()
        style = template_style_for(model.config.name, template_style)
        return model, tokenizer, ChatTemplate(tokenizer, template.image_cfg, max_length=stage.max_length, style=style)

    from citrus_v.config import get_preset
    from citrus_v.data.schema import read_jsonl
    from citrus_v.data.tokenizer import build_qwen25_tokenizer, train_tiny_tokenizer
    from citrus_v.model.build import build_model

    model = build_model(preset, seed=stage.seed)
    cfg = model.config
    if cfg.segmenter.kind == "litemedsam":  # a fresh LiteMedSAM side starts from its pretrained weights
        from citrus_v.model.litemedsam import load_litemedsam_weights

        log.info("segmenter initialised from %s", load_litemedsam_weights(model.segmenter))
    if get_preset(preset).cpu_sized:
        texts = [m.content for f in data_files for r in read_jsonl(f) for m in r.messages]
        tokenizer = train_tiny_tokenizer(texts, vocab_size=cfg.llm.vocab_size)
        base = ImageConfig()
    else:
        tokenizer = build_qwen25_tokenizer()
        base = ImageConfig.published()
    image_cfg = ImageConfig(
        min_pixels=base.min_pixels, max_pixels=base.max_pixels, patch_size=cfg.vision.patch_size,
        merge_size=cfg.vision.spatial_merge_size, temporal_patch_size=cfg.vision.temporal_patch_size,
        sam_image_size=cfg.segmenter.image_size,
        sam_pixel_norm=cfg.segmenter.pixel_norm,
    )
    style = template_style_for(cfg.name, template_style)
    return model, tokenizer, ChatTemplate(tokenizer, image_cfg, max_length=stage.max_length, style=style)


def export_final(checkpoint_dir: Path, model_config: Any, tokenizer: Any, out: Path, lora_scaling: float | None = None,
                 image_cfg: Any = None) -> Path:
    """Write ``out`` (see ``write_model_folder``) from a training checkpoint's weights (a
    fresh CPU model, so this works the same after DDP or FSDP2)."""
    from citrus_v.model.citrus_v import CitrusV
    from citrus_v.train.checkpointing import load_checkpoint

    state = load_checkpoint(checkpoint_dir)
    if lora_scaling is not None:
        from citrus_v.train.lora import merge_lora_state_dict

        state.model = merge_lora_state_dict(state.model, lora_scaling)
    from citrus_v.model.token_reading import drop_head

    state.model = drop_head(state.model)  # a training-only head is in the checkpoint, not in the model folder
    with torch.device("cpu"):
        model = CitrusV(model_config)
    model.load_state_dict(state.model, strict=True)
    return write_model_folder(model, tokenizer, out, image_cfg)


def write_model_folder(model: Any, tokenizer: Any, out: Path, image_cfg: Any = None, dtype: Any = None) -> Path:
    """A complete model folder at ``out``, which appears whole or not at all (``_write_beside``)."""
    return _write_beside(out, lambda tmp: _fill_model_folder(model, tokenizer, tmp, image_cfg, dtype))


def _write_beside(out: Path, fill: Any) -> Path:
    """``fill`` a folder beside ``out`` (``<name>.partial``, a leftover of a killed save is cleared first),
    then rename it into place; an older ``out`` is moved aside and removed after. A kill leaves either the
    old ``out``, or none (a resumed run writes it again), never a half-written one."""
    import shutil

    out = Path(out)
    tmp, old = out.with_name(out.name + ".partial"), out.with_name(out.name + ".old")
    for leftover in (tmp, old):
        shutil.rmtree(leftover, ignore_errors=True)
    from citrus_v.train.checkpointing import passed

    fill(tmp)
    passed("final:filled")
    if out.exists():
        out.rename(old)
    passed("final:moved_aside")
    tmp.rename(out)
    passed("final:renamed")
    shutil.rmtree(old, ignore_errors=True)
    return out


def _fill_model_folder(model: Any, tokenizer: Any, out: Path, image_cfg: Any, dtype: Any) -> None:
    """Weights + config (save_pretrained, floating-point tensors stored as ``dtype`` when given),
    the tokenizer's files with its chat template, and the image sizing the model was trained with
    (preprocessor_config.json), so inference resizes images the same way."""
    from citrus_v.model.loading import write_preprocessor_config

    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, dtype=dtype, tokenizer=tokenizer)
    if image_cfg is not None:
        write_preprocessor_config(out, image_cfg)


def run_stage(stage: StageConfig, *, data_files: Sequence[str | Path], out_dir: str | Path, init: str | Path | None = None,
              preset: str = "tiny", resume: bool = False, dist_ctx: DistContext | None = None, progress: bool = True,
              lora: bool = False, loader_workers: int = 0, time_budget_s: float | None = None,
              allow_outside: bool = False, template_style: str = "auto", report_to: Sequence[str] = ()) -> TrainResult:
    """One stage from files: returns the recipe's result; ``out_dir/final`` holds the model."""
    from citrus_v.data.collate import make_collate_fn

    ctx = dist_ctx or DistContext()
    out_dir = Path(out_dir)
    model, tokenizer, template = init_model_and_template(init, preset, stage, data_files, template_style)
    log.info("box and ref placeholders rendered as the %s template", template.style)
    dataset = build_mixture(stage, data_files, template, allow_outside=allow_outside)
    ids = template.ids
    collate = make_collate_fn(ids.pad, model.config.tokens.seg_token_id, model.config.vision.spatial_merge_size)
    log.info("%s: %d samples from %d mixture entries", stage.name, len(dataset), len(stage.mixture))
    check_stage_has_work(stage, dataset, lora)
    adjust = None
    settings = None
    if lora:
        from citrus_v.train.lora import LoraSettings, apply_lora, restrict_to_lora

        settings = LoraSettings()
        apply_lora(model, settings)
        adjust = restrict_to_lora
    result = train(stage, model, dataset, collate, out_dir, resume=resume, dist_ctx=ctx, progress=progress,
                   adjust_trainable=adjust, loader_workers=loader_workers, time_budget_s=time_budget_s, report_to=report_to)
    if ctx.is_main:
        export_final(result.final_dir, model.config, tokenizer, out_dir / "final",
                     lora_scaling=settings.scaling if settings else None, image_cfg=template.image_cfg)
    barrier(ctx)
    return result


def run_all_stages(stages: Sequence[StageConfig], *, data_files: Sequence[str | Path], out_dir: str | Path,
                   init: str | Path | None = None, preset: str = "tiny", resume: bool = False,
                   dist_ctx: DistContext | None = None, progress: bool = True, lora: bool = False,
                   allow_outside: bool = False, template_style: str = "auto", report_to: Sequence[str] = ()) -> list[TrainResult]:
    """Stages in order, each starting from the previous stage's ``final`` folder."""
    results = []
    for stage in stages:
        sub = Path(out_dir) / f"stage{stage.stage}"
        if resume and (sub / "final" / "config.json").is_file():
            log.info("%s already finished (%s): skipping", stage.name, sub / "final")
            init = sub / "final"
            continue
        results.append(run_stage(stage, data_files=data_files, out_dir=sub, init=init, preset=preset, resume=resume,
                                 dist_ctx=dist_ctx, progress=progress, lora=lora, allow_outside=allow_outside,
                                 template_style=template_style, report_to=report_to))
        init = sub / "final"
    return results
