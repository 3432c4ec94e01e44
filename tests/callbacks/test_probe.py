"""LinearProbe / KNNProbe: DINO's weighted kNN by hand, MAE's linear head on synthetic features, and both
inside a real fit on sklearn digits — frozen features, side-by-side keys, every_n_epochs, DDP."""

from __future__ import annotations

import csv
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from litzoo.callbacks.probe import KNNProbe, LinearProbe, accuracy, knn_classify, linear_probe_head, train_linear_probe
from litzoo.datamodules.digits import DigitsDataModule
from litzoo.framework.errors import LitzooError

# ------------------------------------------------------------------------------------------ kNN


def test_knn_weighting_changes_the_answer_against_a_majority_vote():
    # query (1, 0); one class-1 neighbour at cosine 1, three class-0 neighbours at cosine 0.5 (k = 4)
    train = torch.tensor([[1.0, 0.0]] + [[0.5, math.sqrt(0.75)]] * 3)
    labels = torch.tensor([1, 0, 0, 0])
    query = torch.tensor([[1.0, 0.0]])
    # T = 0.07: class 1 gets exp(1/0.07) = 1.6e6, class 0 gets 3·exp(0.5/0.07) = 3.8e3 -> class 1 (majority says 0)
    assert math.exp(1 / 0.07) > 3 * math.exp(0.5 / 0.07)
    assert knn_classify(train, labels, query, num_classes=2, k=4, temperature=0.07).tolist() == [1]
    # T = 10: exp(0.1) = 1.105 against 3·exp(0.05) = 3.15 -> the majority, class 0
    assert math.exp(1 / 10) < 3 * math.exp(0.5 / 10)
    assert knn_classify(train, labels, query, num_classes=2, k=4, temperature=10.0).tolist() == [0]
    # k = 1: the nearest neighbour alone
    assert knn_classify(train, labels, query, num_classes=2, k=1, temperature=10.0).tolist() == [1]


def test_knn_uses_cosine_similarity_not_dot_products():
    # a long vector at 45° has the largest dot product with the query but a smaller cosine than (0.1, 0)
    train = torch.tensor([[0.1, 0.0], [10.0, 10.0]])
    labels = torch.tensor([0, 1])
    assert knn_classify(train, labels, torch.tensor([[3.0, 0.0]]), num_classes=2, k=1).tolist() == [0]


def reference_knn(train, labels, test, num_classes, k, temperature):
    """DINO's knn_classifier written out with Python loops."""
    predictions = []
    for q in test:
        sims = [float(torch.dot(q / q.norm(), t / t.norm())) for t in train]
        top = sorted(range(len(train)), key=lambda i: -sims[i])[:k]
        votes = [0.0] * num_classes
        for i in top:
            votes[int(labels[i])] += math.exp(sims[i] / temperature)
        predictions.append(max(range(num_classes), key=lambda c: (votes[c], -c)))
    return predictions


@pytest.mark.parametrize("k, temperature", [(1, 0.07), (5, 0.07), (7, 0.5), (100, 0.07)])  # k = 100 > N: all neighbours
def test_knn_matches_a_loop_implementation(k, temperature):
    generator = torch.Generator().manual_seed(1)
    train, test = torch.randn(40, 6, generator=generator), torch.randn(25, 6, generator=generator)
    labels = torch.randint(0, 4, (40,), generator=generator)
    got = knn_classify(train, labels, test, num_classes=4, k=k, temperature=temperature, chunk_size=7)  # several chunks
    assert got.tolist() == reference_knn(train, labels, test, 4, k, temperature)


# --------------------------------------------------------------------------------------- linear


def gaussian_classes(n: int, num_classes: int = 4, dim: int = 16, seed: int = 0, random_labels: bool = False):
    generator = torch.Generator().manual_seed(seed)
    means = 3 * torch.randn(num_classes, dim, generator=generator)
    labels = torch.randint(0, num_classes, (n,), generator=generator)
    features = means[labels] + 0.5 * torch.randn(n, dim, generator=generator) + 5.0  # offset: the BatchNorm centres it
    if random_labels:
        features = torch.randn(n, dim, generator=generator)
    return features, labels


