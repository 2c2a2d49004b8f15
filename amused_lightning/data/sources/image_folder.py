"""`ImageFolder`: every image file in a folder and its subfolders, captioned by a caption file beside it, metadata,
or its file name (see `captions`)."""

from __future__ import annotations

import logging
from functools import cached_property
from pathlib import Path

from PIL import Image

from amused_lightning.data.bad_data import ImageData
from amused_lightning.data.captions import (
    FILE_NAME,
    Captions,
    file_captions,
    folder_metadata,
    metadata_files,
    normalised,
)
from amused_lightning.data.sources.base import DataSource, DataSourceError, file_identity

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = frozenset(suffix for suffix, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)


class ImageFolder(DataSource):
    """Every image file (by suffix) in a folder and its subfolders, hidden ones excepted, captioned by a caption file
    beside it, else a metadata.jsonl/metadata.csv, else its file name; other files are ignored, unreadable images
    and unusable captions are bad rows (see data.on_bad_image)."""

    def __init__(self, path: str, caption_column: str | None = None, caption_extension: str = ".txt"):
        """
        Args:
            path: Folder of images, searched with its subfolders.
            caption_column: Column of metadata.jsonl/metadata.csv holding the captions (default: the first of
                text, caption, prompt it has).
            caption_extension: Suffix of the caption file beside each image (`cat.png` -> `cat.txt`), one caption
                per line; a draw trains on one line.
        """
        caption_extension = caption_suffix(caption_extension)
        self.path, self.caption_column, self.caption_extension = path, caption_column, caption_extension

    @cached_property
    def files(self) -> list[Path]:
        """Every file under the folder, hidden files and folders left out, in a fixed order."""
        root = normalised(Path(self.path).expanduser())
        if not root.is_dir():
            raise DataSourceError(f"data.source.path={self.path!r} is not a folder")
        found = (path for path in root.rglob("*") if not _hidden(path.relative_to(root)) and path.is_file())
        return sorted((normalised(path) for path in found), key=lambda path: path.relative_to(root).as_posix())

    @cached_property
    def paths(self) -> list[Path]:
        paths = [path for path in self.files if path.suffix.lower() in IMAGE_SUFFIXES]
        if not paths:
            raise DataSourceError(f"data.source.path={self.path!r} holds no readable image (0 image files found, "
                                  "subfolders included)")
        return paths

    @cached_property
    def metadata_files(self) -> list[Path]:
        return metadata_files(self.files)

    @cached_property
    def caption_table(self) -> list[Captions]:
        """Each row's captions: from its caption file, else metadata, else its file name."""
        metadata = folder_metadata(self.metadata_files, self.paths, self.caption_column)
        return [file_captions(path, self.caption_extension) or metadata.get(path) or
                Captions((path.stem,), FILE_NAME) for path in self.paths]

    @cached_property
    def identity(self) -> str:
        files = [*self.paths, *(path.with_suffix(self.caption_extension) for path in self.paths), *self.metadata_files]
        return f"image_dir:{self.caption_column}:" + ";".join(file_identity(path) for path in files)

    def __len__(self) -> int:
        return len(self.paths)

    def captions(self, row: int) -> Captions:
        return self.caption_table[row]

    def image_data(self, row: int) -> ImageData | None:
        return self.paths[row]

    def where(self, row: int) -> str:
        return f"image file {str(self.paths[row])!r}"


def caption_suffix(extension: str) -> str:
    """A caption file suffix as given, or with its dot put in front (`caption` -> `.caption`, with a note)."""
    if extension.strip(".") == "" or "/" in extension:
        raise DataSourceError(f"data.source.caption_extension={extension!r} must be a file suffix such as '.txt' or "
                              "'.caption'")
    if not extension.startswith("."):
        log.info("data.source.caption_extension=%r read as %r", extension, "." + extension)
    return extension if extension.startswith(".") else "." + extension


def _hidden(relative: Path) -> bool:
    """Whether a path below the folder is hidden or inside a hidden folder (.git, .ipynb_checkpoints, ...)."""
    return any(part.startswith(".") for part in relative.parts)
