"""``litzoo``: LightningCLI with litzoo's defaults, plus ``list``, ``export``, ``curate``, ``text-quality``, ``graph`` and
``architectures`` and ``nas-search``.

    litzoo fit  -c configs/repvgg/digits.yaml
    litzoo test -c configs/repvgg/digits.yaml --ckpt_path best
    litzoo fit  --model RepVGGClassifier --data DigitsDataModule --model.num_classes 10
    litzoo list
    litzoo export --ckpt_path runs/repvgg/digits/version_0/checkpoints/deploy.ckpt --format onnx
    litzoo graph -c configs/repvgg/digits.yaml --out cg.json --summary
    litzoo architectures --out data/architectures/digits.jsonl --per-family 50   # a labelled NAS benchmark
    litzoo nas-search --predictor gennape.ckpt --family mobilenet --flops-limit 6e5 --evaluate 20

Defaults added to the Trainer unless the config already sets them: a TensorBoardLogger writing to
``runs/<method>/<data>/version_N``, a ModelCheckpoint keeping ``best.ckpt`` (on the module's
``monitor`` metric) and ``last.ckpt``, a LearningRateMonitor, and a model summary with FLOPs.
``--ckpt_path best|last`` finds that file in the newest run of the same method and data.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
from jsonargparse import ArgumentParser
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint, ModelSummary
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from framework.checkpoints import load_checkpoint
from framework.errors import LitzooError, one_line
from framework.registry import import_all, listing
from framework.summary import FlopsModelSummary

RUNS_DIR = "runs"


def run_name(obj: object, suffixes: Sequence[str]) -> str:
    """``RepVGGClassifier -> 'repvgg'``, ``DigitsDataModule -> 'digits'``: the run folder names."""
    name = type(obj).__name__
    for suffix in suffixes:
        if name.endswith(suffix) and name != suffix:
            name = name[: -len(suffix)]
            break
    return name.lower()


def find_checkpoint(run_dir: Path, which: str) -> Path | None:
    """``best.ckpt``/``last.ckpt`` of the newest ``version_N`` under ``run_dir`` that has one."""
    def version(path: Path) -> int:
        match = re.fullmatch(r"version_(\d+)", path.parent.parent.name)
        return int(match.group(1)) if match else -1

    candidates = sorted(run_dir.glob(f"version_*/checkpoints/{which}.ckpt"), key=version)
    return candidates[-1] if candidates else None


class LitzooCLI(LightningCLI):
    """LightningCLI over every litzoo (or user) LightningModule and DataModule, with litzoo defaults."""

    def __init__(self, args: Sequence[str] | None = None, **kwargs: Any) -> None:
        import_all()
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("auto_configure_optimizers", False)  # methods take their optimizer as an argument
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        super().__init__(L.LightningModule, L.LightningDataModule, args=args, **kwargs)

    @property
    def run_dir(self) -> Path:
        root = self._get(self.config_init, "trainer", default={}).get("default_root_dir") or RUNS_DIR
        method = run_name(self.model, ("Classifier", "Module", "Model"))
        # A callback that changes what is trained (StructuralReparam(block="dbb") -> "resnet-dbb")
        # gets its own run folder, so `--ckpt_path best` never picks another technique's run.
        callbacks = self._get(self.config_init, "trainer", default={}).get("callbacks") or []
        tags = [c.run_tag for c in callbacks if isinstance(getattr(c, "run_tag", None), str)]
        method = "-".join([method, *tags])
        data = run_name(self.datamodule, ("DataModule",)) if self.datamodule is not None else "data"
        return Path(root) / method / data

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Callback]) -> L.Trainer:
        if config.get("logger") in (None, True):
            config["logger"] = TensorBoardLogger(save_dir=str(self.run_dir.parent.parent), name=str(Path(*self.run_dir.parts[-2:])))
        present = list(config.get("callbacks") or []) + list(callbacks)
        defaults: list[Callback] = []
        if config.get("enable_checkpointing", True) is not False and not any(isinstance(c, ModelCheckpoint) for c in present):
            defaults.extend(self._default_checkpoints())
        if config.get("logger") and not any(isinstance(c, LearningRateMonitor) for c in present):
            defaults.append(LearningRateMonitor(logging_interval="step"))
        if config.get("enable_model_summary", True) is not False and not any(isinstance(c, ModelSummary) for c in present):
            defaults.append(FlopsModelSummary())
        return super()._instantiate_trainer(config, list(callbacks) + defaults)

    def _default_checkpoints(self) -> list[ModelCheckpoint]:
        has_validation = type(self.model).validation_step is not L.LightningModule.validation_step
        monitor = getattr(self.model, "monitor", "val/loss") if has_validation else None
        mode = getattr(self.model, "monitor_mode", "min")
        # Fixed file names, overwritten in place, so that `--ckpt_path best|last` can find them.
        # `last.ckpt` has its own checkpoint callback without a monitor: Lightning's `save_last`
        # writes it only when a top-k checkpoint is saved, i.e. it would stay at the best epoch.
        best = ModelCheckpoint(filename="best", monitor=monitor, mode=mode, save_top_k=1)
        last = ModelCheckpoint(filename="last", save_top_k=1)
        return [best, last]

    def _prepare_subcommand_kwargs(self, subcommand: str) -> dict[str, Any]:
        kwargs = super()._prepare_subcommand_kwargs(subcommand)
        ckpt_path = kwargs.get("ckpt_path")
        if ckpt_path in ("best", "last"):
            found = find_checkpoint(self.run_dir, ckpt_path)
            if found is None:
                where = f"{self.run_dir}/version_*/checkpoints/{ckpt_path}.ckpt"
                if subcommand == "fit":
                    rank_zero_warn(f"--ckpt_path {ckpt_path}: no checkpoint matches {where}; training from scratch")
                    kwargs["ckpt_path"] = None
                    return kwargs
                raise LitzooError(f"--ckpt_path {ckpt_path}: no checkpoint matches {where}; run `litzoo fit` with this config first")
            rank_zero_info(f"--ckpt_path {ckpt_path}: using {found}")
            kwargs["ckpt_path"] = str(found)
        return kwargs

    def _parse_ckpt_path(self) -> None:
        # Lightning reads the hyper-parameters of --ckpt_path here, before anything else touches the
        # file: check it first, so that a bad file fails with one line naming it.
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt_path not in (None, "best", "last"):
            load_checkpoint(ckpt_path, mmap=True)
        super()._parse_ckpt_path()


def export_command(argv: Sequence[str]) -> None:
    from framework.export import FORMATS, export_checkpoint

    parser = ArgumentParser(prog="litzoo export", description="Export the deploy (fused) model of a `litzoo fit` checkpoint and verify it against torch.")
    parser.add_argument("--ckpt_path", type=str, required=True, help="checkpoint written by `litzoo fit` (best, last or deploy)")
    parser.add_argument(
        "--format", type=str, default="onnx", choices=FORMATS,
        help="onnx (checked with onnxruntime), torchscript, or int8 (post-training quantized torch.export program, calibrated on the training data)",
    )  # fmt: skip
    parser.add_argument("--output", type=str, default=None, help="output file (default: next to the checkpoint)")
    parser.add_argument("--batch_size", type=int, default=8, help="images in the verification batch")
    parser.add_argument("--input_shape", type=list[int], default=None, help="C,H,W of random inputs, instead of the checkpoint's datamodule")
    parser.add_argument("--atol", type=float, default=None, help="allowed max abs difference, relative to max(1, max|y|) (default 1e-4; int8 0.1)")
    parser.add_argument("--calibration_batches", type=int, default=32, help="int8: training batches that calibrate the activation ranges")
    args = parser.parse_args(list(argv))
    shape = tuple(args.input_shape) if args.input_shape else None
    output, error = export_checkpoint(args.ckpt_path, args.format, args.output, args.batch_size, shape, args.atol, args.calibration_batches)
    print(f"exported {args.format} to {output}; max |exported - torch| = {error:.3g} on {args.batch_size} images")


def curate_command(argv: Sequence[str]) -> None:
    """``litzoo curate``: MetaCLIP matching + balancing of a JSONL manifest, written as a curated manifest."""
    import json
    from pathlib import Path

    import numpy as np

    from framework.curation import MetadataIndex, balance, entropy, entry_counts, keep_probabilities
    from framework.data.jsonl import read_jsonl

    parser = ArgumentParser(prog="litzoo curate", description="MetaCLIP curation of an image-text manifest: sub-string matching, then balancing.")
    parser.add_argument("--manifest", type=str, required=True, help="JSONL, one object per line with a text field")
    parser.add_argument("--metadata", type=str, required=True, help="entries: a JSON list of strings, or a text file with one entry per line")
    parser.add_argument("--t", type=int, default=20000, help="balancing threshold: entries matched by more texts are sub-sampled to about t")
    parser.add_argument("--output", type=str, required=True, help="the curated JSONL manifest (kept lines, unchanged, plus 'entries')")
    parser.add_argument("--text_key", type=str, default="text", help="the caption field of each line")
    parser.add_argument("--seed", type=int, default=0, help="seed of the balancing coins")
    parser.add_argument("--log_dir", type=str, default=None, help="write TensorBoard histograms of log10(entry count) before / after")
    args = parser.parse_args(list(argv))

    metadata_path = Path(args.metadata)
    try:
        raw = metadata_path.read_text(encoding="utf-8")
    except OSError as error:
        raise LitzooError(f"metadata '{metadata_path}' cannot be read: {error.strerror or error}") from None
    if metadata_path.suffix == ".json":
        try:
            entries = json.loads(raw)
        except json.JSONDecodeError as error:
            raise LitzooError(f"metadata '{metadata_path}' is not valid JSON: {error.msg} (line {error.lineno})") from None
        if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
            raise LitzooError(f"metadata '{metadata_path}' must be a JSON list of strings")
    else:
        entries = [line for line in raw.splitlines() if line]
    manifest_path = Path(args.manifest)
    records = read_jsonl(manifest_path, [args.text_key])

    index = MetadataIndex(entries)
    matches = [index.match(r[args.text_key]) for r in records]
    kept = balance(matches, len(entries), args.t, seed=args.seed)
    before = entry_counts(matches, len(entries))
    after = entry_counts([matches[i] for i in kept], len(entries))
    expected = sum(keep_probabilities(matches, len(entries), args.t))
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with output.open("w", encoding="utf-8") as f:
        for i in kept:
            f.write(json.dumps({**records[i], "entries": [entries[e] for e in matches[i]]}) + "\n")
    matched = sum(1 for m in matches if m)
    tail = before < args.t
    print(
        f"curated {len(records)} texts -> {matched} matched -> {len(kept)} kept (expected {expected:.1f}); "
        f"entries matched {int((before > 0).sum())}/{len(entries)}, head (>= t) {int((~tail & (before > 0)).sum())}; "
        f"tail matches kept {int(after[tail].sum())}/{int(before[tail].sum())}; "
        f"entry entropy {entropy(before):.3f} -> {entropy(after):.3f} nats; largest count {int(before.max(initial=0))} -> {int(after.max(initial=0))}; "
        f"written to {output}"
    )
    if index.unmatchable:
        print(f"note: {len(index.unmatchable)} entries can never match (not in spaced form), e.g. {entries[index.unmatchable[0]]!r}")
    np.save(output.with_suffix(".entry_counts.npy"), np.stack([before, after]))
    if args.log_dir:
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(args.log_dir) as writer:  # the long tail and the cut head, on a log scale
            for step, counts in enumerate((before, after)):
                if (counts > 0).any():
                    writer.add_histogram("curation/log10_entry_count", np.log10(counts[counts > 0]), global_step=step)
            writer.add_scalars("curation/entropy_nats", {"before": entropy(before), "after": entropy(after)}, 0)


def text_quality_command(argv: Sequence[str]) -> None:
    """``litzoo text-quality``: text quality-based pruning (Sharma et al., arXiv:2405.01582) of any JSONL text column."""
    import json

    from framework.data.jsonl import read_jsonl
    from framework.text_quality import PAPER_FILTERS, prune

    parser = ArgumentParser(prog="litzoo text-quality", description="Score documents with heuristic line filters weighted by perplexity; keep the top fraction.")
    parser.add_argument("--manifest", type=str, required=True, help="JSONL, one object per line with a text field")
    parser.add_argument("--output", type=str, required=True, help="the kept lines, unchanged, plus 'quality_score'")
    parser.add_argument("--text_key", type=str, default="text", help="the text field of each line")
    parser.add_argument("--keep_fraction", type=float, default=0.6, help="share of documents kept by score (the paper keeps 0.6-0.8)")
    parser.add_argument("--filters", type=list[str], default=list(PAPER_FILTERS), help="line filters by name (framework.text_quality.FILTERS)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the tie-break between equal scores")
    args = parser.parse_args(list(argv))

    manifest_path = Path(args.manifest)
    records = read_jsonl(manifest_path, [args.text_key])
    try:
        kept, scores, weights = prune([r[args.text_key] for r in records], args.keep_fraction, args.filters, seed=args.seed)
    except ValueError as error:
        raise LitzooError(f"text-quality on '{manifest_path}': {error}") from None
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with output.open("w", encoding="utf-8") as f:
        for i in kept:
            f.write(json.dumps({**records[i], "quality_score": float(scores[i])}) + "\n")
    print("filter weights: " + ", ".join(f"{name}={weight:.4f}" for name, weight in weights.items()))
    print(
        f"scored {len(records)} documents (score min {scores.min():.3f}, median {float(sorted(scores)[len(scores) // 2]):.3f}, max {scores.max():.3f}); "
        f"kept {len(kept)} ({len(kept) / len(records):.1%}) with score >= {scores[kept].min():.3f}; written to {output}"
    )


def config_network(config: str | Path, overrides: Sequence[str] = (), features: bool = False) -> tuple[Any, Any]:
    """The network of a config (the module's inner ``net`` / ``model``, else the module itself) and
    one example input for it: the module's ``example_input_array``, else a zero image of the
    datamodule's ``input_shape``. With ``features`` the network is the module's ``forward_features``
    (the encoder of a pretraining model; :class:`framework.graph.FeatureExtractor`). Nothing is
    trained, logged or written."""
    import warnings

    import torch
    from torch import nn

    from framework.summary import example_input

    if not Path(config).is_file():
        raise LitzooError(f"config '{config}' does not exist")
    args = ["-c", str(config), "--trainer.logger", "false", "--trainer.enable_checkpointing", "false",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false", *overrides]  # fmt: skip
    with warnings.catch_warnings():  # `litzoo graph`'s own sys.argv is not the config's
        warnings.filterwarnings("ignore", message=".*args parameter is intended to run from within Python.*")
        cli = LitzooCLI(args=args, run=False, save_config_callback=None)
    module = cli.model
    if any(hasattr(module, a) and getattr(module, a) is None for a in ("net", "model")) and cli.datamodule is not None:
        # the network is built in setup() from the data (a tokenizer's vocabulary size): set the data up as fit would
        cli.trainer._data_connector.attach_datamodule(module, datamodule=cli.datamodule)
        module.trainer = cli.trainer
        cli.datamodule.prepare_data()
        cli.datamodule.setup("fit")
        module.setup("fit")
    network = next((getattr(module, a) for a in ("net", "model") if isinstance(getattr(module, a, None), nn.Module)), module)
    if features:
        from framework.graph.computation import FeatureExtractor

        network = FeatureExtractor(module)
    sample = example_input(module)
    if sample is None:
        shape = getattr(cli.datamodule, "input_shape", None)
        if shape is None:
            raise LitzooError(f"config '{config}': {type(module).__name__} has no example_input_array and its datamodule no input_shape")
        sample = torch.zeros(1, *shape)
    return network, sample


def graph_summary(graph: Any, title: str) -> str:
    """One screen: nodes per op type, edges, total FLOPs and parameters."""
    from framework.profiling import format_count

    counts = graph.op_counts()
    width = max(len(op) for op in counts)
    lines = [f"{title}: {len(graph.nodes)} nodes, {len(graph.edges)} edges, FLOPs {format_count(graph.total_flops)} "
             f"({graph.total_flops}), params {format_count(graph.total_params)} ({graph.total_params})"]  # fmt: skip
    flops_by_op: dict[str, int] = {}
    for node in graph.nodes:
        flops_by_op[node.op] = flops_by_op.get(node.op, 0) + node.flops
    for op, count in counts.items():
        share = f"  {flops_by_op[op] / graph.total_flops:6.1%} of FLOPs" if graph.total_flops and flops_by_op[op] else ""
        lines.append(f"  {op:<{width}} {count:>5}{share}")
    return "\n".join(lines)


def graph_command(argv: Sequence[str]) -> None:
    """``litzoo graph``: the computation graph (GENNAPE / AIO-P style) of a config's network, as JSON."""
    from framework.graph.computation import computation_graph

    parser = ArgumentParser(prog="litzoo graph", description="Write the computation graph of a config's network (primitive ops, dataflow, shapes, FLOPs) as JSON.")
    parser.add_argument("-c", "--config", type=str, required=True, help="a litzoo config, e.g. configs/repvgg/digits.yaml")
    parser.add_argument("--out", type=str, required=True, help="the JSON file to write (framework.graph.ComputationGraph.to_json)")
    parser.add_argument("--summary", action="store_true", help="print nodes per op type, total FLOPs and parameters")
    parser.add_argument("--family", type=str, default=None, help="architecture family stored with the graph (default: the config's folder)")
    parser.add_argument("--features", action="store_true",
                        help="graph the module's forward_features (the encoder) instead of its forward: for pretraining models "
                             "whose forward draws random masks (MAE-Hiera, DiffMAE)")  # fmt: skip
    args = parser.parse_args(list(argv))

    network, sample = config_network(args.config, features=args.features)
    family = args.family if args.family is not None else Path(args.config).parent.name
    graph = computation_graph(network, sample, family=family)
    output = Path(args.out)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(graph.to_json() + "\n", encoding="utf-8")
    if args.summary:
        print(graph_summary(graph, f"{type(network).__name__} ({args.config})"))
    print(f"computation graph of {type(network).__name__}: {len(graph.nodes)} nodes, {len(graph.edges)} edges; written to {output}")


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``litzoo`` console script and ``python -m framework``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:1] == ["list"]:
            import_all()
            print(listing())
        elif argv[:1] == ["export"]:
            export_command(argv[1:])
        elif argv[:1] == ["curate"]:
            curate_command(argv[1:])
        elif argv[:1] == ["text-quality"]:
            text_quality_command(argv[1:])
        elif argv[:1] == ["graph"]:
            graph_command(argv[1:])
        elif argv[:1] == ["architectures"]:
            from datamodules.architectures import architectures_command

            architectures_command(argv[1:])
        elif argv[:1] == ["nas-search"]:
            from framework.nas_search import nas_search_command

            nas_search_command(argv[1:])
        else:
            LitzooCLI(args=argv)
    except LitzooError as error:
        print(f"litzoo: error: {one_line(error)}", file=sys.stderr)
        raise SystemExit(2) from None
