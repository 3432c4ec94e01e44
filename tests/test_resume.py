"""Exact resume: a fit killed mid-epoch on a shuffling DataModule (random augmentations, workers) and resumed
from its last checkpoint ends with the weights (to 1e-6), masks, curated sets and sparsity pattern of the run
that was never interrupted — for a plain fit, ResRep, GSM, StructuralReparam, CiT, MAE and DINOv2.

Each resumed run starts from another seed and another initialisation, so everything must come from the file.
The negative controls show the comparison can fail: the same interruption with the loader litzoo had before
(``DataLoader(shuffle=True)``, order from the global RNG, no saved position) or without :class:`ExactResume`
ends elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader
from user_models import ShuffledImages, UserClassifier

from litzoo.framework.data.loaders import ResumableLoader
from litzoo.framework.random_state import derive_seed
from litzoo.framework.resume import ExactResume

STEPS_PER_EPOCH = 5  # ShuffledImages(n=40, batch_size=8)
EPOCHS = 3
SAVE_AT = 7  # mid-epoch: epoch 1 after two of its five batches
KILL_AT = 9  # the process dies two steps later: those steps are lost


@pytest.fixture(autouse=True)
def lightning_seed_left_as_found(monkeypatch):
    """seed_everything writes PL_GLOBAL_SEED, the default shuffle seed of every DataModule: put it back after each test."""
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    monkeypatch.delenv("PL_SEED_WORKERS", raising=False)


class Killed(Exception):
    """The process dying."""


class KillAt(L.Callback):
    """Raises at the start of optimizer step ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step:
            raise Killed(f"killed at step {self.step}")


class OldLoaderImages(ShuffledImages):
    """The training loader litzoo had before: order from the global RNG, no state, persistent workers."""

    def make_dataloader(self, dataset, batch_size: int, shuffle: bool) -> DataLoader:
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=self.num_workers, persistent_workers=self.num_workers > 0)


def fit(root: Path, make: Callable[[], tuple[L.LightningModule, list[L.Callback], L.LightningDataModule]], seed: int,
        kill: bool = False, ckpt_path: Path | None = None, exact_resume: bool = True, epochs: int = EPOCHS,
        save_every: int | None = SAVE_AT) -> tuple[L.LightningModule, list[L.Callback], L.Trainer]:  # fmt: skip
    """One fit of ``make()``'s module, callbacks and data; ``kill``: checkpoints every ``save_every`` steps (``None``:
    every epoch end), dies at KILL_AT."""
    L.seed_everything(seed)
    module, callbacks, data = make()
    extra: list[L.Callback] = [ExactResume()] if exact_resume else []
    if kill:
        extra += [ModelCheckpoint(dirpath=root, filename="{step}", every_n_train_steps=save_every, save_top_k=-1), KillAt(KILL_AT)]
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=kill, default_root_dir=root, callbacks=[*callbacks, *extra])  # fmt: skip
    if kill:
        with pytest.raises(Killed):
            trainer.fit(module, datamodule=data)
    else:
        trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    return module, callbacks, trainer