def test_linear_head_is_maes():
    head = linear_probe_head(12, 5)
    bn, linear = head
    assert isinstance(bn, nn.BatchNorm1d) and not bn.affine and bn.eps == 1e-6 and bn.num_features == 12
    assert isinstance(linear, nn.Linear) and linear.weight.shape == (5, 12) and torch.all(linear.bias == 0)
    assert linear.weight.std() < 0.02  # trunc_normal(std=0.01)


def test_linear_probe_separates_separable_features_and_is_at_chance_on_random_labels():
    x, y = gaussian_classes(600)
    head = train_linear_probe(x[:400], y[:400], num_classes=4)
    assert accuracy(head(x[400:]).argmax(1), y[400:], 4) == 1.0
    x, y = gaussian_classes(600, random_labels=True)
    head = train_linear_probe(x[:400], y[:400], num_classes=4)
    assert abs(accuracy(head(x[400:]).argmax(1), y[400:], 4) - 0.25) < 0.1


def test_linear_probe_is_seeded_and_leaves_the_global_rng_alone():
    x, y = gaussian_classes(100)
    torch.manual_seed(123)
    a = train_linear_probe(x, y, 4, epochs=3, seed=5)
    after = torch.rand(3)
    torch.manual_seed(123)
    expected = torch.rand(3)
    b = train_linear_probe(x, y, 4, epochs=3, seed=5)
    c = train_linear_probe(x, y, 4, epochs=3, seed=6)
    assert torch.equal(after, expected)
    assert torch.equal(a[1].weight, b[1].weight) and not torch.equal(a[1].weight, c[1].weight)


# ----------------------------------------------------------------------------- modules and data


class TinyEncoder(L.LightningModule):
    """A user's encoder with forward_features: BatchNorm and dropout (eval mode matters), a frozen
    submodule kept in eval mode, and a classification head trained on digits."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout(0.5),
                                  nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())  # fmt: skip
        self.frozen = nn.BatchNorm1d(16)  # e.g. a frozen teacher part: stays in eval mode during training
        self.head = nn.Linear(16, 10)

    def on_train_epoch_start(self) -> None:
        self.frozen.eval()

    def forward_features(self, x):
        return self.frozen(self.body(x))

    def training_step(self, batch, batch_idx):
        return nn.functional.cross_entropy(self.head(self.forward_features(batch["image"])), batch["label"])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


class RawPixels(L.LightningModule):
    def forward_features(self, x):
        return x.flatten(1)


class NoFeatures(TinyEncoder):
    forward_features = None


class FeatureMaps(TinyEncoder):
    def forward_features(self, x):
        return self.body[:3](x)  # (B, C, H, W): not pooled


class Snapshot(L.Callback):
    """Before the probes (callbacks run in list order): the module's state, gradients and modes."""

    def on_train_epoch_end(self, trainer, pl_module):
        self.state = {k: v.clone() for k, v in pl_module.state_dict().items()}
        self.grads = {n: None if p.grad is None else p.grad.clone() for n, p in pl_module.named_parameters()}
        self.modes = {n: m.training for n, m in pl_module.named_modules()}


