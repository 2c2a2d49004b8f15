"""`export`: turn a run checkpoint into diffusers files, a LoRA safetensors file and/or an AmusedPipeline folder.

    python -m amused_lightning export runs/x/checkpoints/last.ckpt out/ [--weights ema|trained] [--merge-lora]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from amused_lightning.formats import WEIGHT_CHOICES


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m amused_lightning export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a .ckpt written by `fit`")
    parser.add_argument("output", type=Path, help="folder to write the LoRA file and pipeline into")
    parser.add_argument("--weights", choices=WEIGHT_CHOICES, default=None,
                        help="EMA or raw trained weights (default: ema when the run kept one)")
    parser.add_argument("--merge-lora", action="store_true",
                        help="fold LoRA adapters into the pipeline weights (then no separate LoRA file is written)")
    parser.add_argument("--overwrite", action="store_true", help="replace an export already in the folder")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> list[Path]:
    args = parse(argv)
    # torch, diffusers and Lightning load only once the arguments are known good: `--help` stays instant.
    from amused_lightning.export import check_merge_lora, export_pipeline
    from amused_lightning.pipeline import ModelSpec, TrainedPipeline, read_checkpoint

    checkpoint = read_checkpoint(args.checkpoint)
    check_merge_lora(ModelSpec.from_hparams(checkpoint["hyper_parameters"]), args.merge_lora, "--merge-lora")
    pipeline = TrainedPipeline.from_checkpoint(checkpoint, args.weights)
    written = export_pipeline(pipeline, args.output, args.merge_lora, args.overwrite)
    for path in written:
        print(f"wrote {path}")
    return written
