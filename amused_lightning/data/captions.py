"""Where an image file's captions come from, first found first:

- a caption file beside it, `<stem>.txt` (`caption_extension`): one caption per line, blank lines ignored. Each draw
  trains on one line, chosen from the draw's seed and the row (`caption_index`), so a resume draws the same lines;
- a `metadata.jsonl` or `metadata.csv` in its folder or a folder above (the Hugging Face imagefolder convention):
  `file_name` relative to the metadata file's folder, the caption in `caption_column` (default: the first of
  text, caption, prompt that the file has); a list of strings there is several captions;
- its file name without the suffix.

A caption file or metadata entry that is there but gives no caption (empty, unreadable, not UTF-8, a null or
non-text value) makes the row bad rather than falling back: training on the file name instead would be silent.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import random
from pathlib import Path
from typing import NamedTuple

from amused_lightning.errors import UserError
from amused_lightning.seeding import derive_seed

log = logging.getLogger(__name__)
CAPTION_COLUMNS = ("text", "caption", "prompt")
METADATA_NAMES = ("metadata.jsonl", "metadata.csv")
TXT, METADATA, FILE_NAME, DATASET_COLUMN = "txt", "metadata", "file name", "dataset column"


class MetadataError(UserError, ValueError):
    """A metadata file that cannot be read as the imagefolder convention has it."""


class Captions(NamedTuple):
    """A row's captions, where they come from (TXT, METADATA, FILE_NAME, DATASET_COLUMN), and why they cannot be
    used, or None."""

    lines: tuple
    origin: str
    problem: str | None = None


def caption_index(count: int, seed: int, row: int) -> int:
    """Which of `count` captions the draw of `row` with seed `seed` trains on: a stream apart from the crop's."""
    return 0 if count <= 1 else random.Random(derive_seed(seed, row)).randrange(count)


def caption_lines(text: str) -> tuple[str, ...]:
    """The non-blank lines of `text`, stripped."""
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def read_caption_file(path: Path) -> Captions:
    """The captions of a caption file, one a line; a problem when it cannot be read or holds none."""
    try:
        lines = caption_lines(path.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError as error:
        return Captions((), TXT, f"caption file {str(path)!r} is not UTF-8 text ({error.reason})")
    except OSError as error:
        return Captions((), TXT, f"unreadable caption file {str(path)!r} ({error.strerror or error})")
    if not lines:
        return Captions((), TXT, f"empty caption file {str(path)!r} (write a caption in it, or delete it to "
                                 "caption the image from metadata or its file name)")
    return Captions(lines, TXT)


def file_captions(image: Path, caption_extension: str) -> Captions | None:
    """The captions of the caption file beside `image`, or None when there is none."""
    caption_file = image.with_suffix(caption_extension)
    return read_caption_file(caption_file) if caption_file.exists() else None


def metadata_files(paths: list[Path]) -> list[Path]:
    """The metadata files among `paths`; a folder may hold only one of them."""
    found = [path for path in paths if path.name in METADATA_NAMES]
    folders = [path.parent for path in found]
    doubled = sorted({str(folder) for folder in folders if folders.count(folder) > 1})
    if doubled:
        raise MetadataError(f"{doubled[0]!r} holds both {' and '.join(METADATA_NAMES)}: keep one")
    return found


def read_metadata_rows(path: Path) -> list[dict]:
    """The rows of a metadata.jsonl or metadata.csv, each naming its image in `file_name`."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise MetadataError(f"metadata file {str(path)!r} cannot be read: {error}") from error
    rows = _jsonl_rows(path, text) if path.suffix == ".jsonl" else list(csv.DictReader(text.splitlines()))
    for number, row in enumerate(rows, 1):
        if not isinstance(row, dict) or not isinstance(row.get("file_name"), str):
            raise MetadataError(f"metadata file {str(path)!r} entry {number} has no file_name (the image's path, "
                                "relative to the metadata file's folder)")
    return rows


def _jsonl_rows(path: Path, text: str) -> list:
    """The JSON objects of a JSON-lines text, blank lines skipped."""
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise MetadataError(f"metadata file {str(path)!r} line {number} is not JSON: {error}") from error
    return rows


def caption_column_of(path: Path, columns: set[str], caption_column: str | None) -> str:
    """The column `caption_column` names, else the first of CAPTION_COLUMNS that `columns` has."""
    wanted = [caption_column] if caption_column else list(CAPTION_COLUMNS)
    found = [column for column in wanted if column in columns]
    if not found:
        setting = f"data.source.caption_column={caption_column!r}" if caption_column else \
            f"none of the caption columns {list(CAPTION_COLUMNS)} (set data.source.caption_column)"
        raise MetadataError(f"metadata file {str(path)!r}: {setting} not among its columns {sorted(columns)}")
    return found[0]


def metadata_value_captions(value: object, where: str) -> Captions:
    """The captions a metadata value gives: a string, or a list of strings."""
    values = value if isinstance(value, list) else [value]
    lines = tuple(item.strip() for item in values if isinstance(item, str) and item.strip())
    if not lines or not all(isinstance(item, str) for item in values):
        return Captions((), METADATA, f"{where}: no caption text ({value!r})")
    return Captions(lines, METADATA)


def read_metadata(path: Path, caption_column: str | None) -> dict[Path, Captions]:
    """The captions one metadata file gives, by image path (normalised, below the metadata file's folder)."""
    rows = read_metadata_rows(path)
    if not rows:
        return {}
    column = caption_column_of(path, {key for row in rows for key in row}, caption_column)
    return {normalised(path.parent / row["file_name"]):
            metadata_value_captions(row.get(column), f"metadata file {str(path)!r} {column!r} of {row['file_name']!r}")
            for row in rows}


def folder_metadata(files: list[Path], images: list[Path], caption_column: str | None) -> dict[Path, Captions]:
    """The captions all metadata files give, by image path; entries naming no image found are counted in a warning
    (a deeper metadata file wins over one above it)."""
    captions: dict[Path, Captions] = {}
    for path in sorted(files, key=lambda file: len(file.parts)):
        captions.update(read_metadata(path, caption_column))
    unmatched = len(set(captions) - {normalised(image) for image in images})
    if unmatched:
        log.warning("%d metadata entries name no image file of the folder (ignored)", unmatched)
    return captions


def normalised(path: Path) -> Path:
    """`path` with `.` and `..` resolved textually, so metadata paths and found files compare equal."""
    return Path(os.path.normpath(path))
