"""``litzoo graph``: the computation graph of a config's network, as JSON."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from litzoo.cli.console import command_parser
from litzoo.cli.lightning_cli import build_from_config
from litzoo.cli.registry import resolve_config
from litzoo.framework.errors import LitzooError


def config_network(config: str | Path, overrides: Sequence[str] = (), features: bool = False) -> tuple[Any, Any]:
    """The network of a config (the module's inner ``net`` / ``model``, else the module itself) and
    one example input for it: the module's ``example_input_array``, else a zero image of the
    datamodule's ``input_shape``. With ``features`` the network is the module's ``forward_features``
    (the encoder of a pretraining model; :class:`litzoo.framework.graph.FeatureExtractor`). Nothing is
    trained, logged or written."""
    import torch
    from torch import nn

    from litzoo.cli.summary import example_input

    try:
        config = resolve_config(str(config))  # a file, or a shipped config by name (repvgg/digits)
    except LitzooError:
        raise LitzooError(f"config '{config}' does not exist") from None
    if not Path(config).is_file():
        raise LitzooError(f"config '{config}' does not exist")
    args = ["-c", str(config), "--trainer.logger", "false", "--trainer.enable_checkpointing", "false",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false", *overrides]  # fmt: skip
    cli = build_from_config(args)
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
        from litzoo.framework.graph.computation import FeatureExtractor

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
    from litzoo.framework.profiling import format_count

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
    from litzoo.framework.graph.computation import computation_graph

    parser = command_parser("litzoo graph", "Write the computation graph of a config's network (primitive ops, dataflow, shapes, FLOPs) as JSON.")
    parser.add_argument("-c", "--config", type=str, required=True, help="a litzoo config, e.g. configs/repvgg/digits.yaml")
    parser.add_argument("--out", type=str, required=True, help="the JSON file to write (litzoo.framework.graph.ComputationGraph.to_json)")
    parser.add_argument("--summary", action="store_true", help="print nodes per op type, total FLOPs and parameters")
    parser.add_argument("--family", type=str, default=None, help="architecture family stored with the graph (default: the config's folder)")
    parser.add_argument("--features", action="store_true",
                        help="graph the module's forward_features (the encoder) instead of its forward: for pretraining models "
                             "whose forward draws random masks (MAE-Hiera, DiffMAE)")  # fmt: skip
    args = parser.parse_args(list(argv))

    from litzoo.framework.data.staging import check_writable, write_files_atomically

    output = check_writable(args.out)
    network, sample = config_network(args.config, features=args.features)
    family = args.family if args.family is not None else Path(args.config).parent.name
    graph = computation_graph(network, sample, family=family)
    with write_files_atomically(output) as (staged,):
        staged.write_text(graph.to_json() + "\n", encoding="utf-8")
    if args.summary:
        print(graph_summary(graph, f"{type(network).__name__} ({args.config})"))
    print(f"computation graph of {type(network).__name__}: {len(graph.nodes)} nodes, {len(graph.edges)} edges; written to {output}")
