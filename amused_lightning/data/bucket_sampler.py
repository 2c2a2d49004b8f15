"""The sampler of aspect-ratio buckets: every batch from one bucket, dealt to N processes as `ResumableSampler` deals,
so that N processes still draw what one process accumulating N micro-batches draws."""

from __future__ import annotations

import math

import torch
from torch.utils.data import Dataset

from amused_lightning.data.sampler import ResumableSampler


def filled_batches(group: range, batch_size: int, generator: torch.Generator) -> list[list[int]]:
    """The indices of `group` shuffled and cut into batches of `batch_size`; the last one filled up with the group's
    first shuffled indices again (every batch whole, and of the group's shape)."""
    shuffled = [group[i] for i in torch.randperm(len(group), generator=generator).tolist()]
    count = math.ceil(len(shuffled) / batch_size) * batch_size
    filled = (shuffled * math.ceil(count / len(shuffled)))[:count]
    return [filled[start:start + batch_size] for start in range(0, count, batch_size)]


class BucketSampler(ResumableSampler):
    """Yields (index, seed, position) as `ResumableSampler` does, the epoch's order made of whole batches of one
    bucket each (`dataset.layout.groups`), in shuffled order.

    Each epoch every bucket is shuffled and cut into batches (its last one filled up with its own rows again), then
    the batches are shuffled, all from (seed, epoch); batches are added from the start again until every process
    gets as many. Batch k of that order is micro-batch k of one process, and of N processes it is process k mod N's
    micro-batch k // N: the micro-batches of one optimizer step may come from different buckets, each its own
    forward pass.
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int, batch_size: int = 1):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, seed=seed, batch_size=batch_size)
        self.groups: list[range] = dataset.layout.groups
        batches = sum(math.ceil(len(group) / batch_size) for group in self.groups)
        self.num_samples = math.ceil(batches / num_replicas) * batch_size
        self.total_size = self.num_samples * num_replicas

    def epoch_order(self) -> list[int]:
        """The epoch's batches, one bucket each, shuffled, and padded with the first ones to `total_size` draws."""
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        batches = [batch for group in self.groups for batch in filled_batches(group, self.batch_size, generator)]
        batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
        padding = self.total_size // self.batch_size - len(batches)
        batches += (batches * math.ceil(padding / len(batches)))[:padding]
        return [index for batch in batches for index in batch]
