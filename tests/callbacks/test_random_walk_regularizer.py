"""RandomWalkRegularizer on node-embedding LightningModules that are not RWR-GAE: the embeddings move as the
skip-gram loss says, a run killed mid-epoch on a shuffling DataModule resumes exactly, and two gloo ranks given
different batches end identical (RWR-GAE itself too)."""

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from graph_user_models import NodeBatches, NodeClassifier
from lightning.pytorch.callbacks import ModelCheckpoint

from litzoo.callbacks.random_walk_regularizer import RandomWalkRegularizer
from litzoo.framework.resume import ExactResume


class FreeEmbeddings(L.LightningModule):
    """A user model: a free embedding table whose own loss is zero (so only the callback moves it)."""

    def __init__(self, num_nodes=6, dim=4):
        super().__init__()
        self.table = torch.nn.Parameter(torch.randn(num_nodes, dim) * 0.1)

    def node_embeddings(self, batch):
        return self.table

    def training_step(self, batch, batch_idx):
        return (self.table * 0).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def graph():
    e = torch.tensor([(0, 1), (1, 2), (2, 0), (3, 4), (4, 5), (5, 3)]).t()
    return {"edge_index": torch.cat([e, e.flip(0)], 1)}


def fit(callbacks, epochs=150):
    torch.manual_seed(0)
    model = FreeEmbeddings()
    trainer = L.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=callbacks)
    trainer.fit(model, torch.utils.data.DataLoader([graph()], batch_size=None))
    return model


