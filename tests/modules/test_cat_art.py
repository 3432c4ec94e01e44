"""CAT-ART: domain masking and its distribution, the contrastive and reconstruction terms by hand, ART's attention and
residual by hand, BPR in the target, the logged metrics against a brute-force recomputation, a short fit on SYNTHETIC
data beating the untrained model, and an exact mid-epoch resume."""

from __future__ import annotations

import math
from functools import partial

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint

from litzoo.datamodules.interactions import SharedTasteDataModule
from litzoo.framework.losses.contrastive import ClipLoss
from litzoo.framework.optim import cat_art_adam
from litzoo.framework.resume import ExactResume
from litzoo.modules.cat_art import CATART, CATARTNet, apply_domain_mask, random_domain_mask, view_contrastive_loss

QUIET = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False, "enable_model_summary": False, "accelerator": "cpu", "devices": 1}
DOMAINS = ["d0", "d1", "d2"]  # d0, d1 dense, d2 sparse


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("recsys"))


def data(root: str) -> SharedTasteDataModule:
    return SharedTasteDataModule(root=root, num_domains=3, sparse_domain=2, eval_domains=DOMAINS)


@pytest.fixture(autouse=True)
def lightning_seed_left_as_found(monkeypatch):
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    monkeypatch.delenv("PL_SEED_WORKERS", raising=False)


def attached(module: CATART, dm: SharedTasteDataModule) -> CATART:
    """``module`` set up on ``dm`` without a fit (what Lightning does before the first step)."""
    trainer = L.Trainer(max_epochs=1, **QUIET)
    trainer.datamodule, dm.trainer = dm, trainer
    module.trainer = trainer
    module.setup("fit")
    return module


def test_arguments_are_checked():
    for bad in ({"dim": 0}, {"temperature": 0.0}, {"knowledge": "all"}, {"missing": "zero"}, {"mf_epochs": -1}, {"contrastive_weight": -1.0},
                {"attention_dropout": 1.0}, {"ks": ()}):  # fmt: skip
        with pytest.raises(ValueError):
            CATART(**bad)
    with pytest.raises(ValueError, match="at least 2 domains"):
        CATARTNet(3, [4], knowledge="both")
    CATARTNet(3, [4], knowledge="d_in")  # one domain: CAT only is possible


# ------------------------------------------------------------------------------------------------------------ masking
def test_the_mask_replaces_exactly_the_masked_domain_by_the_pad_vector():
    stacked = torch.arange(2 * 3 * 2, dtype=torch.float).reshape(2, 3, 2)
    mask = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    pad = torch.tensor([-7.0, -8.0])
    out = apply_domain_mask(stacked, mask, pad)
    expected = stacked.clone()
    expected[0, 1] = pad
    expected[1, 0] = pad
    assert torch.equal(out, expected)
    assert torch.equal(stacked, torch.arange(12, dtype=torch.float).reshape(2, 3, 2))  # the full view is untouched


def test_the_rand_rule_masks_one_domain_per_user_uniformly_over_all_domains():
    users = list(range(1, 30_001))
    mask = random_domain_mask(users, 5, seed=0, epoch=0)
    assert torch.equal(mask.sum(1), torch.ones(len(users)))  # exactly one domain per user, the target included
    shares = mask.mean(0)
    assert (shares - 0.2).abs().max() < 0.01  # uniform over the 5 domains (binomial sd 0.0023)
    # a user's draw depends on (seed, epoch, user) only: not on the other users of its batch
    assert torch.equal(random_domain_mask(users[7:8], 5, 0, 0), mask[7:8])
    assert not torch.equal(random_domain_mask(users[:200], 5, 0, 1), mask[:200])
    assert not torch.equal(random_domain_mask(users[:200], 5, 1, 0), mask[:200])


def test_a_domain_without_data_is_the_pad_vector_with_missing_pad_and_the_mf_row_with_missing_init():
    for missing in ("pad", "init"):
        net = CATARTNet(3, [4, 4], dim=2, missing=missing)
        net.has_data[2, 1] = False
        users = torch.tensor([1, 2])
        stacked = net.stacked(users)
        assert torch.equal(stacked[0, 1], net.mf_users[1].weight[1])
        assert torch.equal(stacked[1, 0], net.mf_users[0].weight[2])
        expected = net.cat.pad.weight[0] if missing == "pad" else net.mf_users[1].weight[2]
        assert torch.equal(stacked[1, 1], expected)


