"""A stream: read pass by pass in bounded memory, its first records held out, batches cut in the readers, and a
resume that replays without decoding (see `stream_dataset`)."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from amused_lightning.data.buckets import CropSize, square_layout
from amused_lightning.data.datasets import PixelDataset
from amused_lightning.data.pipeline import Pipeline, Processes
from amused_lightning.data.sources.base import DataSourceError
from amused_lightning.data.sources.stream import RecordList, StreamSource, first_records
from amused_lightning.data.stream_dataset import StreamDataset, StreamLayout, check_same_layout, stream_training_data
from amused_lightning.model.encoding import pixels_per_token

log = logging.getLogger(__name__)


class StreamPipeline(Pipeline):
    """The DataModule's data from a `StreamSource`."""

    source: StreamSource

    def __init__(self, *args: Any):
        super().__init__(*args)
        if self.hparams.cache == "on":
            raise DataSourceError(f"data.cache='on': a stream ({type(self.source).__name__}) is read pass by pass and "
                                  "never held whole, so it cannot be pre-encoded; set data.cache: auto or off")
        self._train: StreamDataset | None = None
        self._resume: tuple[int, dict[str, Any]] | None = None  # (draws of all processes, the checkpoint's state)

    def datasets(self, processes: Processes) -> tuple[Dataset, Dataset]:
        hp = self.hparams
        if processes.max_steps is not None and processes.max_steps < 0:
            raise DataSourceError(f"data.source ({type(self.source).__name__}) is a stream, which has no end: set "
                                  "trainer.max_steps")
        crop_size = CropSize(hp.resolution, self.bucket_grids(), pixels_per_token(self.encoders.vqvae.config))
        self._train, held_out = stream_training_data(self.source, hp, self.encoders.tokenizer, crop_size,
                                                     processes.rank, processes.world_size)
        val = PixelDataset(held_out, square_layout(list(range(len(held_out))), hp.resolution),
                           self.encoders.tokenizer, True, False, hp.aesthetic_score, hp.on_bad_image)
        if self._resume is not None:
            self._resume_stream(processes)
        return self._train, val

    def train_dataloader(self, dataset: Dataset, processes: Processes) -> DataLoader:
        """The stream's batches, made whole in the readers (one crop size each)."""
        hp = self.hparams
        return DataLoader(dataset, batch_size=None, num_workers=hp.num_workers, persistent_workers=hp.num_workers > 0,
                          pin_memory=torch.cuda.is_available())

    def resume_at(self, epoch: int, position: int, saved: dict[str, Any], processes: Processes) -> None:
        self._resume = (position, saved)
        if self._train is not None:
            self._resume_stream(processes)

    def _resume_stream(self, processes: Processes) -> None:
        """Start the stream after the batches the checkpoint's run trained on (a count of all processes' draws)."""
        position, saved = self._resume
        if saved.get("stream") is None:
            log.warning("the checkpoint was written by a run that read rows, not a stream: the stream starts from "
                        "its beginning")
            return
        check_same_layout(saved["stream"], self._layout(processes))
        self._train.resume_at(position // processes.world_size // self.hparams.batch_size)

    def rows_to_check(self, records: int) -> RecordList:
        return RecordList(list(first_records(self.source, records)), self.source.describe())

    def state(self, processes: Processes) -> dict[str, Any]:
        return {"stream": self._layout(processes)._asdict()}

    def _layout(self, processes: Processes) -> StreamLayout:
        return StreamLayout.of(processes.world_size, self.hparams.num_workers, self.hparams.batch_size)
