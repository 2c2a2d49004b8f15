"""The sampler's random draws: from one generator for the whole batch (as AmusedPipeline draws), or from one generator
per image, so that an image does not depend on the others drawn beside it."""

from __future__ import annotations

from collections.abc import Callable

import torch

Generators = torch.Generator | list[torch.Generator] | None
"""One generator for the batch, one per image (dim 0), or None (the global generator)."""


def per_image(draw: Callable[[torch.Tensor, torch.Generator | None], torch.Tensor], tensor: torch.Tensor,
              generators: Generators) -> torch.Tensor:
    """`draw(tensor, generator)` over the whole batch with one generator, or image by image with one each."""
    if not isinstance(generators, list):
        return draw(tensor, generators)
    if len(generators) != tensor.shape[0]:
        raise ValueError(f"{len(generators)} generators for a batch of {tensor.shape[0]} images")
    return torch.cat([draw(row[None], generator) for row, generator in zip(tensor, generators)])


def seeded_generators(seed: int | list[int], device: torch.device) -> Generators:
    """A generator seeded by `seed` for the batch, or one per image from a list of seeds."""
    if isinstance(seed, list):
        return [torch.Generator(device=device).manual_seed(one) for one in seed]
    return torch.Generator(device=device).manual_seed(seed)
