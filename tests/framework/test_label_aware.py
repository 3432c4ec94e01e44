"""LabelAwareAugmentDataModule: each label's operations reach only that label's training images, validation is
untouched, the draws come from (seed, epoch, position) only, and a fit resumed mid-epoch augments as the
uninterrupted one."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from litzoo.framework.data import DictTensorDataset, SplitsDataModule
from litzoo.framework.data.augment_ops import AugmentPolicy, save_policy
from litzoo.framework.data.label_aware import LabelAwareAugmentDataModule, resolve_policy_path
from litzoo.framework.errors import LitzooError
from litzoo.framework.resume import ExactResume


@pytest.fixture(autouse=True)
def lightning_seed_left_as_found(monkeypatch):
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    monkeypatch.delenv("PL_SEED_WORKERS", raising=False)


class IndexedImages(SplitsDataModule):
    """24 training / 9 validation images of 3 labels, dict batches with the row index; images in [0.1, 0.9]."""

    num_classes = 3

    def __init__(self, batch_size: int = 4) -> None:
        super().__init__(batch_size)

    def build_datasets(self, split: str) -> dict[str, DictTensorDataset]:
        g = torch.Generator().manual_seed(7)
        out = {}
        for name, n in (("train", 24), ("val", 9), ("test", 9)):
            images = 0.1 + 0.8 * torch.rand(n, 1, 6, 6, generator=g)
            out[name] = DictTensorDataset(image=images, label=torch.arange(n) % 3, index=torch.arange(n))
        return out


class Recorder(L.LightningModule):
    """A linear classifier that keeps every batch it sees: ``(epoch, batch_idx, images, index)``."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(36, 3))
        self.train_seen: list[tuple[int, int, torch.Tensor, torch.Tensor]] = []
        self.val_seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def training_step(self, batch, batch_idx):
        self.train_seen.append((self.current_epoch, batch_idx, batch["image"].detach().clone(), batch["index"].clone()))
        return nn.functional.cross_entropy(self.net(batch["image"]), batch["label"])

    def validation_step(self, batch, batch_idx):
        self.val_seen.append((batch["image"].clone(), batch["index"].clone()))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def trainer(root: Path, epochs: int = 2, callbacks=(), **kwargs) -> L.Trainer:
    return L.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                     default_root_dir=root, callbacks=list(callbacks), **kwargs)  # fmt: skip


PER_LABEL = AugmentPolicy(sets={0: (("Invert",),), 1: (("FlipX",), ("FlipY",))}, shared=(("Identity",),))


def test_each_label_gets_only_its_ops_and_validation_is_untouched(tmp_path):
    inner = IndexedImages()
    train = inner.dataset("train")
    val = inner.dataset("val")
    policy_file = save_policy(PER_LABEL, tmp_path / "policy.json")
    data = LabelAwareAugmentDataModule(inner, str(policy_file))
    module = Recorder()
    trainer(tmp_path, epochs=1, limit_val_batches=3).fit(module, datamodule=data)
    seen = 0
    for _, _, images, index in module.train_seen:
        for image, i in zip(images, index.tolist()):
            original, label = train[i]["image"], i % 3
            if label == 0:
                assert torch.allclose(image, 1 - original)
            elif label == 1:
                assert torch.equal(image, original.flip(-1)) or torch.equal(image, original.flip(-2))
            else:
                assert torch.equal(image, original)
            seen += 1
    assert seen == 24  # one epoch: every training image once
    flips = {torch.equal(img, train[i]["image"].flip(-1)) for _, _, ims, idx in module.train_seen for img, i in zip(ims, idx.tolist()) if i % 3 == 1}
    assert flips == {True, False}  # both sub-policies of label 1 drawn
    assert module.val_seen and all(torch.equal(img, val[i]["image"]) for ims, idx in module.val_seen for img, i in zip(ims, idx.tolist()))


def test_normalised_images_are_augmented_in_pixel_space():
    data = LabelAwareAugmentDataModule(IndexedImages(), PER_LABEL, mean=[0.5], std=[0.25])
    pixels = torch.rand(3, 1, 6, 6)
    batch = {"image": (pixels - 0.5) / 0.25, "label": torch.tensor([0, 2, 0])}
    out = data.augment(batch, epoch=0, position=0)["image"]
    assert torch.allclose(out[0], ((1 - pixels[0]) - 0.5) / 0.25, atol=1e-6)  # inverted in [0, 1], normalised again
    assert torch.allclose(out[1], batch["image"][1], atol=1e-6)


def test_label_agnostic_mode_draws_from_one_shared_set():
    policy = AugmentPolicy(sets={0: (("Invert",),), 1: (("FlipX",),)})
    data = LabelAwareAugmentDataModule(IndexedImages(), policy, label_agnostic=True)
    pixels = 0.1 + 0.8 * torch.rand(64, 1, 6, 6)
    out = data.augment({"image": pixels, "label": torch.zeros(64, dtype=torch.long)}, 0, 0)["image"]
    inverted = [torch.allclose(o, 1 - p) for o, p in zip(out, pixels)]
    assert 0 < sum(inverted) < 64  # label 0 images also get label 1's flips: the sets are pooled
    assert all(inv or torch.equal(o, p.flip(-1)) for inv, o, p in zip(inverted, out, pixels))


