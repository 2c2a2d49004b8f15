"""Training speed in every run: samples per second, achieved TFLOP/s and model FLOPs utilisation, once per optimizer
step, averaged over a window of steps, without ever waiting for the device."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import lightning as L

from amused_lightning.data.batch import IMAGE_TOKENS, MICRO_CONDS, PIXEL_VALUES, has_prompt_embeddings, is_pre_encoded
from amused_lightning.errors import SettingError
from amused_lightning.model.device_peaks import TFLOPS, dtype_key, parse_peak, resolve_peak, tf32_enabled
from amused_lightning.model.flops import text_encode_flops, transformer_training_flops, vq_encode_flops

log = logging.getLogger(__name__)

SAMPLES_PER_SEC, TFLOPS_KEY, MFU = "train/samples_per_sec", "train/tflops", "train/mfu"
PEAK_SETTING = "throughput.peak_tflops"


@dataclass
class ThroughputSettings:
    """How training speed is measured."""

    peak_tflops: float | str | None = None
    """The device's dense peak in the run's compute dtype, as TFLOP/s or as a device of the table in
    `model/device_peaks.py` (h100-sxm, h100-pcie, h100-nvl, h200, a100, l40s, l4, a10g, rtx-4090, ...); unset: the
    CUDA device's row of that table, or on a CPU a matmul probe measured once."""
    window: int = 10
    """Optimizer steps the rates are averaged over."""

    def __post_init__(self) -> None:
        parse_peak(self.peak_tflops, PEAK_SETTING)  # a bad value stops the run when the config is read
        if self.window < 1:
            raise SettingError(f"throughput.window={self.window} must be at least 1 optimizer step")


def token_grid(batch: dict[str, Any], scale: int) -> tuple[int, int]:
    """(height, width) in tokens of the batch's images; `scale` is the VQ model's pixels per token."""
    if is_pre_encoded(batch):
        return tuple(batch[IMAGE_TOKENS].shape[-2:])
    height, width = batch[PIXEL_VALUES].shape[-2:]
    return height // scale, width // scale


def window_rates(points: deque[tuple[float, int, int]], world_size: int, peak: float | None) -> dict[str, float]:
    """Rates between the first and last (seconds, samples, FLOPs) of the window: samples/s of all processes, this
    device's TFLOP/s and its share of the peak."""
    (t0, samples0, flops0), (t1, samples1, flops1) = points[0], points[-1]
    seconds = t1 - t0
    if seconds <= 0:
        return {}
    tflops = (flops1 - flops0) / seconds / TFLOPS
    rates = {SAMPLES_PER_SEC: (samples1 - samples0) / seconds * world_size, TFLOPS_KEY: tflops}
    if peak:
        rates[MFU] = tflops / peak
    return rates


def speed_text(metrics: dict[str, float]) -> str:
    """`11.4 samples/s  31% MFU` (`4.2 TFLOP/s` where the peak is unknown) from the throughput metrics."""
    if not metrics:
        return ""
    samples = metrics[SAMPLES_PER_SEC]
    text = f"{samples:.2f} samples/s" if samples < 10 else f"{samples:.0f} samples/s"
    if MFU in metrics:
        return f"{text}  {100 * metrics[MFU]:.2g}% MFU"
    return f"{text}  {metrics[TFLOPS_KEY]:.3g} TFLOP/s"


class Throughput(L.Callback):
    """Logs `train/samples_per_sec`, `train/tflops` and `train/mfu` per optimizer step (the progress line shows
    them). FLOPs are counted once per token-grid shape from the model itself (see `model/flops.py`); times are host
    clock readings at step ends: no device synchronisation, so it costs the device nothing (over a window, the host
    cannot run further ahead of a GPU than its launch queue allows)."""

    def __init__(self, peak_tflops: float | str | None = None, window: int = 10):
        """
        Args:
            peak_tflops: The device's dense peak in the run's compute dtype, as TFLOP/s or as a device of the table
                in `model/device_peaks.py` (h100-sxm, h100-pcie, h100-nvl, h200, a100, l40s, l4, a10g, rtx-4090,
                ...); unset: the CUDA device's row of that table, or on a CPU a matmul probe measured once.
            window: Optimizer steps the rates are averaged over (the first step, with its warm-up, leaves the
                window after this many).
        """
        self.settings = ThroughputSettings(peak_tflops, window)
        self.peak: float | None = None
        self.metrics: dict[str, float] = {}
        self._counts: dict[tuple, int] = {}
        self._points: deque[tuple[float, int, int]] = deque(maxlen=window + 1)
        self._samples = self._flops = 0
        self._paused = 0.0
        self._paused_at: float | None = None
        self._stepped = -1

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        dtype = dtype_key(str(trainer.precision), tf32_enabled())
        self.peak, source = resolve_peak(self.settings.peak_tflops, dtype, trainer.strategy.root_device,
                                         PEAK_SETTING)
        if self.peak is None:
            log.warning("throughput: %s; train/mfu is not logged", source)
        else:
            log.info("throughput: MFU against %.3g TFLOP/s %s (%s)", self.peak, dtype, source)

    def progress_text(self) -> str:
        """What the progress line shows of the speed (StepProgress asks every callback that has this)."""
        return speed_text(self.metrics)

    def _clock(self) -> float:
        """Seconds of training so far: validation and FLOP counting left out."""
        return time.perf_counter() - self._paused

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._points.clear()
        self._stepped = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs: Any, batch: dict, batch_idx: int) -> None:
        self._samples += batch[MICRO_CONDS].shape[0]
        self._flops += self._batch_flops(pl_module.model, batch)
        if trainer.global_step == self._stepped:
            return  # an accumulating micro-batch: the optimizer step is not done yet
        self._stepped = trainer.global_step
        self._points.append((self._clock(), self._samples, self._flops))
        if len(self._points) < 2:
            return  # the first step's end starts the clock: start-up and loader spin-up are left out
        self.metrics = window_rates(self._points, trainer.world_size, self.peak)
        if self.metrics and trainer.global_step % trainer.log_every_n_steps == 0:
            for logger in trainer.loggers:
                logger.log_metrics(self.metrics, step=trainer.global_step - 1)  # the step train/loss is logged at

    def _batch_flops(self, model, batch: dict) -> int:
        """The batch's model FLOPs; a part's count is made the first time a batch needs it (outside the clock)."""
        scale = model.pixels_per_token
        grid = token_grid(batch, scale)
        start = time.perf_counter()
        per_sample = self._count(("transformer", grid), lambda: transformer_training_flops(
            model.transformer, *grid, model.text_encoder_trains))
        if not is_pre_encoded(batch):
            per_sample += self._count(("vq", grid), lambda: vq_encode_flops(model.vqvae, grid[0] * scale,
                                                                            grid[1] * scale))
        if not has_prompt_embeddings(batch):
            per_sample += self._count(("text",), lambda: text_encode_flops(model.text_encoder))
        self._paused += time.perf_counter() - start
        return per_sample * batch[MICRO_CONDS].shape[0]

    def _count(self, key: tuple, count: Callable[[], int]) -> int:
        """Per-sample FLOPs of one part at one shape, counted once."""
        if key not in self._counts:
            self._counts[key] = count()
        return self._counts[key]

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._paused_at = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._paused_at is not None:
            self._paused += time.perf_counter() - self._paused_at
            self._paused_at = None
