"""SASRec: the official loss by hand, negatives outside the user's items, evaluation against brute force, the domain
filter, a fit above popularity on the SYNTHETIC sparse domain, and two DDP ranks ending identical."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
from pathlib import Path

import lightning as L
import pytest
import torch

from litzoo.datamodules.interactions import SharedTasteDataModule
from litzoo.framework.errors import LitzooError
from litzoo.framework.recsys.metrics import full_ranks, rank_metrics, sampled_ranks
from litzoo.framework.recsys.negatives import known_item_keys, sample_negatives_avoiding
from litzoo.modules.sasrec import SASRec, SASRecModule, sasrec_loss


@pytest.fixture(scope="module")
def shared_taste(tmp_path_factory) -> SharedTasteDataModule:
    dm = SharedTasteDataModule(root=str(tmp_path_factory.mktemp("recsys")), seed=0, batch_size=128, max_len=20)
    dm.setup("fit")
    return dm


def test_loss_equals_the_hand_computation():
    pos = torch.tensor([[0.0, 2.0, -1.0], [9.0, 0.5, 3.0]])
    neg = torch.tensor([[5.0, -0.5, 1.0], [9.0, 2.0, -3.0]])
    is_target = torch.tensor([[False, True, True], [False, True, True]])

    def bce(p, n):
        return -math.log(1 / (1 + math.exp(-p))) - math.log(1 - 1 / (1 + math.exp(-n)))

    expected = (bce(2.0, -0.5) + bce(-1.0, 1.0) + bce(0.5, 2.0) + bce(3.0, -3.0)) / 4  # padding slots left out
    assert sasrec_loss(pos, neg, is_target).item() == pytest.approx(expected, rel=1e-6)
    assert sasrec_loss(pos, neg, torch.zeros_like(is_target)).item() == 0.0


def test_negatives_avoid_every_known_item_and_padding():
    known = {1: {1, 2, 3, 4}, 2: {5}, 3: set(range(1, 10))}  # user 3 knows all but item 10
    keys = known_item_keys(known, num_items=10)
    targets = torch.randint(1, 11, (3, 400))
    targets[:, :50] = 0
    users = torch.tensor([1, 2, 3])
    neg = sample_negatives_avoiding(targets, users, keys, 10, torch.Generator().manual_seed(0))
    assert (neg[:, :50] == 0).all()
    for row, user in enumerate(users.tolist()):
        drawn = set(neg[row, 50:].tolist())
        assert drawn == set(range(1, 11)) - known[user]  # never known, and every other item can come (uniform support)
    again = sample_negatives_avoiding(targets, users, keys, 10, torch.Generator().manual_seed(0))
    assert torch.equal(neg, again)
    with pytest.raises(LitzooError, match="user 4 interacted with all 3 items"):
        known_item_keys({4: {1, 2, 3}}, num_items=3)


def test_training_negatives_never_in_the_users_sequence(shared_taste):
    module = SASRecModule(domain="d1")
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False, max_steps=1)
    module.trainer = trainer
    trainer.datamodule = shared_taste  # setup() reads the DataModule as during fit
    module.setup("fit")
    known = shared_taste.known_items("d1")
    batch = next(iter(shared_taste.domain_dataloader("train", "d1")))
    neg = sample_negatives_avoiding(batch["target"], batch["user"], module.known_keys, module.net.num_items)
    for row, user in enumerate(batch["user"].tolist()):
        drawn = set(neg[row][batch["target"][row] > 0].tolist())
        assert drawn and not drawn & known[user] and 0 not in drawn
        assert not (neg[row][batch["target"][row] == 0]).any()


def test_evaluation_ranks_equal_brute_force_and_other_domains_are_ignored(shared_taste):
    torch.manual_seed(0)
    module = SASRecModule(domain="d1", dropout=0.0).eval()
    trainer = L.Trainer(accelerator="cpu", logger=False)
    module.trainer = trainer
    trainer.datamodule = shared_taste
    module.setup("test")
    batch = next(iter(shared_taste.domain_dataloader("test", "d1")))
    ranks = module.ranks(batch)
    net = module.net
    for row in range(4):
        seq = batch["seq"][row : row + 1]
        states = net(seq)[0, -1]
        scores = net.item_embedding.weight @ states
        cand = scores[batch["candidates"][row]]
        assert ranks["sampled"][row] == 1 + int((cand[1:] >= cand[0]).sum())
        target = int(batch["target"][row])
        others = shared_taste.known_items("d1")[int(batch["user"][row])] - {target}
        ranked = [i for i in range(1, net.num_items + 1) if i not in others and i != target]
        assert ranks["full"][row] == 1 + sum(bool(scores[i] >= scores[target]) for i in ranked)
    # the hyper-parameters rebuild the network (a checkpoint's load_from_checkpoint): num_items was recorded at setup
    rebuilt = SASRecModule(**module.hparams)
    rebuilt.load_state_dict(module.state_dict())
    assert rebuilt.hparams["num_items"] == shared_taste.num_items("d1") and torch.equal(rebuilt.eval()(batch["seq"]), net(batch["seq"]))
    # rows of another domain are dropped: the same rows relabelled d0 give no ranks
    assert "sampled" not in module.ranks({**batch, "domain": torch.zeros_like(batch["domain"])})
    # training: a batch mixing in rows of the other domain has the loss of its d1 rows alone
    train = next(iter(shared_taste.train_dataloader()))
    module.train()
    net.encoder.dropout.p = 0.0
    d1 = train["domain"] == 1
    assert 0 < d1.sum() < len(d1)
    torch.manual_seed(1)
    mixed = module.training_loss(train)
    torch.manual_seed(1)
    alone = module.training_loss({k: v[d1] for k, v in train.items()})
    assert torch.equal(mixed[0], alone[0]) and mixed[2] == alone[2] == int(d1.sum())
    none = module.training_loss({**train, "domain": torch.zeros_like(train["domain"])})
    assert none[0].item() == 0.0 and none[0].requires_grad and none[2] == 0


def test_fit_beats_popularity_on_the_sparse_domain(shared_taste):
    L.seed_everything(0)
    module = SASRecModule(domain="d1", dim=32, dropout=0.2, optimizer=lambda p: torch.optim.Adam(p, lr=1e-2, betas=(0.9, 0.98)))
    trainer = L.Trainer(max_epochs=40, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        limit_val_batches=0, enable_model_summary=False)  # fmt: skip
    trainer.fit(module, shared_taste)
    result = trainer.test(module, shared_taste, verbose=False)[0]
    test = shared_taste.domain_dataset("test", "d1").tensors
    counts = torch.bincount(shared_taste.train_pairs("d1")[:, 1], minlength=shared_taste.num_items("d1") + 1).double()
    popularity = rank_metrics(sampled_ranks(counts[test["candidates"]]))["hr@10"]
    exclude = shared_taste.exclusion_mask("d1", test["user"], test["target"])
    popularity_full = rank_metrics(full_ranks(counts.expand(len(test["target"]), -1), test["target"], exclude))["hr@10"]
    assert result["test/sampled/hr@10"] > popularity + 0.03, (result, popularity)
    assert result["test/full/hr@10"] > popularity_full, (result, popularity_full)
    assert "test/sampled/sparse/hr@10" in result and "test/full/sparse/ndcg@10" in result


def _attach(module: SASRecModule, dm: SharedTasteDataModule) -> SASRecModule:
    """``module`` with a trainer whose DataModule is ``dm``, as during a fit (``setup`` reads it)."""
    trainer = L.Trainer(accelerator="cpu", logger=False)
    module.trainer = trainer
    trainer.datamodule = dm
    return module


def test_a_domain_the_datamodule_does_not_evaluate_is_refused(shared_taste):
    with pytest.raises(LitzooError, match="domain 'd0' is not evaluated by the DataModule"):  # eval_domains defaults to the sparse d1
        _attach(SASRecModule(domain="d0"), shared_taste).setup("fit")
    with pytest.raises(LitzooError, match="domain 'd9' is not one of"):
        _attach(SASRecModule(domain="d9"), shared_taste).setup("fit")


def test_bad_arguments():
    with pytest.raises(ValueError, match="ks"):
        SASRecModule(ks=[0])
    with pytest.raises(ValueError, match="num_blocks"):
        SASRecModule(num_blocks=2, num_blcks=3)
    with pytest.raises(ValueError, match="num_items"):
        SASRec(num_items=0)


DDP_SCRIPT = """
import torch, lightning as L
from litzoo.cli import LitzooCLI

