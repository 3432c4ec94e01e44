"""Shared pieces of the benchmarks: thread setup, the digits config, machine facts, markdown tables, Torch-Pruning to a FLOPs target."""

from __future__ import annotations

import datetime
import logging
import os
import platform
import subprocess
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import yaml
from torch import nn

if TYPE_CHECKING:
    from litzoo.callbacks.resrep import ResRepPruning

ROOT = Path(__file__).resolve().parents[1]
DIGITS_CONFIG = ROOT / "configs" / "repvgg" / "digits.yaml"


def num_cores() -> int:
    """CPU cores this process may run on (affinity-aware)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def setup_threads() -> int:
    """Use one intra-op thread per core, for every measurement of a run; returns the count."""
    cores = num_cores()
    torch.set_num_threads(cores)
    return cores


def quiet_lightning() -> None:
    """Hide Lightning's per-fit info lines and the warnings that are expected here."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*Checkpoint directory .* exists and is not empty.*")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # torch 2.13 vs lightning 2.6 pytree deprecation


def digits_config() -> dict[str, Any]:
    """The pieces of ``configs/repvgg/digits.yaml`` the benchmarks rebuild by hand.

    Returns ``seed``, ``model`` (RepVGGClassifier keyword arguments without the optimizer),
    ``optimizer`` (SGD keyword arguments), ``data`` (DigitsDataModule keyword arguments) and
    ``log_every_n_steps``.
    """
    config = yaml.safe_load(DIGITS_CONFIG.read_text())
    model = dict(config["model"]["init_args"])
    optimizer = model.pop("optimizer")
    if optimizer["class_path"] != "torch.optim.SGD":
        raise ValueError(f"{DIGITS_CONFIG}: the benchmarks expect torch.optim.SGD, got {optimizer['class_path']}")
    return {
        "seed": int(config.get("seed_everything", 0)),
        "model": model,
        "optimizer": dict(optimizer["init_args"]),
        "data": dict(config["data"]["init_args"]),
        "log_every_n_steps": int(config.get("trainer", {}).get("log_every_n_steps", 50)),
    }



