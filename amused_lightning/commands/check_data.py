"""`check-data`: what `fit` would train on, without training. Reads the `data:` section of fit's config (and
model.pretrained's tokenizer, no weights) and reports usable rows, skipped ones with the reason, caption sources and
lengths in CLIP tokens, image sizes and aspect ratios; writes a preview grid of samples with their captions.

    python -m amused_lightning check-data --config configs/<recipe>.yaml [--data.source.path ...] [--preview out.png]

A stream (`HFStream`, `WebDataset`) is never read whole: the report covers its first --records records.

Every argument other than those below is fit's, parsed as fit parses it: --config files, --data.* and
--model.pretrained overrides (see `python -m amused_lightning fit --help`).
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from amused_lightning.errors import ExistingOutputError

if TYPE_CHECKING:
    from amused_lightning.data import AmusedDataModule, DataSource, Mixture
    from amused_lightning.data.buckets import RowLayout
    from amused_lightning.data.report import DataReport

PREVIEW_NAME = "data-check.png"


def parse(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """This command's own arguments, and the rest (fit's)."""
    parser = argparse.ArgumentParser(prog="python -m amused_lightning check-data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    parser.add_argument("--preview", type=Path, default=None,
                        help=f"PNG grid of samples with their captions (default: <trainer.default_root_dir>/"
                             f"{PREVIEW_NAME}, or ./{PREVIEW_NAME} when the config names no run folder)")
    parser.add_argument("--samples", type=int, default=16, help="samples in the preview grid (0: no preview)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a --preview file that already exists (the default preview, which this command "
                             "wrote, is replaced without it)")
    parser.add_argument("--records", type=int, default=1000,
                        help="records of a stream (HFStream, WebDataset) the report reads, from its start")
    args, rest = parser.parse_known_args(argv)
    if args.samples < 0:
        parser.error(f"--samples {args.samples} must be 0 or more")
    if args.records < 1:
        parser.error(f"--records {args.records} must be at least 1")
    return args, rest


def fit_settings(argv: list[str]):
    """fit's settings from `argv`, parsed and checked as fit parses them (links included); nothing is built."""
    from amused_lightning.commands.fit import AmusedCLI, cli_main

    class ParseOnly(AmusedCLI):
        def before_instantiate_classes(self) -> None:
            pass  # no run folder lock, no trainer checks: nothing trains

        def instantiate_classes(self) -> None:
            pass

    return cli_main(argv, run=False, cli_class=ParseOnly).config


def data_module(settings) -> AmusedDataModule:
    """The DataModule the `data:` settings describe, built as fit builds it (a Mixture's sources included)."""
    from jsonargparse import ArgumentParser

    from amused_lightning.data import AmusedDataModule

    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(AmusedDataModule, "data")
    return parser.instantiate_classes(parser.parse_object({"data": settings.data.as_dict()})).data


def preview_path(args: argparse.Namespace, settings) -> Path:
    """Where the preview goes; an error when a --preview file is there and --overwrite is not given (the default
    preview is this command's own, replaced at each run)."""
    path = args.preview or Path(settings.trainer.default_root_dir or ".") / PREVIEW_NAME
    if args.preview is not None and path.exists() and not args.overwrite:
        raise ExistingOutputError(f"preview {str(path)!r} already exists: pass --overwrite to replace it, or "
                                  "--preview <other file>")
    return path


def write_preview(source: DataSource, resolution: int, count: int, path: Path,
                  crops: dict[int, tuple[int, int]] | None = None) -> Path:
    """A grid of `count` usable samples spread over `source`, each cropped to its training crop's shape in `crops`
    (default: the square), with their captions, written to `path`."""
    from amused_lightning.data.preview import evenly_spaced, preview_grid

    rows = evenly_spaced(source.usable_rows(), count)
    crops = crops or {}
    image = preview_grid([(source.image(row), source.captions(row), crops.get(row)) for row in rows], resolution)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def training_buckets(datamodule: AmusedDataModule, source: DataSource, settings, report: DataReport,
                     train_rows: list[int]) -> RowLayout | None:
    """The training rows in their aspect-ratio buckets, from the sizes the report read, as `fit` assigns them; None
    when buckets are off."""
    from amused_lightning.data.buckets import bucket_grids, bucket_layout
    from amused_lightning.model.components import load_grid_configs
    from amused_lightning.model.encoding import pixels_per_token, token_grid_multiple

    if datamodule.buckets is None:
        return None
    vq_config, transformer_config = load_grid_configs(settings.model.pretrained, settings.model.revision)
    factor = pixels_per_token(vq_config)
    grids = bucket_grids(datamodule.hparams.resolution // factor, token_grid_multiple(transformer_config),
                         datamodule.buckets.max_ratio)
    sizes = dict(zip(source.usable_rows(), report.sizes))
    return bucket_layout(train_rows, sizes, grids, factor)


def rows_to_check(datamodule: AmusedDataModule, records: int) -> DataSource:
    """The data module's rows; for a stream, its first `records` records, kept in memory."""
    rows, source = datamodule.pipeline.rows_to_check(records), datamodule.source
    if rows is not source:
        print(f"{source.describe()} is a stream of {source.shard_count} shards: this report covers its first "
              f"{len(rows)} records (--records)")
    return rows


def mixture_lines(mixture: Mixture, train_rows: list[int]) -> list[str]:
    """Each source of a mixture: its rows, usable rows, repeat count and draws per epoch."""
    draws = Counter(mixture.locate(row)[0] for row in train_rows)
    lines = []
    for index, (source, repeats) in enumerate(zip(mixture.sources, mixture.repeats)):
        rows = mixture.source_rows(index)
        usable = sum(row not in mixture.bad_rows for row in rows)
        named = f" {getattr(source, 'path', '')!r}" if hasattr(source, "path") else ""
        lines.append(f"data.source.sources[{index}] {type(source).__name__}{named}: {len(rows)} rows, {usable} usable, "
                     f"repeats {repeats}: {draws[index]} training draws an epoch")
    return lines


def main(argv: list[str] | None = None) -> DataReport:
    args, rest = parse(argv)
    # torch, Lightning and datasets load only once the arguments are known good: `--help` stays instant.
    from amused_lightning.data import Mixture
    from amused_lightning.data.report import format_buckets, format_report, scan_source
    from amused_lightning.model.components import load_tokenizer

    settings = fit_settings(rest)
    path = preview_path(args, settings) if args.samples else None
    datamodule = data_module(settings)
    tokenizer = load_tokenizer(settings.model.pretrained, settings.model.revision)
    hp = datamodule.hparams
    source = rows_to_check(datamodule, args.records)
    split = source.split_rows(hp.val_samples, hp.seed, hp.batch_size, 1)
    report = scan_source(source, tokenizer, split.train_rows)
    buckets = training_buckets(datamodule, source, settings, report, split.train_rows)
    lines = None if buckets is None else format_buckets(buckets, datamodule.buckets.max_ratio)
    print(format_report(report, hp.resolution, hp.on_bad_image, lines))
    if isinstance(source, Mixture):
        print("\n".join(mixture_lines(source, split.train_rows)))
    if path is not None:
        usable, replaced = report.total - len(report.skipped), " (replacing the previous one)" * path.exists()
        write_preview(source, hp.resolution, args.samples, path, None if buckets is None else buckets.size_of())
        shape = "their aspect-ratio buckets' crops" if buckets else "the square training crop"
        print(f"wrote {path}{replaced}: {min(args.samples, usable)} samples with their captions, as {shape}")
    return report
