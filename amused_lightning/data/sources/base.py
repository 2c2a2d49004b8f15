"""The base of the sources read by row (`DataSource`). Each source holds its own settings, opens its data on first use
(parsing a config opens nothing), names what its contents depend on (`identity`, part of the cache key), finds its
bad rows before training (`bad_rows`, see `bad_data`), and splits the others into training and held-out rows."""

from __future__ import annotations

import inspect
import logging
from abc import ABC, abstractmethod
from functools import cached_property
from pathlib import Path
from typing import NamedTuple

import torch
from PIL import Image

from amused_lightning.data.bad_data import (
    BadImageError,
    ImageData,
    UnusableImage,
    image_problem,
    load_image,
    scan_progress,
)
from amused_lightning.data.captions import Captions, caption_index

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


def file_identity(path: Path) -> str:
    """A file's path, size and modification time: it changes whenever the file does (or comes, or goes)."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return f"{path.resolve()}:missing"
    return f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
