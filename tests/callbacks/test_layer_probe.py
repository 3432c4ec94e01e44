"""LayerProbe (AV-SUPERB-style multi-task probing): on a SYNTHETIC planted upstream the learned layer weights find the
informative layer of each task and the weighted sum matches the best single layer; the encoder stays frozen; the table
is written and read back; mAP by hand; one-line errors."""

from __future__ import annotations

import csv
import math

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, Dataset

from litzoo.callbacks.layer_probe import CSV_COLUMNS, LayerProbe, mean_average_precision
from litzoo.framework.errors import LitzooError
from litzoo.framework.featurizer import synthetic_planted_layers

LAYERS, DIM, CLASSES = 5, 8, 3


class _Items(Dataset):
    def __init__(self, states: torch.Tensor, labels: torch.Tensor) -> None:
        self.states, self.labels = states, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"audio": self.states[i], "label": self.labels[i]}


class PlantedTask(L.LightningDataModule):
    """SYNTHETIC: per-sample hidden states ``(L, T, D)`` in ``batch["audio"]``; only ``layer`` carries the label."""

    def __init__(self, layer: int, seed: int, multilabel: bool = False, num_train: int = 240, num_val: int = 160) -> None:
        super().__init__()
        states, labels = synthetic_planted_layers(num_train + num_val, LAYERS, DIM, CLASSES, layer, strength=0.5,
                                                  last_layer_strength=0.15, seed=seed)  # fmt: skip
        if multilabel:  # multi-hot targets (AudioSet style): the planted class, plus class 0 on every 4th sample
            hot = nn.functional.one_hot(labels, CLASSES).float()
            hot[::4, 0] = 1.0
            labels = hot
        self.train_set = _Items(states[:num_train], labels[:num_train])
        self.val_set = _Items(states[num_train:], labels[num_train:])

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=32, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=50)


class PlantedUpstream(L.LightningModule):
    """A frozen 'encoder' that is not ours: an orthogonal mixing, BatchNorm and Dropout (which would change the states in
    train mode), exposing ``audio`` (the layers in order) and ``fusion`` (the same layers in reverse order)."""

    def __init__(self) -> None:
        super().__init__()
        self.mix = nn.Linear(DIM, DIM)
        nn.init.orthogonal_(self.mix.weight)
        nn.init.zeros_(self.mix.bias)
        self.norm, self.drop = nn.BatchNorm1d(DIM), nn.Dropout(0.5)

    def encode(self, state: torch.Tensor) -> torch.Tensor:  # (B, T, D)
        return self.drop(self.norm(self.mix(state).transpose(1, 2)).transpose(1, 2))

    def forward_hidden_states(self, batch: dict) -> dict[str, list[torch.Tensor]]:
        layers = [self.encode(s) for s in batch["audio"].unbind(1)]
        return {"audio": layers, "fusion": layers[::-1]}

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self.mix(batch["audio"]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


FAST = dict(epochs=25, lr=0.01, batch_size=32, proj_dim=16)


def test_weights_find_each_tasks_layer_and_weighted_sum_beats_the_last_layer():
    # task A informative at layer 1, task B at layer 3; 'fusion' lists the layers reversed, so its weights must move too
    probe = LayerProbe({"A": PlantedTask(1, seed=0), "B": PlantedTask(3, seed=1)}, per_layer=True, **FAST)
    rows = {(r["task"], r["feature"]): r for r in probe.evaluate(PlantedUpstream())}
    assert set(rows) == {("A", "audio"), ("A", "fusion"), ("B", "audio"), ("B", "fusion")}
    for (task, feature), row in rows.items():
        planted = {"A": 1, "B": 3}[task]
        expected = planted if feature == "audio" else LAYERS - 1 - planted
        weights = torch.tensor(row["weights"])
        assert int(weights.argmax()) == expected, (task, feature, row["weights"])
        assert weights[expected] > 0.5  # from 1/5 at the start
        assert row["best_layer"] == expected
        assert row["weighted"] >= row["last"] + 0.1, row  # the last layer keeps only a weak copy of the label
        assert row["weighted"] >= row["best"] - 0.05, row
        assert row["metric"] == "acc" and row["layers"] == LAYERS
    assert rows[("A", "audio")]["last"] == rows[("A", "fusion")]["single_layers"][0]  # the same layer, the same probe


def test_frozen_encoder_and_untouched_rng():
    module = PlantedUpstream().train()
    module.mix.weight.requires_grad_(False)  # a mix of flags that must survive
    before = {k: v.clone() for k, v in module.state_dict().items()}
    flags = {name: m.training for name, m in module.named_modules()}
    grads = {name: p.requires_grad for name, p in module.named_parameters()}
    rng = torch.get_rng_state()
    LayerProbe({"A": PlantedTask(1, seed=0, num_train=64, num_val=32)}, epochs=2).evaluate(module)
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())  # BatchNorm running stats included
    assert {name: m.training for name, m in module.named_modules()} == flags
    assert {name: p.requires_grad for name, p in module.named_parameters()} == grads
    assert all(p.grad is None for p in module.parameters())
    assert torch.equal(torch.get_rng_state(), rng)


