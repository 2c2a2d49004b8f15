"""The three kinds of training data: a Hugging Face dataset, a folder of images, a single image."""

from __future__ import annotations

import logging
from pathlib import Path

import datasets
from PIL import Image, UnidentifiedImageError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset(suffix for suffix, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)


class DataSourceError(ValueError):
    """The configured training data cannot be used."""


class HFDatasetSource:
    """Rows of a Hugging Face dataset (hub id, parquet/arrow/image folder, or save_to_disk folder)."""

    def __init__(self, path: str, split: str, image_key: str, prompt_key: str, prompt_prefix: str | None):
        self.rows = open_hf_dataset(path, split)
        missing = [f"data.{name}={key!r}" for name, key in (("image_key", image_key), ("prompt_key", prompt_key))
                   if key not in self.rows.column_names]
        if missing:
            raise DataSourceError(f"data.dataset={path!r}: {', '.join(missing)} not among its columns "
                                  f"{self.rows.column_names}")
        if len(self.rows) == 0:
            raise DataSourceError(f"data.dataset={path!r} split {split!r} has no rows")
        self.image_key, self.prompt_key, self.prefix = image_key, prompt_key, prompt_prefix or ""
        self.prompts = [self.prefix + prompt for prompt in self.rows[prompt_key]]
        self.identity = f"dataset:{path}:{split}:{self.rows._fingerprint}:{image_key}:{prompt_key}:{self.prefix}"

    def __len__(self) -> int:
        return len(self.rows)

    def prompt(self, index: int) -> str:
        return self.prompts[index]

    def __getitem__(self, index: int) -> tuple[Image.Image, str]:
        row = self.rows[index]
        image = row[self.image_key]
        if not isinstance(image, Image.Image):
            raise DataSourceError(f"data.image_key={self.image_key!r}: row {index} holds {type(image).__name__}, "
                                  "not an image")
        return image, self.prompts[index]


def open_hf_dataset(path: str, split: str) -> datasets.Dataset:
    """`load_from_disk` for a save_to_disk folder, else `load_dataset(path, split=split)`."""
    local = Path(path).expanduser()
    try:
        if (local / "dataset_dict.json").exists() or (local / "state.json").exists():
            loaded = datasets.load_from_disk(str(local))
            return loaded[split] if isinstance(loaded, datasets.DatasetDict) else loaded
        return datasets.load_dataset(path, split=split)
    except (ConnectionError, FileNotFoundError, KeyError, ValueError) as error:
        where = "local folder" if local.exists() else "Hugging Face Hub dataset (is the hub reachable?)"
        raise DataSourceError(f"data.dataset={path!r} split {split!r}: could not open it as a {where}: {error}. "
                              "A local folder of parquet/arrow files, an imagefolder or a save_to_disk folder "
                              "works offline.") from error


class ImageFolderSource:
    """Every readable image in a folder, prompted by its file name without the suffix."""

    def __init__(self, folder: str):
        root = Path(folder).expanduser()
        if not root.is_dir():
            raise DataSourceError(f"data.image_dir={folder!r} is not a folder")
        candidates = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        self.paths = [path for path in candidates if _is_readable(path)]
        if not self.paths:
            raise DataSourceError(f"data.image_dir={folder!r} holds no readable image "
                                  f"({len(candidates)} image files found)")
        self.identity = "image_dir:" + ";".join(_file_identity(path) for path in self.paths)

    def __len__(self) -> int:
        return len(self.paths)

    def prompt(self, index: int) -> str:
        return self.paths[index].stem

    def __getitem__(self, index: int) -> tuple[Image.Image, str]:
        path = self.paths[index]
        return Image.open(path), path.stem


class SingleImageSource:
    """One image, prompted by its file name without the suffix."""

    def __init__(self, image: str):
        path = Path(image).expanduser()
        if not path.is_file():
            raise DataSourceError(f"data.image={image!r} is not a file")
        if not _is_readable(path):
            raise DataSourceError(f"data.image={image!r} is not a readable image")
        self.image, self.identity = Image.open(path), "image:" + _file_identity(path)
        self.image.load()

    def __len__(self) -> int:
        return 1

    def prompt(self, index: int) -> str:
        return Path(self.image.filename).stem

    def __getitem__(self, index: int) -> tuple[Image.Image, str]:
        return self.image, self.prompt(index)


def _file_identity(path: Path) -> str:
    """A file's path, size and modification time: it changes whenever the file does."""
    stat = path.stat()
    return f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"


def _is_readable(path: Path) -> bool:
    """Whether PIL can open and verify the file (without a full decode); an unreadable one is logged."""
    try:
        with Image.open(path) as image:
            image.verify()
        return True
    except (OSError, UnidentifiedImageError, SyntaxError) as error:
        log.warning("skipping unreadable image %s: %s", path, error)
        return False
