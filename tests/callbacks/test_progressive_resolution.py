"""ProgressiveResolution (callbacks/progressive_resolution.py): the stages by step fraction and by epoch, the sizes a
user's training_step sees, refused settings, exact resume mid-run, and two DDP ranks that end identical."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from user_models import ShuffledImages, UserClassifier

from litzoo.callbacks.progressive_resolution import ProgressiveResolution
from litzoo.framework.errors import LitzooError
from litzoo.framework.nn.vit import VisionTransformer
from litzoo.framework.resume import ExactResume


@pytest.fixture(autouse=True)
def lightning_seed_left_as_found(monkeypatch):
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    monkeypatch.delenv("PL_SEED_WORKERS", raising=False)


def test_stages_by_fraction_of_training():
    equal = ProgressiveResolution([98, 154, 224])  # the paper's stages, equal lengths by default
    assert equal.milestones == pytest.approx([1 / 3, 2 / 3])
    assert [equal.resolution_at(p) for p in (0.0, 0.33, 1 / 3, 0.5, 0.6667, 0.99)] == [98, 98, 154, 154, 224, 224]
    final = ProgressiveResolution([98, 154, 224, 336], milestones=[0.3, 0.6, 0.9])
    assert [final.resolution_at(p) for p in (0.0, 0.299, 0.3, 0.75, 0.9, 1.0)] == [98, 98, 154, 224, 336, 336]
    assert ProgressiveResolution([8]).resolution_at(0.7) == 8


class SizeRecorder(UserClassifier):
    """A user's classifier (global pooling: any input size) that records the image side of every training step."""

    def __init__(self) -> None:
        super().__init__("resnet", lr=0.05)
        self.sizes: list[int] = []

    def training_step(self, batch, batch_idx):
        if isinstance(batch, dict):  # dict batches: the callback replaced batch["image"]
            batch = (batch["image"], batch["label"])
        self.sizes.append(int(batch[0].shape[-1]))
        return super().training_step(batch, batch_idx)


def fit_sizes(callback: ProgressiveResolution, epochs: int, dict_items: bool = False) -> list[int]:
    L.seed_everything(0)
    module = SizeRecorder()
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, limit_val_batches=0, callbacks=[callback])  # fmt: skip
    trainer.fit(module, datamodule=ShuffledImages(n=16, batch_size=8, dict_items=dict_items))  # 2 steps per epoch
    return module.sizes


def test_training_steps_see_the_stage_resolution():
    # 3 epochs x 2 steps = 6 steps, equal thirds by step fraction 0, 1/6, ..., 5/6
    assert fit_sizes(ProgressiveResolution([4, 8, 12]), epochs=3) == [4, 4, 8, 8, 12, 12]
    assert fit_sizes(ProgressiveResolution([6, 12], milestones=[0.5], interval="epoch"), epochs=4) == [6, 6, 6, 6, 12, 12, 12, 12]
    assert fit_sizes(ProgressiveResolution([6, 9, 12], milestones=[0.2, 0.5]), epochs=3, dict_items=True) == [6, 6, 9, 12, 12, 12]
    # negative control: without the callback every step sees the DataModule's 12 px
    assert fit_sizes(ProgressiveResolution([12]), epochs=1) == [12, 12]


def test_the_resize_is_bilinear_antialiased_and_commutes_with_normalisation():
    callback = ProgressiveResolution([4])
    images = torch.rand(2, 1, 12, 12)

    class Stub:
        global_step, estimated_stepping_batches = 0, 10

    batch = {"image": (images - 0.5) / 0.25}
    module = L.LightningModule()
    module.log = lambda *a, **k: None
    callback.on_train_batch_start(Stub(), module, batch, 0)
    expected = torch.nn.functional.interpolate(images, size=(4, 4), mode="bilinear", antialias=True)
    torch.testing.assert_close(batch["image"], (expected - 0.5) / 0.25, atol=1e-6, rtol=1e-6)
    # by hand: antialiased bilinear shrinking by 3 is a triangle filter of half-width 3 around each output centre, as PIL
    weights = torch.zeros(4, 12)
    for i in range(4):
        centre = (i + 0.5) * 3
        for j in range(12):
            weights[i, j] = max(0.0, 1 - abs(j + 0.5 - centre) / 3)
    weights /= weights.sum(1, keepdim=True)
    by_hand = torch.einsum("ij,bcjk,lk->bcil", weights, images, weights)
    torch.testing.assert_close(batch["image"], (by_hand - 0.5) / 0.25, atol=1e-6, rtol=1e-6)


