"""Measure streamed data (`data.source: WebDataset`): memory against the dataset's size, the rate of training batches,
and the rate at which a resumed run replays what it had read; write a section into BENCHMARKS.md.

    python scripts/stream_benchmark.py [--folder /tmp/stream-bench] [--small 2000] [--large 20000]

Writes two WebDataset copies of random 128 px JPEGs (`--small` and `--large` records in shards of 500), then, each in a
fresh process: reads every record of each through the shuffle buffer (peak resident memory), draws training batches
(decoded, cropped to 128 px, tokenized; batch 8, no loader workers), and replays records as a resume does (read and
checked, nothing decoded).
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import os
import platform
import resource
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from toy_benchmark import publish

SECTION = "## Streams (issue 11)"
SHARD_RECORDS = 500
SHUFFLE_BUFFER = 1000


def write_shards(folder: Path, count: int) -> None:
    """`count` random 128 px JPEGs with captions, in tar shards of SHARD_RECORDS (kept when already written)."""
    import numpy as np
    from PIL import Image

    if (folder / "done").exists():
        return
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(count)
    for shard in range(0, count, SHARD_RECORDS):
        with tarfile.open(folder / f"{shard // SHARD_RECORDS:05d}.tar", "w") as tar:
            for key in range(shard, min(count, shard + SHARD_RECORDS)):
                jpeg = io.BytesIO()
                Image.fromarray(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)).save(jpeg, "JPEG", quality=90)
                for name, data in ((f"{key:07d}.jpg", jpeg.getvalue()), (f"{key:07d}.txt", f"image {key}".encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    (folder / "done").touch()


def measure(folder: Path, what: str, amount: int) -> dict:
    """One measurement in this process (run through `--measure`): `read` every record through the shuffle buffer,
    `batches` training batches, or `replay` records as a resume does."""
    import random

    from amused_lightning.data.buckets import CropSize
    from amused_lightning.data.sources.webdataset import WebDataset
    from amused_lightning.data.stream_dataset import (
        Readers,
        StreamDataset,
        buffer_shuffled,
        light_batches,
        reader_records,
    )
    from amused_lightning.model.components import load_components

    source = WebDataset(str(folder / "*.tar"))
    readers = Readers(0, 1, 0, 1)
    started = time.perf_counter()
    if what == "batches":
        transform = dict(center_crop=False, random_flip=True, aesthetic_score=6.0)
        dataset = StreamDataset(source, frozenset(), load_components("tiny").tokenizer, CropSize(128, None, 8), 8, 0,
                                0, 1, SHUFFLE_BUFFER, transform, "skip")
        batches = iter(dataset)
        next(batches)  # the shuffle buffer fills first
        started = time.perf_counter()
        for _ in range(amount):
            next(batches)
    else:
        records = buffer_shuffled(reader_records(source, readers, 0, frozenset()), SHUFFLE_BUFFER, random.Random(0))
        if what == "replay":
            batches = light_batches(records, 8, CropSize(128, None, 8), lambda record, problem: None)
            for _ in range(amount // 8):
                next(batches)
        else:
            for _ in range(amount):
                next(records)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def disk_mb(folder: Path) -> float:
    """Megabytes of the shards in `folder`."""
    return sum(path.stat().st_size for path in folder.glob("*.tar")) / 1e6


def in_fresh_process(folder: Path, what: str, amount: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--measure", what, str(folder), str(amount)], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", type=Path, default=Path("/tmp/stream-bench"))
    parser.add_argument("--small", type=int, default=2000)
    parser.add_argument("--large", type=int, default=20000)
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--measure", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(Path(args.measure[1]), args.measure[0], int(args.measure[2]))))
        return
    sizes = {"small": args.small, "large": args.large}
    for name, count in sizes.items():
        write_shards(args.folder / name, count)
    reads = {name: in_fresh_process(args.folder / name, "read", count) for name, count in sizes.items()}
    batches = in_fresh_process(args.folder / "large", "batches", args.batches)
    replay = in_fresh_process(args.folder / "large", "replay", args.large)
    shard_mb = disk_mb(args.folder / "large") / args.large
    lines = [
        f"`python scripts/stream_benchmark.py` on {datetime.date.today()}, {os.cpu_count()} CPU cores "
        f"({platform.machine()}, load average {os.getloadavg()[0]:.1f} at the end), local disk. Data: random 128 px "
        f"JPEGs ({shard_mb * 1000:.0f} kB each) with captions, WebDataset shards of {SHARD_RECORDS}; shuffle buffer "
        f"{SHUFFLE_BUFFER}; each figure from a fresh process.", "",
        "| measurement | result |", "|---|---|",
        *[f"| every record of {sizes[name]:,} ({disk_mb(args.folder / name):.0f} MB of shards) read through the "
          f"shuffle buffer | peak resident memory {reads[name]['peak_rss_mb']:.0f} MB (the process, imports "
          f"included; {sizes[name] / reads[name]['seconds']:,.0f} records/s) |" for name in sizes],
        f"| training batches of 8, decoded, cropped, tokenized (`data.num_workers 0`) | "
        f"{args.batches * 8 / batches['seconds']:,.0f} samples/s |",
        f"| resume replay: {args.large:,} records read and batched, none decoded | "
        f"{args.large / replay['seconds']:,.0f} records/s ({replay['seconds']:.1f} s) |", "",
        "Memory holds the shuffle buffer's encoded images, not the dataset: ten times the records, about the same "
        "peak. A resume replays the records read since the run began; at the rate above, a million records of this "
        f"size take about {1e6 / (args.large / replay['seconds']) / 60:.1f} minutes for one reader; loader workers "
        "replay their shares side by side (remote shards: the download time instead).",
    ]
    publish(lines, SECTION)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
