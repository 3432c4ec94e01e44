"""Robustness curves of any classifier under FGSM / PGD attacks on chosen input modalities, and the critical ε*.

Li, Ma, Qu, Huang, Metze, "Audio-Visual Event Recognition through the Lens of Adversary", ICASSP 2021 (arXiv 2011.07430;
no official code found) probe audio-visual classifiers (early / middle / late fusion) with adversarial perturbations of
size ε under L_p norms on the audio input, the visual input or both, and compare how much ε it takes to "deactivate" the
model. This callback measures that at test time for any LightningModule: for every attack × norm × modality set × ε of
a grid it attacks each test batch (:mod:`litzoo.framework.adversarial`, where the attack rules and their sources are)
and scores the module's predictions on the attacked inputs → one robustness curve (metric vs ε) per attack, norm and
modality set, and its critical ε*.

What was verified and what was chosen:

* Only the paper's abstract and introduction could be read here; the grids, norms (the paper also uses L1, not built
  here) and its exact ε* rule could not be checked. **ε*** here is the smallest ε at which the metric falls to
  ``fraction`` (default one half) of its clean value, linearly interpolated between grid points on the curve that starts
  at ``(0, clean)`` (:func:`litzoo.framework.adversarial.critical_epsilon`; ``null`` when the grid never gets there).
* **Metric**: top-1 accuracy (torchmetrics ``MulticlassAccuracy``, micro) for class-index targets; macro mAP
  (``MultilabelAveragePrecision``, as AudioSet and the paper) for multi-hot targets. The attacked loss is softmax CE or
  BCE-with-logits accordingly (``task="auto"`` decides from the target: integer ``(B,)`` or 0/1 float ``(B, C)``).
* **Budget over several modalities**: each attacked modality has its own ε-ball (see the framework module).
* **ε grid**: one grid for every modality, in the units of the batch tensors (after the DataModule's normalisation);
  ``bounds`` clamps an input to its valid range. The default grid is ours.

**Where it runs**: on the test batches Lightning already gives (``on_test_batch_end``; the first ``max_batches``), the
curves computed at ``on_test_epoch_end``. So it attacks exactly what ``trainer.test`` scores, on the device and under the
precision context of the run, and under DDP each rank attacks its own shard; the torchmetrics objects synchronise
across ranks at ``compute``, so every rank gets the same curves, and rank 0 writes them. The attack runs in eval mode,
with gradients w.r.t. the inputs only (parameters' ``.grad`` untouched, train flags restored), out of Lightning's
``inference_mode``, and under a forked RNG: the random starts come from generators seeded by
``derive_seed(seed, rank, dataloader, batch, setting)``, so a run's random streams are the same with or without the
callback and the curves are reproducible.

**Forward protocol** (checked in ``setup``): ``method`` names the module's method that returns logits ``(B, C)``
(default ``forward``); with ``input_keys=None`` it is called with the batch dict (``forward(batch)``), else with the
listed batch entries as positional arguments (``input_keys=["video", "audio"]`` → ``forward(batch["video"],
batch["audio"])``, MBT's ``forward``; ``["image"]`` for an image classifier). The labels are ``batch[label_key]``; a
module whose logits score another target (MBT with ``target_class`` turns multi-hot labels into class indices) names
that method in ``target_method`` (``target_method="target"``: ``targets = module.target(batch["label"])``). Batches must
be dicts. A missing method or batch key is one :class:`~litzoo.framework.errors.LitzooError` line.

**Outputs** (rank 0), in ``dirpath`` (default ``<trainer.log_dir>/adversarial_robustness``), written whole (temporary
file, then rename):

* ``test_step<S>.csv``: ``attack,norm,modalities,epsilon,metric,value`` — one row per curve point, ε = 0 rows are the clean
  value (modalities joined by ``+``);
* ``test_step<S>.json``: ``{"metric", "clean", "fraction", "num_samples", "curves": [{"attack", "norm", "modalities",
  "epsilons", "values", "critical_epsilon"}]}``;
* every logger: scalars ``adversarial/<attack>_<norm>/<a+b>/<metric>`` with the ε index as step (0 = clean, i + 1 = grid
  point i), and ``adversarial/<attack>_<norm>/<a+b>/critical_eps`` (step = global step) where ε* is reached;
  TensorBoard also gets the table as text (``adversarial/table``).

The callback keeps no training state (it acts only at test time), so it has nothing to checkpoint.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.classification import MulticlassAccuracy, MultilabelAveragePrecision
from typing_extensions import override

from litzoo.framework.adversarial import ATTACKS, NORMS, attack, classification_loss, critical_epsilon
from litzoo.framework.data.staging import write_files_atomically
from litzoo.framework.errors import LitzooError
from litzoo.framework.profiling import eval_mode
from litzoo.framework.random_state import derive_seed

Task = Literal["auto", "multiclass", "multilabel"]
DEFAULT_EPSILONS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5)


class AdversarialRobustness(Callback):
    """FGSM / PGD robustness curves and critical ε* of any classifier at test time (see the module docstring).

    Args:
        epsilons: the ε grid (increasing, ≥ 0), in the units of the batch tensors.
        attacks: ``"fgsm"`` and / or ``"pgd"``.
        norms: ``"linf"`` and / or ``"l2"`` (per sample, per modality).
        modalities: the sets of batch keys attacked together, e.g. ``[["audio"], ["video"], ["audio", "video"]]``.
        steps: PGD steps.
        alpha_fraction: PGD step size as a fraction of ε; ``None`` for Madry et al.'s ``2.5 / steps``.
        random_init: PGD starts from a random point of the ε-ball.
        bounds: optional valid range ``[low, high]`` per batch key (attacked inputs are clamped to it).
        method: the module's method returning logits ``(B, C)``.
        input_keys: ``None`` to call ``method(batch)``; else the batch keys passed to it as positional arguments.
        target_method: ``None`` to score against ``batch[label_key]``; else a module method mapping those labels to targets.
        label_key: the batch key of the labels.
        task: ``"multiclass"`` (class indices, CE, accuracy), ``"multilabel"`` (multi-hot, BCE, macro mAP) or ``"auto"``.
        fraction: ε* is where the metric reaches ``fraction × clean``.
        max_batches: attack only the first this many test batches (per rank); ``None`` for all.
        seed: seeds the PGD random starts.
        dirpath: output folder; ``None`` for ``<trainer.log_dir>/adversarial_robustness``.
    """

    def __init__(
        self,
        epsilons: Sequence[float] = DEFAULT_EPSILONS,
        attacks: Sequence[str] = ("pgd",),
        norms: Sequence[str] = ("linf",),
        modalities: Sequence[Sequence[str]] = (("audio",), ("video",), ("audio", "video")),
        steps: int = 10,
        alpha_fraction: float | None = None,
        random_init: bool = True,
        bounds: dict[str, Sequence[float]] | None = None,
        method: str = "forward",
        input_keys: Sequence[str] | None = None,
        target_method: str | None = None,
        label_key: str = "label",
        task: Task = "auto",
        fraction: float = 0.5,
        max_batches: int | None = None,
        seed: int = 0,
        dirpath: str | None = None,
    ) -> None:
        super().__init__()
        name = "AdversarialRobustness"
        epsilons = [float(e) for e in epsilons]
        if not epsilons or any(not math.isfinite(e) or e < 0 for e in epsilons) or any(b <= a for a, b in pairwise(epsilons)):
            raise ValueError(f"{name}: epsilons must be a non-empty, strictly increasing list of finite numbers >= 0, got {epsilons}")
        attacks, norms = [attacks] if isinstance(attacks, str) else list(attacks), [norms] if isinstance(norms, str) else list(norms)
        if not attacks or any(a not in ATTACKS for a in attacks) or len(set(attacks)) != len(attacks):
            raise ValueError(f"{name}: attacks must be distinct names among {ATTACKS}, got {attacks}")
        if not norms or any(n not in NORMS for n in norms) or len(set(norms)) != len(norms):
            raise ValueError(f"{name}: norms must be distinct names among {NORMS}, got {norms}")
        sets = [tuple([m] if isinstance(m, str) else m) for m in modalities]
        if not sets or any(not s or len(set(s)) != len(s) or not all(isinstance(k, str) and k for k in s) for s in sets):
            raise ValueError(f"{name}: modalities must be a non-empty list of non-empty lists of distinct batch keys, got {modalities!r}")
        if len(set(sets)) != len(sets):
            raise ValueError(f"{name}: modalities lists a set twice: {modalities!r}")
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"{name}: steps must be a positive integer, got {steps!r}")
        if alpha_fraction is not None and (not math.isfinite(alpha_fraction) or alpha_fraction <= 0):
            raise ValueError(f"{name}: alpha_fraction must be a positive number or None, got {alpha_fraction!r}")
        checked_bounds: dict[str, tuple[float, float]] = {}
        for key, pair in (bounds or {}).items():
            if len(pair) != 2 or not all(math.isfinite(float(v)) for v in pair) or not float(pair[0]) < float(pair[1]):
                raise ValueError(f"{name}: bounds[{key!r}] must be [low, high] with finite low < high, got {pair!r}")
            checked_bounds[key] = (float(pair[0]), float(pair[1]))
        if not isinstance(method, str) or not method:
            raise ValueError(f"{name}: method must name a method of the module, got {method!r}")
        if input_keys is not None:
            input_keys = [input_keys] if isinstance(input_keys, str) else list(input_keys)
            if not input_keys:
                raise ValueError(f"{name}: input_keys must be None or a non-empty list of batch keys")
        if task not in ("auto", "multiclass", "multilabel"):
            raise ValueError(f"{name}: task must be 'auto', 'multiclass' or 'multilabel', got {task!r}")
        if not 0 < fraction < 1:
            raise ValueError(f"{name}: fraction must lie in (0, 1), got {fraction!r}")
        if max_batches is not None and (not isinstance(max_batches, int) or max_batches < 1):
            raise ValueError(f"{name}: max_batches must be a positive integer or None, got {max_batches!r}")
        self.epsilons, self.attacks, self.norms, self.modalities = epsilons, attacks, norms, sets
        self.steps, self.alpha_fraction, self.random_init, self.bounds = steps, alpha_fraction, random_init, checked_bounds
        self.method, self.input_keys, self.target_method, self.label_key = method, input_keys, target_method, label_key
        self.task, self.fraction, self.max_batches, self.seed, self.dirpath = task, fraction, max_batches, seed, dirpath
        #: the last results (the JSON document) and the files written last, for the user and the tests
        self.results: dict[str, Any] | None = None
        self.last_files: list[Path] = []
        self._metrics: dict[tuple, Metric] = {}
        self._task: str | None = None
        self._batches = 0
        self._samples = 0

    def settings(self) -> list[tuple[str, str, tuple[str, ...]]]:
        """The curves, in order: ``(attack, norm, modalities)``."""
        return [(a, n, m) for a in self.attacks for n in self.norms for m in self.modalities]

    # ------------------------------------------------------------------------------------------------ protocol
    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "test":
            return
        for attribute, role in ((self.method, "method"), (self.target_method, "target_method")):
            if attribute is not None and not callable(getattr(pl_module, attribute, None)):
                raise LitzooError(f"AdversarialRobustness: {type(pl_module).__name__} has no method {attribute!r} (the callback's {role}); "
                                  "it needs a method returning logits (B, C) from the batch dict or from the batch entries named in input_keys")  # fmt: skip

    def _forward(self, pl_module: L.LightningModule, trainer: L.Trainer) -> Callable[[dict[str, Any]], Tensor]:
        function = getattr(pl_module, self.method)
        precision = trainer.precision_plugin

        def forward(batch: dict[str, Any]) -> Tensor:
            with precision.forward_context():
                out = function(batch) if self.input_keys is None else function(*[batch[key] for key in self.input_keys])
            if not isinstance(out, Tensor) or out.dim() != 2:
                shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
                raise LitzooError(f"AdversarialRobustness: {type(pl_module).__name__}.{self.method} must return logits (B, C), got {shape}")
            return out.float()

        return forward

    def _targets(self, pl_module: L.LightningModule, batch: Any) -> Tensor:
        if not isinstance(batch, dict):
            raise LitzooError(f"AdversarialRobustness needs dict batches (with {self.label_key!r} and the attacked keys), got {type(batch).__name__}")
        needed = {self.label_key, *(k for s in self.modalities for k in s), *(self.input_keys or [])}
        missing = sorted(needed - set(batch))
        if missing:
            raise LitzooError(f"AdversarialRobustness: the test batches have no {', '.join(map(repr, missing))} "
                              f"(their keys: {', '.join(map(str, batch))})")  # fmt: skip
        labels = batch[self.label_key]
        return getattr(pl_module, self.target_method)(labels) if self.target_method is not None else labels

    def _task_of(self, logits: Tensor, target: Tensor) -> str:
        task = self.task
        if task == "auto":
            task = "multiclass" if not target.is_floating_point() and target.dim() == 1 else "multilabel"
        if task == "multiclass" and (target.dim() != 1 or target.is_floating_point()):
            raise LitzooError(f"AdversarialRobustness: multiclass targets must be class indices (B,), got {tuple(target.shape)} {target.dtype}")
        if task == "multilabel" and target.shape != logits.shape:
            raise LitzooError(f"AdversarialRobustness: multi-label targets must match the logits {tuple(logits.shape)}, got {tuple(target.shape)}")
        return task

    def _new_metric(self, num_classes: int, device: torch.device) -> Metric:
        if self._task == "multiclass":
            return MulticlassAccuracy(num_classes=num_classes, average="micro").to(device)
        return MultilabelAveragePrecision(num_labels=num_classes, average="macro").to(device)

    def _update(self, key: tuple, logits: Tensor, target: Tensor) -> None:
        if key not in self._metrics:
            self._metrics[key] = self._new_metric(logits.shape[1], logits.device)
        self._metrics[key].update(logits.detach(), target if self._task == "multiclass" else target.round().long())

    # ------------------------------------------------------------------------------------------------ hooks
    @override
    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._metrics, self._task, self._batches, self._samples = {}, None, 0, 0

    @override
    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int,
                          dataloader_idx: int = 0) -> None:  # fmt: skip
        if self.max_batches is not None and self._batches >= self.max_batches:
            return
        self._batches += 1
        target = self._targets(pl_module, batch)
        forward = self._forward(pl_module, trainer)
        devices = [pl_module.device] if pl_module.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.no_grad(), eval_mode(pl_module):
            clean_logits = forward(batch)
            task = self._task_of(clean_logits, target)
            if self._task is not None and task != self._task:
                raise LitzooError(f"AdversarialRobustness: a test batch's targets are {task} but earlier ones were {self._task}")
            self._task = task
            self._update(("clean",), clean_logits, target)
            self._samples += len(clean_logits)
            loss = classification_loss
            for index, (name, norm, keys) in enumerate(self.settings()):
                for e_index, eps in enumerate(self.epsilons):
                    generator = torch.Generator().manual_seed(derive_seed(self.seed, trainer.global_rank, dataloader_idx, batch_idx, index, e_index))
                    options: dict[str, Any] = {"loss_fn": loss, "bounds": self.bounds or None, "model": pl_module}
                    if name == "pgd":
                        alpha = None if self.alpha_fraction is None else self.alpha_fraction * eps
                        options.update(steps=self.steps, alpha=alpha, random_init=self.random_init, generator=generator)
                    attacked = attack(name, forward, batch, target, keys, eps, norm, **options)
                    self._update((name, norm, keys, e_index), forward(attacked), target)

    @override
    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._metrics:
            return
        metric_name = "accuracy" if self._task == "multiclass" else "mAP"
        computed = {key: float(metric.compute()) for key, metric in self._metrics.items()}  # synchronised across ranks
        bad = [key for key, value in computed.items() if not math.isfinite(value)]
        if bad:
            raise LitzooError(f"AdversarialRobustness: the {metric_name} under {bad[0]} is not finite (a class without positives for mAP?)")
        clean = computed[("clean",)]
        curves = []
        for name, norm, keys in self.settings():
            values = [computed[(name, norm, keys, i)] for i in range(len(self.epsilons))]
            curves.append({
                "attack": name, "norm": norm, "modalities": list(keys), "epsilons": list(self.epsilons), "values": values,
                "critical_epsilon": critical_epsilon(self.epsilons, values, clean, self.fraction),
            })  # fmt: skip
        self.results = {"metric": metric_name, "clean": clean, "fraction": self.fraction, "num_samples": self._samples, "curves": curves}
        folder = Path(self.dirpath) if self.dirpath is not None else Path(trainer.log_dir or trainer.default_root_dir) / "adversarial_robustness"
        if trainer.is_global_zero:
            self._write(trainer, folder)
        self._metrics = {}

    # ------------------------------------------------------------------------------------------------ output
    def _write(self, trainer: L.Trainer, folder: Path) -> None:
        results = self.results
        assert results is not None
        metric_name = results["metric"]
        name = f"test_step{trainer.global_step}"
        table, document = folder / f"{name}.csv", folder / f"{name}.json"
        with write_files_atomically(table, document) as (staged_table, staged_document):
            staged_table.write_text(robustness_csv(results), encoding="utf-8")
            staged_document.write_text(json.dumps(results, indent=1, allow_nan=False) + "\n", encoding="utf-8")
        for logger in trainer.loggers:
            for curve in results["curves"]:
                tag = f"adversarial/{curve['attack']}_{curve['norm']}/{'+'.join(curve['modalities'])}"
                for step, value in enumerate([results["clean"], *curve["values"]]):
                    logger.log_metrics({f"{tag}/{metric_name}": value}, step=step)
                if curve["critical_epsilon"] is not None:
                    logger.log_metrics({f"{tag}/critical_eps": curve["critical_epsilon"]}, step=trainer.global_step)
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_text("adversarial/table", robustness_markdown(results), trainer.global_step)
            logger.save()
        self.last_files = [table, document]
        summary = ", ".join(f"{c['attack']}-{c['norm']} on {'+'.join(c['modalities'])}: ε*={c['critical_epsilon']}" for c in results["curves"])
        rank_zero_info(f"AdversarialRobustness: clean {metric_name} {results['clean']:.4f}; {summary}; table in {table}")


def robustness_csv(results: dict[str, Any]) -> str:
    """The CSV table ``attack,norm,modalities,epsilon,metric,value`` of a results document (ε = 0 rows: the clean value)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["attack", "norm", "modalities", "epsilon", "metric", "value"])
    for curve in results["curves"]:
        keys = "+".join(curve["modalities"])
        if not curve["epsilons"] or curve["epsilons"][0] > 0:
            writer.writerow([curve["attack"], curve["norm"], keys, repr(0.0), results["metric"], repr(results["clean"])])
        for eps, value in zip(curve["epsilons"], curve["values"], strict=True):
            writer.writerow([curve["attack"], curve["norm"], keys, repr(float(eps)), results["metric"], repr(float(value))])
    return buffer.getvalue()


def robustness_markdown(results: dict[str, Any]) -> str:
    """A markdown table for TensorBoard's text view: one row per curve, one column per ε, and ε*."""
    epsilons = results["curves"][0]["epsilons"] if results["curves"] else []
    head = "| attack | norm | modalities | " + " | ".join(f"ε={e:g}" for e in epsilons) + " | ε* |"
    rule = "|---" * (4 + len(epsilons)) + "|"
    rows = []
    for curve in results["curves"]:
        star = "—" if curve["critical_epsilon"] is None else f"{curve['critical_epsilon']:.4g}"
        cells = " | ".join(f"{v:.4f}" for v in curve["values"])
        rows.append(f"| {curve['attack']} | {curve['norm']} | {'+'.join(curve['modalities'])} | {cells} | {star} |")
    summary = f"clean {results['metric']} {results['clean']:.4f} over {results['num_samples']} samples; ε* at {results['fraction']:g} × clean"
    return "\n".join([summary, "", head, rule, *rows])
