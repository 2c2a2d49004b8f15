"""Exponential moving average of the trained parameters only (full finetuning and LoRA alike)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import lightning as L
import torch
from torch import nn

from amused_lightning.errors import SettingError
from amused_lightning.run.checkpoint import EMA_STATE_KEY


@dataclass
class EmaSettings:
    """EMA of the trained weights (the reference's --use_ema)."""

    decay: float = 0.9999
    """Upper bound of the EMA decay."""
    update_after_step: int = 0
    """Optimizer steps before the average starts following the weights."""

    def __post_init__(self) -> None:
        if not 0.0 < self.decay < 1.0:
            raise SettingError(f"ema.decay={self.decay} must lie in (0, 1)")
        if self.update_after_step < 0:
            raise SettingError(f"ema.update_after_step={self.update_after_step} must not be negative")


def ema_decay(step: int, settings: EmaSettings) -> float:
    """diffusers' EMAModel decay: 0 until `update_after_step`, then (1+s)/(10+s) capped at `decay`."""
    s = step - settings.update_after_step - 1
    if s <= 0:
        return 0.0
    return min(settings.decay, (1 + s) / (10 + s))


class TrainedWeightsEMA:
    """Shadow copies (fp32) of the parameters that require grad, keyed by their names."""

    def __init__(self, module: nn.Module, settings: EmaSettings):
        self.settings = settings
        self.shadow = {name: p.detach().float().clone() for name, p in self._trained(module)}

    @staticmethod
    def _trained(module: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
        return ((name, p) for name, p in module.named_parameters() if p.requires_grad)

    @torch.no_grad()
    def update(self, module: nn.Module, step: int) -> None:
        """Move the average towards the current weights after optimizer step `step` (1-based)."""
        weight = 1.0 - ema_decay(step, self.settings)
        for name, param in self._trained(module):
            shadow = self.shadow[name]
            if shadow.device != param.device:
                self.shadow[name] = shadow = shadow.to(param.device)
            shadow.lerp_(param.detach().float(), weight)

    @contextmanager
    def swapped_in(self, module: nn.Module) -> Iterator[None]:
        """Use the averaged weights inside the block; the trained ones come back afterwards."""
        params = dict(self._trained(module))
        saved = {name: p.detach().clone() for name, p in params.items()}
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(self.shadow[name])
        try:
            yield
        finally:
            with torch.no_grad():
                for name, p in params.items():
                    p.copy_(saved[name])

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: tensor.cpu() for name, tensor in self.shadow.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if state.keys() != self.shadow.keys():
            raise SettingError("the checkpoint's EMA weights do not match this model's trained parameters")
        self.shadow = {name: state[name].float().to(self.shadow[name].device) for name in self.shadow}


class EMA(L.Callback):
    """Keeps the average of the trained weights through a fit, validates with it, and checkpoints it."""

    STATE_KEY = EMA_STATE_KEY

    def __init__(self, enabled: bool = False, decay: float = 0.9999, update_after_step: int = 0):
        """
        Args:
            enabled: Keep an exponential moving average of the trained weights, used for validation and export.
            decay: Upper bound of the EMA decay (diffusers' EMAModel warm-up (1+s)/(10+s) below it).
            update_after_step: Optimizer steps before the average starts following the weights.
        """
        self.enabled, self.settings = enabled, EmaSettings(decay, update_after_step)
        if not enabled and self.settings != EmaSettings():
            raise SettingError(f"ema.decay={decay} / ema.update_after_step={update_after_step} are set but "
                               "ema.enabled is false: add --ema.enabled true, or drop them")
        self.average: TrainedWeightsEMA | None = None
        self._restored: dict | None = None
        self._step = 0
        self._swap: contextlib.ExitStack | None = None

    @property
    def state_key(self) -> str:
        return self.STATE_KEY

    def _ensure_average(self, pl_module: nn.Module) -> None:
        # After a checkpoint restore: a run that turns EMA on when resuming starts from the restored weights.
        if self.enabled and self.average is None:
            self.average = TrainedWeightsEMA(pl_module.model, self.settings)
            if self._restored is not None:
                self.average.load_state_dict(self._restored["shadow"])
                self._step = self._restored["step"]

    def on_fit_start(self, trainer: L.Trainer, pl_module: nn.Module) -> None:
        self._ensure_average(pl_module)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: nn.Module, outputs, batch, batch_idx: int) -> None:
        # Once per optimizer step, after it (the last micro-batch of an accumulation).
        if self.average is not None and trainer.global_step > self._step:
            self.average.update(pl_module.model, trainer.global_step)
            self._step = trainer.global_step

    def on_validation_start(self, trainer: L.Trainer, pl_module: nn.Module) -> None:
        self._ensure_average(pl_module)
        if self.average is not None:
            self._swap = contextlib.ExitStack()
            self._swap.enter_context(self.average.swapped_in(pl_module.model))

    def on_validation_end(self, trainer: L.Trainer, pl_module: nn.Module) -> None:
        # After every epoch-end hook: the validation images are drawn with the averaged weights.
        if self._swap is not None:
            self._swap.close()
            self._swap = None

    def state_dict(self) -> dict:
        if self.average is None:
            return {}
        return {"shadow": self.average.state_dict(), "step": self._step}

    def load_state_dict(self, state_dict: dict) -> None:
        self._restored = state_dict or None


def find_ema(trainer: L.Trainer) -> EMA | None:
    """The trainer's enabled EMA callback, if any."""
    return next((c for c in trainer.callbacks if isinstance(c, EMA) and c.enabled), None)