def config_cli(config: Path, *overrides: str):
    """Model, DataModule and Trainer (with the config's callbacks) built from a litzoo config, not run: no logger, no
    checkpoints, no progress bar, nothing written into the working tree; ``overrides`` are CLI arguments."""
    from litzoo.cli import LitzooCLI

    args = ["-c", str(config), "--trainer.logger", "false", "--trainer.enable_checkpointing", "false",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false", *overrides]  # fmt: skip
    return LitzooCLI(args=args, run=False, save_config_callback=None)

def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine_info() -> dict[str, str]:
    import lightning

    try:
        load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        load = "n/a"
    return {
        "CPU": cpu_model(),
        "cores used": f"{num_cores()} (torch intra-op threads: {torch.get_num_threads()})",
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "python": platform.python_version(),
        "commit": git_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "load average at start (1/5/15 min)": load,
    }


def markdown_table(headers: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def yes_no(ok: bool) -> str:
    return "yes" if ok else "**no**"


def mean_sd_cell(value: tuple[float, float]) -> str:
    """A table cell of a saved ``(mean, sd)`` pair; a dash where the mean is not finite (a group with no users)."""
    import math

    return "—" if not math.isfinite(value[0]) else f"{value[0]:.3f} ± {value[1]:.3f}"


def over_seeds(runs: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, tuple[float, float]]]:
    """``{model: {metric: (mean, population sd)}}`` of per-seed ``{model: {metric: value}}`` results."""
    import numpy as np

    return {model: {k: (float(np.mean([r[model][k] for r in runs])), float(np.std([r[model][k] for r in runs]))) for k in runs[0][model]}
            for model in runs[0]}  # fmt: skip


def mean_sd(values: list[float], digits: int = 3) -> str:
    """``mean ± sd`` over seeds (just the value when there is one)."""
    import statistics

    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def torch_pruning_to_flops(
    model: nn.Module,
    example: torch.Tensor,
    flops_target: float,
    ignored_layers: Iterable[nn.Module] = (),
    iterative_steps: int = 200,
    pruning_ratio: float = 0.9,
    round_to: int | None = None,
) -> tuple[float, int]:
    """Prune ``model`` in place with Torch-Pruning until its FLOPs are at most ``flops_target`` of what they were.

    The baseline both pruning benchmarks compare against: ``MetaPruner`` with group L2 magnitude
    (``GroupMagnitudeImportance(p=2)``), one global ranking over all groups, and the dependency graph
    free to prune every coupled group, the channels tied by residual additions included. The pruner's
    schedule goes linearly to ``pruning_ratio`` of the channels in ``iterative_steps`` steps; it is
    stepped only until ``litzoo.framework.profiling.count_flops`` on ``example`` (FLOPs depend on the
    spatial size: pass the deployed one) reaches the target, so one step overshoots it by at most
    ``pruning_ratio / iterative_steps`` of the channels.

    Args:
        model: the network (eval mode: the dependency graph is traced with a forward on ``example``).
        example: one input batch.
        flops_target: the FLOPs ratio to reach, in (0, 1).
        ignored_layers: layers whose output channels stay (the classifier).
        iterative_steps: steps of the pruner's schedule.
        pruning_ratio: fraction of every group's channels the schedule reaches at its last step.
        round_to: keep every group's channels a multiple of this (Torch-Pruning's ``round_to``; ``None``: any count).

    Returns:
        The FLOPs ratio reached (pruned / dense) and the number of steps taken.

    Raises:
        RuntimeError: the schedule ended before the FLOPs target was reached.
    """
    import torch_pruning as tp

    from litzoo.framework.profiling import count_flops

    if not 0.0 < flops_target < 1.0:
        raise ValueError(f"flops_target must be in (0, 1), got {flops_target}")
    dense = count_flops(model, example)
    pruner = tp.pruner.MetaPruner(
        model, example, importance=tp.importance.GroupMagnitudeImportance(p=2), pruning_ratio=pruning_ratio,
        iterative_steps=iterative_steps, global_pruning=True, ignored_layers=list(ignored_layers), round_to=round_to,
    )  # fmt: skip
    while (ratio := count_flops(model, example) / dense) > flops_target:
        if pruner.current_step >= iterative_steps:
            raise RuntimeError(f"Torch-Pruning: FLOPs ratio {ratio:.3f} after all {iterative_steps} steps, target {flops_target}")
        pruner.step()
    return ratio, pruner.current_step


#: ResRep without training: every unit's compactor rows are scaled by one factor drawn from U(low, high), seeded (:func:`spread_units`)
RESREP_SPREAD = (0.5, 1.5)


def spread_units(callback: ResRepPruning, model: nn.Module, seed: int, spread: tuple[float, float] = RESREP_SPREAD) -> None:
    """Scale all the compactor rows of each unit (its channels in every tied conv) by one seeded U(``spread``) factor.

    Identity compactors would make every unit tie. One factor per unit makes each unit's rms row norm,
    its importance, exactly that factor, so the global ranking is a uniformly random order of the units;
    a factor per row would not (the rms of a unit of many rows is close to the mean, so units of one row
    would always be ranked lowest and pruned first).
    """
    generator = torch.Generator().manual_seed(seed)
    compactors = callback.all_compactors(model)
    factors = []
    with torch.no_grad():
        for group in callback.groups:
            per_unit = torch.empty(group.num_units).uniform_(*spread, generator=generator)
            factors.append(per_unit)
            per_channel = torch.empty(group.channels)
            for unit in range(group.num_units):
                per_channel[group.unit_channels([unit])] = per_unit[unit]
            for producer in group.producers:
                weight = compactors[producer.placement].weight
                scale = torch.empty(group.channels)
                scale[torch.tensor(producer.rows)] = per_channel  # row rows[c] carries the leader's channel c
                weight.mul_(scale.view(-1, 1, 1, 1).to(weight))
    # the callback's own importance must now be the factors (identity compactor rows have norm 1)
    error = max((norms.double() - f.double()).abs().max().item() for norms, f in zip(callback.unit_norms(model), factors, strict=True))
    if error > 1e-5:
        raise RuntimeError(f"the unit importances differ from the planted factors by {error:.3g}")


def resrep_prune(model: nn.Module, x: torch.Tensor, flops_target: float, prune_residual: bool, seed: int, round_to: int | None = None) -> dict:
    """ResRep to ``flops_target`` in one mask update, in place, without training: the units ranked in a seeded
    random order (:func:`spread_units`); the prune report with the mask updates added."""
    from litzoo.callbacks.resrep import ResRepPruning

    # one mask update reaches the target
    callback = ResRepPruning(flops_target=flops_target, granularity=10**9, prune_residual=prune_residual, round_to=round_to)
    callback.attach(model, x)
    spread_units(callback, model, seed)
    callback.update_masks(model)
    report = callback.prune(model, x)
    return {k: report[k] for k in ("flops_ratio", "removal_error", "removed_channels")} | {"mask_updates": callback.mask_updates}
