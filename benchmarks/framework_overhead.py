"""Training throughput: litzoo (Lightning ``Trainer.fit``) vs a hand-written plain PyTorch loop.

All variants train the digits config's ``RepVGGClassifier`` (configs/repvgg/digits.yaml) on
``DigitsDataModule``'s train split with the same DataLoader, the same SGD parameter groups (no
weight decay on biases / branch BN weights, as ``RepVGGClassifier.configure_optimizers`` builds
them), the same per-step cosine schedule, the same seed and the same thread count:

* ``plain``: a ``for`` loop: forward, cross-entropy (the config's label smoothing), ``zero_grad``,
  backward, ``step``, scheduler step.
* ``lightning``: ``lightning.Trainer(logger=False, enable_checkpointing=False, ...)``; this includes
  what ``RepVGGClassifier.training_step`` does on top of the loop (torchmetrics accuracy, ``self.log``).
* ``lightning + CLI defaults``: as above plus what ``litzoo fit`` adds: a TensorBoardLogger (temp
  dir), ModelCheckpoint (``best`` + ``last``) and LearningRateMonitor(step), ``log_every_n_steps``
  from the config.

Each run trains ``warmup_epochs`` untimed epochs then ``timed_epochs`` timed ones (throughput =
timed samples / time from the start of the first timed epoch to the end of training). Runs
alternate (plain, lightning, lightning + defaults, then rotated) and the medians are reported.

    .venv/bin/python benchmarks/framework_overhead.py
"""

from __future__ import annotations

import math
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field

import lightning as L
import torch
import torch.nn.functional as F
from common import digits_config, markdown_table, quiet_lightning, setup_threads, yes_no
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from torch.optim import SGD
from torch.optim.lr_scheduler import CosineAnnealingLR

from litzoo.datamodules.digits import DigitsDataModule
from litzoo.framework.optim import split_weight_decay
from litzoo.modules.repvgg import RepVGGClassifier

#: goal: litzoo trains at least this fraction of the plain loop's samples per second
GOAL_RATIO = 0.9

PLAIN, LIGHTNING, LIGHTNING_DEFAULTS = "plain PyTorch loop", "litzoo (Lightning fit)", "litzoo + CLI defaults (TensorBoard, checkpoints, LR monitor)"
VARIANTS = (PLAIN, LIGHTNING, LIGHTNING_DEFAULTS)


@dataclass
class Run:
    variant: str
    samples_per_s: float  # timed epochs only
    total_s: float  # model construction to end of training, warm-up epoch(s) included
    threads: int
    state: dict = field(repr=False, default_factory=dict)  # final network weights


class TimedEpochs(Callback):
    """Times from the start of epoch ``first`` to the end of training (epoch-end work included)."""

    def __init__(self, first: int) -> None:
        self.first = first
        self.start: float | None = None
        self.end: float | None = None
        self.threads = 0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == self.first:
            self.start = time.perf_counter()
        self.threads = torch.get_num_threads()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.end = time.perf_counter()


def make_model(config: dict) -> RepVGGClassifier:
    L.seed_everything(config["seed"], verbose=False)
    return RepVGGClassifier(**config["model"], optimizer=lambda params: SGD(params, **config["optimizer"]))


