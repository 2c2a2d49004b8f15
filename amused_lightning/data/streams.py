"""Training data read as a stream, for datasets larger than the disk or the memory: a Hugging Face dataset opened with
`streaming=True` (`HFStream`: hub id or local files), or WebDataset tar shards (`webdataset.WebDataset`).

A stream is a list of shards (files), each read from its start to its end; nothing is listed or indexed up front. How
the shards are dealt to processes and loader workers, shuffled and batched is `stream_dataset`'s business; this module
only opens the shards and turns their records into `Record`s, and keeps the few held-out records in memory
(`RecordList`, an ordinary `DataSource`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path
from typing import NamedTuple

import datasets
import fsspec

from amused_lightning.data.bad_data import ImageData, absent_image, image_problem, prompt_problem
from amused_lightning.data.captions import DATASET_COLUMN, Captions
from amused_lightning.data.sources import DataSource, DataSourceError, _image_data, could_be_hub_id, source_settings

RecordId = tuple[int, int]  # (shard, index of the record in its shard)
READ_BATCH = 16  # records read from a shard at a time


class Record(NamedTuple):
    """One sample as the stream holds it: its image still encoded, its captions, and where it is."""

    id: RecordId
    image: ImageData | None
    captions: Captions
    where: str

    def light_problem(self) -> str | None:
        """What is wrong with it that needs no image decoder: no caption, or no image bytes."""
        return self.captions.problem or absent_image(self.image)


class StreamSource(ABC):
    """Records read shard by shard, in the order of each shard."""

    settings = source_settings

    @abstractmethod
    def describe(self) -> str:
        """The source as its settings name it, for messages."""
        raise NotImplementedError

    @property
    @abstractmethod
    def shard_count(self) -> int:
        raise NotImplementedError

    @abstractmethod
    def records(self, shard: int) -> Iterator[Record]:
        """The records of `shard`, in its order."""
        raise NotImplementedError

    def held_out_stream(self) -> StreamSource | None:
        """A separate stream scored for the held-out loss (a validation split), or None: held out of this one."""
        return None


class HFStream(StreamSource):
    """A Hugging Face dataset read with `load_dataset(..., streaming=True)`: shards are its files, each read in order;
    memory holds a few records, whatever the dataset's size."""

    def __init__(self, path: str, split: str = "train", name: str | None = None,
                 data_files: str | list[str] | dict[str, str | list[str]] | None = None, revision: str | None = None,
                 image_key: str = "image", prompt_key: str = "text", prompt_prefix: str | None = None,
                 val_split: str | None = None):
        """
        Args:
            path: Hub id, or a builder name ("parquet", "webdataset", "imagefolder", ...) with `data_files`, or a
                local folder of data files.
            split: Split to train on.
            name: The dataset's configuration (subset) name, as `load_dataset(name=...)`.
            data_files: Files (paths, globs or hf:// paths) to read, as `load_dataset(data_files=...)`.
            revision: Branch, tag or commit of a hub dataset.
            image_key: Column holding the images; several columns separated by ";" (WebDataset extensions such as
                "jpg;png") take the first one a record has.
            prompt_key: Column holding the prompts.
            prompt_prefix: Text put before every prompt (for example "minecraft ").
            val_split: Split scored for the held-out loss (its first data.val_samples records). Unset: the first
                records of the first shard are held out of training (see data.val_samples).
        """
        self.path, self.split, self.name, self.data_files, self.revision = path, split, name, data_files, revision
        self.image_key, self.prompt_key, self.prompt_prefix, self.val_split = (image_key, prompt_key, prompt_prefix,
                                                                             val_split)

    @property
    def image_keys(self) -> list[str]:
        return [key.strip() for key in self.image_key.split(";") if key.strip()]

    def describe(self) -> str:
        return f"data.source.path={self.path!r} split {self.split!r}"

    @cached_property
    def stream(self) -> datasets.IterableDataset:
        """The opened stream, image columns left encoded (decoded by us, so a bad image can be named)."""
        stream = open_stream(self.path, self.split, self.name, self.data_files, self.revision, self.describe())
        columns = stream.column_names
        if columns is not None:  # some builders only know their columns once a record is read (then untyped)
            check_columns(self, columns)
            for key in set(self.image_keys) & set(columns):
                stream = stream.cast_column(key, datasets.Image(decode=False))
        return stream

    @property
    def shard_count(self) -> int:
        return self.stream.num_shards

    def records(self, shard: int) -> Iterator[Record]:
        part = self.stream.shard(num_shards=self.shard_count, index=shard, contiguous=True)
        index = 0
        # `iter`, not `for row in part`: in a loader worker datasets would split the shard again among the workers.
        for columns in part.iter(batch_size=READ_BATCH):
            for row in (dict(zip(columns, values)) for values in zip(*columns.values())):
                if index == 0 and self.stream.column_names is None:
                    check_columns(self, list(row))
                yield Record((shard, index), self._image(row), self._captions(row), self._where(row, shard, index))
                index += 1

    def _image(self, row: dict) -> ImageData | None:
        stored = next((row[key] for key in self.image_keys if row.get(key) is not None), None)
        image = _image_data(stored) if isinstance(stored, dict) else stored
        if isinstance(image, str) and "://" in image:  # a hub dataset's image, by its URL: read it now
            with fsspec.open(image, "rb") as file:
                return file.read()
        return image

    def _captions(self, row: dict) -> Captions:
        prompt = row.get(self.prompt_key)
        if isinstance(prompt, bytes):
            prompt = prompt.decode("utf-8", errors="replace")
        problem = prompt_problem(prompt)
        if problem:
            return Captions((prompt,), DATASET_COLUMN, problem)
        return Captions(((self.prompt_prefix or "") + prompt,), DATASET_COLUMN)

    def _where(self, row: dict, shard: int, index: int) -> str:
        file, key = row.get("__url__"), row.get("__key__")
        return (f"{self.describe()} shard {shard}{f' ({file})' if file else ''} record {index}"
                f"{f' (key {key!r})' if key else ''}")

    def held_out_stream(self) -> StreamSource | None:
        if self.val_split is None:
            return None
        return type(self)(**{**source_settings(self)["init_args"], "split": self.val_split, "val_split": None})


