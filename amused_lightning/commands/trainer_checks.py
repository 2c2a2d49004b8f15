"""Trainer settings that Lightning takes silently though they cannot work, or rejects with a bare exception from deep
inside (`accumulate_grad_batches: 0` is a ZeroDivisionError), refused before anything loads, naming the setting."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from amused_lightning.errors import SettingError


class Rule(NamedTuple):
    """What a valid value satisfies, and what the error says otherwise."""

    valid: Callable[[Any], bool]
    expected: str


RULES = {
    "accumulate_grad_batches": Rule(lambda v: v >= 1, "must be at least 1 (micro-batches per optimizer step)"),
    "max_steps": Rule(lambda v: v == -1 or v >= 1, "must be a positive number of optimizer steps, or -1 for no "
                                                   "limit (then trainer.max_epochs decides)"),
    "max_epochs": Rule(lambda v: v == -1 or v >= 1, "must be a positive number of epochs, or -1 for no limit"),
    "min_steps": Rule(lambda v: v >= 0, "must be 0 or more"),
    "min_epochs": Rule(lambda v: v >= 0, "must be 0 or more"),
    "limit_train_batches": Rule(lambda v: v > 0, "must be positive: a number of batches, or a fraction in (0, 1] "
                                                 "(0 trains nothing; `validate` scores a checkpoint)"),
    "gradient_clip_val": Rule(lambda v: v >= 0, "must be 0 or more (a negative bound would flip the gradients)"),
}


def check_trainer_settings(trainer: Any) -> None:
    """SettingError naming the first of `trainer`'s settings (a namespace of trainer.*) whose value cannot work."""
    for name, rule in RULES.items():
        value = getattr(trainer, name, None)
        if isinstance(value, (int, float)) and not rule.valid(value):
            raise SettingError(f"trainer.{name}={value} {rule.expected}")