class Compare(L.Callback):
    """After the probes: nothing changed."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot, self.checked = snapshot, 0

    def on_train_epoch_end(self, trainer, pl_module):
        s = self.snapshot
        state = pl_module.state_dict()
        assert state.keys() == s.state.keys() and all(torch.equal(state[k], s.state[k]) for k in state)  # weights and BN buffers
        for n, p in pl_module.named_parameters():
            assert (p.grad is None) == (s.grads[n] is None) and (p.grad is None or torch.equal(p.grad, s.grads[n])), n
        assert {n: m.training for n, m in pl_module.named_modules()} == s.modes
        assert pl_module.training and not pl_module.frozen.training  # restored per submodule, not by a blanket train()
        self.checked += 1


def fit(model, callbacks, root, epochs=2, datamodule=None):
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", logger=CSVLogger(root, name="probe"), callbacks=callbacks, default_root_dir=root,
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False, limit_train_batches=3)  # fmt: skip
    trainer.fit(model, datamodule=datamodule or DigitsDataModule(batch_size=64))
    return trainer


def logged_rows(trainer) -> list[dict[str, str]]:
    with open(Path(trainer.logger.log_dir) / "metrics.csv") as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------------------------ in a fit


def test_probes_in_a_fit_log_both_keys_and_leave_the_module_frozen(tmp_path):
    digits = DigitsDataModule(batch_size=256)
    snapshot = Snapshot()
    compare = Compare(snapshot)
    linear, knn = LinearProbe(digits, epochs=30), KNNProbe(digits)
    trainer = fit(TinyEncoder(), [snapshot, linear, knn, compare], tmp_path)
    assert compare.checked == 2
    for probe in (linear, knn):
        assert sorted(probe.history) == [0, 1]
        value = trainer.callback_metrics[probe.metric_key]
        assert float(value) == probe.history[1] and 0.2 < float(value) <= 1.0  # above chance (0.1) after two short epochs
        # the logger got it once per epoch
        rows = [r for r in logged_rows(trainer) if r.get(probe.metric_key)]
        assert [float(r[probe.metric_key]) for r in rows] == pytest.approx([probe.history[0], probe.history[1]])
    assert set(trainer.callback_metrics) >= {"probe/linear/acc", "probe/knn/acc"}


def test_probe_on_the_trainers_own_datamodule(tmp_path):
    digits = DigitsDataModule(batch_size=64)
    knn = KNNProbe(digits, name="same_data")
    trainer = fit(TinyEncoder(), [knn], tmp_path, epochs=1, datamodule=digits)
    assert "probe/same_data/acc" in trainer.callback_metrics


def test_every_n_epochs_runs_only_on_the_nth_epoch(tmp_path):
    knn = KNNProbe(DigitsDataModule(batch_size=256), every_n_epochs=2)
    trainer = fit(TinyEncoder(), [knn], tmp_path, epochs=3)
    assert sorted(knn.history) == [1]  # the 2nd epoch (index 1), not the 1st nor the 3rd
    rows = [r for r in logged_rows(trainer) if r.get("probe/knn/acc")]
    assert len(rows) == 1 and rows[0]["epoch"] == "1"


def test_side_by_side_probes_on_two_datamodules_keep_their_own_keys_and_states(tmp_path):
    small, large = DigitsDataModule(batch_size=256), DigitsDataModule(batch_size=256, image_size=16)
    probes = [LinearProbe(small, name="digits8", epochs=10), LinearProbe(large, name="digits16", epochs=10), KNNProbe(small, name="knn8")]
    trainer = fit(TinyEncoder(), probes, tmp_path, epochs=1)
    for probe in probes:
        assert float(trainer.callback_metrics[f"probe/{probe.name}/acc"]) == probe.history[0]
    assert probes[0].history[0] != probes[1].history[0]  # evaluated on different data
    trainer.save_checkpoint(tmp_path / "probes.ckpt")
    saved = torch.load(tmp_path / "probes.ckpt", weights_only=True)["callbacks"]
    assert {p.state_key for p in probes} <= set(saved) and len({p.state_key for p in probes}) == 3
    restored = LinearProbe(small, name="digits8")
    restored.load_state_dict(saved[probes[0].state_key])
    assert restored.history == probes[0].history


def test_two_probes_with_one_name_are_refused(tmp_path):
    digits = DigitsDataModule(batch_size=256)
    with pytest.raises(LitzooError, match="also named 'acc1'"):
        fit(TinyEncoder(), [LinearProbe(digits, name="acc1"), KNNProbe(digits, name="acc1")], tmp_path, epochs=1)


def test_raw_pixels_of_digits_are_a_strong_baseline_and_a_random_encoder_is_above_chance():
    digits = DigitsDataModule(batch_size=256)
    knn, linear = KNNProbe(digits), LinearProbe(digits, epochs=30)
    raw_knn, raw_linear = knn.evaluate(RawPixels()), linear.evaluate(RawPixels())
    random_knn = knn.evaluate(TinyEncoder())
    assert raw_knn > 0.9 and raw_linear > 0.9  # sanity numbers on the real digits (val split, 180 images): 0.956 / 0.956
    assert 0.3 < random_knn < raw_knn  # a random-init conv encoder is far above chance (0.1) but below raw pixels


# ----------------------------------------------------------------------------------- refusals


def test_a_module_without_forward_features_is_refused(tmp_path):
    digits = DigitsDataModule(batch_size=256)
    with pytest.raises(LitzooError, match="forward_features"):
        fit(NoFeatures(), [KNNProbe(digits)], tmp_path, epochs=1)
    with pytest.raises(LitzooError, match="forward_features"):
        LinearProbe(digits).evaluate(NoFeatures())
    with pytest.raises(LitzooError, match=r"\(B, D\)"):
        KNNProbe(digits).evaluate(FeatureMaps())


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda dm: LinearProbe(dm, every_n_epochs=0), "every_n_epochs"),
        (lambda dm: KNNProbe(dm, name=""), "name"),
        (lambda dm: LinearProbe(dm, name="  "), "name"),
        (lambda dm: LinearProbe(dm, epochs=0), "epochs"),
        (lambda dm: LinearProbe(dm, lr=0.0), "lr"),
        (lambda dm: LinearProbe(dm, weight_decay=-1.0), "weight_decay"),
        (lambda dm: KNNProbe(dm, k=0), "k must"),
        (lambda dm: KNNProbe(dm, temperature=0.0), "temperature"),
        (lambda dm: KNNProbe(object()), "LightningDataModule"),
    ],
)
def test_bad_arguments_raise_value_errors(make, message):
    with pytest.raises(ValueError, match=message):
        make(DigitsDataModule())


class TrainTestOnly(L.LightningDataModule):
    """Tuple batches, no val split, no num_classes attribute."""

    def setup(self, stage=None):
        basis = torch.eye(3)
        self.train = TensorDataset(basis[[0, 1, 0, 1]], torch.tensor([0, 1, 0, 1]))
        self.test = TensorDataset(basis[[0, 1]], torch.tensor([2, 1]))  # the first test label disagrees with its neighbours

    def train_dataloader(self):
        return DataLoader(self.train, batch_size=2, shuffle=True)

    def test_dataloader(self):
        return DataLoader(self.test, batch_size=2)


def test_falls_back_to_the_test_split_and_infers_the_number_of_classes():
    probe = KNNProbe(TrainTestOnly(), k=1)
    assert probe.evaluate(RawPixels()) == 0.5  # evaluated on the test split (on train it would be 1.0)
    assert probe.num_classes(torch.tensor([0, 1]), torch.tensor([2])) == 3


# ------------------------------------------------------------------------------------------ DDP

DDP_SCRIPT = """
import importlib.util, torch, lightning as L
from litzoo.callbacks.probe import KNNProbe, LinearProbe
from litzoo.datamodules.digits import DigitsDataModule

