"""A distributed sampler whose draws, crops included, follow from (seed, epoch, place in the epoch's order) and can
resume; laid out so that N processes draw what one process with N times the accumulation draws."""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch.utils.data import Dataset, DistributedSampler

from amused_lightning.seeding import derive_seed


def global_place(position: int, rank: int, world_size: int, batch_size: int, total: int) -> int:
    """Where a rank's `position`-th draw sits in the epoch's order of `total` draws.

    Rank r's j-th batch is the epoch's (j * world_size + r)-th run of `batch_size` draws: one optimizer step of N
    processes then trains on the batches that one process accumulating N micro-batches trains on. Draws past the
    last whole step (a shorter final batch on every rank) are dealt out one by one, as DistributedSampler deals.
    """
    whole = total - total % (world_size * batch_size)
    if position * world_size < whole:
        batch, offset = divmod(position, batch_size)
        return (batch * world_size + rank) * batch_size + offset
    return whole + (position - whole // world_size) * world_size + rank


class ResumableSampler(DistributedSampler):
    """Yields (index, seed, position) of this rank's draws; `resume_at` skips the draws a checkpointed run already
    trained on. `position` counts this rank's draws (every rank draws as many); the crop seed comes from the draw's
    place in the epoch's order, so it does not depend on the number of processes.

    It is a DistributedSampler so Lightning keeps it under DDP rather than wrapping it.
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int, batch_size: int = 1,
                 shuffle: bool = True):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        self.batch_size = batch_size
        self._resume: tuple[int, int] | None = None

    def resume_at(self, epoch: int, drawn: int) -> None:
        """Start the next pass over `epoch` after its first `drawn` draws, counted over all processes together (the
        count the DataModule saves)."""
        self._resume = (epoch, drawn // self.num_replicas)

    def epoch_order(self) -> list[int]:
        """The epoch's permutation, padded with its first indices to a multiple of the number of processes (as
        DistributedSampler pads)."""
        count = len(self.dataset)
        if self.shuffle:
            order = torch.randperm(count, generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist()
        else:
            order = list(range(count))
        padding = self.total_size - count
        return order + (order * math.ceil(padding / count))[:padding]

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        order = self.epoch_order()
        start = 0
        if self._resume is not None and self._resume[0] == self.epoch:
            start = self._resume[1]
            self._resume = None
        for position in range(start, self.num_samples):
            place = global_place(position, self.rank, self.num_replicas, self.batch_size, self.total_size)
            # 0 where the rank used to be: one process draws the seeds it always drew.
            yield order[place], derive_seed(self.seed, self.epoch, 0, place), position
