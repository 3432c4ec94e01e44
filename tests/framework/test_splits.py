"""SplitsDataModule: a DataModule that only builds its datasets gets the setup, the loaders and the checks."""

from __future__ import annotations

import random

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch.utils.data import DataLoader, SequentialSampler

from litzoo.framework.data import DictTensorDataset
from litzoo.framework.data.loaders import EpochShuffleSampler, ResumableLoader, check_loader_options, make_loader
from litzoo.framework.data.splits import SplitsDataModule
from litzoo.framework.errors import LitzooError
from litzoo.framework.random_state import collect_rng_states, derive_seed, restore_rng_states

SIZES = {"train": 40, "val": 12, "test": 9}
OFFSET = {"train": 0, "val": 1000, "test": 2000}  # the items of each split are told apart by their values


class Counting(SplitsDataModule):
    """Writes only its scan: split ``s`` holds the items ``OFFSET[s] + 0 … SIZES[s] - 1``, in order."""

    def __init__(self, batch_size: int = 8, num_workers: int = 0, present: tuple[str, ...] = ("train", "val", "test")) -> None:
        super().__init__(batch_size, num_workers)
        self.present = present
        self.built: list[str] = []

    def has_split(self, split: str) -> bool:
        return split in self.present

    def build_dataset(self, split: str) -> DictTensorDataset:
        if split not in self.present:
            raise LitzooError(f"no {split} file")
        self.built.append(split)
        values = OFFSET[split] + torch.arange(SIZES[split])
        return DictTensorDataset(x=values.float()[:, None], label=values)


def order(loader) -> list[int]:
    return [int(v) for batch in loader for v in batch["label"]]


def test_a_subclass_that_only_builds_gets_every_loader():
    dm = Counting(batch_size=8)
    assert dm.datasets == {}
    for name in ("train", "val", "test", "predict"):
        loader = getattr(dm, f"{name}_dataloader")()
        assert isinstance(loader, DataLoader) and loader.batch_size == 8
        assert set(next(iter(loader))) == {"x", "label"}
    assert sorted(order(dm.train_dataloader())) == list(range(40))
    assert order(dm.val_dataloader()) == list(range(1000, 1012))
    assert order(dm.test_dataloader()) == list(range(2000, 2009))
    assert order(dm.predict_dataloader()) == list(range(2000, 2009))  # predict reads the test split
    assert sorted(dm.built) == ["test", "train", "val"]  # each built once, on first use
    for name in ("train_dataloader", "val_dataloader", "test_dataloader", "predict_dataloader", "setup"):
        assert is_overridden(name, dm, L.LightningDataModule)


def test_only_the_training_split_is_shuffled_from_its_seed_and_epoch_not_the_global_rng(monkeypatch):
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    dm = Counting(batch_size=8)
    for name in ("val", "test", "predict"):
        loader = getattr(dm, f"{name}_dataloader")()
        assert isinstance(loader.sampler, SequentialSampler) and loader.generator is not None  # workers' seeds: not the global RNG
        assert order(loader) == order(getattr(dm, f"{name}_dataloader")())  # in dataset order, every time
    loader = dm.train_dataloader()
    assert isinstance(loader, ResumableLoader) and isinstance(loader.sampler, EpochShuffleSampler) and dm.shuffle_seed == 0
    torch.manual_seed(3)
    first = order(dm.train_dataloader())
    torch.manual_seed(4)
    assert order(dm.train_dataloader()) == first  # the global RNG plays no part
    assert first != list(range(40)) and sorted(first) == list(range(40))  # a permutation of the whole split
    assert first == torch.randperm(40, generator=torch.Generator().manual_seed(derive_seed(0, 0))).tolist()  # (seed 0, epoch 0)
    loader = dm.train_dataloader()
    assert order(loader) == first
    second = order(loader)  # a whole pass moves the loader to the next epoch, for loops without Lightning
    assert loader.epoch == 2 and second != first and sorted(second) == list(range(40))
    loader.sampler.set_epoch(1)  # as Lightning does every epoch
    assert order(loader) == second
    monkeypatch.setenv("PL_GLOBAL_SEED", "5")  # seed_everything(5)
    other = Counting(batch_size=8)
    assert other.shuffle_seed == 5 and order(other.train_dataloader()) != first


def test_setup_builds_what_the_stage_needs():
    dm = Counting()
    dm.setup("fit")
    assert sorted(dm.datasets) == ["train", "val"]
    dm.setup("validate")
    dm.setup("test")
    assert sorted(dm.datasets) == ["test", "train", "val"] and sorted(dm.built) == ["test", "train", "val"]
    dm.setup("predict")
    assert len(dm.built) == 3  # nothing is built twice
    every = Counting()
    every.setup(None)
    assert every.built == ["train", "val", "test"]  # `splits`, in order


def test_a_missing_val_split_means_no_validation_unless_the_module_says_otherwise():
    dm = Counting(present=("train",))
    dm.setup(None)
    assert sorted(dm.datasets) == ["train"]
    assert dm.val_dataloader() == []
    with pytest.raises(LitzooError, match="no test file"):  # asked for, a missing split raises the module's own error
        dm.test_dataloader()

    class Strict(Counting):
        def skips_missing_val(self) -> bool:
            return False

    with pytest.raises(LitzooError, match="no val file"):
        Strict(present=("train",)).val_dataloader()


