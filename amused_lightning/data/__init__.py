"""Training data for aMUSEd: the sources, the pipelines that read them, and the LightningDataModule."""

from amused_lightning.data.datamodule import AmusedDataModule
from amused_lightning.data.sources import (
    DataSource,
    DataSourceError,
    HFDataset,
    HFStream,
    ImageFolder,
    Mixture,
    SingleImage,
    StreamSource,
    WebDataset,
)

__all__ = ["AmusedDataModule", "DataSource", "DataSourceError", "HFDataset", "HFStream", "ImageFolder", "Mixture",
           "SingleImage", "StreamSource", "WebDataset"]