# ------------------------------------------------------------------------------------------------------------ CAT losses
def hand_contrastive(full: np.ndarray, masked: np.ndarray, masked_rows: np.ndarray, temperature: float) -> float:
    cos = lambda a, b: float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))  # noqa: E731
    n, per_row = len(full), []
    for i in range(n):
        one = -math.log(math.exp(cos(full[i], masked[i]) / temperature) / sum(math.exp(cos(full[i], masked[j]) / temperature) for j in range(n)))
        two = -math.log(math.exp(cos(masked[i], full[i]) / temperature) / sum(math.exp(cos(masked[i], full[j]) / temperature) for j in range(n)))
        per_row.append((one + two) / 2)
    per_row = np.array(per_row)
    return float(per_row[masked_rows].mean())


def test_the_contrastive_loss_equals_a_hand_computation_at_temperature_0_1():
    generator = torch.Generator().manual_seed(0)
    full, masked = torch.randn(4, 3, generator=generator, dtype=torch.float64), torch.randn(4, 3, generator=generator, dtype=torch.float64)
    every = torch.eye(4, 5, dtype=torch.float64)  # one masked domain per row (the rand rule)
    loss = view_contrastive_loss(full, masked, every, temperature=0.1)
    assert loss.item() == pytest.approx(hand_contrastive(full.numpy(), masked.numpy(), np.ones(4, bool), 0.1), rel=1e-10)
    # with every row masked it is CLIP's symmetric InfoNCE on the normalised views at logit scale 1 / 0.1
    clip = ClipLoss(gather_distributed=False)(F.normalize(full, dim=1), F.normalize(masked, dim=1), torch.tensor(10.0, dtype=torch.float64))
    assert loss.item() == pytest.approx(clip.item(), rel=1e-10)
    # only the rows with a masked domain count; none masked gives 0, as the official
    partial_mask = every.clone()
    partial_mask[[1, 3]] = 0
    partial_loss = view_contrastive_loss(full, masked, partial_mask, temperature=0.1)
    assert partial_loss.item() == pytest.approx(hand_contrastive(full.numpy(), masked.numpy(), np.array([True, False, True, False]), 0.1), rel=1e-10)
    assert view_contrastive_loss(full, masked, torch.zeros(4, 5), 0.1).item() == 0.0
    # the positive is on the diagonal: matching views give a lower loss than mismatched ones (negative control)
    assert view_contrastive_loss(full, full, every, 0.1) < view_contrastive_loss(full, full.roll(1, 0), every, 0.1)


def test_cat_loss_is_0_2_contrastive_plus_0_4_of_each_reconstruction(root):
    dm = data(root)
    module = attached(CATART(mf_epochs=0, cat_epochs=1, dim=8, seed=3), dm)
    net = module.net
    batch = next(iter(dm.train_dataloader()))
    parts = module.cat_loss(batch, epoch=0)
    users = [u for u, d in zip(batch["user"].tolist(), batch["domain"].tolist(), strict=True) if module._home[u] == d]
    assert 0 < len(users) < len(batch["user"]) and len(set(users)) == len(users)  # each user once: its first domain's row
    stacked = net.stacked(torch.tensor(users))
    mask = random_domain_mask(users, 3, 3, 0)
    masked = stacked.clone()
    for row, domain in enumerate(mask.argmax(1).tolist()):
        masked[row, domain] = net.cat.pad.weight[0]
    flat = stacked.detach().reshape(len(users), -1)
    h, hm = net.cat.encoder(stacked), net.cat.encoder(masked)
    rec = ((net.cat.decoder(h) - flat) ** 2).mean()
    rec_masked = ((net.cat.decoder(hm) - flat) ** 2).mean()
    contrastive = hand_contrastive(h.double().detach().numpy(), hm.double().detach().numpy(), np.ones(len(users), bool), 0.1)
    assert parts["cat/rec"].item() == pytest.approx(rec.item(), rel=1e-5)
    assert parts["cat/rec_masked"].item() == pytest.approx(rec_masked.item(), rel=1e-5)
    assert parts["cat/contrastive"].item() == pytest.approx(contrastive, rel=1e-4)
    assert parts["loss"].item() == pytest.approx(0.2 * contrastive + 0.4 * rec.item() + 0.4 * rec_masked.item(), rel=1e-4)
    assert (h - hm).abs().max() > 1e-3  # the masked view encodes differently (the contrastive term is not between equals)
    # the ablation without masking: the auto-encoder's reconstruction alone
    ablation = attached(CATART(mf_epochs=0, cat_epochs=1, dim=8, seed=3, mask=False), dm)
    ablation.net.load_state_dict(net.state_dict())
    alone = ablation.cat_loss(batch, epoch=0)
    assert alone["loss"].item() == pytest.approx(rec.item(), rel=1e-5) and "cat/contrastive" not in alone


