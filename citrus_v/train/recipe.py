"""One training loop for every stage.

``train(stage, model, dataset, collate_fn, out_dir)`` freezes the model to the stage's parts,
runs AdamW + cosine warm-up + clipping + gradient accumulation (with the mask-count
normalisation of DESIGN §1), checkpoints atomically, resumes bit-exactly, and writes
``metrics.jsonl`` and ``loss_curve.png``. ``run_all_stages`` chains stages 1 -> 4, each
starting from the previous stage's final weights.

Window bookkeeping: one optimizer step consumes a *window* of
``micro_batch_size * grad_accum * world_size`` consecutive indices of the epoch's seeded
permutation; the data position saved in a checkpoint is (epoch, index into that permutation).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

import torch.distributed as dist

from citrus_v.model.objectives import MASK_TERMS
from citrus_v.errors import UserError
from citrus_v.train import checkpointing as ckpt
from citrus_v.train.batches import micro_batch_stream, window_plan
from citrus_v.train.distributed import DistContext, all_reduce_sum, barrier, wrap_model
from citrus_v.train.metrics_log import MetricsLog, plot_loss_curve
from citrus_v.train.optim import build_optimizer, build_scheduler
from citrus_v.train.stages import StageConfig

log = logging.getLogger(__name__)

Batch = dict[str, Any]


class TrainableModel(Protocol):
    """What the recipe needs from a model (CitrusV provides it); objectives.score reads its output."""

    def set_trainable(self, parts: Sequence[str]) -> None: ...
    def set_seg_grad_scale(self, scale: float) -> None: ...
    def set_copy_attention(self, layer: int | None, head: int = 0, weight: float = 1.0) -> None: ...
    def set_token_reading(self, weight: float | None) -> None: ...
    def __call__(self, **inputs: Any) -> Any: ...  # a CitrusVOutput


@dataclass
class TrainResult:
    out_dir: Path
    final_dir: Path  # the last checkpoint folder (weights + optimizer + state)
    steps: int
    losses: list[float] = field(default_factory=list)  # per optimizer step, this process's run
    trainable_params: int = 0
    total_params: int = 0
    metrics_path: Path | None = None
    plot_path: Path | None = None
    skipped_micro_batches: int = 0  # this process's run, all ranks: micro-batches with no term to train


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; tied tensors counted once."""
    seen: set[int] = set()
    trainable = total = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return trainable, total


def count_masks(batch: Batch) -> int:
    masks = batch.get("gt_masks")
    return 0 if masks is None else int(masks.shape[0])


def total_steps_for(stage: StageConfig, n_samples: int, world_size: int) -> tuple[int, int]:
    """(total optimizer steps, steps per epoch)."""
    window = stage.micro_batch_size * stage.grad_accum * world_size
    per_epoch = n_samples // window
    if per_epoch == 0:
        raise ValueError(
            f"stage {stage.name}: {n_samples} samples are fewer than one optimizer step's window of {window} "
            f"(micro_batch_size {stage.micro_batch_size} x grad_accum {stage.grad_accum} x world_size {world_size})"
        )
    if stage.max_steps is not None:
        return stage.max_steps, per_epoch
    assert stage.epochs is not None  # StageConfig guarantees one of the two
    return max(1, math.ceil(stage.epochs * per_epoch)), per_epoch