def open_stream(path: str, split: str, name: str | None, data_files, revision: str | None,
                shown: str) -> datasets.IterableDataset:
    """`load_dataset(..., streaming=True)`; a DataSourceError that starts with `shown` (the source as its settings
    name it) and says what to do when it cannot be opened."""
    local = Path(path).expanduser()
    if not local.exists() and not could_be_hub_id(path):
        raise DataSourceError(f"{shown}: no such folder ({local.absolute()})")
    try:
        stream = datasets.load_dataset(path, name=name, data_files=data_files, revision=revision, split=split,
                                       streaming=True)
    except (OSError, KeyError, ValueError, IndexError) as error:  # OSError: the Hub's HTTP errors and missing files
        raise DataSourceError(f"{shown}: could not open it as a stream: {error}. Local files (parquet, arrow, tar "
                              "shards) work offline; a hub id needs the network.") from error
    if not isinstance(stream, datasets.IterableDataset):
        raise DataSourceError(f"{shown}: load_dataset gave a {type(stream).__name__}, not a stream")
    return stream


def check_columns(source: HFStream, columns: list[str]) -> None:
    """An error naming the setting when the image or prompt column is not among the stream's columns."""
    missing = [f"image_key={source.image_key!r}"] if not set(source.image_keys) & set(columns) else []
    missing += [f"prompt_key={source.prompt_key!r}"] if source.prompt_key not in columns else []
    if missing:
        raise DataSourceError(f"{source.describe()}: data.source.{' and data.source.'.join(missing)} not among its "
                              f"columns {sorted(columns)}")


class RecordList(DataSource):
    """A few records of a stream kept in memory (the held-out ones, or the ones `check-data` looks at), as a
    `DataSource`."""

    def __init__(self, records: list[Record], identity: str):
        self.kept, self.identity = records, identity

    def settings(self) -> dict:
        return {"records": len(self.kept), "identity": self.identity}

    def __len__(self) -> int:
        return len(self.kept)

    def captions(self, row: int) -> Captions:
        return self.kept[row].captions

    def image_data(self, row: int) -> ImageData | None:
        return self.kept[row].image

    def where(self, row: int) -> str:
        return self.kept[row].where


def first_records(source: StreamSource, count: int) -> Iterator[Record]:
    """Up to `count` records from the start of the stream, shard after shard."""
    taken = 0
    for shard in range(source.shard_count):
        for record in source.records(shard):
            if taken == count:
                return
            yield record
            taken += 1


def usable(record: Record) -> bool:
    """Whether the record passes the checks of a scan (captions, and the image's header)."""
    return record.light_problem() is None and image_problem(record.image) is None


def held_out_records(source: StreamSource, val_samples: int) -> tuple[list[Record], frozenset[RecordId]]:
    """The records the held-out loss scores, and those of them that training leaves out.

    With a separate held-out stream: its first `val_samples` usable records, none left out. Otherwise the first usable
    records of the stream, at most a tenth of the usable ones among the first 10 x `val_samples` records (as a row
    dataset holds out at most a tenth); when that is none, the first `val_samples` are scored without being left
    out."""
    separate = source.held_out_stream()
    kept, found = [], 0
    for record in first_records(separate or source, 10 * val_samples):
        if usable(record):
            found += 1
            if len(kept) < val_samples:
                kept.append(record)
    count = min(val_samples, found // 10)
    if separate is not None or count == 0:
        return kept, frozenset()
    return kept[:count], frozenset(r.id for r in kept[:count])
