"""`export`: turn a run checkpoint into diffusers files, a LoRA safetensors file and/or an AmusedPipeline folder, with
a model card (README.md); optionally pushed to the Hugging Face Hub in one commit.

    python -m amused_lightning export runs/x/checkpoints/last.ckpt out/ [--weights ema|trained] [--merge-lora]
    python -m amused_lightning export runs/x/checkpoints/last.ckpt out/ --push-to-hub me/my-amused [--public]
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from amused_lightning.commands.config_file import CommandParser, add_config_argument, parse_with_config
from amused_lightning.formats import WEIGHT_CHOICES

log = logging.getLogger(__name__)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = CommandParser(prog="python -m amused_lightning export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", nargs="?", help="a .ckpt written by `fit` (or `checkpoint:` in --config)")
    parser.add_argument("output", type=Path, nargs="?",
                        help="folder to write the LoRA file and pipeline into (or `output:` in --config)")
    parser.add_argument("--weights", choices=WEIGHT_CHOICES, default=None,
                        help="EMA or raw trained weights (default: ema when the run kept one)")
    parser.add_argument("--merge-lora", action="store_true",
                        help="fold LoRA adapters into the pipeline weights (then no separate LoRA file is written)")
    parser.add_argument("--with-base", action="store_true",
                        help="unmerged LoRA on a Hub or local base: copy the whole base pipeline beside the LoRA file "
                        "(by default the export holds the LoRA file and base_model.json naming the base)")
    parser.add_argument("--overwrite", action="store_true", help="replace an export already in the folder")
    hub = parser.add_argument_group("Hugging Face Hub")
    hub.add_argument("--push-to-hub", metavar="REPO_ID", default=None,
                     help="upload the export to this model repo (owner/name) in one commit, after writing it")
    visibility = hub.add_mutually_exclusive_group()
    visibility.add_argument("--private", dest="private", action="store_true", default=True,
                            help="create the repo private (the default; an existing repo keeps its visibility)")
    visibility.add_argument("--public", dest="private", action="store_false", help="create the repo public")
    hub.add_argument("--hub-token", default=None,
                     help="token with write access (default: HF_TOKEN, then the login cached by `hf auth login`)")
    add_config_argument(parser)
    args = parse_with_config(parser, argv)
    for name in ("checkpoint", "output"):
        if getattr(args, name) is None:
            parser.error(f"the {name} is missing (give it on the command line or as `{name}:` in --config)")
    args.output = Path(args.output)
    return args


def main(argv: list[str] | None = None) -> list[Path]:
    args = parse(argv)
    # torch, diffusers and Lightning load only once the arguments are known good: `--help` stays instant.
    from amused_lightning.export.hub import check_push, push_export
    from amused_lightning.export.pipeline import export_files, export_run
    from amused_lightning.model.spec import ModelSpec
    from amused_lightning.run.checkpoint import RunCheckpoint
    from amused_lightning.run.folder import RunFolder

    run = RunCheckpoint.read(args.checkpoint)
    ModelSpec.from_hparams(run.hparams).finetuning.check_export(args.merge_lora, "--merge-lora")
    # Before anything is written: a push that cannot work is said now, not after a long export.
    token = check_push(args.push_to_hub, args.hub_token, "--push-to-hub") if args.push_to_hub else None
    samples = RunFolder.of_checkpoint(args.checkpoint).newest_validation(run.step)
    log.info("exporting %s to %s...", args.checkpoint, args.output)  # loading and writing take a while
    written, _ = export_run(run, args.output, args.weights, args.merge_lora, args.overwrite,
                            args.push_to_hub or str(args.output), samples, args.with_base)
    for path in written:
        print(f"wrote {path}")
    if args.push_to_hub:
        url = push_export(args.output, export_files(args.output), args.push_to_hub, args.private, token)
        print(f"pushed {args.output} to {url}")
    return written