def test_refused_settings():
    with pytest.raises(ValueError, match="positive integers"):
        ProgressiveResolution([])
    with pytest.raises(ValueError, match="needs 2 entries"):
        ProgressiveResolution([4, 6, 8], milestones=[0.5])
    with pytest.raises(ValueError, match="increase strictly"):
        ProgressiveResolution([4, 8], milestones=[1.0])
    with pytest.raises(ValueError, match="interval"):
        ProgressiveResolution([4, 8], interval="batch")

    class FixedViT(L.LightningModule):
        def __init__(self, dynamic: bool) -> None:
            super().__init__()
            self.vit = VisionTransformer(12, 3, 1, 8, 1, 2, dynamic_size=dynamic)

    def start(callback: ProgressiveResolution, module: L.LightningModule, data: Any = None) -> None:
        # the checks of on_fit_start, with a stand-in trainer (2 epochs, 4 steps)
        callback.on_fit_start(type("T", (), {"max_epochs": 2, "estimated_stepping_batches": 4, "datamodule": data})(), module)

    with pytest.raises(LitzooError, match="takes 12x12 images only"):
        start(ProgressiveResolution([6, 12]), FixedViT(False))
    with pytest.raises(LitzooError, match=r"\[4\] are not multiples of the patch size"):
        start(ProgressiveResolution([4, 12]), FixedViT(True))
    start(ProgressiveResolution([6, 12]), FixedViT(True))  # fits
    with pytest.raises(LitzooError, match="exceeds the DataModule's image_size 8"):
        start(ProgressiveResolution([6, 12]), FixedViT(True), type("D", (), {"image_size": 8})())
    callback = ProgressiveResolution([6, 12])
    with pytest.raises(LitzooError, match="trained with resolutions"):
        callback.load_state_dict(ProgressiveResolution([4, 12]).state_dict())
    callback.load_state_dict(ProgressiveResolution([6, 12]).state_dict())


class Killed(Exception):
    pass


class KillAt(L.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step:
            raise Killed


def resume_fit(root: Path, seed: int, kill: bool = False, ckpt: Path | None = None) -> SizeRecorder:
    L.seed_everything(seed)
    module = SizeRecorder()
    callbacks: list[L.Callback] = [ProgressiveResolution([4, 8, 12]), ExactResume()]
    if kill:
        callbacks += [ModelCheckpoint(dirpath=root, filename="{step}", every_n_train_steps=4, save_top_k=-1), KillAt(5)]
    trainer = L.Trainer(max_epochs=3, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=kill, default_root_dir=root, limit_val_batches=0, callbacks=callbacks)  # fmt: skip
    data = ShuffledImages(n=24, batch_size=8)  # 3 steps per epoch, 9 in all: 3 at 4 px, 3 at 8, 3 at 12
    if kill:
        with pytest.raises(Killed):
            trainer.fit(module, datamodule=data)
    else:
        trainer.fit(module, datamodule=data, ckpt_path=ckpt)
    return module


def test_a_run_killed_mid_epoch_and_resumed_equals_the_uninterrupted_run(tmp_path: Path):
    whole = resume_fit(tmp_path / "whole", seed=0)
    assert whole.sizes == [4, 4, 4, 8, 8, 8, 12, 12, 12]
    resume_fit(tmp_path / "killed", seed=0, kill=True)  # dies at step 5, mid-epoch 1; step 4 is saved
    resumed = resume_fit(tmp_path / "killed", seed=123, ckpt=tmp_path / "killed" / "step=4.ckpt")
    assert resumed.sizes == whole.sizes[4:]  # the stage comes back with the step
    for key, value in whole.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, atol=1e-6, rtol=1e-6, msg=key)


DDP_SCRIPT = """
import torch, lightning as L
from litzoo.cli import LitzooCLI

class SaveRankWeights(L.Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.sizes = getattr(self, "sizes", []) + [batch["image"].shape[-1]]  # runs after ProgressiveResolution (added last)
    def on_fit_end(self, trainer, pl_module):
        state = {{k: v.detach().cpu() for k, v in pl_module.state_dict().items()}}
        torch.save({{"state": state, "sizes": self.sizes, "world_size": trainer.world_size}}, f"{out}/rank{{trainer.global_rank}}.pt")

LitzooCLI(args=[
    "fit", "-c", "configs/perception_encoder/digits_captions.yaml", "--data.init_args.batch_size", "16",
    "--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu",
    "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "3", "--trainer.limit_val_batches", "1",
    "--trainer.default_root_dir", "{out}", "--trainer.enable_progress_bar", "false",
], trainer_defaults={{"callbacks": [SaveRankWeights()]}})
"""


def test_two_process_ddp_ranks_train_at_the_same_resolutions_and_end_identical(tmp_path: Path):
    script = tmp_path / "ddp_fit.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT.format(out=tmp_path)))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=Path(__file__).parents[2])
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0]["world_size"] == 2 and ranks[0]["sizes"] == ranks[1]["sizes"] == [4, 6, 8]
    for key, value in ranks[0]["state"].items():
        assert torch.equal(value, ranks[1]["state"][key]), key
