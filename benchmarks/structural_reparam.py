"""ACNet / DBB / RepVGG branches grafted onto one plain CNN: accuracy, training cost, deploy cost.

The plain CNN is a small VGG-style net written here the way a user would (conv-BN-ReLU layers, one
grouped conv, max pooling, global average pooling, a linear head), on digits at 32x32 with the
optimizer, label smoothing and data settings of ``configs/resnet/digits.yaml``; it is small so that
12 trainings fit in minutes on two cores (the ResNet-18 configs train the same way, slower). Each
variant trains the same model with the same optimizer, schedule, data split and epochs, per seed:

* ``plain``: the CNN as it is;
* ``acb`` / ``dbb`` / ``repvgg``: the same CNN with ``StructuralReparam(block=...)``, which
  converts every eligible conv-BN pair at setup and fuses back into the same CNN at fit end.

Reported: test accuracy of the (fused) deploy model, mean ± sample std over the seeds; training
time per step (median over the steps after the first epoch) as a ratio to plain; the deploy
model's CPU latency as a ratio to the plain model's (same architecture, so it must be ~1.0),
measured in alternating rounds.

    .venv/bin/python benchmarks/structural_reparam.py [--epochs 10 --width 16 --seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import lightning as L
import torch
import yaml
from common import ROOT, markdown_table, quiet_lightning, setup_threads
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.optim import SGD

from litzoo.callbacks.structural_reparam import StructuralReparam
from litzoo.datamodules.digits import DigitsDataModule
from litzoo.framework.classification import ImageClassifier
from litzoo.framework.profiling import count_parameters, measure_latency

CONFIG = ROOT / "configs" / "resnet" / "digits.yaml"
VARIANTS = ("plain", "acb", "dbb", "repvgg")


def conv_bn_relu(cin: int, cout: int, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, groups=groups, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


def plain_cnn(width: int, in_channels: int = 1, num_classes: int = 10) -> nn.Sequential:
    """32x32 -> 16x16 -> 8x8: six 3x3 conv-BN-ReLU layers (one grouped), then GAP and a linear head."""
    w = width
    return nn.Sequential(
        *conv_bn_relu(in_channels, w),
        *conv_bn_relu(w, w),
        nn.MaxPool2d(2),
        *conv_bn_relu(w, 2 * w),
        *conv_bn_relu(2 * w, 2 * w, groups=2),
        nn.MaxPool2d(2),
        *conv_bn_relu(2 * w, 4 * w),
        *conv_bn_relu(4 * w, 4 * w),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4 * w, num_classes),
    )


class StepTimer(Callback):
    """Wall time of each training step (forward, backward, optimizer) after the first epoch."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._start = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.current_epoch >= 1:
            self.times.append(time.perf_counter() - self._start)


def load_config() -> tuple[float, dict, dict]:
    """Label smoothing, SGD arguments and data arguments of configs/resnet/digits.yaml."""
    config = yaml.safe_load(CONFIG.read_text())
    model = dict(config["model"]["init_args"])
    optimizer = model.pop("optimizer")["init_args"]
    return float(model.get("label_smoothing", 0.0)), dict(optimizer), dict(config["data"]["init_args"])


def train(variant: str, seed: int, epochs: int, width: int, label_smoothing: float, optimizer_args: dict, data_args: dict) -> dict:
    L.seed_everything(seed, verbose=False)
    model = ImageClassifier(plain_cnn(width), 10, optimizer=lambda params: SGD(params, **optimizer_args), label_smoothing=label_smoothing)
    datamodule = DigitsDataModule(**data_args)
    timer = StepTimer()
    callbacks: list[Callback] = [timer]
    reparam = None
    if variant != "plain":
        reparam = StructuralReparam(block=variant)
        callbacks.append(reparam)
    trainer = L.Trainer(
        max_epochs=epochs,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=1,
    )
    begin = time.perf_counter()
    trainer.fit(model, datamodule)
    fit_s = time.perf_counter() - begin
    accuracy = trainer.test(model, datamodule, verbose=False)[0]["test/acc"]
    return {
        "variant": variant,
        "seed": seed,
        "test_acc": accuracy,
        "step_ms": 1e3 * statistics.median(timer.times),
        "fit_s": fit_s,
        "params_training": (reparam.fusion_report["params_training"] if reparam else count_parameters(model)),
        "params_deploy": count_parameters(model),
        "fusion_error": reparam.fusion_report["max_abs_error"] if reparam else 0.0,
        "converted": len(reparam.report.converted) if reparam else 0,
        "skipped": len(reparam.report.skipped) if reparam else 0,
        "model": model.eval(),
    }


