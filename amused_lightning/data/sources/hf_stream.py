"""`HFStream`: a Hugging Face dataset read with `load_dataset(..., streaming=True)`, shard by shard."""

from __future__ import annotations

from collections.abc import Iterator
from functools import cached_property
from pathlib import Path

import datasets
import fsspec

from amused_lightning.data.bad_data import ImageData, prompt_problem
from amused_lightning.data.captions import DATASET_COLUMN, Captions
from amused_lightning.data.sources.base import DataSourceError
from amused_lightning.data.sources.hub import HFSource, could_be_hub_id, stored_image
from amused_lightning.data.sources.stream import READ_BATCH, Record, StreamSource


class HFStream(HFSource, StreamSource):
    """A Hugging Face dataset read with `load_dataset(..., streaming=True)`: shards are its files, each read in order;
    memory holds a few records, whatever the dataset's size."""

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
        image = stored_image(stored) if isinstance(stored, dict) else stored
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
        return self.of_split(self.val_split)


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
