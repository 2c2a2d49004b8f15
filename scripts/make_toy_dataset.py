"""Write a toy-world dataset (nouns-like pixel-art characters with captions) as a local parquet dataset.

    python scripts/make_toy_dataset.py data/toy-nouns --num-images 64
    python scripts/make_toy_dataset.py data/toy-teal-crown --world finetune --num-images 72 --prior-images 72 --size 64

`--world base` leaves out the held-back concept (the colour teal and the crown head), `--world finetune` draws only
characters that name it (both leave out their world's held-out evaluation prompts), `--world all` (the default)
draws the whole world. `--prior-images N` adds N characters of the base world (prior preservation, as DreamBooth
does it: a finetune that also sees what the base model knew does not forget it while it learns the new concept).
The folder loads offline with `datasets.load_dataset(folder, split="train")` (columns `image`, `text`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import datasets

from amused_lightning.toy_world import GRID, WORLDS, draw_character, evaluation_captions, sample_characters


def build(output: Path, num_images: int, size: int, seed: int, world: str = "all",
          exclude: frozenset[str] = frozenset(), prior_images: int = 0) -> Path:
    """Write `num_images` characters of `world`, then `prior_images` of the base world, to
    output/data/train-00000-of-00001.parquet."""
    characters = sample_characters(num_images, seed, world, held_out(world, exclude))
    # Another seed for the prior images, so they do not depend on how many of the world's draws were taken.
    characters += sample_characters(prior_images, seed + 1, "base", held_out("base", exclude))
    features = datasets.Features({"image": datasets.Image(), "text": datasets.Value("string")})
    dataset = datasets.Dataset.from_dict({"image": [draw_character(c, size) for c in characters],
                                          "text": [c.caption() for c in characters]}, features=features)
    target = output / "data" / "train-00000-of-00001.parquet"
    target.parent.mkdir(parents=True, exist_ok=True)
    dataset.to_parquet(str(target))
    return target


def held_out(world: str, exclude: frozenset[str]) -> frozenset[str]:
    """`exclude` plus the world's held-out evaluation captions (the benchmark's and the quickstart's), which are never
    training data."""
    return exclude if world == "all" else exclude | evaluation_captions(world)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", type=Path, help="folder to write (its data/ subfolder holds the parquet file)")
    parser.add_argument("--num-images", type=int, default=64)
    parser.add_argument("--size", type=int, default=128, help="side of each image in pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--world", choices=WORLDS, default="all", help="which part of the toy world to draw")
    parser.add_argument("--prior-images", type=int, default=0,
                        help="also draw this many characters of the base world (prior preservation)")
    parser.add_argument("--exclude-prompts", type=Path, help="a file of captions (one a line) never to draw")
    args = parser.parse_args()
    if args.num_images < 0 or args.prior_images < 0:
        parser.error(f"--num-images {args.num_images} and --prior-images {args.prior_images} must be 0 or more")
    if args.size % GRID:
        parser.error(f"--size {args.size} must be a multiple of {GRID}")
    exclude = frozenset(args.exclude_prompts.read_text().splitlines()) if args.exclude_prompts else frozenset()
    target = build(args.output, args.num_images, args.size, args.seed, args.world, exclude, args.prior_images)
    prior = f" and {args.prior_images} of the base world" if args.prior_images else ""
    print(f"wrote {args.num_images} images of the {args.world} world{prior} to {target}")


if __name__ == "__main__":
    main()
