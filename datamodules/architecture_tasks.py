"""A multi-task NAS benchmark made on a CPU: the same architectures labelled on several cheap digits tasks.

AIO-P (Mills et al., "AIO-P: Expanding Neural Performance Predictors Beyond Image Classification", AAAI 2023,
arXiv 2211.17228) pretrains a computation-graph (CG) predictor on architectures labelled on several
computer-vision tasks (ImageNet classification, detection, instance / semantic / panoptic segmentation,
pose estimation; metrics with different scales: top-1, mAP, mIoU, PQ, PCK) and transfers it to a task it
has not seen. Those labels cost GPU-days; this module makes stand-ins in minutes, labelling the SAME
networks as a benchmark of :mod:`litzoo.datamodules.architectures` (their specs come from its ``.specs.jsonl``):

- ``classification``: the benchmark's own label, digits validation top-1 ``accuracy`` (0..1);
- ``digit_value``: the network with ``num_classes=1`` trained with MSE to regress the digit's VALUE 0..9
  (targets standardised for training), metric = **negative RMSE in digit units** on the validation digits
  (higher is better, like every other metric here; typically −3 .. −0.5);
- ``noisy_digits``: classification of digits corrupted ONCE with seeded Gaussian pixel noise of standard
  deviation ``noise_sigma`` (in units of the normalised pixels, train and validation alike), metric =
  validation top-1 accuracy.

Each network trains as the benchmark's own labels were made (:func:`litzoo.framework.nas.train_and_evaluate`
settings: AdamW lr 3e-3, wd 1e-2, batch 64, the benchmark's epochs and seed, one thread), so labels are
deterministic on one machine. :func:`generate_task_labels` appends one JSONL record per (network, task) to
``<benchmark>.tasks.jsonl`` (``{"index", "family", "task", "value", "generation"}``), flushed and fsynced,
resumable (a killed run continues; ``limit`` labels only the first N records, so a long labelling can be
done in pieces). ``litzoo architecture-tasks --benchmark data/architectures/digits_v1.jsonl --limit 200``
runs it.

:class:`MultiTaskArchitectureDataModule` serves CG batches with a ``task`` id per graph: SOURCE tasks on one
set of architectures (train / val) and a held-out TARGET task on architectures never seen in training
(test; ``finetune_samples`` of them labelled for few-shot transfer), with AIO-P's per-task label
normalisation (:class:`TaskNormalizer`, the official ``MultiTaskNormalizer``).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from litzoo.datamodules.architectures import DigitsSplits, GraphSplitsDataModule
from litzoo.framework.data.jsonl import append_record, complete_records, truncate_file
from litzoo.framework.errors import LitzooError
from litzoo.framework.nas import (
    FAMILIES,
    TrainValSplits,
    build_network,
    fit_adamw,
    generate_architecture_benchmark,
    load_benchmark_specs,
    spec_from_dict,
    specs_path,
    train_and_evaluate,
)

BENCHMARK_TASK = "classification"
"""The task whose label is the benchmark's own ``accuracy``."""
EXTRA_TASKS: tuple[str, ...] = ("digit_value", "noisy_digits")
"""The tasks :func:`generate_task_labels` trains networks for."""
TASKS: tuple[str, ...] = (BENCHMARK_TASK, *EXTRA_TASKS)
TASKS_VERSION = 1
FLOPS_UNIT = 1e6
"""FLOPs enter the normaliser's FLOPs option in MFLOPs (the official caches' unit is not stated; see below)."""


def check_task(task: str) -> str:
    if task not in TASKS:
        raise LitzooError(f"unknown architecture task '{task}' (expected one of {', '.join(TASKS)})")
    return task


# --------------------------------------------------------------------------------------------- labelling
def noisy_splits(data: TrainValSplits, sigma: float, seed: int) -> TrainValSplits:
    """A copy of ``data`` whose train and val images carry one fixed draw of N(0, sigma²) pixel noise
    (seeded; the global RNG is untouched)."""
    generator = torch.Generator().manual_seed(seed)
    train_x = data.train_x + sigma * torch.randn(data.train_x.shape, generator=generator)
    val_x = data.val_x + sigma * torch.randn(data.val_x.shape, generator=generator)
    return TrainValSplits(train_x, data.train_y, val_x, data.val_y)


