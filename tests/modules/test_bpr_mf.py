"""BPR-MF: negatives never among the user's training items, a fit beating popularity on the SYNTHETIC sparse domain, the
logged metrics equal to a brute-force recomputation from the embeddings, and an exact mid-epoch resume."""

from __future__ import annotations

from functools import partial

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from litzoo.datamodules.interactions import SharedTasteDataModule
from litzoo.framework.optim import cat_art_adam
from litzoo.framework.recsys.metrics import full_ranks, rank_metrics
from litzoo.framework.recsys.negatives import uniform_negatives
from litzoo.framework.resume import ExactResume
from litzoo.modules.bpr_mf import BPRMF, BPRMFModule

QUIET = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False, "enable_model_summary": False, "accelerator": "cpu", "devices": 1}
DOMAIN = "d1"  # the sparse domain


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("recsys"))


def data(root: str, **kwargs) -> SharedTasteDataModule:
    kwargs.setdefault("eval_domains", ["d0", "d1"])
    return SharedTasteDataModule(root=root, **kwargs)


@pytest.fixture(autouse=True)
def lightning_seed_left_as_found(monkeypatch):
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    monkeypatch.delenv("PL_SEED_WORKERS", raising=False)


def test_arguments_are_checked():
    with pytest.raises(ValueError):
        BPRMFModule(domain="d1", dim=0)
    with pytest.raises(ValueError):
        BPRMFModule(domain="")
    with pytest.raises(ValueError):
        BPRMF(3, 4, init_std=0.0)
    with pytest.raises(ValueError, match="every one"):
        uniform_negatives(3, np.array([1, 2, 3]), 2, np.random.default_rng(0))


def test_scores_are_dot_products():
    net = BPRMF(2, 3, dim=4)
    users, items = torch.tensor([1, 2]), torch.tensor([[3, 1], [2, 2]])
    expected = torch.stack([net.item.weight[items[b]] @ net.user.weight[users[b]] for b in range(2)])
    assert torch.allclose(net(users, items), expected)
    assert torch.allclose(net(users, items[:, 0]), expected[:, 0])
    assert torch.allclose(net.score_all(users)[torch.arange(2)[:, None], items], expected)


def test_training_negatives_are_never_the_users_items_and_follow_the_seed(root):
    dm = data(root)
    module = BPRMFModule(domain=DOMAIN, train_negatives=3)
    trainer = L.Trainer(max_epochs=1, **QUIET)
    trainer.datamodule, dm.trainer = dm, trainer
    module.trainer = trainer
    module.setup("fit")
    train = dm.train_interactions(DOMAIN)
    users = torch.tensor(sorted(train))
    pair_users, positives, negatives = module.training_pairs(users, epoch=0)
    assert negatives.shape == (len(positives), 3)
    # every training interaction once, as CAT-ART's per-interaction epoch
    assert sorted(zip(pair_users.tolist(), positives.tolist())) == sorted(map(tuple, dm.train_pairs(DOMAIN).tolist()))
    for user, row in zip(pair_users.tolist(), negatives.tolist(), strict=True):
        assert not set(row) & train[user]
        assert all(1 <= item <= dm.num_items(DOMAIN) for item in row)
    # a user's negatives depend on (seed, domain, epoch, user) only: not on the other users of its batch
    alone = module.training_pairs(users[5:6], epoch=0)[2]
    assert torch.equal(alone, negatives[pair_users == users[5]])
    assert not torch.equal(module.training_pairs(users, epoch=1)[2], negatives)
    # and they are uniform over the allowed items: each allowed item's share is near 1 / (#allowed)
    counts = np.bincount(uniform_negatives(10, np.array([2, 5]), 80_000, np.random.default_rng(0)), minlength=11)
    assert counts[[0, 2, 5]].sum() == 0 and np.abs(counts[[1, 3, 4, 6, 7, 8, 9, 10]] / 80_000 - 1 / 8).max() < 0.01


def popularity_metrics(dm: SharedTasteDataModule) -> dict[str, float]:
    test = dm.dataset("test")
    rows = test.tensors["domain"] == dm.domain_index(DOMAIN)
    users, targets = test.tensors["user"][rows], test.tensors["target"][rows]
    popularity = torch.bincount(dm.train_pairs(DOMAIN)[:, 1], minlength=dm.num_items(DOMAIN) + 1).float()
    return rank_metrics(full_ranks(popularity.expand(len(users), -1), targets, dm.exclusion_mask(DOMAIN, users, targets)))


def test_a_fit_beats_popularity_on_the_sparse_domain(root):
    dm = data(root)
    L.seed_everything(0)
    module = BPRMFModule(domain=DOMAIN, init_std=0.1, optimizer=partial(cat_art_adam, lr=3e-3))
    trainer = L.Trainer(max_epochs=80, check_val_every_n_epoch=80, **QUIET)
    untrained = trainer.test(module, datamodule=dm, verbose=False)[0]
    trainer.fit(module, datamodule=dm)
    result = trainer.test(module, datamodule=dm, verbose=False)[0]
    popularity = popularity_metrics(dm)
    # measured at seed 0: full NDCG@10 0.059 trained, 0.043 popularity; HR@10 0.114 and 0.085
    assert result["test/full/ndcg@10"] > 1.2 * popularity["ndcg@10"] and result["test/full/hr@10"] > 1.2 * popularity["hr@10"]
    assert untrained["test/full/ndcg@10"] < popularity["ndcg@10"]  # negative control: the random tables do not
    assert result["test/sampled/hr@10"] > untrained["test/sampled/hr@10"] + 0.05


