"""Progress in optimizer steps (`step 120/300`, loss, steps/s, time left): a live line on a terminal, periodic plain
lines when output goes to a file; and the same for any loop of batches (generation)."""

from __future__ import annotations

import logging
import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any, TextIO, TypeVar

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelSummary, ProgressBar
from lightning.pytorch.utilities.model_summary.model_summary import _format_summary_table

log = logging.getLogger(__name__)

T = TypeVar("T")
PLAIN_INTERVAL_S = 30.0  # seconds between plain lines when output is not a terminal
LIVE_INTERVAL_S = 0.5  # seconds between redraws of the live line
# What a validation line shows: the held-out loss and accuracy, how much context helps, and the strict image scores.
HEADLINE_SCORES = ("val/loss", "val/accuracy", "val/context_gain", "val/toy_cells", "val/toy_clean", "val/clip_score")


def duration(seconds: float) -> str:
    """`1:02:03`, `4:05` or `12s`."""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}" if minutes else f"{secs}s"


def progress_line(what: str, done: int, total: int | None, rate: float | None, extra: str = "",
                  unit: str = "") -> str:
    """`step 120/300  loss 2.913  1.4 steps/s  2:10 left`: what a progress display shows, as one line."""
    parts = [f"{what} {done}/{total}" if total else f"{what} {done}"]
    parts += [extra] if extra else []
    if rate:
        unit = unit or f"{what}s"
        parts.append(f"{rate:.2f} {unit}/s" if rate < 10 else f"{rate:.0f} {unit}/s")
        if total and total > done:
            parts.append(f"{duration((total - done) / rate)} left")
    return "  ".join(parts)


class Printer:
    """Writes progress lines: redrawn in place on a terminal, one per `plain_interval` seconds otherwise."""

    def __init__(self, stream: TextIO | None = None, plain_interval: float = PLAIN_INTERVAL_S):
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty()
        self.interval = LIVE_INTERVAL_S if self.live else plain_interval
        self._last = float("-inf")
        self._drawn = False

    def due(self) -> bool:
        """Whether the interval has passed since the last line shown."""
        return time.monotonic() - self._last >= self.interval

    def update(self, line: str, force: bool = False) -> None:
        """Show `line` if the interval has passed (or `force`)."""
        now = time.monotonic()
        if not force and not self.due():
            return
        self._last = now
        if self.live:
            self.stream.write(f"\r\033[K{line}")
            self._drawn = True
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def message(self, line: str) -> None:
        """A line that stays (validation scores, ...), below the live line."""
        self.end()
        self.stream.write(line + "\n")
        self.stream.flush()

    def end(self) -> None:
        """Leave the live line as it is and move to the next."""
        if self._drawn:
            self.stream.write("\n")
            self._drawn = False


class Rate:
    """Events per second over the last `window` events, leaving out paused stretches (validation)."""

    def __init__(self, window: int = 20):
        self.samples: deque[tuple[float, int]] = deque(maxlen=window)
        self.paused_at: float | None = None
        self.paused = 0.0

    def add(self, count: int) -> None:
        """Record that `count` events are done by now."""
        self.samples.append((time.monotonic() - self.paused, count))

    def pause(self) -> None:
        """Stop the clock (a validation starts)."""
        self.paused_at = time.monotonic()

    def resume(self) -> None:
        """Restart the clock, leaving the pause out of the rate."""
        if self.paused_at is not None:
            self.paused += time.monotonic() - self.paused_at
            self.paused_at = None

    @property
    def per_second(self) -> float | None:
        """Events per second over the window; None until two samples are in."""
        if len(self.samples) < 2 or self.samples[-1][0] <= self.samples[0][0]:
            return None
        return (self.samples[-1][1] - self.samples[0][1]) / (self.samples[-1][0] - self.samples[0][0])


class RunningMean:
    """The mean of the last `window` values: the per-step loss swings too much to read a trend from."""

    def __init__(self, window: int = 20):
        self.values: deque[float | torch.Tensor] = deque(maxlen=window)

    def add(self, value: float | torch.Tensor) -> None:
        """Take in one more value (the oldest leaves once the window is full)."""
        self.values.append(value)

    def text(self, name: str) -> str:
        """`loss 0.9121 (20-step mean)`, or "" before the first value."""
        if not self.values:
            return ""
        # Device tensors are read here, once per line shown, not at every step.
        mean = torch.stack([torch.as_tensor(v, dtype=torch.float32) for v in self.values]).mean()
        return f"{name} {float(mean):.4f} ({len(self.values)}-step mean)"


def iterate(items: Iterable[T], total: int, what: str, unit: str = "", stream: TextIO | None = None) -> Iterator[T]:
    """`items`, printing `what N/total` progress as each one is done."""
    printer, rate, done = Printer(stream), Rate(), 0
    rate.add(0)
    for item in items:
        yield item
        done += 1
        rate.add(done)
        printer.update(progress_line(what, done, total, rate.per_second, unit=unit), force=done in (1, total))
    printer.end()


