"""AV-SUPERB-style multi-task probing: a learnable layer mixture over a frozen encoder's hidden states, several tasks in one table.

Reference: Tseng et al., "AV-SUPERB: A Multi-Task Evaluation Benchmark for Audio-Visual Representation Models"
(ICASSP 2024); official code github.com/roger-tseng/av-superb (``interfaces.py`` ``Featurizer``, ``runner.py``,
``downstream_tasks/*/{config.yaml,model.py,expert.py}``, ``upstream_models/*/expert.py``). The upstream is frozen; for
each task and feature type a :class:`~litzoo.framework.featurizer.Featurizer` (softmax weights over layers, zeros at
start) and a small head are trained on the task's training split and scored on its validation split (test split when
there is none). The learned layer weights say where in the encoder each task finds its information.

Protocol, so any encoder works: the LightningModule has ``forward_hidden_states(batch) -> dict[str, list[Tensor]]``,
one list of hidden states per feature type, as AV-SUPERB's ``expert.py`` returns ``{"audio_feats": [...],
"video_feats": [...], "fusion_feats": [...]}`` (here the keys are the feature names, e.g. ``"audio"``, ``"video"``,
``"fusion"``): every state ``(B, T, D)`` (or ``(B, D)``, already pooled), all of one shape within a type; an optional
``"<feature>_mask"`` entry ``(B, T)`` bool marks the real positions of padded sequences. ``batch`` is the task loader's
batch moved to the module's device (litzoo's dict batches, ``{"audio", "video", "label", ...}``). A module without the
method, a missing feature type or a malformed output is one :class:`LitzooError` line.

Labels (``batch["label"]`` or the second element of a tuple): ``(B,)`` integers → single-label task, cross-entropy,
top-1 accuracy (``acc``, as VGGSound / Kinetics-Sounds / UCF101); ``(B, C)`` multi-hot floats → multi-label task, BCE,
macro mean average precision (``mAP``, sklearn ``average_precision_score``, as AudioSet-20K; classes without a
positive in the evaluation split are left out of the mean, where sklearn would score them 0 with a warning).

What follows the official code (verified): the frozen upstream runs in eval mode under ``no_grad``; zero-initialised
weights; optional per-layer ``layer_norm`` without affine parameters; utterance-level tasks mean-pool over time and
cache the pooled per-layer features once (``--pooled_features_path``: the layer norm then acts on the pooled
vectors); the head is ``connector`` ``Linear(D, proj_dim=256)`` then ``Linear(proj_dim, C)`` (``modelrc.input_dim:
256``; the official mean-pool sits between them, which is the same thing for a linear connector); AdamW (torch's
defaults, weight decay 0.01) at lr 1e-3, gradient-norm clipping at 1, the Featurizer trained together with the head.
What is chosen here: epochs over the cached features (``epochs``, seeded shuffling) instead of 50 000 steps with
accumulation 2 (batch 16 × 2 = the default ``batch_size`` 32); the mean over time uses only the real positions
(the official ``pad_sequence`` + ``mean`` also averages padding when no cache is used); no model selection on the
validation split. With ``per_layer=True`` a probe of the same recipe is also trained on every single layer
(``layer_selection``), which gives the last-layer and the best-single-layer baselines (the best layer chosen on the
evaluation split itself, so an optimistic baseline).

Keys (TensorBoard, ``callback_metrics``): ``probe/<task>/<feature>/<acc|mAP>``, ``probe/<task>/<feature>/layer_weight/<i>``
and with ``per_layer`` ``probe/<task>/<feature>/layer_<i>/<acc|mAP>``. The table (one row per task and feature type:
metric, weighted-sum value, last layer, best single layer, learned weights) is written atomically to
``<log_dir>/<name>.csv`` and ``<name>.md`` (the logger's ``log_dir``, else the trainer's ``default_root_dir``).

When and where: ``on_train_epoch_end`` every ``every_n_epochs`` epochs during ``fit``, like litzoo's other probes;
:meth:`LayerProbe.evaluate` also runs without a Trainer. Features are extracted from loaders of its own (sequential,
no DistributedSampler) under a forked, seeded RNG, so the run's random streams are untouched. DDP: every rank
computes the whole table from identical weights with the same seed; rank 0's numbers are broadcast so all ranks log
the same values; rank 0 writes the files.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from sklearn.metrics import average_precision_score
from torch import Tensor, nn
from typing_extensions import override

from litzoo.framework.data.batches import batch_labels, datamodule_loader, in_order, prepare_side_datamodule
from litzoo.framework.data.staging import write_files_atomically
from litzoo.framework.errors import LitzooError
from litzoo.framework.featurizer import Featurizer, mean_pool
from litzoo.framework.profiling import eval_mode

#: the protocol method a module implements
PROTOCOL = "forward_hidden_states"


# ------------------------------------------------------------------------------------------ the probe head


class LayerProbeHead(nn.Module):
    """Featurizer → AV-SUPERB's connector ``Linear(D, proj_dim)`` → ``Linear(proj_dim, C)`` on pooled ``(L, B, D)`` features."""

    def __init__(self, num_layers: int, dim: int, num_classes: int, proj_dim: int = 256, layer_norm: bool = False) -> None:
        super().__init__()
        self.featurizer = Featurizer(num_layers, dim, layer_norm=layer_norm)
        self.connector = nn.Linear(dim, proj_dim)
        self.linear = nn.Linear(proj_dim, num_classes)

    def forward(self, pooled: Tensor) -> Tensor:
        return self.linear(self.connector(self.featurizer(pooled)))