def test_the_training_split_is_always_set_up():
    dm = Counting(present=("val",))
    with pytest.raises(LitzooError, match="no train file"):
        dm.setup("fit")


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"batch_size": 0}, "batch_size must be positive, got 0"),
    ({"batch_size": -3}, "batch_size must be positive, got -3"),
    ({"num_workers": -1}, "num_workers must be 0 or more, got -1"),
])  # fmt: skip
def test_bad_loader_options_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Counting(**kwargs)
    with pytest.raises(ValueError, match=message):
        check_loader_options(**{"batch_size": 1, "num_workers": 0, **kwargs})


def test_workers_are_kept_alive_only_when_there_are_some_and_not_for_training():
    assert not Counting(num_workers=0).val_dataloader().persistent_workers
    loader = Counting(num_workers=2).val_dataloader()
    assert loader.num_workers == 2 and loader.persistent_workers
    loader = Counting(num_workers=2).train_dataloader()  # started every epoch, seeded from (seed, epoch, rank)
    assert loader.num_workers == 2 and not loader.persistent_workers
    with pytest.raises(ValueError, match="persistent_workers must be False"):
        ResumableLoader(DictTensorDataset(label=torch.arange(4)), num_workers=1, persistent_workers=True)


# ---------------------------------------------------------------- the resumable training order
class Augmented(torch.utils.data.Dataset):
    """Item i: (i, a random draw of torch, of NumPy and of Python's random) in the process that reads it."""

    def __len__(self) -> int:
        return 24

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.tensor([i, torch.rand(()).item(), float(np.random.rand()), random.random()], dtype=torch.float64)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_loader_resumed_mid_epoch_reads_the_rest_of_that_epoch_exactly(num_workers):
    def run(loader, epoch):
        loader.sampler.set_epoch(epoch)  # Lightning's call at every epoch start
        return list(loader)

    start = collect_rng_states()
    straight = make_loader(Augmented(), 4, shuffle=True, num_workers=num_workers, seed=3)
    epochs = [run(straight, e) for e in range(3)]
    restore_rng_states(start)
    killed = make_loader(Augmented(), 4, shuffle=True, num_workers=num_workers, seed=3)
    run(killed, 0)
    killed.sampler.set_epoch(1)
    iterator = iter(killed)
    read = [next(iterator) for _ in range(2)]
    state = killed.state_dict()
    assert state == {"seed": 3, "epoch": 1, "batches": 2}
    states = collect_rng_states()  # what ExactResume saves with it
    resumed = make_loader(Augmented(), 4, shuffle=True, num_workers=num_workers, seed=99)  # the seed comes from the state
    resumed.load_state_dict(state)
    torch.manual_seed(123)  # another process
    np.random.seed(123)
    random.seed(123)
    iterator = iter(resumed)  # Lightning creates it before setting the epoch: the pass starts on the first next()
    resumed.sampler.set_epoch(1)
    restore_rng_states(states)
    rest = list(iterator)
    assert len(read) + len(rest) == 6 and all(torch.equal(a, b) for a, b in zip(read + rest, epochs[1], strict=True))
    assert all(torch.equal(a, b) for a, b in zip(run(resumed, 2), epochs[2], strict=True))  # and the next epoch as well
    assert not torch.equal(epochs[1][0], epochs[2][0])


def test_a_saved_position_of_another_epoch_is_not_skipped():
    loader = make_loader(DictTensorDataset(label=torch.arange(20)), 4, shuffle=True, seed=0)
    iterator = iter(loader)
    next(iterator)
    state = loader.state_dict()  # epoch 0, one batch read
    other = make_loader(DictTensorDataset(label=torch.arange(20)), 4, shuffle=True, seed=0)
    other.load_state_dict(state)
    other.sampler.set_epoch(1)  # a limit_train_batches epoch that Lightning ended early: the next one starts afresh
    assert len(list(other)) == 5
    full = make_loader(DictTensorDataset(label=torch.arange(20)), 4, shuffle=True, seed=0)
    list(full)
    assert full.state_dict() == {"seed": 0, "epoch": 1, "batches": 0}  # after the last batch: the start of the next epoch


def test_the_sampler_shards_one_order_over_the_ranks():
    dataset = list(range(10))
    shards = [list(EpochShuffleSampler(dataset, seed=1, num_replicas=3, rank=r)) for r in range(3)]
    order = torch.randperm(10, generator=torch.Generator().manual_seed(derive_seed(1, 0))).tolist()
    assert [len(s) for s in shards] == [4, 4, 4] and len(EpochShuffleSampler(dataset, 1, num_replicas=3, rank=0)) == 4
    padded = order + order[:2]  # equal shards: the first ones again, as torch's DistributedSampler
    assert shards == [padded[r::3] for r in range(3)]
    assert list(EpochShuffleSampler(dataset, seed=1)) == order  # one process: the whole order