def batch_to_device(batch: Batch, device: torch.device) -> Batch:
    """Every tensor of a collated batch moved to ``device``; other values as they are."""
    return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def _configure(model: nn.Module, stage: StageConfig, ctx: DistContext,
               adjust_trainable: Callable[[nn.Module], None] | None) -> None:
    """Set the stage's trainable parts, HookGrad scale, training-target heads and checkpointing."""
    model.set_trainable(stage.trainable_parts)
    if adjust_trainable is not None:  # e.g. LoRA: only adapters train inside the MLLM
        adjust_trainable(model)
    model.set_seg_grad_scale(stage.hook_grad_scale if stage.hook_grad_scale is not None else 1.0)
    c = stage.copy_attention
    if c and ctx.strategy == "fsdp2":
        # the head's scores are recomputed outside its layer's forward, where FSDP2 has resharded the weights
        raise ValueError(f"stage {stage.name}: copy_attention is not supported with --strategy fsdp2 (use ddp)")
    if c:
        model.set_copy_attention(c["layer"], c.get("head", 0), c.get("weight", 1.0))
    else:
        model.set_copy_attention(None)
    r = stage.token_reading  # after set_trainable: the new head trains
    model.set_token_reading(r.get("weight", 1.0) if r is not None else None)
    if stage.gradient_checkpointing:
        _enable_gradient_checkpointing(model)


def _resume(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, horizon: list[int],
            stage: StageConfig, ctx: DistContext) -> tuple[int, int, int]:
    """Load the checkpoint at ``path`` into these objects and the RNGs, set ``horizon[0]`` (the
    schedule's length, asked for on entry) by ``_resumed_length``; returns its (step, epoch, position)."""
    state = ckpt.load_checkpoint(path)
    ckpt.load_state(model, optimizer, state)
    scheduler.load_state_dict(state.scheduler)
    if state.rng is not None:
        ckpt.restore_rng(state.rng)
    step, epoch, position = state.trainer["step"], state.trainer["epoch"], state.trainer["position"]
    horizon[0] = _resumed_length(state.trainer, horizon[0], step, stage, ctx)
    # the next step's lr on the (possibly re-laid) cosine; LambdaLR reads horizon[0] when it steps
    for group, base, factor in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["lr"] = base * factor(scheduler.last_epoch)
    if ctx.is_main:
        log.info("resumed from %s at step %d (epoch %d, position %d)", path, step, epoch, position)
    return step, epoch, position


class TrainingRefused(UserError, ValueError):
    """A run the recipe will not start as asked (the message says why and what to change)."""


def _resumed_length(trainer: dict[str, Any], asked: int, step: int, stage: StageConfig, ctx: DistContext) -> int:
    """The schedule's length for a resumed run: the checkpointed run's (which a time budget may have
    shortened) when this run asks for the same length; otherwise the asked length, the cosine re-laid
    over it from the checkpoint's step on (said in one log line). Fewer steps than already done: refused."""
    saved = trainer.get("total_steps", asked)
    if asked == trainer.get("planned_steps", saved):
        return saved
    if asked < step:
        raise TrainingRefused(f"{stage.name}: the checkpoint is at step {step}, past the {asked} steps asked for; "
                              f"ask for {step} steps or more (its run had {saved})")
    if ctx.is_main:
        log.info("%s: schedule re-laid over %d steps (the checkpoint's run had %d); resuming at step %d",
                 stage.name, asked, saved, step)
    return asked


def _grad_norm(params: list[nn.Parameter], clip: float | None) -> float:
    if clip is None:
        norms = [p.grad.detach().float().norm() for p in params if p.grad is not None]
        total = torch.stack(norms).norm() if norms else torch.zeros(())
    else:
        total = torch.nn.utils.clip_grad_norm_(params, clip)
    full = getattr(total, "full_tensor", None)  # FSDP2 returns a DTensor
    return float(full() if full is not None else total)


