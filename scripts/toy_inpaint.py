"""Inpainting on the `toy` base model: repaint the body of held-out base-world characters in a new colour.

    python scripts/toy_inpaint.py [--guidance-scale 10] [--grid inpaint.png]

For each of the 32 held-out base-world characters, a mask over the body box and the caption with another body colour
(never the held-back teal): how often the new colour is drawn and the other named attributes kept, and the share of
pixels outside the box within 24 levels of the start image, against text-to-image from the same captions.
"""

from __future__ import annotations

import argparse
import dataclasses
import random

import numpy as np
import torch
from PIL import Image

from amused_lightning.callbacks.validation_images import image_grid
from amused_lightning.model.amused import AmusedModel
from amused_lightning.model.decoding import GenerationSettings
from amused_lightning.model.start_images import StartImages
from amused_lightning.toy.image_metrics import read_attributes
from amused_lightning.toy.world import (
    BODY_BOX,
    COLORS,
    HELD_BACK_COLOR,
    Character,
    draw_character,
    evaluation_characters,
)

SIZE = 64
CLOSE = 24  # pixel levels: what the VQ reconstruction of a flat cell stays within


def recoloured(characters: list[Character], seed: int = 0) -> list[Character]:
    """Each character with another body colour of the base world."""
    rng = random.Random(seed)
    return [dataclasses.replace(c, body=rng.choice([k for k in COLORS if k not in (c.body, HELD_BACK_COLOR)]))
            for c in characters]


def body_mask() -> Image.Image:
    """White over the body box, black elsewhere."""
    mask = Image.new("RGB", (SIZE, SIZE))
    cell = SIZE // 16
    left, top, right, bottom = BODY_BOX
    mask.paste((255, 255, 255), (left * cell, top * cell, right * cell, bottom * cell))
    return mask


def attribute_rates(characters: list[Character], images: list[Image.Image]) -> dict[str, float]:
    """Per named attribute, the share of images that show it."""
    rows = [read_attributes(character, image) for character, image in zip(characters, images)]
    return {name: float(np.mean([row[name] for row in rows])) for name in rows[0]}


def kept_outside(starts: list[Image.Image], images: list[Image.Image], mask: Image.Image) -> float:
    """Share of the pixels outside the mask within CLOSE levels of the start image in every channel."""
    outside = np.asarray(mask)[..., 0] == 0
    return float(np.mean([np.all(np.abs(np.asarray(image, int) - np.asarray(start, int)) <= CLOSE, -1)[outside].mean()
                          for start, image in zip(starts, images)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--guidance-scale", type=float, default=10.0)
    parser.add_argument("--grid", help="write starts, inpainted and text-to-image images of 6 characters here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    pipeline = AmusedModel.from_pretrained("toy")
    characters = evaluation_characters("base")
    targets, mask = recoloured(characters), body_mask()
    starts = [draw_character(character, SIZE) for character in characters]
    prompts = [target.caption() for target in targets]
    settings = GenerationSettings(guidance_scale=args.guidance_scale)
    inpainted = pipeline.generate(prompts, settings, start=StartImages(starts, [mask] * len(starts)))
    plain = pipeline.generate(prompts, settings)
    for name, images in (("inpainted", inpainted), ("text-to-image", plain)):
        print(f"{name}: attributes {attribute_rates(targets, images)}, "
              f"pixels kept outside the mask {kept_outside(starts, images, mask):.3f}")
    if args.grid:
        image_grid(starts[:6] + inpainted[:6] + plain[:6], columns=6).save(args.grid)


if __name__ == "__main__":
    main()
