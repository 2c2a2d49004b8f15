"""Write a toy-world dataset (nouns-like pixel-art characters with captions) as a local parquet dataset.

    python scripts/make_toy_dataset.py data/toy-nouns --num-images 64
    python scripts/make_toy_dataset.py data/toy-teal-crown --world finetune --num-images 72 --prior-images 72 --size 64

`--world base` leaves out the held-back concept (the colour teal and the crown head), `--world finetune` draws only
characters that name it (both leave out their world's held-out evaluation prompts), `--world all` (the default)
draws the whole world. `--prior-images N` adds N characters of the base world (prior preservation, as DreamBooth
does it: a finetune that also sees what the base model knew does not forget it while it learns the new concept).
The folder loads offline with `datasets.load_dataset(folder, split="train")` (columns `image`, `text`).
`--shards N` writes N files; `--format webdataset` writes tar shards (`<key>.png`, `<key>.txt`) for
`data.source: WebDataset` instead of parquet files.

    python scripts/make_toy_dataset.py data/toy-shards --format webdataset --shards 8 --num-images 256
"""

from __future__ import annotations

import argparse
import io
import tarfile
from pathlib import Path

import datasets

from amused_lightning.toy.world import GRID, WORLDS, draw_character, evaluation_captions, sample_characters


def build(output: Path, num_images: int, size: int, seed: int, world: str = "all",
          exclude: frozenset[str] = frozenset(), prior_images: int = 0, shards: int = 1,
          file_format: str = "parquet") -> list[Path]:
    """Write `num_images` characters of `world`, then `prior_images` of the base world, in `shards` files:
    output/data/train-0000K-of-0000N.parquet, or output/shard-0000K.tar (WebDataset), replacing the files an earlier
    run wrote there (which the loaders would read too). Returns the files."""
    characters = sample_characters(num_images, seed, world, held_out(world, exclude))
    # Another seed for the prior images, so they do not depend on how many of the world's draws were taken.
    characters += sample_characters(prior_images, seed + 1, "base", held_out("base", exclude))
    images, captions = [draw_character(c, size) for c in characters], [c.caption() for c in characters]
    parts = [range(k * len(characters) // shards, (k + 1) * len(characters) // shards) for k in range(shards)]
    for stale in [*output.glob("shard-*.tar"), *output.glob("data/train-*-of-*.parquet")]:
        stale.unlink()
    if file_format == "webdataset":
        return [write_tar(output / f"shard-{k:05d}.tar", [(f"{i:06d}", images[i], captions[i]) for i in part])
                for k, part in enumerate(parts)]
    features = datasets.Features({"image": datasets.Image(), "text": datasets.Value("string")})
    targets = []
    for k, part in enumerate(parts):
        dataset = datasets.Dataset.from_dict({"image": [images[i] for i in part], "text": [captions[i] for i in part]},
                                             features=features)
        targets.append(output / "data" / f"train-{k:05d}-of-{shards:05d}.parquet")
        targets[-1].parent.mkdir(parents=True, exist_ok=True)
        dataset.to_parquet(str(targets[-1]))
    return targets


def write_tar(path: Path, samples: list[tuple]) -> Path:
    """A WebDataset shard: for each (key, image, caption), `<key>.png` and `<key>.txt`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for key, image, caption in samples:
            png = io.BytesIO()
            image.save(png, format="PNG")
            for name, data in ((f"{key}.png", png.getvalue()), (f"{key}.txt", caption.encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


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
    parser.add_argument("--shards", type=int, default=1, help="how many files to write the images into")
    parser.add_argument("--format", choices=("parquet", "webdataset"), default="parquet",
                        help="parquet files (data.source: HFDataset or HFStream) or tar shards (WebDataset)")
    args = parser.parse_args()
    if args.shards < 1:
        parser.error(f"--shards {args.shards} must be at least 1")
    if args.num_images < 0 or args.prior_images < 0:
        parser.error(f"--num-images {args.num_images} and --prior-images {args.prior_images} must be 0 or more")
    if args.size % GRID:
        parser.error(f"--size {args.size} must be a multiple of {GRID}")
    exclude = frozenset(args.exclude_prompts.read_text().splitlines()) if args.exclude_prompts else frozenset()
    targets = build(args.output, args.num_images, args.size, args.seed, args.world, exclude, args.prior_images,
                    args.shards, args.format)
    prior = f" and {args.prior_images} of the base world" if args.prior_images else ""
    where = targets[0] if len(targets) == 1 else f"{len(targets)} files in {targets[0].parent}"
    print(f"wrote {args.num_images} images of the {args.world} world{prior} to {where}")


if __name__ == "__main__":
    main()
