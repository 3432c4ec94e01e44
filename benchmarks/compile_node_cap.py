"""CoMPILE with GraIL's per-hop node cap (``max_nodes_per_hop``): the size and extraction cost of the enclosing
subgraphs, against the uncapped extraction of the same graphs and triples.

    .venv/bin/python benchmarks/compile_node_cap.py

`configs/compile/planted.yaml` (SYNTHETIC planted-rule KG and its disjoint-entity twin), 3 seeds (each draws its own
graph and negatives), three settings: the config (2 hops, no cap), 3 hops without a cap (the subgraphs cover much of
this small dense graph), and 3 hops with ``max_nodes_per_hop`` in CAPS. Reported per setting: the mean and largest number
of nodes and edges of every subgraph ``setup`` extracts (train / valid / test triples and their negatives, both graphs)
and the seconds of that extraction. Training is not measured here (see ``benchmarks/compile.py``).
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import common  # noqa: E402

CONFIG = common.ROOT / "configs" / "compile" / "planted.yaml"
SEEDS = (0, 1, 2)
CAPS = (5, 30)
SETTINGS = {"2 hops, no cap (config)": ("2", None), "3 hops, no cap": ("3", None), **{f"3 hops, cap {cap}": ("3", cap) for cap in CAPS}}


def run(seed: int, hops: str, cap: int | None) -> dict[str, float]:
    overrides = ["--seed_everything", str(seed), "--data.init_args.seed", str(seed), "--model.init_args.hops", hops]
    if cap is not None:
        overrides += ["--model.init_args.max_nodes_per_hop", str(cap)]
    cli = common.config_cli(CONFIG, *overrides)
    start = time.perf_counter()
    cli.datamodule.load()
    cli.model.build(cli.datamodule.graph, cli.datamodule.test_graph)  # what setup() does, timed on its own
    extraction = time.perf_counter() - start
    subgraphs = [sub for extractor in cli.model.extractors.values() for sub in extractor.cache.values()]
    nodes, edges = [len(sub.nodes) for sub in subgraphs], [len(sub.edges) for sub in subgraphs]
    return {"subgraphs": len(subgraphs), "nodes": statistics.mean(nodes), "max_nodes": max(nodes), "edges": statistics.mean(edges),
            "max_edges": max(edges), "setup_s": extraction}  # fmt: skip


def main() -> dict[str, Any]:
    common.quiet_lightning()
    start = time.perf_counter()
    runs: dict[str, list[dict[str, float]]] = {}
    for name, (hops, cap) in SETTINGS.items():
        runs[name] = []
        for seed in SEEDS:
            runs[name].append({"seed": seed, **run(seed, hops, cap)})
            print(f"  {name}, seed {seed}: " + ", ".join(f"{k} {v:.3f}" for k, v in runs[name][-1].items()), file=sys.stderr, flush=True)
    return {"runs": runs, "seconds": time.perf_counter() - start}


def format_section(results: dict[str, Any]) -> str:
    columns = [("subgraphs", "subgraphs", 0), ("mean nodes", "nodes", 1), ("largest", "max_nodes", 0), ("mean edges", "edges", 1),
               ("largest", "max_edges", 0), ("extraction s", "setup_s", 2)]  # fmt: skip
    rows = [[name, *(common.mean_sd([r[key] for r in runs], digits) for _, key, digits in columns)] for name, runs in results["runs"].items()]
    return "\n".join([
        f"## CoMPILE with GraIL's per-hop node cap (`benchmarks/compile_node_cap.py`, {results['seconds']:.0f} s)",
        "",
        f"`configs/compile/planted.yaml` (SYNTHETIC planted-rule KG and its disjoint-entity twin), seeds {list(SEEDS)}, mean ± sd over "
        "seeds of each seed's mean / largest. `max_nodes_per_hop=c` keeps at most c new nodes per BFS hop from each root "
        "(GraIL's option, off by default in GraIL and CoMPILE), drawn per triple from a seeded stream; the two roots sample "
        "independently, so the enclosing subgraph (the intersection) shrinks much faster than the cap. Extraction = negatives "
        "plus every subgraph `setup` extracts, once. Training quality with the cap is not measured here.",
        "",
        common.markdown_table(["setting", *(title for title, _, _ in columns)], rows),
        "",
    ])  # fmt: skip


if __name__ == "__main__":
    common.setup_threads()
    out = main()
    print(format_section(out))
