"""Labelling networks of the search spaces: train a spec, measure it, and write a resumable benchmark file.

Computation-graph (CG) performance predictors — the transferable predictor of Han et al. (SDM 2023,
arXiv 2302.10835), GENNAPE (Mills et al., AAAI 2023, arXiv 2211.17226) and AIO-P (arXiv 2211.17228) —
learn "architecture → accuracy" from the graphs of labelled networks. The papers label NAS-Bench-101/201/301
and OFA networks trained on CIFAR/ImageNet; this module makes the same kind of data in minutes:

- :func:`label_network` builds a spec of :mod:`litzoo.framework.nas.spaces` (weights seeded), trains it
  briefly (:func:`train_and_evaluate`: AdamW, seeded batch order, deterministic with one thread) and measures
  validation ``accuracy``, ``flops`` (``torch.utils.flop_counter``, batch 1; a multiply-add is 2 FLOPs),
  ``params`` and CPU ``latency_ms`` (median batch-1 forward);
- :func:`generate_architecture_benchmark` does that for ``per_family`` networks of each family and appends one
  JSONL record per network: its computation graph (:func:`network_graph`) labelled and with its family; the
  network's spec goes to a sidecar ``<name>.specs.jsonl``, line for line (a CG dict holds no extra keys).
  A killed run resumes where it stopped.

The data is injected: every function takes a :class:`TrainValSplits` (image and label tensors of a train
and a validation split). The digits one, ``litzoo.datamodules.architectures.DigitsSplits``, is built next to
the DataModules; ``litzoo architectures`` is the command.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from litzoo.framework.data.jsonl import append_record, complete_records, read_jsonl, truncate_file
from litzoo.framework.errors import LitzooError
from litzoo.framework.nas.spaces import FAMILIES, INPUT_SHAPE, ArchSpec, build_network, check_family, sample_spec
from litzoo.framework.profiling import count_flops, count_parameters, measure_latency

TARGETS = ("accuracy", "flops", "params", "latency_ms")
"""Labels of every record of a generated benchmark."""

BENCHMARK_VERSION = 1


# --------------------------------------------------------------------------------------------- labelling
@dataclass
class TrainValSplits:
    """The tensors a network is labelled on: ``train_x`` / ``val_x`` images ``(N, C, H, W)`` (normalised) and
    ``train_y`` / ``val_y`` integer class labels ``(N,)``."""

    train_x: Tensor
    train_y: Tensor
    val_x: Tensor
    val_y: Tensor

    def with_train_subset(self, train_subset: int | None) -> TrainValSplits:
        """The same splits with only the first ``train_subset`` training images (``None``: all of them)."""
        if train_subset is None:
            return self
        return TrainValSplits(self.train_x[:train_subset], self.train_y[:train_subset], self.val_x, self.val_y)


def fit_adamw(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    epochs: int,
    seed: int,
    batch_size: int = 64,
    lr: float = 3e-3,
    weight_decay: float = 1e-2,
) -> None:
    """The labelling recipe: ``epochs`` passes of AdamW over ``(inputs, targets)`` in batches shuffled by a
    generator seeded with ``seed``, minimising ``loss_fn(model(x), y)``. Deterministic on CPU when the caller
    runs it with one thread."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    model.train()
    n = len(targets)
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, batch_size):
            rows = order[start : start + batch_size]
            if len(rows) < 2:  # BatchNorm needs two samples
                continue
            loss = loss_fn(model(inputs[rows]), targets[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()


def train_and_evaluate(
    model: nn.Module,
    data: TrainValSplits,
    epochs: int,
    seed: int,
    batch_size: int = 64,
    lr: float = 3e-3,
    weight_decay: float = 1e-2,
) -> float:
    """Trains ``model`` with :func:`fit_adamw` (cross-entropy) and returns its top-1 validation accuracy
    (torchmetrics)."""
    from torchmetrics.classification import MulticlassAccuracy

    fit_adamw(model, data.train_x, data.train_y, nn.functional.cross_entropy, epochs, seed, batch_size, lr, weight_decay)
    metric = MulticlassAccuracy(num_classes=10, average="micro")
    model.eval()
    with torch.no_grad():
        for start in range(0, len(data.val_y), 256):
            metric.update(model(data.val_x[start : start + 256]), data.val_y[start : start + 256])
    return float(metric.compute())


def record_spec(family: str, index: int, seed: int) -> ArchSpec:
    """The spec of record ``index`` (of ``family``) in a benchmark of ``seed``: drawn from its own
    ``random.Random``, so it depends on nothing else (a resumed run draws the same networks)."""
    return sample_spec(family, random.Random(f"litzoo-nas:{seed}:{family}:{index}"))


def label_network(
    spec: ArchSpec,
    data: TrainValSplits,
    epochs: int,
    seed: int,
    latency_repeats: int = 10,
) -> tuple[nn.Module, dict[str, float]]:
    """Builds ``spec`` (weights seeded by ``seed``), trains and measures it: ``(trained model in eval mode,
    {"accuracy", "flops", "params", "latency_ms"})``. Call it with ``torch.set_num_threads(1)``."""
    torch.manual_seed(seed)
    model = build_network(spec)
    example = torch.zeros(INPUT_SHAPE)
    labels: dict[str, float] = {
        "flops": float(count_flops(model, example)),
        "params": float(count_parameters(model)),
    }
    labels["accuracy"] = train_and_evaluate(model, data, epochs, seed)
    labels["latency_ms"] = 1000.0 * measure_latency(model, torch.randn(INPUT_SHAPE), repeats=latency_repeats, warmup=2)
    model.eval()
    return model, labels


def network_graph(model: nn.Module, labels: dict[str, float] | None, family: str):
    """The computation graph of a network of the families (input :data:`INPUT_SHAPE`), labelled."""
    from litzoo.framework.graph import computation_graph

    return computation_graph(model, torch.zeros(INPUT_SHAPE), label=labels, family=family)


# --------------------------------------------------------------------------------------------- records
def specs_path(out_path: str | Path) -> Path:
    """The sidecar of a benchmark file: ``digits.jsonl -> digits.specs.jsonl``, line k describing graph k as
    ``{"index", "family", "spec", "generation"}`` (a :class:`ComputationGraph` dict holds no extra keys)."""
    path = Path(out_path).expanduser()
    return path.with_name(path.name.removesuffix(".jsonl") + ".specs.jsonl")


def _read_done(path: Path, generation: dict[str, Any]) -> set[int]:
    """Indices of the records complete in both the graph file and its specs sidecar. Both files are cut back
    to those records (a run killed mid-record leaves a partial line or one file a line ahead); a malformed
    line elsewhere, or records of another generation setting, raise LitzooError."""
    sidecar = specs_path(path)
    graphs = complete_records(path, "architecture benchmark")
    specs = complete_records(sidecar, "architecture specs")
    if graphs and not sidecar.exists():
        raise LitzooError(
            f"architecture benchmark '{path}' has no specs file '{sidecar}' beside it: delete it to regenerate, or use another --out"
        )
    count = min(len(graphs), len(specs))
    for _, record in specs[:count]:
        if record.get("generation") != generation:
            raise LitzooError(
                f"architecture benchmark '{path}' was generated with {record.get('generation')}, not {generation}: use another --out or the same settings"
            )
    truncate_file(path, graphs[count - 1][0] if count else 0)
    truncate_file(sidecar, specs[count - 1][0] if count else 0)
    return {int(record["index"]) for _, record in specs[:count]}


def generate_architecture_benchmark(
    out_path: str | Path,
    data: TrainValSplits,
    per_family: int = 50,
    families: Sequence[str] = FAMILIES,
    seed: int = 0,
    epochs: int = 3,
    train_subset: int | None = None,
    latency_repeats: int = 10,
    progress: bool = True,
) -> Path:
    """Generates (or resumes) a benchmark of ``per_family`` trained networks of each family into ``out_path``.

    Record ``index = i * len(families) + f`` is network ``i`` of ``families[f]`` (families interleave, so a
    stopped run is balanced); its spec and weights depend only on ``(seed, family, i)``. Records are appended
    as they are made, each flushed and fsynced; a rerun skips the indices already in the file (dropping a
    partial last line), so a killed run resumes and ends with the file one uninterrupted run writes (up to
    ``latency_ms``, a wall-clock measure). Training is single-threaded and seeded: same machine, same labels.

    Args:
        out_path: the JSONL file (created with its folder).
        data: the train / validation tensors every network is trained and measured on (the digits:
            ``litzoo.datamodules.architectures.DigitsSplits()``).
        per_family: networks per family (raising it later extends the file).
        families: families of :mod:`litzoo.framework.nas.spaces` to sample.
        seed: benchmark seed (specs, initial weights, batch order).
        epochs: AdamW epochs per network (batch 64, lr 3e-3, weight decay 1e-2).
        train_subset: train on the first N training images of ``data`` only (tests); recorded with the
            generation settings.
        latency_repeats: batch-1 forwards timed for ``latency_ms`` (median).
        progress: show a tqdm progress bar.
    """
    from tqdm.auto import tqdm

    families = [check_family(f) for f in families]
    if len(set(families)) != len(families):
        raise LitzooError(f"families must be distinct, got {families}")
    if per_family < 1 or epochs < 1:
        raise LitzooError(f"per_family and epochs must be at least 1, got {per_family} and {epochs}")
    path = Path(out_path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    generation = {"version": BENCHMARK_VERSION, "seed": seed, "epochs": epochs, "families": families, "train_subset": train_subset}
    done = _read_done(path, generation)
    todo = [i * len(families) + f for i in range(per_family) for f in range(len(families))]
    todo = [index for index in todo if index not in done]
    if not todo:
        return path
    data = data.with_train_subset(train_subset)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with (
            path.open("ab") as graph_file,
            specs_path(path).open("ab") as spec_file,
            tqdm(total=len(todo), desc=f"architectures -> {path.name}", disable=not progress) as bar,
        ):
            for index in todo:
                i, f = divmod(index, len(families))
                family = families[f]
                spec = record_spec(family, i, seed)
                model, labels = label_network(spec, data, epochs, seed=seed * 1_000_003 + index, latency_repeats=latency_repeats)
                # graph first, then its spec: a kill between the two leaves the graph file one line ahead,
                # which the next run cuts back
                append_record(graph_file, network_graph(model, labels, family).to_dict())
                append_record(spec_file, {"index": index, "family": family, "spec": spec.to_dict(), "generation": generation})
                bar.set_postfix(family=family, acc=f"{labels['accuracy']:.3f}")
                bar.update(1)
    finally:
        torch.set_num_threads(threads)
    return path


def load_benchmark_specs(path: str | Path) -> list[dict]:
    """The sidecar records of a benchmark (``{"index", "family", "spec", "generation"}``, one per graph, in
    the graph file's order); ``spec_from_dict(r["spec"])`` rebuilds a network."""
    return read_jsonl(specs_path(path), what="architecture specs")


# --------------------------------------------------------------------------------------------- summary
def benchmark_summary(path: str | Path) -> dict[str, dict[str, float]]:
    """Per family: count, accuracy min/mean/max, FLOPs min/max, and the Spearman correlation of FLOPs and
    accuracy (how far the accuracy label is from a FLOPs proxy)."""
    from scipy.stats import spearmanr

    by_family: dict[str, list[dict]] = {}
    for record in read_jsonl(path, what="architecture benchmark"):
        by_family.setdefault(record["family"], []).append(record["label"])
    summary = {}
    for family, labels in by_family.items():
        acc = [lab["accuracy"] for lab in labels]
        flops = [lab["flops"] for lab in labels]
        rho = float(spearmanr(flops, acc).statistic) if len(acc) > 2 else float("nan")
        summary[family] = {
            "count": len(acc),
            "acc_min": min(acc),
            "acc_mean": sum(acc) / len(acc),
            "acc_max": max(acc),
            "flops_min": min(flops),
            "flops_max": max(flops),
            "params_max": max(lab["params"] for lab in labels),
            "spearman_flops_acc": rho,
        }
    return summary


def format_benchmark_summary(path: str | Path) -> str:
    """:func:`benchmark_summary` as a table, one row per family."""
    rows = ["family      n   acc min  mean   max   FLOPs min..max        params max  SRCC(FLOPs, acc)"]
    for family, s in benchmark_summary(path).items():
        rho = s["spearman_flops_acc"]  # undefined below 3 networks (or with constant FLOPs or accuracies)
        rows.append(
            f"{family:<10} {s['count']:>3}   {s['acc_min']:.3f} {s['acc_mean']:.3f} {s['acc_max']:.3f}   "
            f"{s['flops_min'] / 1e3:>7.0f}K..{s['flops_max'] / 1e6:>5.2f}M   {s['params_max']:>10.0f}  {f'{rho:+.3f}' if math.isfinite(rho) else '—'}"
        )
    return "\n".join(rows)
