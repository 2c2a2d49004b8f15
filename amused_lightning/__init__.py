"""PyTorch Lightning finetuning for aMUSEd masked-image-token models."""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["AmusedDataModule", "AmusedModel", "AmusedModule", "fit"]
# Imported on first use: `python -m amused_lightning --help` (and export, generate) need neither.
_LAZY = {"AmusedDataModule": "amused_lightning.data", "AmusedModel": "amused_lightning.model.amused",
         "AmusedModule": "amused_lightning.training.module", "fit": "amused_lightning.training.fit"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'amused_lightning' has no attribute {name!r}")
