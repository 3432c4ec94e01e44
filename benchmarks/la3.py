"""LA3 (issue 26, item 2): label-aware augmentation search on the real digits with planted label-dependent harm, 3 seeds.

The data: scikit-learn's digits (8x8, pixels in [0, 1]), DigitsDataModule's fixed stratified split (validation 180,
test 360 images); the training set is a seeded stratified subset of TRAIN_PER_CLASS images per class (a reduced set, as
LA3's reduced CIFAR, so that augmentation matters). The operation space: the official 16 (``LA3_OPS``) plus FlipX, FlipY
and Rotate180, which change what some digits are (a half-turned 6 is a 9, a mirrored 2 is no digit the classifier
knows) and leave the symmetric ones (0, 1, 8) what they are. A sub-policy *turns* the image when its flips and half
turns do not cancel (composed in the group {id, FlipX, FlipY, Rotate180}).

Per seed: a small CNN (2 conv layers) is pretrained on the training subset without augmentation (PRETRAIN_EPOCHS); the
harm is measured on it (validation accuracy per label under each orientation op); LA3 searches on it with
INIT + EVALUATIONS evaluations (official: 100 + 500), a 5-predictor ensemble of 100 epochs, TOPK sub-policies per label
(official 100), mRMR with ALPHA; the label-agnostic search (one pseudo-label, one shared set of TOPK) gets the same
evaluations. Reported (a): per label, the share of sub-policies that turn the image, for the label-aware sets (at ALPHA
and at the official README's alpha 2.5, from the same predictions) and the label-agnostic set; (b) test accuracy of the
same CNN trained from the same initialisation and batch order for EPOCHS with no augmentation, the label-agnostic policy,
and the label-aware policy, the policies applied by LabelAwareAugmentDataModule.augment (the draws of a fit).
"""

from __future__ import annotations

import json
import sys
import time
from functools import reduce
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import setup_threads  # noqa: E402
from litzoo.datamodules.digits import DigitsDataModule  # noqa: E402
from litzoo.framework.data.augment_ops import LA3_OPS, OPS, ORIENTATION_OPS  # noqa: E402
from litzoo.framework.data.label_aware import LabelAwareAugmentDataModule  # noqa: E402
from litzoo.modules.la3 import LA3Search, collect_split  # noqa: E402

SEEDS = (0, 1, 2)
TRAIN_PER_CLASS = 40
PRETRAIN_EPOCHS = 30
EPOCHS = 40
BATCH = 32
INIT, EVALUATIONS = 50, 150
TOPK = 20
ALPHA = 0.25
OFFICIAL_ALPHA = 2.5
OPS_SEARCHED = tuple(op for op in LA3_OPS if op != "Identity") + ORIENTATION_OPS + ("Identity",)
AFFECTED, SYMMETRIC, OTHERS = (2, 5, 6, 9), (0, 1, 8), (3, 4, 7)
_ORIENTATION = {"FlipX": 1, "FlipY": 2, "Rotate180": 3}  # the Klein group: FlipX then FlipY is a half turn


def turns(sub_policy: tuple[str, ...]) -> bool:
    """Whether the sub-policy's flips and half turns leave the image turned (they do not cancel)."""
    return reduce(lambda state, op: state ^ _ORIENTATION.get(op, 0), sub_policy, 0) != 0


def turned_share(subs: tuple[tuple[str, ...], ...]) -> float:
    return sum(turns(s) for s in subs) / len(subs)


def cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(64 * 16, 10))  # fmt: skip


def train(images: torch.Tensor, labels: torch.Tensor, seed: int, epochs: int, augmenter: LabelAwareAugmentDataModule | None = None) -> nn.Module:
    """The CNN from the seed's initialisation and batch order; each batch augmented by ``augmenter`` (epoch, position)."""
    torch.manual_seed(seed)
    net = cnn()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    order = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        permutation = torch.randperm(len(images), generator=order)
        for position, start in enumerate(range(0, len(images), BATCH)):
            rows = permutation[start : start + BATCH]
            batch = {"image": images[rows], "label": labels[rows]}
            if augmenter is not None:
                batch = augmenter.augment(batch, epoch, position)
            loss = nn.functional.cross_entropy(net(batch["image"]), batch["label"])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return net.eval()


