"""ResRep with and without ``prune_residual`` on public CIFAR networks: how far the FLOPs can go, and what the pruned model's latency is.

Issue 20, item 3's evidence. ResRep (Ding et al., ICCV 2021) prunes only the "internal" layers of a
network: convs whose output channels are not tied to other convs. On EfficientNet-B0, RegNetX-200MF
and DPN26 (the CIFAR layouts of kuangliu/pytorch-cifar, :mod:`cifar_nets`) that leaves too few free
channels for half the FLOPs. ``ResRepPruning(prune_residual=True)`` also prunes the channels tied by
residual additions and squeeze-excitation products (one mask per tied set, a compactor per conv) and
the channels of grouped convs in units (channel ``j`` of every group). For each network, with it off
and on:

* the plan: prunable groups, the convs in them, convs left alone, and the lowest reachable FLOPs ratio
  (every group at its fewest channels, ``min_channels=1``: what ``ResRepPruning.attach`` computes);
  where 0.5 is out of reach with it on, the reasons the largest unpruned convs are left alone;
* where 0.5 is reachable with it on: one ResRep mask update to a FLOPs ratio of 0.5 (compactor rows
  given a seeded random spread, see :func:`spread_units`), the physical removal (``ResRepPruning.prune``:
  the pruned model must equal the masked one), the same with ``prune_residual=False`` where that reaches
  0.5 too, Torch-Pruning's ``MetaPruner`` (global group-L2 magnitude) on the same dense model down to the
  same FLOPs, with and without ``round_to=16`` (channel counts onnxruntime's blocked kernels take), and
  the latency of every variant in eager torch and onnxruntime, all timed together in alternating rounds.

The issue's goal: pruned/dense latency ≤ 1.15 × the FLOPs ratio.

    .venv/bin/python benchmarks/prune_residual.py [--models ResNet-18 DPN26]
"""

from __future__ import annotations

import copy
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch_pruning as tp
from cifar_nets import NETS
from common import RESREP_SPREAD, markdown_table, resrep_prune, torch_pruning_to_flops
from deploy_speed import PRUNED_LABELS, ROUND_TO, THREADS, OnnxModel, classifier_layers, fold_batchnorm
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from litzoo.callbacks.resrep import _fewest_kept
from litzoo.framework.errors import LitzooError
from litzoo.framework.export import export_model
from litzoo.framework.profiling import compare_latency, count_flops, count_parameters
from litzoo.framework.pruning import ChannelFlops, GroupReport, find_channel_groups
from litzoo.framework.reparam import randomize_batchnorm

TARGET = 0.5
#: the issue's goal: pruned/dense latency at most this times the FLOPs ratio
GOAL_FACTOR = 1.15
#: set-up (plan, pruning, export) runs on one thread: on 2 shared cores under load, two OpenMP threads
#: spin-wait on each other (a float64 EfficientNet forward took 16x longer than on one); timing uses THREADS
SETUP_THREADS = 1
IMAGE = (3, 32, 32)


@dataclass(frozen=True)
class Timing:
    batch: int  # images per forward (a dense eager forward takes well over 5 ms at these)
    rounds: int  # alternating rounds (one sample of every model each)
    warmup: int = 2


#: per network: the batch and rounds of the latency comparison (a DPN26 forward at batch 64 takes seconds on 2 cores)
TIMINGS = {
    "ResNet-18": Timing(16, 9),
    "MobileNetV2": Timing(32, 9),
    "EfficientNet-B0": Timing(64, 9),
    "RegNetX-200MF": Timing(16, 9),
    "DPN26": Timing(8, 9),
}
#: pruned variants, in table order (those a network does not get are left out); ROUND_TO (deploy_speed's) is also
#: Torch-Pruning's ``round_to`` for its aligned variant: onnxruntime's NchwcTransformer moves a conv to its blocked
#: NCHWc kernels only when the channel counts are multiples of MLAS's block (16 with AVX-512, 8 with AVX2; for a
#: depthwise or grouped conv: its output channels, and a grouped conv's per group); a pruned model with arbitrary
#: counts runs those convs on the plain NCHW path
VARIANTS = ("resrep", f"resrep-r{ROUND_TO}", "resrep-off", "torch-pruning", f"torch-pruning-r{ROUND_TO}")
LABELS = {"dense": "dense", **PRUNED_LABELS, f"torch-pruning-r{ROUND_TO}": f"Torch-Pruning, `round_to={ROUND_TO}`"}
RUNTIMES = ("eager", "onnxruntime")


