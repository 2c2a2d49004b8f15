"""Seconds to save a full finetune's checkpoint, written through the page cache or written behind, A/B interleaved.

    python scripts/checkpoint_write_speed.py [--gigabytes 7.2] [--pairs 3] [--folder /tmp]

Each save runs in a fresh process, as the save at the end of a fit does: it fills a checkpoint of `--gigabytes` of
fp32 tensors (by default the size of amused-256's 603 M weights and AdamW's two moments) in 1.2 M-element pieces,
then saves it once, either
- "page cache": torch.save into a file opened for writing, as the fit wrote before (the kernel keeps every page it
  is given in its cache and writes it to disk later), or
- "write-behind": `save_atomically`, as the fit writes now (on disk every 64 MB, then dropped from the cache).
It prints the seconds of the save itself, its system-CPU seconds, and how far the page cache grew.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PIECE = 1_230_000
WRITERS = ("page cache", "write-behind")


def cached_bytes() -> int:
    """The page cache's size (Linux's /proc/meminfo "Cached"), 0 where there is none to read."""
    meminfo = Path("/proc/meminfo")
    if not meminfo.exists():
        return 0
    line = next(line for line in meminfo.read_text().splitlines() if line.startswith("Cached:"))
    return int(line.split()[1]) * 1024


def save_once(writer: str, gigabytes: float, folder: Path) -> dict[str, float]:
    """In this process: fill a checkpoint, save it with `writer`, and measure the save."""
    import torch

    from amused_lightning.run.checkpoint_file import save_atomically

    pieces = max(1, round(gigabytes * 1e9 / 4 / PIECE / 3))
    checkpoint = {"state_dict": {f"weight.{i}": torch.randn(PIECE) for i in range(pieces)},
                  "optimizer_states": [{"state": {i: {"step": torch.tensor(1.0), "exp_avg": torch.randn(PIECE),
                                                      "exp_avg_sq": torch.rand(PIECE)} for i in range(pieces)}}]}
    path = folder / "last.ckpt"
    cache, start, cpu = cached_bytes(), time.perf_counter(), os.times()
    if writer == "write-behind":
        save_atomically(checkpoint, path)
    else:
        with open(path, "wb") as file:
            torch.save(checkpoint, file)
    seconds, system = time.perf_counter() - start, os.times().system - cpu.system
    grown = cached_bytes() - cache
    size = path.stat().st_size
    path.unlink()
    return {"seconds": seconds, "system": system, "cache_gb": grown / 1e9, "size_gb": size / 1e9}


def run_child(writer: str, gigabytes: float, folder: Path) -> dict[str, float]:
    """save_once in a fresh process, in a fresh folder under `folder`."""
    with tempfile.TemporaryDirectory(dir=folder) as scratch:
        out = subprocess.run([sys.executable, __file__, "--child", writer, "--gigabytes", str(gigabytes),
                              "--folder", scratch], check=True, capture_output=True, text=True).stdout
    return json.loads(out.splitlines()[-1])


def spread(values: list[float]) -> str:
    """`median (min-max)`."""
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gigabytes", type=float, default=7.2)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--folder", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--child", choices=WRITERS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(save_once(args.child, args.gigabytes, args.folder)))
        return
    results: dict[str, list[dict[str, float]]] = {writer: [] for writer in WRITERS}
    for pair in range(args.pairs):
        for writer in WRITERS if pair % 2 == 0 else WRITERS[::-1]:
            results[writer].append(run_child(writer, args.gigabytes, args.folder))
            print(f"pair {pair + 1}/{args.pairs} {writer}: {results[writer][-1]['seconds']:.2f} s", flush=True)
    print("\n| writer | checkpoint GB | save s | system CPU s | page cache growth GB |\n|---|---|---|---|---|")
    for writer, runs in results.items():
        print(f"| {writer} | {runs[0]['size_gb']:.2f} | {spread([r['seconds'] for r in runs])} | "
              f"{spread([r['system'] for r in runs])} | {spread([r['cache_gb'] for r in runs])} |")


if __name__ == "__main__":
    main()
