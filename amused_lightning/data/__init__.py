"""Training data for aMUSEd: sources, transforms and the LightningDataModule."""

from amused_lightning.data.datamodule import AmusedDataModule
from amused_lightning.data.files import ImageFolder, SingleImage
from amused_lightning.data.sources import DataSource, HFDataset

__all__ = ["AmusedDataModule", "DataSource", "HFDataset", "ImageFolder", "SingleImage"]