def train_value_regressor(model: nn.Module, data: TrainValSplits, epochs: int, seed: int, batch_size: int = 64,
                          lr: float = 3e-3, weight_decay: float = 1e-2) -> float:  # fmt: skip
    """Trains a one-output ``model`` to regress the digit value (MSE on ``(value − 4.5) / 2.9``, the labelling
    recipe :func:`litzoo.framework.nas.labelling.fit_adamw`) and returns ``−RMSE`` on the validation digits in digit units."""
    shift, scale = 4.5, 2.9
    target = (data.train_y.float() - shift) / scale
    fit_adamw(model, data.train_x, target, lambda out, y: nn.functional.mse_loss(out.view(-1), y), epochs, seed, batch_size, lr, weight_decay)
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(data.val_x[s : s + 256]).view(-1) for s in range(0, len(data.val_y), 256)]) * scale + shift
    return -float(torch.sqrt(torch.mean((pred - data.val_y.float()) ** 2)))


def label_task(spec: dict, task: str, data: TrainValSplits, noisy: TrainValSplits | None, epochs: int, seed: int) -> float:
    """The label of one network on one extra task (weights seeded by ``seed``). Call with one thread."""
    torch.manual_seed(seed)
    if task == "digit_value":
        return train_value_regressor(build_network(spec_from_dict(spec), num_classes=1), data, epochs, seed)
    if task == "noisy_digits":
        return train_and_evaluate(build_network(spec_from_dict(spec)), noisy, epochs, seed)
    raise LitzooError(f"task '{task}' is not generated (generated tasks: {', '.join(EXTRA_TASKS)})")


def tasks_path(benchmark: str | Path) -> Path:
    """``digits.jsonl -> digits.tasks.jsonl``: the extra-task labels of a benchmark."""
    path = Path(benchmark).expanduser()
    return path.with_name(path.name.removesuffix(".jsonl") + ".tasks.jsonl")


def generate_task_labels(
    benchmark: str | Path,
    tasks: Sequence[str] = EXTRA_TASKS,
    limit: int | None = None,
    out_path: str | Path | None = None,
    noise_sigma: float = 1.0,
    epochs: int | None = None,
    train_subset: int | None = None,
    progress: bool = True,
) -> Path:
    """Labels the networks of ``benchmark`` on the extra ``tasks`` into ``out_path`` (default
    ``<benchmark>.tasks.jsonl``), appending as it goes and resuming a killed run.

    Args:
        benchmark: a file of :func:`litzoo.framework.nas.generate_architecture_benchmark` (its specs sidecar is read).
        tasks: extra tasks to label (:data:`EXTRA_TASKS`).
        limit: label only the first ``limit`` records of the benchmark (``None``: all); rerun with a larger
            one to extend the file.
        out_path: the JSONL file written.
        noise_sigma: pixel noise of ``noisy_digits`` (normalised-pixel units).
        epochs: training epochs per network (``None``: the benchmark's).
        train_subset: train on the first N training digits (``None``: the benchmark's setting).
        progress: tqdm progress bar.
    """
    from tqdm.auto import tqdm

    tasks = list(tasks)
    for task in tasks:
        if task not in EXTRA_TASKS:
            raise LitzooError(f"task '{task}' cannot be generated (expected some of {', '.join(EXTRA_TASKS)})")
    if not tasks or len(set(tasks)) != len(tasks):
        raise LitzooError(f"tasks must be distinct and not empty, got {tasks}")
    if limit is not None and limit < 1 or noise_sigma < 0 or epochs is not None and epochs < 1:
        raise LitzooError(f"limit and epochs must be at least 1 and noise_sigma at least 0, got {limit}, {epochs}, {noise_sigma}")
    specs = load_benchmark_specs(benchmark)
    if not specs:
        raise LitzooError(f"architecture benchmark '{benchmark}' has no records to label")
    base = specs[0]["generation"]
    epochs = int(base["epochs"]) if epochs is None else epochs
    train_subset = base.get("train_subset") if train_subset is None else train_subset
    seed = int(base["seed"])
    generation = {"version": TASKS_VERSION, "benchmark_seed": seed, "epochs": epochs, "train_subset": train_subset,
                  "noise_sigma": noise_sigma}  # fmt: skip
    path = Path(out_path).expanduser() if out_path is not None else tasks_path(benchmark)
    path.parent.mkdir(parents=True, exist_ok=True)
    done: set[tuple[int, str]] = set()
    lines = complete_records(path, "architecture task labels")
    for _, record in lines:
        if record.get("generation") != generation:
            raise LitzooError(
                f"architecture task labels '{path}' were generated with {record.get('generation')}, not {generation}: use another out_path or the same settings"
            )
        done.add((int(record["index"]), str(record["task"])))
    truncate_file(path, lines[-1][0] if lines else 0)  # drop a partial last line
    chosen = specs if limit is None else specs[:limit]
    todo = [(r, task) for r in chosen for task in tasks if (int(r["index"]), task) not in done]
    if not todo:
        return path
    data = DigitsSplits(train_subset=train_subset)
    noisy = noisy_splits(data, noise_sigma, seed=seed * 7919 + 17) if "noisy_digits" in tasks else None
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with path.open("ab") as handle, tqdm(total=len(todo), desc=f"tasks -> {path.name}", disable=not progress) as bar:
            for record, task in todo:
                index = int(record["index"])
                # the benchmark's own per-record seed: same initial weights as its classification label
                value = label_task(record["spec"], task, data, noisy, epochs, seed=seed * 1_000_003 + index)
                append_record(handle, {"index": index, "family": record["family"], "task": task, "value": value, "generation": generation})
                bar.set_postfix(task=task, value=f"{value:.3f}")
                bar.update(1)
    finally:
        torch.set_num_threads(threads)
    return path


