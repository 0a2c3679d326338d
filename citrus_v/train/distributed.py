"""torchrun plumbing: process group, DDP / FSDP2 wrapping, and the ranks' share of a window.

Launch with ``torchrun --nproc_per_node N -m citrus_v.cli train ... --strategy ddp|fsdp2``;
torchrun sets RANK / WORLD_SIZE / LOCAL_RANK. Backend: nccl on CUDA, gloo on CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

STRATEGIES = ("none", "ddp", "fsdp2")


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    strategy: str = "none"

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"DistContext.strategy: {self.strategy!r} is not one of {STRATEGIES}")
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"DistContext.rank: {self.rank} outside world_size {self.world_size}")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def init_distributed(strategy: str = "ddp") -> DistContext:
    """Join the torchrun process group (if launched by torchrun) and pick the device."""
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return DistContext(strategy="none")
    if strategy == "none":
        raise ValueError("launched by torchrun with WORLD_SIZE > 1 but --strategy none: pass ddp or fsdp2")
    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
    return DistContext(rank=rank, world_size=world, local_rank=local, strategy=strategy)


def shutdown(ctx: DistContext) -> None:
    if ctx.active and dist.is_initialized():
        dist.destroy_process_group()


def wrap_model(model: nn.Module, ctx: DistContext, device: torch.device, objective: nn.Module | None = None) -> nn.Module:
    """The model's training objective (``Objective``: batch -> named loss terms, or a stage's own
    ``objective`` that holds the model), under DDP, or over the model FSDP2-sharded (``fully_shard``
    per transformer block / top-level part then the root)."""
    from citrus_v.model.objectives import Objective

    if objective is not None:
        if ctx.active and ctx.strategy == "fsdp2":
            raise ValueError(f"{type(objective).__name__}: this stage runs under --strategy ddp or in one process, not fsdp2")
        if not ctx.active or ctx.strategy == "none":
            return objective
        ids = [device.index] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(objective, device_ids=ids, find_unused_parameters=True)
    if not ctx.active or ctx.strategy == "none":
        return Objective(model)
    if ctx.strategy == "ddp":
        ids = [device.index] if device.type == "cuda" else None
        # [SEG]-free or text-only micro-batches leave parameters without gradients. DDP marks
        # "used" whatever any forward output depends on, and CitrusV also returns outputs
        # outside the loss (iou_scores), so DDP wraps the objective: it sees the loss terms only.
        return nn.parallel.DistributedDataParallel(Objective(model, keep_in_step=True), device_ids=ids,
                                                   find_unused_parameters=True)
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh(device.type, (ctx.world_size,))
    for module in _shard_units(model):
        fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)
    # a part one rank's micro-batch leaves unused ([SEG]-free, no reading labels) still takes part in
    # every rank's reduce-scatter, with a zero gradient: otherwise the collectives' sizes differ
    model.set_reduce_scatter_unused_params(True)
    return Objective(model, keep_in_step=True)


def _shard_units(model: nn.Module) -> list[nn.Module]:
    """Decoder layers and ViT blocks (the usual FSDP units), found by their container names."""
    units = []
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and name.endswith(("language_model.layers", "visual.blocks")):
            units.extend(module)
    return units


def all_reduce_sum(value: float, ctx: DistContext) -> float:
    if not ctx.active:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item())


def barrier(ctx: DistContext) -> None:
    if ctx.active:
        dist.barrier()


def rank_micro_batches(window: list[int], ctx: DistContext, micro_batch_size: int, grad_accum: int) -> list[list[int]]:
    """This rank's micro-batches of one optimizer step's window of dataset indices.

    The window holds micro_batch_size * grad_accum * world_size indices; rank r takes every
    world_size-th one, so N ranks together see exactly the samples one process would.
    """
    expected = micro_batch_size * grad_accum * ctx.world_size
    if len(window) != expected:
        raise ValueError(f"window has {len(window)} indices, expected {expected}")
    mine = window[ctx.rank :: ctx.world_size]
    return [mine[i * micro_batch_size : (i + 1) * micro_batch_size] for i in range(grad_accum)]
