"""`SingleImage`: one image (StyleDrop), captioned by a `.txt` file beside it or its file name."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

from PIL import Image

from amused_lightning.data.bad_data import ImageData, UnusableImage, load_image
from amused_lightning.data.captions import FILE_NAME, Captions, file_captions
from amused_lightning.data.sources.base import DataSource, DataSourceError, Split, file_identity

# A single image is repeated to fill this many batches per epoch, so loaders are not restarted every step.
SINGLE_IMAGE_BATCHES_PER_EPOCH = 100


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
        return f"image:{file_identity(path)};{file_identity(path.with_suffix('.txt'))}"

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