spec = importlib.util.spec_from_file_location("test_probe_models", "{test_file}")
models = importlib.util.module_from_spec(spec)
spec.loader.exec_module(models)

class Save(L.Callback):
    def on_fit_end(self, trainer, pl_module):
        torch.save({{"metrics": {{k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("probe/")}},
                    "state": pl_module.state_dict(), "world_size": trainer.world_size}}, f"{out}/rank{{trainer.global_rank}}.pt")

if __name__ == "__main__":
    torch.set_num_threads(1)
    L.seed_everything(0)
    digits = DigitsDataModule(batch_size=256)
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", devices=2, strategy="ddp", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_train_batches=2,
                        callbacks=[LinearProbe(digits, epochs=10), KNNProbe(digits), Save()])
    trainer.fit(models.TinyEncoder(), datamodule=DigitsDataModule(batch_size=32))
"""


def test_two_process_ddp_ranks_log_the_full_data_probe(tmp_path: Path):
    root = Path(__file__).parents[2]
    script = tmp_path / "ddp_probe.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT.format(out=tmp_path, test_file=Path(__file__).resolve())))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0]["world_size"] == 2 and ranks[0]["metrics"] == ranks[1]["metrics"]
    assert set(ranks[0]["metrics"]) == {"probe/linear/acc", "probe/knn/acc"}
    # the same numbers as one process on the final weights: each rank saw the whole labelled data, not a shard
    model = TinyEncoder()
    model.load_state_dict(ranks[0]["state"])
    digits = DigitsDataModule(batch_size=256)
    assert KNNProbe(digits).evaluate(model) == pytest.approx(ranks[0]["metrics"]["probe/knn/acc"], abs=1e-6)
    assert LinearProbe(digits, epochs=10).evaluate(model) == pytest.approx(ranks[0]["metrics"]["probe/linear/acc"], abs=1e-6)
