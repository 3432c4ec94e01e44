"""The masked-modelling base (framework/masked_modelling.py) on a tiny fake network: fixed evaluation masks
(reproducible, independent of the training RNG), the mean-pixel baseline by hand, the reconstruction grid,
predictions, parameter groups, and the checks of its arguments."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor, nn
from torch.optim import SGD
from torch.utils.data import DataLoader

from litzoo.framework.masked_modelling import MaskedModellingModule, mean_baseline_loss
from litzoo.framework.nn import patchify, random_token_mask, unpatchify


class FakeMaskedNet(nn.Module):
    """4x4 one-channel images, 2x2 patches (L = 4): predicts ``fill`` for every patch pixel; the loss is the
    masked-patch MSE to the raw pixels. Records the noise it was given."""

    def __init__(self, fill: float = 0.5) -> None:
        super().__init__()
        self.patch_embed = nn.Module()
        self.patch_embed.num_patches = 4
        self.proj = nn.Linear(4, 4)  # a 2-D weight (decayed) and a bias (not)
        self.pos_embed = nn.Parameter(torch.zeros(1, 4, 4))  # 3-D, not decayed by its name
        self.gamma = nn.Parameter(torch.ones(4, 4))  # 2-D, not decayed because the network lists it
        self.fill = fill
        self.norm_pix_loss = False
        self.noises: list[Tensor | None] = []

    def no_weight_decay(self) -> set[str]:
        return {"gamma"}

    def patchify(self, images: Tensor) -> Tensor:
        return patchify(images, 2)

    def unpatchify(self, patches: Tensor) -> Tensor:
        return unpatchify(patches, 2, 1)

    def target(self, images: Tensor) -> Tensor:
        return self.patchify(images)

    def forward(self, images: Tensor, mask_ratio: float, noise: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        self.noises.append(noise)
        mask = random_token_mask(len(images), 4, mask_ratio, noise=noise, device=images.device).mae_mask(images.dtype)
        pred = self.fill + 0 * self.proj(self.patchify(images)) + 0 * self.gamma.sum() + 0 * self.pos_embed.sum()
        loss = ((pred - self.target(images)).pow(2).mean(-1) * mask).sum() / mask.sum()
        return loss, pred, mask

    def forward_features(self, images: Tensor) -> Tensor:
        return self.patchify(images).mean(dim=1)


class FakeModule(MaskedModellingModule):
    def __init__(self, mask_ratio: float = 0.5, blr: float | None = None, warmup_epochs: float = 0.0, val_seed: int = 7,
                 num_images: int = 2, optimizer=lambda params: SGD(params, lr=0.1, weight_decay=0.1), lr_scheduler=None) -> None:  # fmt: skip
        super().__init__(FakeMaskedNet(), mask_ratio, blr, warmup_epochs, val_seed, num_images, optimizer, lr_scheduler)


def _images(batch: int = 3, seed: int = 0) -> Tensor:
    images = torch.rand(batch, 1, 4, 4, generator=torch.Generator().manual_seed(seed))
    images[:, 0, 0, 0], images[:, 0, 3, 3] = 0.0, 1.0  # every image spans [0, 1]: the grid shows raw values
    return images


def test_fixed_noise_is_the_seeded_generator_and_leaves_the_training_rng_alone():
    module = FakeModule()
    images = _images()
    torch.manual_seed(123)
    state = torch.get_rng_state()
    noise = module._fixed_noise(images, 2)
    assert torch.equal(torch.get_rng_state(), state)  # the global (training) RNG is not consumed
    assert torch.equal(noise, torch.rand(3, 4, generator=torch.Generator().manual_seed(7 + 2)))  # val_seed + batch_idx
    torch.rand(100)  # training draws in between
    torch.manual_seed(999)
    assert torch.equal(module._fixed_noise(images, 2), noise)
    assert not torch.equal(module._fixed_noise(images, 3), noise)
    generator = module.fixed_generator(2)  # a method drawing more (DiffMAE) continues the same generator
    assert torch.equal(module._fixed_noise(images, 2, generator), noise)
    reference = torch.Generator().manual_seed(9)
    torch.rand(3, 4, generator=reference)
    assert torch.equal(torch.rand(2, generator=generator), torch.rand(2, generator=reference))


def test_evaluation_uses_the_fixed_noise_and_training_does_not():
    module = FakeModule()
    images = _images()
    logged: dict[str, float] = {}
    module.log = lambda name, value, **kwargs: logged.__setitem__(name, float(value))  # type: ignore[method-assign]
    module._evaluate({"image": images}, 1, "val")
    assert torch.equal(module.model.noises[-1], module._fixed_noise(images, 1))
    module.training_step({"image": images}, 0)
    assert module.model.noises[-1] is None  # a fresh random mask every training step
    assert set(logged) == {"val/loss", "val/mean_baseline_loss", "train/loss"}


def test_validation_metrics_are_identical_whatever_the_global_seed(tmp_path):
    batches = [{"image": _images(seed=s)} for s in range(3)]
    results = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        module = FakeModule(num_images=0)
        trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
        results.append(trainer.validate(module, DataLoader(batches, batch_size=None), verbose=False)[0])
    assert results[0] == results[1] and results[0]["val/loss"] > 0


def test_mean_baseline_loss_by_hand():
    target = torch.tensor([[[1.0, 3.0], [10.0, 10.0], [5.0, 7.0]]])  # (1, 3 patches, 2 values)
    removed = torch.tensor([[1.0, 0.0, 1.0]])  # patches 0 and 2 removed: their values 1, 3, 5, 7 -> constant 4
    expected = (((1 - 4) ** 2 + (3 - 4) ** 2) / 2 + ((5 - 4) ** 2 + (7 - 4) ** 2) / 2) / 2  # 5.0
    assert float(mean_baseline_loss(target, removed)) == pytest.approx(expected)
    assert float(mean_baseline_loss(target, removed.bool())) == pytest.approx(expected)  # Hiera's boolean maps


def test_logged_baseline_equals_the_hand_computation_on_the_batch():
    module = FakeModule()
    images = _images()
    logged: dict[str, float] = {}
    module.log = lambda name, value, **kwargs: logged.__setitem__(name, float(value))  # type: ignore[method-assign]
    module._evaluate({"image": images}, 0, "test")
    mask = random_token_mask(3, 4, 0.5, noise=module._fixed_noise(images, 0)).drop
    patches = patchify(images, 2)
    removed_values = [float(v) for b in range(3) for n in range(4) if mask[b, n] for v in patches[b, n]]
    constant = sum(removed_values) / len(removed_values)
    per_patch = [sum((float(v) - constant) ** 2 for v in patches[b, n]) / 4 for b in range(3) for n in range(4) if mask[b, n]]
    assert logged["test/mean_baseline_loss"] == pytest.approx(sum(per_patch) / len(per_patch), rel=1e-6)


def test_reconstruction_grid_rows_by_hand(tmp_path, monkeypatch):
    module = FakeModule(num_images=2)
    images = _images()
    logger = TensorBoardLogger(tmp_path)
    logged = []
    monkeypatch.setattr(logger.experiment, "add_image", lambda tag, image, step: logged.append((tag, image)))
    trainer = L.Trainer(accelerator="cpu", logger=logger, enable_progress_bar=False, enable_model_summary=False)
    trainer.validate(module, DataLoader([{"image": images}], batch_size=None), verbose=False)
    assert [tag for tag, _ in logged] == ["val/reconstruction"]
    grid = logged[0][1]
    assert grid.shape == (3, 3 * 4, 2 * 4)  # rows original / masked / reconstruction, 2 images side by side
    removed = random_token_mask(3, 4, 0.5, noise=module._fixed_noise(images, 0)).drop
    for b in range(2):
        original, masked, recon = (grid[0, 4 * r : 4 * r + 4, 4 * b : 4 * b + 4] for r in range(3))
        torch.testing.assert_close(original, images[b, 0])  # images span [0, 1]: shown as they are
        for n in range(4):
            rows, cols = slice(2 * (n // 2), 2 * (n // 2) + 2), slice(2 * (n % 2), 2 * (n % 2) + 2)
            if removed[b, n]:
                assert (masked[rows, cols] == 0).all()  # removed patches at the image's minimum
                assert torch.allclose(recon[rows, cols], torch.full((2, 2), 0.5))  # the prediction
            else:
                torch.testing.assert_close(masked[rows, cols], images[b, 0, rows, cols])
                torch.testing.assert_close(recon[rows, cols], images[b, 0, rows, cols])
        assert torch.equal(grid[0], grid[1]) and torch.equal(grid[1], grid[2])  # one channel shown grey


def test_no_grid_without_images_nor_in_the_sanity_check(tmp_path, monkeypatch):
    logger = TensorBoardLogger(tmp_path)
    logged = []
    monkeypatch.setattr(logger.experiment, "add_image", lambda tag, image, step: logged.append(tag))
    batches = DataLoader([{"image": _images()}], batch_size=None)
    trainer = L.Trainer(accelerator="cpu", logger=logger, enable_progress_bar=False, enable_model_summary=False)
    trainer.validate(FakeModule(num_images=0), batches, verbose=False)
    assert logged == []
    trainer = L.Trainer(accelerator="cpu", logger=logger, max_steps=0, num_sanity_val_steps=1, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False)  # fmt: skip
    constant = lambda optimizer: torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)  # noqa: E731
    module = FakeModule(lr_scheduler=constant)
    trainer.fit(module, batches, batches)
    assert trainer.sanity_checking is False and module.model.noises  # the sanity check ran the validation step
    assert logged == []  # and its grid is dropped


def test_predict_gives_the_features_of_the_input_key():
    class AudioLike(FakeModule):
        input_key = "audio"

    images = _images()
    assert torch.equal(AudioLike().predict_step({"audio": images}, 0), patchify(images, 2).mean(dim=1))


def test_parameter_groups_and_lr_from_blr(tmp_path):
    module = FakeModule(blr=0.256)
    no_decay = module.no_weight_decay()
    assert no_decay == {"model.proj.bias", "model.pos_embed", "model.gamma"}  # 1-D, by name, listed by the network

    class Data(L.LightningDataModule):
        batch_size = 3

        def train_dataloader(self):
            return DataLoader([{"image": _images(seed=s)} for s in range(4)], batch_size=None)

    trainer = L.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, limit_val_batches=0, default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(module, Data())
    decay, skip = trainer.optimizers[0].param_groups
    assert skip["weight_decay"] == 0.0 and decay["weight_decay"] == 0.1
    assert decay["initial_lr"] == pytest.approx(0.256 * 3 / 256)  # blr · batch / 256 replaces the optimizer's lr


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="mask_ratio"):
        FakeModule(mask_ratio=0.9)  # keeps no patch of 4
    with pytest.raises(ValueError, match="blr"):
        FakeModule(blr=0.0)
    with pytest.raises(ValueError, match="warmup_epochs and num_images"):
        FakeModule(num_images=-1)
