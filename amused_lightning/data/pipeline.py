"""What the DataModule delegates to: a pipeline that turns one kind of source (rows, or a stream) into the training
and held-out datasets and the training loader, knows its bad rows, and resumes mid-epoch."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from amused_lightning.data.buckets import AspectBucketSettings, Grid, bucket_grids
from amused_lightning.model.encoding import FrozenEncoders, pixels_per_token


@dataclass(frozen=True)
class Processes:
    """Where the data is read: this process among all, its device and precision, and how long training goes."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    forward_context: Callable[[], Any] = nullcontext
    precision: str = "32-true"
    max_steps: int | None = None
    """The trainer's `max_steps` (-1: no limit); None without a trainer."""
    validates: bool = True
    """Whether anything reads the held-out rows (the trainer's `limit_val_batches` is not 0)."""

    @classmethod
    def of(cls, trainer: L.Trainer | None) -> Processes:
        """The trainer's processes, or one process on the CPU without a trainer."""
        if trainer is None:
            return cls()
        return cls(trainer.global_rank, trainer.local_rank, trainer.world_size, trainer.strategy.root_device,
                   trainer.precision_plugin.forward_context, str(trainer.precision), trainer.max_steps,
                   trainer.limit_val_batches != 0)


class Pipeline(ABC):
    """Training and held-out data of one source, read as the DataModule's settings (`hparams`) say."""

    def __init__(self, source: Any, hparams: Any, buckets: AspectBucketSettings | None):
        self.source, self.hparams, self.buckets = source, hparams, buckets
        self.encoders: FrozenEncoders | None = None
        """The model's tokenizer and frozen encoders, handed over by `AmusedDataModule.connect`."""
        self.left_out = 0
        """Bad rows the scan before training left out."""

    def prepare(self, processes: Processes) -> None:
        """What one process per machine does before the others read the data (encode a cache)."""

    @abstractmethod
    def datasets(self, processes: Processes) -> tuple[Dataset, Dataset]:
        """The training and held-out datasets."""

    @abstractmethod
    def train_dataloader(self, dataset: Dataset, processes: Processes) -> DataLoader:
        """The training batches, from the resume point if one was given."""

    @abstractmethod
    def resume_at(self, epoch: int, position: int, saved: dict[str, Any], processes: Processes) -> None:
        """Start after `position` draws of `epoch` by all processes (`saved`: the checkpoint's data state)."""

    @abstractmethod
    def rows_to_check(self, records: int) -> Any:
        """What `check-data` reports on: the rows, or a stream's first `records` records kept in memory."""

    def state(self, processes: Processes) -> dict[str, Any]:
        """What the checkpoint keeps of the pipeline beside the resume point."""
        return {}

    def bucket_grids(self) -> tuple[Grid, ...] | None:
        """The aspect-ratio buckets' token grids, or None without buckets."""
        if self.buckets is None:
            return None
        factor = pixels_per_token(self.encoders.vqvae.config)
        return tuple(bucket_grids(self.hparams.resolution // factor, self.encoders.token_grid_multiple,
                                  self.buckets.max_ratio))