def test_embeddings_move_as_the_skipgram_loss_says():
    start = fit([], epochs=1).table.detach().clone()
    callback = RandomWalkRegularizer(lr=0.05, walk_length=4, walks_per_node=4, window=2, num_negatives=2)
    model = fit([callback])
    moved = model.table.detach()
    assert not torch.allclose(start, moved)  # negative control: without the callback a zero-lr model does not move
    assert torch.allclose(fit([], epochs=3).table.detach(), start)
    # same-triangle nodes (which co-occur on walks) now score above cross-triangle ones
    context = callback.skipgram.context.weight.detach()
    scores = moved @ context.t()
    same = torch.tensor([[i // 3 == j // 3 for j in range(6)] for i in range(6)])
    assert scores[same].mean() > scores[~same].mean() + 1.0


def test_state_round_trip_and_refusals():
    callback = RandomWalkRegularizer(walk_length=4, window=2)
    fit([callback], epochs=2)
    state = callback.state_dict()
    assert state["steps"] == 2 and state["seed"] == 0
    other = RandomWalkRegularizer(walk_length=4, window=2, seed=5)
    other.load_state_dict(state)
    assert (other.seed, other.steps) == (0, 2) and other._pending is not None  # the run it continues decides the walks
    with pytest.raises(ValueError):
        RandomWalkRegularizer(lr=0)

    class NoEmbeddings(FreeEmbeddings):
        node_embeddings = None

    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False, callbacks=[RandomWalkRegularizer()])
    with pytest.raises(TypeError, match="node_embeddings"):
        trainer.fit(NoEmbeddings(), torch.utils.data.DataLoader([graph()], batch_size=None))


# ---------------------------------------------------------------- exact mid-epoch resume
STEPS_PER_EPOCH, EPOCHS, SAVE_AT, KILL_AT = 5, 3, 7, 9  # NodeBatches(n=40, batch_size=8): saved in epoch 1 after 2 of 5 batches


class Killed(Exception):
    pass


class KillAt(L.Callback):
    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step == KILL_AT:
            raise Killed


@pytest.fixture
def no_global_seed(monkeypatch):
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)  # seed_everything sets it; the DataModule's shuffle seed reads it
    monkeypatch.delenv("PL_SEED_WORKERS", raising=False)


def walk_fit(root: Path, seed: int, kill: bool = False, ckpt_path: Path | None = None) -> tuple[L.LightningModule, RandomWalkRegularizer]:
    L.seed_everything(seed)
    data = NodeBatches()
    module = NodeClassifier(data.graph["x"])
    callback = RandomWalkRegularizer(lr=0.02, walk_length=4, walks_per_node=3, window=2, num_negatives=2, seed=seed)
    extra: list[L.Callback] = [ModelCheckpoint(dirpath=root, filename="{step}", every_n_train_steps=SAVE_AT, save_top_k=-1), KillAt()] if kill else []
    trainer = L.Trainer(max_epochs=EPOCHS, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=kill, default_root_dir=root, callbacks=[callback, ExactResume(), *extra])  # fmt: skip
    if kill:
        with pytest.raises(Killed):
            trainer.fit(module, datamodule=data)
    else:
        trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
        assert trainer.global_step == EPOCHS * STEPS_PER_EPOCH
    return module, callback


def difference(a: tuple[L.LightningModule, RandomWalkRegularizer], b: tuple[L.LightningModule, RandomWalkRegularizer]) -> float:
    """Largest difference of the module's weights, the context table and the callback's Adam moments."""
    (ma, ca), (mb, cb) = a, b
    pairs = [(ma.state_dict()[k], mb.state_dict()[k]) for k in ma.state_dict()]
    pairs.append((ca.skipgram.context.weight, cb.skipgram.context.weight))
    sa, sb = ca.optimizer.state_dict()["state"], cb.optimizer.state_dict()["state"]
    assert sa.keys() == sb.keys() and len(sa) == len(list(ma.encoder.parameters())) + 1  # the head is not in the skip-gram loss
    pairs += [(sa[i][name], sb[i][name]) for i in sa for name in ("step", "exp_avg", "exp_avg_sq")]
    return max((x.detach().double() - y.detach().double()).abs().max().item() for x, y in pairs)


def test_killed_mid_epoch_and_resumed_equals_the_uninterrupted_run(tmp_path, no_global_seed):
    straight = walk_fit(tmp_path / "straight", seed=0)
    walk_fit(tmp_path / "killed", seed=0, kill=True)
    checkpoint = tmp_path / "killed" / f"step={SAVE_AT}.ckpt"
    saved = torch.load(checkpoint, weights_only=True)
    assert saved["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]["processed"] == SAVE_AT - STEPS_PER_EPOCH  # mid-epoch
    assert saved["callbacks"]["RandomWalkRegularizer"]["steps"] == SAVE_AT  # the step of that batch included
    resumed = walk_fit(tmp_path / "resumed", seed=123, ckpt_path=checkpoint)  # another seed: everything must come from the file
    assert straight[1].steps == resumed[1].steps == EPOCHS * STEPS_PER_EPOCH
    assert difference(straight, resumed) <= 1e-6
    # negative control: the same resume with the callback's state left out of the checkpoint ends elsewhere
    lost = walk_fit(tmp_path / "lost", seed=123, ckpt_path=_without_callback_state(checkpoint, tmp_path / "lost.ckpt"))
    assert difference(straight, lost) > 1e-4


def _without_callback_state(checkpoint: Path, out: Path) -> Path:
    saved = torch.load(checkpoint, weights_only=True)
    del saved["callbacks"]["RandomWalkRegularizer"]
    torch.save(saved, out)
    return out


# ---------------------------------------------------------------- two gloo ranks
DDP_SCRIPT = """
import sys
import lightning as L
import torch
sys.path.insert(0, "tests")
from graph_user_models import NodeBatches, NodeClassifier
from litzoo.callbacks.random_walk_regularizer import RandomWalkRegularizer
from litzoo.datamodules.node_graph import KarateClubDataModule
from litzoo.modules.rwr_gae import RWRGAE

out = sys.argv[1]


def trainer(callbacks, epochs, strategy="ddp"):
    return L.Trainer(strategy=strategy, devices=2, accelerator="cpu", max_epochs=epochs, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks)


def save(tag, t, module, callback=None):
    state = {{k: v.detach().clone() for k, v in module.state_dict().items()}}
    if callback is not None:
        state["context"] = callback.skipgram.context.weight.detach().clone()
        state.update({{f"exp_avg.{{i}}": s["exp_avg"].clone() for i, s in callback.optimizer.state_dict()["state"].items()}})
    torch.save({{"state": state, "world_size": t.world_size, "steps": t.global_step}}, f"{{out}}/{{tag}}_rank{{t.global_rank}}.pt")


for tag in ("synced", "unsynced"):
    if tag == "unsynced":  # negative control: the extra backward's gradients left unreduced, as before the fix
        RandomWalkRegularizer._sum_over_ranks = lambda self, trainer: None
    L.seed_everything(0)
    data = NodeBatches()
    module = NodeClassifier(data.graph["x"])
    callback = RandomWalkRegularizer(lr=0.02, walk_length=4, walks_per_node=3, window=2, num_negatives=2)
    t = trainer([callback], epochs=2)
    t.fit(module, datamodule=data)
    save(tag, t, module, callback)

for variational in (False, True):  # RWR-GAE's own two optimisers: each rank walks its share of the same corpus
    L.seed_everything(0)
    module = RWRGAE(in_channels=34, walks_per_node=2, variational=variational)
    t = trainer([], epochs=3, strategy="ddp_find_unused_parameters_true")
    t.fit(module, datamodule=KarateClubDataModule())
    save(f"rwr_gae{{int(variational)}}", t, module)

try:  # plain ddp would fail a step later on the parameters one of the two losses leaves unused: refused up front
    trainer([], epochs=1).fit(RWRGAE(in_channels=34), datamodule=KarateClubDataModule())
except ValueError as err:
    open(f"{{out}}/refused_rank{{t.global_rank}}.txt", "w").write(str(err))
"""


def test_two_gloo_ranks_with_different_batches_end_identical(tmp_path):
    script = tmp_path / "ddp_walks.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT.format()))
    result = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=300, cwd=Path(__file__).parents[2])
    assert result.returncode == 0, result.stderr[-3000:]
    for tag, steps in (("synced", 6), ("unsynced", 6), ("rwr_gae0", 6), ("rwr_gae1", 6)):
        ranks = [torch.load(tmp_path / f"{tag}_rank{r}.pt", weights_only=True) for r in (0, 1)]
        assert [r["world_size"] for r in ranks] == [2, 2] and [r["steps"] for r in ranks] == [steps, steps]
        a, b = ranks[0]["state"], ranks[1]["state"]
        assert a.keys() == b.keys()
        same = all(torch.equal(a[k], b[k]) for k in a)
        assert same == (tag != "unsynced"), tag  # the negative control drifts apart: the test can fail
    assert all("ddp_find_unused_parameters_true" in (tmp_path / f"refused_rank{r}.txt").read_text() for r in (0, 1))
