"""Training batches from a `StreamSource`, with bounded memory, each reader its own share, and an exact resume.

The readers are every (process, loader worker) pair. With at least as many shards as readers, reader k reads shards
k, k + readers, ...; with fewer, every reader reads every shard and keeps every readers-th record. A reader goes
through its shards in an order shuffled anew each pass (from the seed and the pass), through a shuffle buffer of
`shuffle_buffer` records, and cuts batches of one crop shape (the square, or one aspect-ratio bucket) out of what comes
out; it never stops (a pass over its shards is followed by the next), so training ends at trainer.max_steps.

Everything a reader yields follows from (seed, its place, the records), so a resumed reader replays what it had
yielded without decoding a single image (records are read and checked, headers only) and goes on where it was: the
batches come out in the same order as in an unbroken run, provided the number of processes and of loader workers is
the same. A record with no caption or no image is passed over before it takes a place in a batch; an image that only
its decoder finds broken is replaced by another image of its batch (so that the batches, hence a resume, do not
depend on decoding).
"""

from __future__ import annotations

import itertools
import logging
import random
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

import torch
from torch.utils.data import IterableDataset, default_collate, get_worker_info

from amused_lightning.data.bad_data import BadImageError, UnusableImage, draw, load_image
from amused_lightning.data.batch import INPUT_IDS, POSITION
from amused_lightning.data.captions import caption_index
from amused_lightning.data.datasets import REPLACED
from amused_lightning.data.sources.base import DataSourceError
from amused_lightning.data.sources.stream import Record, RecordId, RecordList, StreamSource, held_out_records
from amused_lightning.data.transforms import preprocess_image
from amused_lightning.model.encoding import tokenize_prompts
from amused_lightning.seeding import derive_seed

log = logging.getLogger(__name__)
Size = tuple[int, int]  # (width, height) of a crop


class Readers(NamedTuple):
    """How many processes and loader workers read the stream, and which one this is."""

    rank: int
    world_size: int
    worker: int
    workers: int

    @property
    def count(self) -> int:
        return self.world_size * self.workers

    @property
    def index(self) -> int:
        return self.rank * self.workers + self.worker


class LightBatch(NamedTuple):
    """A batch before decoding: its records (all of one crop size), and the records passed over before it."""

    records: list[Record]
    size: Size
    passed_over: int


def reader_shards(shard_count: int, readers: Readers) -> tuple[list[int], bool]:
    """The shards this reader reads, and whether it must keep only every readers-th record of them (fewer shards
    than readers)."""
    if shard_count >= readers.count:
        return list(range(readers.index, shard_count, readers.count)), False
    return list(range(shard_count)), True


def shuffled_pass(shards: list[int], seed: int, reader: int, pass_number: int) -> list[int]:
    """The order a reader goes through its shards in one pass."""
    order = torch.randperm(len(shards), generator=torch.Generator().manual_seed(derive_seed(seed, reader, pass_number)))
    return [shards[i] for i in order.tolist()]


def reader_pass(source: StreamSource, readers: Readers, seed: int, pass_number: int,
                excluded: frozenset[RecordId]) -> Iterator[Record]:
    """This reader's records in one pass over its shards, those in `excluded` left out."""
    shards, keep_every = reader_shards(source.shard_count, readers)
    # Where every reader reads every shard, all go in one order, so that their shares do not overlap.
    order = shuffled_pass(shards, seed, 0 if keep_every else readers.index, pass_number)
    records = (record for shard in order for record in source.records(shard))
    if keep_every:
        records = itertools.islice(records, readers.index, None, readers.count)
    return (record for record in records if record.id not in excluded)


def reader_records(source: StreamSource, readers: Readers, seed: int,
                   excluded: frozenset[RecordId]) -> Iterator[Record]:
    """This reader's records, pass after pass, for ever; an error when a whole pass yields none."""
    for pass_number in itertools.count():
        found = False
        for record in reader_pass(source, readers, seed, pass_number, excluded):
            found = found or record.light_problem() is None  # one that can take a place in a batch
            yield record
        if not found:
            shards = reader_shards(source.shard_count, readers)[0]
            raise BadImageError(f"{source.describe()}: reader {readers.index} of {readers.count} (processes x "
                                f"data.num_workers) found no training record in its shards {shards}")


def buffer_shuffled(records: Iterable[Record], size: int, rng: random.Random) -> Iterator[Record]:
    """`records` in a random order, at most `size` of them held at a time."""
    buffer: list[Record] = []
    for record in records:
        if len(buffer) < size:
            buffer.append(record)
            continue
        pick = rng.randrange(size)
        yield buffer[pick]
        buffer[pick] = record
    rng.shuffle(buffer)
    yield from buffer


def light_batches(records: Iterable[Record], batch_size: int, crop_size: Callable[[Record], Size],
                  on_bad_record: Callable[[Record, str], None]) -> Iterator[LightBatch]:
    """Batches of `batch_size` records of one crop size each, in the order they fill up; records with no caption
    or no image are passed over (handed to `on_bad_record`) and counted in the next batch."""
    pending: dict[Size, list[Record]] = {}
    passed_over = 0
    for record in records:
        problem = record.light_problem()
        if problem:
            on_bad_record(record, problem)
            passed_over += 1
            continue
        size = crop_size(record)
        group = pending.setdefault(size, [])
        group.append(record)
        if len(group) == batch_size:
            del pending[size]
            yield LightBatch(group, size, passed_over)
            passed_over = 0


