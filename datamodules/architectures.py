"""A NAS benchmark made on a CPU: tiny CNNs of four families trained on the digits, as labelled computation graphs.

Computation-graph (CG) performance predictors — the transferable predictor of Han et al. (SDM 2023,
arXiv 2302.10835), GENNAPE (Mills et al., AAAI 2023, arXiv 2211.17226) and AIO-P (arXiv 2211.17228) —
learn "architecture → accuracy" from the graphs of labelled networks of some families and are judged on a
family held out of training, zero-shot or after fine-tuning on a few labelled graphs of it. The papers
label NAS-Bench-101/201/301 and OFA networks trained on CIFAR/ImageNet; this module makes the same kind of
data in minutes:

- :class:`DigitsSplits` is the data the benchmark's networks are labelled on: scikit-learn's digits as train /
  validation tensors. :func:`litzoo.framework.nas.generate_architecture_benchmark` samples networks of the families
  of :mod:`litzoo.framework.nas.spaces`, trains each briefly on them (fixed seed and budget, single-threaded,
  deterministic) and appends one JSONL record per network: its computation graph labelled with validation
  ``accuracy``, ``flops``, ``params`` and CPU ``latency_ms``, and its family, with the spec in a sidecar
  ``<name>.specs.jsonl``; a killed run resumes. ``litzoo architectures --out ... --per-family 50`` runs it.
- :class:`ArchitectureDataModule` reads such a file, splits it by family (training families vs held-out
  families), standardises the target with training-split statistics and serves torch_geometric batches;
  ``finetune_samples`` draws a few labelled graphs of the held-out families for few-shot transfer.
- :class:`SyntheticArchitectureDataModule` labels graphs with a SYNTHETIC oracle (no training) for fast tests.
"""

from __future__ import annotations

import math
import os
import random
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from litzoo.framework.data.loaders import make_loader
from litzoo.framework.data.splits import SplitsDataModule
from litzoo.framework.errors import LitzooError
from litzoo.framework.nas import (
    FAMILIES,
    TrainValSplits,
    build_network,
    check_family,
    generate_architecture_benchmark,
    network_graph,
    sample_spec,
    specs_path,
)


# --------------------------------------------------------------------------------------------- the digits
class DigitsSplits(TrainValSplits):
    """The digits as tensors for labelling (:class:`litzoo.framework.nas.TrainValSplits`): the stratified split of
    :class:`litzoo.datamodules.digits.DigitsDataModule` with ``val_fraction=0.25, test_fraction=0.05`` (train ≈ 1258
    images, val = 450 images, normalised with training statistics). ``train_subset`` keeps the first N training
    images (tests)."""

    def __init__(self, train_subset: int | None = None, split_seed: int = 0) -> None:
        from litzoo.datamodules.digits import DigitsDataModule  # scikit-learn loads only when the digits are needed

        data = DigitsDataModule(val_fraction=0.25, test_fraction=0.05, split_seed=split_seed)
        data.setup()
        train, val = data.datasets["train"], data.datasets["val"]
        super().__init__(train.tensors["image"], train.tensors["label"], val.tensors["image"], val.tensors["label"])
        if train_subset is not None:
            self.train_x, self.train_y = self.train_x[:train_subset], self.train_y[:train_subset]


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
class GraphSplitsDataModule(SplitsDataModule):
    """A :class:`~litzoo.framework.data.splits.SplitsDataModule` of computation graphs: ``build_datasets``
    returns every split at once (split name → list of ``torch_geometric`` Data), batched by
    ``torch_geometric``'s ``Collater``; a shuffled split is shuffled from ``(hparams.seed, epoch)`` by the
    core's resumable loader (:func:`~litzoo.framework.data.loaders.make_loader`). Splits: train, val, test
    (also predict) and the few-shot ``"finetune"``."""

    splits = ("train", "val", "test", "finetune")

    def default_shuffle_seed(self) -> int:
        """``hparams.seed``, the seed of the splits: the graphs' order does not follow ``seed_everything``."""
        return int(self.hparams.seed)

    def make_dataloader(self, dataset: list, batch_size: int, shuffle: bool):
        from torch_geometric.loader.dataloader import Collater

        # torch_geometric's DataLoader is a torch DataLoader with this collation
        return make_loader(dataset, batch_size, shuffle, self.num_workers, seed=self.shuffle_seed, collate_fn=Collater(dataset, None, None))


class ArchitectureDataModule(GraphSplitsDataModule):
    """Labelled computation graphs split by family, for CG performance predictors (arXiv 2302.10835,
    arXiv 2211.17226): train on some families, test transfer on a held-out one.

    Reads a benchmark written by :func:`litzoo.framework.nas.generate_architecture_benchmark` (any
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
        super().__init__(batch_size, num_workers)
        self.save_hyperparameters()
        self.path = path
        self.target = target
        self.train_families = train_families
        self.test_families = test_families
        self.graphs: dict[str, list] = {}
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
                staging / target.name, DigitsSplits(), hp.generate_per_family, FAMILIES, hp.seed, hp.generate_epochs, progress=False
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

    def build_datasets(self, split: str) -> dict[str, list]:
        """Every split at once: the held-out families, a seeded train / val split of the others, the
        target standardised with training statistics."""
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
        return {split: [self._item(g) for g in graphs] for split, graphs in self.graphs.items()}

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
    :func:`litzoo.framework.nas.generate_architecture_benchmark`.

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
        super().__init__(None, target, train_families, test_families, val_fraction, batch_size, normalize_target, finetune_samples, seed,
                         num_workers=num_workers)  # fmt: skip
        self.save_hyperparameters()

    def prepare_data(self) -> None:
        pass

    def load_graphs(self) -> list:
        hp = self.hparams
        families = [f for f in FAMILIES if self.train_families is None or f in self.train_families or f in self.test_families]
        return synthetic_graphs(hp.per_family, families, hp.seed, hp.noise)
