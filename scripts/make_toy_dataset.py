"""Write a nouns-like toy dataset (pixel-art characters with captions) as a local Hugging Face parquet dataset.

    python scripts/make_toy_dataset.py data/toy-nouns --num-images 64

The folder loads offline with `datasets.load_dataset(folder, split="train")` (columns `image`, `text`).
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import datasets
from PIL import Image, ImageDraw

COLORS = {"red": (220, 40, 40), "orange": (245, 140, 30), "blue": (40, 80, 220), "purple": (140, 60, 190),
          "green": (50, 170, 70), "yellow": (240, 210, 40), "pink": (240, 130, 180), "teal": (30, 160, 160)}
BACKGROUNDS = {"dark": (30, 30, 40), "light": (225, 225, 215), "sunny": (250, 225, 120), "orange": (250, 160, 80)}
HEADS = ("baseball", "lips", "microwave", "cube", "mushroom", "crown")
GRID = 16  # pixel-art cells per side


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


def make_character(rng: random.Random, size: int) -> tuple[Image.Image, str]:
    """One character image and its caption."""
    glasses, body, background = rng.choice(list(COLORS)), rng.choice(list(COLORS)), rng.choice(list(BACKGROUNDS))
    head, head_color = rng.choice(HEADS), rng.choice(list(COLORS))
    cell = size // GRID
    image = Image.new("RGB", (size, size), BACKGROUNDS[background])
    draw = ImageDraw.Draw(image)
    draw.rectangle([5 * cell, 9 * cell, 11 * cell - 1, 16 * cell - 1], fill=COLORS[body])
    draw_head(draw, head, COLORS[head_color], cell)
    for left in (5, 9):
        draw.rectangle([left * cell, 4 * cell, (left + 2) * cell - 1, 6 * cell - 1], fill=COLORS[glasses])
    article = "an" if background[0] in "aeiou" else "a"
    caption = (f"a pixel art character with square {glasses} glasses, a {head}-shaped head and a {body}-colored "
               f"body on {article} {background} background")
    return image, caption


def build(output: Path, num_images: int, size: int, seed: int) -> Path:
    """Write `num_images` characters to output/data/train-00000-of-00001.parquet."""
    rng = random.Random(seed)
    rows = [make_character(rng, size) for _ in range(num_images)]
    features = datasets.Features({"image": datasets.Image(), "text": datasets.Value("string")})
    dataset = datasets.Dataset.from_dict({"image": [r[0] for r in rows], "text": [r[1] for r in rows]},
                                         features=features)
    target = output / "data" / "train-00000-of-00001.parquet"
    target.parent.mkdir(parents=True, exist_ok=True)
    dataset.to_parquet(str(target))
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", type=Path, help="folder to write (its data/ subfolder holds the parquet file)")
    parser.add_argument("--num-images", type=int, default=64)
    parser.add_argument("--size", type=int, default=128, help="side of each image in pixels")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.size % GRID:
        parser.error(f"--size {args.size} must be a multiple of {GRID}")
    print(f"wrote {args.num_images} images to {build(args.output, args.num_images, args.size, args.seed)}")


if __name__ == "__main__":
    main()
