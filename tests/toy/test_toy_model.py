"""The embedded `toy` pipeline: it loads by name and in diffusers, draws the base world; the script rebuilds it."""

from __future__ import annotations

import warnings

import pytest
import torch

from amused_lightning.model.amused import AmusedModel
from amused_lightning.model.components import EMBEDDED, load_components
from amused_lightning.toy.image_metrics import ToyWorldScore
from amused_lightning.toy.world import evaluation_characters


@pytest.fixture(scope="module")
def toy():
    return AmusedModel.from_pretrained("toy")


def draw(model: AmusedModel, prompts: list[str], seed: int = 0) -> list:
    return model.generate(prompts, seed=seed)


def test_shipped_pipeline_is_small_safetensors():
    files = [path for path in EMBEDDED["toy"].rglob("*") if path.is_file()]
    assert sum(path.stat().st_size for path in files) < 25e6
    assert not [path for path in files if path.suffix in (".bin", ".pt", ".ckpt")]


def test_toy_name_means_the_embedded_pipeline_even_beside_a_folder_called_toy(tmp_path, monkeypatch, toy):
    (tmp_path / "toy").mkdir()
    monkeypatch.chdir(tmp_path)
    again = load_components("toy")
    assert torch.equal(next(again.transformer.parameters()), next(toy.transformer.parameters()))


# BENCHMARKS.md holds the shipped model to 97% of cells right and 80% of images clean on 24 prompts, 2 images each;
# these 8 prompts, one image each, keep a margin for sampling noise.
BASE_CELLS_FLOOR, BASE_CLEAN_FLOOR = 0.97, 0.75


def test_base_model_draws_clean_characters_for_held_out_base_prompts(toy):
    prompts = [c.caption() for c in evaluation_characters("base", 8)]
    scores = ToyWorldScore()(prompts, draw(toy, prompts))
    assert scores["toy_cells"] >= BASE_CELLS_FLOOR and scores["toy_clean"] >= BASE_CLEAN_FLOOR, scores


def test_base_model_rarely_draws_the_held_back_concept(toy):
    prompts = [c.caption() for c in evaluation_characters("finetune", 8)]
    assert ToyWorldScore()(prompts, draw(toy, prompts))["toy_held_back"] <= 0.2


def test_base_model_reads_a_head_colour_from_the_rest_of_the_head(toy):
    from toy_probes import context_probe

    probe = context_probe(toy)
    # Most of the probability once the upper head rows are shown; near chance (1/8) from the prompt alone, whose
    # head colour is often unnamed.
    assert probe["revealed"] > 0.5 and probe["revealed"] > probe["masked"] + 0.3, probe


def test_amused_pipeline_loads_the_shipped_folder_and_draws_our_images(toy):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from diffusers import AmusedPipeline

        pipe = AmusedPipeline.from_pretrained(str(EMBEDDED["toy"]))
    prompts = [c.caption() for c in evaluation_characters("base", 2)]
    theirs = pipe(prompts, generator=torch.Generator().manual_seed(0)).images
    ours = draw(toy, prompts)
    assert [image.tobytes() for image in theirs] == [image.tobytes() for image in ours]


def test_rebuild_script_runs_a_few_steps_and_writes_a_loadable_pipeline(tmp_path):
    from build_toy_model import main, toy_tokenizer

    main([str(tmp_path / "toy"), "--vq-steps", "2", "--vq-batch-size", "2", "--steps", "2", "--batch-size", "2",
          "--num-images", "8", "--log-every", "1"])
    model = AmusedModel.from_pretrained(str(tmp_path / "toy"))
    images = draw(model, [evaluation_characters("base", 1)[0].caption()])
    assert images[0].size == (64, 64)
    assert toy_tokenizer().tokenize("a teal crown-shaped head") == ["a</w>", "teal</w>", "crown</w>", "-</w>",
                                                                   "shaped</w>", "head</w>"]
