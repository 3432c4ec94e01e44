"""LightningDataModules, one file per data source or on-disk format."""

from litzoo.datamodules.digits import DigitsDataModule
from litzoo.datamodules.image_folder import ImageFolderDataModule

__all__ = ["DigitsDataModule", "ImageFolderDataModule"]