def test_draws_depend_on_seed_epoch_and_position_only():
    policy = AugmentPolicy(sets={0: (("Rotate", "TranslateX", "Cutout"), ("ShearY", "Posterize", "TranslateY"))})
    batch = {"image": torch.rand(8, 1, 8, 8), "label": torch.zeros(8, dtype=torch.long)}
    first = LabelAwareAugmentDataModule(IndexedImages(), policy, seed=3)
    second = LabelAwareAugmentDataModule(IndexedImages(), policy, seed=3)  # another process / DDP rank
    torch.manual_seed(0)
    a = first.augment(batch, 1, 5)["image"]
    torch.manual_seed(123)  # the global random state plays no part
    torch.rand(10)
    assert torch.equal(a, second.augment(batch, 1, 5)["image"])
    assert not torch.equal(a, first.augment(batch, 1, 6)["image"]) and not torch.equal(a, first.augment(batch, 2, 5)["image"])
    assert not torch.equal(a, LabelAwareAugmentDataModule(IndexedImages(), policy, seed=4).augment(batch, 1, 5)["image"])


def test_a_resumed_fit_draws_as_the_uninterrupted_one(tmp_path):
    policy = AugmentPolicy(sets={c: (("Rotate", "TranslateX", "Cutout"), ("ShearX", "Brightness", "TranslateY")) for c in range(3)})

    def run(root, ckpt_path=None, save=False, seed=0):
        L.seed_everything(seed)
        data = LabelAwareAugmentDataModule(IndexedImages(), policy)
        module = Recorder()
        callbacks = [ExactResume()]
        if save:
            callbacks.append(ModelCheckpoint(dirpath=root, filename="{step}", every_n_train_steps=8, save_top_k=-1))
        trainer(root, epochs=3, callbacks=callbacks, limit_val_batches=0, enable_checkpointing=save).fit(module, datamodule=data, ckpt_path=ckpt_path)
        return module

    full = run(tmp_path / "full", save=True)
    checkpoint = tmp_path / "full" / "step=8.ckpt"  # epoch 1 after two of its six batches
    resumed = run(tmp_path / "resumed", ckpt_path=checkpoint, seed=99)  # another seed_everything: the state must come from the file
    expected = {(e, b): (images, index) for e, b, images, index in full.train_seen}
    assert [(e, b) for e, b, _, _ in resumed.train_seen][:2] == [(1, 2), (1, 3)]
    for epoch, batch_idx, images, index in resumed.train_seen:
        assert torch.equal(index, expected[epoch, batch_idx][1]) and torch.equal(images, expected[epoch, batch_idx][0])
    assert len(resumed.train_seen) == 18 - 8


def test_shipped_policy_files_are_found_from_any_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    found = resolve_policy_path("configs/la3/digits_policy.json")
    assert found.is_absolute() and found.is_file()
    assert resolve_policy_path("elsewhere/p.json") == Path("elsewhere/p.json")  # not shipped: as given, for its error


def test_wrapper_passes_through_and_refuses_what_would_silence_it(tmp_path):
    inner = IndexedImages()
    data = LabelAwareAugmentDataModule(inner, PER_LABEL, seed=5)
    assert data.num_classes == 3 and data.datamodule is inner
    assert data.state_dict() == {"datamodule": inner.state_dict(), "augment_seed": 5}
    with pytest.raises(LitzooError, match="does not exist"):
        LabelAwareAugmentDataModule(inner, str(tmp_path / "nope.json"))
    no_set = LabelAwareAugmentDataModule(inner, save_policy(AugmentPolicy(sets={0: (("Invert",),)}), tmp_path / "only0.json"))
    with pytest.raises(LitzooError, match=r"only0\.json: the policy has no sub-policies for label 1"):
        no_set.augment({"image": torch.rand(2, 1, 6, 6), "label": torch.tensor([0, 1])}, 0, 0)
    with pytest.raises(ValueError, match="both mean and std"):
        LabelAwareAugmentDataModule(inner, PER_LABEL, mean=[0.5])

    class Overrides(Recorder):
        def on_after_batch_transfer(self, batch, dataloader_idx):
            return batch

    with pytest.raises(LitzooError, match="overrides on_after_batch_transfer"):
        trainer(tmp_path, epochs=1).fit(Overrides(), datamodule=data)


DDP_SCRIPT = '''
import sys
import lightning as L
import torch
import torch.distributed as dist
from litzoo.framework.data.augment_ops import AugmentPolicy
from litzoo.framework.data.label_aware import LabelAwareAugmentDataModule
from litzoo.framework.data import SplitsDataModule

rank, world, port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
L.seed_everything(11)  # every rank seeded alike, as under Lightning DDP
torch.manual_seed(1000 + rank)  # but a rank-specific global state: the draws must not read it


class Empty(SplitsDataModule):
    def __init__(self):
        super().__init__(4)


policy = AugmentPolicy(sets={0: (("Rotate", "TranslateX", "Cutout"), ("ShearY", "Posterize", "TranslateY"))})
data = LabelAwareAugmentDataModule(Empty(), policy)
batch = {"image": torch.linspace(0, 1, 8 * 64).reshape(8, 1, 8, 8), "label": torch.zeros(8, dtype=torch.long)}
torch.save({"augmented": data.augment(batch, 2, 7)["image"], "seed": data.seed}, f"{out}/rank{rank}.pt")
dist.destroy_process_group()
'''


def test_the_same_batch_is_augmented_alike_on_two_gloo_ranks(tmp_path):
    from gloo_ranks import run_ranks

    script = tmp_path / "ranks.py"
    script.write_text(DDP_SCRIPT)
    run_ranks(script, 2, tmp_path)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0]["seed"] == ranks[1]["seed"] == 11
    assert torch.equal(ranks[0]["augmented"], ranks[1]["augmented"])
    batch = torch.linspace(0, 1, 8 * 64).reshape(8, 1, 8, 8)
    assert not torch.equal(ranks[0]["augmented"], batch)  # it was augmented
