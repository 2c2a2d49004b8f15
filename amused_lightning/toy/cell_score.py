"""The strict reading of a toy-world image: each of its 16x16 cells against the ideal drawing of its prompt.

A person calls a character right when every cell is: a speckle on the background or a head of confetti is wrong even
when each named attribute can still be read off by a majority vote. The ideal drawing is the prompt's character drawn
cell by cell (`toy_world.ideal_cells`), its unnamed head colour taken as the one the image's head mostly shows.
"""

from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np
from PIL import Image

from amused_lightning.toy.world import GRID, PALETTE, PARTS, Character, cell_parts, ideal_cells, per_cell

CLEAN = 0.98
"""Share of cells an image (or a part of it) needs right to count as clean: at most 5 of the 256 cells wrong."""
COLOURS = np.array([rgb for _, _, rgb in PALETTE], dtype=np.float32)
HEAD = PARTS.index("head")


def read_cells(image: Image.Image) -> np.ndarray:
    """(16, 16) PALETTE indices: the colour most of each cell's pixels are nearest to (a colour before a background
    on a tie, as the ideal drawing puts the front part first)."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    if pixels.shape[0] != pixels.shape[1] or pixels.shape[0] % GRID:
        raise ValueError(f"image size {image.size} must be square and a multiple of {GRID} pixels")
    nearest = ((pixels[:, :, None, :] - COLOURS) ** 2).sum(-1).argmin(-1)
    counts = (per_cell(nearest, pixels.shape[0] // GRID)[..., None] == np.arange(len(COLOURS))).sum(-2)
    return counts.argmax(-1)


def head_colour_shown(drawn: np.ndarray, parts: np.ndarray) -> str:
    """The colour most of the head's cells show (the first colour where none shows a colour at all)."""
    shown = Counter(PALETTE[i][1] for i in drawn[parts == HEAD] if PALETTE[i][0] == "color")
    return shown.most_common(1)[0][0] if shown else PALETTE[0][1]


def cells_right(character: Character, image: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    """(16, 16) whether each cell matches the ideal drawing, and (16, 16) the part each cell belongs to."""
    cell = image.width // GRID
    drawn, parts = read_cells(image), cell_parts(character.head, cell)
    ideal = ideal_cells(dataclasses.replace(character, head_color=head_colour_shown(drawn, parts)), cell)
    return drawn == ideal, parts


def part_shares(right: np.ndarray, parts: np.ndarray) -> dict[str, float]:
    """The share of cells right over the whole image ("cells") and over each part's cells."""
    shares = {"cells": float(right.mean())}
    shares.update({part: float(right[parts == i].mean()) for i, part in enumerate(PARTS)})
    return shares