def load_task_labels(benchmark: str | Path, path: str | Path | None = None) -> dict[int, dict[str, float]]:
    """``{benchmark record index: {task: value}}`` for every task of the benchmark: ``classification`` from
    the benchmark itself and the extra tasks found in the tasks file (records missing a task are kept with
    the tasks they have)."""
    from litzoo.framework.data.jsonl import read_jsonl
    from litzoo.framework.graph import load_graphs_jsonl

    labels: dict[int, dict[str, float]] = {}
    graphs = load_graphs_jsonl(benchmark)
    specs = load_benchmark_specs(benchmark)
    if len(specs) != len(graphs):
        raise LitzooError(f"architecture benchmark '{benchmark}': {len(graphs)} graphs but {len(specs)} specs")
    for spec, graph in zip(specs, graphs, strict=True):
        labels[int(spec["index"])] = {BENCHMARK_TASK: float(graph.label["accuracy"])}
    for number, record in enumerate(read_jsonl(path or tasks_path(benchmark), what="architecture task labels"), start=1):
        try:
            labels[int(record["index"])][check_task(str(record["task"]))] = float(record["value"])
        except (KeyError, ValueError, TypeError):
            raise LitzooError(
                f"architecture task labels '{path or tasks_path(benchmark)}' line {number}: not a label of a benchmark record"
            ) from None
    return labels


def synthetic_task_benchmark(path: str | Path, per_family: int = 6, seed: int = 0, noise: float = 0.01) -> Path:
    """Writes a SYNTHETIC multi-task benchmark (no training; for tests and demos): ``per_family`` untrained
    networks of each family as a graph file, its specs sidecar and a tasks file, in the formats of
    :func:`litzoo.framework.nas.generate_architecture_benchmark` and :func:`generate_task_labels`. With ``a`` =
    :func:`litzoo.datamodules.architectures.synthetic_accuracy`: ``classification = a``,
    ``digit_value = −(3 − 2.5 a) + noise`` and ``noisy_digits = 0.8 a² + noise`` (related tasks on
    different scales, as AIO-P's are)."""
    import random

    from litzoo.datamodules.architectures import synthetic_accuracy
    from litzoo.framework.graph import save_graphs_jsonl
    from litzoo.framework.nas import network_graph, sample_spec

    path = Path(path).expanduser()
    generator = torch.Generator().manual_seed(seed)
    graphs, specs, tasks = [], [], []
    generation = {"version": 1, "seed": seed, "epochs": 1, "families": list(FAMILIES), "train_subset": None, "synthetic": True}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for i in range(per_family):
            for f, family in enumerate(FAMILIES):
                index = i * len(FAMILIES) + f
                spec = sample_spec(family, random.Random(f"litzoo-aio-synthetic:{seed}:{family}:{i}"))
                graph = network_graph(build_network(spec), None, family)
                a = synthetic_accuracy(graph, noise, generator)
                graph.label = {"accuracy": a, "flops": float(graph.total_flops), "params": float(graph.total_params)}
                graphs.append(graph)
                specs.append({"index": index, "family": family, "spec": spec.to_dict(), "generation": generation})
                noisy = [float(noise * torch.randn((), generator=generator)) for _ in range(2)]
                values = {"digit_value": -(3.0 - 2.5 * a) + noisy[0], "noisy_digits": 0.8 * a * a + noisy[1]}
                tasks += [
                    {"index": index, "family": family, "task": t, "value": v, "generation": {"synthetic": True}} for t, v in values.items()
                ]
    save_graphs_jsonl(path, graphs)
    specs_path(path).write_text("".join(json.dumps(r) + "\n" for r in specs))
    tasks_path(path).write_text("".join(json.dumps(r) + "\n" for r in tasks))
    return path