# ------------------------------------------------------------------------------------------------------------ ART
def test_art_attention_and_residual_equal_a_hand_computation():
    torch.manual_seed(0)
    net = CATARTNet(num_users=2, num_items=[3, 3, 3], dim=2, attention_dropout=0.0).double()
    net.start_transfer()
    users = torch.tensor([1, 2])
    head = net.heads[1]
    W = lambda layer: (layer.weight.detach().numpy(), layer.bias.detach().numpy())  # noqa: E731
    for b, u in enumerate(users.tolist()):
        t = head.user.weight[u].detach().numpy()
        sources = [W(head.adapters[str(s)])[0] @ head.source_users[str(s)].weight[u].detach().numpy() + W(head.adapters[str(s)])[1] for s in (0, 2)]
        (wq, bq), (wk, bk), (wv, bv), (wo, bo) = (W(layer) for layer in (head.attention.query, head.attention.key, head.attention.value, head.attention.out))
        q = wq @ t + bq
        logits = np.array([(wk @ x + bk) @ q / math.sqrt(2) for x in sources])
        weights = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        specific = wo @ sum(w * (wv @ x + bv) for w, x in zip(weights, sources, strict=True)) + bo
        stack = np.concatenate([net.mf_users[d].weight[u].detach().numpy() for d in range(3)])
        encoded = net.cat.encoder(torch.from_numpy(stack)[None]).detach().numpy()[0]
        global_ = W(head.global_adapter)[0] @ encoded + W(head.global_adapter)[1]
        for knowledge, expected in (("both", t + specific + global_), ("d_sp", t + specific), ("d_in", t + global_)):
            net.knowledge = knowledge
            assert np.allclose(net.user_vector(1, users)[b].detach().numpy(), expected, atol=1e-12)
        net.knowledge = "both"
        items = head.item.weight.detach().numpy()
        assert np.allclose(net.score_all(1, users)[b].detach().numpy(), items @ (t + specific + global_), atol=1e-12)


def test_before_the_transfer_scores_are_the_pretrained_mf_ones_and_the_heads_start_from_copies():
    torch.manual_seed(0)
    net = CATARTNet(num_users=4, num_items=[5, 6], dim=3)
    users = torch.tensor([1, 3])
    assert torch.equal(net.score_all(1, users), net.mf_users[1](users) @ net.mf_items[1].weight.t())
    net.start_transfer()
    assert bool(net.transfer_started)
    assert torch.equal(net.heads[1].user.weight, net.mf_users[1].weight) and torch.equal(net.heads[1].item.weight, net.mf_items[1].weight)
    assert torch.equal(net.heads[1].source_users["0"].weight, net.mf_users[0].weight)
    assert not torch.equal(net.score_all(1, users), net.mf_users[1](users) @ net.mf_items[1].weight.t())


