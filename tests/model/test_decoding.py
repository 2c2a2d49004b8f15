import numpy as np
import pytest
import torch
from diffusers import AmusedPipeline

from amused_lightning.model.amused import AmusedModel
from amused_lightning.model.decoding import GenerationSettings

PROMPTS = ["a pixel art character with square red glasses", "a pixel art character"]


@pytest.mark.parametrize("steps, guidance, temperature", [(12, 10.0, (2.0, 0.0)), (4, 1.0, (1.0, 0.5)),
                                                           (1, 3.0, (2.0, 0.0))])
def test_sampler_matches_amused_pipeline(steps, guidance, temperature):
    model = AmusedModel.from_pretrained("tiny")
    settings = GenerationSettings(num_inference_steps=steps, guidance_scale=guidance, temperature=temperature,
                                  aesthetic_score=5.0)
    ours = model.generate(PROMPTS, settings, seed=11)
    pipe = AmusedPipeline(**vars(model.parts))
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(PROMPTS, num_inference_steps=steps, guidance_scale=guidance, temperature=temperature,
                  micro_conditioning_aesthetic_score=5.0, generator=torch.Generator().manual_seed(11)).images
    assert [image.size for image in ours] == [(64, 64)] * 2
    for mine, reference in zip(ours, theirs):
        assert np.array_equal(np.asarray(mine), np.asarray(reference))


def test_generation_depends_on_seed_and_resolution():
    model = AmusedModel.from_pretrained("tiny")
    settings = GenerationSettings(num_inference_steps=3)
    first, again = (model.generate(PROMPTS[:1], settings, seed=1) for _ in range(2))
    other = model.generate(PROMPTS[:1], settings, seed=2)
    assert np.array_equal(np.asarray(first[0]), np.asarray(again[0]))
    assert not np.array_equal(np.asarray(first[0]), np.asarray(other[0]))
    assert model.generate(PROMPTS[:1], settings, resolution=32)[0].size == (32, 32)