# --------------------------------------------------------------------------------------------- normaliser
class TaskNormalizer:
    """AIO-P's per-task label scaling (official ``MultiTaskNormalizer``): with ``flops=True`` a label first
    becomes ``y / (log10(F + 1) + 1)`` (``F``: FLOPs, here in MFLOPs), then it is standardised with the mean
    and the POPULATION standard deviation (``numpy.std``, ddof 0) of the labels it was fitted on.
    :meth:`inverse` undoes both. A constant label set gets std 1 (the official code would divide by 0)."""

    def __init__(self, flops: bool = False) -> None:
        self.flops = flops
        self.mean, self.std = 0.0, 1.0

    @staticmethod
    def flops_divisor(flops: Tensor | float) -> Tensor | float:
        if isinstance(flops, Tensor):
            return torch.log10(flops + 1) + 1
        return math.log10(flops + 1) + 1

    def _quotient(self, values: Tensor, flops: Tensor | None) -> Tensor:
        if not self.flops:
            return values
        if flops is None:
            raise LitzooError("the FLOPs label option needs the FLOPs of every architecture")
        return values / self.flops_divisor(flops)

    def fit(self, values: Sequence[float] | Tensor, flops: Sequence[float] | Tensor | None = None) -> TaskNormalizer:
        values = torch.as_tensor(values, dtype=torch.float64).view(-1)
        if values.numel() == 0:
            raise LitzooError("cannot fit a label normaliser on no labels")
        q = self._quotient(values, None if flops is None else torch.as_tensor(flops, dtype=torch.float64).view(-1))
        self.mean = float(q.mean())
        std = float(q.std(unbiased=False))
        self.std = std if std > 0 else 1.0
        return self

    def divisor(self, flops: Tensor | float | None) -> Tensor | float:
        """What a label is divided by before standardising (1 without the FLOPs option)."""
        return self.flops_divisor(flops) if self.flops else 1.0

    def transform(self, values: Tensor, flops: Tensor | None = None) -> Tensor:
        values = torch.as_tensor(values, dtype=torch.float64)
        return (self._quotient(values, None if flops is None else torch.as_tensor(flops, dtype=torch.float64)) - self.mean) / self.std

    def inverse(self, values: Tensor, flops: Tensor | None = None) -> Tensor:
        values = torch.as_tensor(values, dtype=torch.float64) * self.std + self.mean
        if self.flops:
            if flops is None:
                raise LitzooError("the FLOPs label option needs the FLOPs of every architecture")
            values = values * self.flops_divisor(torch.as_tensor(flops, dtype=torch.float64))
        return values


