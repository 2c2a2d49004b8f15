"""Exponential moving average of the trained parameters only (full finetuning and LoRA alike)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class EmaSettings:
    """EMA of the trained weights (the reference's --use_ema)."""

    decay: float = 0.9999
    """Upper bound of the EMA decay."""
    update_after_step: int = 0
    """Optimizer steps before the average starts following the weights."""


def check_ema_settings(settings: EmaSettings) -> None:
    """Reject a decay outside (0, 1) or a negative start step."""
    if not 0.0 < settings.decay < 1.0:
        raise ValueError(f"model.ema.decay={settings.decay} must lie in (0, 1)")
    if settings.update_after_step < 0:
        raise ValueError(f"model.ema.update_after_step={settings.update_after_step} must not be negative")


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
            raise ValueError("the checkpoint's EMA weights do not match this model's trained parameters")
        self.shadow = {name: state[name].float().to(self.shadow[name].device) for name in self.shadow}


def resolve_weights(ema: TrainedWeightsEMA | None, weights: str | None) -> str:
    """"ema" or "trained"; None or "auto" pick the average when one was kept."""
    if weights in (None, "auto"):
        return "ema" if ema is not None else "trained"
    if weights not in ("ema", "trained"):
        raise ValueError(f"weights={weights!r} must be 'auto', 'ema' or 'trained'")
    if weights == "ema" and ema is None:
        raise ValueError("weights='ema' but this run kept no EMA (model.ema is unset): use weights='trained'")
    return weights


@contextmanager
def holding(module: nn.Module, weights: str | None) -> Iterator[str]:
    """Inside the block `module` holds the chosen weights (see `resolve_weights`); yields which ones."""
    chosen = resolve_weights(module.ema, weights)
    with module.ema.swapped_in(module) if chosen == "ema" else nullcontext():
        yield chosen
