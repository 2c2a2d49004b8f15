"""The toy world, its split, caption parsing, and the toy-world scorer on drawn images."""

from __future__ import annotations

import dataclasses

import pytest

from amused_lightning.toy.image_metrics import ClipScore, ToyWorldScore, evaluate_image_metrics, palette_cell_agreement
from amused_lightning.toy.world import (
    HELD_BACK_COLOR,
    HELD_BACK_HEAD,
    Character,
    draw_character,
    evaluation_captions,
    held_back_attributes,
    parse_caption,
    sample_characters,
)


def test_base_world_never_names_the_held_back_concept_and_finetune_world_always_does():
    base, finetune = sample_characters(300, seed=0, world="base"), sample_characters(100, seed=0, world="finetune")
    assert not any(held_back_attributes(c) for c in base) and HELD_BACK_COLOR not in " ".join(c.caption() for c in base)
    assert any(c.head_color == HELD_BACK_COLOR for c in base), "the colour itself is drawn, as an unnamed head colour"
    assert all(held_back_attributes(c) for c in finetune)
    assert {c.head for c in finetune} >= {HELD_BACK_HEAD} and {c.body for c in finetune} >= {HELD_BACK_COLOR}


def test_dataset_worlds_leave_out_their_evaluation_prompts(tmp_path):
    import datasets

    from make_toy_dataset import build

    build(tmp_path, num_images=200, size=64, seed=0, world="finetune", prior_images=100)
    captions = datasets.load_dataset(str(tmp_path), split="train")["text"]
    finetune, prior = [set(map(parse_caption, part)) for part in (captions[:200], captions[200:])]
    assert len(captions) == 300 and len(finetune) > 100 and len(prior) > 50
    assert all(held_back_attributes(c) for c in finetune) and not any(held_back_attributes(c) for c in prior)
    assert not set(captions) & (evaluation_captions("finetune") | evaluation_captions("base"))


def test_captions_parse_back_into_their_named_attributes():
    for character in sample_characters(50, seed=3):
        assert parse_caption(character.caption()) == dataclasses.replace(character, head_color="")
    with pytest.raises(ValueError, match="outside the toy world"):
        parse_caption(Character("gold", "red", "dark", "cube", "red").caption())
    with pytest.raises(ValueError, match="not a toy-world caption"):
        parse_caption("a cat")


@pytest.mark.parametrize("size", [64, 128])
def test_scorer_reads_every_attribute_of_drawn_images(size):
    characters = sample_characters(40, seed=5)
    scores = ToyWorldScore()([c.caption() for c in characters], [draw_character(c, size) for c in characters])
    assert scores["toy_accuracy"] == scores["toy_head"] == scores["toy_held_back"] == 1.0


def test_scorer_gives_zero_to_swapped_colours_and_a_wrong_head():
    drawn = Character("red", "blue", "dark", "crown", "green")
    swapped = Character("blue", "red", "light", "lips", "")
    scores = ToyWorldScore()([swapped.caption()], [draw_character(drawn, 64)])
    assert scores["toy_accuracy"] == 0.0 and "toy_held_back" not in scores


def test_metrics_are_logged_under_val_names():
    character = Character("teal", "red", "sunny", "cube", "pink")
    scores = evaluate_image_metrics([ToyWorldScore()], [character.caption()], [draw_character(character, 64)])
    assert scores["val/toy_accuracy"] == scores["val/toy_held_back"] == 1.0


def test_palette_cell_agreement_counts_cells_of_the_same_colour():
    image = draw_character(Character("red", "blue", "dark", "cube", "green"), 64)
    other = draw_character(Character("red", "blue", "light", "cube", "green"), 64)
    assert palette_cell_agreement(image, image) == 1.0 > palette_cell_agreement(image, other)


def test_clip_score_fails_up_front_without_its_weights(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="model_name_or_path=.*no config.json"):
        ClipScore(str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="model_name_or_path='nobody/no-clip'.*offline"):
        ClipScore("nobody/no-clip")
