"""The torch Datasets the loaders read, keyed by the sampler's (index, seed, position): one builds a `PixelBatch`
sample from the source's images, the other an `EncodedBatch` sample from the pre-encoded cache."""

from __future__ import annotations

import random
from typing import Any

from torch.utils.data import Dataset

from amused_lightning.batch import INPUT_IDS, POSITION
from amused_lightning.data.cache import TokenCache
from amused_lightning.data.sources import DataSource
from amused_lightning.data.transforms import preprocess_image
from amused_lightning.encoding import tokenize_prompts


class PixelDataset(Dataset):
    """Preprocessed pixels, micro_conds and prompt token ids of `rows` of `source`."""

    def __init__(self, source: DataSource, rows: list[int], tokenizer, resolution: int, center_crop: bool,
                 random_flip: bool, aesthetic_score: float):
        self.source, self.rows, self.tokenizer = source, rows, tokenizer
        self.transform = dict(resolution=resolution, center_crop=center_crop, random_flip=random_flip,
                              aesthetic_score=aesthetic_score)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: tuple[int, int, int]) -> dict[str, Any]:
        index, seed, position = key
        image, prompt = self.source[self.rows[index]]
        sample = preprocess_image(image, rng=random.Random(seed), **self.transform)
        sample[INPUT_IDS] = tokenize_prompts(self.tokenizer, [prompt])[0]
        sample[POSITION] = position
        return sample


class CachedDataset(Dataset):
    """Pre-encoded image tokens (one of each row's cached crops, drawn by the key's seed) and prompt embeddings
    (or prompt token ids, when the cache holds no text because the text encoder trains)."""

    def __init__(self, cache: TokenCache, source: DataSource, rows: list[int], cache_rows: list[int], tokenizer):
        self.cache, self.source, self.rows, self.tokenizer = cache, source, rows, tokenizer
        self.cache_index = {row: i for i, row in enumerate(cache_rows)}

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: tuple[int, int, int]) -> dict[str, Any]:
        index, seed, position = key
        row = self.rows[index]
        sample = self.cache.sample(self.cache_index[row], seed)
        if not self.cache.has_text:
            sample[INPUT_IDS] = tokenize_prompts(self.tokenizer, [self.source.prompt(row)])[0]
        sample[POSITION] = position
        return sample
