"""Batch helpers (framework/data/batches.py): inputs and labels of any batch layout, and batches of a run's
data through Lightning's public API: in setup (DataModule or the module's own hook; loaders passed straight
to fit refused with what to pass) and once Lightning has built the loaders."""

from __future__ import annotations

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from litzoo.framework.data.batches import (
    batch_inputs,
    batch_labels,
    first_loader,
    reference_batch,
    reference_loader,
    sample_training_batches,
    setup_loader,
)
from litzoo.framework.errors import LitzooError


def dataset(n: int = 24, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 3, generator=g), torch.randint(0, 2, (n,), generator=g))


class Linear(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(3, 2)

    def forward(self, x):
        return self.layer(x)

    def training_step(self, batch, _):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch, _):
        pass

    def test_step(self, batch, _):
        pass

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class OwnLoaders(Linear):
    """A module that provides its own training loader (Lightning's model hook)."""

    def __init__(self, loader: DataLoader) -> None:
        super().__init__()
        self.loader = loader

    def train_dataloader(self):
        return self.loader


class Data(L.LightningDataModule):
    def __init__(self, train: DataLoader, test: DataLoader | None = None) -> None:
        super().__init__()
        self.train, self.test = train, test

    def train_dataloader(self):
        return self.train

    def test_dataloader(self):
        return self.test


class Probe(L.Callback):
    """Records what the helpers give at setup and at on_train_start / on_fit_end."""

    def __init__(self) -> None:
        self.seen: dict[str, object] = {}

    def setup(self, trainer, pl_module, stage):
        self.seen["setup"] = setup_loader(trainer, stage, "Probe")
        if stage == "fit":
            self.seen["sampled"] = sample_training_batches(trainer, 2, seed=3, who="Probe")

    def on_train_start(self, trainer, pl_module):
        self.seen["train_start"] = setup_loader(trainer, "fit", "Probe")

    def on_fit_end(self, trainer, pl_module):
        self.seen["reference"] = reference_batch(trainer, pl_module, "Probe")


def run(module, *loaders, datamodule=None, fn="fit"):
    probe = Probe()
    trainer = L.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, callbacks=[probe])
    getattr(trainer, fn)(module, *loaders, datamodule=datamodule)
    return probe.seen


def test_inputs_and_labels_of_every_batch_layout():
    image, label, audio = torch.zeros(2, 1, 4, 4), torch.tensor([0, 1]), torch.zeros(2, 1, 8, 8)
    assert batch_inputs({"image": image, "label": label}) is image
    assert batch_inputs({"label": label, "audio": audio}) is audio  # the input key wins over order
    assert batch_inputs((image, label)) is image and batch_inputs(image) is image
    assert batch_labels({"image": image, "label": label}) is label and batch_labels((image, label)) is label
    assert batch_labels({"image": image}) is None and batch_labels(image) is None
    with pytest.raises(TypeError, match="str"):
        batch_inputs("not a batch")


def test_first_loader_unwraps_collections():
    a, b = DataLoader(dataset()), DataLoader(dataset())
    assert first_loader({"x": [a, b]}) is a and first_loader((b,)) is b and first_loader(a) is a
    assert first_loader([]) is None and first_loader(None) is None


def test_setup_reads_the_datamodule_and_the_modules_own_hook():
    train = DataLoader(dataset(), batch_size=4)
    seen = run(Linear(), datamodule=Data(train))
    assert seen["setup"] is train and seen["train_start"] is not None
    seen = run(OwnLoaders(train))
    assert seen["setup"] is train
    test = DataLoader(dataset(seed=1), batch_size=4)
    assert run(Linear(), datamodule=Data(train, test), fn="test")["setup"] is test


def test_loaders_passed_straight_to_fit_are_refused_in_setup_with_what_to_pass():
    loader = DataLoader(dataset(), batch_size=4)
    with pytest.raises(LitzooError, match=r"^Probe needs a train batch .*trainer\.fit\(model, datamodule=\.\.\.\).*train_dataloader\(\).*example_input_array"):
        run(Linear(), loader)
    with pytest.raises(LitzooError, match=r"trainer\.test\(model, datamodule=\.\.\.\).*test_dataloader\(\)"):
        run(Linear(), loader, fn="test")
    with pytest.raises(ValueError, match="stage"):
        setup_loader(L.Trainer(logger=False), "sanity", "Probe")


def test_built_loaders_are_read_after_setup_whoever_passed_them():
    """From on_train_start on, the loaders passed straight to fit are public (trainer.train_dataloader)."""

    class Later(Probe):
        def setup(self, trainer, pl_module, stage):
            pass

    probe, train, val = Later(), DataLoader(dataset(), batch_size=4), DataLoader(dataset(seed=1), batch_size=5)
    trainer = L.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, callbacks=[probe])
    trainer.fit(Linear(), train, val)
    assert probe.seen["train_start"] is train
    assert torch.equal(probe.seen["reference"], next(iter(val))[0])  # the validation loader first
    assert reference_loader(trainer, "Probe", ("train",)) is train


def test_sampled_training_batches_are_seeded_and_leave_the_run_alone():
    """The same samples for the same seed wherever they are drawn (setup here), and the global RNG untouched."""
    data = dataset()
    seen = run(Linear(), datamodule=Data(DataLoader(data, batch_size=4, shuffle=True)))
    generator = torch.Generator().manual_seed(3)
    order = list(torch.utils.data.RandomSampler(data, generator=generator))[:8]
    x = torch.cat([batch[0] for batch in seen["sampled"]])
    assert len(seen["sampled"]) == 2 and torch.equal(x, data.tensors[0][order])

    class Draw(L.Callback):
        def on_train_start(self, trainer, pl_module):
            state = torch.get_rng_state()
            self.batches = sample_training_batches(trainer, 2, seed=3, who="Draw")
            self.untouched = torch.equal(state, torch.get_rng_state())

    draw = Draw()
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[draw])
    trainer.fit(Linear(), DataLoader(data, batch_size=4, shuffle=True))
    assert draw.untouched and torch.equal(torch.cat([b[0] for b in draw.batches]), x)


def test_reference_batch_needs_a_loader():
    class NoData(L.Callback):
        def on_fit_start(self, trainer, pl_module):
            reference_batch(trainer, pl_module, "NoData")

    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[NoData()])
    with pytest.raises(LitzooError, match="NoData needs a val or train dataloader"):
        trainer.fit(Linear(), DataLoader(dataset(), batch_size=4))
