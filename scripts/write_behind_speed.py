"""Seconds to write a large file through the page cache or written behind, A/B interleaved: a full finetune's
checkpoint, or a transformer's safetensors weights as an export writes them.

    python scripts/write_behind_speed.py [--file checkpoint|weights] [--gigabytes G] [--pairs 3] [--folder /tmp]

Each write runs in a fresh process, as the save at the end of a fit does. It fills `--gigabytes` of fp32 tensors in
1.2 M-element pieces (by default, for `checkpoint`, 7.2 GB: amused-256's 603 M weights and AdamW's two moments; for
`weights`, 2.43 GB: amused-512's transformer), then writes them once, either
- "page cache": as the fit wrote them before (the kernel keeps every page it is given in its cache and writes it to
  disk later): torch.save into a file opened for writing, or safetensors' `save_file`; or
- "write-behind": as the fit writes them now (`write_behind`: on disk every 64 MB, then dropped from the cache):
  `save_atomically`, or `save_safetensors`.
It prints the seconds of the write itself, its system-CPU seconds, and how far the page cache grew.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from reference_speed import spread

PIECE = 1_230_000
WRITERS = ("page cache", "write-behind")
DEFAULT_GIGABYTES = {"checkpoint": 7.2, "weights": 2.43}


def cached_bytes() -> int:
    """The page cache's size (Linux's /proc/meminfo "Cached"), 0 where there is none to read."""
    meminfo = Path("/proc/meminfo")
    if not meminfo.exists():
        return 0
    line = next(line for line in meminfo.read_text().splitlines() if line.startswith("Cached:"))
    return int(line.split()[1]) * 1024


def checkpoint_writer(writer: str, gigabytes: float):
    """A full finetune's checkpoint of `gigabytes`, and the function that writes it to a path with `writer`."""
    import torch

    from amused_lightning.run.checkpoint_file import save_atomically

    pieces = max(1, round(gigabytes * 1e9 / 4 / PIECE / 3))
    checkpoint = {"state_dict": {f"weight.{i}": torch.randn(PIECE) for i in range(pieces)},
                  "optimizer_states": [{"state": {i: {"step": torch.tensor(1.0), "exp_avg": torch.randn(PIECE),
                                                      "exp_avg_sq": torch.rand(PIECE)} for i in range(pieces)}}]}

    def through_the_cache(path: Path) -> None:
        with open(path, "wb") as file:
            torch.save(checkpoint, file)

    return through_the_cache if writer == "page cache" else lambda path: save_atomically(checkpoint, path)


def weights_writer(writer: str, gigabytes: float):
    """A transformer's weights of `gigabytes`, and the function that writes them to a path with `writer`."""
    import torch
    from safetensors.torch import save_file

    from amused_lightning.write_behind import save_safetensors

    weights = {f"block.{i}.weight": torch.randn(PIECE) for i in range(max(1, round(gigabytes * 1e9 / 4 / PIECE)))}
    save = save_file if writer == "page cache" else save_safetensors
    return lambda path: save(weights, path, {"format": "pt"})


def write_once(file: str, writer: str, gigabytes: float, folder: Path) -> dict[str, float]:
    """In this process: fill a checkpoint or weights, write them with `writer`, and measure the write."""
    write = (checkpoint_writer if file == "checkpoint" else weights_writer)(writer, gigabytes)
    path = folder / "written"
    cache, start, cpu = cached_bytes(), time.perf_counter(), os.times()
    write(path)
    seconds, system = time.perf_counter() - start, os.times().system - cpu.system
    grown = cached_bytes() - cache
    size = path.stat().st_size
    path.unlink()
    return {"seconds": seconds, "system": system, "cache_gb": grown / 1e9, "size_gb": size / 1e9}


def run_child(file: str, writer: str, gigabytes: float, folder: Path) -> dict[str, float]:
    """write_once in a fresh process, in a fresh folder under `folder`."""
    with tempfile.TemporaryDirectory(dir=folder) as scratch:
        out = subprocess.run([sys.executable, __file__, "--child", writer, "--file", file, "--gigabytes",
                              str(gigabytes), "--folder", scratch], check=True, capture_output=True, text=True).stdout
    return json.loads(out.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--file", choices=list(DEFAULT_GIGABYTES), default="checkpoint")
    parser.add_argument("--gigabytes", type=float, help="default: 7.2 for checkpoint, 2.43 for weights")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--folder", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--child", choices=WRITERS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    gigabytes = args.gigabytes or DEFAULT_GIGABYTES[args.file]
    if args.child:
        print(json.dumps(write_once(args.file, args.child, gigabytes, args.folder)))
        return
    results: dict[str, list[dict[str, float]]] = {writer: [] for writer in WRITERS}
    for pair in range(args.pairs):
        for writer in WRITERS if pair % 2 == 0 else WRITERS[::-1]:
            results[writer].append(run_child(args.file, writer, gigabytes, args.folder))
            print(f"pair {pair + 1}/{args.pairs} {writer}: {results[writer][-1]['seconds']:.2f} s", flush=True)
    print(f"\n| writer | {args.file} GB | write s | system CPU s | page cache growth GB |\n|---|---|---|---|---|")
    for writer, runs in results.items():
        print(f"| {writer} | {runs[0]['size_gb']:.2f} | {spread([r['seconds'] for r in runs])} | "
              f"{spread([r['system'] for r in runs])} | {spread([r['cache_gb'] for r in runs])} |")


if __name__ == "__main__":
    main()
