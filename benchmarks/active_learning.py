"""Deep active learning on scikit-learn's digits (issue 26): area under the learning curve of each query strategy.

The protocol of the deep active learning survey's evaluation (Ren et al., ACM CSUR 2021; notes ``other_methods.md``
§F2): the 1,257 training images are the pool, 20 random initial labels, +20 per round for 10 rounds (11 labelled-set
sizes, 20 … 220), test accuracy on the 360 test images after each round, 3 seeds (the seed draws the initial labels,
the initial weights and every random choice). Every round trains the MC-dropout CNN of Gal et al. (2017; 3x3 kernels for
8x8 images) from the *same* initial weights (``reinit="reset"``) for 300 Adam steps (lr 1e-3, batch 32), through
:class:`litzoo.framework.active.ActiveLearningLoop`, exactly as ``litzoo active-learn -c
configs/active_learning/digits.yaml`` does. AUC = the trapezoid area under test accuracy vs labels over the label range
(the curve's mean height).

Second pool, the redundant-duplicates variant of the survey's claim: every training image five times (6,285 pool
entries, 1,257 distinct). A batch of top-k uncertainty picks several copies of the same uncertain image and so learns
less per label; core-set (k-center: a copy of a pick is at distance 0) and BADGE (k-means++: D = 0) do not pick copies.
Reported there: AUC and the distinct images among the 220 labels.
"""

from __future__ import annotations

import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import markdown_table, quiet_lightning, setup_threads  # noqa: E402
from litzoo.datamodules.digits import DigitsDataModule  # noqa: E402
from litzoo.framework.active import ActiveLearningDataModule, ActiveLearningLoop, ActivePool, MCDropoutCNN, learning_curve_auc  # noqa: E402
from litzoo.framework.classification import ImageClassifier  # noqa: E402
from litzoo.framework.data import DictTensorDataset  # noqa: E402

SEEDS = (0, 1, 2)
STRATEGIES = ("random", "least_confidence", "margin", "entropy", "bald", "coreset", "badge")
DUPLICATE_STRATEGIES = ("random", "entropy", "bald", "coreset", "badge")
COPIES = 5
INITIAL, QUERY, ROUNDS, STEPS = 20, 20, 10, 300


class DuplicatedDigits(DigitsDataModule):
    """Digits whose training split holds every image ``COPIES`` times (copy ``c`` of image ``i`` at ``c * n + i``)."""

    def build_datasets(self, split: str) -> dict[str, DictTensorDataset]:
        datasets = super().build_datasets(split)
        train = datasets["train"]
        datasets["train"] = DictTensorDataset(image=train.tensors["image"].repeat(COPIES, 1, 1, 1), label=train.tensors["label"].repeat(COPIES))
        return datasets


def run_one(strategy: str, seed: int, duplicated: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="litzoo-al-") as folder:
        data = (DuplicatedDigits if duplicated else DigitsDataModule)(batch_size=256)
        dm = ActiveLearningDataModule(data, initial_labels=INITIAL, query_size=QUERY, rounds=ROUNDS, strategy=strategy, mc_samples=20,
                                      pool_file=f"{folder}/pool.json", seed=seed, batch_size=32)  # fmt: skip

        def build_model(round_: int) -> L.LightningModule:
            return ImageClassifier(MCDropoutCNN(image_size=8, kernel_size=3), 10, optimizer=partial(torch.optim.Adam, lr=1e-3))

        def build_trainer(round_: int, round_dir: Path) -> L.Trainer:
            return L.Trainer(max_steps=STEPS, max_epochs=-1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False, accelerator="cpu", devices=1, limit_val_batches=0, num_sanity_val_steps=0)  # fmt: skip

        start = time.perf_counter()
        results = ActiveLearningLoop(dm, build_model, build_trainer, folder).run()
        pool = ActivePool.load(f"{folder}/pool.json")
    labelled = pool.labelled.tolist()
    distinct = len({i % (pool.size // COPIES) for i in labelled}) if duplicated else len(set(labelled))
    labels = [r["labels"] for r in results]
    accuracy = [r["test/acc"] for r in results]
    auc = learning_curve_auc(labels, accuracy)
    return {"labels": labels, "accuracy": accuracy, "auc": auc, "distinct": distinct, "seconds": time.perf_counter() - start}


def main() -> dict[str, Any]:
    setup_threads()
    quiet_lightning()
    start = time.perf_counter()
    results: dict[str, Any] = {"plain": {}, "duplicates": {}}
    for name, strategies, duplicated in (("plain", STRATEGIES, False), ("duplicates", DUPLICATE_STRATEGIES, True)):
        for strategy in strategies:
            results[name][strategy] = [run_one(strategy, seed, duplicated) for seed in SEEDS]
            runs = results[name][strategy]
            print(f"{name} {strategy}: AUC {np.mean([r['auc'] for r in runs]):.4f} final {np.mean([r['accuracy'][-1] for r in runs]):.4f} "
                  f"distinct {np.mean([r['distinct'] for r in runs]):.0f} ({sum(r['seconds'] for r in runs):.0f} s)", flush=True)  # fmt: skip
    results["seconds"] = time.perf_counter() - start
    return results


def _cell(values: list[float], digits: int = 3) -> str:
    return f"{np.mean(values):.{digits}f} ± {np.std(values):.{digits}f}"


def format_section(results: dict[str, Any]) -> str:
    lines = ["## Deep active learning on digits: area under the learning curve per query strategy (issue 26)", ""]
    lines.append(
        f"Pool = the 1,257 digits training images; {INITIAL} random initial labels, +{QUERY} per round for {ROUNDS} rounds; the MC-dropout CNN "
        f"of Gal et al. (2017) trained from the same initial weights every round ({STEPS} Adam steps, lr 1e-3, batch 32); test accuracy on 360 "
        "images; AUC = mean height of the accuracy-vs-labels curve (trapezoids over 20 … 220 labels); mean ± sd over seeds 0, 1, 2 and the "
        "per-seed AUC gain over random (paired: same seed, same initial labels and weights). `ActiveLearningLoop`, as "
        "`litzoo active-learn -c configs/active_learning/digits.yaml` runs it."
    )
    for name, title in (("plain", "Plain pool"), ("duplicates", f"Redundant-duplicates pool (every image {COPIES}×)")):
        runs = results[name]
        random_auc = [r["auc"] for r in runs["random"]]
        rows = []
        for strategy, seeds in runs.items():
            aucs = [r["auc"] for r in seeds]
            gains = [a - b for a, b in zip(aucs, random_auc, strict=True)]
            rows.append([strategy, _cell(aucs), _cell(gains), f"{sum(g > 0 for g in gains)}/3", _cell([r["accuracy"][0] for r in seeds]),
                         _cell([r["accuracy"][len(r['accuracy']) // 2] for r in seeds]), _cell([r["accuracy"][-1] for r in seeds]),
                         f"{np.mean([r['distinct'] for r in seeds]):.0f}"])  # fmt: skip
        lines += ["", f"**{title}**", "", markdown_table(["strategy", "AUC", "AUC − random", "seeds above random", "acc @ 20 labels", "acc @ 120",
                                                        "acc @ 220", "distinct images labelled"], rows)]  # fmt: skip
    lines += ["", f"Run time: {results['seconds']:.0f} s (`python benchmarks/active_learning.py`)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(format_section(main()))
