"""Training data for aMUSEd: sources, transforms and the LightningDataModule."""

from amused_lightning.data.datamodule import AmusedDataModule
from amused_lightning.data.files import ImageFolder, SingleImage
from amused_lightning.data.sources import DataSource, HFDataset
from amused_lightning.data.streams import HFStream, StreamSource
from amused_lightning.data.webdataset import WebDataset

__all__ = ["AmusedDataModule", "DataSource", "HFDataset", "HFStream", "ImageFolder", "SingleImage", "StreamSource",
           "WebDataset"]
