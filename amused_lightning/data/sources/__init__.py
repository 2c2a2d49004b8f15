"""The training data a config names in `data.source`: sources read by row beside their base (`base.DataSource`),
several of them as one (`Mixture`), and sources read as a stream beside theirs (`stream.StreamSource`)."""

from amused_lightning.data.sources.base import DataSource, DataSourceError
from amused_lightning.data.sources.hf_dataset import HFDataset
from amused_lightning.data.sources.hf_stream import HFStream
from amused_lightning.data.sources.image_folder import ImageFolder
from amused_lightning.data.sources.mixture import Mixture
from amused_lightning.data.sources.single_image import SingleImage
from amused_lightning.data.sources.stream import StreamSource
from amused_lightning.data.sources.webdataset import WebDataset

__all__ = ["DataSource", "DataSourceError", "HFDataset", "HFStream", "ImageFolder", "Mixture", "SingleImage",
           "StreamSource", "WebDataset"]
