"""Pruning on digits: ResRep and GSM against dense training and two well-known baselines.

All runs train the CIFAR-stem ResNet-18 of ``configs/resnet/digits.yaml`` on digits at 32x32 with
that config's optimizer (SGD momentum 0.9, cosine per step, label smoothing 0.1, no weight decay on
biases and BN), for the same number of epochs (``configs/resrep/digits.yaml``'s), per seed:

* ``dense``: no pruning;
* ``resrep``: ``ResRepPruning`` with the settings of ``configs/resrep/digits.yaml`` (FLOPs target
  0.5); the pruned model is tested;
* ``torch-pruning``: structured magnitude pruning with Torch-Pruning (``MetaPruner`` with group L2
  magnitude, global ranking, its dependency graph free to prune the residual channels too): dense
  training for the epochs ResRep spends before reaching its target, one-shot pruning to the same
  FLOPs target, then fine-tuning for the remaining epochs with a fresh optimizer and schedule;
* ``gsm``: ``GlobalSparseMomentum`` with the settings of ``configs/gsm/digits.yaml`` (90% zeros;
  that config's lr 0.01, momentum 0.98, weight decay 0.0169 and batch 16: the decay budget);
* ``l1-unstructured``: Lightning's ``ModelPruning`` (global L1 unstructured, the same conv and
  linear weights, 90% zeros) applied after the same dense epochs, masks kept while fine-tuning.

Reported: test accuracy (mean ± std over seeds), parameters (non-zero for the unstructured
methods), FLOPs per sample (``torch.utils.flop_counter``) and CPU latency as ratios to dense,
measured in alternating rounds.

    .venv/bin/python benchmarks/pruning.py [--seeds 0 1 2] [--epochs 30] [--width 16]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import lightning as L
import torch
import yaml
from common import ROOT, markdown_table, quiet_lightning, setup_threads, torch_pruning_to_flops
from lightning.pytorch.callbacks import ModelPruning
from torch import nn
from torch.optim import SGD

from litzoo.callbacks.gsm import GlobalSparseMomentum
from litzoo.callbacks.resrep import ResRepPruning
from litzoo.datamodules.digits import DigitsDataModule
from litzoo.modules.resnet import ResNetClassifier

RESREP_CONFIG = ROOT / "configs" / "resrep" / "digits.yaml"
GSM_CONFIG = ROOT / "configs" / "gsm" / "digits.yaml"
VARIANTS = ("dense", "resrep", "torch-pruning", "gsm", "l1-unstructured")


def _config(path) -> tuple[dict, dict, dict, dict, int]:
    """Model arguments, SGD arguments, data arguments, the first callback's arguments, epochs."""
    config = yaml.safe_load(path.read_text())
    model = dict(config["model"]["init_args"])
    optimizer = dict(model.pop("optimizer")["init_args"])
    callback = dict(config["trainer"]["callbacks"][0].get("init_args", {}))
    return model, optimizer, dict(config["data"]["init_args"]), callback, int(config["trainer"]["max_epochs"])


def _trainer(epochs: int, callbacks: list) -> L.Trainer:
    return L.Trainer(
        max_epochs=epochs, callbacks=callbacks, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, accelerator="cpu", devices=1, num_sanity_val_steps=0,
    )


def _model(model_args: dict, optimizer_args: dict, width: int) -> ResNetClassifier:
    return ResNetClassifier(**{**model_args, "width": width}, optimizer=lambda params: SGD(params, **optimizer_args))