@torch.no_grad()
def accuracy(net: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    return float((net(images).argmax(1) == labels).float().mean())


@torch.no_grad()
def harm_table(net: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> dict[str, list[float]]:
    """Validation accuracy per label, plain and under each orientation op."""
    table = {}
    for name in ("none", *ORIENTATION_OPS):
        shown = images if name == "none" else OPS[name](images, torch.zeros(len(images)))
        correct = net(shown).argmax(1) == labels
        table[name] = [float(correct[labels == k].float().mean()) for k in range(10)]
    return table


def subset(labels: torch.Tensor, per_class: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.cat([torch.nonzero(labels == k).flatten()[torch.randperm(int((labels == k).sum()), generator=g)[:per_class]] for k in range(10)])


def run_seed(seed: int) -> dict[str, Any]:
    data = DigitsDataModule(normalize=False)
    data.setup("fit")
    all_train, all_labels = collect_split(data.train_dataloader())
    rows = subset(all_labels, TRAIN_PER_CLASS, seed)
    train_images, train_labels = all_train[rows], all_labels[rows]
    val_images, val_labels = collect_split(data.val_dataloader())
    test_images, test_labels = collect_split(data.test_dataloader())
    start = time.time()
    pretrained = train(train_images, train_labels, seed, PRETRAIN_EPOCHS)
    harm = harm_table(pretrained, val_images, val_labels)
    common = dict(ops=OPS_SEARCHED, evaluations=EVALUATIONS, init_evaluations=INIT, topk=TOPK, alpha=ALPHA, seed=seed)
    aware = LA3Search(10, label_aware=True, **common)
    aware_history = aware.stage1(_evaluator(aware, pretrained, val_images, val_labels))
    predictions = aware.predict_all(aware_history)
    policies = {f"aware_alpha_{alpha:g}": aware.policy(aware.select(predictions, alpha), predictions, aware_history) for alpha in (ALPHA, OFFICIAL_ALPHA)}
    agnostic = LA3Search(10, label_aware=False, **common)
    agnostic_history = agnostic.stage1(_evaluator(agnostic, pretrained, val_images, val_labels), torch.zeros_like(val_labels))
    agnostic_predictions = agnostic.predict_all(agnostic_history)
    for alpha in (ALPHA, OFFICIAL_ALPHA):
        policies[f"agnostic_alpha_{alpha:g}"] = agnostic.policy(agnostic.select(agnostic_predictions, alpha), agnostic_predictions, agnostic_history)
    search_seconds = time.time() - start
    shares = {name: [turned_share(policy.set_for(k)) for k in range(10)] for name, policy in policies.items()}
    trained = {}
    start = time.time()
    for name, policy in (("none", None), *policies.items()):
        augmenter = None if policy is None else LabelAwareAugmentDataModule(data, policy, seed=seed)
        trained[name] = accuracy(train(train_images, train_labels, seed, EPOCHS, augmenter), test_images, test_labels)
    return {"seed": seed, "harm": harm, "turned_share": shares, "test_accuracy": trained, "search_seconds": search_seconds,
            "train_seconds": time.time() - start, "pretrained_val_accuracy": accuracy(pretrained, val_images, val_labels),
            "examples": {name: {str(k): [list(s) for s in policy.set_for(k)[:3]] for k in (0, 6, 9)} for name, policy in policies.items()}}  # fmt: skip


def _evaluator(search: LA3Search, net: nn.Module, images: torch.Tensor, labels: torch.Tensor):
    from litzoo.modules.la3 import PolicyEvaluator

    return PolicyEvaluator(net, images, labels, 10, search.ops, levels=search.levels)


def group_mean(values: list[float], labels: tuple[int, ...]) -> float:
    return float(np.mean([values[k] for k in labels]))


def main() -> dict[str, Any]:
    setup_threads()
    torch.set_num_threads(1)  # tiny CNN: extra threads only add barrier waits
    start = time.time()
    runs = [run_seed(seed) for seed in SEEDS]
    results: dict[str, Any] = {"seeds": list(SEEDS), "per_seed": runs, "train_per_class": TRAIN_PER_CLASS, "epochs": EPOCHS,
                               "pretrain_epochs": PRETRAIN_EPOCHS, "init": INIT, "evaluations": EVALUATIONS, "topk": TOPK,
                               "alpha": ALPHA, "official_alpha": OFFICIAL_ALPHA, "ops": list(OPS_SEARCHED)}  # fmt: skip
    summary: dict[str, Any] = {"test_accuracy": {}, "turned_share": {}}
    for name in runs[0]["test_accuracy"]:
        values = [run["test_accuracy"][name] for run in runs]
        summary["test_accuracy"][name] = {"mean": float(np.mean(values)), "sd": float(np.std(values)), "values": values}
    for name in runs[0]["turned_share"]:
        per_label = np.mean([run["turned_share"][name] for run in runs], axis=0).tolist()
        summary["turned_share"][name] = {"per_label": per_label, **{group: group_mean(per_label, labels) for group, labels in
                                         (("affected", AFFECTED), ("symmetric", SYMMETRIC), ("others", OTHERS))}}  # fmt: skip
    summary["harm"] = {op: np.mean([run["harm"][op] for run in runs], axis=0).tolist() for op in runs[0]["harm"]}
    results["summary"] = summary
    results["seconds"] = time.time() - start
    return results


def format_section(results: dict[str, Any]) -> str:
    summary = results["summary"]
    seeds = ", ".join(map(str, results["seeds"]))
    lines = [
        "## LA3: label-aware augmentation search on the digits with planted label-dependent harm (issue 26, item 2)", "",
        f"scikit-learn's digits (8x8, [0, 1]), {results['train_per_class']} training images per class (a seeded stratified "
        f"subset), DigitsDataModule's validation (180) and test (360) splits. Operations: the official 16 plus FlipX, FlipY, "
        f"Rotate180. A small CNN pretrained without augmentation ({results['pretrain_epochs']} epochs) is the search's classifier; "
        f"LA3 ({results['init']} random + {results['evaluations']} predictor-guided evaluations, official 100 + 500; 5 predictors, "
        f"100 epochs; top-{results['topk']} per label by mRMR, alpha {results['alpha']:g}) against the label-agnostic search of "
        f"the same evaluations (one shared set of {results['topk']}); both sets also at the official README's alpha 2.5, from the same predictions. Seeds {seeds}; {results['seconds'] / 60:.1f} min on one core.", "",
        "The planted harm, measured on the pretrained CNN (validation accuracy per label, mean over seeds):", "",
        "| shown | " + " | ".join(str(k) for k in range(10)) + " |", "|---" * 11 + "|",
    ]  # fmt: skip
    for op, values in summary["harm"].items():
        lines.append(f"| {op} | " + " | ".join(f"{v:.2f}" for v in values) + " |")
    lines += ["", "(a) Share of sub-policies that turn the image (flips / half turns that do not cancel), per label, mean over seeds; "
              "affected = 2, 5, 6, 9; symmetric = 0, 1, 8; others = 3, 4, 7:", "",
              "| policy | " + " | ".join(str(k) for k in range(10)) + " | affected | symmetric | others |", "|---" * 14 + "|"]  # fmt: skip
    for name, row in summary["turned_share"].items():
        lines.append(f"| {name} | " + " | ".join(f"{v:.2f}" for v in row["per_label"]) + f" | {row['affected']:.2f} | {row['symmetric']:.2f} | {row['others']:.2f} |")
    lines += ["", f"(b) Test accuracy of the same CNN, same initialisation and batch order, {results['epochs']} epochs (mean ± sd over seeds; "
              "per seed in brackets):", "", "| training | test accuracy |", "|---|---|"]  # fmt: skip
    labels = {"none": "no augmentation"}
    for alpha in (results["alpha"], results["official_alpha"]):
        labels[f"agnostic_alpha_{alpha:g}"] = f"label-agnostic LA3 policy, same budget (alpha {alpha:g})"
        labels[f"aware_alpha_{alpha:g}"] = f"label-aware LA3 policy (alpha {alpha:g})"
    for name, label in labels.items():
        cell = summary["test_accuracy"][name]
        lines.append(f"| {label} | {cell['mean']:.4f} ± {cell['sd']:.4f} ({', '.join(f'{v:.3f}' for v in cell['values'])}) |")
    return "\n".join(lines)


if __name__ == "__main__":
    output = main()
    saved = Path(__file__).resolve().parents[1] / "runs" / "benchmarks" / "la3.json"
    saved.parent.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps(output, indent=1))
    print(format_section(output))
