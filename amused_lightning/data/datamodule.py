"""LightningDataModule for aMUSEd finetuning: the settings of the data, checked once; the pipeline the source's kind
calls for (rows or a stream) does the rest. Counts bad rows passed over and keeps the exact resume point."""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
from torch.utils.data import DataLoader, Dataset

from amused_lightning.data.bad_data import ON_BAD_IMAGE
from amused_lightning.data.batch import POSITION, Batch
from amused_lightning.data.buckets import AspectBucketSettings
from amused_lightning.data.datasets import REPLACED
from amused_lightning.data.pipeline import Pipeline, Processes
from amused_lightning.data.rows_pipeline import RowsPipeline
from amused_lightning.data.sources import DataSource, DataSourceError, StreamSource
from amused_lightning.data.stream_pipeline import StreamPipeline
from amused_lightning.model.encoding import FrozenEncoders, pixels_per_token
from amused_lightning.settings import as_settings

log = logging.getLogger(__name__)
CACHE_MODES = ("auto", "on", "off")
SKIPPED_METRIC = "train/skipped_samples"
# Each kind of source has its pipeline: a source is of the kind of the base class it extends.
PIPELINES: dict[type, type[Pipeline]] = {DataSource: RowsPipeline, StreamSource: StreamPipeline}


def pipeline_for(source: DataSource | StreamSource) -> type[Pipeline]:
    """The pipeline of the source's kind."""
    pipeline = next((pipeline for kind, pipeline in PIPELINES.items() if isinstance(source, kind)), None)
    if pipeline is None:
        raise DataSourceError(f"data.source: a {type(source).__name__} is neither a DataSource nor a StreamSource")
    return pipeline


def resolution_error(resolution: int, factor: int, multiple: int, model: str) -> str | None:
    """Why `resolution` cannot be the side of a training crop for a model whose VQ downscale factor is `factor` and
    whose token grid sides are multiples of `multiple`, with the nearest sides that can; None when it can."""
    step = factor * multiple
    if resolution < 1 or resolution % step == 0:
        return None
    below, above = resolution // step * step, (resolution // step + 1) * step
    halved = f" times {multiple}, the transformer's downsampling" if multiple > 1 else ""
    nearest = f"{below} or {above}" if below else str(above)
    return (f"data.resolution={resolution} is not a multiple of {step} (the VQ downscale factor {factor}{halved}) of "
            f"the model {model}: try {nearest}")