def train(
    stage: StageConfig,
    model: nn.Module,
    dataset: Sequence[Any],
    collate_fn: Callable[[list[Any]], Batch],
    out_dir: str | Path,
    *,
    resume: bool = False,
    resume_from: str | Path | None = None,
    device: torch.device | str | None = None,
    dist_ctx: DistContext | None = None,
    progress: bool = True,
    stop_after: int | None = None,
    adjust_trainable: Callable[[nn.Module], None] | None = None,
    loader_workers: int = 0,
    time_budget_s: float | None = None,
    objective: nn.Module | None = None,
    on_step: Callable[[int, int], dict[str, Any]] | None = None,
    report_to: Sequence[str] = (),
) -> TrainResult:
    """Train ``model`` for one stage; see the module docstring.

    ``model`` is unwrapped (a ``TrainableModel``: CitrusV); it is wrapped here in its ``Objective``
    (batch -> named loss terms) and for DDP/FSDP2.
    ``resume`` continues from the newest checkpoint in ``out_dir/checkpoints`` (or
    ``resume_from``); a corrupt one raises CheckpointError. ``stop_after`` ends the run
    early after that many steps (a test hook; the schedule still spans the full run).
    ``loader_workers`` > 0 reads and collates batches in that many processes (same batches,
    same order). ``time_budget_s`` shortens the run (and its cosine) to the steps that fit in
    that many seconds at the step time measured as it runs (``_TimeBudget``); the length it
    settles on is checkpointed. ``objective`` (stages whose ``StageConfig.objective`` is not
    ``lm_mask``) scores a batch in place of the model's ``Objective``; it holds ``model`` as
    ``.model`` and may own parameters of its own (stage 0's dense heads), which train, count and
    checkpoint with the model's. ``report_to`` ("tensorboard", "wandb") sends the metrics rows there
    too (``citrus_v.train.metrics_log``). ``on_step(step, end)`` runs on the main process after each optimizer
    step (cached stage 4's validation); what it returns joins that step's metrics row.
    """
    if (objective is None) != (stage.objective == "lm_mask"):
        raise ValueError(f"stage {stage.name}: its objective {stage.objective!r} needs "
                         f"{'its own objective module' if objective is None else 'the model (no objective)'}, got {type(objective).__name__}")
    ctx = dist_ctx or DistContext()
    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    out_dir = Path(out_dir)
    ckpt_root = out_dir / "checkpoints"
    if ctx.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        ckpt.remove_partial(ckpt_root)

    owner, wrapped, (trainable, total) = _prepare(stage, model, objective, ctx, device, adjust_trainable)
    optimizer = build_optimizer(owner, stage)
    total_steps, _ = total_steps_for(stage, len(dataset), ctx.world_size)
    planned = total_steps  # the length asked for; a time budget may settle on fewer
    horizon = [total_steps]  # the schedule's length; a time budget may shorten it once the step time is known
    scheduler = build_scheduler(optimizer, stage, lambda: horizon[0])

    step, epoch, position = 0, 0, 0
    if resume or resume_from is not None:
        path = Path(resume_from) if resume_from is not None else ckpt.latest_checkpoint(ckpt_root)
        if path is not None:
            step, epoch, position = _resume(path, owner, optimizer, scheduler, horizon, stage, ctx)
            total_steps = horizon[0]
            time_budget_s = None  # a resumed run keeps the length the interrupted one had settled on
        elif ctx.is_main:
            log.info("no checkpoint under %s: starting from scratch", ckpt_root)

    metrics = MetricsLog(out_dir / "metrics.jsonl", resume_step=step if step else None, report_to=report_to) if ctx.is_main else None
    window_size = stage.micro_batch_size * stage.grad_accum * ctx.world_size
    params = [p for p in owner.parameters() if p.requires_grad]
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    )  # bf16 on GPU; CPUs here lack bf16, so fp32
    losses: list[float] = []
    last_dir = ckpt.latest_checkpoint(ckpt_root) if step else None
    end = total_steps if stop_after is None else min(total_steps, stop_after)
    plan = window_plan(len(dataset), epoch, position, window_size, end - step)
    batches = micro_batch_stream(dataset, collate_fn, plan, window_size, ctx, stage, loader_workers, pin=device.type == "cuda")
    bar = _progress_bar(step, total_steps, enabled=progress and ctx.is_main, desc=stage.name)
    t0 = time.perf_counter()
    skipped = 0  # micro-batches (all ranks) with no term to train
    budget = _TimeBudget(time_budget_s, start_step=step, cap=end) if time_budget_s is not None else None
    for epoch, position in plan:
        if step >= end:
            break
        micro = [batch_to_device(next(batches), device) for _ in range(stage.grad_accum)]
        window = _accumulate(wrapped, micro, ctx, autocast).reduced(ctx)
        skipped += window.skipped
        grad_norm = _grad_norm(params, stage.grad_clip)
        if window.trained:  # a window with nothing to train on any rank leaves the weights (and AdamW) as they are
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        lr = optimizer.param_groups[0]["lr"]  # the lr this step used (the scheduler's last one, or a re-laid cosine's)
        step += 1
        if budget is not None and (fit := budget.fit(step)) is not None and fit != end:
            end = horizon[0] = fit  # the cosine now ends where the time runs out (from the next step's lr on)
            bar.total = end
            log.info("%s: time budget of %.0f s fits %d steps in all (at step %d)", stage.name, time_budget_s, end, step)
        scheduler.step()

        loss = sum(window.terms.values())
        losses.append(loss)
        extra = on_step(step, end) if on_step is not None and ctx.is_main else {}
        elapsed = time.perf_counter() - t0
        if metrics is not None and (step % stage.log_every == 0 or step == end):
            metrics.write({"stage": stage.stage, "step": step, "epoch": epoch, "loss": loss,
                           **_logged_terms(window.terms, stage), "lr": lr, "grad_norm": grad_norm,
                           "skipped_micro_batches": skipped, "samples": step * window_size, "elapsed_s": round(elapsed, 3),
                           **extra})
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}", samples_s=f"{len(losses) * window_size / max(elapsed, 1e-9):.2f}")

        if step % stage.save_every == 0 or step == end:
            last_dir = _save(owner, optimizer, scheduler, ckpt_root, step, epoch, position, stage, ctx,
                             horizon[0], planned, getattr(model, "config", None))
    bar.close()
    metrics_path, plot_path = _finish(stage, metrics, out_dir, skipped, ctx)
    assert last_dir is not None or end == 0
    return TrainResult(out_dir, last_dir or ckpt_root, step, losses, trainable, total, metrics_path, plot_path, skipped)


