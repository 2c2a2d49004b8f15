"""A distributed sampler whose draws, crops included, follow from (seed, epoch, position) and can resume."""

from __future__ import annotations

from collections.abc import Iterator

from torch.utils.data import Dataset, DistributedSampler

from amused_lightning.seeding import derive_seed


class ResumableSampler(DistributedSampler):
    """Yields (index, seed, position); `resume_at` skips the draws a checkpointed run already trained on.

    It is a DistributedSampler so Lightning keeps it under DDP rather than wrapping it, and each rank reads its
    own shard of the epoch's permutation.
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int, shuffle: bool = True):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        self._resume: tuple[int, int] | None = None

    def resume_at(self, epoch: int, position: int) -> None:
        """Start the next pass over `epoch` at `position` instead of 0."""
        self._resume = (epoch, position)

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        indices = list(super().__iter__())
        start = 0
        if self._resume is not None and self._resume[0] == self.epoch:
            start = self._resume[1]
            self._resume = None
        for position in range(start, len(indices)):
            yield indices[position], derive_seed(self.seed, self.epoch, self.rank, position), position
