"""The torch Datasets the loaders read, keyed by the sampler's (index, seed, position): one builds a `PixelBatch`
sample from the source's images, the other an `EncodedBatch` sample from the pre-encoded cache.

A row that turns out bad when drawn is passed over for the next one, the same in both (see `bad_data.draw`); each
sample says how many it passed over (`REPLACED`), which the DataModule counts and removes."""

from __future__ import annotations

import random
from typing import Any

from torch.utils.data import Dataset

from amused_lightning.data.bad_data import draw
from amused_lightning.data.batch import INPUT_IDS, POSITION
from amused_lightning.data.buckets import RowLayout
from amused_lightning.data.cache import TokenCache
from amused_lightning.data.sources.base import DataSource
from amused_lightning.data.transforms import preprocess_image
from amused_lightning.model.encoding import tokenize_prompts

REPLACED = "replaced"


class RowDataset(Dataset):
    """Samples of `layout.rows`, each cropped to its size; a bad one passed over for the next of its group (as
    `on_bad_image` says), so that every sample of a batch, drawn from one group, has the batch's shape."""

    layout: RowLayout
    on_bad_image: str
    known_bad: set[int]

    @property
    def rows(self) -> list[int]:
        return self.layout.rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: tuple[int, int, int]) -> dict[str, Any]:
        index, seed, position = key
        sample, replaced = draw(lambda i: self._sample(i, seed), index, self.layout.group_of(index),
                                self.on_bad_image, self.known_bad)
        sample[POSITION], sample[REPLACED] = position, replaced
        return sample

    def _sample(self, index: int, seed: int) -> dict[str, Any]:
        """The sample of `self.rows[index]`, its random choices drawn from `seed`."""
        raise NotImplementedError


class PixelDataset(RowDataset):
    """Preprocessed pixels, micro_conds and prompt token ids of the rows of `layout` in `source`."""

    def __init__(self, source: DataSource, layout: RowLayout, tokenizer, center_crop: bool, random_flip: bool,
                 aesthetic_score: float, on_bad_image: str):
        self.source, self.layout, self.tokenizer, self.on_bad_image = source, layout, tokenizer, on_bad_image
        self.transform = dict(center_crop=center_crop, random_flip=random_flip, aesthetic_score=aesthetic_score)
        self.known_bad: set[int] = set()

    def _sample(self, index: int, seed: int) -> dict[str, Any]:
        row = self.rows[index]
        sample = preprocess_image(self.source.image(row), self.layout.sizes[index], rng=random.Random(seed),
                                  **self.transform)
        sample[INPUT_IDS] = tokenize_prompts(self.tokenizer, [self.source.prompt(row, seed)])[0]
        return sample


class CachedDataset(RowDataset):
    """Pre-encoded image tokens (one of each row's cached crops, drawn by the key's seed) and the embeddings of the
    caption drawn as `PixelDataset` draws it (or its token ids, when the cache holds no text because the text encoder
    trains)."""

    def __init__(self, cache: TokenCache, source: DataSource, layout: RowLayout, cache_rows: list[int], tokenizer,
                 on_bad_image: str):
        self.cache, self.source, self.layout, self.tokenizer = cache, source, layout, tokenizer
        self.cache_index = {row: i for i, row in enumerate(cache_rows)}
        self.on_bad_image = on_bad_image
        self.known_bad: set[int] = set()

    def _sample(self, index: int, seed: int) -> dict[str, Any]:
        row = self.rows[index]
        sample = self.cache.sample(self.cache_index[row], seed, row)
        if not self.cache.has_text:
            sample[INPUT_IDS] = tokenize_prompts(self.tokenizer, [self.source.prompt(row, seed)])[0]
        return sample
