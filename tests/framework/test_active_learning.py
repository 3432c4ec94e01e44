"""Active learning beyond the strategies (issue 26): the persisted pool, the DataModule wrapper, batched scoring, the
acquisition, and the resumable loop with its learning curve."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from litzoo.datamodules.digits import DigitsDataModule
from litzoo.framework.active import (
    ActiveLearningDataModule,
    ActiveLearningLoop,
    ActivePool,
    MCDropoutCNN,
    badge_embedding,
    badge_query,
    entropy,
    kcenter_greedy,
    kmeans_pp_seeding,
    learning_curve_auc,
    margin,
    score_pool,
    select,
)
from litzoo.framework.active.query import query
from litzoo.framework.classification import ImageClassifier
from litzoo.framework.errors import LitzooError
from litzoo.framework.resume import ExactResume


@pytest.fixture(autouse=True)
def lightning_seed_left_as_found(monkeypatch):
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    monkeypatch.delenv("PL_SEED_WORKERS", raising=False)


def mlp(dropout: float = 0.2) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Dropout(dropout), nn.Linear(32, 10))


def digits_pool(tmp_path: Path | None = None, **kwargs) -> ActiveLearningDataModule:
    options = dict(initial_labels=10, query_size=10, rounds=2, strategy="entropy", batch_size=16)
    options.update(kwargs)
    return ActiveLearningDataModule(DigitsDataModule(batch_size=64), pool_file=None if tmp_path is None else str(tmp_path / "pool.json"), **options)


# ------------------------------------------------------------------------------------------ the pool and its file
def test_pool_sets_stay_disjoint_and_every_bad_acquisition_is_refused():
    pool = ActivePool(10)
    pool.acquire(0, [3, 1])
    pool.record(0, {"acc": 0.5})
    pool.acquire(1, torch.tensor([0, 9]))
    assert pool.labelled.tolist() == [3, 1, 0, 9] and pool.unlabelled.tolist() == [2, 4, 5, 6, 7, 8]
    for bad, message in (([2, 3], "labelled already"), ([2, 2], "repeats"), ([10], "outside"), ([True], "ints")):
        with pytest.raises(ValueError, match=message):
            pool.acquire(2, bad)
    with pytest.raises(ValueError, match="does not follow"):
        pool.acquire(5, [2])
    with pytest.raises(ValueError, match="not finite"):
        pool.record(1, {"acc": float("nan")})
    assert pool.labelled.tolist() == [3, 1, 0, 9]  # nothing half-applied


def test_pool_file_round_trips_and_bad_files_fail_in_one_line_naming_the_file(tmp_path):
    pool = ActivePool(6, settings={"seed": 1})
    pool.acquire(0, [4, 0], "random")
    pool.record(0, {"test/acc": 0.25})
    path = pool.save(tmp_path / "pool.json")
    again = ActivePool.load(path)
    assert again.to_dict() == pool.to_dict() and again.results[0] == {"round": 0, "labels": 2, "test/acc": 0.25}
    cases = {
        "{\n  \"format\": \n": "line 3: not JSON",
        json.dumps({"format": "other"}): "is not a litzoo pool",
        json.dumps({**pool.to_dict(), "version": 7}): "version 7",
        json.dumps({**pool.to_dict(), "acquisitions": [{"round": 0, "indices": [4, 4]}]}): "repeats",
        json.dumps({**pool.to_dict(), "acquisitions": [{"round": 0, "indices": [6]}]}): "outside",
        json.dumps({k: v for k, v in pool.to_dict().items() if k != "size"}): "misses 'size'",
        json.dumps(pool.to_dict()).replace("0.25", "NaN"): "not finite",
    }
    for text, message in cases.items():
        bad = tmp_path / "bad.json"
        bad.write_text(text)
        with pytest.raises(LitzooError, match=message) as error:
            ActivePool.load(bad)
        assert str(bad) in str(error.value) and "\n" not in str(error.value)


# ------------------------------------------------------------------------------------------ the DataModule wrapper
def test_wrapper_trains_on_exactly_the_labelled_samples_and_scores_the_pool_in_order():
    dm = digits_pool(initial_labels=12)
    dm.setup("fit")
    train = dm.train_dataset
    labelled = dm.pool.labelled
    assert len(labelled) == 12 and len(set(labelled.tolist())) == 12 and len(dm.pool.unlabelled) == len(train) - 12
    seen = torch.cat([b["image"] for b in dm.train_dataloader()])
    expected = torch.stack([train[i]["image"] for i in labelled.tolist()])
    assert sorted(map(tuple, seen.flatten(1).tolist())) == sorted(map(tuple, expected.flatten(1).tolist()))
    order = dm.pool.unlabelled[:5]
    batch = next(iter(dm.pool_loader(order)))
    assert torch.equal(batch["image"], torch.stack([train[i]["image"] for i in order.tolist()]))
    assert torch.equal(digits_pool(initial_labels=12).load_pool().labelled, labelled)  # the initial draw is seeded
    assert not torch.equal(digits_pool(initial_labels=12, seed=1).load_pool().labelled, labelled)
    assert dm.input_shape == (1, 8, 8)


def test_pool_scoring_sees_the_training_images_without_their_random_augmentation(tmp_path):
    from cifar_files import write_cifar10

    from litzoo.datamodules.cifar import CIFAR10DataModule

    write_cifar10(tmp_path, per_batch=4, test_size=2)
    dm = ActiveLearningDataModule(CIFAR10DataModule(root=str(tmp_path), batch_size=4, val_fraction=0.2), initial_labels=3)
    dm.setup("fit")
    assert dm.train_dataset.augment and not dm.scoring_dataset().augment and dm.train_dataset.augment  # a copy is switched off
    indices = dm.pool.unlabelled[:4]
    state = torch.get_rng_state()
    first, second = (next(iter(dm.pool_loader(indices)))["image"] for _ in range(2))
    assert torch.equal(first, second) and torch.equal(torch.get_rng_state(), state)


def test_wrapper_refuses_a_pool_file_of_other_settings(tmp_path):
    dm = digits_pool(tmp_path)
    dm.setup("fit")
    dm.save_pool()
    with pytest.raises(LitzooError, match="strategy: file 'entropy', config 'margin'"):
        digits_pool(tmp_path, strategy="margin").setup("fit")
    with pytest.raises(ValueError, match="strategy must be one of"):
        digits_pool(strategy="entropic")


# ------------------------------------------------------------------------------------------ scoring and selection
def test_score_pool_returns_softmax_head_inputs_and_bald_without_touching_the_global_rng():
    torch.manual_seed(0)
    model = mlp(0.5)
    images = torch.randn(23, 1, 8, 8)
    loader = DataLoader(TensorDataset(images), batch_size=10, generator=torch.Generator())  # iterating it draws nothing global
    model.train()
    state = torch.get_rng_state()
    out = score_pool(model, loader, ("probs", "features", "bald"), mc_samples=8, seed=3)
    assert torch.equal(torch.get_rng_state(), state) and model.training and model[3].training  # modes put back
    model.eval()
    with torch.no_grad():
        hidden = model[2](model[1](model[0](images)))
        assert torch.allclose(out["probs"], model(images).softmax(1), atol=1e-6)
    assert torch.allclose(out["features"], hidden, atol=1e-6)
    assert out["bald"].shape == (23,) and (out["bald"] > 0).all()  # dropout 0.5: the passes disagree
    again = score_pool(model, loader, ("bald",), mc_samples=8, seed=3)["bald"]
    assert torch.equal(again, out["bald"])  # seeded masks
    with pytest.raises(ValueError, match="no dropout layer"):
        score_pool(mlp(0.0), loader, ("bald",))


def test_select_dispatches_each_strategy_to_its_rule_by_hand():
    probs = torch.tensor([[0.9, 0.1], [0.5, 0.5], [0.6, 0.4], [0.99, 0.01]])
    g = torch.Generator().manual_seed(0)
    assert select("entropy", {"probs": probs}, 4, 2, g).tolist() == [1, 2]
    assert select("least_confidence", {"probs": probs}, 4, 1, g).tolist() == [1]
    assert select("margin", {"probs": probs}, 4, 3, g).tolist() == [1, 2, 0]
    assert torch.equal(select("margin", {"probs": probs}, 4, 4, g), torch.argsort(margin(probs)))
    assert select("bald", {"bald": torch.tensor([0.1, 0.3, 0.2, 0.0])}, 4, 2, g).tolist() == [1, 2]
    features = torch.tensor([[0.0], [1.0], [5.0], [2.0]])
    assert select("coreset", {"features": features}, 4, 2, g, labelled_features=torch.tensor([[0.0]])).tolist() == [2, 3]
    assert torch.equal(entropy(probs).argsort(descending=True)[:2], select("entropy", {"probs": probs}, 4, 2, g))


def test_badge_query_picks_what_the_materialised_embedding_picks():
    torch.manual_seed(1)
    features, probs = torch.randn(57, 6), torch.randn(57, 4).softmax(1)
    for seed in range(4):
        expected = kmeans_pp_seeding(badge_embedding(features, probs), 12, torch.Generator().manual_seed(seed))
        assert torch.equal(badge_query(features, probs, 12, torch.Generator().manual_seed(seed), chunk_size=5), expected)
    assert torch.equal(kmeans_pp_seeding(features, 9, torch.Generator().manual_seed(0), chunk_size=4),
                       kmeans_pp_seeding(features, 9, torch.Generator().manual_seed(0)))  # fmt: skip


def test_query_scores_the_unlabelled_pool_only_and_follows_the_strategy():
    torch.manual_seed(0)
    model = ImageClassifier(mlp(), 10)
    for strategy in ("entropy", "coreset", "random"):
        dm = digits_pool(strategy=strategy, query_size=7)
        dm.setup("fit")
        chosen = query(model, dm, 0)
        unlabelled = dm.pool.unlabelled
        assert len(set(chosen.tolist())) == 7 and set(chosen.tolist()) <= set(unlabelled.tolist())
        if strategy == "entropy":
            probs = score_pool(model, dm.pool_loader(unlabelled), ("probs",))["probs"]
            assert torch.equal(chosen, unlabelled[entropy(probs).argsort(descending=True, stable=True)[:7]])
        if strategy == "coreset":
            pool = score_pool(model, dm.pool_loader(unlabelled), ("features",))["features"]
            labelled = score_pool(model, dm.pool_loader(dm.pool.labelled), ("features",))["features"]
            assert torch.equal(chosen, unlabelled[kcenter_greedy(pool, labelled, 7)])


# ------------------------------------------------------------------------------------------ the loop
def test_learning_curve_auc_by_hand():
    # trapezoids (20..40: 0.5..0.7 -> 12, 40..60: 0.7..0.8 -> 15) = 27 over 40 labels
    assert learning_curve_auc([20, 40, 60], [0.5, 0.7, 0.8]) == pytest.approx(27 / 40)
    assert learning_curve_auc([20], [0.3]) == 0.3
    with pytest.raises(ValueError, match="increase"):
        learning_curve_auc([20, 20], [0.1, 0.2])


class Killed(Exception):
    """The process dying (not KeyboardInterrupt: Lightning turns that into SystemExit and ignores SIGINT afterwards)."""


class StopAt(Callback):
    """Raises at a global step of one round: a run killed mid-epoch."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise Killed


