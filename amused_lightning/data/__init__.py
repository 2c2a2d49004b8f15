"""Training data for aMUSEd: sources, transforms and the LightningDataModule."""

from amused_lightning.data.datamodule import AmusedDataModule
from amused_lightning.data.sources import DataSource, HFDataset, ImageFolder, SingleImage

__all__ = ["AmusedDataModule", "DataSource", "HFDataset", "ImageFolder", "SingleImage"]