def _weights(model: nn.Module) -> list[tuple[nn.Module, str]]:
    return [(m, "weight") for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def _nonzero(model: nn.Module) -> int:
    return sum(int((p != 0).sum()) for p in model.parameters())


def _flops(model: nn.Module, sample: torch.Tensor) -> int:
    from litzoo.framework.profiling import count_flops

    return count_flops(model, sample)


def train(variant: str, seed: int, epochs: int, width: int, dense_epochs: int) -> dict:
    model_args, optimizer_args, data_args, resrep_args, _ = _config(RESREP_CONFIG)
    L.seed_everything(seed, verbose=False)
    data = DigitsDataModule(**data_args)
    model = _model(model_args, optimizer_args, width)
    sample = torch.zeros(1, model_args.get("in_channels", 1), data_args["image_size"], data_args["image_size"])
    base_flops = _flops(model, sample)
    begin = time.perf_counter()
    if variant == "dense":
        _trainer(epochs, []).fit(model, data)
    elif variant == "resrep":
        _trainer(epochs, [ResRepPruning(**resrep_args)]).fit(model, data)
    elif variant == "gsm":  # its config's optimizer and batch size (GSM needs many small steps, see the config)
        _, gsm_optimizer, gsm_data, gsm_args, _ = _config(GSM_CONFIG)
        model, data = _model(model_args, gsm_optimizer, width), DigitsDataModule(**gsm_data)
        _trainer(epochs, [GlobalSparseMomentum(**gsm_args)]).fit(model, data)
    elif variant == "l1-unstructured":
        pruning = ModelPruning("l1_unstructured", parameters_to_prune=_weights(model), amount=lambda epoch: 0.9 if epoch == dense_epochs - 1 else 0.0,
                               use_global_unstructured=True, make_pruning_permanent=True, use_lottery_ticket_hypothesis=False, verbose=0)
        _trainer(epochs, [pruning]).fit(model, data)
    elif variant == "torch-pruning":
        _trainer(dense_epochs, []).fit(model, data)
        target = resrep_args.get("flops_target", 0.5)
        model.eval()
        torch_pruning_to_flops(model, sample, target, ignored_layers=[model.net.fc] if hasattr(model.net, "fc") else [])
        model.train()
        _trainer(epochs - dense_epochs, []).fit(model, data)  # a fresh optimizer and cosine schedule
    else:
        raise ValueError(variant)
    fit_s = time.perf_counter() - begin
    accuracy = _trainer(1, []).test(model, data, verbose=False)[0]["test/acc"]
    return {
        "variant": variant, "seed": seed, "test_acc": accuracy, "fit_s": fit_s, "model": model.eval(),
        "params": sum(p.numel() for p in model.parameters()), "nonzero": _nonzero(model),
        "flops_ratio": _flops(model, sample) / base_flops,
    }


def latency_ratios(models: dict[str, nn.Module], batch: torch.Tensor, rounds: int = 20) -> dict[str, float]:
    from litzoo.framework.profiling import measure_latency

    times: dict[str, list[float]] = {v: [] for v in models}
    for _ in range(rounds):
        for variant, model in models.items():
            times[variant].append(measure_latency(model, batch, repeats=3, warmup=1))
    dense = statistics.median(times["dense"])
    return {v: statistics.median(t) / dense for v, t in times.items()}


def main(seeds: tuple[int, ...] = (0, 1, 2), epochs: int | None = None, width: int = 16, dense_epochs: int = 10) -> dict:
    quiet_lightning()
    setup_threads()
    start = time.perf_counter()
    epochs = epochs or _config(RESREP_CONFIG)[4]
    runs = []
    for seed in seeds:
        for variant in VARIANTS:
            run = train(variant, seed, epochs, width, dense_epochs)
            print(f"  seed {seed} {variant}: test/acc {run['test_acc']:.4f}, FLOPs x{run['flops_ratio']:.3f}, fit {run['fit_s']:.0f} s", file=sys.stderr, flush=True)
            runs.append(run)
    data = DigitsDataModule(**_config(RESREP_CONFIG)[2])
    data.setup("test")
    batch = next(iter(data.test_dataloader()))["image"]
    latency = latency_ratios({v: next(r["model"] for r in runs if r["variant"] == v and r["seed"] == seeds[0]) for v in VARIANTS}, batch)
    dense_params = next(r["params"] for r in runs if r["variant"] == "dense")
    rows = []
    for variant in VARIANTS:
        mine = [r for r in runs if r["variant"] == variant]
        accs = [r["test_acc"] for r in mine]
        rows.append({
            "variant": variant, "accs": accs, "acc_mean": statistics.mean(accs), "acc_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
            "params": statistics.mean(r["params"] for r in mine), "nonzero": statistics.mean(r["nonzero"] for r in mine),
            "params_ratio": statistics.mean(r["params"] for r in mine) / dense_params,
            "nonzero_ratio": statistics.mean(r["nonzero"] for r in mine) / dense_params,
            "flops_ratio": statistics.mean(r["flops_ratio"] for r in mine), "latency_ratio": latency[variant],
            "fit_s": statistics.mean(r["fit_s"] for r in mine),
        })
    return {"rows": rows, "seeds": list(seeds), "epochs": epochs, "width": width, "dense_epochs": dense_epochs, "batch": len(batch), "seconds": time.perf_counter() - start}


PROTOCOL = """Protocol: every run trains the same ResNet-18 with the same optimizer and epoch count. `resrep`
prunes while training (compactors, masks on the config's schedule) and tests the physically pruned
model; `torch-pruning` trains dense for 10 epochs, prunes once to the same FLOPs target with global
group-L2 magnitude (its dependency graph may also cut the residual channels ResRep leaves alone),
then fine-tunes for the remaining epochs with a fresh cosine schedule; `gsm` trains with Global
Sparse Momentum from scratch with its config's optimizer and batch 16 (the decay budget needs many
small steps) and applies the final global magnitude mask (90% zeros, no fine-tuning); `l1-unstructured` is Lightning's `ModelPruning` (global L1, 90% of the same conv and
linear weights) after the same 10 dense epochs, masks kept while fine-tuning. Unstructured zeros do
not shrink the tensors: their FLOPs, parameters and latency stay at the dense model's."""


def verdict(results: dict) -> str:
    rows = {r["variant"]: r for r in results["rows"]}
    dense = rows["dense"]
    lines = [f"ResNet-18 (CIFAR stem, width {results['width']}) on digits 32x32, {results['epochs']} epochs per run, seeds {results['seeds']}; test split of 360 images."]
    for variant, goal in (("resrep", "within 1 point of dense at ≤ 0.5 FLOPs"), ("gsm", "within 1 point of dense at 90% zeros")):
        r = rows[variant]
        diff = 100 * (r["acc_mean"] - dense["acc_mean"])
        met = diff >= -1.0
        lines.append(f"- {variant}: {diff:+.2f} points vs dense; goal {goal}: {'met' if met else 'not met'}.")
    for ours, theirs in (("resrep", "torch-pruning"), ("gsm", "l1-unstructured")):
        diff = 100 * (rows[ours]["acc_mean"] - rows[theirs]["acc_mean"])
        lines.append(f"- {ours} vs {theirs}: {diff:+.2f} points ({'ours lower' if diff < 0 else 'ours not lower'}).")
    return "\n".join(lines)


def to_markdown(results: dict) -> str:
    headers = ["variant", f"test acc, mean ± std ({len(results['seeds'])} seeds)", "per seed", "params / dense", "non-zero weights / dense",
               "FLOPs / dense", f"CPU latency / dense (batch {results['batch']})", "fit s"]
    rows = [
        [r["variant"], f"{100 * r['acc_mean']:.2f} ± {100 * r['acc_std']:.2f} %", ", ".join(f"{100 * a:.2f}" for a in r["accs"]),
         f"{r['params_ratio']:.3f}", f"{r['nonzero_ratio']:.3f}", f"{r['flops_ratio']:.3f}", f"{r['latency_ratio']:.3f}", f"{r['fit_s']:.0f}"]
        for r in results["rows"]
    ]
    return markdown_table(headers, rows)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--dense-epochs", type=int, default=10)
    args = parser.parse_args()
    results = main(tuple(args.seeds), args.epochs, args.width, args.dense_epochs)
    print(to_markdown(results))
    print()
    print(verdict(results))