def run_loop(run_dir: Path, stop: tuple[int, int] | None = None, reinit: str = "reset") -> list[dict]:
    dm = digits_pool(run_dir, strategy="badge", initial_labels=20, query_size=20, rounds=2, batch_size=8)

    def build_model(round_: int) -> L.LightningModule:
        return ImageClassifier(MCDropoutCNN(image_size=8, kernel_size=3, channels=8, hidden=16), 10, optimizer=partial(torch.optim.Adam, lr=3e-3))

    def build_trainer(round_: int, round_dir: Path) -> L.Trainer:
        callbacks = [ModelCheckpoint(dirpath=round_dir / "checkpoints", filename="last", every_n_train_steps=4), ExactResume()]
        if stop is not None and stop[0] == round_:
            callbacks.append(StopAt(stop[1]))
        return L.Trainer(max_steps=9, logger=TensorBoardLogger(str(round_dir.parent), name="", version=round_dir.name), callbacks=callbacks,
                         enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", devices=1, num_sanity_val_steps=0,
                         limit_val_batches=0)  # fmt: skip

    return ActiveLearningLoop(dm, build_model, build_trainer, run_dir, reinit=reinit).run()


def test_loop_killed_mid_epoch_resumes_to_the_uninterrupted_run(tmp_path):
    whole = run_loop(tmp_path / "whole")
    assert [r["labels"] for r in whole] == [20, 40, 60]
    with pytest.raises(Killed):  # round 1 (40 labels, 5 batches an epoch) dies at step 6, after its step-4 checkpoint
        run_loop(tmp_path / "killed", stop=(1, 6))
    stopped = ActivePool.load(tmp_path / "killed" / "pool.json")
    assert len(stopped.results) == 1 and stopped.num_labelled == 40
    resumed = run_loop(tmp_path / "killed")
    assert resumed == whole
    assert ActivePool.load(tmp_path / "killed" / "pool.json").acquisitions == ActivePool.load(tmp_path / "whole" / "pool.json").acquisitions
    curve = (tmp_path / "whole" / "learning_curve.csv").read_text().splitlines()
    assert curve[0] == "round,labels,test/acc,test/loss" and curve[3].startswith("2,60,")
    # reset: every round starts from the same weights; continue: round 1 starts from round 0's
    first = torch.load(tmp_path / "whole" / "initial_weights.pt", weights_only=True)
    assert set(first) == set(torch.load(tmp_path / "whole" / "round_01" / "final_weights.pt", weights_only=True))


