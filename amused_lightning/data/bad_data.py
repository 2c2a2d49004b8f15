"""Broken training data and `data.on_bad_image`: what makes a row unusable, and what happens to such a row.

A row is bad when its prompt is missing or not text, or its image is missing, empty, undecodable, truncated, or larger
than PIL's `Image.MAX_IMAGE_PIXELS` (PIL only warns up to twice that limit; here it is an error, as such an image
would still take the memory PIL warns of). Bad rows show in two places:

- before training, a scan reads every prompt and opens every image's header (PIL's `open` and `verify`: the format,
  the size, a PNG's chunk checksums and completeness, no full decode). The rows it finds are left out of the row list
  before the split and the sampler, so the indices, hence an exact resume, do not depend on them;
- what only a full decode reveals (a truncated JPEG, a file deleted after the scan) shows when the row is drawn. Under
  "skip" that draw takes the next row of the list (of its aspect-ratio bucket, with buckets) instead: always the
  same one, so a resumed run draws what an unbroken one would, with or without a pre-encoded cache.
"""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from PIL import Image, UnidentifiedImageError

from amused_lightning.errors import UserError
from amused_lightning.progress import iterate

log = logging.getLogger(__name__)
T = TypeVar("T")
ON_BAD_IMAGE = ("skip", "error")
SCAN_PROGRESS_FROM = 10_000  # rows from which the scan shows its progress
NAMED_AT_WARNING_LEVEL = 20  # bad rows named one by one in warnings; the others at debug level (-v shows them)
ImageData = bytes | str | Path  # an image file's bytes, or its path


class BadImageError(UserError, ValueError):
    """A row that cannot be trained on: the message names it (dataset and row, or file) and says why."""

    def __init__(self, message: str):
        # A DataLoader worker re-raises it with its whole traceback as the message: keep the line that names the row.
        last_line = message.strip().splitlines()[-1] if message.strip() else message
        super().__init__(last_line.removeprefix(f"{__name__}.{type(self).__name__}: "))


class UnusableImage(Exception):
    """Why an image cannot be used; the source adds which row it is."""


def prompt_problem(prompt: object) -> str | None:
    """Why `prompt` cannot be a sample's prompt (missing, or not text), or None."""
    if prompt is None:
        return "no prompt (None)"
    if not isinstance(prompt, str):
        return f"the prompt is {type(prompt).__name__} {prompt!r}, not text"
    return None


def image_problem(data: ImageData | None) -> str | None:
    """Why the image cannot be used, judging from its header and PIL's verify pass (no full decode), or None."""
    try:
        with _bombs_as_errors(), _open(data) as image:
            image.verify()
    except Exception as error:  # noqa: BLE001 (PIL's decoders raise many types on malformed input)
        return _reason(error)
    return None


def load_image(data: ImageData | None) -> Image.Image:
    """The image fully decoded; UnusableImage saying why it cannot be."""
    try:
        with _bombs_as_errors():
            image = _open(data)
            image.load()
        return image
    except Exception as error:  # noqa: BLE001 (PIL's decoders raise many types on malformed input)
        raise UnusableImage(_reason(error)) from error


def absent_image(data: ImageData | None) -> str | None:
    """Why an image is missing before any file is opened (None, or 0 bytes given), or None."""
    if data is None:
        return "no image (None)"
    return "empty file (0 bytes)" if isinstance(data, bytes) and not data else None


def _open(data: ImageData | None) -> Image.Image:
    """PIL's lazy open of an image given as bytes or as a path; an absent or empty one is refused as such."""
    absent = absent_image(data)
    if absent:
        raise UnusableImage(absent)
    if isinstance(data, bytes):
        return Image.open(io.BytesIO(data))
    if Path(data).stat().st_size == 0:
        raise UnusableImage("empty file (0 bytes)")
    return Image.open(data)


@contextmanager
def _bombs_as_errors():
    """PIL's DecompressionBombWarning raised as an error (thread-unsafe, as warnings are: loaders use processes)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        yield


def _reason(error: Exception) -> str:
    """What is wrong with an image, in words, from what opening or decoding it raised."""
    if isinstance(error, UnusableImage):
        return str(error)
    if isinstance(error, FileNotFoundError):
        return f"missing image file ({error.filename or error})"
    if isinstance(error, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return f"image too large to decode safely: {error} (PIL's Image.MAX_IMAGE_PIXELS)"
    if isinstance(error, UnidentifiedImageError):
        return "not an image PIL can read (undecodable bytes)"
    return f"unreadable image ({type(error).__name__}: {error})"


def scan_progress(items: Iterable[T], total: int) -> Iterable[T]:
    """`items`, with progress lines when the scan is long enough to need them."""
    return iterate(items, total, "checking row", "rows") if total >= SCAN_PROGRESS_FROM else items


def apply_to_scan(bad: dict[int, str], where: Callable[[int], str], total: int, on_bad_image: str) -> None:
    """Act on the rows a scan found bad: under "error" fail naming them; under "skip" name each in a warning."""
    if not bad:
        return
    named = [f"{where(row)}: {reason}" for row, reason in sorted(bad.items())]
    if on_bad_image == "error":
        more = f" (and {len(named) - 3} more)" if len(named) > 3 else ""
        raise BadImageError(f"{len(named)} of {total} rows cannot be used: {'; '.join(named[:3])}{more}. Fix or "
                            "remove them, or set data.on_bad_image: skip to train without them")
    for index, line in enumerate(named):
        log.log(logging.WARNING if index < NAMED_AT_WARNING_LEVEL else logging.DEBUG, "skipping %s", line)
    log.warning("data.on_bad_image=skip: %d of %d rows left out before training%s", len(named), total,
                f" ({len(named) - NAMED_AT_WARNING_LEVEL} more named at debug level, -v)"
                if len(named) > NAMED_AT_WARNING_LEVEL else "")


def draw(load: Callable[[int], T], index: int, within: range, on_bad_image: str, known_bad: set[int]) -> tuple[T, int]:
    """`load(index)`; under "skip", if that raises BadImageError, the next index of `within` (wrapping round it)
    that loads. Returns the result and how many indices were passed over. `known_bad` remembers failures so each is
    warned of once."""
    count = len(within)
    for offset in range(count):
        candidate = within[(index - within.start + offset) % count]
        if candidate in known_bad:
            continue
        try:
            return load(candidate), offset
        except BadImageError as error:
            if on_bad_image == "error":
                raise
            known_bad.add(candidate)
            log.warning("skipping %s; the draw takes the next row instead (data.on_bad_image=skip)", error)
    raise BadImageError(f"none of the {count} rows could be read (see the warnings above)")
