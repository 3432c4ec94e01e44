"""LightningDataModules, one file per data source or on-disk format."""

from datamodules.digits import DigitsDataModule
from datamodules.image_folder import ImageFolderDataModule

__all__ = ["DigitsDataModule", "ImageFolderDataModule"]