def held_out_table(metrics: dict[str, Any]) -> str:
    """The held-out scores (`val/...`) as a small table: one row per mask ratio, then the mean."""
    rows = sorted((key[len("val/loss_"):] for key in metrics if key.startswith("val/loss_")),
                  key=lambda row: int("".join(c for c in row if c.isdigit()) or 0))
    lines = [f"{'mask':<8}{'loss':>9}{'accuracy':>10}"]
    for suffix, label in [(row, row.replace("mask", "")) for row in rows] + [("", "mean")]:
        loss, accuracy = (metrics.get(f"val/{name}{'_' + suffix if suffix else ''}") for name in ("loss", "accuracy"))
        if loss is not None:
            lines.append(f"{label:<8}{float(loss):>9.4f}{float(accuracy):>10.4f}" if accuracy is not None
                         else f"{label:<8}{float(loss):>9.4f}")
    return "\n".join(lines)


def scores_table(scores: dict[str, float]) -> str:
    """Other scores (the validation images' metrics), one `name  value` row each."""
    width = max(len(name) for name in scores)
    return "\n".join(f"{name:<{width}}  {value:.4f}" for name, value in scores.items())


def validation_work(pl_module: L.LightningModule, step: int) -> str:
    """`validating step 400: held-out scores and 8 images...`: what a validation is about to do."""
    prompts = getattr(getattr(pl_module, "validation", None), "prompts", None) or []
    images = f" and {len(prompts)} image{'s' * (len(prompts) != 1)}" if prompts else ""
    return f"validating step {getattr(pl_module, 'weights_step', step)}: held-out scores{images}..."


class StepProgress(ProgressBar):
    """Training progress in optimizer steps out of `trainer.max_steps`, with the loss, steps/s and time left."""

    def __init__(self, plain_interval: float = PLAIN_INTERVAL_S, stream: TextIO | None = None):
        super().__init__()
        self.plain_interval, self.stream = plain_interval, stream
        self.enabled = True
        self.printer: Printer | None = None
        self.rate = Rate()
        self.loss = RunningMean()
        self._shown_step = -1

    def disable(self) -> None:
        self.enabled = False

    def enable(self) -> None:
        self.enabled = True

    @property
    def is_enabled(self) -> bool:
        return self.enabled and self.trainer.is_global_zero

    def _line(self, trainer: L.Trainer) -> str:
        """`step N/M  loss x (n-step mean)  [speed]  r steps/s  t left`; the speed is what callbacks with a
        `progress_text` say."""
        total = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
        extra = [text] if (text := self.loss.text("loss")) else []
        extra += [text for c in trainer.callbacks if hasattr(c, "progress_text") and (text := c.progress_text())]
        return progress_line("step", trainer.global_step, total, self.rate.per_second, "  ".join(extra))

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.is_enabled:
            self.printer = Printer(self.stream, self.plain_interval)
            self.rate.add(trainer.global_step)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        # Batches of an accumulation share a step: show each optimizer step once.
        if self.printer is None or trainer.global_step == self._shown_step:
            return
        self._shown_step = trainer.global_step
        self.rate.add(trainer.global_step)
        loss = trainer.callback_metrics.get("train/loss")  # the step's loss, still on the device: read when shown
        if loss is not None:
            self.loss.add(loss)
        first, last = len(self.rate.samples) == 2, trainer.global_step == trainer.max_steps
        if first or last or self.printer.due():  # the line, and the loss it reads from the device, only when shown
            self.printer.update(self._line(trainer), force=True)
        if last:
            self.printer.end()  # Lightning's "fit stopped" note comes next: on a line of its own

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.printer is not None:
            self.printer.end()

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.rate.pause()
        if self.is_enabled and not trainer.sanity_checking:
            # Sampling the validation images takes a while: say what is going on (`validate` has no printer yet).
            self.printer = self.printer or Printer(self.stream, self.plain_interval)
            self.printer.message(validation_work(pl_module, trainer.global_step))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.rate.resume()
        if not self.is_enabled or trainer.sanity_checking:
            return
        # Validations of a fit, the one after its last step included; `validate` prints its own table.
        metrics = trainer.callback_metrics
        if self.printer is not None and "val/loss" in metrics:
            scores = ", ".join(f"{k} {float(metrics[k]):.4f}" for k in HEADLINE_SCORES if k in metrics)
            self.printer.message(f"validation at step {trainer.global_step}: {scores}")


class PartsSummary(ModelSummary):
    """Lightning's table of the model's parts (what each holds and whether it trains), without the FLOPs column and
    total: Lightning counts FLOPs only on an example input, which this module has none of, so they all read 0."""

    @staticmethod
    def summarize(summary_data: list[tuple[str, list[str]]], total_parameters: int, trainable_parameters: int,
                  model_size: float, total_training_modes: dict[str, int], total_flops: int, **kwargs: Any) -> None:
        columns = [column for column in summary_data if column[0] != "FLOPs"]
        table = _format_summary_table(total_parameters, trainable_parameters, model_size, total_training_modes, 0,
                                      *columns)
        log.info("\n" + "\n".join(line for line in table.splitlines() if not line.endswith("Total Flops")))