def test_logged_metrics_equal_a_brute_force_recomputation(root):
    dm = data(root)
    L.seed_everything(0)
    module = BPRMFModule(domain=DOMAIN, init_std=0.1, optimizer=partial(cat_art_adam, lr=3e-3))
    trainer = L.Trainer(max_epochs=3, **QUIET)
    trainer.fit(module, datamodule=dm)
    logged = trainer.test(module, datamodule=dm, verbose=False)[0]
    users_emb, items_emb = module.user_embeddings().double(), module.item_embeddings().double()
    test = dm.dataset("test")
    known = dm.known_items(DOMAIN)
    sampled, full, sparse = [], [], []
    for row in range(len(test)):
        if test.tensors["domain"][row].item() != dm.domain_index(DOMAIN):
            continue  # the other domain's rows are not this model's
        user, target = test.tensors["user"][row].item(), test.tensors["target"][row].item()
        scores = items_emb @ users_emb[user]
        candidates = test.tensors["candidates"][row].tolist()
        sampled.append(1 + sum(scores[c] >= scores[target] for c in candidates[1:]))
        ranked = [item for item in range(1, len(scores)) if item == target or item not in known[user]]
        full.append(1 + sum(scores[item] >= scores[target] for item in ranked if item != target))
        sparse.append(len(dm.train_interactions(DOMAIN)[user]) <= 3)
    sparse = np.array(sparse)
    for kind, ranks in (("sampled", np.array(sampled, dtype=float)), ("full", np.array(full, dtype=float))):
        for prefix, keep in (("", np.ones_like(sparse)), ("sparse/", sparse)):
            r = ranks[keep]
            assert logged[f"test/{kind}/{prefix}hr@10"] == pytest.approx(np.mean(r <= 10), abs=1e-6)
            assert logged[f"test/{kind}/{prefix}ndcg@10"] == pytest.approx(np.mean(np.where(r <= 10, 1 / np.log2(r + 1), 0)), abs=1e-6)
            assert logged[f"test/{kind}/{prefix}mrr"] == pytest.approx(np.mean(1 / r), abs=1e-6)
    assert 0 < sparse.sum() < len(sparse)


SAVE_AT, KILL_AT, EPOCHS = 7, 9, 3  # 5 training batches per epoch (1164 user rows, batch 256): step 7 is mid-epoch 1


class Killed(Exception):
    pass


class KillAt(L.Callback):
    def on_train_batch_start(self, trainer: L.Trainer, *args) -> None:
        if trainer.global_step == KILL_AT:
            raise Killed


def fit(root: str, folder, seed: int, kill: bool = False, ckpt_path=None, negative_seed: int = 0) -> tuple[BPRMFModule, L.Trainer]:
    L.seed_everything(seed)
    module = BPRMFModule(domain=DOMAIN, init_std=0.1, negative_seed=negative_seed, optimizer=partial(cat_art_adam, lr=1e-2))
    callbacks = [ExactResume()]
    if kill:
        callbacks += [ModelCheckpoint(dirpath=folder, filename="{step}", every_n_train_steps=SAVE_AT, save_top_k=-1), KillAt()]
    options = {**QUIET, "enable_checkpointing": kill}
    trainer = L.Trainer(max_epochs=EPOCHS, limit_val_batches=0, default_root_dir=folder, callbacks=callbacks, **options)
    if kill:
        with pytest.raises(Killed):
            trainer.fit(module, datamodule=data(root))
    else:
        trainer.fit(module, datamodule=data(root), ckpt_path=ckpt_path)
    return module, trainer


def test_resumed_mid_epoch_equals_the_uninterrupted_run(root, tmp_path):
    straight, trainer = fit(root, tmp_path / "straight", seed=0)
    fit(root, tmp_path / "killed", seed=0, kill=True)
    checkpoint = tmp_path / "killed" / f"step={SAVE_AT}.ckpt"
    saved = torch.load(checkpoint, weights_only=True)
    assert saved["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]["processed"] == SAVE_AT - 5  # mid-epoch 1
    resumed, resumed_trainer = fit(root, tmp_path / "resumed", seed=123, ckpt_path=checkpoint)
    assert trainer.global_step == resumed_trainer.global_step == EPOCHS * 5
    assert torch.allclose(straight.user_embeddings(), resumed.user_embeddings(), atol=1e-6, rtol=0)
    assert torch.allclose(straight.item_embeddings(), resumed.item_embeddings(), atol=1e-6, rtol=0)
    # negative control: other negatives give other weights, so the equality above is not vacuous
    other, _ = fit(root, tmp_path / "other", seed=0, negative_seed=1)
    assert (other.item_embeddings() - straight.item_embeddings()).abs().max() > 1e-3
    # the checkpoint alone rebuilds the tables (CAT-ART pretrains from them)
    loaded = BPRMFModule.load_from_checkpoint(checkpoint, weights_only=False)
    assert torch.equal(loaded.item_embeddings(), saved["state_dict"]["net.item.weight"])