def _prepare(stage: StageConfig, model: nn.Module, objective: nn.Module | None, ctx: DistContext, device: torch.device,
             adjust_trainable: Callable[[nn.Module], None] | None) -> tuple[nn.Module, nn.Module, tuple[int, int]]:
    """Seed, freeze to the stage's parts, move to ``device``: -> (owner, wrapped, (trainable, total)).
    ``owner`` holds every parameter that trains or is checkpointed (``objective`` when the stage has
    its own, which holds the model; sharded in place under FSDP2), and state dicts come from it;
    ``wrapped`` is what runs forward (DDP adds a wrapper)."""
    torch.manual_seed(stage.seed)
    _configure(model, stage, ctx, adjust_trainable)
    owner = objective if objective is not None else model
    trainable, total = count_parameters(owner)
    if ctx.is_main:
        log.info("%s: trainable %d / total %d parameters (%.2f%%)", stage.name, trainable, total, 100 * trainable / total)
    owner.to(device)
    owner.train()
    return owner, wrap_model(model, ctx, device, objective), (trainable, total)


def _finish(stage: StageConfig, metrics: MetricsLog | None, out_dir: Path, skipped: int,
            ctx: DistContext) -> tuple[Path | None, Path | None]:
    """Say what was skipped, plot the loss curve, wait for every rank: -> (metrics path, plot path)."""
    if skipped and ctx.is_main:
        log.info("%s: skipped %d micro-batches that had no term to train in this stage (e.g. no [SEG] while only the "
                 "segmenter trains)", stage.name, skipped)
    plot_path = metrics_path = None
    if metrics is not None:
        metrics.close()
        metrics_path = metrics.path
        if metrics_path.stat().st_size:
            plot_path = plot_loss_curve(metrics_path, out_dir / "loss_curve.png", title=stage.name)
    barrier(ctx)
    return metrics_path, plot_path