class StreamDataset(IterableDataset):
    """Collated training batches (use with `DataLoader(batch_size=None)`); each sample's POSITION is its place among
    this process's samples, so that the DataModule's resume point counts what was trained on."""

    def __init__(self, source: StreamSource, excluded: frozenset[RecordId], tokenizer,
                 crop_size: Callable[[Record], Size], batch_size: int, seed: int, rank: int, world_size: int,
                 shuffle_buffer: int, transform: dict[str, Any], on_bad_image: str):
        self.source, self.excluded, self.tokenizer, self.crop_size = source, excluded, tokenizer, crop_size
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.shuffle_buffer, self.transform, self.on_bad_image = shuffle_buffer, transform, on_bad_image
        self.start = 0  # batches of this process trained on before (a resume)

    def resume_at(self, batches: int) -> None:
        """Start after this process's first `batches` batches."""
        self.start = batches

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        # A loader takes its workers' batches in turn from worker 0: after `start` batches, worker 0 plays the part
        # of the reader whose turn it is.
        role = (worker + self.start) % workers
        readers = Readers(self.rank, self.world_size, role, workers)
        done = len(range(role, self.start, workers))
        for count, batch in enumerate(itertools.islice(self._light_batches(readers), done, None)):
            yield self._collated(batch, self.start + worker + count * workers)

    def _light_batches(self, readers: Readers) -> Iterator[LightBatch]:
        rng = random.Random(derive_seed(self.seed, readers.index, readers.count))
        records = buffer_shuffled(reader_records(self.source, readers, self.seed, self.excluded),
                                  self.shuffle_buffer, rng)
        return light_batches(records, self.batch_size, self.crop_size, self._bad_record)

    def _bad_record(self, record: Record, problem: str) -> None:
        if self.on_bad_image == "error":
            raise BadImageError(f"{record.where}: {problem}")
        log.warning("skipping %s: %s (data.on_bad_image=skip)", record.where, problem)

    def _collated(self, batch: LightBatch, number: int) -> dict[str, Any]:
        """The batch decoded, cropped and tokenized; `number` is its place among this process's batches."""
        decoded, replaced = self._decoded(batch.records)
        samples = []
        for i, (record, image) in enumerate(decoded):
            seed = derive_seed(self.seed, self.rank, number, i)
            sample = preprocess_image(image, batch.size, random.Random(seed), **self.transform)
            lines = record.captions.lines
            sample[INPUT_IDS] = tokenize_prompts(self.tokenizer, [lines[caption_index(len(lines), seed, 0)]])[0]
            sample[POSITION] = number * self.batch_size + i
            sample[REPLACED] = (batch.passed_over + replaced) if i == 0 else 0
            samples.append(sample)
        return default_collate(samples)

    def _decoded(self, records: list[Record]) -> tuple[list[tuple[Record, Any]], int]:
        """Each record with its decoded image; under "skip" one whose image fails to decode is replaced by the next
        record of the batch that decodes (`bad_data.draw`, as a row dataset replaces a row). Returns them and how many
        were replaced."""
        def load(i: int) -> tuple[Record, Any]:
            try:
                return records[i], load_image(records[i].image)
            except UnusableImage as error:
                raise BadImageError(f"{records[i].where}: {error}") from error

        known_bad: set[int] = set()  # each broken image decoded and warned of once
        drawn = [draw(load, i, range(len(records)), self.on_bad_image, known_bad) for i in range(len(records))]
        return [pair for pair, _ in drawn], sum(offset > 0 for _, offset in drawn)


def stream_training_data(source: StreamSource, settings, tokenizer, crop_size: Callable[[Record], Size], rank: int,
                         world_size: int) -> tuple[StreamDataset, RecordList]:
    """The training batches of `source` for process `rank`, and the held-out records (kept in memory), from the
    DataModule's `settings`."""
    held_out, excluded = held_out_records(source, settings.val_samples)
    if not held_out:
        raise DataSourceError(f"{source.describe()}: no usable record found for the held-out loss")
    transform = dict(center_crop=settings.center_crop, random_flip=settings.random_flip,
                     aesthetic_score=settings.aesthetic_score)
    training = StreamDataset(source, excluded, tokenizer, crop_size, settings.batch_size, settings.seed, rank,
                             world_size, settings.shuffle_buffer, transform, settings.on_bad_image)
    return training, RecordList(held_out, f"{source.describe()} held out")


class StreamLayout(NamedTuple):
    """What a stream's order depends on besides the seed: processes, loader workers each, samples per batch."""

    processes: int
    workers: int
    batch_size: int

    @classmethod
    def of(cls, world_size: int, num_workers: int, batch_size: int) -> StreamLayout:
        return cls(world_size, max(1, num_workers), batch_size)


def check_same_layout(saved: dict | None, now: StreamLayout) -> None:
    """A stream resumes exactly only when read by as many processes and workers, in batches as large, as in the
    checkpoint's run."""
    if saved is not None and StreamLayout(**saved) != now:
        raise DataSourceError(
            f"the checkpoint's stream was read by {saved['processes']} processes x {saved['workers']} workers in "
            f"batches of {saved['batch_size']}, this run reads it by {now.processes} x {now.workers} in batches of "
            f"{now.batch_size}: a stream's order depends on them, so resume with the same trainer.devices, "
            "trainer.num_nodes, data.num_workers and data.batch_size")
