"""Write a toy-world dataset (nouns-like pixel-art characters with captions) as a local parquet dataset.

    python scripts/make_toy_dataset.py data/toy-nouns --num-images 64
    python scripts/make_toy_dataset.py data/toy-teal-crown --world finetune --num-images 48 --size 64

`--world base` leaves out the held-back concept (the colour teal and the crown head), `--world finetune` draws only
characters that name it (both leave out their world's held-out evaluation prompts), `--world all` (the default)
draws the whole world. The folder loads offline with
`datasets.load_dataset(folder, split="train")` (columns `image`, `text`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import datasets

from amused_lightning.toy_world import GRID, WORLDS, draw_character, evaluation_captions, sample_characters


def build(output: Path, num_images: int, size: int, seed: int, world: str = "all",
          exclude: frozenset[str] = frozenset()) -> Path:
    """Write `num_images` characters of `world` to output/data/train-00000-of-00001.parquet."""
    if world != "all":
        # The world's held-out evaluation prompts (the benchmark's and the quickstart's) are never training data.
        exclude = exclude | evaluation_captions(world)
    characters = sample_characters(num_images, seed, world, exclude)
    features = datasets.Features({"image": datasets.Image(), "text": datasets.Value("string")})
    dataset = datasets.Dataset.from_dict({"image": [draw_character(c, size) for c in characters],
                                          "text": [c.caption() for c in characters]}, features=features)
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
    parser.add_argument("--world", choices=WORLDS, default="all", help="which part of the toy world to draw")
    parser.add_argument("--exclude-prompts", type=Path, help="a file of captions (one a line) never to draw")
    args = parser.parse_args()
    if args.size % GRID:
        parser.error(f"--size {args.size} must be a multiple of {GRID}")
    exclude = frozenset(args.exclude_prompts.read_text().splitlines()) if args.exclude_prompts else frozenset()
    target = build(args.output, args.num_images, args.size, args.seed, args.world, exclude)
    print(f"wrote {args.num_images} images of the {args.world} world to {target}")


if __name__ == "__main__":
    main()