def _logged_terms(terms: dict[str, float], stage: StageConfig) -> dict[str, float]:
    """The metrics row's loss entries: each term by name (the mask terms and the auxiliaries only where
    the run has them), and the sums the loss curve plots (lm_loss, mask_loss, copy_loss, reading_loss)."""
    if stage.objective == "vision_dense":
        return {f"{n}_loss": terms[n] for n in ("occupancy", "position", "modality", "presence", "box")}
    row = {"lm_loss": terms["lm"], "mask_loss": sum(terms[n] for n in MASK_TERMS)}
    if stage.objective == "cached_mask":
        row.pop("lm_loss")
    if stage.copy_attention:
        row["copy_loss"] = terms["copy_attention"]
    if stage.token_reading:
        row["reading_loss"] = terms["token_reading"]
    return row | {n: v for n, v in terms.items() if n in ("mask_bce", "mask_dice", "mask_iou") or (n != "lm" and v)}


class _TimeBudget:
    """Fits a run into a wall-clock budget. The first ``skip`` steps carry start-up costs and are not
    timed; after ``measure`` more, the run's end is set to the steps that still fit at the measured
    rate, and re-set every ``measure`` steps (start-up slowness fades: on an H200 the first windows
    ran at twice the steady step time) until half the run is done; after that the end, and the
    cosine's length with it, stay put. The rate is the fastest of the last three windows: one slow
    window (an evaluation run beside the training) must not cut the run short for good, as it did
    once at the half-way point, while a lasting slowdown still shows after three windows."""

    def __init__(self, seconds: float, start_step: int, cap: int, skip: int = 5, measure: int = 20,
                 clock: Callable[[], float] = time.perf_counter):
        self.seconds, self.start_step, self.cap, self.skip, self.measure, self.clock = seconds, start_step, cap, skip, measure, clock
        self.t_start = clock()
        self.mark: tuple[int, float] | None = None  # (step, time) where the current timing window began
        self.end = cap
        self.rates: list[float] = []  # seconds per step of the latest timing windows

    def fit(self, step: int) -> int | None:
        """The run's new end after ``step`` steps, or None when it is not re-set now."""
        done = step - self.start_step
        if done == self.skip:
            self.mark = (step, self.clock())
        if self.mark is None or step - self.mark[0] != self.measure or (done > self.skip + self.measure and 2 * done > self.end - self.start_step):
            return None
        now = self.clock()
        self.rates = (self.rates + [max((now - self.mark[1]) / self.measure, 1e-9)])[-3:]
        per_step = min(self.rates)
        self.mark = (step, now)
        left = self.seconds - (now - self.t_start)
        self.end = max(step, min(self.cap, step + int(left / per_step)))
        return self.end


# every term an objective can name (objectives.score; stage 0's DENSE_TERMS; cached_seg's box_align), in a fixed
# order: ranks reduce them as one vector
TERM_NAMES = ("lm", "mask_bce", "mask_dice", "mask_iou", "point_align", "copy_attention", "token_reading",
              "occupancy", "position", "modality", "presence", "box", "box_align")


@dataclass
class WindowLosses:
    """One optimizer step's loss terms (this rank's share, or all ranks' after ``reduced``) and the
    micro-batches that had no term to train."""

    terms: dict[str, float]
    skipped: int
    trained: int

    def reduced(self, ctx: DistContext) -> WindowLosses:
        """Over all ranks: mask terms summed (each is already a share of the window's masks), the others
        averaged (each rank's is a mean over its micro-batches); micro-batch counts summed."""
        values = [self.terms.get(n, 0.0) for n in TERM_NAMES] + [float(self.skipped), float(self.trained)]
        if ctx.active:
            t = torch.tensor(values, dtype=torch.float64)
            dist.all_reduce(t)
            values = t.tolist()
        terms = {n: v if n in MASK_TERMS else v / ctx.world_size for n, v in zip(TERM_NAMES, values)}
        return WindowLosses(terms, int(values[-2]), int(values[-1]))


