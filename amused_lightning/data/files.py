"""Training data from image files: a folder of images (`ImageFolder`), or one image (`SingleImage`), each captioned
by a caption file beside it, metadata, or its file name (see `captions`)."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

from PIL import Image

from amused_lightning.data.bad_data import ImageData, UnusableImage, load_image
from amused_lightning.data.captions import (
    FILE_NAME,
    Captions,
    file_captions,
    folder_metadata,
    metadata_files,
    normalised,
)
from amused_lightning.data.sources import DataSource, DataSourceError, Split

IMAGE_SUFFIXES = frozenset(suffix for suffix, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)
# A single image is repeated to fill this many batches per epoch, so loaders are not restarted every step.
SINGLE_IMAGE_BATCHES_PER_EPOCH = 100


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
        if not caption_extension.startswith(".") or len(caption_extension) < 2:
            raise DataSourceError(f"data.source.caption_extension={caption_extension!r} must be a suffix such as "
                                  "'.txt' or '.caption'")
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
        return f"image_dir:{self.caption_column}:" + ";".join(_file_identity(path) for path in files)

    def __len__(self) -> int:
        return len(self.paths)

    def captions(self, row: int) -> Captions:
        return self.caption_table[row]

    def image_data(self, row: int) -> ImageData | None:
        return self.paths[row]

    def where(self, row: int) -> str:
        return f"image file {str(self.paths[row])!r}"


class SingleImage(DataSource):
    """One image (StyleDrop), captioned by a `.txt` file beside it, else its file name without the suffix, a fresh
    random crop at each draw."""

    def __init__(self, path: str):
        """
        Args:
            path: The image file.
        """
        self.path = path

    @cached_property
    def decoded_image(self) -> Image.Image:
        """The image, decoded; an error whatever data.on_bad_image says when it cannot be (nothing would train)."""
        path = Path(self.path).expanduser()
        if not path.is_file():
            raise DataSourceError(f"data.source.path={self.path!r} is not a file")
        try:
            return load_image(path)
        except UnusableImage as error:
            raise DataSourceError(f"data.source.path={self.path!r} is not a readable image: {error}") from error

    @cached_property
    def caption_set(self) -> Captions:
        """Its captions; an error when its caption file gives none (nothing would train)."""
        path = Path(self.path).expanduser()
        captions = file_captions(path, ".txt") or Captions((path.stem,), FILE_NAME)
        if captions.problem:
            raise DataSourceError(f"data.source.path={self.path!r}: {captions.problem}")
        return captions

    @cached_property
    def identity(self) -> str:
        self.decoded_image  # noqa: B018 (checks the file first)
        path = Path(self.path).expanduser()
        return f"image:{_file_identity(path)};{_file_identity(path.with_suffix('.txt'))}"

    def __len__(self) -> int:
        return 1

    def captions(self, row: int) -> Captions:
        return self.caption_set

    def image_data(self, row: int) -> ImageData | None:
        return Path(self.path).expanduser()

    def where(self, row: int) -> str:
        return f"image file {self.path!r}"

    def problem(self, row: int) -> str | None:
        self.decoded_image, self.caption_set  # noqa: B018 (raise when unusable)
        return None

    def image(self, row: int) -> Image.Image:
        return self.decoded_image

    def split_rows(self, val_samples: int, seed: int, batch_size: int, world_size: int) -> Split:
        """The image repeated to fill `SINGLE_IMAGE_BATCHES_PER_EPOCH` batches on every device, and scored itself."""
        self.problem(0)
        return Split([0] * (batch_size * world_size * SINGLE_IMAGE_BATCHES_PER_EPOCH), self, [0])


def _hidden(relative: Path) -> bool:
    """Whether a path below the folder is hidden or inside a hidden folder (.git, .ipynb_checkpoints, ...)."""
    return any(part.startswith(".") for part in relative.parts)


def _file_identity(path: Path) -> str:
    """A file's path, size and modification time: it changes whenever the file does (or comes, or goes)."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return f"{path.resolve()}:missing"
    return f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
