"""Where `generate` puts its PNGs: a dated default folder, names that never replace a file, and each image's prompt,
seed and settings in its PNG text chunks (what redraws it)."""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL import Image

OUTPUTS = Path("outputs")
NUMBERED = re.compile(r"(\d+)-")


def default_output(today: date) -> Path:
    """outputs/<YYYY-MM-DD> in the current folder: a day's images together, whatever model drew them."""
    return OUTPUTS / today.isoformat()


def slug(prompt: str) -> str:
    """The prompt as a short file-name part: lowercase letters and digits joined by dashes."""
    return re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:60] or "empty"


def image_name(number: int, seed: int, prompt: str) -> str:
    """`NNNNN-SEED-prompt.png`: the number orders a folder's images as they were drawn, the seed redraws it."""
    return f"{number:05d}-{seed}-{slug(prompt)}.png"


def next_number(folder: Path) -> int:
    """One past the highest number a PNG name in `folder` starts with (0 for a new folder)."""
    numbers = [int(m.group(1)) for path in folder.glob("*.png") if (m := NUMBERED.match(path.name))]
    return max(numbers, default=-1) + 1


def save_new(image: Image.Image, folder: Path, number: int, seed: int, prompt: str,
             metadata: dict[str, str]) -> tuple[Path, int]:
    """The image as a PNG holding `metadata` in text chunks, under the first free number from `number` on; the file
    is created exclusively, so none is ever replaced, not even one another process writes at the same moment.
    Returns the path and the number it took."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for key, value in metadata.items():
        info.add_itxt(key, value)
    while True:
        path = folder / image_name(number, seed, prompt)
        try:
            with open(path, "xb") as file:
                image.save(file, format="PNG", pnginfo=info)
            return path, number
        except FileExistsError:
            number += 1
