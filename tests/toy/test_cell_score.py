"""The strict reading of toy-world images: every cell against the ideal drawing of the prompt."""

from __future__ import annotations

import numpy as np
import pytest

from amused_lightning.toy.cell_score import CLEAN, cells_right, read_cells
from amused_lightning.toy.image_metrics import ToyWorldScore
from amused_lightning.toy.world import (
    HEADS,
    PALETTE,
    PARTS,
    Character,
    cell_parts,
    draw_cells,
    draw_character,
    ideal_cells,
    palette_index,
    sample_characters,
)

CHARACTER = Character("red", "blue", "light", "cube", "green")


def score(character: Character, cells: np.ndarray) -> dict[str, float]:
    return ToyWorldScore()([character.caption()], [draw_cells(cells, 64)])


@pytest.mark.parametrize("size", [64, 128])
def test_ideal_drawings_and_the_worlds_own_drawings_score_one(size):
    characters = sample_characters(60, seed=1)
    for images in ([draw_cells(ideal_cells(c, size // 16), size) for c in characters],
                   [draw_character(c, size) for c in characters]):
        scores = ToyWorldScore()([c.caption() for c in characters], images)
        assert scores["toy_cells"] == scores["toy_clean"] == scores["toy_clean_head"] == 1.0


def test_one_wrong_cell_lowers_the_share_by_one_cell_and_keeps_the_image_clean():
    cells = ideal_cells(CHARACTER)
    cells[0, 0] = palette_index("color", "pink")
    scores = score(CHARACTER, cells)
    assert scores["toy_cells"] == pytest.approx(1 - 1 / 256)
    assert scores["toy_cells_background"] < 1.0 == scores["toy_cells_head"] == scores["toy_clean"]
    assert scores["toy_accuracy"] == 1.0, "the attribute vote does not see a speckle"


def test_a_wrong_colour_in_half_the_head_fails_the_clean_test():
    cells, parts = ideal_cells(CHARACTER), cell_parts(CHARACTER.head)
    head = np.argwhere(parts == PARTS.index("head"))
    for row, col in head[: len(head) // 2]:
        cells[row, col] = palette_index("color", "yellow")
    scores = score(CHARACTER, cells)
    assert scores["toy_clean"] == scores["toy_clean_head"] == 0.0
    assert scores["toy_cells_head"] == pytest.approx(0.5, abs=0.05) and scores["toy_cells"] < CLEAN


def test_confetti_heads_are_wrong_whatever_colour_the_head_is_taken_to_be():
    cells, parts = ideal_cells(CHARACTER), cell_parts(CHARACTER.head)
    rng = np.random.default_rng(0)
    colours = [i for i, (kind, _, _) in enumerate(PALETTE) if kind == "color"]
    cells[parts == PARTS.index("head")] = rng.choice(colours, size=(parts == PARTS.index("head")).sum())
    assert score(CHARACTER, cells)["toy_cells_head"] < 0.5


def test_the_head_colour_is_free_and_the_held_back_prompts_are_scored_apart():
    teal = Character("teal", "red", "sunny", "crown", "")
    known = Character("red", "blue", "dark", "lips", "")
    images = [draw_character(Character("teal", "red", "sunny", "crown", "purple"), 64),
              draw_character(Character("red", "blue", "dark", "cube", "orange"), 64)]
    scores = ToyWorldScore()([teal.caption(), known.caption()], images)
    assert scores["toy_cells_held_back"] == scores["toy_clean_held_back"] == 1.0
    assert scores["toy_cells_known"] < 1.0 and scores["toy_clean_known"] == 0.0, "a cube head is not a lips head"


def test_cells_are_read_back_from_drawings_of_every_head():
    for head in HEADS:
        character = Character("orange", "pink", "orange", head, "teal")
        right, parts = cells_right(character, draw_character(character, 64))
        assert right.all() and set(np.unique(parts)) == set(range(len(PARTS)))
        assert (read_cells(draw_character(character, 64)) == ideal_cells(character)).all()
