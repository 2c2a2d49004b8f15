"""LightningDataModule for aMUSEd finetuning: one data source, resolution cropping, tokenization in workers,
and an optional pre-encoded cache of image tokens and prompt embeddings."""

from __future__ import annotations

import hashlib
import logging
import os
from contextlib import nullcontext
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from amused_lightning.data.bad_data import ON_BAD_IMAGE, BadImageError, apply_to_scan
from amused_lightning.data.batch import POSITION, Batch
from amused_lightning.data.bucket_sampler import BucketSampler
from amused_lightning.data.buckets import (
    AspectBuckets,
    CropSize,
    Grid,
    RowLayout,
    bucket_grids,
    square_layout,
    training_layout,
)
from amused_lightning.data.cache import CacheBuilder, CacheSpec, TokenCache
from amused_lightning.data.datasets import REPLACED, CachedDataset, PixelDataset
from amused_lightning.data.sampler import ResumableSampler
from amused_lightning.data.sources import DataSource, DataSourceError, Split
from amused_lightning.data.stream_dataset import StreamLayout, check_same_layout, stream_training_data
from amused_lightning.data.streams import StreamSource
from amused_lightning.model.encoding import FrozenEncoders, pixels_per_token
from amused_lightning.settings import as_settings

log = logging.getLogger(__name__)
CACHE_MODES = ("auto", "on", "off")
SKIPPED_METRIC = "train/skipped_samples"


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
        aspect_buckets: AspectBuckets | None = None,
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
        if isinstance(source, StreamSource) and cache == "on":
            raise DataSourceError(f"data.cache='on': a stream ({type(source).__name__}) is read pass by pass and never "
                                  "held whole, so it cannot be pre-encoded; set data.cache: auto or off")
        self.source = source
        self.buckets = as_settings(AspectBuckets, aspect_buckets)
        self.encoders: FrozenEncoders | None = None
        self._split = None
        self._layout: RowLayout | None = None  # the training rows in their buckets
        self.train_dataset: Dataset | None = None
        self.val_dataset: Dataset | None = None
        self._sampler: ResumableSampler | None = None
        self._resume: tuple[int, int] | None = None
        self._consumed: tuple[int, int] | None = None
        self._left_out = 0  # bad rows the scan left out
        self._replaced = 0  # draws that passed over a bad row, in this run and the runs it resumes
        self._logged_skipped: int | None = None
        self._saved_layout: dict | None = None  # how the checkpoint's run read its stream

    def connect(self, encoders: FrozenEncoders) -> None:
        """Receive the model's tokenizer and frozen encoders: the cache is encoded with them and keyed by their
        identity; prompts are tokenized with the tokenizer."""
        factor, multiple = pixels_per_token(encoders.vqvae.config), encoders.token_grid_multiple
        if self.hparams.resolution % (factor * multiple):
            halved = f" times {multiple}, the transformer's downsampling" if multiple > 1 else ""
            raise DataSourceError(f"data.resolution={self.hparams.resolution} is not a multiple of the VQ "
                                  f"downscale factor {factor}{halved} of the model ({encoders.identity})")
        self.encoders = encoders

    def _check_connected(self) -> None:
        if self.encoders is None:
            raise RuntimeError("AmusedDataModule.connect(model.frozen_encoders()) must be called before "
                               "prepare_data/setup (AmusedCLI does it before fit and validate)")

    def prepare_data(self) -> None:
        # One process per machine encodes the cache; the others read it in setup().
        self._check_connected()
        if self.hparams.cache != "off" and not self.streamed:
            self._caches(build=True)

    def setup(self, stage: str) -> None:
        if self.train_dataset is not None:
            return
        self._check_connected()
        if self.streamed:
            self._setup_stream()
            return
        train_cache, val_cache = self._caches(build=self.trainer is None or self.trainer.local_rank == 0)
        hp, split = self.hparams, self._split
        self.train_dataset = self._dataset(self.source, self._layout, train_cache, hp.center_crop, hp.random_flip)
        # Held-out samples are scored deterministically: centre-cropped squares, no flip, with or without buckets.
        self.val_dataset = self._dataset(split.held_out, square_layout(split.held_out_rows, hp.resolution), val_cache,
                                         True, False)

    @property
    def streamed(self) -> bool:
        """Whether the source is a stream (read pass by pass) rather than rows."""
        return isinstance(self.source, StreamSource)

    def _setup_stream(self) -> None:
        """The stream's training batches, and its held-out records kept in memory."""
        hp = self.hparams
        if self.trainer is not None and self.trainer.max_steps < 0:
            raise DataSourceError(f"data.source ({type(self.source).__name__}) is a stream, which has no end: set "
                                  "trainer.max_steps")
        rank = self.trainer.global_rank if self.trainer is not None else 0
        crop_size = CropSize(hp.resolution, self._bucket_grids(), pixels_per_token(self.encoders.vqvae.config))
        self.train_dataset, held_out = stream_training_data(self.source, hp, self.encoders.tokenizer, crop_size, rank,
                                                            self._world_size())
        self.val_dataset = self._dataset(held_out, square_layout(list(range(len(held_out))), hp.resolution), None,
                                         True, False)
        if self._resume is not None:
            self._resume_stream()

    def _dataset(self, source: DataSource, layout: RowLayout, cache: TokenCache | None, center_crop: bool,
                 random_flip: bool) -> Dataset:
        tokenizer, hp = self.encoders.tokenizer, self.hparams
        if cache is not None:
            return CachedDataset(cache, source, layout, sorted(set(layout.rows)), tokenizer, hp.on_bad_image)
        return PixelDataset(source, layout, tokenizer, center_crop, random_flip, hp.aesthetic_score, hp.on_bad_image)

    def _checked_split(self) -> Split:
        """The split of the rows the scan finds usable, the others reported as data.on_bad_image says."""
        hp = self.hparams
        self._report_scan(self.source)
        split = self.source.split_rows(hp.val_samples, hp.seed, hp.batch_size, self._world_size())
        if split.held_out is not self.source:
            self._report_scan(split.held_out)
        return split

    def _report_scan(self, source: DataSource) -> None:
        apply_to_scan(source.bad_rows, source.where, len(source), self.hparams.on_bad_image)
        self._left_out += len(source.bad_rows)

    def _caches(self, build: bool) -> tuple[TokenCache | None, TokenCache | None]:
        """The training and held-out caches, built if absent and `build`; None when caching is off or would change
        training (then the held-out rows are not cached either)."""
        hp = self.hparams
        if self._split is None:
            self._split = self._checked_split()
            self._layout = training_layout(self.source, self._split.train_rows, hp.resolution,
                                           pixels_per_token(self.encoders.vqvae.config), self._bucket_grids())
        if hp.cache == "off":
            return None, None
        builder = self._cache_builder()
        split = self._split
        train = builder.get(self.cache_spec(self.source, split.train_rows, hp.center_crop, hp.random_flip,
                                            hp.cache_crops, self._bucket_grids()), self.source,
                            sorted(set(split.train_rows)), exact_only=hp.cache == "auto", build=build,
                            sizes=self._layout.size_of())
        if train is None:
            return None, None
        val = builder.get(self.cache_spec(split.held_out, split.held_out_rows, True, False, 1), split.held_out,
                          sorted(set(split.held_out_rows)), exact_only=False, build=build)
        known_bad = [message for cache in (train, val) if cache is not None for message in cache.bad.values()]
        if known_bad and hp.on_bad_image == "error":  # a cache built under "skip" knows them before training
            raise BadImageError(known_bad[0])
        return train, val

    def cache_spec(self, source: DataSource, rows: list[int], center_crop: bool, random_flip: bool,
                   crops: int, grids: tuple[Grid, ...] | None = None) -> CacheSpec:
        """What the cache of `rows` of `source`, cropped to the buckets of `grids` (None: squares), depends on, hence
        its key."""
        hp, encoders = self.hparams, self.encoders
        return CacheSpec(data=source.identity, components=encoders.identity, resolution=hp.resolution,
                         center_crop=center_crop, random_flip=random_flip, aesthetic_score=hp.aesthetic_score,
                         crops=crops, rows=hashlib.sha256(str(sorted(set(rows))).encode()).hexdigest(),
                         text_precision=None if encoders.text_encoder_trains else self._precision(), seed=hp.seed,
                         bucket_grids=grids)

    def _bucket_grids(self) -> tuple[Grid, ...] | None:
        """The aspect-ratio buckets' token grids, or None without buckets."""
        if self.buckets is None:
            return None
        factor = pixels_per_token(self.encoders.vqvae.config)
        return tuple(bucket_grids(self.hparams.resolution // factor, self.encoders.token_grid_multiple,
                                  self.buckets.max_ratio))

    def _cache_builder(self) -> CacheBuilder:
        root = self.hparams.cache_dir or os.environ.get("AMUSED_LIGHTNING_CACHE", "~/.cache/amused_lightning")
        if self.trainer is None:
            return CacheBuilder(Path(root).expanduser(), self.encoders, torch.device("cpu"), nullcontext,
                                self.hparams.batch_size, self.hparams.on_bad_image)
        return CacheBuilder(Path(root).expanduser(), self.encoders, self.trainer.strategy.root_device,
                            self.trainer.precision_plugin.forward_context, self.hparams.batch_size,
                            self.hparams.on_bad_image)

    def _precision(self) -> str:
        return str(self.trainer.precision) if self.trainer is not None else "32-true"

    def _world_size(self) -> int:
        return self.trainer.world_size if self.trainer is not None else 1

    def train_dataloader(self) -> DataLoader:
        if self.streamed:
            return self._stream_dataloader()
        rank = self.trainer.global_rank if self.trainer is not None else 0
        sampler_class = ResumableSampler if self.buckets is None else BucketSampler
        self._sampler = sampler_class(self.train_dataset, self._world_size(), rank, seed=self.hparams.seed,
                                      batch_size=self.hparams.batch_size)
        if self._resume is not None:
            self._sampler.resume_at(*self._resume)
        return DataLoader(self.train_dataset, batch_size=self.hparams.batch_size, sampler=self._sampler,
                          num_workers=self.hparams.num_workers, persistent_workers=self.hparams.num_workers > 0,
                          pin_memory=torch.cuda.is_available())

    def _stream_dataloader(self) -> DataLoader:
        """The stream's batches, made whole in the readers (one crop size each)."""
        hp = self.hparams
        return DataLoader(self.train_dataset, batch_size=None, num_workers=hp.num_workers,
                          persistent_workers=hp.num_workers > 0, pin_memory=torch.cuda.is_available())

    def _resume_stream(self) -> None:
        """Start the stream after the batches the checkpoint's run trained on (a count of all processes' draws)."""
        if self._saved_layout is None:
            log.warning("the checkpoint was written by a run that read rows, not a stream: the stream starts from "
                        "its beginning")
            return
        check_same_layout(self._saved_layout, self._stream_layout())
        self.train_dataset.resume_at(self._resume[1] // self._world_size() // self.hparams.batch_size)

    def _stream_layout(self) -> StreamLayout:
        return StreamLayout.of(self._world_size(), self.hparams.num_workers, self.hparams.batch_size)

    def val_dataloader(self) -> DataLoader:
        keys = [(index, 0, index) for index in range(len(self.val_dataset))]
        return DataLoader(self.val_dataset, batch_size=self.hparams.batch_size, sampler=keys,
                          num_workers=self.hparams.num_workers, persistent_workers=self.hparams.num_workers > 0)

    def on_before_batch_transfer(self, batch: Batch, dataloader_idx: int) -> Batch:
        # Runs when the loop takes a training batch for a step (not when it is prefetched): the exact resume point.
        replaced = int(batch.pop(REPLACED).sum()) if REPLACED in batch else 0
        if self.trainer is not None and self.trainer.training:
            # Draws of the epoch taken by all processes together (each takes as many), not by this one alone.
            self._consumed = (self.trainer.current_epoch, (int(batch[POSITION].max()) + 1) * self._world_size())
            self._replaced += replaced
            self._log_skipped()
        return batch

    @property
    def skipped_samples(self) -> int:
        """Bad rows left out before training, plus draws that passed over a bad row."""
        return self._left_out + self._replaced

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
                        "row: %d (named in the warnings above; %s)", self._left_out, self._replaced, SKIPPED_METRIC)

    def state_dict(self) -> dict[str, int]:
        if self._consumed is None:
            return {}
        state = {"epoch": self._consumed[0], "position": self._consumed[1], "replaced": self._replaced}
        return {**state, "stream": self._stream_layout()._asdict()} if self.streamed else state

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        if state_dict:
            self._resume = (state_dict["epoch"], state_dict["position"])
            self._replaced = state_dict.get("replaced", 0)
            self._saved_layout = state_dict.get("stream")
            if self._sampler is not None:
                self._sampler.resume_at(*self._resume)
            if self.streamed and self.train_dataset is not None:
                self._resume_stream()
