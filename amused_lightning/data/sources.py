"""The training data, chosen by `data.source`: a Hugging Face dataset here; a folder of images or one image in
`files`.

Each source holds its own settings, opens its data on first use (parsing a config opens nothing), names what its
contents depend on (`identity`, part of the cache key), finds its bad rows before training (`bad_rows`, see
`bad_data`), and splits the others into training and held-out rows.
"""

from __future__ import annotations

import inspect
import logging
from abc import ABC, abstractmethod
from functools import cached_property
from pathlib import Path
from typing import NamedTuple

import datasets
import torch
from PIL import Image

from amused_lightning.data.bad_data import (
    BadImageError,
    ImageData,
    UnusableImage,
    image_problem,
    load_image,
    prompt_problem,
    scan_progress,
)
from amused_lightning.data.captions import DATASET_COLUMN, Captions, caption_index

log = logging.getLogger(__name__)


class DataSourceError(ValueError):
    """The configured training data cannot be used."""


class Split(NamedTuple):
    """Training rows, and the source and rows the held-out loss scores."""

    train_rows: list[int]
    held_out: DataSource
    held_out_rows: list[int]


def source_settings(source: object) -> dict:
    """A source as a config entry: its class and the arguments it was made with (each kept as an attribute)."""
    names = [name for name in inspect.signature(type(source)).parameters]
    return {"class_path": f"{type(source).__module__}.{type(source).__qualname__}",
            "init_args": {name: getattr(source, name) for name in names}}


class DataSource(ABC):
    """Images with captions, indexed by row: `source[row] -> (PIL image, first caption)`."""

    identity: str
    """What the rows' contents depend on (path, split, file sizes and times ...): part of the cache key."""

    settings = source_settings

    @abstractmethod
    def __len__(self) -> int:
        raise NotImplementedError

    @abstractmethod
    def captions(self, row: int) -> Captions:
        """Every caption of `row` (a draw trains on one), where they come from, and what is wrong with them."""
        raise NotImplementedError

    @abstractmethod
    def image_data(self, row: int) -> ImageData | None:
        """The image of `row`, still encoded: its bytes or its file path."""
        raise NotImplementedError

    @abstractmethod
    def where(self, row: int) -> str:
        """`row` named for a warning or an error: its dataset and index, or its file."""
        raise NotImplementedError

    def problem(self, row: int) -> str | None:
        """Why `row` cannot be used, judging from its captions and its image's header, or None."""
        return self.captions(row).problem or image_problem(self.image_data(row))

    def prompt(self, row: int, seed: int = 0) -> str:
        """The caption the draw of `row` with seed `seed` trains on (see `captions.caption_index`)."""
        lines = self.captions(row).lines
        return lines[caption_index(len(lines), seed, row)]

    def image(self, row: int) -> Image.Image:
        """The image of `row`, fully decoded; BadImageError naming the row and why when it cannot be."""
        try:
            return load_image(self.image_data(row))
        except UnusableImage as error:
            raise BadImageError(f"{self.where(row)}: {error}") from error

    def __getitem__(self, row: int) -> tuple[Image.Image, str]:
        return self.image(row), self.prompt(row)

    @cached_property
    def bad_rows(self) -> dict[int, str]:
        """The rows the scan before training finds unusable, with the reason."""
        problems = ((row, self.problem(row)) for row in range(len(self)))
        return {row: problem for row, problem in scan_progress(problems, len(self)) if problem}

    def usable_rows(self) -> list[int]:
        """The rows the scan finds nothing wrong with; an error when there is none."""
        rows = [row for row in range(len(self)) if row not in self.bad_rows]
        if not rows:
            row, reason = next(iter(self.bad_rows.items()))
            raise DataSourceError(f"data.source ({type(self).__name__}) has no usable row: all {len(self)} are bad, "
                                  f"for example {self.where(row)}: {reason}")
        return rows

    def split_rows(self, val_samples: int, seed: int, batch_size: int, world_size: int) -> Split:
        """(training rows, held-out source, held-out rows) among the usable rows: `val_samples` held out of
        training, at most a tenth of them; under ten rows, (some of) the training rows themselves are scored."""
        rows = self.usable_rows()
        count = min(val_samples, len(rows) // 10)
        order = [rows[i] for i in torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed)).tolist()]
        if count == 0:
            return Split(rows, self, sorted(order[:val_samples]))
        return Split(sorted(order[count:]), self, sorted(order[:count]))