def build(name: str, seed: int) -> nn.Module:
    """The network with seeded random weights and random BatchNorm statistics, in eval mode."""
    torch.manual_seed(seed)
    model = NETS[name]().eval()
    randomize_batchnorm(model, seed)
    return model


def conv_flops(model: nn.Module, x: torch.Tensor) -> dict[str, int]:
    """FLOPs of each conv of ``model`` on one sample (``torch.utils.flop_counter``), by module name."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x[:1])
    root = type(model).__name__
    found = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            found[name] = int(sum(counter.get_flop_counts().get(f"{root}.{name}", {}).values()))
    return found


def is_depthwise(conv: nn.Conv2d) -> bool:
    return conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels


def plan_row(model: nn.Module, plan: GroupReport, flops: ChannelFlops, prune_residual: bool, x: torch.Tensor) -> dict:
    """What ResRep can prune: groups, convs in them, convs left alone, the lowest reachable FLOPs ratio,
    and the largest convs left alone (by FLOPs) with the reason."""
    per_conv = conv_flops(model, x)
    total = flops.total
    biggest = sorted(plan.skipped.items(), key=lambda item: -per_conv.get(item[0], 0))[:3]
    return {
        "prune_residual": prune_residual,
        "groups": len(plan.groups),
        "convs": sum(len(g.producers) for g in plan.groups),
        "left_alone": len(plan.skipped),
        "all_convs": sum(not is_depthwise(model.get_submodule(name)) for name in per_conv),  # depthwise convs follow their producer
        "reachable": flops.ratio([_fewest_kept(g, 1) for g in plan.groups]),
        "left_alone_flops": sum(per_conv.get(name, 0) for name in plan.skipped) / total,
        "largest_left_alone": [{"conv": n, "flops_share": per_conv.get(n, 0) / total, "reason": r} for n, r in biggest],
    }


def run_network(name: str, seed: int, folder: Path) -> dict:
    """Plan with ``prune_residual`` off and on; where 0.5 is reachable with it on, prune with ResRep (off too
    where it reaches 0.5) and Torch-Pruning, and time every variant in both runtimes."""
    begin = time.perf_counter()
    timing = TIMINGS[name]
    generator = torch.Generator().manual_seed(seed)
    dense = build(name, seed)
    x = torch.randn(8, *IMAGE, generator=generator)  # planning, removal check (the analyses use the first 2)
    dense_flops = count_flops(dense, x[:1])
    result: dict = {"name": name, "dense_flops": dense_flops, "params": count_parameters(dense), "batch": timing.batch, "variants": {}}
    for key, prune_residual in (("off", False), ("on", True)):
        plan = find_channel_groups(dense, x, prune_residual=prune_residual)
        result[key] = plan_row(dense, plan, ChannelFlops(dense, x, plan.groups), prune_residual, x)
    result["plan_s"] = time.perf_counter() - begin
    print(f"  {name}: reachable FLOPs ratio off {result['off']['reachable']:.3f}, on {result['on']['reachable']:.3f} "
          f"({result['plan_s']:.0f} s)", file=sys.stderr, flush=True)  # fmt: skip

    pruned: dict[str, nn.Module] = {}
    for variant, key, round_to in (("resrep", "on", None), (f"resrep-r{ROUND_TO}", "on", ROUND_TO), ("resrep-off", "off", None)):
        if result[key]["reachable"] > TARGET:
            continue
        started = time.perf_counter()
        model = copy.deepcopy(dense)
        try:
            report = resrep_prune(model, x, TARGET, key == "on", seed, round_to)
        except LitzooError as error:
            result["variants"][variant] = {"error": str(error)}
            continue
        pruned[variant] = model
        result["variants"][variant] = report | {"params": count_parameters(model), "seconds": time.perf_counter() - started}
    if "resrep" not in pruned:
        result["seconds"] = time.perf_counter() - begin
        return result
    for variant, round_to in (("torch-pruning", None), (f"torch-pruning-r{ROUND_TO}", ROUND_TO)):
        started = time.perf_counter()
        model = copy.deepcopy(dense)
        reference = f"resrep-r{ROUND_TO}" if round_to and f"resrep-r{ROUND_TO}" in pruned else "resrep"  # the same FLOPs as the ResRep variant
        try:
            ratio, steps = torch_pruning_to_flops(model, x[:1], result["variants"][reference]["flops_ratio"], classifier_layers(model), round_to=round_to)
            with torch.no_grad():
                model(x)
        except Exception as error:  # noqa: BLE001 - Torch-Pruning's failure on a network is a result of the comparison
            first = (str(error).strip().splitlines() or [""])[0][:200]
            result["variants"][variant] = {"error": f"{type(error).__name__}: {first}"}
            continue
        pruned[variant] = model
        result["variants"][variant] = {"flops_ratio": ratio, "steps": steps, "params": count_parameters(model), "seconds": time.perf_counter() - started}

    started = time.perf_counter()
    originals = {"dense": dense} | {v: pruned[v] for v in VARIANTS if v in pruned}
    models = {v: fold_batchnorm(m) for v, m in originals.items()}
    with torch.no_grad():
        result["fold_error"] = max((models[v](x) - m(x)).abs().max().item() for v, m in originals.items())
    sessions = {}
    for variant, model in models.items():
        path = folder / f"{name}-{variant}.onnx"
        export_model(model, x, path, "onnx")
        sessions[variant] = OnnxModel(path)
    result["export_s"] = time.perf_counter() - started

    batch = torch.randn(timing.batch, *IMAGE, generator=generator)
    keys = [(v, r) for r in RUNTIMES for v in models]
    seconds = compare_latency([(models if r == "eager" else sessions)[v] for v, r in keys], batch, rounds=timing.rounds, warmup=timing.warmup,
                              threads=THREADS)  # fmt: skip
    ms = {key: 1e3 * s for key, s in zip(keys, seconds, strict=True)}
    result["latency"] = []
    for variant, runtime in keys:
        flops_ratio = 1.0 if variant == "dense" else result["variants"][variant]["flops_ratio"]
        ratio = ms[variant, runtime] / ms["dense", runtime]
        result["latency"].append({"variant": variant, "runtime": runtime, "ms": ms[variant, runtime], "ratio": ratio, "flops_ratio": flops_ratio,
                                  "goal": GOAL_FACTOR * flops_ratio, "met": ratio <= GOAL_FACTOR * flops_ratio})  # fmt: skip
    result["timing"] = vars(timing)
    result["seconds"] = time.perf_counter() - begin
    print(f"  {name}: " + ", ".join(f"{v} {r} {ms[v, r]:.1f} ms" for v, r in keys) + f" ({result['seconds']:.0f} s)", file=sys.stderr, flush=True)
    return result


def _load() -> str:
    try:
        return ", ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def main(models: tuple[str, ...] = tuple(NETS), seed: int = 0) -> dict:
    start = time.perf_counter()
    load_start = _load()
    threads = torch.get_num_threads()
    torch.set_num_threads(SETUP_THREADS)
    try:
        with tempfile.TemporaryDirectory(prefix="litzoo-prune-residual-") as folder:
            networks = [run_network(name, seed, Path(folder)) for name in models]
    finally:
        torch.set_num_threads(threads)
    return {"networks": networks, "target": TARGET, "goal_factor": GOAL_FACTOR, "spread": list(RESREP_SPREAD), "threads": THREADS,
            "round_to": ROUND_TO, "seed": seed, "load": [load_start, _load()], "seconds": time.perf_counter() - start}  # fmt: skip


def verdict(results: dict) -> str:
    target, factor, networks = results["target"], results["goal_factor"], results["networks"]
    before = [n["name"] for n in networks if n["off"]["reachable"] > target]
    after = [n["name"] for n in networks if n["on"]["reachable"] > target]
    lines = [
        f"FLOPs target {target} reachable by ResRep: with `prune_residual=False` on {len(networks) - len(before)} of {len(networks)} networks"
        f" (not: {', '.join(before) or 'none'}), with `prune_residual=True` on {len(networks) - len(after)} of {len(networks)}"
        f" (not: {', '.join(after) or 'none'})."
    ]  # fmt: skip
    for variant in ("resrep", f"resrep-r{results['round_to']}"):
        rows = [(n["name"], row) for n in networks for row in n.get("latency", []) if row["variant"] == variant]
        cases = [f"{name} {row['runtime']} {row['ratio']:.2f} vs ≤ {row['goal']:.2f}" for name, row in rows]
        met = [case for case, (_, row) in zip(cases, rows, strict=True) if row["met"]]
        missed = [case for case, (_, row) in zip(cases, rows, strict=True) if not row["met"]]
        failed = [f"{n['name']} ({n['variants'][variant]['error'][:120]})" for n in networks if "error" in n["variants"].get(variant, {})]
        lines.append(
            f"Goal: {LABELS[variant]} / dense latency ≤ {factor} × the FLOPs ratio. Met in {len(met)} of {len(rows)} cases"
            + (f" ({'; '.join(met)})" if met else "") + (f"; not met: {'; '.join(missed)}" if missed else "")
            + (f"; not pruned: {'; '.join(failed)}" if failed else "") + "."
        )  # fmt: skip
    aligned = f"torch-pruning-r{results['round_to']}"
    for numerator, denominator, text in (("resrep", "torch-pruning", "ResRep (`prune_residual=True`) / Torch-Pruning latency at the same FLOPs"),
                                         (f"resrep-r{results['round_to']}", aligned, f"The same, both with `round_to={results['round_to']}`"),
                                         (aligned, "torch-pruning", f"Channel alignment: Torch-Pruning with / without `round_to={results['round_to']}`")):  # fmt: skip
        parts = []
        for n in networks:
            ms = {(row["variant"], row["runtime"]): row["ms"] for row in n.get("latency", [])}
            pairs = [f"{runtime} {ms[numerator, runtime] / ms[denominator, runtime]:.2f}" for runtime in RUNTIMES
                     if (numerator, runtime) in ms and (denominator, runtime) in ms]  # fmt: skip
            if pairs:
                parts.append(f"{n['name']} {', '.join(pairs)}")
            elif numerator == "resrep" and "error" in n["variants"].get(denominator, {}):
                parts.append(f"{n['name']}: Torch-Pruning failed ({n['variants'][denominator]['error']})")
        if parts:
            lines.append(f"{text}: {'; '.join(parts)}.")
    return "\n".join(lines)


def _plan_cells(row: dict) -> list[str]:
    return [str(row["groups"]), f"{row['convs']} of {row['all_convs']}", f"{row['left_alone']} ({row['left_alone_flops']:.0%} of the FLOPs)",
            f"{row['reachable']:.3f}"]  # fmt: skip


def _latency_cells(row: dict) -> list[str]:
    if row["variant"] == "dense":
        return [f"{row['ms']:.1f}", "1", "1", "-", "-"]
    met = ("yes" if row["met"] else "**no**") if row["variant"] in ("resrep", f"resrep-r{ROUND_TO}") else ("(yes)" if row["met"] else "(no)")
    return [f"{row['ms']:.1f}", f"{row['ratio']:.3f}", f"{row['flops_ratio']:.3f}", f"{row['ratio'] / row['flops_ratio']:.2f}", met]


def _variant_note(name: str, variant: str, info: dict) -> str:
    if "error" in info:
        return f"{name}, {LABELS[variant]}: failed: {info['error']}"
    if variant.startswith("resrep"):
        return (f"{name}, {LABELS[variant]}: {info['removed_channels']} channels removed in {info['mask_updates']} mask update, "
                f"max \\|pruned - masked\\| = {info['removal_error']:.2g}, params ×{info['params_ratio']:.3f}")  # fmt: skip
    return f"{name}, {LABELS[variant]}: {info['steps']} steps, params ×{info['params_ratio']:.3f}"


def _rounds_text(timed: list[dict]) -> str:
    settings = {(n["timing"]["rounds"], n["timing"]["warmup"]) for n in timed}
    if len(settings) == 1:
        rounds, warmup = settings.pop()
        return f"{rounds} rounds after {warmup} warm-up forwards"
    return ", ".join(f"{n['timing']['rounds']} rounds after {n['timing']['warmup']} warm-up forwards for {n['name']}" for n in timed)


def format_section(results: dict) -> str:
    target, factor, networks = results["target"], results["goal_factor"], results["networks"]
    lines = [
        "## Pruning residual-tied channels: ResRep with and without `prune_residual` on CIFAR networks, against Torch-Pruning "
        f"(`benchmarks/prune_residual.py`, {results['seconds']:.0f} s)",
        "",
        verdict(results),
        "",
        "What ResRep can prune (`find_channel_groups`): groups (one mask each), the convs they put a compactor on, the convs left alone, and "
        "the lowest reachable FLOPs ratio (every group at its fewest channels, `min_channels=1`, as `ResRepPruning.attach` computes it):",
        "",
        markdown_table(
            ["network", "FLOPs / image", "params", "prune_residual", "groups", "convs with a compactor / not depthwise", "convs left alone",
             "lowest reachable FLOPs ratio"],
            [[n["name"], f"{n['dense_flops'] / 1e6:.0f} M", f"{n['params'] / 1e6:.2f} M", str(row["prune_residual"]), *_plan_cells(row)]
             for n in networks for row in (n["off"], n["on"])],
        ),
        "",
    ]  # fmt: skip
    for n in networks:
        if n["on"]["left_alone"]:
            largest = "; ".join(f"`{c['conv']}` ({c['flops_share']:.1%} of the FLOPs): {c['reason']}" for c in n["on"]["largest_left_alone"])
            lines += [f"{n['name']} with `prune_residual=True` leaves {n['on']['left_alone']} convs alone; the largest: {largest}.", ""]
    timed = [n for n in networks if "latency" in n]
    if timed:
        lines += [
            f"Pruned to {target} of the FLOPs (ResRep; Torch-Pruning stepped to ResRep's FLOPs), latency against the dense network in the same "
            f"runtime and run; the goal (≤ {factor} × FLOPs ratio) is judged on the `prune_residual=True` rows, the others show theirs in "
            "parentheses:",
            "",
            markdown_table(
                ["network", "batch", "variant", "runtime", "ms", "latency / dense", "FLOPs / dense", "latency ratio / FLOPs ratio",
                 f"≤ {factor} × FLOPs?"],
                [[n["name"], n["batch"], LABELS[row["variant"]], row["runtime"], *_latency_cells(row)] for n in timed for row in n["latency"]],
            ),
            "",
        ]  # fmt: skip
    notes = []
    for n in networks:
        for variant, info in n["variants"].items():
            info = info | ({"params_ratio": info["params"] / n["params"]} if "params" in info else {})
            notes.append(_variant_note(n["name"], variant, info))
    if notes:
        lines += ["Pruning details: " + "; ".join(notes) + ".", ""]
    spread = results["spread"]
    lines += [
        "Protocol: plain-PyTorch CIFAR networks (32x32 inputs, 10 classes) with kuangliu/pytorch-cifar's layouts (`benchmarks/cifar_nets.py`, "
        "checked to compute the reference's function with the same weights; ResNet-18 is `litzoo.modules.resnet.ResNet(depth=18, "
        "stem=\"cifar\")`), seeded random weights, every BatchNorm given random statistics (`randomize_batchnorm`), eval mode; nothing is "
        "trained, so nothing here is about accuracy. Plans: `find_channel_groups` (Torch-Pruning's dependency graph and litzoo's exactness "
        f"checks). ResRep: `ResRepPruning(flops_target={target}, granularity=10**9, prune_residual=...)`, `attach`; then all the compactor "
        f"rows of each unit (a channel, or channel j of every group of a grouped conv, in every conv tied to it) are scaled by one seeded "
        f"U({spread[0]}, {spread[1]}) factor, so that each unit's importance (its rms row norm) is that factor and the global ranking is a "
        "uniformly random order of the units (in training the group lasso makes this spread; a factor per row would rank every unit of many "
        "rows near the mean and prune the units of one row first); one `update_masks` (it stops as soon as the FLOPs are ≤ the target); "
        "`prune` (fold, remove, and check the pruned model equals the masked one on a batch). "
        f"Torch-Pruning {tp.__version__}: `MetaPruner`, `GroupMagnitudeImportance(p=2)`, `global_pruning=True`, `pruning_ratio=0.9` in 200 "
        "iterative steps, the classifier ignored, stepped until its FLOPs are ≤ ResRep's (`benchmarks/common.py::torch_pruning_to_flops`); "
        f"the aligned variant adds `round_to={results['round_to']}`. FLOPs: `torch.utils.flop_counter` (2 × MACs) per image. Latency: every "
        "conv -> BatchNorm pair folded into the conv in the eager models (`torch.fx.experimental.optimization.fuse`, as `deploy_speed.py`; "
        "onnxruntime does the same on load); every variant in eager torch and in onnxruntime (`export_model(..., \"onnx\")`, CPU provider, "
        "default graph optimisations) timed together by `litzoo.framework.profiling.compare_latency` "
        f"({results['threads']} intra-op threads in both runtimes, inter-op 1, order reversed every other round, median of "
        + _rounds_text(timed)
        + "). Set-up (plans, pruning, exports) runs on one thread. Two threads on two cores are at the mercy of anything else running: "
        "an op waits for its slowest thread, and under load the forwards stretch by several times, unevenly (load average "
        f"(1/5/15 min) at the start of this section {results['load'][0]}, at its end {results['load'][1]}).",
        "",
        "Seconds per network: "
        + "; ".join(f"{n['name']} {n['seconds']:.0f} (plans {n['plan_s']:.0f}" + (f", ONNX exports {n['export_s']:.0f}" if "export_s" in n else "")
                    + "".join(f", {LABELS[v]} {i['seconds']:.0f}" for v, i in n["variants"].items() if "seconds" in i) + ")"
                    for n in networks)
        + ".",
    ]  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(NETS), choices=list(NETS))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    results = main(tuple(args.models), args.seed)
    print(format_section(results))
    print(f"\n({results['seconds']:.0f} s)", file=sys.stderr)