class AmusedDataModule(L.LightningDataModule):
    """Training images with prompts from `source`; call `connect` with the model's encoders before use."""

    def __init__(
        self,
        source: DataSource | StreamSource,
        resolution: int = 256,
        center_crop: bool = False,
        random_flip: bool = False,
        aesthetic_score: float = 6.0,
        val_samples: int = 32,
        batch_size: int = 8,
        num_workers: int = 0,
        cache: str = "auto",
        cache_crops: int = 8,
        cache_dir: str | None = None,
        seed: int = 0,
        on_bad_image: str = "skip",
        aspect_buckets: AspectBucketSettings | None = None,
        shuffle_buffer: int = 1000,
    ):
        """
        Args:
            source: The training data: `HFDataset` (a Hugging Face dataset), `ImageFolder` (every image in a folder
                and its subfolders, captioned by a `.txt` file beside it, metadata.jsonl/csv, or its file name) or
                `SingleImage` (one image, StyleDrop), each with its own settings; or a stream, read shard by shard
                in bounded memory, for data larger than the disk: `HFStream` (a Hugging Face dataset with
                streaming=True) or `WebDataset` (tar shards). A stream has no end: set trainer.max_steps.
            resolution: Side of the square training crop, in pixels; a multiple of the VQ downscale factor.
            center_crop: Crop the centre instead of a random square.
            random_flip: Flip half of the images horizontally.
            aesthetic_score: Aesthetic score put in every sample's micro-conditioning.
            val_samples: How many samples the held-out loss scores (centre crops, fixed masks): held out of training
                (at most a tenth of it; a single image, or under ten images, are scored themselves), or the first
                rows of the source's `val_split`.
            batch_size: Images per device per micro-batch.
            num_workers: Data loader worker processes (decoding, cropping and tokenization happen there).
            cache: Pre-encode image tokens and prompt embeddings once and train from them. "auto": when that changes
                nothing (every crop fixed: centre crops or square images, no flip); "on": always, keeping
                `cache_crops` random crops per image; "off": encode every step.
            cache_crops: Random crops cached per image when crops vary (drawn afresh from them at each step).
            cache_dir: Where caches live, one folder per combination of data, encoders and settings (default:
                $AMUSED_LIGHTNING_CACHE, else ~/.cache/amused_lightning).
            seed: Seed of the shuffling and the crops (linked to seed_everything).
            on_bad_image: What a bad row does (an image missing, empty, undecodable, truncated or over PIL's
                MAX_IMAGE_PIXELS; a prompt missing or not text). "skip" (the default, as community trainers do: one
                broken file in a large set should not cost a night of training): the row is named in a warning,
                counted in `train/skipped_samples`, and training goes on without it. "error": the run stops,
                naming the row, before training for what the scan of prompts and image headers finds, else when
                the row is drawn.
            aspect_buckets: Crop each training image to the token-grid shape nearest its aspect ratio, among shapes of
                about the square's token count, instead of a square; every batch from one shape. Unset: squares.
                Held-out samples stay centre-cropped squares.
            shuffle_buffer: Records of a stream held at a time to shuffle them (besides each pass's shard order);
                more mixes better and holds more encoded images in memory. Row sources ignore it.
        """
        super().__init__()
        self.save_hyperparameters(ignore="source")
        self.hparams["source"] = source.settings()
        for name in ("resolution", "batch_size", "val_samples", "cache_crops", "shuffle_buffer"):
            if getattr(self.hparams, name) < 1:
                raise DataSourceError(f"data.{name}={getattr(self.hparams, name)} must be positive")
        if num_workers < 0:
            raise DataSourceError(f"data.num_workers={num_workers} must be 0 (load in the training process) or more")
        if cache not in CACHE_MODES:
            raise DataSourceError(f"data.cache={cache!r} is not one of {list(CACHE_MODES)}")
        if on_bad_image not in ON_BAD_IMAGE:
            raise DataSourceError(f"data.on_bad_image={on_bad_image!r} is not one of {list(ON_BAD_IMAGE)}")
        self.source = source
        self.buckets = as_settings(AspectBucketSettings, aspect_buckets)
        self.pipeline = pipeline_for(source)(source, self.hparams, self.buckets)
        self.train_dataset: Dataset | None = None
        self.val_dataset: Dataset | None = None
        self._consumed: tuple[int, int] | None = None
        self._replaced = 0  # draws that passed over a bad row, in this run and the runs it resumes
        self._logged_skipped: int | None = None

    @property
    def encoders(self) -> FrozenEncoders | None:
        return self.pipeline.encoders

    def connect(self, encoders: FrozenEncoders) -> None:
        """Receive the model's tokenizer and frozen encoders: the cache is encoded with them and keyed by their
        identity; prompts are tokenized with the tokenizer."""
        problem = resolution_error(self.hparams.resolution, pixels_per_token(encoders.vqvae.config),
                                   encoders.token_grid_multiple, encoders.name)
        if problem:
            raise DataSourceError(problem)
        self.pipeline.encoders = encoders

    def _check_connected(self) -> None:
        if self.encoders is None:
            raise RuntimeError("AmusedDataModule.connect(model.frozen_encoders()) must be called before "
                               "prepare_data/setup (`amused_lightning.fit` and the validate command do it)")

    def prepare_data(self) -> None:
        self._check_connected()
        self.pipeline.prepare(Processes.of(self.trainer))

    def setup(self, stage: str) -> None:
        if self.train_dataset is None:
            self._check_connected()
            self.train_dataset, self.val_dataset = self.pipeline.datasets(Processes.of(self.trainer))

    def train_dataloader(self) -> DataLoader:
        return self.pipeline.train_dataloader(self.train_dataset, Processes.of(self.trainer))

    def val_dataloader(self) -> DataLoader:
        keys = [(index, 0, index) for index in range(len(self.val_dataset))]
        return DataLoader(self.val_dataset, batch_size=self.hparams.batch_size, sampler=keys,
                          num_workers=self.hparams.num_workers, persistent_workers=self.hparams.num_workers > 0)

    def on_before_batch_transfer(self, batch: Batch, dataloader_idx: int) -> Batch:
        # Runs when the loop takes a training batch for a step (not when it is prefetched): the exact resume point.
        replaced = int(batch.pop(REPLACED).sum()) if REPLACED in batch else 0
        if self.trainer is not None and self.trainer.training:
            # Draws of the epoch taken by all processes together (each takes as many), not by this one alone.
            self._consumed = (self.trainer.current_epoch, (int(batch[POSITION].max()) + 1) * self.trainer.world_size)
            self._replaced += replaced
            self._log_skipped()
        return batch

    @property
    def skipped_samples(self) -> int:
        """Bad rows left out before training, plus draws that passed over a bad row."""
        return self.pipeline.left_out + self._replaced

    def _log_skipped(self) -> None:
        """`train/skipped_samples` to the loggers, at the first step and whenever it grows."""
        if self.skipped_samples == self._logged_skipped or not self.trainer.is_global_zero:
            return
        self._logged_skipped = self.skipped_samples
        for logger in self.trainer.loggers:
            logger.log_metrics({SKIPPED_METRIC: float(self.skipped_samples)}, step=self.trainer.global_step)

    def teardown(self, stage: str) -> None:
        if stage == "fit" and self.skipped_samples:
            log.warning("data.on_bad_image=skip: bad rows left out before training: %d; draws that passed over a bad "
                        "row: %d (named in the warnings above; %s)", self.pipeline.left_out, self._replaced,
                        SKIPPED_METRIC)

    def state_dict(self) -> dict[str, Any]:
        if self._consumed is None:
            return {}
        state = {"epoch": self._consumed[0], "position": self._consumed[1], "replaced": self._replaced}
        return {**state, **self.pipeline.state(Processes.of(self.trainer))}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict:
            self._replaced = state_dict.get("replaced", 0)
            self.pipeline.resume_at(state_dict["epoch"], state_dict["position"], state_dict,
                                    Processes.of(self.trainer))
