"""LightningDataModule for aMUSEd finetuning: one data source, resolution cropping, tokenization in workers,
and an optional pre-encoded cache of image tokens and prompt embeddings."""

from __future__ import annotations

import hashlib
import os
from contextlib import nullcontext
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from amused_lightning.components import components_identity, load_frozen_encoders, load_tokenizer, vq_downscale_factor
from amused_lightning.data.cache import CacheSpec, TokenCache, open_or_build
from amused_lightning.data.samples import CachedSamples, PixelSamples
from amused_lightning.data.sampling import ResumableSampler
from amused_lightning.data.sources import DataSourceError, HFDatasetSource, ImageFolderSource, SingleImageSource

# A single image is repeated to fill this many batches per epoch, so loaders are not restarted every step.
SINGLE_IMAGE_BATCHES_PER_EPOCH = 100
CACHE_MODES = ("auto", "on", "off")


class AmusedDataModule(L.LightningDataModule):
    """Training images with prompts from exactly one of `dataset`, `image_dir` or `image`."""

    def __init__(
        self,
        dataset: str | None = None,
        split: str = "train",
        image_key: str = "image",
        prompt_key: str = "text",
        prompt_prefix: str | None = None,
        image_dir: str | None = None,
        image: str | None = None,
        resolution: int = 256,
        center_crop: bool = False,
        random_flip: bool = False,
        aesthetic_score: float = 6.0,
        val_split: str | None = None,
        val_samples: int = 32,
        batch_size: int = 8,
        num_workers: int = 0,
        cache: str = "auto",
        cache_crops: int = 8,
        cache_dir: str | None = None,
        cache_text: bool = True,
        pretrained: str = "tiny",
        revision: str | None = None,
        variant: str | None = None,
        seed: int = 0,
    ):
        """
        Args:
            dataset: Hugging Face dataset: hub id, or local folder of parquet/arrow files, imagefolder or save_to_disk.
            split: Split of `dataset` to train on.
            image_key: Column of `dataset` holding the images.
            prompt_key: Column of `dataset` holding the prompts.
            prompt_prefix: Text put before every prompt of `dataset` (for example "minecraft ").
            image_dir: Folder of images; each prompt is the file name without its suffix. Other files are ignored.
            image: A single image (StyleDrop); its prompt is the file name without its suffix.
            resolution: Side of the square training crop, in pixels; a multiple of the VQ downscale factor.
            center_crop: Crop the centre instead of a random square.
            random_flip: Flip half of the images horizontally.
            aesthetic_score: Aesthetic score put in every sample's micro-conditioning.
            val_split: Split of `dataset` scored for the held-out loss. Unset: `val_samples` rows are held out of
                training (at most a tenth of it; a single image, or under ten images, are scored themselves).
            val_samples: How many samples the held-out loss scores (centre crops, fixed masks).
            batch_size: Images per device per micro-batch.
            num_workers: Data loader worker processes (decoding, cropping and tokenization happen there).
            cache: Pre-encode image tokens and prompt embeddings once and train from them. "auto": when that changes
                nothing (every crop fixed: centre crops or square images, no flip); "on": always, keeping
                `cache_crops` random crops per image; "off": encode every step.
            cache_crops: Random crops cached per image when crops vary (drawn afresh from them at each step).
            cache_dir: Where caches live, one folder per combination of data, encoders and settings (default:
                $AMUSED_LIGHTNING_CACHE, else ~/.cache/amused_lightning).
            cache_text: Cache prompt embeddings too (linked: off while the text encoder trains).
            pretrained: Where the tokenizer, VQ model and text encoder come from (linked to model.pretrained).
            revision: Hub revision of `pretrained` (linked to model.revision).
            variant: Weight file variant of `pretrained` (linked to model.variant).
            seed: Seed of the shuffling and the crops (linked to seed_everything).
        """
        super().__init__()
        self.save_hyperparameters()
        chosen = [name for name in ("dataset", "image_dir", "image") if getattr(self.hparams, name) is not None]
        if len(chosen) != 1:
            raise DataSourceError("set exactly one of data.dataset, data.image_dir, data.image "
                                  f"(got {chosen or 'none'})")
        for name in ("resolution", "batch_size", "val_samples", "cache_crops"):
            if getattr(self.hparams, name) < 1:
                raise DataSourceError(f"data.{name}={getattr(self.hparams, name)} must be positive")
        if cache not in CACHE_MODES:
            raise DataSourceError(f"data.cache={cache!r} is not one of {list(CACHE_MODES)}")
        self._train = self._val = None  # (source, rows)
        self.train_samples: Dataset | None = None
        self.val_samples: Dataset | None = None
        self._sampler: ResumableSampler | None = None
        self._resume: tuple[int, int] | None = None
        self._consumed: tuple[int, int] | None = None

    def prepare_data(self) -> None:
        # One process per machine encodes the cache; the others read it in setup().
        if self.hparams.cache != "off":
            self._prepare_rows()
            if self._cache(*self._train, self._train_spec_args(), build=True) is not None:
                self._cache(*self._val, self._val_spec_args(), build=True)

    def setup(self, stage: str) -> None:
        if self.train_samples is not None:
            return
        self._prepare_rows()
        hp = self.hparams
        tokenizer = load_tokenizer(hp.pretrained, hp.revision)
        build = self.trainer is None or self.trainer.local_rank == 0
        train_cache = self._cache(*self._train, self._train_spec_args(), build)
        val_cache = self._cache(*self._val, self._val_spec_args(), build) if train_cache else None
        self.train_samples = self._samples(self._train, train_cache, tokenizer, hp.center_crop, hp.random_flip)
        # Held-out samples are scored deterministically: centre crop, no flip.
        self.val_samples = self._samples(self._val, val_cache, tokenizer, True, False)

    def _samples(self, data, cache: TokenCache | None, tokenizer, center_crop: bool, random_flip: bool) -> Dataset:
        source, rows = data
        if cache is not None:
            return CachedSamples(cache, source, rows, sorted(set(rows)), tokenizer)
        hp = self.hparams
        return PixelSamples(source, rows, tokenizer, hp.resolution, center_crop, random_flip, hp.aesthetic_score)

    def _prepare_rows(self) -> None:
        """Check the resolution, open the source, and split its rows into training and held-out."""
        if self._train is None:
            self._check_resolution()
            source = self._open_source()
            self._train, self._val = self._split(source)

    def _check_resolution(self) -> None:
        factor = vq_downscale_factor(self.hparams.pretrained, self.hparams.revision)
        if self.hparams.resolution % factor:
            raise DataSourceError(f"data.resolution={self.hparams.resolution} is not a multiple of the VQ "
                                  f"downscale factor {factor} of model.pretrained={self.hparams.pretrained!r}")

    def _open_source(self):
        hp = self.hparams
        if hp.dataset is not None:
            return HFDatasetSource(hp.dataset, hp.split, hp.image_key, hp.prompt_key, hp.prompt_prefix)
        if hp.image_dir is not None:
            return ImageFolderSource(hp.image_dir)
        return SingleImageSource(hp.image)

    def _split(self, source) -> tuple[tuple, tuple]:
        """((source, training rows), (source, held-out rows)) following `val_split` / `val_samples`."""
        hp = self.hparams
        if hp.val_split is not None:
            if hp.dataset is None:
                raise DataSourceError(f"data.val_split={hp.val_split!r} needs data.dataset")
            held_out = HFDatasetSource(hp.dataset, hp.val_split, hp.image_key, hp.prompt_key, hp.prompt_prefix)
            return (source, list(range(len(source)))), (held_out, list(range(min(hp.val_samples, len(held_out)))))
        if hp.image is not None:
            repeats = hp.batch_size * self._world_size() * SINGLE_IMAGE_BATCHES_PER_EPOCH
            return (source, [0] * repeats), (source, [0])
        count = min(hp.val_samples, len(source) // 10)
        order = torch.randperm(len(source), generator=torch.Generator().manual_seed(hp.seed)).tolist()
        if count == 0:  # too little data to spare any: score (some of) the training images themselves
            return (source, list(range(len(source)))), (source, sorted(order[:hp.val_samples]))
        return (source, sorted(order[count:])), (source, sorted(order[:count]))

    def _train_spec_args(self) -> dict:
        hp = self.hparams
        return dict(center_crop=hp.center_crop, random_flip=hp.random_flip, crops=hp.cache_crops,
                    exact_only=hp.cache == "auto")

    def _val_spec_args(self) -> dict:
        return dict(center_crop=True, random_flip=False, crops=1, exact_only=False)

    def _cache(self, source, rows: list[int], spec_args: dict, build: bool) -> TokenCache | None:
        """The cache of these rows, built if absent and `build`; None when caching is off or would change results."""
        hp = self.hparams
        if hp.cache == "off":
            return None
        exact_only = spec_args.pop("exact_only")
        unique_rows = sorted(set(rows))
        spec = CacheSpec(
            data=source.identity, components=components_identity(hp.pretrained, hp.revision, hp.variant, hp.seed),
            resolution=hp.resolution, aesthetic_score=hp.aesthetic_score, seed=hp.seed,
            rows=hashlib.sha256(str(unique_rows).encode()).hexdigest(),
            text_precision=self._precision() if hp.cache_text else None, **spec_args)
        encoders = lambda: (*load_frozen_encoders(hp.pretrained, hp.revision, hp.variant, hp.seed),  # noqa: E731
                            load_tokenizer(hp.pretrained, hp.revision))
        cache_dir = hp.cache_dir or os.environ.get("AMUSED_LIGHTNING_CACHE", "~/.cache/amused_lightning")
        return open_or_build(spec, Path(cache_dir).expanduser(), source, unique_rows, encoders, self._device(),
                             self._autocast(), hp.batch_size, exact_only, build)

    def _precision(self) -> str:
        return str(self.trainer.precision) if self.trainer is not None else "32-true"

    def _device(self) -> torch.device:
        return self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")

    def _autocast(self):
        return self.trainer.precision_plugin.forward_context if self.trainer is not None else nullcontext

    def _world_size(self) -> int:
        return self.trainer.world_size if self.trainer is not None else 1

    def train_dataloader(self) -> DataLoader:
        rank = self.trainer.global_rank if self.trainer is not None else 0
        self._sampler = ResumableSampler(self.train_samples, self._world_size(), rank, seed=self.hparams.seed)
        if self._resume is not None:
            self._sampler.resume_at(*self._resume)
        return DataLoader(self.train_samples, batch_size=self.hparams.batch_size, sampler=self._sampler,
                          num_workers=self.hparams.num_workers, persistent_workers=self.hparams.num_workers > 0,
                          pin_memory=torch.cuda.is_available())

    def val_dataloader(self) -> DataLoader:
        keys = [(index, 0, index) for index in range(len(self.val_samples))]
        return DataLoader(self.val_samples, batch_size=self.hparams.batch_size, sampler=keys,
                          num_workers=self.hparams.num_workers, persistent_workers=self.hparams.num_workers > 0)

    def on_before_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        # Runs when the loop takes a training batch for a step (not when it is prefetched): the exact resume point.
        # Validation batches keep their positions: they fix the held-out masks.
        if self.trainer is not None and self.trainer.training:
            self._consumed = (self.trainer.current_epoch, int(batch.pop("position").max()) + 1)
        return batch

    def state_dict(self) -> dict[str, int]:
        if self._consumed is None:
            return {}
        return {"epoch": self._consumed[0], "position": self._consumed[1]}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        if state_dict:
            self._resume = (state_dict["epoch"], state_dict["position"])
            if self._sampler is not None:
                self._sampler.resume_at(*self._resume)
