"""Whether data loading keeps up: samples/s of the training loader alone (no model step), on images that need
decoding, resizing, random cropping and prompt tokenization every step (the path the pre-encoded cache skips), with
0, 1, 2 ... loader workers; pinned memory where CUDA is available (as a fit loads).

    python scripts/loader_speed.py [--resolution 256] [--batch 16] [--workers 0 1 2] [--images 256] [--batches 40]

Images are PNGs 25% wider than tall (so every step resizes and crops), captioned by their file names.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from amused_lightning.data import AmusedDataModule, ImageFolder
from amused_lightning.model.components import load_components
from amused_lightning.model.encoding import FrozenEncoders


def make_images(folder: Path, count: int, height: int) -> Path:
    """`count` blocky PNG images of `height` x 1.25 `height` px, written once."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        path = folder / f"a pixel art character number {i}.png"
        if not path.exists():
            cells = rng.integers(0, 256, (16, 20, 3), dtype=np.uint8)
            Image.fromarray(cells).resize((height * 5 // 4, height), Image.NEAREST).save(path)
    return folder


def loader_rate(images: Path, resolution: int, batch: int, workers: int, batches: int, cache_dir: Path) -> float:
    """Samples per second the training loader yields, after its first batch (worker start-up left out)."""
    parts = load_components("tiny")  # the tokenizer is what the pixel path uses; the encoders stay idle
    datamodule = AmusedDataModule(ImageFolder(str(images)), resolution=resolution, batch_size=batch,
                                  num_workers=workers, cache="off", cache_dir=str(cache_dir))
    datamodule.connect(FrozenEncoders(parts.tokenizer, parts.vqvae, parts.text_encoder, "loader-speed", False))
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    seen, iterator = 0, iter(loader)
    next(iterator)
    start = time.perf_counter()
    while seen < batches * batch:
        try:
            seen += len(next(iterator)["micro_conds"])
        except StopIteration:
            iterator = iter(loader)
    return seen / (time.perf_counter() - start)


def loader_table(resolution: int, batch: int, workers: list[int], images: int, batches: int, workdir: Path) -> str:
    """Markdown table of loader samples/s per worker count."""
    folder = make_images(workdir / f"images-{resolution}-{images}", images, resolution)
    lines = ["| resolution | batch | workers | pinned memory | samples/s |", "|---|---|---|---|---|"]
    for count in workers:
        rate = loader_rate(folder, resolution, batch, count, batches, workdir / "cache")
        lines.append(f"| {resolution} | {batch} | {count} | {torch.cuda.is_available()} | {rate:.0f} |")
        print(lines[-1], flush=True)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--workers", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batches", type=int, default=40, help="batches timed per worker count")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "amused-loader-speed")
    args = parser.parse_args()
    print(loader_table(args.resolution, args.batch, args.workers, args.images, args.batches, args.workdir))


if __name__ == "__main__":
    main()