def test_art_trains_bpr_in_each_target_without_l2_and_mf_with_it(root):
    dm = data(root)
    module = attached(CATART(mf_epochs=1, cat_epochs=0, dim=8, decay=0.5, attention_dropout=0.0), dm)
    batch = next(iter(dm.train_dataloader()))
    # MF: BPR + decay * L2 of the batch's embeddings, per domain, summed
    mf = module.mf_loss(batch, epoch=0)
    expected = 0.0
    for d in range(3):
        users = batch["user"][batch["domain"] == d].tolist()
        u, i, j = module.interaction_pairs(d, users, 0, "mf")
        assert not any(int(n) in set(module._train[d][int(x)].tolist()) for x, n in zip(u, j[:, 0], strict=True))  # negatives avoid training items
        pu, pi, pj = (module.net.mf_users[d].weight[u].detach(), module.net.mf_items[d].weight[i].detach(), module.net.mf_items[d].weight[j[:, 0]].detach())
        diff = (pu * pi).sum(1) - (pu * pj).sum(1)
        expected += F.softplus(-diff).mean().item() + 0.5 * (pu.pow(2).sum() + pi.pow(2).sum() + pj.pow(2).sum()).item() / 2 / len(u)
    assert mf["loss"].item() == pytest.approx(expected, rel=1e-5)
    # ART: BPR of each head with the ART user vector, no L2
    module.net.start_transfer()
    art = module.art_loss(batch, epoch=1)
    expected = 0.0
    for t in range(3):
        u, i, j = module.interaction_pairs(t, batch["user"][batch["domain"] == t].tolist(), 1, "art")
        user = module.net.user_vector(t, u).detach()
        items = module.net.heads[t].item.weight.detach()
        expected += F.softplus((user * items[j[:, 0]]).sum(1) - (user * items[i]).sum(1)).mean().item()
    assert art["loss"].item() == pytest.approx(expected, rel=1e-5)
    # a user's negatives depend on (seed, phase, domain, epoch, user) only: not on the other users of its batch
    users = batch["user"][batch["domain"] == 0].tolist()
    u, _, j = module.interaction_pairs(0, users, 1, "art")
    assert torch.equal(module.interaction_pairs(0, users[3:4], 1, "art")[2], j[u == users[3]])
    # the draws of ART and MF are separate streams
    assert not torch.equal(module.interaction_pairs(0, [1, 2, 3], 1, "art")[2], module.interaction_pairs(0, [1, 2, 3], 1, "mf")[2])


# ------------------------------------------------------------------------------------------------------------ fits
def fit_module(dm, max_epochs: int, **kwargs) -> tuple[CATART, L.Trainer]:
    L.seed_everything(0)
    kwargs = {"mf_epochs": 20, "cat_epochs": 5, "init_std": 0.1, "optimizer": partial(cat_art_adam, lr=3e-3), **kwargs}
    module = CATART(**kwargs)
    trainer = L.Trainer(max_epochs=max_epochs, limit_val_batches=0, **QUIET)
    trainer.fit(module, datamodule=dm)
    return module, trainer


def test_logged_metrics_equal_a_brute_force_recomputation(root):
    dm = data(root)
    module, trainer = fit_module(dm, max_epochs=4, mf_epochs=2, cat_epochs=1)
    assert bool(module.net.transfer_started)
    logged = trainer.test(module, datamodule=dm, verbose=False)[0]
    module.eval()
    test = dm.dataset("test")
    pooled = {"sampled": [], "full": [], "sparse": []}
    for d, name in enumerate(DOMAINS):
        known, train = dm.known_items(name), dm.train_interactions(name)
        rows = (test.tensors["domain"] == d).nonzero()[:, 0].tolist()
        users = test.tensors["user"][rows]
        with torch.no_grad():
            vectors = module.net.user_vector(d, users).double()
        items = module.net.heads[d].item.weight.detach().double()
        sampled, full, sparse = [], [], []
        for b, row in enumerate(rows):
            user, target = users[b].item(), test.tensors["target"][row].item()
            scores = items @ vectors[b]
            sampled.append(1 + sum(scores[c] >= scores[target] for c in test.tensors["candidates"][row].tolist()[1:]))
            full.append(1 + sum(scores[i] >= scores[target] for i in range(1, len(scores)) if i != target and i not in known[user]))
            sparse.append(len(train.get(user, ())) <= 3)
        for key, values in (("sampled", sampled), ("full", full), ("sparse", sparse)):
            pooled[key] += values
        check(logged, f"test/{name}/", np.array(sampled, float), np.array(full, float), np.array(sparse))
    sparse = np.array(pooled["sparse"])
    check(logged, "test/", np.array(pooled["sampled"], float), np.array(pooled["full"], float), sparse)
    assert 0 < sparse.sum() < len(sparse)


def check(logged: dict, prefix: str, sampled: np.ndarray, full: np.ndarray, sparse: np.ndarray) -> None:
    for kind, ranks in (("sampled", sampled), ("full", full)):
        for group, keep in (("", np.ones_like(sparse)), ("sparse/", sparse)):
            r = ranks[keep]
            if not len(r):
                assert f"{prefix}{kind}/{group}hr@10" not in logged
                continue
            assert logged[f"{prefix}{kind}/{group}hr@10"] == pytest.approx(np.mean(r <= 10), abs=1e-6)
            assert logged[f"{prefix}{kind}/{group}ndcg@10"] == pytest.approx(np.mean(np.where(r <= 10, 1 / np.log2(r + 1), 0)), abs=1e-6)
            assert logged[f"{prefix}{kind}/{group}mrr"] == pytest.approx(np.mean(1 / r), abs=1e-6)


