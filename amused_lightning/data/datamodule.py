"""LightningDataModule for aMUSEd finetuning: one data source, resolution cropping, tokenization in workers."""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from amused_lightning.components import load_tokenizer, vq_downscale_factor
from amused_lightning.data.sampling import ResumableSampler
from amused_lightning.data.sources import (
    DataSourceError,
    HFDatasetSource,
    ImageFolderSource,
    SingleImageSource,
    SubsetSource,
)
from amused_lightning.data.transforms import preprocess_image
from amused_lightning.encoding import tokenize_prompts

# A single image is repeated to fill this many batches per epoch, so loaders are not restarted every step.
SINGLE_IMAGE_BATCHES_PER_EPOCH = 100


class TrainingSamples(Dataset):
    """Preprocessed pixels, micro_conds and prompt token ids for (index, seed, position) keys."""

    def __init__(self, source, tokenizer, resolution: int, center_crop: bool, random_flip: bool,
                 aesthetic_score: float):
        self.source, self.tokenizer = source, tokenizer
        self.transform = dict(resolution=resolution, center_crop=center_crop, random_flip=random_flip,
                              aesthetic_score=aesthetic_score)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: tuple[int, int, int]) -> dict[str, Any]:
        index, seed, position = key
        image, prompt = self.source[index]
        sample = preprocess_image(image, rng=random.Random(seed), **self.transform)
        sample["input_ids"] = tokenize_prompts(self.tokenizer, [prompt])[0]
        sample["position"] = position
        return sample


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
        pretrained: str = "tiny",
        revision: str | None = None,
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
            pretrained: Where the tokenizer and VQ config come from (linked to model.pretrained).
            revision: Hub revision of `pretrained` (linked to model.revision).
            seed: Seed of the shuffling and the crops (linked to seed_everything).
        """
        super().__init__()
        self.save_hyperparameters()
        chosen = [name for name in ("dataset", "image_dir", "image") if getattr(self.hparams, name) is not None]
        if len(chosen) != 1:
            raise DataSourceError(f"set exactly one of data.dataset, data.image_dir, data.image (got {chosen or 'none'})")
        for name in ("resolution", "batch_size", "val_samples"):
            if getattr(self.hparams, name) < 1:
                raise DataSourceError(f"data.{name}={getattr(self.hparams, name)} must be positive")
        self.train_samples: TrainingSamples | None = None
        self.val_samples: TrainingSamples | None = None
        self._sampler: ResumableSampler | None = None
        self._resume: tuple[int, int] | None = None
        self._consumed: tuple[int, int] | None = None

    def setup(self, stage: str) -> None:
        if self.train_samples is None:
            hp = self.hparams
            self._check_resolution()
            tokenizer = load_tokenizer(hp.pretrained, hp.revision)
            train_source, val_source = self._split(self._open_source())
            self.train_samples = TrainingSamples(train_source, tokenizer, hp.resolution, hp.center_crop,
                                                 hp.random_flip, hp.aesthetic_score)
            # Held-out samples are scored deterministically: centre crop, no flip.
            self.val_samples = TrainingSamples(val_source, tokenizer, hp.resolution, True, False, hp.aesthetic_score)

    def _split(self, source) -> tuple:
        """(training source, held-out source) following `val_split` / `val_samples`."""
        hp = self.hparams
        if hp.val_split is not None:
            if hp.dataset is None:
                raise DataSourceError(f"data.val_split={hp.val_split!r} needs data.dataset")
            held_out = HFDatasetSource(hp.dataset, hp.val_split, hp.image_key, hp.prompt_key, hp.prompt_prefix)
            return source, SubsetSource(held_out, list(range(min(hp.val_samples, len(held_out)))))
        if hp.image is not None:
            return source, SubsetSource(source, [0])
        count = min(hp.val_samples, len(source) // 10)
        order = torch.randperm(len(source), generator=torch.Generator().manual_seed(hp.seed)).tolist()
        if count == 0:  # too little data to spare any: score (some of) the training images themselves
            return source, SubsetSource(source, sorted(order[:hp.val_samples]))
        return SubsetSource(source, sorted(order[count:])), SubsetSource(source, sorted(order[:count]))

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
        return SingleImageSource(hp.image, repeats=hp.batch_size * self._world_size() * SINGLE_IMAGE_BATCHES_PER_EPOCH)

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