def train_layer_probe(pooled: Tensor, labels: Tensor, num_classes: int, multilabel: bool, *, epochs: int = 30, lr: float = 1e-3,
                      weight_decay: float = 0.01, batch_size: int = 32, grad_clip: float = 1.0, proj_dim: int = 256,
                      layer_norm: bool = False, seed: int = 0, who: str = "LayerProbe") -> LayerProbeHead:  # fmt: skip
    """Train a :class:`LayerProbeHead` on cached pooled features ``(L, N, D)``: AdamW, clipping, ``epochs`` seeded
    shuffled passes; cross-entropy on ``(N,)`` class indices or BCE on ``(N, C)`` multi-hot targets. Deterministic for a
    ``seed`` without touching the global RNG; returns the head in eval mode. A non-finite loss raises LitzooError."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = LayerProbeHead(pooled.shape[0], pooled.shape[-1], num_classes, proj_dim, layer_norm).to(pooled.device)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    loss_fn = nn.BCEWithLogitsLoss() if multilabel else nn.CrossEntropyLoss()
    count = pooled.shape[1]
    head.train()
    with torch.enable_grad():
        for epoch in range(epochs):
            order = torch.randperm(count, generator=generator).to(pooled.device)
            for start in range(0, count, batch_size):
                rows = order[start : start + batch_size]
                loss = loss_fn(head(pooled[:, rows]), labels[rows])
                if not torch.isfinite(loss):
                    raise LitzooError(f"{who}: the probe's loss became {float(loss)} in epoch {epoch}; lower lr or check the features")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(head.parameters(), grad_clip)
                optimizer.step()
    return head.eval()


def top1_accuracy(logits: Tensor, labels: Tensor) -> float:
    """Share of rows whose arg-max is the label."""
    return float((logits.argmax(dim=1) == labels).float().mean())


def mean_average_precision(scores: Tensor, targets: Tensor) -> float:
    """Macro mean of sklearn's per-class average precision over the classes with at least one positive target."""
    y_true, y_score = targets.detach().cpu().numpy() > 0.5, scores.detach().float().cpu().numpy()
    present = np.flatnonzero(y_true.any(axis=0))
    if len(present) == 0:
        return float("nan")
    return float(np.mean([average_precision_score(y_true[:, c], y_score[:, c]) for c in present]))


# ------------------------------------------------------------------------------------------ the callback


