"""PyTorch Lightning finetuning for aMUSEd masked-image-token models."""

from amused_lightning.data import AmusedDataModule
from amused_lightning.module import AmusedModule

__all__ = ["AmusedDataModule", "AmusedModule"]
