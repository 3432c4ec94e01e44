"""ClassFolderDataModule (a subclass that only decodes its files gets the class-folder DataModule) and the
one image-options check of the core."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import Dataset, SequentialSampler

from litzoo.framework.data.class_folders import ClassFolderDataModule
from litzoo.framework.data.loaders import EpochShuffleSampler
from litzoo.framework.data.transforms import Normalize, check_image_options
from litzoo.framework.errors import LitzooError


class NumberFiles(Dataset):
    """``.num`` text files holding one integer each: ``{"value", "label"}`` items, marked when augmented."""

    def __init__(self, samples: list[tuple[Path, int]], augment: bool) -> None:
        self.samples, self.augment = samples, augment

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        path, label = self.samples[index]
        value = int(path.read_text()) + (100000 if self.augment else 0)
        return {"value": torch.tensor(value), "label": torch.tensor(label)}


class NumberFolderDataModule(ClassFolderDataModule):
    """Writes only its decoding; training items are "augmented" (a visible offset)."""

    def __init__(self, root: str, batch_size: int = 4, num_workers: int = 0) -> None:
        super().__init__(root, "number", (".num",), batch_size, num_workers)
        self.save_hyperparameters()

    def file_dataset(self, samples: list[tuple[Path, int]], split: str) -> NumberFiles:
        return NumberFiles(samples, augment=split == "train")


def write_tree(root: Path, splits: dict[str, dict[str, int]]) -> Path:
    """``splits[split][class] = n`` files; file ``i`` of class ``c`` of split ``s`` holds a number naming all three."""
    for s, (split, classes) in enumerate(splits.items()):
        for c, (name, count) in enumerate(classes.items()):
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                (root / split / name / f"{i}.num").write_text(str(1000 * s + 100 * c + i))
            (root / split / name / "notes.txt").write_text("not a number file")
    return root


def values(loader) -> list[int]:
    return [int(v) for batch in loader for v in batch["value"]]


def test_a_subclass_that_only_decodes_gets_the_class_folder_datamodule(tmp_path):
    root = write_tree(tmp_path, {"train": {"owl": 3, "bat": 4}, "val": {"bat": 2}, "test": {"owl": 1, "bat": 1}})
    dm = NumberFolderDataModule(str(root), batch_size=3)
    assert dm.classes == ["bat", "owl"] and dm.num_classes == 2 and dm.datasets == {}
    assert dm.has_split("val") and dm.hparams.root == str(root)
    dm.setup("fit")
    assert sorted(dm.datasets) == ["train", "val"]
    # val: bat files of the second split entry, in file order, not augmented; label of "bat" is 0
    assert values(dm.val_dataloader()) == [1000, 1001]
    assert [int(v) for b in dm.val_dataloader() for v in b["label"]] == [0, 0]
    assert isinstance(dm.val_dataloader().sampler, SequentialSampler)
    train = dm.train_dataloader()
    assert isinstance(train.sampler, EpochShuffleSampler)  # seeded by (seed, epoch), resumable (issue 18, item 4)
    expected = sorted(100000 + v for v in [100, 101, 102, 103, 0, 1, 2])  # training items only are augmented
    assert sorted(values(train)) == expected
    assert values(dm.test_dataloader()) == values(dm.predict_dataloader()) == [2100, 2000]  # bat first: sorted classes
    assert dm._scan("test")[0]["value"] == 2100


def test_missing_root_or_train_fails_at_construction(tmp_path):
    with pytest.raises(LitzooError, match="number folder root '.*nowhere' does not exist"):
        NumberFolderDataModule(str(tmp_path / "nowhere"))
    (tmp_path / "val").mkdir()
    with pytest.raises(LitzooError, match=r"missing folder '.*train' \(required\): expected one sub-folder per class holding \.num files"):
        NumberFolderDataModule(str(tmp_path))
    with pytest.raises(ValueError, match="batch_size must be positive"):
        NumberFolderDataModule(str(tmp_path), batch_size=0)


@pytest.mark.filterwarnings("ignore:Total length of `list` across ranks is zero")
@pytest.mark.filterwarnings("ignore:.*does not have many workers")
def test_without_val_fit_skips_validation_and_validate_names_the_folder(tmp_path):
    root = write_tree(tmp_path, {"train": {"a": 2, "b": 2}})
    dm = NumberFolderDataModule(str(root), batch_size=2)
    before = sorted(root.rglob("*"))
    dm.prepare_data()
    assert sorted(root.rglob("*")) == before  # never writes, never downloads
    with pytest.raises(LitzooError, match=r"missing folder '.*val' \(needed for the validation split\)"):
        dm.val_dataloader()  # outside fit, a missing val/ is an error
    with pytest.raises(LitzooError, match=r"missing folder '.*test' \(needed for the test split\)"):
        dm.test_dataloader()

    class Tiny(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(()))
            self.validated = False

        def training_step(self, batch, batch_idx):
            return self.weight * batch["value"].float().mean()

        def validation_step(self, batch, batch_idx):
            self.validated = True

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

    model = Tiny()
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, dm)
    assert trainer.global_step == 2 and not model.validated
    with pytest.raises(LitzooError, match="validation"):
        trainer.validate(model, dm)


def test_a_class_unknown_to_train_is_an_error_naming_the_folder(tmp_path):
    root = write_tree(tmp_path, {"train": {"a": 1}, "val": {"zebra": 1}})
    with pytest.raises(LitzooError, match=r"class folder '.*val/zebra' is not a class of"):
        NumberFolderDataModule(str(root)).setup("fit")


def test_image_options_defaults_and_normalisation():
    assert check_image_options(8) == ([0.5], [0.5])
    assert check_image_options(32, 3) == ([0.5] * 3, [0.5] * 3)
    mean, std = check_image_options(4, 3, (0.1, 0.2, 0.3), (0.5, 0.25, 0.1))
    assert mean == [0.1, 0.2, 0.3] and std == [0.5, 0.25, 0.1] and isinstance(mean, list)
    image = torch.tensor([0.2, 0.4, 0.8]).reshape(3, 1, 1)
    assert torch.allclose(Normalize(mean, std)(image).flatten(), torch.tensor([0.2, 0.8, 5.0]))


@pytest.mark.parametrize(("args", "message"), [
    ((0,), "image_size must be positive, got 0"),
    ((8, 2), r"channels must be 1 \(grey levels\) or 3 \(RGB\), got 2"),
    ((8, 1, [0.5, 0.5, 0.5]), r"mean and std need one value per channel \(1\), got \[0.5, 0.5, 0.5\] and \[0.5\]"),
    ((8, 3, None, [0.5, 0.5]), r"mean and std need one value per channel \(3\)"),
    ((8, 3, None, [0.5, 0.0, 0.5]), r"std must be positive, got \[0.5, 0.0, 0.5\]"),
])  # fmt: skip
def test_bad_image_options_raise_naming_the_option(args, message):
    with pytest.raises(ValueError, match=message):
        check_image_options(*args)
