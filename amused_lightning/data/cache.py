"""Image tokens and prompt embeddings encoded once, stored on disk, and read back memory-mapped.

A cache lives in <cache_dir>/<key>/, the key hashing everything its contents depend on (the data, the frozen
encoders, the transform settings, the rows, the text dtype), so a changed setting can never read a stale cache.
Each image keeps up to `crops` pre-encoded random crops (a single one when its crop is unique and unflipped), and each
of its captions its embeddings (a draw picks one as the uncached path does). Crops are those of the image's crop size:
the square, or its aspect-ratio bucket's grid; tokens are stored flat, as long as the largest grid, with each row's
grid beside them. A row whose image turns out bad while encoding keeps none, and the reason (under
data.on_bad_image=skip).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from amused_lightning.data.bad_data import BadImageError
from amused_lightning.data.batch import IMAGE_TOKENS, MICRO_CONDS, PIXEL_VALUES, PROMPT_HIDDEN, PROMPT_POOLED
from amused_lightning.data.captions import caption_index
from amused_lightning.data.transforms import has_unique_crop, preprocess_image
from amused_lightning.model.encoding import (
    FrozenEncoders,
    encode_image_tokens,
    encode_prompts,
    pixels_per_token,
    tokenize_prompts,
)
from amused_lightning.progress import iterate
from amused_lightning.seeding import derive_seed

log = logging.getLogger(__name__)
CACHE_FORMAT = 3  # 2: embeddings of every caption of a row, located by caption_starts.npy; 3: flat tokens, grids.npy
Size = tuple[int, int]  # (width, height) of a crop in pixels


@dataclass(frozen=True)
class CacheSpec:
    """Everything a cache's contents depend on."""

    data: str
    components: str
    resolution: int
    center_crop: bool
    random_flip: bool
    aesthetic_score: float
    crops: int
    rows: str
    text_precision: str | None  # the precision prompts were encoded in; None: not cached (the text encoder trains)
    seed: int
    bucket_grids: tuple[tuple[int, int], ...] | None = None  # aspect-ratio buckets' (height, width) grids, if on

    def key(self) -> str:
        """A short hash naming the cache folder."""
        text = json.dumps({"format": CACHE_FORMAT, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:24]


class TokenCache:
    """Memory-mapped arrays of a built cache."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.meta = json.loads((folder / "meta.json").read_text())
        self.tokens = np.load(folder / "tokens.npy", mmap_mode="r")  # (N, K, longest h * w) int16
        self.grids = np.load(folder / "grids.npy")  # (N, 2): each row's (h, w)
        self.micro_conds = np.load(folder / "micro_conds.npy", mmap_mode="r")  # (N, K, 5)
        self.num_crops = np.load(folder / "num_crops.npy")  # (N,)
        self.has_text = self.meta["text_precision"] is not None
        self.bad = {int(index): message for index, message in self.meta.get("bad", {}).items()}
        if self.has_text:
            self.hidden = np.load(folder / "hidden.npy", mmap_mode="r")  # (captions of all rows, 77, D)
            self.pooled = np.load(folder / "pooled.npy", mmap_mode="r")
            self.caption_starts = np.load(folder / "caption_starts.npy")  # (N + 1,): row i's are [i]:[i + 1]

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def __reduce__(self):
        # Data loader workers reopen the files rather than receive pickled copies of the arrays.
        return TokenCache, (self.folder,)

    def sample(self, index: int, seed: int, row: int) -> dict[str, torch.Tensor]:
        """One of the cached crops of entry `index` (source row `row`), chosen by `seed`, with its micro_conds and
        the embeddings of the caption `caption_index` draws; BadImageError for a row whose image could not be
        encoded."""
        if index in self.bad:
            raise BadImageError(self.bad[index])
        crop = random.Random(seed).randrange(int(self.num_crops[index]))
        height, width = (int(side) for side in self.grids[index])
        tokens = self.tokens[index, crop, :height * width].reshape(height, width)
        sample = {IMAGE_TOKENS: torch.from_numpy(tokens.astype(np.int64)),
                  MICRO_CONDS: torch.from_numpy(np.array(self.micro_conds[index, crop]))}
        if self.has_text:
            start, end = int(self.caption_starts[index]), int(self.caption_starts[index + 1])
            caption = start + caption_index(end - start, seed, row)
            sample[PROMPT_HIDDEN] = torch.from_numpy(np.array(self.hidden[caption]))
            sample[PROMPT_POOLED] = torch.from_numpy(np.array(self.pooled[caption]))
        return sample


class CacheBuilder:
    """Finds the cache of a spec under `root`, encoding it first with the connected frozen encoders when absent."""

    def __init__(self, root: Path, encoders: FrozenEncoders, device: torch.device, autocast, batch_size: int,
                 on_bad_image: str):
        self.root, self.encoders, self.device = root, encoders, device
        self.autocast, self.batch_size, self.on_bad_image = autocast, batch_size, on_bad_image
        self.reused: list[Path] = []  # the caches `get` found already built, for the caller to say once

    def get(self, spec: CacheSpec, source, rows: list[int], exact_only: bool, build: bool,
            sizes: dict[int, Size] | None = None) -> TokenCache | None:
        """The cache of `rows` of `source`, each cropped to its size in `sizes` (default: the resolution's square),
        built first if absent and `build`. With `exact_only`, None when some image has several possible crops
        (caching would change training); that finding is remembered beside the caches."""
        folder, inexact = self.root / spec.key(), self.root / f"{spec.key()}.several-crops"
        if (folder / "meta.json").exists():
            self.reused.append(folder)
            return TokenCache(folder)
        if (exact_only and inexact.exists()) or not build:
            return None
        partial = self.root / f"{spec.key()}.partial-{os.getpid()}"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        sizes = sizes or {row: (spec.resolution, spec.resolution) for row in rows}
        try:
            with self._encoders_on_device(spec.text_precision is not None):
                complete = self.encode(spec, partial, source, rows, sizes, exact_only)
            if not complete:
                inexact.touch()
                return None
            if not folder.exists():  # a concurrent builder may have finished first
                os.replace(partial, folder)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        return TokenCache(folder)

    @contextmanager
    def _encoders_on_device(self, with_text: bool):
        """The encoders on the build device in eval mode, put back where and as they were afterwards."""
        parts = [self.encoders.vqvae] + ([self.encoders.text_encoder] if with_text else [])
        before = [(next(part.parameters()).device, part.training) for part in parts]
        for part in parts:
            part.to(self.device).eval()
        try:
            yield
        finally:
            for part, (device, training) in zip(parts, before):
                part.to(device).train(training)

    def encode(self, spec: CacheSpec, folder: Path, source, rows: list[int], sizes: dict[int, Size],
               require_unique_crops: bool) -> bool:
        """Encode every row's crops and captions into `folder`; False if a required unique crop is missing."""
        factor = pixels_per_token(self.encoders.vqvae.config)
        longest = max(width * height for width, height in sizes.values()) // factor ** 2
        tokens = np.lib.format.open_memmap(folder / "tokens.npy", "w+", np.int16, (len(rows), spec.crops, longest))
        conds = np.lib.format.open_memmap(folder / "micro_conds.npy", "w+", np.float32, (len(rows), spec.crops, 5))
        grids = np.zeros((len(rows), 2), dtype=np.int32)
        num_crops = np.zeros(len(rows), dtype=np.int16)
        starts = np.cumsum([0] + [len(source.captions(row).lines) for row in rows])
        text, bad = None, {}
        batches = range(0, len(rows), self.batch_size)
        for start in iterate(batches, len(batches), "pre-encoding batch", "batches"):
            loaded = self._load(source, rows, range(start, min(start + self.batch_size, len(rows))), bad)
            if not loaded:
                continue
            indices, images = (list(column) for column in zip(*loaded))
            crops = _crops(spec, images, [rows[index] for index in indices], sizes, require_unique_crops)
            if crops is None:
                return False
            num_crops[indices] = [len(image_crops) for image_crops in crops]
            with torch.no_grad():
                _encode_crops(self.encoders.vqvae, crops, (tokens, conds, grids), indices, self.device)
                if spec.text_precision is not None:
                    text = self._encode_captions(source, [rows[index] for index in indices],
                                                 [starts[index] for index in indices], text, folder, int(starts[-1]))
        np.save(folder / "num_crops.npy", num_crops)
        np.save(folder / "grids.npy", grids)
        np.save(folder / "caption_starts.npy", starts)
        for array in (tokens, conds, *(text or ())):
            array.flush()
        meta = {**asdict(spec), "format": CACHE_FORMAT, "bad": {str(index): reason for index, reason in bad.items()}}
        (folder / "meta.json").write_text(json.dumps(meta, indent=2))
        return True

    def _load(self, source, rows: list[int], indices: range, bad: dict[int, str]) -> list[tuple]:
        """(index, image) of each of `indices` whose row decodes; a bad one is put in `bad` (under "skip", else it
        raises)."""
        loaded = []
        for index in indices:
            try:
                loaded.append((index, source.image(rows[index])))
            except BadImageError as error:
                if self.on_bad_image == "error":
                    raise
                log.warning("skipping %s (data.on_bad_image=skip; a draw of it takes the next row)", error)
                bad[index] = str(error)
        return loaded

    def _encode_captions(self, source, rows: list[int], starts: list[int], text: tuple | None, folder: Path,
                         total: int) -> tuple:
        """Write the embeddings of every caption of `rows` from their `starts` on; returns the (hidden, pooled)
        arrays, made on the first call."""
        captions = [source.captions(row).lines for row in rows]
        hidden, pooled = self._encode_prompts([line for lines in captions for line in lines])
        text = text or _text_arrays(folder, total, hidden, pooled)
        positions = [start + i for start, lines in zip(starts, captions) for i in range(len(lines))]
        text[0][positions] = hidden.float().cpu().numpy()
        text[1][positions] = pooled.float().cpu().numpy()
        return text

    def _encode_prompts(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """CLIP's outputs for `prompts`, under the run's precision."""
        with self.autocast():
            input_ids = tokenize_prompts(self.encoders.tokenizer, prompts).to(self.device)
            return encode_prompts(self.encoders.text_encoder, input_ids)


def _crops(spec: CacheSpec, images, rows: list[int], sizes: dict[int, Size],
           require_unique_crops: bool) -> list[list[dict]] | None:
    """Each image's preprocessed crops (one when its crop is fixed); None if a required unique crop is missing."""
    crops = []
    for image, row in zip(images, rows):
        fixed = (spec.center_crop or has_unique_crop(image, sizes[row])) and not spec.random_flip
        if require_unique_crops and not fixed:
            log.info("pre-encoding off: row %d has several possible crops (data.cache: on caches "
                     "data.cache_crops of them per image)", row)
            return None
        seeds = [derive_seed(spec.seed, row, crop) for crop in range(1 if fixed else spec.crops)]
        crops.append([preprocess_image(image, sizes[row], random.Random(seed), spec.center_crop,
                                       spec.random_flip, spec.aesthetic_score) for seed in seeds])
    return crops


def _encode_crops(vqvae, crops: list[list[dict]], arrays: tuple, indices: list[int], device) -> None:
    """VQ-encode all crops of a batch of images, one call per crop shape, and store tokens, micro_conds and grid at
    the images' `indices` of the (tokens, conds, grids) `arrays`."""
    tokens, conds, grids = arrays
    by_shape: dict[tuple, list] = defaultdict(list)
    for image_index, image_crops in zip(indices, crops):
        for crop, sample in enumerate(image_crops):
            by_shape[tuple(sample[PIXEL_VALUES].shape)].append((image_index, crop, sample))
    for entries in by_shape.values():
        pixels = torch.stack([sample[PIXEL_VALUES] for _, _, sample in entries]).to(device)
        encoded = encode_image_tokens(vqvae, pixels).cpu().numpy()
        for (image_index, crop, sample), codes in zip(entries, encoded):
            tokens[image_index, crop, :codes.size] = codes.reshape(-1)
            conds[image_index, crop] = sample[MICRO_CONDS].numpy()
            grids[image_index] = codes.shape


def _text_arrays(folder: Path, count: int, hidden: torch.Tensor, pooled: torch.Tensor) -> tuple:
    """float32 memory-mapped outputs (exact for fp16, bf16 and fp32 values) shaped like `hidden` and `pooled` rows."""
    return (np.lib.format.open_memmap(folder / "hidden.npy", "w+", np.float32, (count, *hidden.shape[1:])),
            np.lib.format.open_memmap(folder / "pooled.npy", "w+", np.float32, (count, *pooled.shape[1:])))