def deploy_latency_ratios(runs: list[dict], batch: torch.Tensor, rounds: int = 30) -> dict[str, float]:
    """Latency of each variant's deploy model over the plain model's, in alternating rounds."""
    models = {variant: next(r["model"] for r in runs if r["variant"] == variant) for variant in VARIANTS}
    per_round: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for _ in range(rounds):
        for variant in VARIANTS:
            per_round[variant].append(measure_latency(models[variant], batch, repeats=5, warmup=1))
    plain = statistics.median(per_round["plain"])
    return {v: statistics.median(per_round[v]) / plain for v in VARIANTS}


def main(epochs: int = 10, width: int = 16, seeds: tuple[int, ...] = (0, 1, 2)) -> dict:
    quiet_lightning()
    setup_threads()
    start = time.perf_counter()
    label_smoothing, optimizer_args, data_args = load_config()
    runs = []
    for seed in seeds:
        for variant in VARIANTS:
            run = train(variant, seed, epochs, width, label_smoothing, optimizer_args, data_args)
            print(f"  seed {seed} {variant}: test/acc {run['test_acc']:.4f}, step {run['step_ms']:.1f} ms, fit {run['fit_s']:.0f} s", file=sys.stderr, flush=True)
            runs.append(run)
    datamodule = DigitsDataModule(**data_args)
    datamodule.setup("test")
    batch = next(iter(datamodule.test_dataloader()))["image"]
    latency = deploy_latency_ratios([r for r in runs if r["seed"] == seeds[0]], batch)
    plain_step = statistics.median(r["step_ms"] for r in runs if r["variant"] == "plain")
    rows = []
    for variant in VARIANTS:
        mine = [r for r in runs if r["variant"] == variant]
        accs = [r["test_acc"] for r in mine]
        step = statistics.median(r["step_ms"] for r in mine)
        rows.append(
            {
                "variant": variant,
                "acc_mean": statistics.mean(accs),
                "acc_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                "accs": accs,
                "step_ms": step,
                "step_ratio": step / plain_step,
                "latency_ratio": latency[variant],
                "params_training": mine[0]["params_training"],
                "params_deploy": mine[0]["params_deploy"],
                "fusion_error": max(r["fusion_error"] for r in mine),
                "converted": mine[0]["converted"],
                "skipped": mine[0]["skipped"],
            }
        )
    return {
        "rows": rows,
        "epochs": epochs,
        "width": width,
        "seeds": list(seeds),
        "batch": len(batch),
        "seconds": time.perf_counter() - start,
    }


def verdict(results: dict) -> str:
    rows = {r["variant"]: r for r in results["rows"]}
    plain = rows["plain"]
    lines = [
        f"Same CNN (width {results['width']}), same optimizer and schedule, {results['epochs']} epochs, seeds {results['seeds']}; "
        "accuracy is the fused deploy model's on the digits test split (360 images)."
    ]
    for variant in VARIANTS[1:]:
        r = rows[variant]
        diff = 100 * (r["acc_mean"] - plain["acc_mean"])
        spread = 100 * max(r["acc_std"], plain["acc_std"])
        judgement = "within one std of plain" if abs(diff) <= spread else ("above plain" if diff > 0 else "below plain")
        lines.append(
            f"- {variant}: {diff:+.2f} points vs plain ({judgement}); training step x{r['step_ratio']:.2f}; "
            f"deploy latency x{r['latency_ratio']:.3f} (same architecture and parameter count: {r['params_deploy'] == plain['params_deploy']})"
        )
    return "\n".join(lines)


def to_markdown(results: dict) -> str:
    headers = [
        "variant",
        f"test acc, mean ± std ({len(results['seeds'])} seeds)",
        "per seed",
        "train step ms",
        "step / plain",
        f"deploy latency / plain (batch {results['batch']})",
        "params training",
        "params deploy",
        "converted / skipped convs",
        "max fusion error (fp32)",
    ]
    rows = [
        [
            r["variant"],
            f"{100 * r['acc_mean']:.2f} ± {100 * r['acc_std']:.2f} %",
            ", ".join(f"{100 * a:.2f}" for a in r["accs"]),
            f"{r['step_ms']:.1f}",
            f"{r['step_ratio']:.2f}",
            f"{r['latency_ratio']:.3f}",
            f"{r['params_training']:,.0f}",
            f"{r['params_deploy']:,.0f}",
            "-" if r["variant"] == "plain" else f"{r['converted']} / {r['skipped']}",
            "-" if r["variant"] == "plain" else f"{r['fusion_error']:.2g}",
        ]
        for r in results["rows"]
    ]
    return markdown_table(headers, rows)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    results = main(args.epochs, args.width, tuple(args.seeds))
    print(verdict(results))
    print()
    print(to_markdown(results))
    print(f"\n{results['seconds']:.0f} s", file=sys.stderr)