# --------------------------------------------------------------------------------------------- data module
class MultiTaskArchitectureDataModule(GraphSplitsDataModule):
    """Computation graphs labelled on several tasks, for AIO-P-style task transfer (arXiv 2211.17228).

    Architectures (records of the benchmark that carry every needed task) are shuffled (seeded) and split:
    a ``test_fraction`` share is held out (never seen in training, on any task); of the rest a
    ``val_fraction`` share validates. Items: train / val = (architecture, source task) pairs; test = the
    held-out architectures on the TARGET task and on every source task; finetune = ``finetune_samples``
    held-out architectures labelled on the target task (removed from test). Each item is
    ``graph.to_pyg()`` plus ``y`` (normalised label), ``y_raw``, ``task`` (id: source tasks
    ``0..S-1`` in order, the target ``S``), ``flops``, ``family`` and the normaliser fields ``norm_mean``,
    ``norm_std``, ``norm_div``: a label is ``(y · norm_std + norm_mean) · norm_div``.

    Label scaling (AIO-P's ``-tar_norm``): one :class:`TaskNormalizer` per source task fitted on its
    training labels; the target task's is fitted on the few-shot labels, or — with fewer than 2 few-shot
    samples, as the official script does with no fine-tuning data — on the held-out test labels themselves
    (an oracle for the scale only: it changes MAE, never a ranking).

    Args:
        path: the benchmark JSONL (its ``.specs.jsonl`` and ``.tasks.jsonl`` beside it). ``None``: a small
            default benchmark (``generate_per_family`` networks per family, ``generate_epochs`` epochs on the
            first ``generate_train_subset`` training digits) is generated once into ``root`` with its task
            labels, atomically, and reused.
        source_tasks: tasks to pretrain on, in order (the first trains the base predictor).
        target_task: the held-out task.
        test_fraction: share of architectures held out for the target task.
        val_fraction: share of the remaining architectures for validation.
        finetune_samples: labelled held-out architectures for few-shot transfer.
        flops_normalization: AIO-P's FLOPs option (label / (log10(MFLOPs + 1) + 1) before standardising).
        batch_size: graphs per batch.
        seed: seed of the splits (and of the default benchmark).
        root, generate_per_family, generate_epochs, generate_train_subset: the default benchmark.
        num_workers: DataLoader workers.
    """

    def __init__(
        self,
        path: str | None = None,
        source_tasks: Sequence[str] = ("classification", "noisy_digits"),
        target_task: str = "digit_value",
        test_fraction: float = 0.3,
        val_fraction: float = 0.15,
        finetune_samples: int = 0,
        flops_normalization: bool = False,
        batch_size: int = 32,
        seed: int = 0,
        root: str = "data/architectures",
        generate_per_family: int = 6,
        generate_epochs: int = 2,
        generate_train_subset: int = 256,
        num_workers: int = 0,
    ) -> None:
        source_tasks = [check_task(t) for t in source_tasks]
        check_task(target_task)
        if not source_tasks or len(set(source_tasks)) != len(source_tasks):
            raise LitzooError(f"source_tasks must be distinct and not empty, got {source_tasks}")
        if target_task in source_tasks:
            raise LitzooError(f"target_task '{target_task}' is also a source task: the target must be unseen")
        for name, value in (("test_fraction", test_fraction), ("val_fraction", val_fraction)):
            if not 0 < value < 1:
                raise LitzooError(f"{name} must be in (0, 1), got {value}")
        if (
            batch_size < 1
            or finetune_samples < 0
            or num_workers < 0
            or min(generate_per_family, generate_epochs, generate_train_subset) < 1
        ):
            raise LitzooError(
                "batch_size, generate_per_family, generate_epochs and generate_train_subset must be at least 1, finetune_samples "
                f"and num_workers at least 0; got {batch_size}, {generate_per_family}, {generate_epochs}, {generate_train_subset}, "
                f"{finetune_samples}, {num_workers}"
            )
        super().__init__(batch_size, num_workers)
        self.save_hyperparameters()
        self.path = path
        self.source_tasks, self.target_task = source_tasks, target_task
        self.task_names = [*source_tasks, target_task]
        self.normalizers: dict[str, TaskNormalizer] = {}
        self.architectures: dict[str, list[int]] = {}

    # ---- data ---------------------------------------------------------------------------------
    def default_path(self) -> Path:
        hp = self.hparams
        name = f"digits-tasks-seed{hp.seed}-pf{hp.generate_per_family}-e{hp.generate_epochs}-n{hp.generate_train_subset}.jsonl"
        return Path(hp.root).expanduser() / name

    def prepare_data(self) -> None:
        if self.path is None:
            self._generate_default()

    def _generate_default(self) -> Path:
        """Generates the default benchmark and its task labels in a staging folder beside it, then renames
        them into place (tasks and specs first, the graph file last): readers never see a partial set."""
        target = self.default_path()
        if target.is_file() and tasks_path(target).is_file():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            hp = self.hparams
            staged = generate_architecture_benchmark(
                staging / target.name, DigitsSplits(), hp.generate_per_family, FAMILIES, hp.seed, hp.generate_epochs,
                train_subset=hp.generate_train_subset, latency_repeats=2, progress=False,
            )  # fmt: skip
            generate_task_labels(staged, EXTRA_TASKS, progress=False)
            os.replace(tasks_path(staged), tasks_path(target))
            os.replace(specs_path(staged), specs_path(target))
            os.replace(staged, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target

    def benchmark_path(self) -> Path:
        if self.path is None:
            return self._generate_default()
        path = Path(self.path).expanduser()
        for needed, what in (
            (path, "labelled computation graphs"),
            (specs_path(path), "architecture specs"),
            (tasks_path(path), "task labels"),
        ):
            if not needed.is_file():
                raise LitzooError(
                    f"multi-task architecture benchmark: expected {what} at '{needed}' (make the task labels with "
                    f"`litzoo architecture-tasks --benchmark {path}`)"
                )
        return path

    def build_datasets(self, split: str) -> dict[str, list]:
        """Every split at once: a seeded test / val / train split of the architectures labelled on every task,
        the source tasks' labels normalised on the training split, the target's on the few-shot split."""
        from litzoo.framework.graph import load_graphs_jsonl

        hp = self.hparams
        path = self.benchmark_path()
        graphs = load_graphs_jsonl(path)
        specs = load_benchmark_specs(path)
        labels = load_task_labels(path)
        if len(graphs) != len(specs):
            raise LitzooError(f"multi-task architecture benchmark '{path}': {len(graphs)} graphs but {len(specs)} specs")
        keep = [
            (int(s["index"]), g) for s, g in zip(specs, graphs, strict=True) if all(t in labels[int(s["index"])] for t in self.task_names)
        ]
        if not keep:
            raise LitzooError(f"multi-task architecture benchmark '{path}': no architecture is labelled on all of {self.task_names}")
        generator = torch.Generator().manual_seed(hp.seed)
        keep = [keep[i] for i in torch.randperm(len(keep), generator=generator).tolist()]
        n_test = round(hp.test_fraction * len(keep))
        n_val = round(hp.val_fraction * (len(keep) - n_test))
        if n_test <= hp.finetune_samples or n_val < 1 or len(keep) - n_test - n_val < 2:
            raise LitzooError(
                f"multi-task architecture benchmark '{path}': {len(keep)} labelled architectures are too few for test_fraction "
                f"{hp.test_fraction}, val_fraction {hp.val_fraction} and finetune_samples {hp.finetune_samples}"
            )
        test, rest = keep[:n_test], keep[n_test:]
        splits = {"finetune": test[: hp.finetune_samples], "test": test[hp.finetune_samples :], "val": rest[:n_val], "train": rest[n_val:]}
        self.architectures = {split: [i for i, _ in items] for split, items in splits.items()}

        def fit(task: str, items: list) -> TaskNormalizer:
            return TaskNormalizer(hp.flops_normalization).fit(
                [labels[i][task] for i, _ in items], [g.label["flops"] / FLOPS_UNIT for _, g in items]
            )

        self.normalizers = {task: fit(task, splits["train"]) for task in self.source_tasks}
        norm_pool = splits["finetune"] if len(splits["finetune"]) >= 2 else splits["test"]
        self.normalizers[self.target_task] = fit(self.target_task, norm_pool)
        target_id = len(self.source_tasks)
        return {
            "train": [self._item(g, labels[i], t) for i, g in splits["train"] for t in range(target_id)],
            "val": [self._item(g, labels[i], t) for i, g in splits["val"] for t in range(target_id)],
            "test": [self._item(g, labels[i], t) for i, g in splits["test"] for t in range(target_id + 1)],
            "finetune": [self._item(g, labels[i], target_id) for i, g in splits["finetune"]],
        }

    def _item(self, graph, labels: dict[str, float], task_id: int):
        task = self.task_names[task_id]
        norm = self.normalizers[task]
        flops = graph.label["flops"] / FLOPS_UNIT
        data = graph.to_pyg()
        data.y_raw = torch.tensor([labels[task]], dtype=torch.float32)
        data.y = norm.transform(data.y_raw.double(), torch.tensor([flops], dtype=torch.float64)).float()
        data.task = torch.tensor([task_id])
        data.flops = torch.tensor([flops], dtype=torch.float32)
        data.norm_mean = torch.tensor([norm.mean], dtype=torch.float32)
        data.norm_std = torch.tensor([norm.std], dtype=torch.float32)
        data.norm_div = torch.tensor([float(norm.divisor(flops))], dtype=torch.float32)
        data.family = graph.family
        return data

    # ---- loaders ------------------------------------------------------------------------------
    def finetune_dataloader(self, shuffle: bool = True, batch_size: int | None = None):
        """The few-shot split: ``finetune_samples`` held-out architectures labelled on the target task."""
        if self.hparams.finetune_samples < 1:
            raise LitzooError("finetune_samples is 0: there is no few-shot split")
        return self._loader("finetune", shuffle=shuffle, batch_size=batch_size)