def _accumulate(objective: nn.Module, micro: list[Batch], ctx: DistContext, autocast: Any) -> WindowLosses:
    """Forward/backward every micro-batch of this rank's share of the window.

    The LM term is averaged over micro-batches (/grad_accum), and so are the (weighted) copy-attention
    and token-reading terms. Mask terms (objectives.MASK_TERMS) arrive already weighted by (masks in
    micro-batch / num_masks_in_window); the window count is the GLOBAL one, so they sum to the mean
    over every mask of the window; since DDP/FSDP average gradients over ranks, they are multiplied by
    world_size to undo that. A micro-batch with no term to train (stage 4 without [SEG]) is skipped:
    no backward in one process; under DDP/FSDP it backwards the objective's zero ``step_anchor``, so
    that every rank joins the same gradient collectives.
    """
    n_window = int(all_reduce_sum(float(sum(count_masks(b) for b in micro)), ctx))
    totals = dict.fromkeys(TERM_NAMES, 0.0)
    skipped = 0
    for k, batch in enumerate(micro):
        last = k == len(micro) - 1
        sync = objective.no_sync() if isinstance(objective, nn.parallel.DistributedDataParallel) and not last else contextlib.nullcontext()
        with sync:
            with autocast:
                out = objective(batch, n_window)
            unknown = set(out.terms) - set(TERM_NAMES) - {"step_anchor"}
            if unknown:
                raise ValueError(f"loss terms {sorted(unknown)} have no place in recipe.TERM_NAMES")
            if "step_anchor" in out.terms or not out.trains:
                skipped += 1
            if out.trains:
                mask = sum(t for n, t in out.terms.items() if n in MASK_TERMS)
                rest = sum(t for n, t in out.terms.items() if n not in MASK_TERMS)
                (rest / len(micro) + mask * ctx.world_size).backward()
        for name, t in out.terms.items():
            if name != "step_anchor":
                totals[name] += float(t.detach()) / (1 if name in MASK_TERMS else len(micro))
    return WindowLosses(totals, skipped, len(micro) - skipped)


def _save(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, root: Path, step: int, epoch: int,
          position: int, stage: StageConfig, ctx: DistContext, total_steps: int, planned_steps: int, config: Any) -> Path:
    model_sd, optim_sd = ckpt.model_state(model, optimizer)  # collective under FSDP2: every rank calls it
    final = root / ckpt.step_dir_name(step)
    if ctx.is_main:
        trainer = {"epoch": epoch, "position": position, "world_size": ctx.world_size, "stage": stage.to_dict(),
                   "total_steps": total_steps, "planned_steps": planned_steps}
        if config is not None and hasattr(config, "to_dict"):  # CitrusV's config: kept so --init can rebuild it
            trainer["model_config"] = config.to_dict()
        state = ckpt.TrainingState(model_sd, optim_sd, scheduler.state_dict(), trainer, ckpt.capture_rng())
        final = ckpt.save_checkpoint(root, step, state, keep_last=stage.keep_last)
    barrier(ctx)
    return final


def _enable_gradient_checkpointing(model: nn.Module) -> None:
    """Recompute activations in the backward pass of every transformers sub-model that can."""
    found = False
    for module in model.modules():
        if module is not model and hasattr(module, "activation_checkpointing_enable") and hasattr(module, "supports_gradient_checkpointing"):
            if module.supports_gradient_checkpointing and not getattr(module, "is_activation_checkpointing", False):
                # non-reentrant: works with frozen inputs and parameters that need no grad
                module.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
                found = True
    if not found:
        log.warning("gradient checkpointing requested but no sub-module supports it")


def _progress_bar(start: int, total: int, *, enabled: bool, desc: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, disable=not enabled, desc=desc, unit="step", dynamic_ncols=True)
