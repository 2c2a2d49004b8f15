"""WebDataset tar shards as a stream (`data.source: WebDataset`), the format open-muse trained on: a sample is the
files of one key in a tar (`<key>.jpg`, `<key>.txt`, ...), read as the tar streams by, from local files or anything
fsspec opens (`hf://`, `s3://`, ...). Read by our own small tar reader rather than datasets' webdataset builder, which
takes its columns from the first five samples of the first shard: a later sample with another image extension would
lose its image, and a first sample without a caption would stop the whole stream.
"""

from __future__ import annotations

import glob
import logging
import os
import posixpath
import re
import tarfile
from collections.abc import Iterator
from functools import cached_property

import fsspec

from amused_lightning.data.captions import DATASET_COLUMN, Captions, caption_lines
from amused_lightning.data.sources.base import DataSourceError
from amused_lightning.data.sources.hub import could_be_hub_id
from amused_lightning.data.sources.stream import Record, StreamSource

log = logging.getLogger(__name__)


class WebDataset(StreamSource):
    """WebDataset tar shards (the format open-muse trained on): a sample is the files of one key in a tar
    (`<key>.jpg`, `<key>.txt`, ...), read in order as the tar streams by, local or remote (fsspec: `hf://`, `s3://`
    ...); each tar is a shard."""

    def __init__(self, shards: str | list[str], image_key: str = "jpg;jpeg;png;webp", prompt_key: str = "txt",
                 prompt_prefix: str | None = None, val_shards: str | list[str] | None = None):
        """
        Args:
            shards: Tar files: paths, globs ("data/shard-*.tar"), brace ranges ("data/{00000..00099}.tar"), URLs
                fsspec opens ("hf://datasets/<id>/*.tar"), or a hub dataset id (all its .tar files).
            image_key: Extensions of the image files, separated by ";": the first one a sample has is its image.
            prompt_key: Extension of the caption file; one caption per line (a draw trains on one line).
            prompt_prefix: Text put before every caption.
            val_shards: Tar files scored for the held-out loss. Unset: the first records of the first shard are held
                out of training.
        """
        self.shards, self.image_key, self.prompt_key = shards, image_key, prompt_key
        self.prompt_prefix, self.val_shards = prompt_prefix, val_shards

    def describe(self) -> str:
        return f"data.source.shards={self.shards!r}"

    @cached_property
    def files(self) -> list[str]:
        """Every shard's path or URL, each pattern's matches in sorted order."""
        patterns = [self.shards] if isinstance(self.shards, str) else list(self.shards)
        expanded = [each for pattern in patterns for each in expand_braces(pattern)]
        return [file for pattern in expanded for file in self._matches(pattern)] or self._no_match(str(self.shards))

    def _matches(self, pattern: str) -> list[str]:
        local = os.path.expanduser(pattern)
        if "://" not in pattern:
            if glob.glob(local) or not looks_like_hub_id(pattern):
                return sorted(glob.glob(local)) or self._no_match(pattern)
            pattern = f"hf://datasets/{pattern}/**/*.tar"  # a hub id: every tar of the dataset
        try:
            filesystem, path = fsspec.core.url_to_fs(pattern)
            found = sorted(filesystem.glob(path)) if glob.has_magic(path) else [path]
        except Exception as error:  # noqa: BLE001 (each filesystem raises its own errors: say which shards failed)
            raise DataSourceError(f"{self.describe()}: could not list {pattern!r}: {error}. Local tar files work "
                                  "offline; hf:// and hub ids need the network.") from error
        protocol = filesystem.protocol if isinstance(filesystem.protocol, str) else filesystem.protocol[0]
        return [f"{protocol}://{path}" for path in found] or self._no_match(pattern)

    def _no_match(self, pattern: str) -> list[str]:
        raise DataSourceError(f"{self.describe()}: {pattern!r} matches no file")

    @property
    def shard_count(self) -> int:
        return len(self.files)

    @property
    def image_keys(self) -> list[str]:
        return [key.strip().lower() for key in self.image_key.split(";") if key.strip()]

    def records(self, shard: int) -> Iterator[Record]:
        wanted = {*self.image_keys, self.prompt_key.lower()}
        for index, (key, files) in enumerate(tar_samples(self.files[shard], wanted)):
            image = next((files[ext] for ext in self.image_keys if ext in files), None)
            where = f"{self.describe()} shard {shard} ({self.files[shard]}) record {index} (key {key!r})"
            yield Record((shard, index), image, self._captions(files.get(self.prompt_key.lower())), where)

    def _captions(self, data: bytes | None) -> Captions:
        if data is None:
            return Captions((), DATASET_COLUMN, f"no .{self.prompt_key} file (no prompt)")
        try:
            lines = caption_lines(data.decode("utf-8-sig"))
        except UnicodeDecodeError:
            return Captions((), DATASET_COLUMN, f"the .{self.prompt_key} file is not UTF-8 text")
        if not lines:
            return Captions((), DATASET_COLUMN, f"empty .{self.prompt_key} file")
        return Captions(tuple((self.prompt_prefix or "") + line for line in lines), DATASET_COLUMN)

    def held_out_stream(self) -> StreamSource | None:
        if self.val_shards is None:
            return None
        return WebDataset(self.val_shards, self.image_key, self.prompt_key, self.prompt_prefix)


BRACES = re.compile(r"\{([^{}]*)\}")


def expand_braces(pattern: str) -> list[str]:
    """WebDataset's shard notation: `{000..099}` (a range, zero-padded as written) and `{a,b}` expanded, in order."""
    found = BRACES.search(pattern)
    if found is None:
        return [pattern]
    inside, head, tail = found.group(1), pattern[:found.start()], pattern[found.end():]
    bounds = re.fullmatch(r"(\d+)\.\.(\d+)", inside)
    if bounds:
        first, last = bounds.groups()
        choices = [str(n).zfill(len(first)) for n in range(int(first), int(last) + 1)]
    else:
        choices = inside.split(",")
    return [expanded for choice in choices for expanded in expand_braces(head + choice + tail)]


def looks_like_hub_id(pattern: str) -> bool:
    """Whether a shard pattern that matches no local file names a hub dataset (`owner/name`) rather than files."""
    return could_be_hub_id(pattern) and not glob.has_magic(pattern) and not re.search(r"\.tar(\.\w+)?$", pattern)


def tar_samples(url: str, wanted: set[str]) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) of each sample of a tar, as it streams by (compressed tars too); only the
    extensions in `wanted` are read. A tar that cannot be opened, or is cut short, is passed over with a warning (as
    a bad record is: the stream goes on)."""
    key, files = None, {}
    try:
        with fsspec.open(url, "rb") as stream, tarfile.open(fileobj=stream, mode="r|*") as tar:
            for member in tar:
                tar.members = []  # tarfile keeps every member's header it has read: a shard's worth of them
                folder, name = posixpath.split(member.name)
                if not member.isfile() or name.startswith(".") or "." not in name:
                    continue
                stem, extension = name.split(".", 1)
                if posixpath.join(folder, stem) != key:
                    if key is not None:
                        yield key, files
                    key, files = posixpath.join(folder, stem), {}
                if extension.lower() in wanted:
                    files[extension.lower()] = tar.extractfile(member).read()
    except (OSError, tarfile.TarError, EOFError) as error:
        log.warning("shard %s cannot be read on (%s: %s): the rest of it is skipped", url, type(error).__name__, error)
    if key is not None:
        yield key, files
