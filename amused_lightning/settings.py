"""Checks of the model settings, run before any weights are loaded."""

from __future__ import annotations

from typing import Any

from amused_lightning.ema import EmaSettings, check_ema_settings
from amused_lightning.generation import GenerationSettings, check_generation_settings
from amused_lightning.optim import LR_SCHEDULES


def as_settings(cls: type, value: Any) -> Any:
    """`value` as a `cls` dataclass (None stays None; a dict from saved hyperparameters is converted)."""
    return cls(**value) if isinstance(value, dict) else value


def check_model_settings(hparams, ema: EmaSettings | None, generation: GenerationSettings,
                         val_mask_ratios: list[float]) -> None:
    """Reject out-of-range settings, naming the setting and its value."""
    check_generation_settings(generation, "model.generation")
    if ema is not None:
        check_ema_settings(ema)
    if not val_mask_ratios or not all(0.0 < r <= 1.0 for r in val_mask_ratios):
        raise ValueError(f"model.val_mask_ratios={val_mask_ratios} must be ratios in (0, 1]")
    if hparams.lr_scheduler not in LR_SCHEDULES:
        raise ValueError(f"model.lr_scheduler={hparams.lr_scheduler!r} is not one of {list(LR_SCHEDULES)}")
    for name in ("min_masking_rate", "cond_dropout_prob"):
        if not 0.0 <= hparams[name] <= 1.0:
            raise ValueError(f"model.{name}={hparams[name]} must lie in [0, 1]")
    if hparams.vq_chunk_size is not None and hparams.vq_chunk_size < 1:
        raise ValueError(f"model.vq_chunk_size={hparams.vq_chunk_size} must be a positive number of images")
    if hparams.text_encoder_lora is not None and not hparams.train_text_encoder:
        raise ValueError("model.text_encoder_lora is set but model.train_text_encoder=False: set both to train it")
    if hparams.lr_warmup_steps < 0:
        raise ValueError(f"model.lr_warmup_steps={hparams.lr_warmup_steps} must not be negative")