def test_a_short_fit_beats_the_untrained_model(root):
    dm = data(root)
    L.seed_everything(0)
    untrained = CATART(mf_epochs=20, cat_epochs=5, init_std=0.1)
    trainer = L.Trainer(max_epochs=1, **QUIET)
    before = trainer.test(untrained, datamodule=dm, verbose=False)[0]
    module, trainer = fit_module(dm, max_epochs=35)
    after = trainer.test(module, datamodule=dm, verbose=False)[0]
    # measured at seed 0: full NDCG@10 0.016 untrained, 0.048 after; sampled HR@10 0.106 (chance: 10 / 101) and 0.195
    assert after["test/full/ndcg@10"] > 2 * before["test/full/ndcg@10"]
    assert after["test/sampled/hr@10"] > before["test/sampled/hr@10"] + 0.05
    for name in DOMAINS:  # every target domain gains
        assert after[f"test/{name}/full/ndcg@10"] > before[f"test/{name}/full/ndcg@10"]


# ------------------------------------------------------------------------------------------------------------ resume
EPOCHS = 3  # epoch 0 MF, 1 CAT, 2 ART


class Killed(Exception):
    pass


class KillAt(L.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: L.Trainer, *args) -> None:
        if trainer.global_step == self.step:
            raise Killed


def resume_fit(root: str, folder, seed: int, save_at: int = 0, ckpt_path=None, module_seed: int = 0) -> tuple[CATART, L.Trainer]:
    L.seed_everything(seed)
    module = CATART(mf_epochs=1, cat_epochs=1, dim=16, init_std=0.1, seed=module_seed, optimizer=partial(cat_art_adam, lr=1e-2))
    callbacks = [ExactResume()]
    if save_at:
        callbacks += [ModelCheckpoint(dirpath=folder, filename="{step}", every_n_train_steps=save_at, save_top_k=-1), KillAt(save_at + 1)]
    trainer = L.Trainer(max_epochs=EPOCHS, limit_val_batches=0, default_root_dir=folder, callbacks=callbacks, **{**QUIET, "enable_checkpointing": bool(save_at)})
    if save_at:
        with pytest.raises(Killed):
            trainer.fit(module, datamodule=data(root))
    else:
        trainer.fit(module, datamodule=data(root), ckpt_path=ckpt_path)
    return module, trainer


def test_resumed_mid_epoch_equals_the_uninterrupted_run(root, tmp_path):
    straight, trainer = resume_fit(root, tmp_path / "straight", seed=0)
    per_epoch = trainer.global_step // EPOCHS
    assert trainer.global_step == EPOCHS * per_epoch and per_epoch >= 4  # no step skipped
    save_at = 2 * per_epoch + 2  # mid-epoch 2, in ART
    resume_fit(root, tmp_path / "killed", seed=0, save_at=save_at)
    checkpoint = tmp_path / "killed" / f"step={save_at}.ckpt"
    saved = torch.load(checkpoint, weights_only=False)
    assert saved["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]["processed"] == 2 and saved["epoch"] == 2
    resumed, resumed_trainer = resume_fit(root, tmp_path / "resumed", seed=123, ckpt_path=checkpoint)
    assert resumed_trainer.global_step == trainer.global_step
    for (name, a), b in zip(straight.net.state_dict().items(), resumed.net.state_dict().values(), strict=True):
        assert torch.allclose(a.float(), b.float(), atol=1e-6, rtol=0), name
    # negative control: other negatives and masks give other weights, so the equality above is not vacuous
    other, _ = resume_fit(root, tmp_path / "other", seed=0, module_seed=1)
    assert (other.net.heads[2].item.weight - straight.net.heads[2].item.weight).abs().max() > 1e-3
    assert (other.net.cat.encoder[1].weight - straight.net.cat.encoder[1].weight).abs().max() > 1e-4
    # the checkpoint alone rebuilds the network
    loaded = CATART.load_from_checkpoint(checkpoint, weights_only=False)
    assert bool(loaded.net.transfer_started) and torch.equal(loaded.net.heads[0].user.weight, saved["state_dict"]["net.heads.0.user.weight"])
