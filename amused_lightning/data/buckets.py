"""Aspect-ratio buckets (`data.aspect_buckets`): token-grid shapes of about the square's token count, each training
image assigned to the one nearest its aspect ratio and cropped to it, so that wide and tall images train without
losing their sides to a square crop.

Grids are (height, width) in tokens. Every grid holds at most the square's tokens (memory never exceeds the square
run's) and fewer than its shorter side times `multiple` less; a side is a multiple of what the transformer needs
(`multiple`: 2 when it halves its grid inside, as amused-512's does). The rows of one bucket sit together in a
`RowLayout`: the sampler draws each batch from one of its groups, and a bad row's draw takes the next row of the
same group.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from amused_lightning.data.bad_data import SCAN_PROGRESS_FROM
from amused_lightning.data.sources.base import DataSource
from amused_lightning.data.transforms import upright_size
from amused_lightning.errors import SettingError
from amused_lightning.progress import iterate

Grid = tuple[int, int]  # (height, width) in tokens
Size = tuple[int, int]  # (width, height) in pixels, as PIL gives it


@dataclass
class AspectBucketSettings:
    """Training crops shaped like their images (opt-in): grids of about the square's token count."""

    max_ratio: float = 2.0
    """Longest over shortest side of the most elongated bucket (2.0: from 1:2 to 2:1); an image more elongated than
    that goes to the most elongated bucket of its orientation, and its crop cuts the rest."""

    def __post_init__(self) -> None:
        if not self.max_ratio >= 1.0:
            raise SettingError(f"data.aspect_buckets.max_ratio={self.max_ratio} must be at least 1 (1: only the "
                               "square)")


@dataclass(frozen=True)
class RowLayout:
    """Rows to draw from, each with its crop size, in groups (buckets) whose rows are drawn together."""

    rows: list[int]
    sizes: list[Size]  # (width, height) of each entry's crop
    groups: list[range]  # indices into `rows`, one range per non-empty bucket, covering them all

    def group_of(self, index: int) -> range:
        """The group holding entry `index`."""
        return next(group for group in self.groups if index in group)

    def size_of(self) -> dict[int, Size]:
        """The crop size of each distinct row."""
        return dict(zip(self.rows, self.sizes))


def bucket_grids(side: int, multiple: int, max_ratio: float) -> list[Grid]:
    """The square `side` x `side` grid first, then for each shorter side below it (in steps of `multiple`) the
    longest side that keeps within the square's tokens, landscape then portrait, while within `max_ratio`."""
    grids = [(side, side)]
    for short in range(side - multiple, 0, -multiple):
        long = side * side // short // multiple * multiple
        if long / short > max_ratio:
            break
        grids += [(short, long), (long, short)]
    return grids


def nearest_grid(width: int, height: int, grids: list[Grid]) -> int:
    """The index of the grid whose aspect ratio is nearest `width:height` (in log scale; the first on a tie)."""
    target = math.log(width / height)
    return min(range(len(grids)), key=lambda i: abs(target - math.log(grids[i][1] / grids[i][0])))


def square_layout(rows: list[int], resolution: int) -> RowLayout:
    """Every row cropped to the `resolution` square, all in one group."""
    return RowLayout(list(rows), [(resolution, resolution)] * len(rows), [range(len(rows))])


def bucket_layout(rows: list[int], sizes: dict[int, Size | None], grids: list[Grid],
                  pixels_per_token: int) -> RowLayout:
    """`rows` grouped by the grid nearest each one's image size, in the order of `grids`, each group keeping the
    rows' order. A row of unknown size goes to the square (its draw will find out what is wrong with it)."""
    buckets: list[list[int]] = [[] for _ in grids]
    for row in rows:
        size = sizes[row]
        buckets[nearest_grid(*size, grids) if size else 0].append(row)
    ordered, crop_sizes, groups = [], [], []
    for (height, width), members in zip(grids, buckets):
        if members:
            groups.append(range(len(ordered), len(ordered) + len(members)))
            ordered += members
            crop_sizes += [(width * pixels_per_token, height * pixels_per_token)] * len(members)
    return RowLayout(ordered, crop_sizes, groups)


def image_sizes(source: DataSource, rows: list[int]) -> dict[int, Size | None]:
    """The upright (width, height) of each distinct row's image, from its header; None where it cannot be read."""
    distinct = sorted(set(rows))
    shown = iterate(distinct, len(distinct), "reading image size", "rows") if len(distinct) >= SCAN_PROGRESS_FROM \
        else distinct
    return {row: _header_size(source, row) for row in shown}


def _header_size(source: DataSource, row: int) -> Size | None:
    try:
        return upright_size(source.image_data(row))
    except Exception:  # noqa: BLE001 (the scan passed it; a draw names what is wrong, as data.on_bad_image says)
        return None


class CropSize:
    """The crop size of an image, from its header: the `resolution` square, or the bucket of `grids` nearest its
    aspect ratio (the square when the header cannot be read: its decode will say what is wrong)."""

    def __init__(self, resolution: int, grids: tuple[Grid, ...] | None, pixels_per_token: int):
        self.resolution, self.grids, self.pixels_per_token = resolution, grids, pixels_per_token

    def __call__(self, record) -> Size:
        if self.grids is None:
            return self.resolution, self.resolution
        try:
            size = upright_size(record.image)
        except Exception:  # noqa: BLE001 (as _header_size)
            return self.resolution, self.resolution
        height, width = self.grids[nearest_grid(*size, list(self.grids))]
        return width * self.pixels_per_token, height * self.pixels_per_token


def training_layout(source: DataSource, rows: list[int], resolution: int, pixels_per_token: int,
                    grids: tuple[Grid, ...] | None) -> RowLayout:
    """The training rows with their crop sizes: the square, or the bucket of `grids` nearest each image."""
    if grids is None:
        return square_layout(rows, resolution)
    return bucket_layout(rows, image_sizes(source, rows), list(grids), pixels_per_token)

