"""The toy world: nouns-like pixel-art characters from a known layout, palette and caption grammar.

A character is a background, a body colour, a head shape and colour, and a glasses colour, drawn on a 16x16 grid of
cells. The world splits in two: the base world never names the held-back concept (one colour word and one head
shape; the colour shows only as an unnamed head colour); the finetuning world names it in every character, for
teaching it to a base model afterwards.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

COLORS = {"red": (220, 40, 40), "orange": (245, 140, 30), "blue": (40, 80, 220), "purple": (140, 60, 190),
          "green": (50, 170, 70), "yellow": (240, 210, 40), "pink": (240, 130, 180), "teal": (30, 160, 160)}
BACKGROUNDS = {"dark": (30, 30, 40), "light": (225, 225, 215), "sunny": (250, 225, 120), "orange": (250, 160, 80)}
HEADS = ("baseball", "lips", "microwave", "cube", "mushroom", "crown")
GRID = 16  # pixel-art cells per side
HELD_BACK_COLOR = "teal"
HELD_BACK_HEAD = "crown"
WORLDS = ("all", "base", "finetune")
CAPTION = re.compile(r"a pixel art character with square (\w+) glasses, a (\w+)-shaped head and a (\w+)-colored "
                     r"body on an? (\w+) background")
BODY_BOX = (5, 9, 11, 16)  # cells: left, top, right, bottom (exclusive)
GLASSES_LEFTS = (5, 9)  # each lens is 2x2 cells from row 4
PARTS = ("background", "body", "head", "glasses")  # back to front
# Every colour a cell can have, as (kind, name, rgb): the eight colours, then the four backgrounds.
PALETTE = tuple([("color", name, rgb) for name, rgb in COLORS.items()]
                + [("background", name, rgb) for name, rgb in BACKGROUNDS.items()])


@dataclass(frozen=True)
class Character:
    """The attributes of one character; the caption names all but the head colour."""

    glasses: str
    body: str
    background: str
    head: str
    head_color: str

    def caption(self) -> str:
        """The caption grammar of the toy world."""
        article = "an" if self.background[0] in "aeiou" else "a"
        return (f"a pixel art character with square {self.glasses} glasses, a {self.head}-shaped head and a "
                f"{self.body}-colored body on {article} {self.background} background")


def draw_head(draw: ImageDraw.ImageDraw, shape: str, color: tuple, cell: int) -> None:
    """A head of a recognisable silhouette in the upper half."""
    box = [4 * cell, 2 * cell, 12 * cell - 1, 8 * cell - 1]
    if shape in ("baseball", "mushroom"):
        draw.ellipse(box, fill=color)
    elif shape == "lips":
        draw.polygon([(4 * cell, 5 * cell), (8 * cell, 2 * cell), (12 * cell, 5 * cell), (8 * cell, 8 * cell)],
                     fill=color)
    elif shape == "crown":
        draw.polygon([(4 * cell, 8 * cell), (4 * cell, 2 * cell), (6 * cell, 4 * cell), (8 * cell, 2 * cell),
                      (10 * cell, 4 * cell), (12 * cell, 2 * cell), (12 * cell, 8 * cell)], fill=color)
    else:
        draw.rectangle(box, fill=color)


def paint(image: Image.Image, head: str, fills: tuple, cell: int) -> Image.Image:
    """Paint a character's parts over `image`'s background, each part in its fill (body, head, glasses)."""
    body, head_fill, glasses = fills
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = BODY_BOX
    draw.rectangle([left * cell, top * cell, right * cell - 1, bottom * cell - 1], fill=body)
    draw_head(draw, head, head_fill, cell)
    for lens in GLASSES_LEFTS:
        draw.rectangle([lens * cell, 4 * cell, (lens + 2) * cell - 1, 6 * cell - 1], fill=glasses)
    return image


def draw_character(character: Character, size: int) -> Image.Image:
    """The image of a character, `size` pixels a side (a multiple of 16)."""
    if size % GRID:
        raise ValueError(f"size={size} must be a multiple of {GRID}")
    image = Image.new("RGB", (size, size), BACKGROUNDS[character.background])
    fills = (COLORS[character.body], COLORS[character.head_color], COLORS[character.glasses])
    return paint(image, character.head, fills, size // GRID)


def per_cell(pixels: np.ndarray, cell: int) -> np.ndarray:
    """(16, 16, cell * cell) the values of each cell of a (16 * cell, 16 * cell) array, cell by cell."""
    return pixels.reshape(GRID, cell, GRID, cell).transpose(0, 2, 1, 3).reshape(GRID, GRID, cell * cell)


def cell_parts(head: str, cell: int = 4) -> np.ndarray:
    """(16, 16) index into PARTS of the part covering most of each cell of a character with `head` drawn `cell`
    pixels a cell (the front part on a tie): the layout of the ideal, cell-by-cell drawing."""
    labels = per_cell(np.asarray(paint(Image.new("L", (GRID * cell,) * 2, 0), head, (1, 2, 3), cell)), cell)
    counts = np.stack([(labels == part).sum(-1) for part in range(len(PARTS))], axis=-1)
    return len(PARTS) - 1 - counts[..., ::-1].argmax(-1)


def palette_index(kind: str, name: str) -> int:
    """The position of a colour of `kind` ("color" or "background") in PALETTE."""
    return next(i for i, (k, n, _) in enumerate(PALETTE) if (k, n) == (kind, name))


def ideal_cells(character: Character, cell: int = 4) -> np.ndarray:
    """(16, 16) PALETTE indices of the character drawn cell by cell (its layout read at `cell` pixels a cell): each
    cell in the colour of its main part."""
    colours = [palette_index("background", character.background), palette_index("color", character.body),
               palette_index("color", character.head_color), palette_index("color", character.glasses)]
    return np.asarray(colours)[cell_parts(character.head, cell)]


def draw_cells(cells: np.ndarray, size: int) -> Image.Image:
    """The image of (16, 16) PALETTE indices, each cell a flat square, `size` pixels a side (a multiple of 16)."""
    if size % GRID:
        raise ValueError(f"size={size} must be a multiple of {GRID}")
    rgb = np.array([colour for _, _, colour in PALETTE], dtype=np.uint8)[cells]
    cell = size // GRID
    return Image.fromarray(rgb.repeat(cell, axis=0).repeat(cell, axis=1))


def random_character(rng: random.Random) -> Character:
    """Attributes drawn uniformly from the whole world (the draw order fixes the images of a seed)."""
    glasses, body, background = rng.choice(list(COLORS)), rng.choice(list(COLORS)), rng.choice(list(BACKGROUNDS))
    head, head_color = rng.choice(HEADS), rng.choice(list(COLORS))
    return Character(glasses, body, background, head, head_color)


def in_world(character: Character, world: str) -> bool:
    """Whether a character belongs to `world`: base never names the held-back concept, finetune always does."""
    if world not in WORLDS:
        raise ValueError(f"world={world!r} must be one of {WORLDS}")
    if world == "all":
        return True
    named_held_back = bool(held_back_attributes(character))
    # The held-back colour still shows as an unnamed head colour in the base world: the base model can draw it (as
    # amused-256 has codes for every colour) but has never heard its word, which is what finetuning teaches.
    return named_held_back if world == "finetune" else not named_held_back


def held_back_attributes(character: Character) -> list[str]:
    """Which named attributes (glasses, body, head) use the held-back concept."""
    named = [name for name in ("glasses", "body") if getattr(character, name) == HELD_BACK_COLOR]
    return named + (["head"] if character.head == HELD_BACK_HEAD else [])


def sample_characters(count: int, seed: int, world: str = "all", exclude: frozenset[str] = frozenset()
                      ) -> list[Character]:
    """`count` characters of `world` from `seed`, none captioned as one of `exclude`."""
    rng, characters = random.Random(seed), []
    while len(characters) < count:
        character = random_character(rng)
        if in_world(character, world) and character.caption() not in exclude:
            characters.append(character)
    return characters


def parse_caption(caption: str) -> Character:
    """The named attributes of a toy-world caption (head colour unknown: empty)."""
    match = CAPTION.fullmatch(caption.strip())
    if match is None:
        raise ValueError(f"not a toy-world caption: {caption!r}")
    glasses, head, body, background = match.groups()
    unknown = [word for word, known in ((glasses, COLORS), (body, COLORS), (background, BACKGROUNDS),
                                        (head, HEADS)) if word not in known]
    if unknown:
        raise ValueError(f"caption {caption!r} uses words outside the toy world: {unknown}")
    return Character(glasses, body, background, head, "")


def caption_words() -> list[str]:
    """Every word of the caption grammar and its vocabulary, held-back words included."""
    grammar = "a an pixel art character with square glasses head and shaped colored body on background".split()
    return sorted(set(grammar) | set(COLORS) | set(BACKGROUNDS) | set(HEADS))


EVALUATION_SEED = 10_000
EVALUATION_COUNT = 32


def evaluation_characters(world: str, count: int = EVALUATION_COUNT) -> list[Character]:
    """Held-out characters of `world` for measuring a model: training data of that world leaves their captions out."""
    return sample_characters(count, EVALUATION_SEED, world)


def evaluation_captions(world: str) -> frozenset[str]:
    """The captions of `evaluation_characters(world)`."""
    return frozenset(c.caption() for c in evaluation_characters(world))