def test_extraction_runs_in_eval_mode():
    # with dropout active, the same sample would give other features on every pass; in eval mode they are exact
    probe = LayerProbe({"A": PlantedTask(1, seed=0, num_train=32, num_val=32)}, epochs=1)
    module = PlantedUpstream().train()
    loader = probe.tasks["A"].val_dataloader()
    first, _ = probe.extract(module, loader, "A")
    second, _ = probe.extract(module, loader, "A")
    torch.testing.assert_close(first["audio"], second["audio"])
    states = probe.tasks["A"].val_set.states
    with torch.no_grad():
        expected = module.eval().mix(states[:, 2]).mean(1) / math.sqrt(1 + 1e-5)  # BatchNorm at its initial running stats
    torch.testing.assert_close(first["audio"][2], expected)


def test_fit_logs_keys_and_writes_the_table(tmp_path):
    probe = LayerProbe({"A": PlantedTask(1, seed=0, num_train=96, num_val=48)}, features=["audio"], per_layer=True, name="probing",
                       epochs=3, lr=0.01, proj_dim=8)  # fmt: skip
    trainer = L.Trainer(max_epochs=1, callbacks=[probe], logger=CSVLogger(tmp_path), enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    data = PlantedTask(1, seed=5, num_train=32, num_val=16)
    trainer.fit(PlantedUpstream(), train_dataloaders=data.train_dataloader())
    metrics = trainer.callback_metrics
    row = probe.results[0]
    assert float(metrics["probe/A/audio/acc"]) == pytest.approx(row["weighted"])
    weights = [float(metrics[f"probe/A/audio/layer_weight/{i}"]) for i in range(LAYERS)]
    assert weights == pytest.approx(row["weights"]) and sum(weights) == pytest.approx(1.0)
    assert float(metrics[f"probe/A/audio/layer_{LAYERS - 1}/acc"]) == pytest.approx(row["last"])
    assert probe.history[0]["probe/A/audio/acc"] == pytest.approx(row["weighted"])
    with open(tmp_path / "lightning_logs" / "version_0" / "probing.csv", newline="") as handle:
        table = list(csv.reader(handle))
    assert tuple(table[0]) == CSV_COLUMNS and len(table) == 2
    read = dict(zip(CSV_COLUMNS, table[1], strict=True))
    assert (read["epoch"], read["task"], read["feature"], read["metric"], read["layers"]) == ("0", "A", "audio", "acc", str(LAYERS))
    assert float(read["weighted"]) == row["weighted"] and float(read["last_layer"]) == row["last"]
    assert int(read["best_layer"]) == row["best_layer"] and float(read["best_layer_value"]) == row["best"]
    assert [float(w) for w in read["layer_weights"].split()] == row["weights"]  # full precision round trip
    markdown = (tmp_path / "lightning_logs" / "version_0" / "probing.md").read_text()
    assert markdown.startswith("| epoch | task | feature |") and "| 0 | A | audio | acc | 5 |" in markdown
    assert not [p for p in (tmp_path / "lightning_logs" / "version_0").iterdir() if p.name.startswith(".")]  # no temporary files left
    # the history travels in checkpoints
    restored = LayerProbe({"A": PlantedTask(1, seed=0)})
    restored.load_state_dict(probe.state_dict())
    assert restored.history == probe.history


def test_multilabel_task_scores_map():
    probe = LayerProbe({"tags": PlantedTask(2, seed=0, multilabel=True)}, features="audio", **FAST)
    (row,) = probe.evaluate(PlantedUpstream())
    assert row["metric"] == "mAP" and int(torch.tensor(row["weights"]).argmax()) == 2
    assert 0.6 < row["weighted"] <= 1.0


def test_mean_average_precision_by_hand():
    targets = torch.tensor([[1, 0], [0, 1], [1, 0], [0, 0]]).float()
    scores = torch.tensor([[0.9, 0.1], [0.8, 0.7], [0.3, 0.2], [0.5, 0.6]])
    # class 0: ranking 0.9(+) 0.8(-) 0.5(-) 0.3(+) -> AP = (1/1 + 2/4) / 2 = 0.75
    # class 1: ranking 0.7(+) ... -> AP = 1
    assert mean_average_precision(scores, targets) == pytest.approx((0.75 + 1.0) / 2)
    # a class without positives is left out of the mean (not scored 0)
    assert mean_average_precision(scores, torch.cat([targets, torch.zeros(4, 1)], 1)) == pytest.approx(0.875)


class _NoProtocol(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(DIM, DIM)

    def training_step(self, batch, batch_idx):
        return self.layer(batch["audio"]).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


class _BadShapes(PlantedUpstream):
    def forward_hidden_states(self, batch):
        return {"audio": [torch.zeros(2, 3, DIM)]}  # batch size 2 for a batch of 32


def test_errors_are_one_line():
    task = {"A": PlantedTask(1, seed=0, num_train=32, num_val=32)}
    with pytest.raises(LitzooError, match="forward_hidden_states.*_NoProtocol has none") as error:
        LayerProbe(task).evaluate(_NoProtocol())
    assert "\n" not in str(error.value)
    with pytest.raises(LitzooError, match=r"no 'video' hidden states; it has \['audio', 'fusion'\]"):
        LayerProbe(task, features=["video"]).evaluate(PlantedUpstream())
    with pytest.raises(LitzooError, match=r"B = 32; got shapes \[\(2, 3, 8\)\]"):
        LayerProbe(task).evaluate(_BadShapes())
    trainer = L.Trainer(max_epochs=1, callbacks=[LayerProbe(task)], logger=False, enable_checkpointing=False, enable_progress_bar=False)
    with pytest.raises(LitzooError, match="has none"):  # refused at setup, before any training
        trainer.fit(_NoProtocol(), train_dataloaders=task["A"].train_dataloader())


@pytest.mark.parametrize(
    "kwargs",
    [dict(tasks={}), dict(tasks={"a/b": None}), dict(features=[]), dict(features=["x/y"]), dict(every_n_epochs=0),
     dict(name=""), dict(epochs=0), dict(lr=0.0), dict(weight_decay=-1.0), dict(batch_size=0), dict(grad_clip=0.0), dict(proj_dim=0)],
)  # fmt: skip
def test_bad_arguments(kwargs):
    args = {"tasks": {"A": PlantedTask(1, seed=0, num_train=8, num_val=8)}} | kwargs
    with pytest.raises(ValueError):
        LayerProbe(**args)


# ------------------------------------------------------------------------------------------ DDP

DDP_SCRIPT = """
import importlib.util, torch, lightning as L

spec = importlib.util.spec_from_file_location("test_layer_probe_models", "{test_file}")
models = importlib.util.module_from_spec(spec)
spec.loader.exec_module(models)

class Save(L.Callback):
    def on_fit_end(self, trainer, pl_module):
        torch.save({{"metrics": {{k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("probe/")}},
                    "state": pl_module.state_dict(), "world_size": trainer.world_size}}, f"{out}/rank{{trainer.global_rank}}.pt")

if __name__ == "__main__":
    torch.set_num_threads(1)
    probe = models.LayerProbe({{"A": models.PlantedTask(1, seed=0, num_train=64, num_val=32)}}, features=["audio"], epochs=2, proj_dim=8)
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", devices=2, strategy="ddp", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir="{out}", callbacks=[probe, Save()])
    trainer.fit(models.PlantedUpstream(), train_dataloaders=models.PlantedTask(1, seed=5, num_train=64, num_val=8).train_dataloader())
"""


def test_two_process_ddp_ranks_log_the_same_table(tmp_path):
    import subprocess
    import sys
    import textwrap
    from pathlib import Path

    root = Path(__file__).parents[2]
    script = tmp_path / "ddp_layer_probe.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT.format(out=tmp_path, test_file=Path(__file__).resolve())))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0]["world_size"] == 2 and ranks[0]["metrics"] == ranks[1]["metrics"]
    assert set(ranks[0]["metrics"]) == {"probe/A/audio/acc"} | {f"probe/A/audio/layer_weight/{i}" for i in range(LAYERS)}
    # the numbers of one process on the final weights: every rank probed the whole labelled data, not a shard
    model = PlantedUpstream()
    model.load_state_dict(ranks[0]["state"])
    (row,) = LayerProbe({"A": PlantedTask(1, seed=0, num_train=64, num_val=32)}, features=["audio"], epochs=2, proj_dim=8).evaluate(model)
    assert row["weighted"] == pytest.approx(ranks[0]["metrics"]["probe/A/audio/acc"], abs=1e-6)
    assert (tmp_path / "layer_probe.csv").is_file() and (tmp_path / "layer_probe.md").is_file()  # written by rank 0
