"""What a data source holds, as `check-data` reports it: usable and skipped rows, caption sources and lengths in
CLIP tokens, image sizes and aspect ratios. Images are read only up to their headers."""

from __future__ import annotations

import math
import statistics
from collections import Counter
from dataclasses import dataclass, field

from amused_lightning.data.buckets import RowLayout
from amused_lightning.data.sources.base import DataSource
from amused_lightning.data.transforms import upright_size
from amused_lightning.model.presets import CLIP_MAX_LENGTH
from amused_lightning.progress import iterate

# Aspect ratios (width:height) images are counted under, by the nearest one; portrait ones are added flipped.
COMMON_RATIOS = ((1, 1), (5, 4), (4, 3), (3, 2), (16, 9), (2, 1), (3, 1))
NAMED_SKIPPED = 20  # skipped rows the report names one by one
BAR_WIDTH = 30  # characters of the longest histogram bar
TOKENIZE_CHUNK = 1024  # captions tokenized per call


@dataclass
class DataReport:
    """What the scan of a source found."""

    total: int
    skipped: list[str]  # "where: why", one per bad row
    train_rows: int
    held_out_rows: int
    origins: Counter = field(default_factory=Counter)  # rows by caption source
    multi_caption_rows: int = 0
    token_counts: list[int] = field(default_factory=list)  # per caption, start and end tokens included
    sizes: list[tuple[int, int]] = field(default_factory=list)  # upright (width, height) of usable images


def token_counts(tokenizer, captions: list[str]) -> list[int]:
    """Each caption's length in tokens, start and end included, before CLIP's cut at 77."""
    counts = []
    for start in range(0, len(captions), TOKENIZE_CHUNK):
        ids = tokenizer(captions[start:start + TOKENIZE_CHUNK], truncation=False, verbose=False).input_ids
        counts += [len(row) for row in ids]
    return counts


def aspect_name(width: int, height: int) -> str:
    """The common aspect ratio nearest to `width:height` (in log scale), as `4:3` or `3:4`."""
    ratios = [*COMMON_RATIOS, *((h, w) for w, h in COMMON_RATIOS if w != h)]
    w, h = min(ratios, key=lambda ratio: abs(math.log(width / height) - math.log(ratio[0] / ratio[1])))
    return f"{w}:{h}"


def size_band(width: int, height: int, resolution: int) -> str:
    """Where an image's shorter side falls against the training resolution (under it, it is upscaled)."""
    short = min(width, height)
    if short < resolution:
        return f"under {resolution} px (upscaled)"
    return f"{resolution}-{2 * resolution - 1} px" if short < 2 * resolution else f"{2 * resolution} px and over"


def scan_source(source: DataSource, tokenizer, train_rows: list[int]) -> DataReport:
    """What `source` holds: its skipped rows, then caption sources, token counts and image sizes of its usable
    rows, `train_rows` of which train (the others are held out)."""
    usable = source.usable_rows()
    skipped = [f"{source.where(row)}: {why}" for row, why in sorted(source.bad_rows.items())]
    trained = len(set(train_rows))
    report, captions = DataReport(len(source), skipped, trained, len(usable) - trained), []
    for row in iterate(usable, len(usable), "reading row", "rows"):
        found = source.captions(row)
        report.origins[found.origin] += 1
        report.multi_caption_rows += len(found.lines) > 1
        captions += found.lines
        report.sizes.append(upright_size(source.image_data(row)))
    report.token_counts = token_counts(tokenizer, captions)
    return report


def histogram(counts: Counter, total: int) -> list[str]:
    """`  label  count  ####` lines, most common first."""
    width = max(len(label) for label in counts)
    top = max(counts.values())
    return [f"  {label:<{width}} {count:>7}  {'#' * max(1, round(BAR_WIDTH * count / top))}"
            f" {100 * count / total:.0f}%" for label, count in counts.most_common()]


def format_rows(report: DataReport, on_bad_image: str) -> list[str]:
    """The rows found, usable and skipped, the skipped named with their reason."""
    usable = report.total - len(report.skipped)
    action = "fit would stop on them" if on_bad_image == "error" else "fit leaves them out"
    lines = [f"rows: {report.total} found, {usable} usable ({report.train_rows} training, {report.held_out_rows} "
             f"held out), {len(report.skipped)} skipped" + (f" (data.on_bad_image={on_bad_image}: {action})"
                                                           if report.skipped else "")]
    lines += [f"  {line}" for line in report.skipped[:NAMED_SKIPPED]]
    if len(report.skipped) > NAMED_SKIPPED:
        lines.append(f"  ... and {len(report.skipped) - NAMED_SKIPPED} more")
    return lines


def format_captions(report: DataReport) -> list[str]:
    """Caption sources, and caption lengths against CLIP's 77 tokens."""
    origins = ", ".join(f"{origin} {count}" for origin, count in report.origins.most_common())
    several = report.multi_caption_rows
    lines = [f"caption sources (rows): {origins}" + (f"; rows with several captions (one drawn per step): {several}"
                                                    if several else "")]
    counts = report.token_counts
    if counts:
        cut = sum(count > CLIP_MAX_LENGTH for count in counts)
        lines.append(f"caption lengths in CLIP tokens (start and end included): {len(counts)} captions, min "
                     f"{min(counts)}, median {statistics.median(counts):g}, max {max(counts)}; {cut} over "
                     f"{CLIP_MAX_LENGTH}, cut to {CLIP_MAX_LENGTH} in training")
    return lines


def format_sizes(report: DataReport, resolution: int, bucketed: bool = False) -> list[str]:
    """Image sizes against the training resolution, and aspect ratios, as small histograms."""
    if not report.sizes:
        return []
    widths, heights = zip(*report.sizes)
    lines = [f"image sizes: width {min(widths)}-{max(widths)} px, height {min(heights)}-{max(heights)} px; "
             f"shorter side against data.resolution {resolution}:"]
    lines += histogram(Counter(size_band(w, h, resolution) for w, h in report.sizes), len(report.sizes))
    cropped = "its aspect-ratio bucket, below" if bucketed else "a square"
    lines.append(f"aspect ratios (nearest common one; training crops {cropped}):")
    return lines + histogram(Counter(aspect_name(w, h) for w, h in report.sizes), len(report.sizes))


def format_buckets(layout: RowLayout, max_ratio: float) -> list[str]:
    """The training rows per aspect-ratio bucket, as a small histogram."""
    counts = Counter()
    for group in layout.groups:
        width, height = layout.sizes[group.start]
        counts[f"{width}x{height} px"] = len(group)
    return [f"aspect-ratio buckets (data.aspect_buckets.max_ratio {max_ratio:g}; held-out rows are scored as "
            f"squares): training rows per crop size ({len(counts)} shapes in use):",
            *histogram(counts, len(layout.rows))]


def format_report(report: DataReport, resolution: int, on_bad_image: str, bucket_lines: list[str] | None = None) -> str:
    """The whole report, as printed; `bucket_lines` (`format_buckets`) when aspect-ratio buckets are on."""
    return "\n".join([*format_rows(report, on_bad_image), *format_captions(report),
                      *format_sizes(report, resolution, bucket_lines is not None), *(bucket_lines or [])])
