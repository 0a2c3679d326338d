"""Which samples each optimizer step reads: a seeded permutation per epoch, consecutive windows of
``micro_batch_size * grad_accum * world_size`` indices of it, each rank's share split into
micro-batches, collated in order (in the training process or in loader workers)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from citrus_v.train.distributed import DistContext, rank_micro_batches
from citrus_v.train.stages import StageConfig

Batch = dict[str, Any]


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The seeded permutation of ``range(n)`` for ``epoch`` (same on every rank)."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


def window_plan(n: int, epoch: int, position: int, window_size: int, steps: int) -> list[tuple[int, int]]:
    """The (epoch, position) after each of the next ``steps`` optimizer steps, starting from a
    saved (epoch, position); each step's window is the ``window_size`` indices before that position."""
    plan = []
    for _ in range(steps):
        if position + window_size > n:  # epoch done: drop the ragged tail
            epoch, position = epoch + 1, 0
        position += window_size
        plan.append((epoch, position))
    return plan


def _plan_micro_batches(plan: list[tuple[int, int]], n: int, seed: int, window_size: int, ctx: DistContext,
                        stage: StageConfig):
    """This rank's micro-batches of dataset indices, step after step, as ``plan`` lays them out."""
    order, order_epoch = None, None
    for epoch, position in plan:
        if epoch != order_epoch:
            order, order_epoch = epoch_order(n, seed, epoch), epoch
        window = order[position - window_size : position]
        yield from rank_micro_batches(window, ctx, stage.micro_batch_size, stage.grad_accum)


class _Collated(torch.utils.data.IterableDataset):
    """Collated micro-batches in order; with several loader workers, worker w makes every
    w-th one and the DataLoader interleaves them back into order."""

    def __init__(self, dataset: Sequence[Any], collate_fn: Callable[[list[Any]], Batch], micro: list[list[int]]):
        self.dataset, self.collate_fn, self.micro = dataset, collate_fn, micro

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        for idx in self.micro[wid::nw]:
            yield self.collate_fn([self.dataset[i] for i in idx])


def micro_batch_stream(dataset: Sequence[Any], collate_fn: Callable[[list[Any]], Batch], plan: list[tuple[int, int]],
                        window_size: int, ctx: DistContext, stage: StageConfig, workers: int, pin: bool):
    source = _Collated(dataset, collate_fn, list(_plan_micro_batches(plan, len(dataset), stage.seed, window_size, ctx, stage)))
    if workers <= 0:
        return iter(source)
    loader = torch.utils.data.DataLoader(source, batch_size=None, num_workers=workers, prefetch_factor=4, pin_memory=pin)
    return iter(loader)
