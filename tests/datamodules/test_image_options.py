"""Every DataModule that takes image options checks them with the core's one check, with its messages."""

from __future__ import annotations

import pytest

from litzoo.datamodules.digits import DigitsDataModule
from litzoo.datamodules.image_folder import ImageFolderDataModule
from litzoo.datamodules.image_text import ImageTextDataModule
from litzoo.framework.data.transforms import check_image_options

BAD = [
    {"image_size": 0},
    {"image_size": -4, "channels": 1},
    {"image_size": 8, "channels": 2},
    {"image_size": 8, "channels": 1, "mean": [0.5, 0.5, 0.5]},
    {"image_size": 8, "channels": 3, "std": [0.5, 0.5]},
    {"image_size": 8, "channels": 3, "std": [0.5, 0.0, 0.5]},
]


def message(call) -> str:
    with pytest.raises(ValueError) as info:
        call()
    return str(info.value)


@pytest.mark.parametrize("options", BAD)
def test_image_datamodules_raise_the_core_message(tmp_path, options):
    expected = message(lambda: check_image_options(**options))
    # a bad option is reported before the (missing) data is looked at
    assert message(lambda: ImageFolderDataModule(str(tmp_path / "missing"), **options)) == expected
    assert message(lambda: ImageTextDataModule(str(tmp_path / "missing.jsonl"), **options)) == expected


def test_digits_checks_its_image_size_with_the_core():
    assert message(lambda: DigitsDataModule(image_size=0)) == message(lambda: check_image_options(0))
    assert message(lambda: DigitsDataModule(image_size=-2)) == "image_size must be positive, got -2"