def test_the_shuffle_seed_is_saved_and_restored(monkeypatch):
    monkeypatch.setenv("PL_GLOBAL_SEED", "7")
    dm = Counting(batch_size=8)
    first = order(dm.train_dataloader())
    assert dm.state_dict() == {"shuffle_seed": 7}
    monkeypatch.setenv("PL_GLOBAL_SEED", "8")  # a resumed run given another seed
    resumed = Counting(batch_size=8)
    resumed.load_state_dict(dm.state_dict())
    assert resumed.shuffle_seed == 7 and order(resumed.train_dataloader()) == first


def test_splits_drawn_together_are_built_once():
    class Together(SplitsDataModule):
        splits = ("train", "val")
        test_split = "val"

        def __init__(self) -> None:
            super().__init__(batch_size=4)
            self.draws = 0

        def build_datasets(self, split: str) -> dict[str, DictTensorDataset]:
            self.draws += 1
            values = torch.randperm(20, generator=torch.Generator().manual_seed(0))
            return {"train": DictTensorDataset(label=values[:15]), "val": DictTensorDataset(label=values[15:])}

    dm = Together()
    assert order(dm.val_dataloader()) == torch.randperm(20, generator=torch.Generator().manual_seed(0))[15:].tolist()
    dm.setup("fit")
    assert dm.draws == 1 and sorted(dm.datasets) == ["train", "val"]
    assert order(dm.test_dataloader()) == order(dm.val_dataloader())  # test_split = "val"
    assert not dm.has_split("test")


def test_broken_subclasses_say_what_is_missing():
    class Nothing(SplitsDataModule):
        pass

    with pytest.raises(NotImplementedError, match="Nothing implements neither build_dataset"):
        Nothing(batch_size=2).setup("fit")

    class Wrong(SplitsDataModule):
        def build_datasets(self, split: str) -> dict[str, DictTensorDataset]:
            return {"other": DictTensorDataset(label=torch.arange(3))}

    with pytest.raises(RuntimeError, match=r"build_datasets\('train'\) returned no 'train' dataset"):
        Wrong(batch_size=2).train_dataloader()


class GraphLoader(DataLoader):
    """Stands for torch_geometric's DataLoader: another class, its own collation and a seeded generator."""

    def __init__(self, dataset, batch_size: int, shuffle: bool, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed) if shuffle else None
        super().__init__(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator, collate_fn=lambda items: items)


def test_another_loader_class_through_one_method():
    class Graphs(SplitsDataModule):
        def __init__(self) -> None:
            super().__init__(batch_size=4)

        def build_datasets(self, split: str) -> dict[str, list]:
            sizes = {**SIZES, "finetune": 6}
            return {name: [{"id": 3000 * (name == "finetune") + OFFSET.get(name, 0) + i} for i in range(n)] for name, n in sizes.items()}

        def make_dataloader(self, dataset, batch_size: int, shuffle: bool) -> DataLoader:
            return GraphLoader(dataset, batch_size, shuffle, seed=7)

        def finetune_dataloader(self, batch_size: int | None = None) -> DataLoader:
            return self._loader("finetune", shuffle=True, batch_size=batch_size)

    dm = Graphs()
    loaders = [dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader(), dm.predict_dataloader(), dm.finetune_dataloader(2)]
    assert all(isinstance(loader, GraphLoader) for loader in loaders)
    ids = [[item["id"] for batch in loader for item in batch] for loader in loaders]
    assert ids[1] == list(range(1000, 1012)) and ids[2] == ids[3] == list(range(2000, 2009))
    assert sorted(ids[0]) == list(range(40)) and ids[0] != list(range(40))
    assert [item["id"] for batch in dm.train_dataloader() for item in batch] == ids[0]  # the subclass's own seeded order
    assert loaders[4].batch_size == 2 and loaders[0].batch_size == 4 and sorted(ids[4]) == list(range(3000, 3006))


@pytest.mark.filterwarnings("ignore:Total length of `list` across ranks is zero")
@pytest.mark.filterwarnings("ignore:.*does not have many workers")
def test_lightning_fits_and_tests_through_the_base():
    class Tiny(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(1, 1)
            self.seen: dict[str, list[int]] = {"train": [], "val": [], "test": []}

        def training_step(self, batch, batch_idx):
            self.seen["train"] += batch["label"].tolist()
            return self.linear(batch["x"]).mean()

        def validation_step(self, batch, batch_idx):
            self.seen["val"] += batch["label"].tolist()

        def test_step(self, batch, batch_idx):
            self.seen["test"] += batch["label"].tolist()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0)  # fmt: skip
    model = Tiny()
    trainer.fit(model, Counting(batch_size=8))
    trainer.test(model, Counting(batch_size=8), verbose=False)
    assert sorted(model.seen["train"]) == list(range(40)) and model.seen["train"] != list(range(40))
    assert model.seen["val"] == list(range(1000, 1012)) and model.seen["test"] == list(range(2000, 2009))
    without_val = Tiny()
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(without_val, Counting(batch_size=8, present=("train",)))
    assert trainer.global_step == 5 and without_val.seen["val"] == []