class HFDataset(DataSource):
    """Rows of a Hugging Face dataset (hub id, parquet/arrow/image folder, or save_to_disk folder)."""

    def __init__(self, path: str, split: str = "train", image_key: str = "image", prompt_key: str = "text",
                 prompt_prefix: str | None = None, val_split: str | None = None, name: str | None = None,
                 data_files: str | list[str] | dict[str, str | list[str]] | None = None, revision: str | None = None):
        """
        Args:
            path: Hub id, or local folder of parquet/arrow files, an imagefolder, or a save_to_disk folder; or a
                builder name ("parquet", "imagefolder", ...) with `data_files`.
            split: Split to train on.
            image_key: Column holding the images.
            prompt_key: Column holding the prompts.
            prompt_prefix: Text put before every prompt (for example "minecraft ").
            val_split: Split scored for the held-out loss. Unset: rows are held out of `split` (see data.val_samples).
            name: The dataset's configuration (subset) name, as `load_dataset(name=...)`.
            data_files: Files (paths, globs or hf:// paths) to read, as `load_dataset(data_files=...)`.
            revision: Branch, tag or commit of a hub dataset.
        """
        self.path, self.split, self.image_key, self.prompt_key = path, split, image_key, prompt_key
        self.prompt_prefix, self.val_split = prompt_prefix, val_split
        self.name, self.data_files, self.revision = name, data_files, revision

    @cached_property
    def rows(self) -> datasets.Dataset:
        rows = open_hf_dataset(self.path, self.split, self.name, self.data_files, self.revision)
        missing = [f"data.source.{name}={key!r}" for name, key in (("image_key", self.image_key),
                                                                   ("prompt_key", self.prompt_key))
                   if key not in rows.column_names]
        if missing:
            raise DataSourceError(f"data.source.path={self.path!r}: {', '.join(missing)} not among its columns "
                                  f"{rows.column_names}")
        if len(rows) == 0:
            raise DataSourceError(f"data.source.path={self.path!r} split {self.split!r} has no rows")
        if not isinstance(rows.features[self.image_key], datasets.Image):
            raise DataSourceError(f"data.source.image_key={self.image_key!r}: the column holds "
                                  f"{rows.features[self.image_key]}, not images")
        return rows

    @cached_property
    def encoded_images(self) -> datasets.Dataset:
        """The image column, its images left encoded (bytes or path): decoded here, so a bad one can be named."""
        return self.rows.select_columns([self.image_key]).cast_column(self.image_key, datasets.Image(decode=False))

    @cached_property
    def prompts(self) -> list[object]:
        """The prompts, prefixed; a missing or non-text one is kept as is, for the scan to report."""
        prefix = self.prompt_prefix or ""
        return [prefix + prompt if isinstance(prompt, str) else prompt for prompt in self.rows[self.prompt_key]]

    @cached_property
    def identity(self) -> str:
        return (f"dataset:{self.path}:{self.name}:{self.split}:{self.rows._fingerprint}:{self.image_key}:"
                f"{self.prompt_key}:{self.prompt_prefix or ''}")

    def __len__(self) -> int:
        return len(self.rows)

    def captions(self, row: int) -> Captions:
        return Captions((self.prompts[row],), DATASET_COLUMN, prompt_problem(self.prompts[row]))

    def image_data(self, row: int) -> ImageData | None:
        return _image_data(self.encoded_images[row][self.image_key])

    def where(self, row: int) -> str:
        return f"data.source.path={self.path!r} split {self.split!r} row {row}"

    def split_rows(self, val_samples: int, seed: int, batch_size: int, world_size: int) -> Split:
        """With `val_split`, all of `split` trains and the first `val_samples` rows of `val_split` are scored."""
        if self.val_split is None:
            return super().split_rows(val_samples, seed, batch_size, world_size)
        held_out = HFDataset(**{**self.settings()["init_args"], "split": self.val_split, "val_split": None})
        return Split(self.usable_rows(), held_out, held_out.usable_rows()[:val_samples])


def open_hf_dataset(path: str, split: str, name: str | None = None, data_files=None,
                    revision: str | None = None) -> datasets.Dataset:
    """`load_from_disk` for a save_to_disk folder, else `load_dataset(path, name, data_files, revision, split)`."""
    local = Path(path).expanduser()
    if not local.exists() and not could_be_hub_id(path):
        raise DataSourceError(f"data.source.path={path!r}: no such folder ({local.absolute()})")
    try:
        if (local / "dataset_dict.json").exists() or (local / "state.json").exists():
            loaded = datasets.load_from_disk(str(local))
            return loaded[split] if isinstance(loaded, datasets.DatasetDict) else loaded
        return datasets.load_dataset(path, name=name, data_files=data_files, revision=revision, split=split)
    except (ConnectionError, FileNotFoundError, KeyError, ValueError) as error:
        where = ("local folder" if local.exists() else
                 f"Hugging Face Hub dataset, as no folder {str(local.absolute())!r} exists (is the hub reachable?)")
        raise DataSourceError(f"data.source.path={path!r} split {split!r}: could not open it as a {where}: {error}. "
                              "A local folder of parquet/arrow files, an imagefolder or a save_to_disk folder "
                              "works offline.") from error


def _image_data(stored: dict | None) -> ImageData | None:
    """An image as datasets stores it (`{"bytes", "path"}`): its bytes, else its file path; None when absent."""
    if stored is None:
        return None
    return stored["bytes"] if stored.get("bytes") is not None else stored.get("path")


def could_be_hub_id(path: str) -> bool:
    """Whether `path` has the shape of a Hub id (`name` or `owner/name`) rather than only of a file path."""
    return path.count("/") <= 1 and not path.startswith((".", "/", "~")) and "\\" not in path
