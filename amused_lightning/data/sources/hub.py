"""A Hugging Face dataset as `load_dataset` opens it: the settings `HFDataset` (rows) and `HFStream` (a stream) share,
and how both read a stored image."""

from __future__ import annotations

import inspect
from typing import TypeVar

from amused_lightning.data.bad_data import ImageData

Source = TypeVar("Source", bound="HFSource")


class HFSource:
    """The settings of a Hugging Face dataset, whether read whole or as a stream."""

    def __init__(self, path: str, split: str = "train", image_key: str = "image", prompt_key: str = "text",
                 prompt_prefix: str | None = None, val_split: str | None = None, name: str | None = None,
                 data_files: str | list[str] | dict[str, str | list[str]] | None = None, revision: str | None = None):
        """
        Args:
            path: Hub id, or a local folder of data files (parquet/arrow, an imagefolder; for HFDataset also a
                save_to_disk folder); or a builder name ("parquet", "imagefolder", "webdataset", ...) with
                `data_files`.
            split: Split to train on.
            image_key: Column holding the images; for HFStream, several columns separated by ";" (WebDataset
                extensions such as "jpg;png") take the first one a record has.
            prompt_key: Column holding the prompts.
            prompt_prefix: Text put before every prompt (for example "minecraft ").
            val_split: Split scored for the held-out loss (its first data.val_samples rows). Unset: rows are held out
                of `split` (see data.val_samples).
            name: The dataset's configuration (subset) name, as `load_dataset(name=...)`.
            data_files: Files (paths, globs or hf:// paths) to read, as `load_dataset(data_files=...)`.
            revision: Branch, tag or commit of a hub dataset.
        """
        self.path, self.split, self.image_key, self.prompt_key = path, split, image_key, prompt_key
        self.prompt_prefix, self.val_split = prompt_prefix, val_split
        self.name, self.data_files, self.revision = name, data_files, revision

    def of_split(self: Source, split: str) -> Source:
        """The same dataset's `split`, with no held-out split of its own (it is the held-out one)."""
        settings = {name: getattr(self, name) for name in inspect.signature(HFSource).parameters}
        return type(self)(**{**settings, "split": split, "val_split": None})


def stored_image(stored: dict | None) -> ImageData | None:
    """An image as datasets stores it (`{"bytes", "path"}`): its bytes, else its file path; None when absent."""
    if stored is None:
        return None
    return stored["bytes"] if stored.get("bytes") is not None else stored.get("path")


def could_be_hub_id(path: str) -> bool:
    """Whether `path` has the shape of a Hub id (`name` or `owner/name`) rather than only of a file path."""
    return path.count("/") <= 1 and not path.startswith((".", "/", "~")) and "\\" not in path