class SaveRankWeights(L.Callback):
    def on_fit_end(self, trainer, pl_module):
        state = {{k: v.detach().cpu() for k, v in pl_module.state_dict().items()}}
        torch.save({{"state": state, "world_size": trainer.world_size, "steps": trainer.global_step}}, f"{out}/rank{{trainer.global_rank}}.pt")

LitzooCLI(args=[
    "fit", "-c", "configs/sasrec/shared_taste.yaml", "--data.init_args.root", "{out}/data", "--data.init_args.max_len", "20",
    "--model.init_args.max_len", "20", "--model.init_args.dim", "16",
    "--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu",
    "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "4", "--trainer.limit_val_batches", "1",
    "--trainer.default_root_dir", "{out}", "--trainer.enable_progress_bar", "false",
], trainer_defaults={{"callbacks": [SaveRankWeights()]}})
"""


def test_two_process_ddp_fit_keeps_ranks_identical(tmp_path: Path):
    script = tmp_path / "ddp_fit.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT.format(out=tmp_path)))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=Path(__file__).parents[2])
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert all(r["world_size"] == 2 and r["steps"] == 4 for r in ranks)
    a, b = ranks[0]["state"], ranks[1]["state"]
    assert a.keys() == b.keys()
    initial = SASRec(a["net.item_embedding.weight"].shape[0] - 1, dim=16, max_len=20)
    assert not torch.equal(a["net.item_embedding.weight"], initial.item_embedding.weight)  # not trivially equal: it trained
    for key in a:
        assert torch.equal(a[key], b[key]), key
