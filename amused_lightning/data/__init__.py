"""Training data for aMUSEd: sources, transforms and the LightningDataModule."""

from amused_lightning.data.datamodule import AmusedDataModule

__all__ = ["AmusedDataModule"]