def run_plain(config: dict, datamodule: DigitsDataModule, warmup_epochs: int, timed_epochs: int) -> Run:
    begin = time.perf_counter()
    model = make_model(config)
    net = model.net
    net.train()
    optimizer = SGD(split_weight_decay(model, model.no_weight_decay()), **config["optimizer"])
    loader = datamodule.train_dataloader()
    epochs = warmup_epochs + timed_epochs
    scheduler = CosineAnnealingLR(optimizer, T_max=epochs * len(loader), eta_min=0.0)
    start = begin
    for epoch in range(epochs):
        if epoch == warmup_epochs:
            start = time.perf_counter()
        for batch in loader:
            logits = net(batch["image"])
            loss = F.cross_entropy(logits, batch["label"], label_smoothing=model.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    end = time.perf_counter()
    samples = timed_epochs * len(loader.dataset)
    return Run(PLAIN, samples / (end - start), end - begin, torch.get_num_threads(), _weights(net))


def run_lightning(config: dict, datamodule: DigitsDataModule, warmup_epochs: int, timed_epochs: int, cli_defaults: bool) -> Run:
    begin = time.perf_counter()
    model = make_model(config)
    timer = TimedEpochs(first=warmup_epochs)
    with tempfile.TemporaryDirectory(prefix="litzoo-bench-") as tmp:
        callbacks: list[Callback] = [timer]
        extra: dict = {"logger": False, "enable_checkpointing": False}
        if cli_defaults:
            # what LitzooCLI._instantiate_trainer adds (the model summary is left out: it runs once, at start)
            extra = {"logger": TensorBoardLogger(save_dir=tmp, name="repvgg/digits")}
            # monitor=None: `best` is rewritten every epoch, as in a run whose val/acc improves every epoch
            callbacks += [ModelCheckpoint(filename="best", monitor=None, save_top_k=1, save_last=True), LearningRateMonitor(logging_interval="step")]
        trainer = L.Trainer(
            max_epochs=warmup_epochs + timed_epochs,
            accelerator="cpu",
            devices=1,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            limit_val_batches=0,
            log_every_n_steps=config["log_every_n_steps"],
            default_root_dir=tmp,
            callbacks=callbacks,
            **extra,
        )
        trainer.fit(model, datamodule=datamodule)
    end = time.perf_counter()
    if timer.start is None or timer.end is None:
        raise RuntimeError("the timing callback did not fire: did fit stop early?")
    samples = timed_epochs * len(datamodule.datasets["train"])
    variant = LIGHTNING_DEFAULTS if cli_defaults else LIGHTNING
    return Run(variant, samples / (timer.end - timer.start), end - begin, timer.threads, _weights(model.net))


def _weights(net: torch.nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in net.state_dict().items() if v.is_floating_point()}


def max_weight_diff(a: dict, b: dict) -> float:
    diffs = [(a[k] - b[k]).abs().max().item() for k in a]
    return math.nan if any(math.isnan(d) for d in diffs) else max(diffs)


def main(rounds: int = 12, warmup_epochs: int = 1, timed_epochs: int = 4) -> dict:
    """Alternate the three variants for ``rounds`` rounds; returns medians, ratios and raw runs."""
    threads = setup_threads()
    quiet_lightning()
    start = time.perf_counter()
    config = digits_config()
    datamodule = DigitsDataModule(**config["data"])
    datamodule.setup("fit")
    # one untimed run of each kind first: the first run in a process pays one-time costs (imports, allocator, oneDNN)
    run_plain(config, datamodule, 0, 1)
    run_lightning(config, datamodule, 0, 1, cli_defaults=True)
    runs: dict[str, list[Run]] = {v: [] for v in VARIANTS}
    runners = {
        PLAIN: lambda: run_plain(config, datamodule, warmup_epochs, timed_epochs),
        LIGHTNING: lambda: run_lightning(config, datamodule, warmup_epochs, timed_epochs, cli_defaults=False),
        LIGHTNING_DEFAULTS: lambda: run_lightning(config, datamodule, warmup_epochs, timed_epochs, cli_defaults=True),
    }
    for r in range(rounds):
        for variant in VARIANTS[r % 3 :] + VARIANTS[: r % 3]:
            runs[variant].append(runners[variant]())
    plain_tput = statistics.median(run.samples_per_s for run in runs[PLAIN])
    plain_total = statistics.median(run.total_s for run in runs[PLAIN])
    rows = []
    for variant in VARIANTS:
        tput = statistics.median(run.samples_per_s for run in runs[variant])
        total = statistics.median(run.total_s for run in runs[variant])
        rows.append(
            {
                "variant": variant,
                "samples_per_s": tput,
                "min_samples_per_s": min(run.samples_per_s for run in runs[variant]),
                "max_samples_per_s": max(run.samples_per_s for run in runs[variant]),
                "ratio": tput / plain_tput,
                # each round's runs back to back: robust to slow drifts of the machine's load
                "paired_ratio": statistics.median(a.samples_per_s / b.samples_per_s for a, b in zip(runs[variant], runs[PLAIN])),
                "meets_goal": None if variant == PLAIN else tput / plain_tput >= GOAL_RATIO,
                "total_s": total,
                "total_ratio": plain_total / total,
                "threads": sorted({run.threads for run in runs[variant]}),
                # same seed, data order, optimizer and schedule: the weights should end up equal
                "max_weight_diff_vs_plain": max(max_weight_diff(a.state, b.state) for a, b in zip(runs[variant], runs[PLAIN])),
            }
        )
    loader = datamodule.train_dataloader()
    return {
        "rows": rows,
        "rounds": rounds,
        "warmup_epochs": warmup_epochs,
        "timed_epochs": timed_epochs,
        "train_samples": len(loader.dataset),
        "batches_per_epoch": len(loader),
        "batch_size": loader.batch_size,
        "image_size": datamodule.image_size,
        "optimizer": config["optimizer"],
        "label_smoothing": config["model"].get("label_smoothing", 0.0),
        "threads": threads,
        "goal_ratio": GOAL_RATIO,
        "seconds": time.perf_counter() - start,
    }


def to_markdown(results: dict) -> str:
    table = markdown_table(
        [
            "variant", "samples/s (median)", "min-max over runs", "ratio to plain", f"≥ {results['goal_ratio']}?",
            "median of per-round ratios", "run wall s (median, incl. setup + warm-up)", "wall-time ratio plain/variant",
            "threads", "max abs weight diff vs plain",
        ],
        [
            [
                r["variant"],
                f"{r['samples_per_s']:.0f}",
                f"{r['min_samples_per_s']:.0f}-{r['max_samples_per_s']:.0f}",
                f"{r['ratio']:.3f}",
                "(baseline)" if r["meets_goal"] is None else yes_no(r["meets_goal"]),
                f"{r['paired_ratio']:.3f}",
                f"{r['total_s']:.2f}",
                f"{r['total_ratio']:.3f}",
                ",".join(str(t) for t in r["threads"]),
                f"{r['max_weight_diff_vs_plain']:.2e}",
            ]
            for r in results["rows"]
        ],
    )
    opt = ", ".join(f"{k} {v}" for k, v in results["optimizer"].items())
    return (
        f"{table}\n\n"
        f"Digits train split: {results['train_samples']} images at {results['image_size']}x{results['image_size']}, "
        f"batch {results['batch_size']} ({results['batches_per_epoch']} steps/epoch); SGD {opt}, cosine per step, "
        f"label smoothing {results['label_smoothing']} (from configs/repvgg/digits.yaml); "
        f"{results['warmup_epochs']} warm-up + {results['timed_epochs']} timed epochs per run, "
        f"{results['rounds']} rounds of alternating runs, {results['threads']} threads. "
        "Samples/s counts the timed epochs only; the wall-time column covers a whole run (model construction, "
        "Trainer setup, warm-up epoch). Max abs weight diff: final weights vs the plain loop of the same round "
        "(same seed, data order and schedule: ~0 means the runs did the same work)."
    )


if __name__ == "__main__":
    results = main()
    print(to_markdown(results))
    print(f"\n({results['seconds']:.0f} s)", file=sys.stderr)
