"""The base of the sources read as a stream, for datasets larger than the disk or the memory: a Hugging Face dataset
opened with `streaming=True` (`hf_stream.HFStream`), or WebDataset tar shards (`webdataset.WebDataset`).

A stream is a list of shards (files), each read from its start to its end; nothing is listed or indexed up front. How
the shards are dealt to processes and loader workers, shuffled and batched is `stream_dataset`'s business; this module
only opens the shards and turns their records into `Record`s, and keeps the few held-out records in memory
(`RecordList`, an ordinary `DataSource`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import NamedTuple

from amused_lightning.data.bad_data import ImageData, absent_image, image_problem
from amused_lightning.data.captions import Captions
from amused_lightning.data.sources.base import DataSource, source_settings

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
