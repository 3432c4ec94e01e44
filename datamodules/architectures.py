"""A NAS benchmark made on a CPU: tiny CNNs of four families trained on the digits, as labelled computation graphs.

Computation-graph (CG) performance predictors — the transferable predictor of Han et al. (SDM 2023,
arXiv 2302.10835), GENNAPE (Mills et al., AAAI 2023, arXiv 2211.17226) and AIO-P (arXiv 2211.17228) —
learn "architecture → accuracy" from the graphs of labelled networks of some families and are judged on a
family held out of training, zero-shot or after fine-tuning on a few labelled graphs of it. The papers
label NAS-Bench-101/201/301 and OFA networks trained on CIFAR/ImageNet; this module makes the same kind of
data in minutes:

- :func:`generate_architecture_benchmark` samples networks of the families of :mod:`litzoo.framework.nas_spaces`,
  trains each briefly on scikit-learn's digits (fixed seed and budget, single-threaded, deterministic),
  and appends one JSONL record per network: its computation graph (:func:`litzoo.framework.graph.computation_graph`)
  labelled with validation ``accuracy``, ``flops`` (``torch.utils.flop_counter``, batch 1; a multiply-add is
  2 FLOPs), ``params`` and CPU ``latency_ms`` (median batch-1 forward, 1 thread), and its family; the
  network's spec goes to a sidecar ``<name>.specs.jsonl``, line for line (a CG dict holds no extra keys).
  A killed run resumes where it stopped. ``litzoo architectures --out ... --per-family 50`` runs it.
- :class:`ArchitectureDataModule` reads such a file, splits it by family (training families vs held-out
  families), standardises the target with training-split statistics and serves torch_geometric batches;
  ``finetune_samples`` draws a few labelled graphs of the held-out families for few-shot transfer.
- :class:`SyntheticArchitectureDataModule` labels graphs with a SYNTHETIC oracle (no training) for fast tests.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from litzoo.framework.data.jsonl import append_record, complete_records, truncate_file
from litzoo.framework.errors import LitzooError
from litzoo.framework.nas_spaces import FAMILIES, ArchSpec, build_network, check_family, sample_spec
from litzoo.framework.profiling import count_flops, count_parameters, measure_latency

TARGETS = ("accuracy", "flops", "params", "latency_ms")
"""Labels of every record of a generated benchmark (the synthetic data module has accuracy, flops, params)."""

BENCHMARK_VERSION = 1
INPUT_SHAPE = (1, 1, 8, 8)


# --------------------------------------------------------------------------------------------- labelling
class DigitsSplits:
    """The digits as tensors for labelling: the stratified split of :class:`litzoo.datamodules.digits.DigitsDataModule`
    with ``val_fraction=0.25, test_fraction=0.05`` (train ≈ 1258 images, val = 450 images, normalised with
    training statistics). ``train_subset`` keeps the first N training images (tests)."""

    def __init__(self, train_subset: int | None = None, split_seed: int = 0) -> None:
        from litzoo.datamodules.digits import DigitsDataModule

        data = DigitsDataModule(val_fraction=0.25, test_fraction=0.05, split_seed=split_seed)
        data.setup()
        train, val = data.datasets["train"], data.datasets["val"]
        self.train_x, self.train_y = train.tensors["image"], train.tensors["label"]
        self.val_x, self.val_y = val.tensors["image"], val.tensors["label"]
        if train_subset is not None:
            self.train_x, self.train_y = self.train_x[:train_subset], self.train_y[:train_subset]


def train_and_evaluate(
    model: nn.Module,
    data: DigitsSplits,
    epochs: int,
    seed: int,
    batch_size: int = 64,
    lr: float = 3e-3,
    weight_decay: float = 1e-2,
) -> float:
    """Trains ``model`` with AdamW (cross-entropy, ``epochs`` passes, batches shuffled by a generator seeded
    with ``seed``) and returns its top-1 validation accuracy (torchmetrics). Deterministic on CPU when the
    caller runs it with one thread."""
    from torchmetrics.classification import MulticlassAccuracy

    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    model.train()
    n = len(data.train_y)
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, batch_size):
            rows = order[start : start + batch_size]
            if len(rows) < 2:  # BatchNorm needs two samples
                continue
            loss = nn.functional.cross_entropy(model(data.train_x[rows]), data.train_y[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
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
    data: DigitsSplits,
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


# --------------------------------------------------------------------------------------------- records
def specs_path(out_path: str | Path) -> Path:
    """The sidecar of a benchmark file: ``digits.jsonl -> digits.specs.jsonl``, line k describing graph k as
    ``{"index", "family", "spec", "generation"}`` (a :class:`ComputationGraph` dict holds no extra keys)."""
    path = Path(out_path).expanduser()
    return path.with_name(path.name.removesuffix(".jsonl") + ".specs.jsonl")


def network_graph(model: nn.Module, labels: dict[str, float] | None, family: str):
    """The computation graph of a network of the families (input ``(1, 1, 8, 8)``), labelled."""
    from litzoo.framework.graph import computation_graph

    return computation_graph(model, torch.zeros(INPUT_SHAPE), label=labels, family=family)


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
        per_family: networks per family (raising it later extends the file).
        families: families of :mod:`litzoo.framework.nas_spaces` to sample.
        seed: benchmark seed (specs, initial weights, batch order).
        epochs: AdamW epochs per network (batch 64, lr 3e-3, weight decay 1e-2).
        train_subset: train on the first N training digits only (tests).
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
    data = DigitsSplits(train_subset=train_subset)
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


def architectures_command(argv: Sequence[str]) -> None:
    """``litzoo architectures --out data/architectures/digits.jsonl --per-family 50 --seed 0``: generate or
    resume a benchmark (see :func:`generate_architecture_benchmark`) and print a per-family summary."""
    parser = argparse.ArgumentParser(prog="litzoo architectures", description=generate_architecture_benchmark.__doc__.splitlines()[0])
    parser.add_argument("--out", default="data/architectures/digits.jsonl", help="JSONL file to write or resume")
    parser.add_argument("--per-family", type=int, default=50, help="networks per family")
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES), help="families to sample")
    parser.add_argument("--seed", type=int, default=0, help="benchmark seed")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs per network")
    parser.add_argument("--train-subset", type=int, default=None, help="train on the first N digits only")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(list(argv))
    start = time.perf_counter()
    path = generate_architecture_benchmark(
        args.out, args.per_family, args.families, args.seed, args.epochs, args.train_subset, progress=not args.no_progress
    )
    print(f"{path}: generated or resumed in {time.perf_counter() - start:.1f} s")
    print(format_benchmark_summary(path))


def benchmark_summary(path: str | Path) -> dict[str, dict[str, float]]:
    """Per family: count, accuracy min/mean/max, FLOPs min/max, and the Spearman correlation of FLOPs and
    accuracy (how far the accuracy label is from a FLOPs proxy)."""
    from scipy.stats import spearmanr

    from litzoo.framework.data.jsonl import read_jsonl

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
    rows = ["family      n   acc min  mean   max   FLOPs min..max        params max  SRCC(FLOPs, acc)"]
    for family, s in benchmark_summary(path).items():
        rows.append(
            f"{family:<10} {s['count']:>3}   {s['acc_min']:.3f} {s['acc_mean']:.3f} {s['acc_max']:.3f}   "
            f"{s['flops_min'] / 1e3:>7.0f}K..{s['flops_max'] / 1e6:>5.2f}M   {s['params_max']:>10.0f}  {s['spearman_flops_acc']:+.3f}"
        )
    return "\n".join(rows)


def load_benchmark_specs(path: str | Path) -> list[dict]:
    """The sidecar records of a benchmark (``{"index", "family", "spec", "generation"}``, one per graph, in
    the graph file's order); ``spec_from_dict(r["spec"])`` rebuilds a network."""
    from litzoo.framework.data.jsonl import read_jsonl

    return read_jsonl(specs_path(path), what="architecture specs")


# --------------------------------------------------------------------------------------------- synthetic oracle
def synthetic_accuracy(graph, noise: float = 0.0, generator: torch.Generator | None = None) -> float:
    """SYNTHETIC accuracy of a computation graph, for tests of predictors that must not wait for training.

    With ``depth`` = number of conv / depthwise-conv / linear nodes, ``width`` = mean output channels of the
    conv nodes, ``skips`` = number of ``add`` nodes, ``concats`` = number of ``concat`` nodes and ``F`` =
    ``graph.total_flops``::

        score = 1.2 tanh(depth / 8) + 0.35 log2(width / 8) + 0.25 sqrt(skips) + 0.2 concats - 0.12 (log10 F - 6)^2
        accuracy = clip(sigmoid(score - 1) + noise * N(0, 1), 0, 1)

    so it grows with depth, width and skip connections and peaks at about 1 MFLOP: learnable from the graph,
    and not a monotone function of FLOPs.
    """
    counts = graph.op_counts()
    depth = counts.get("conv", 0) + counts.get("depthwise_conv", 0) + counts.get("linear", 0)
    widths = [n.output_shape[1] for n in graph.nodes if n.op in ("conv", "depthwise_conv") and len(n.output_shape) > 1]
    width = sum(widths) / len(widths) if widths else 8.0
    flops = max(graph.total_flops, 1)
    score = (
        1.2 * math.tanh(depth / 8)
        + 0.35 * math.log2(width / 8)
        + 0.25 * math.sqrt(counts.get("add", 0))
        + 0.2 * counts.get("concat", 0)
        - 0.12 * (math.log10(flops) - 6) ** 2
    )
    value = 1.0 / (1.0 + math.exp(-(score - 1.0)))
    if noise:
        value += noise * float(torch.randn((), generator=generator))
    return min(1.0, max(0.0, value))


def synthetic_graphs(per_family: int, families: Sequence[str] = FAMILIES, seed: int = 0, noise: float = 0.01) -> list:
    """``per_family`` untrained networks of each family as computation graphs labelled SYNTHETIC:
    ``{"accuracy": synthetic_accuracy(...), "flops", "params"}`` (seeded; the global RNG is left untouched)."""
    graphs = []
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for i in range(per_family):
            for family in families:
                spec = sample_spec(check_family(family), random.Random(f"litzoo-nas-synthetic:{seed}:{family}:{i}"))
                graph = network_graph(build_network(spec), None, family)
                graph.label = {
                    "accuracy": synthetic_accuracy(graph, noise, generator),
                    "flops": float(graph.total_flops),
                    "params": float(graph.total_params),
                }
                graphs.append(graph)
    return graphs


# --------------------------------------------------------------------------------------------- data modules
class GraphSplitsDataModule(L.LightningDataModule):
    """The loaders of a DataModule whose ``setup`` fills ``self.datasets`` (split name → list of
    ``torch_geometric`` Data) and that has ``batch_size`` and ``hparams.seed`` / ``hparams.num_workers``:
    train (shuffled, seeded), val, test, predict (= test) and few-shot (``"finetune"``) batches."""

    datasets: dict[str, list]
    batch_size: int

    def _loader(self, split: str, shuffle: bool, batch_size: int | None = None):
        from torch_geometric.loader import DataLoader

        if not self.datasets:
            self.setup()
        generator = torch.Generator().manual_seed(self.hparams.seed) if shuffle else None
        return DataLoader(self.datasets[split], batch_size=batch_size or self.batch_size, shuffle=shuffle,
                          num_workers=self.hparams.num_workers, generator=generator)  # fmt: skip

    def train_dataloader(self):
        return self._loader("train", shuffle=True)

    def val_dataloader(self):
        return self._loader("val", shuffle=False)

    def test_dataloader(self):
        return self._loader("test", shuffle=False)

    def predict_dataloader(self):
        return self._loader("test", shuffle=False)


class ArchitectureDataModule(GraphSplitsDataModule):
    """Labelled computation graphs split by family, for CG performance predictors (arXiv 2302.10835,
    arXiv 2211.17226): train on some families, test transfer on a held-out one.

    Reads a benchmark written by :func:`generate_architecture_benchmark` (any
    :func:`litzoo.framework.graph.save_graphs_jsonl` file of labelled graphs with families works). Graphs of
    ``train_families`` are shuffled (seeded) into train / val by ``val_fraction``; graphs of
    ``test_families`` form the test split. With ``finetune_samples = N``, N seeded-random test-family graphs
    move from the test split to a separate few-shot split (:meth:`finetune_dataloader`), so fine-tuning and
    evaluation never share a graph. Each item is ``graph.to_pyg(target)`` (``x``, ``edge_index``, ``y``)
    plus ``y_raw`` (the unstandardised label) and ``family``; with ``normalize_target`` ``y`` is standardised
    with the train split's mean and std (``target_mean``, ``target_std``; :meth:`denormalize` inverts it).

    Args:
        path: the benchmark JSONL. ``None``: a default benchmark (``generate_per_family`` networks per family,
            ``generate_epochs`` epochs, seed ``seed``) is generated once into ``root`` (atomically, safe for
            concurrent processes) and reused. A path that does not exist is an error (nothing is generated).
        target: the label to predict (``accuracy``, ``flops``, ``params``, ``latency_ms``).
        train_families: families to train on (``None``: every family of the file not in ``test_families``).
        test_families: held-out families (the test and few-shot splits).
        val_fraction: share of the training-family graphs held out for validation.
        batch_size: graphs per batch.
        normalize_target: standardise ``y`` with train-split statistics.
        finetune_samples: labelled held-out-family graphs in the few-shot split (0: none).
        seed: seed of the splits (and of the default benchmark).
        root: folder of the default benchmark.
        generate_per_family: networks per family of the default benchmark.
        generate_epochs: training epochs per network of the default benchmark.
        num_workers: DataLoader worker processes.
    """

    def __init__(
        self,
        path: str | None = None,
        target: str = "accuracy",
        train_families: Sequence[str] | None = None,
        test_families: Sequence[str] = ("inception",),
        val_fraction: float = 0.2,
        batch_size: int = 32,
        normalize_target: bool = True,
        finetune_samples: int = 0,
        seed: int = 0,
        root: str = "data/architectures",
        generate_per_family: int = 8,
        generate_epochs: int = 3,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if not 0 < val_fraction < 1:
            raise LitzooError(f"val_fraction must be in (0, 1), got {val_fraction}")
        if batch_size < 1 or finetune_samples < 0 or num_workers < 0 or generate_per_family < 1 or generate_epochs < 1:
            raise LitzooError(
                "batch_size, generate_per_family and generate_epochs must be at least 1, finetune_samples and num_workers at least 0; got "
                f"{batch_size}, {generate_per_family}, {generate_epochs}, {finetune_samples}, {num_workers}"
            )
        test_families = [check_family(f) for f in test_families]
        if not test_families:
            raise LitzooError("test_families must name at least one held-out family")
        if train_families is not None:
            train_families = [check_family(f) for f in train_families]
            shared = sorted(set(train_families) & set(test_families))
            if shared:
                raise LitzooError(f"families {shared} are in both train_families and test_families: a held-out family must be unseen")
        self.save_hyperparameters()
        self.path = path
        self.target = target
        self.train_families = train_families
        self.test_families = test_families
        self.batch_size = batch_size
        self.graphs: dict[str, list] = {}
        self.datasets: dict[str, list] = {}
        self.target_mean, self.target_std = 0.0, 1.0

    # ---- data ---------------------------------------------------------------------------------
    def default_path(self) -> Path:
        hp = self.hparams
        return Path(hp.root).expanduser() / f"digits-seed{hp.seed}-pf{hp.generate_per_family}-e{hp.generate_epochs}.jsonl"

    def prepare_data(self) -> None:
        if self.path is None:
            self._generate_default()

    def _generate_default(self) -> Path:
        """Generates the default benchmark into a temporary folder beside it and renames it into place
        (the specs sidecar first, the graph file last), so that readers never see a partial file."""
        target = self.default_path()
        if target.is_file():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            hp = self.hparams
            staged = generate_architecture_benchmark(
                staging / target.name, hp.generate_per_family, FAMILIES, hp.seed, hp.generate_epochs, progress=False
            )
            os.replace(specs_path(staged), specs_path(target))
            os.replace(staged, target)
        finally:
            import shutil

            shutil.rmtree(staging, ignore_errors=True)
        return target

    def load_graphs(self) -> list:
        """All graphs of the benchmark (labelled, with families)."""
        from litzoo.framework.graph import load_graphs_jsonl

        if self.path is None:
            return load_graphs_jsonl(self._generate_default())
        path = Path(self.path).expanduser()
        if not path.is_file():
            reason = "it is not a file" if path.exists() else "it does not exist"
            raise LitzooError(
                f"architecture benchmark '{path}' cannot be read: {reason} (expected a JSONL file of labelled computation graphs; "
                f"make one with `litzoo architectures --out {path}`)"
            )
        return load_graphs_jsonl(path)

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        hp = self.hparams
        source = self.path or "the default benchmark"
        graphs = self.load_graphs()
        by_family: dict[str, list] = {}
        for number, graph in enumerate(graphs, start=1):
            if graph.family is None or not graph.label:
                raise LitzooError(f"architecture benchmark {source}: graph {number} has no family or no labels")
            if self.target not in graph.label:
                raise LitzooError(
                    f"architecture benchmark {source}: unknown target '{self.target}' (graph {number} has labels {', '.join(sorted(graph.label))})"
                )
            by_family.setdefault(graph.family, []).append(graph)
        train_families = self.train_families or [f for f in by_family if f not in self.test_families]
        for family in [*train_families, *self.test_families]:
            if family not in by_family:
                raise LitzooError(
                    f"architecture benchmark {source} has no graphs of family '{family}' (it has {', '.join(sorted(by_family))})"
                )
        if not train_families:
            raise LitzooError(f"architecture benchmark {source}: no training family is left once {self.test_families} are held out")
        generator = torch.Generator().manual_seed(hp.seed)

        def shuffled(items: list) -> list:
            return [items[i] for i in torch.randperm(len(items), generator=generator).tolist()]

        train_pool = shuffled([g for f in train_families for g in by_family[f]])
        test_pool = shuffled([g for f in self.test_families for g in by_family[f]])
        n_val = round(hp.val_fraction * len(train_pool))
        if n_val < 1 or n_val >= len(train_pool):
            raise LitzooError(
                f"val_fraction {hp.val_fraction} of {len(train_pool)} training-family graphs leaves an empty train or val split"
            )
        if hp.finetune_samples >= len(test_pool):
            raise LitzooError(
                f"finetune_samples {hp.finetune_samples} must be below the {len(test_pool)} graphs of the held-out families {self.test_families}"
            )
        self.graphs = {
            "train": train_pool[n_val:],
            "val": train_pool[:n_val],
            "finetune": test_pool[: hp.finetune_samples],
            "test": test_pool[hp.finetune_samples :],
        }
        values = torch.tensor([g.label[self.target] for g in self.graphs["train"]], dtype=torch.float64)
        if hp.normalize_target:
            self.target_mean = float(values.mean())
            self.target_std = float(values.std()) if len(values) > 1 and float(values.std()) > 0 else 1.0
        self.datasets = {split: [self._item(g) for g in graphs] for split, graphs in self.graphs.items()}

    def _item(self, graph):
        data = graph.to_pyg(self.target)
        data.y_raw = data.y.clone()
        data.y = (data.y - self.target_mean) / self.target_std
        data.family = graph.family
        return data

    def denormalize(self, y: Tensor | float) -> Tensor | float:
        """A standardised target (a prediction) back in the label's units."""
        return y * self.target_std + self.target_mean

    # ---- loaders ------------------------------------------------------------------------------
    def finetune_dataloader(self, shuffle: bool = True):
        """The few-shot split: ``finetune_samples`` labelled graphs of the held-out families."""
        return self._loader("finetune", shuffle=shuffle)


class SyntheticArchitectureDataModule(ArchitectureDataModule):
    """:class:`ArchitectureDataModule` over SYNTHETIC labels: ``per_family`` untrained networks of each family,
    labelled by :func:`synthetic_accuracy` (a documented function of depth, width, skips, concats and FLOPs,
    plus ``noise``), built in memory in seconds. For predictor tests and demos only; real labels come from
    :func:`generate_architecture_benchmark`.

    Args:
        per_family: networks per family.
        noise: standard deviation of the Gaussian noise added to the synthetic accuracy.
        other arguments: as :class:`ArchitectureDataModule` (targets: ``accuracy``, ``flops``, ``params``).
    """

    def __init__(
        self,
        per_family: int = 16,
        noise: float = 0.01,
        target: str = "accuracy",
        train_families: Sequence[str] | None = None,
        test_families: Sequence[str] = ("inception",),
        val_fraction: float = 0.2,
        batch_size: int = 32,
        normalize_target: bool = True,
        finetune_samples: int = 0,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        if per_family < 1 or noise < 0:
            raise LitzooError(f"per_family must be at least 1 and noise at least 0, got {per_family} and {noise}")
        super().__init__(None, target, train_families, test_families, val_fraction, batch_size, normalize_target, finetune_samples, seed)
        self.hparams.num_workers = num_workers
        self.save_hyperparameters()

    def prepare_data(self) -> None:
        pass

    def load_graphs(self) -> list:
        hp = self.hparams
        families = [f for f in FAMILIES if self.train_families is None or f in self.train_families or f in self.test_families]
        return synthetic_graphs(hp.per_family, families, hp.seed, hp.noise)