class LayerProbe(Callback):
    """Every ``every_n_epochs`` epochs, AV-SUPERB's Featurizer + linear probes on several tasks and feature types; one table.

    Args:
        tasks: task name → labelled DataModule (see the module docstring for labels); a name is a key segment, so no ``/``.
        features: the feature types to probe (keys of the module's ``forward_hidden_states`` output); ``None``: all
            of them (the keys without ``_mask``, sorted).
        every_n_epochs: run after every this many training epochs.
        name: the table's file stem (``<log_dir>/<name>.csv`` / ``.md``) and the checkpoint state key.
        layer_norm: normalise each layer before weighting (AV-SUPERB's ``normalize``, default off).
        per_layer: also train a probe on each single layer (the last-layer and best-layer baselines).
        epochs: passes over the cached training features.
        lr: AdamW learning rate (AV-SUPERB: 1e-3).
        weight_decay: AdamW weight decay (torch's default 0.01, which AV-SUPERB keeps).
        batch_size: mini-batch size of the probe's training (AV-SUPERB: 16 with accumulation 2).
        grad_clip: gradient-norm clipping (AV-SUPERB: 1).
        proj_dim: width of the connector (AV-SUPERB: 256).
        seed: seeds the heads, their batch order and the extraction's RNG.
    """

    def __init__(self, tasks: Mapping[str, L.LightningDataModule], features: Sequence[str] | None = None, every_n_epochs: int = 1,
                 name: str = "layer_probe", layer_norm: bool = False, per_layer: bool = False, epochs: int = 30, lr: float = 1e-3,
                 weight_decay: float = 0.01, batch_size: int = 32, grad_clip: float = 1.0, proj_dim: int = 256,
                 seed: int = 0) -> None:  # fmt: skip
        super().__init__()
        if not isinstance(tasks, Mapping) or not tasks:
            raise ValueError("tasks must be a non-empty mapping of task name -> LightningDataModule")
        for task, dm in tasks.items():
            if not isinstance(task, str) or not task.strip() or "/" in task:
                raise ValueError(f"task names must be non-empty strings without '/', got {task!r}")
            if not isinstance(dm, L.LightningDataModule):
                raise ValueError(f"task {task!r}: expected a LightningDataModule, got {type(dm).__name__}")
        if isinstance(features, str):
            features = [features]
        if features is not None and (not features or any(not isinstance(f, str) or not f or "/" in f for f in features)):
            raise ValueError(f"features must be None or non-empty names without '/', got {features!r}")
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be at least 1, got {every_n_epochs}")
        if not isinstance(name, str) or not name.strip() or "/" in name:
            raise ValueError(f"name must be a non-empty file stem without '/', got {name!r}")
        if epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {epochs}")
        if not lr > 0:
            raise ValueError(f"lr must be positive, got {lr}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be 0 or more, got {weight_decay}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if not grad_clip > 0:
            raise ValueError(f"grad_clip must be positive, got {grad_clip}")
        if proj_dim < 1:
            raise ValueError(f"proj_dim must be at least 1, got {proj_dim}")
        self.tasks = dict(tasks)
        self.features = list(features) if features is not None else None
        self.every_n_epochs, self.name, self.layer_norm, self.per_layer = every_n_epochs, name, bool(layer_norm), bool(per_layer)
        self.train_kwargs = dict(epochs=epochs, lr=lr, weight_decay=weight_decay, batch_size=batch_size, grad_clip=grad_clip,
                                 proj_dim=proj_dim, layer_norm=self.layer_norm, seed=seed)  # fmt: skip
        self.seed = seed
        self.results: list[dict[str, Any]] = []  # the latest table's rows
        self.history: dict[int, dict[str, float]] = {}  # epoch -> logged values, saved in checkpoints
        self._ready: set[str] = set()

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(name=self.name)

    # ------------------------------------------------------------------------------ set-up
    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        check_hidden_states_protocol(pl_module)
        for task, dm in self.tasks.items():
            if task in self._ready:
                continue
            prepare_side_datamodule(trainer, dm, "layer_probe")
            self._ready.add(task)

    def _prepare(self, task: str) -> None:
        if task not in self._ready:
            self.tasks[task].prepare_data()
            self.tasks[task].setup("fit")
            self._ready.add(task)

    def _loader(self, task: str, split: str) -> Any:
        return datamodule_loader(self.tasks[task], split)

    def _splits(self, task: str) -> tuple[Any, Any]:
        train = self._loader(task, "train")
        if train is None:
            raise LitzooError(f"LayerProbe task {task!r}: its DataModule has no train_dataloader() to train the probe on")
        evaluation = self._loader(task, "val")
        if evaluation is None:
            self.tasks[task].setup("test")
            evaluation = self._loader(task, "test")
        if evaluation is None:
            raise LitzooError(f"LayerProbe task {task!r}: its DataModule has neither val_dataloader() nor test_dataloader() to score on")
        return train, evaluation

    # ------------------------------------------------------------------------------ extraction
    @torch.no_grad()
    def extract(self, pl_module: L.LightningModule, loader: Any, task: str, trainer: L.Trainer | None = None) -> tuple[dict[str, Tensor], Tensor]:
        """Mean-pooled hidden states ``{feature: (L, N, D)}`` (float32) and the labels of every sample of ``loader``."""
        check_hidden_states_protocol(pl_module)
        precision = trainer.precision_plugin if trainer is not None else None
        pooled: dict[str, list[Tensor]] = {}
        labels: list[Tensor] = []
        wanted = self.features
        with eval_mode(pl_module), torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            for batch in in_order(loader):
                label = batch_labels(batch)
                if label is None:
                    raise LitzooError(f"LayerProbe task {task!r}: the batches have no labels (expected a 'label' entry or (input, label) tuples)")
                batch = move_data_to_device(batch, pl_module.device)
                context = precision.forward_context() if precision is not None else contextlib.nullcontext()
                with context:
                    out = getattr(pl_module, PROTOCOL)(batch)
                if wanted is None:
                    if not isinstance(out, Mapping):
                        raise LitzooError(f"LayerProbe: {type(pl_module).__name__}.{PROTOCOL} must return a dict of feature type -> "
                                          f"list of hidden states, got {type(out).__name__}")  # fmt: skip
                    wanted = sorted(k for k in out if not str(k).endswith("_mask"))
                for feature in wanted:
                    states = hidden_states_of(out, feature, len(label), type(pl_module).__name__)
                    mask = out.get(f"{feature}_mask")
                    layer_vectors = torch.stack([mean_pool(s.float(), mask) for s in states])  # (L, B, D)
                    if not torch.isfinite(layer_vectors).all():
                        raise LitzooError(f"LayerProbe task {task!r}: {type(pl_module).__name__}.{PROTOCOL} returned non-finite {feature!r} states")
                    pooled.setdefault(feature, []).append(layer_vectors)
                labels.append(label.to(pl_module.device))
        if not labels:
            raise LitzooError(f"LayerProbe task {task!r}: a split of its DataModule is empty")
        result = {}
        for feature, parts in pooled.items():
            if len({p.shape[0] for p in parts}) != 1 or len({p.shape[2] for p in parts}) != 1:
                raise LitzooError(f"LayerProbe: {type(pl_module).__name__}.{PROTOCOL} returned a varying number or width of {feature!r} "
                                  f"hidden states across batches")  # fmt: skip
            result[feature] = torch.cat(parts, dim=1)
        return result, torch.cat(labels)

    # ------------------------------------------------------------------------------ evaluation
    def evaluate(self, pl_module: L.LightningModule, trainer: L.Trainer | None = None) -> list[dict[str, Any]]:
        """The table: one row per task and feature type (see :meth:`_probe_one`); also kept in :attr:`results`."""
        rows = []
        for task in self.tasks:
            self._prepare(task)
            train_loader, eval_loader = self._splits(task)
            train_pooled, train_labels = self.extract(pl_module, train_loader, task, trainer)
            eval_pooled, eval_labels = self.extract(pl_module, eval_loader, task, trainer)
            multilabel, num_classes = self._task_kind(task, train_labels, eval_labels)
            for feature in train_pooled:
                rows.append(self._probe_one(task, feature, train_pooled[feature], train_labels, eval_pooled[feature], eval_labels,
                                            num_classes, multilabel))  # fmt: skip
        self.results = rows
        return rows

    def _task_kind(self, task: str, train_labels: Tensor, eval_labels: Tensor) -> tuple[bool, int]:
        if train_labels.dim() == 2 and eval_labels.dim() == 2 and train_labels.shape[1] == eval_labels.shape[1]:
            return True, int(train_labels.shape[1])
        if train_labels.dim() == 1 and eval_labels.dim() == 1 and not train_labels.is_floating_point() and not eval_labels.is_floating_point():
            largest = int(max(train_labels.max(), eval_labels.max())) + 1
            declared = getattr(self.tasks[task], "num_classes", None)
            if isinstance(declared, int) and declared > 0:
                if largest > declared:
                    raise LitzooError(f"LayerProbe task {task!r}: label {largest - 1} found but the DataModule says num_classes={declared}")
                return False, declared
            return False, largest
        raise LitzooError(f"LayerProbe task {task!r}: labels must be (B,) class indices or (B, C) multi-hot targets in both splits; "
                          f"got {tuple(train_labels.shape)} {train_labels.dtype} and {tuple(eval_labels.shape)} {eval_labels.dtype}")  # fmt: skip

    def _probe_one(self, task: str, feature: str, train: Tensor, train_labels: Tensor, evaluation: Tensor, eval_labels: Tensor,
                   num_classes: int, multilabel: bool) -> dict[str, Any]:  # fmt: skip
        metric_name = "mAP" if multilabel else "acc"
        targets = train_labels.float() if multilabel else train_labels.long()

        def score(head: LayerProbeHead, features: Tensor) -> float:
            with torch.no_grad():
                logits = head(features)
            return mean_average_precision(logits, eval_labels) if multilabel else top1_accuracy(logits, eval_labels.long())

        who = f"LayerProbe task {task!r} feature {feature!r}"
        head = train_layer_probe(train, targets, num_classes, multilabel, who=who, **self.train_kwargs)
        row: dict[str, Any] = {"task": task, "feature": feature, "metric": metric_name, "layers": train.shape[0],
                               "weighted": score(head, evaluation), "weights": head.featurizer.layer_weights().cpu().tolist()}  # fmt: skip
        if self.per_layer:
            singles = []
            for layer in range(train.shape[0]):
                single = train_layer_probe(train[layer : layer + 1], targets, num_classes, multilabel, who=who, **self.train_kwargs)
                singles.append(score(single, evaluation[layer : layer + 1]))
            best = int(np.nanargmax(singles)) if not all(math.isnan(s) for s in singles) else 0
            row.update(single_layers=singles, last=singles[-1], best=singles[best], best_layer=best)
        return row

    @staticmethod
    def flat_values(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
        """The logged keys of a table: ``probe/<task>/<feature>/...``."""
        values: dict[str, float] = {}
        for row in rows:
            prefix = f"probe/{row['task']}/{row['feature']}"
            values[f"{prefix}/{row['metric']}"] = row["weighted"]
            for i, w in enumerate(row["weights"]):
                values[f"{prefix}/layer_weight/{i}"] = w
            for i, s in enumerate(row.get("single_layers", ())):
                values[f"{prefix}/layer_{i}/{row['metric']}"] = s
        return values

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch
        if (epoch + 1) % self.every_n_epochs != 0:
            return
        rows = self.evaluate(pl_module, trainer)
        values = self.flat_values(rows)
        keys = list(values)
        synced = trainer.strategy.broadcast(torch.tensor([values[k] for k in keys], dtype=torch.float64, device=pl_module.device), src=0)
        values = {k: float(v) for k, v in zip(keys, synced.tolist(), strict=True)}
        self.history[epoch] = dict(values)
        for key, value in values.items():
            pl_module.log(key, value, on_step=False, on_epoch=True, prog_bar=False, sync_dist=False)
        folder = Path(trainer.log_dir or trainer.default_root_dir)  # log_dir broadcasts: every rank must ask for it
        if trainer.is_global_zero:
            paths = self.write_table(folder, rows, epoch)
            rank_zero_info(f"LayerProbe: epoch {epoch} table written to {paths[0]}\n{format_markdown(rows, epoch)}")

    def write_table(self, folder: str | Path, rows: Sequence[Mapping[str, Any]], epoch: int | None = None) -> tuple[Path, Path]:
        """Write ``<folder>/<name>.csv`` and ``.md`` atomically (temporary files renamed into place)."""
        csv_path, md_path = Path(folder) / f"{self.name}.csv", Path(folder) / f"{self.name}.md"
        with write_files_atomically(csv_path, md_path) as (staged_csv, staged_md):
            staged_csv.write_text(format_csv(rows, epoch), encoding="utf-8")
            staged_md.write_text(format_markdown(rows, epoch), encoding="utf-8")
        return csv_path, md_path

    # ------------------------------------------------------------------------------ resuming
    @override
    def state_dict(self) -> dict[str, Any]:
        return {"history": {e: dict(v) for e, v in self.history.items()}}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = {int(e): {str(k): float(x) for k, x in v.items()} for e, v in state_dict.get("history", {}).items()}


# ------------------------------------------------------------------------------------------ the table

CSV_COLUMNS = ("epoch", "task", "feature", "metric", "layers", "weighted", "last_layer", "best_layer", "best_layer_value", "layer_weights")


def _cells(row: Mapping[str, Any], epoch: int | None, number) -> list[str]:
    has_single = "single_layers" in row
    return ["" if epoch is None else str(epoch), row["task"], row["feature"], row["metric"], str(row["layers"]), number(row["weighted"]),
            number(row["last"]) if has_single else "", str(row["best_layer"]) if has_single else "",
            number(row["best"]) if has_single else "", " ".join(number(w) for w in row["weights"])]  # fmt: skip


def format_csv(rows: Sequence[Mapping[str, Any]], epoch: int | None = None) -> str:
    """The table as CSV (header :data:`CSV_COLUMNS`, full-precision numbers, layer weights space-separated)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        writer.writerow(_cells(row, epoch, repr))
    return buffer.getvalue()


def format_markdown(rows: Sequence[Mapping[str, Any]], epoch: int | None = None) -> str:
    """The table as markdown (4 decimals; weights 3)."""
    lines = ["| " + " | ".join(CSV_COLUMNS) + " |", "|" + "---|" * len(CSV_COLUMNS)]
    for row in rows:
        cells = _cells(row, epoch, lambda v: f"{v:.4f}")
        cells[-1] = " ".join(f"{w:.3f}" for w in row["weights"])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------ the protocol


def check_hidden_states_protocol(pl_module: nn.Module) -> None:
    """Refuse a module without ``forward_hidden_states(batch) -> dict[str, list[Tensor]]``."""
    if not callable(getattr(pl_module, PROTOCOL, None)):
        raise LitzooError(f"LayerProbe needs the model's {PROTOCOL}(batch) -> {{feature: [hidden states (B, T, D)]}}; "
                          f"{type(pl_module).__name__} has none")  # fmt: skip


def hidden_states_of(out: Any, feature: str, batch_size: int, owner: str) -> list[Tensor]:
    """The checked list of ``feature`` hidden states from a ``forward_hidden_states`` output."""
    where = f"LayerProbe: {owner}.{PROTOCOL}"
    if not isinstance(out, Mapping):
        raise LitzooError(f"{where} must return a dict of feature type -> list of hidden states, got {type(out).__name__}")
    if feature not in out:
        available = sorted(str(k) for k in out if not str(k).endswith("_mask"))
        raise LitzooError(f"{where} returned no {feature!r} hidden states; it has {available}")
    states = out[feature]
    if isinstance(states, Tensor):
        states = [states]
    if not isinstance(states, (list, tuple)) or not states or not all(isinstance(s, Tensor) for s in states):
        raise LitzooError(f"{where}: {feature!r} must be a non-empty list of tensors, got {type(states).__name__}")
    shape = states[0].shape
    if any(s.shape != shape for s in states) or len(shape) not in (2, 3) or shape[0] != batch_size:
        shapes = sorted({tuple(s.shape) for s in states})
        raise LitzooError(f"{where}: {feature!r} hidden states must all be (B, T, D) or (B, D) with B = {batch_size}; got shapes {shapes}")
    return list(states)
