"""Rows: a source indexed by row, scanned for bad rows, split into training and held-out rows, optionally
pre-encoded once into a cache, and drawn by a resumable sampler (one bucket per batch with aspect-ratio buckets)."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from amused_lightning.data.bad_data import BadImageError, apply_to_scan
from amused_lightning.data.bucket_sampler import BucketSampler
from amused_lightning.data.buckets import Grid, RowLayout, square_layout, training_layout
from amused_lightning.data.cache import CacheBuilder, CacheSpec, TokenCache
from amused_lightning.data.datasets import CachedDataset, PixelDataset
from amused_lightning.data.pipeline import Pipeline, Processes
from amused_lightning.data.sampler import ResumableSampler
from amused_lightning.data.sources.base import DataSource, Split
from amused_lightning.model.encoding import pixels_per_token

log = logging.getLogger(__name__)


class RowsPipeline(Pipeline):
    """The DataModule's data from a `DataSource`."""

    source: DataSource

    def __init__(self, *args: Any):
        super().__init__(*args)
        self._split: Split | None = None
        self._layout: RowLayout | None = None  # the training rows in their buckets
        self._sampler: ResumableSampler | None = None
        self._resume: tuple[int, int] | None = None
        self._token_caches: tuple[TokenCache | None, TokenCache | None] | None = None  # found or built once

    def prepare(self, processes: Processes) -> None:
        # One process per machine encodes the cache; the others read it in `datasets`.
        if self.hparams.cache != "off":
            self._caches(processes, build=True)

    def datasets(self, processes: Processes) -> tuple[Dataset, Dataset]:
        train_cache, val_cache = self._caches(processes, build=processes.local_rank == 0)
        hp, split = self.hparams, self._split
        train = self._dataset(self.source, self._layout, train_cache, hp.center_crop, hp.random_flip)
        # Held-out samples are scored deterministically: centre-cropped squares, no flip, with or without buckets.
        val = self._dataset(split.held_out, square_layout(split.held_out_rows, hp.resolution), val_cache, True, False)
        return train, val

    def _dataset(self, source: DataSource, layout: RowLayout, cache: TokenCache | None, center_crop: bool,
                 random_flip: bool) -> Dataset:
        tokenizer, hp = self.encoders.tokenizer, self.hparams
        if cache is not None:
            return CachedDataset(cache, source, layout, sorted(set(layout.rows)), tokenizer, hp.on_bad_image)
        return PixelDataset(source, layout, tokenizer, center_crop, random_flip, hp.aesthetic_score, hp.on_bad_image)

    def _checked_split(self, processes: Processes) -> Split:
        """The split of the rows the scan finds usable, the others reported as data.on_bad_image says."""
        hp = self.hparams
        self._report_scan(self.source)
        split = self.source.split_rows(hp.val_samples, hp.seed, hp.batch_size, processes.world_size)
        if split.held_out is not self.source:
            self._report_scan(split.held_out)
        return split

    def _report_scan(self, source: DataSource) -> None:
        apply_to_scan(source.bad_rows, source.where, len(source), self.hparams.on_bad_image)
        self.left_out += len(source.bad_rows)

    def _caches(self, processes: Processes, build: bool) -> tuple[TokenCache | None, TokenCache | None]:
        """The training and held-out caches, built if absent and `build`; None when caching is off or would change
        training (then the held-out rows are not cached either). Found once per data module, and said once."""
        hp = self.hparams
        if self._split is None:
            self._split = self._checked_split(processes)
            self._layout = training_layout(self.source, self._split.train_rows, hp.resolution,
                                           pixels_per_token(self.encoders.vqvae.config), self.bucket_grids())
        if hp.cache == "off":
            return None, None
        if self._token_caches is None:
            builder = self._cache_builder(processes)
            self._token_caches = self._find_caches(builder, processes, build)
            if builder.reused:
                log.info("reusing the pre-encoded cache %s", " and ".join(str(folder) for folder in builder.reused))
        return self._token_caches

    def _find_caches(self, builder: CacheBuilder, processes: Processes,
                     build: bool) -> tuple[TokenCache | None, TokenCache | None]:
        """The training and held-out caches, built first if absent and `build`."""
        hp, split = self.hparams, self._split
        train = builder.get(self.cache_spec(self.source, split.train_rows, hp.center_crop, hp.random_flip,
                                            hp.cache_crops, processes.precision, self.bucket_grids()), self.source,
                            sorted(set(split.train_rows)), exact_only=hp.cache == "auto", build=build,
                            sizes=self._layout.size_of())
        if train is None:
            return None, None
        # With validation off (trainer.limit_val_batches 0) nothing reads the held-out rows: encoding them is waste.
        val = builder.get(self.cache_spec(split.held_out, split.held_out_rows, True, False, 1, processes.precision),
                          split.held_out, sorted(set(split.held_out_rows)), exact_only=False,
                          build=build) if processes.validates else None
        known_bad = [message for cache in (train, val) if cache is not None for message in cache.bad.values()]
        if known_bad and hp.on_bad_image == "error":  # a cache built under "skip" knows them before training
            raise BadImageError(known_bad[0])
        return train, val

    def cache_spec(self, source: DataSource, rows: list[int], center_crop: bool, random_flip: bool, crops: int,
                   precision: str, grids: tuple[Grid, ...] | None = None) -> CacheSpec:
        """What the cache of `rows` of `source`, cropped to the buckets of `grids` (None: squares), depends on, hence
        its key."""
        hp, encoders = self.hparams, self.encoders
        return CacheSpec(data=source.identity, components=encoders.identity, resolution=hp.resolution,
                         center_crop=center_crop, random_flip=random_flip, aesthetic_score=hp.aesthetic_score,
                         crops=crops, rows=hashlib.sha256(str(sorted(set(rows))).encode()).hexdigest(),
                         text_precision=None if encoders.text_encoder_trains else precision, seed=hp.seed,
                         bucket_grids=grids)

    def _cache_builder(self, processes: Processes) -> CacheBuilder:
        root = self.hparams.cache_dir or os.environ.get("AMUSED_LIGHTNING_CACHE", "~/.cache/amused_lightning")
        return CacheBuilder(Path(root).expanduser(), self.encoders, processes.device, processes.forward_context,
                            self.hparams.batch_size, self.hparams.on_bad_image)

    def train_dataloader(self, dataset: Dataset, processes: Processes) -> DataLoader:
        hp = self.hparams
        sampler_class = ResumableSampler if self.buckets is None else BucketSampler
        self._sampler = sampler_class(dataset, processes.world_size, processes.rank, seed=hp.seed,
                                      batch_size=hp.batch_size)
        if self._resume is not None:
            self._sampler.resume_at(*self._resume)
        return DataLoader(dataset, batch_size=hp.batch_size, sampler=self._sampler,
                          num_workers=hp.num_workers, persistent_workers=hp.num_workers > 0,
                          pin_memory=torch.cuda.is_available())

    def rows_to_check(self, records: int) -> DataSource:
        return self.source

    def resume_at(self, epoch: int, position: int, saved: dict[str, Any], processes: Processes) -> None:
        self._resume = (epoch, position)
        if self._sampler is not None:
            self._sampler.resume_at(epoch, position)
