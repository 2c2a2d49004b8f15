"""`HFDataset`: the rows of a Hugging Face dataset, read whole (a hub id, a folder of data files, a save_to_disk
folder)."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import datasets

from amused_lightning.data.bad_data import ImageData, prompt_problem
from amused_lightning.data.captions import DATASET_COLUMN, Captions
from amused_lightning.data.sources.base import DataSource, DataSourceError, Split
from amused_lightning.data.sources.hub import HFSource, could_be_hub_id, stored_image


class HFDataset(HFSource, DataSource):
    """Rows of a Hugging Face dataset (hub id, parquet/arrow/image folder, or save_to_disk folder)."""

    @cached_property
    def rows(self) -> datasets.Dataset:
        rows = open_hf_dataset(self.path, self.split, self.name, self.data_files, self.revision)
        missing = [f"data.source.{name}={key!r}" for name, key in (("image_key", self.image_key),
                                                                   ("prompt_key", self.prompt_key))
                   if key not in rows.column_names]
        if missing:
            raise DataSourceError(f"data.source.path={self.path!r}: {', '.join(missing)} not among its columns "
                                  f"{rows.column_names}")
        if len(rows) == 0:
            raise DataSourceError(f"data.source.path={self.path!r} split {self.split!r} has no rows")
        if not isinstance(rows.features[self.image_key], datasets.Image):
            raise DataSourceError(f"data.source.image_key={self.image_key!r}: the column holds "
                                  f"{rows.features[self.image_key]}, not images")
        return rows

    @cached_property
    def encoded_images(self) -> datasets.Dataset:
        """The image column, its images left encoded (bytes or path): decoded here, so a bad one can be named."""
        return self.rows.select_columns([self.image_key]).cast_column(self.image_key, datasets.Image(decode=False))

    @cached_property
    def prompts(self) -> list[object]:
        """The prompts, prefixed; a missing or non-text one is kept as is, for the scan to report."""
        prefix = self.prompt_prefix or ""
        return [prefix + prompt if isinstance(prompt, str) else prompt for prompt in self.rows[self.prompt_key]]

    @cached_property
    def identity(self) -> str:
        return (f"dataset:{self.path}:{self.name}:{self.split}:{self.rows._fingerprint}:{self.image_key}:"
                f"{self.prompt_key}:{self.prompt_prefix or ''}")

    def __len__(self) -> int:
        return len(self.rows)

    def captions(self, row: int) -> Captions:
        return Captions((self.prompts[row],), DATASET_COLUMN, prompt_problem(self.prompts[row]))

    def image_data(self, row: int) -> ImageData | None:
        return stored_image(self.encoded_images[row][self.image_key])

    def where(self, row: int) -> str:
        return f"data.source.path={self.path!r} split {self.split!r} row {row}"

    def split_rows(self, val_samples: int, seed: int, batch_size: int, world_size: int) -> Split:
        """With `val_split`, all of `split` trains and the first `val_samples` rows of `val_split` are scored."""
        if self.val_split is None:
            return super().split_rows(val_samples, seed, batch_size, world_size)
        held_out = self.of_split(self.val_split)
        return Split(self.usable_rows(), held_out, held_out.usable_rows()[:val_samples])


def open_hf_dataset(path: str, split: str, name: str | None = None, data_files=None,
                    revision: str | None = None) -> datasets.Dataset:
    """`load_from_disk` for a save_to_disk folder, else `load_dataset(path, name, data_files, revision, split)`."""
    local = Path(path).expanduser()
    if not local.exists() and not could_be_hub_id(path):
        raise DataSourceError(f"data.source.path={path!r}: no such folder ({local.absolute()})")
    try:
        if (local / "dataset_dict.json").exists() or (local / "state.json").exists():
            loaded = datasets.load_from_disk(str(local))
            return loaded[split] if isinstance(loaded, datasets.DatasetDict) else loaded
        return datasets.load_dataset(path, name=name, data_files=data_files, revision=revision, split=split)
    except (ConnectionError, FileNotFoundError, KeyError, ValueError) as error:
        where = ("local folder" if local.exists() else
                 f"Hugging Face Hub dataset, as no folder {str(local.absolute())!r} exists (is the hub reachable?)")
        raise DataSourceError(f"data.source.path={path!r} split {split!r}: could not open it as a {where}: {error}. "
                              "A local folder of parquet/arrow files, an imagefolder or a save_to_disk folder "
                              "works offline.") from error
