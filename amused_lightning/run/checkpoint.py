"""The run checkpoint: what `fit` writes of a run and every reader takes from it (format, its version, the trained
and EMA weights, the run's settings and record), read in one place."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from amused_lightning.errors import MissingPathError, SettingError
from amused_lightning.formats import WEIGHT_CHOICES

MARK = "amused_lightning"
"""The checkpoint entry that says `fit` of this package wrote it: {"format", "optimizer", "run"}."""
FORMAT = 2
"""The version of the layout below; a reader refuses any other, naming both."""
EMA_STATE_KEY = "amused_lightning.ema"
"""Where the EMA callback keeps its state among the checkpoint's callbacks: {"shadow": weights, "step": int}."""


@dataclass
class RunCheckpoint:
    """A fit's checkpoint, typed: written by `fit`, read from a file or taken from a fit that just ended."""

    hparams: dict[str, Any]
    """The LightningModule's hyperparameters: the model spec, finetuning mode, validation and training settings."""
    trained: dict[str, torch.Tensor]
    """The trained weights (`transformer.*`, `text_encoder.*`), nothing frozen."""
    ema: dict[str, torch.Tensor] | None = None
    """The EMA of the trained weights, when the run kept one."""
    step: int | None = None
    """Optimizer steps behind the weights."""
    data: dict[str, Any] = field(default_factory=dict)
    """The DataModule's hyperparameters (its source as a config entry)."""
    optimizer: str | None = None
    """The optimizer's `module.Class`."""
    run: dict[str, Any] = field(default_factory=dict)
    """What the hyperparameters do not say of the run (precision, devices, accumulation, rows, rate, EMA decay)."""

    @classmethod
    def of(cls, checkpoint: dict[str, Any], name: str = "the checkpoint") -> RunCheckpoint:
        """The typed view of a checkpoint dict; refused unless this format wrote it."""
        check_mark(checkpoint, name)
        mark = checkpoint[MARK]
        ema = ((checkpoint.get("callbacks") or {}).get(EMA_STATE_KEY) or {}).get("shadow")
        return cls(checkpoint["hyper_parameters"], checkpoint["state_dict"], ema, checkpoint.get("global_step"),
                   checkpoint.get("datamodule_hyper_parameters") or {}, mark.get("optimizer"), mark.get("run") or {})

    @classmethod
    def read(cls, path: str | Path) -> RunCheckpoint:
        """The checkpoint file at `path`, with clear errors for a missing, unreadable or foreign file."""
        return cls.of(read_checkpoint(path), repr(str(path)))

    def weights(self, choice: str | None = None) -> tuple[str, dict[str, torch.Tensor]]:
        """("ema" or "trained", those weights): `choice`, or by default the EMA when the run kept one."""
        chosen = resolve_weights(self.ema is not None, choice)
        return chosen, self.ema if chosen == "ema" else self.trained


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint file written by `fit`, as the dict Lightning saved."""
    path = Path(path)
    if not path.is_file():
        raise MissingPathError(f"checkpoint {str(path)!r} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    except Exception as error:  # a file torch cannot read at all
        raise SettingError(f"{str(path)!r} is not a readable PyTorch checkpoint: {error}") from error
    check_mark(checkpoint, repr(str(path)))
    return checkpoint


def check_mark(checkpoint: Any, name: str) -> None:
    """Refuse a checkpoint that `fit` of this format did not write."""
    mark = checkpoint.get(MARK) if isinstance(checkpoint, dict) else None
    if mark is None:
        raise SettingError(f"{name} is not an amused_lightning checkpoint (no {MARK!r} entry)")
    if mark.get("format") != FORMAT:
        raise SettingError(f"{name} has checkpoint format {mark.get('format')}, this version reads format "
                           f"{FORMAT}: export it with the amused_lightning version that wrote it")


def mark(checkpoint: dict[str, Any], optimizer: str | None, run: dict[str, Any]) -> None:
    """Stamp a checkpoint Lightning is saving as this format's, with what the card of a later export needs."""
    checkpoint[MARK] = {"format": FORMAT, "optimizer": optimizer, "run": run}


def resolve_weights(has_ema: bool, weights: str | None) -> str:
    """"ema" or "trained"; None or "auto" pick the average when one was kept."""
    if weights in (None, "auto"):
        return "ema" if has_ema else "trained"
    if weights not in WEIGHT_CHOICES:
        raise SettingError(f"weights={weights!r} must be one of {list(WEIGHT_CHOICES)}")
    if weights == "ema" and not has_ema:
        raise SettingError("weights='ema' but this run kept no EMA (ema.enabled was off): use weights='trained'")
    return weights