def straight_and_resumed(tmp_path: Path, make: Callable, exact_resume: bool = True) -> tuple[tuple, tuple]:
    """The uninterrupted fit, and the fit killed mid-epoch then resumed (another seed) from its checkpoint."""
    straight = fit(tmp_path / "straight", make, seed=0, exact_resume=exact_resume)
    fit(tmp_path / "killed", make, seed=0, kill=True, exact_resume=exact_resume)
    checkpoint = tmp_path / "killed" / f"step={SAVE_AT}.ckpt"
    saved = torch.load(checkpoint, weights_only=True)  # still a weights-only checkpoint
    assert saved["loops"]["fit_loop"]["epoch_progress"]["current"]["completed"] == 1
    assert saved["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]["processed"] == SAVE_AT - STEPS_PER_EPOCH  # mid-epoch
    resumed = fit(tmp_path / "resumed", make, seed=123, ckpt_path=checkpoint, exact_resume=exact_resume)
    assert straight[2].global_step == resumed[2].global_step == EPOCHS * STEPS_PER_EPOCH
    return straight, resumed


def max_difference(a: L.LightningModule, b: L.LightningModule) -> float:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    return max((sa[k].double() - sb[k].double()).abs().max().item() for k in sa if sa[k].numel())


def assert_same_weights(a: L.LightningModule, b: L.LightningModule) -> None:
    difference = max_difference(a, b)
    assert difference <= 1e-6, f"max weight difference {difference:.3g}"


def user_fit(num_workers: int = 2, data: type[ShuffledImages] = ShuffledImages) -> Callable:
    return lambda: (UserClassifier("resnet", lr=0.05), [], data(num_workers=num_workers))


# ---------------------------------------------------------------- the mechanism
def test_the_training_loader_is_resumable_and_its_state_is_saved(tmp_path):
    data = ShuffledImages(num_workers=2)
    data.setup("fit")
    assert isinstance(data.train_dataloader(), ResumableLoader)
    fit(tmp_path, user_fit(), seed=0, kill=True)
    saved = torch.load(tmp_path / f"step={SAVE_AT}.ckpt", weights_only=True)
    assert saved["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"seed": 0, "epoch": 1, "batches": 2}]
    assert saved["ShuffledImages"] == {"shuffle_seed": 0}
    state = saved["callbacks"]["ExactResume"]
    assert set(state["rng"]) >= {"torch", "numpy", "python"} and state["train_loaders"] == [{"seed": 0, "epoch": 1, "batches": 2}]


# ---------------------------------------------------------------- plain fit, with workers
def test_plain_fit_with_workers_resumes_exactly(tmp_path):
    (straight, _, _), (resumed, _, _) = straight_and_resumed(tmp_path, user_fit(num_workers=2))
    assert_same_weights(straight, resumed)


def test_plain_fit_resumes_exactly_from_the_end_of_an_epoch(tmp_path):
    """The checkpoint Lightning writes at every epoch end (what ``--ckpt_path last`` finds most often)."""
    straight, _, _ = fit(tmp_path / "straight", user_fit(num_workers=2), seed=0)
    fit(tmp_path / "killed", user_fit(num_workers=2), seed=0, kill=True, save_every=None)
    checkpoint = tmp_path / "killed" / f"step={STEPS_PER_EPOCH}.ckpt"
    assert torch.load(checkpoint, weights_only=True)["callbacks"]["ExactResume"]["train_loaders"] == [{"seed": 0, "epoch": 1, "batches": 0}]
    resumed, _, _ = fit(tmp_path / "resumed", user_fit(num_workers=2), seed=123, ckpt_path=checkpoint)
    assert_same_weights(straight, resumed)


def test_negative_control_the_old_loader_does_not_resume_exactly(tmp_path):
    """With the global-RNG loader, the resumed epoch reads other batches: the comparison above would fail."""
    (straight, _, _), (resumed, _, _) = straight_and_resumed(tmp_path, user_fit(num_workers=2, data=OldLoaderImages))
    assert max_difference(straight, resumed) > 1e-3


def test_negative_control_without_the_random_states_main_process_augmentations_differ(tmp_path, monkeypatch):
    """num_workers=0: the augmentations draw from the global RNG, which only ExactResume brings back."""
    monkeypatch.setattr("litzoo.framework.resume.restore_rng_states", lambda states: None)
    (straight, _, _), (resumed, _, _) = straight_and_resumed(tmp_path, user_fit(num_workers=0))
    assert max_difference(straight, resumed) > 1e-3


# ---------------------------------------------------------------- ResRep: the same channels masked
@pytest.mark.parametrize(("net", "prune_residual"), [("resnet", False), ("grouped_se", True)])
def test_resrep_resumes_with_the_same_masks(tmp_path, net, prune_residual):
    """``prune_residual``: residual-tied, squeeze-excitation-tied and grouped-conv channels (one mask per tied set)."""
    from litzoo.callbacks.resrep import ResRepPruning

    def make():
        callback = ResRepPruning(flops_target=0.5, lasso_strength=1e-2, mask_interval=1, warmup_epochs=1, granularity=4, prune_at_end=False,
                                 prune_residual=prune_residual)  # fmt: skip
        return UserClassifier(net, weight_decay=1e-3), [callback], ShuffledImages()

    (straight, [straight_cb], _), (resumed, [resumed_cb], _) = straight_and_resumed(tmp_path, make)
    masks = [c.mask for c in straight_cb.all_compactors(straight).values()]
    assert resumed_cb.mask_updates == straight_cb.mask_updates > 0 and any((m == 0).any() for m in masks)
    assert any(g.tied for g in straight_cb.groups) == prune_residual
    for a, b in zip(masks, [c.mask for c in resumed_cb.all_compactors(resumed).values()], strict=True):
        assert torch.equal(a, b)
    assert_same_weights(straight, resumed)


# ---------------------------------------------------------------- GSM: the same sparsity pattern
def test_gsm_resumes_with_the_same_sparsity_pattern(tmp_path):
    from litzoo.callbacks.gsm import GlobalSparseMomentum

    def make():
        return UserClassifier("resnet", weight_decay=0.05), [GlobalSparseMomentum(sparsity=0.8, deploy_filename=None)], ShuffledImages()

    (straight, [straight_cb], _), (resumed, [resumed_cb], _) = straight_and_resumed(tmp_path, make)
    pattern = [(p == 0) for _, p in straight_cb.targets(straight)]
    assert sum(int(z.sum()) for z in pattern) > 0 and straight_cb.steps == resumed_cb.steps == EPOCHS * STEPS_PER_EPOCH
    for a, (_, b) in zip(pattern, resumed_cb.targets(resumed), strict=True):
        assert torch.equal(a, b == 0)
    assert_same_weights(straight, resumed)


# ---------------------------------------------------------------- StructuralReparam: the same fused model
def test_structural_reparam_resumes_to_the_same_fused_model(tmp_path):
    from litzoo.callbacks.structural_reparam import StructuralReparam

    def make():
        return UserClassifier("resnet"), [StructuralReparam(block="dbb")], ShuffledImages()

    (straight, [straight_cb], _), (resumed, [resumed_cb], _) = straight_and_resumed(tmp_path, make)
    assert straight_cb.fusion_report and resumed_cb.fusion_report and not resumed_cb.layers  # fused back at the end
    assert_same_weights(straight, resumed)


# ---------------------------------------------------------------- MAE: random masks from the global RNG
def mae_fit(num_workers: int = 2) -> Callable:
    from litzoo.modules.mae import MAEModule

    def make():
        module = MAEModule(img_size=12, patch_size=4, in_chans=1, embed_dim=16, depth=1, num_heads=2, decoder_embed_dim=16, decoder_depth=1,
                           decoder_num_heads=2, norm_pix_loss=False, blr=0.05, warmup_epochs=1, num_images=0)  # fmt: skip
        return module, [], ShuffledImages(num_workers=num_workers, dict_items=True)

    return make


def test_mae_resumes_with_the_same_masks(tmp_path):
    (straight, _, _), (resumed, _, _) = straight_and_resumed(tmp_path, mae_fit())
    assert_same_weights(straight, resumed)


def test_negative_control_mae_without_the_random_states_draws_other_masks(tmp_path, monkeypatch):
    """The augmentations are in the workers here: only the masks, drawn in the training step, differ."""
    monkeypatch.setattr("litzoo.framework.resume.restore_rng_states", lambda states: None)
    (straight, _, _), (resumed, _, _) = straight_and_resumed(tmp_path, mae_fit())
    assert max_difference(straight, resumed) > 1e-4


def test_negative_control_lightning_alone_loses_the_position_of_a_loader_built_early(tmp_path, monkeypatch):
    """MAE's schedule reads estimated_stepping_batches in configure_optimizers, so Lightning builds the loader
    before restoring its loops and never gives it its saved position: only ExactResume does."""
    monkeypatch.setattr("litzoo.framework.resume._stateful_loaders", lambda loaders: [])
    (straight, _, _), (resumed, _, _) = straight_and_resumed(tmp_path, mae_fit())
    assert max_difference(straight, resumed) > 1e-4


# ---------------------------------------------------------------- CiT: the same curated sets
class RecordRounds(L.Callback):
    """The pool indices each epoch trained on."""

    def __init__(self, curation) -> None:
        self.curation, self.rounds = curation, []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.rounds.append(list(self.curation.current_round))


def caption_pool(folder: Path, n: int = 64) -> Path:
    """SYNTHETIC image-caption pairs: 8x8 grey images, captions naming one of four classes or noise."""
    import json

    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    words = ["zero", "one", "two", "three", "cat", "tree", "blue", "sky"]
    rows = []
    for i in range(n):
        pixels = (torch.rand(8, 8, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels, mode="L").save(folder / f"{i}.png")
        caption = " ".join(words[int(k)] for k in torch.randint(0, len(words), (3,), generator=g))
        rows.append({"image": f"{i}.png", "text": f"a photo of {caption}"})
    (folder / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return folder / "train.jsonl"


def test_cit_resumes_mid_round_with_the_same_curated_sets(tmp_path):
    from litzoo.callbacks.curation_in_training import CurationInTraining
    from litzoo.datamodules.image_text import ImageTextDataModule
    from litzoo.modules.clip import CLIPModule

    manifest = caption_pool(tmp_path / "pool")

    def make():
        data = ImageTextDataModule(str(manifest), class_names=["zero", "one", "two", "three"], image_size=8, channels=1, vocab_size=64,
                                   context_length=8, batch_size=8)  # fmt: skip
        model = CLIPModule(vocab_size=64, embed_dim=16, image_size=8, patch_size=4, in_chans=1, vision_width=16, vision_depth=1, vision_heads=2,
                           context_length=8, text_width=16, text_depth=1, text_heads=2, image_to_text_only=True, warmup_steps=1)  # fmt: skip
        curation = CurationInTraining(threshold=0.85, min_ratio=0.25, curate_every=STEPS_PER_EPOCH, producer_batch_size=16)
        return model, [curation, RecordRounds(curation)], data

    (straight, [straight_cb, straight_rounds], _), (resumed, [resumed_cb, resumed_rounds], _) = straight_and_resumed(tmp_path, make)
    assert len(straight_rounds.rounds) == EPOCHS and straight_cb.rounds == resumed_cb.rounds == EPOCHS
    assert resumed_rounds.rounds == straight_rounds.rounds[1:]  # the round saved mid-epoch, then the same new one
    assert (straight_cb.pass_index, straight_cb.offset) == (resumed_cb.pass_index, resumed_cb.offset)
    assert_same_weights(straight, resumed)


# ---------------------------------------------------------------- DINOv2: views from the global RNG, EMA teacher and centers
def test_dinov2_resumes_with_the_same_teacher_and_centers(tmp_path):
    """Crops, iBOT masks and drop paths are drawn in the training step; the teacher, the centers and the schedules'
    step must all come back from the file."""
    from litzoo.modules.dinov2 import DINOv2Module

    def make():
        module = DINOv2Module(image_size=12, patch_size=4, in_chans=1, dim=16, depth=1, num_heads=2, drop_path_rate=0.2, local_crops_size=8,
                              local_crops_number=2, crop_mean=(0.5,), crop_std=(0.5,), head_n_prototypes=16, head_hidden_dim=16,
                              head_bottleneck_dim=8, base_lr=0.05, warmup_epochs=1, freeze_last_layer_epochs=1, warmup_teacher_temp_epochs=1,
                              momentum_teacher=0.9)  # fmt: skip
        return module, [], ShuffledImages(num_workers=0, dict_items=True)

    (straight, _, _), (resumed, _, _) = straight_and_resumed(tmp_path, make)
    assert straight.dino_loss.center.abs().sum() > 0 and any(k.startswith("teacher.") for k in straight.state_dict())
    assert_same_weights(straight, resumed)  # student, teacher and both centers


# ---------------------------------------------------------------- the graph DataModules keep their seed
def test_graph_datamodules_shuffle_resumably_by_their_own_seed(monkeypatch):
    from litzoo.datamodules.architectures import GraphSplitsDataModule, synthetic_graphs

    graphs = [graph.to_pyg("accuracy") for graph in synthetic_graphs(2, families=("resnet", "vgg"), seed=0)]
    for i, graph in enumerate(graphs):
        graph.idx = torch.tensor([i])

    class Graphs(GraphSplitsDataModule):
        def __init__(self, seed: int = 0) -> None:
            super().__init__(batch_size=3)
            self.save_hyperparameters()

        def build_datasets(self, split: str) -> dict[str, list]:
            return {"train": graphs, "val": graphs[:2]}

    def order(seed: int) -> list[int]:
        return [i for batch in Graphs(seed).train_dataloader() for i in batch.idx.tolist()]

    monkeypatch.setenv("PL_GLOBAL_SEED", "5")  # seed_everything's seed is not the graphs' order seed
    loader = Graphs(seed=1).train_dataloader()
    assert isinstance(loader, ResumableLoader) and loader.seed == 1
    batch = next(iter(loader))
    assert batch.num_graphs == 3 and batch.batch.shape[0] == batch.x.shape[0]  # torch_geometric's batching
    first = order(1)
    torch.manual_seed(7)
    assert order(1) == first and sorted(first) == list(range(len(graphs)))  # from hparams.seed, not the global RNG
    assert first == torch.randperm(len(graphs), generator=torch.Generator().manual_seed(derive_seed(1, 0))).tolist()
    assert order(2) != first
    assert [i for batch in Graphs(1).val_dataloader() for i in batch.idx.tolist()] == [0, 1]
