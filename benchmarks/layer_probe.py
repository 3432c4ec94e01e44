"""AV-SUPERB-style multi-task probing (issue 25, item 5): LayerProbe's learned layer weights on a SYNTHETIC planted upstream.

A frozen toy upstream returns 6 hidden states (B, T=4, D=16) per clip: Gaussian noise everywhere, except that task A's
class is planted at layer 1, task B's at layer 3 (both 4 classes, top-1) and task C's (multi-label, 4 tags, mAP) at
layer 2; the last layer keeps a weak copy of each label (strength 0.15 against 0.5), as deep layers of real encoders do.
Per task: the learned softmax weight on the planted layer (1/6 at the start), the weighted-sum probe against the
last-layer probe and the best single-layer probe (chosen on the evaluation split itself: an optimistic baseline),
500 training / 500 evaluation clips, 3 seeds (the seed draws the data and the probes). Two recipes: AV-SUPERB's AdamW
lr 1e-3 (40 epochs of 16 steps here against its 50 000 steps) and lr 1e-2 (the same epochs).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import mean_sd_cell, over_seeds, quiet_lightning, setup_threads  # noqa: E402
from litzoo.callbacks.layer_probe import LayerProbe  # noqa: E402
from litzoo.framework.featurizer import synthetic_planted_layers  # noqa: E402

SEEDS = (0, 1, 2)
LAYERS, DIM, CLASSES, NUM_TRAIN, NUM_VAL = 6, 16, 4, 500, 500
TASKS = {"A": (1, False), "B": (3, False), "C": (2, True)}  # name -> (planted layer, multi-label)
RECIPES = {"lr 1e-3 (AV-SUPERB)": 1e-3, "lr 1e-2": 1e-2}
EPOCHS = 40


class _Clips(Dataset):
    def __init__(self, states: torch.Tensor, labels: torch.Tensor) -> None:
        self.states, self.labels = states, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"audio": self.states[i], "label": self.labels[i]}


class PlantedTask(L.LightningDataModule):
    """SYNTHETIC: hidden states ``(L, T, D)`` per clip in ``batch["audio"]``, the label planted at one layer."""

    def __init__(self, layer: int, multilabel: bool, seed: int) -> None:
        super().__init__()
        states, labels = synthetic_planted_layers(NUM_TRAIN + NUM_VAL, LAYERS, DIM, CLASSES, layer, strength=0.5,
                                                  last_layer_strength=0.15, seed=seed)  # fmt: skip
        if multilabel:  # AudioSet-style multi-hot targets: the planted class plus tag 0 on every third clip
            hot = nn.functional.one_hot(labels, CLASSES).float()
            hot[::3, 0] = 1.0
            labels = hot
        self.train_set, self.val_set = _Clips(states[:NUM_TRAIN], labels[:NUM_TRAIN]), _Clips(states[NUM_TRAIN:], labels[NUM_TRAIN:])

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=32, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=100)


class PlantedUpstream(L.LightningModule):
    """The frozen toy encoder: one fixed orthogonal mixing of every hidden state, exposed as the ``audio`` feature type."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.mix = nn.Linear(DIM, DIM, bias=False)
        nn.init.orthogonal_(self.mix.weight, generator=torch.Generator().manual_seed(seed))

    def forward_hidden_states(self, batch: dict) -> dict[str, list[torch.Tensor]]:
        return {"audio": [self.mix(s) for s in batch["audio"].unbind(1)]}


def run_seed(seed: int) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    tasks = {name: PlantedTask(layer, multilabel, seed=100 * seed + i) for i, (name, (layer, multilabel)) in enumerate(TASKS.items())}
    for recipe, lr in RECIPES.items():
        probe = LayerProbe(tasks, features=["audio"], per_layer=True, epochs=EPOCHS, lr=lr, seed=seed)
        for row in probe.evaluate(PlantedUpstream(seed)):
            planted = TASKS[row["task"]][0]
            out[f"{row['task']}/{recipe}"] = {
                "weight_planted": row["weights"][planted], "argmax_is_planted": float(int(np.argmax(row["weights"])) == planted),
                "weighted": row["weighted"], "last": row["last"], "best": row["best"], "best_is_planted": float(row["best_layer"] == planted),
                "weighted_ge_last": float(row["weighted"] >= row["last"]),
            }  # fmt: skip
    return out


def main() -> dict[str, Any]:
    setup_threads()
    torch.set_num_threads(1)  # tiny matrices: extra threads only add barrier waits
    quiet_lightning()
    start = time.time()
    runs = [run_seed(s) for s in SEEDS]
    results: dict[str, Any] = {"seeds": list(SEEDS), "epochs": EPOCHS}
    results.update(over_seeds(runs))
    results["seconds"] = time.time() - start
    return results


def format_section(results: dict[str, Any]) -> str:
    n = len(results["seeds"])
    lines = ["## Multi-task layer probing (AV-SUPERB Featurizer, issue 25)", "",
             f"`LayerProbe` on a SYNTHETIC frozen upstream of {LAYERS} hidden states where each task's label is planted at one layer "
             f"(A: layer 1, B: layer 3, 4 classes, top-1; C: layer 2, 4 tags, macro mAP) and the last layer keeps a weak copy; "
             f"{NUM_TRAIN} training / {NUM_VAL} evaluation clips, Featurizer (zeros = uniform 1/{LAYERS}) + connector 256 + linear head, "
             f"AdamW, {results['epochs']} epochs of batch 32, mean ± std over seeds {results['seeds']}. Best single layer: chosen on the "
             "evaluation split (optimistic). Counts are seeds out of " + str(n) + ".", "",
             "| task | recipe | weight on planted layer | argmax = planted | weighted sum | last layer | best single layer | best = planted "
             "| weighted ≥ last |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for task in TASKS:
        for recipe in RECIPES:
            r = results[f"{task}/{recipe}"]
            lines.append(f"| {task} | {recipe} | {mean_sd_cell(r['weight_planted'])} | {round(r['argmax_is_planted'][0] * n)}/{n} "
                         f"| {mean_sd_cell(r['weighted'])} | {mean_sd_cell(r['last'])} | {mean_sd_cell(r['best'])} "
                         f"| {round(r['best_is_planted'][0] * n)}/{n} | {round(r['weighted_ge_last'][0] * n)}/{n} |")  # fmt: skip
    lines += ["", f"{results['seconds']:.0f} s on CPU."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(format_section(main()))
