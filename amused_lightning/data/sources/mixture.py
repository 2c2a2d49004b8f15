"""`Mixture`: several row sources trained as one, each repeated a whole number of times per epoch (DreamBooth-style
prior preservation: the new images and images of what the base model already draws, without merging folders)."""

from __future__ import annotations

import bisect
from functools import cached_property
from itertools import accumulate

from PIL import Image

from amused_lightning.data.bad_data import ImageData
from amused_lightning.data.captions import Captions
from amused_lightning.data.sources.base import DataSource, DataSourceError, Split


class Mixture(DataSource):
    """The rows of several sources one after another; an epoch draws each training row of `sources[i]`
    `repeats[i]` times, in one shuffle. The held-out rows are drawn from all of them together."""

    def __init__(self, sources: list[DataSource], repeats: list[int] | None = None):
        """
        Args:
            sources: The sources, each with its own class and settings (HFDataset, ImageFolder, SingleImage, or
                another Mixture); streams cannot be mixed.
            repeats: How many times an epoch draws each training row of each source, one whole number per source
                (default: 1 each). [1, 3] trains on the second source's images three times as often as on the
                first's, and an epoch grows by twice the second source's training rows.
        """
        repeats = [1] * len(sources) if repeats is None else list(repeats)
        if not sources:
            raise DataSourceError("data.source.sources is empty: a Mixture needs at least one source")
        if len(repeats) != len(sources):
            raise DataSourceError(f"data.source.repeats={repeats} needs one count per source ({len(sources)})")
        if any(not isinstance(count, int) or count < 1 for count in repeats):
            raise DataSourceError(f"data.source.repeats={repeats} must be whole numbers of 1 or more")
        self.sources, self.repeats = list(sources), repeats

    def settings(self) -> dict:
        return {"class_path": f"{type(self).__module__}.{type(self).__qualname__}",
                "init_args": {"sources": [source.settings() for source in self.sources], "repeats": self.repeats}}

    @cached_property
    def starts(self) -> list[int]:
        """The first row of each source among the mixture's rows."""
        return [0, *accumulate(len(source) for source in self.sources)][:-1]

    def locate(self, row: int) -> tuple[int, int]:
        """(which source, which of its rows) holds the mixture's `row`."""
        index = bisect.bisect_right(self.starts, row) - 1
        return index, row - self.starts[index]

    def source_rows(self, index: int) -> range:
        """The mixture's rows that are `sources[index]`'s."""
        return range(self.starts[index], self.starts[index] + len(self.sources[index]))

    @cached_property
    def identity(self) -> str:
        # Repeats are left out: they change how often rows are drawn, not what they hold (the cache stays valid).
        return "mixture:" + "|".join(source.identity for source in self.sources)

    def __len__(self) -> int:
        return sum(len(source) for source in self.sources)

    def captions(self, row: int) -> Captions:
        index, inner = self.locate(row)
        return self.sources[index].captions(inner)

    def image_data(self, row: int) -> ImageData | None:
        index, inner = self.locate(row)
        return self.sources[index].image_data(inner)

    def image(self, row: int) -> Image.Image:
        index, inner = self.locate(row)
        return self.sources[index].image(inner)

    def problem(self, row: int) -> str | None:
        index, inner = self.locate(row)
        return self.sources[index].problem(inner)

    def where(self, row: int) -> str:
        index, inner = self.locate(row)
        return f"data.source.sources[{index}] {self.sources[index].where(inner)}"

    def split_rows(self, val_samples: int, seed: int, batch_size: int, world_size: int) -> Split:
        """The held-out rows drawn from all sources together (as one source's are); each training row listed as
        many times as its source's repeat count."""
        split = super().split_rows(val_samples, seed, batch_size, world_size)
        repeated = [row for row in split.train_rows for _ in range(self.repeats[self.locate(row)[0]])]
        return split._replace(train_rows=repeated)