# ------------------------------------------------------------------------------------------ DDP
DDP_SCRIPT = """
import sys, torch, torch.distributed as dist
from torch import nn
from litzoo.datamodules.digits import DigitsDataModule
from litzoo.framework.active import ActiveLearningDataModule
from litzoo.framework.active.query import query

rank, world_size, port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
torch.set_num_threads(1)
if world_size > 1:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
torch.manual_seed(0)  # the same weights on every rank, as DDP keeps them
model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 10))
chosen = {}
for strategy in ("entropy", "coreset", "badge", "bald"):
    dm = ActiveLearningDataModule(DigitsDataModule(), initial_labels=15, query_size=9, strategy=strategy, mc_samples=4, scoring_batch_size=50)
    dm.setup("fit")
    chosen[strategy] = query(model, dm, 3)
torch.save(chosen, f"{out}/rank{rank}_of_{world_size}.pt")
"""


def test_queries_are_identical_on_two_gloo_ranks_and_equal_to_one_process(tmp_path):
    import subprocess
    import sys

    from gloo_ranks import run_ranks

    script = tmp_path / "query.py"
    script.write_text(DDP_SCRIPT)
    run_ranks(script, 2, tmp_path)
    subprocess.run([sys.executable, str(script), "0", "1", "0", str(tmp_path)], check=True, timeout=120, cwd=Path(__file__).parents[2])
    ranks = [torch.load(tmp_path / f"rank{r}_of_2.pt", weights_only=True) for r in (0, 1)]
    alone = torch.load(tmp_path / "rank0_of_1.pt", weights_only=True)
    for strategy in ("entropy", "coreset", "badge", "bald"):
        assert torch.equal(ranks[0][strategy], ranks[1][strategy]), strategy
        assert len(set(ranks[0][strategy].tolist())) == 9
    for strategy in ("entropy", "coreset", "badge"):  # deterministic scores: sharding changes nothing
        assert torch.equal(ranks[0][strategy], alone[strategy]), strategy
