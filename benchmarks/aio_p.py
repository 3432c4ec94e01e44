"""AIO-P at small scale: pretrain a CG predictor on source tasks, predict an unseen task.

    .venv/bin/python benchmarks/aio_p.py      # about 2 minutes on 2 cores once the labels exist

Data: the first 200 networks of ``data/architectures/digits_v1.jsonl`` (50 per family; tiny digit CNNs,
3 training epochs each) labelled on three digits tasks (``datamodules/architecture_tasks.py``):
classification accuracy, noisy-digits accuracy and digit-value regression (metric −RMSE in digit units,
another scale and meaning). Two settings: sources classification + noisy digits → target digit value, and
sources classification + digit value → target noisy digits. Missing task labels are generated
(``litzoo architecture-tasks --benchmark data/architectures/digits_v1.jsonl --limit 200``:
400 trainings, 16 minutes on one core of a busy 2-core machine); a missing benchmark too (about 8 minutes).

30% of the architectures are held out (never seen in training on any task); 20 of them are the few-shot
set (their target labels also fit the target label normaliser, as the official script does), the other
40 are scored. Per setting and seed (3 seeds), one fit gives both predictors:

- **single-task regressor**: the base k-GNN regressor after its phase (40 epochs on the first source task,
  classification), predictions read back with the classification labels' scale (no adapters, no label
  scaling), fine-tuned on the few-shot set with all weights (the official plain regressor's fine-tuning),
  targets on the classification scale; its "+ label scaling" row reads the same predictions with the
  target's scale and fine-tunes on target-scaled labels;
- **AIO-P**: the same base frozen, then 2 K-Adapters (one per source task, 40 epochs each), the unseen task
  predicted by the mean of the adapters and read back with the target's scale; fine-tuned by the rescale
  ``α·I + b`` of the adapters' last layers, or by the adapter heads.

Scores on the 40 held-out architectures' target labels: Spearman ρ (SRCC) and MAE in the target's units.
Training runs on one intra-op thread (faster for these tiny graphs).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import lightning as L
import torch
from torchmetrics.functional import kendall_rank_corrcoef, spearman_corrcoef

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import common  # noqa: E402

from litzoo.datamodules.architecture_tasks import MultiTaskArchitectureDataModule, generate_task_labels, load_task_labels, tasks_path  # noqa: E402
from litzoo.datamodules.architectures import DigitsSplits  # noqa: E402
from litzoo.framework.nas import FAMILIES, generate_architecture_benchmark  # noqa: E402
from litzoo.modules.aio_p import AIOPModule  # noqa: E402

DATA = common.ROOT / "data" / "architectures" / "digits_v1.jsonl"
RECORDS = 200  # the first 200 records: 50 per family
SETTINGS = (  # (source tasks, target task); the base and the single-task regressor train on the first source
    (("classification", "noisy_digits"), "digit_value"),
    (("classification", "digit_value"), "noisy_digits"),
)
SEEDS = (0, 1, 2)
FINETUNE_SAMPLES = 20
TEST_FRACTION = 0.3
BASE_EPOCHS = 40  # official -epochs 40
ADAPTER_EPOCHS = 40  # official -k_epochs 40
FINETUNE_EPOCHS = 100  # official -fine_tune_epochs 100
FINETUNE_BATCH = 4  # official 1; 4 keeps the 5 fine-tunings per seed within the time budget
LR = 1e-3  # official 1e-4 is for tens of thousands of graphs; an epoch here is 8 steps
FINETUNE_LR = {"all": 1e-3, "heads": 1e-3, "rescale": 1e-2}


def ensure_data() -> tuple[Path, dict[str, float]]:
    """The benchmark and its task labels for the first RECORDS records (generated when missing); seconds spent."""
    spent = {"benchmark_s": 0.0, "task_labels_s": 0.0}
    if not DATA.is_file() or sum(1 for _ in DATA.open()) < RECORDS:
        print(f"  generating {DATA} ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        generate_architecture_benchmark(DATA, DigitsSplits(), RECORDS // len(FAMILIES), FAMILIES, seed=0, epochs=3, progress=False)
        spent["benchmark_s"] = time.perf_counter() - start
    labels = load_task_labels(DATA) if tasks_path(DATA).is_file() else {}
    if sum(1 for i, v in labels.items() if i < RECORDS and len(v) == 3) < RECORDS:
        print(f"  labelling {RECORDS} networks on digit_value and noisy_digits ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        generate_task_labels(DATA, limit=RECORDS, progress=False)
        spent["task_labels_s"] = time.perf_counter() - start
    return DATA, spent


class BaseSnapshot(L.Callback):
    """Keeps a copy of the model when the base phase ends (the single-task regressor)."""

    def __init__(self, base_epochs: int) -> None:
        self.base_epochs, self.state = base_epochs, None

    def on_train_epoch_start(self, trainer, module) -> None:
        if trainer.current_epoch == self.base_epochs:
            self.state = {k: v.detach().clone() for k, v in module.model.state_dict().items()}


@torch.no_grad()
def _predict(module: AIOPModule, loader, base_only: bool, target_id: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised unseen-task predictions and raw labels of the target-task graphs of ``loader``."""
    module.eval()
    preds, labels = [], []
    for batch in loader:
        rows = batch.task.view(-1) == target_id
        out = module.model.base(batch) if base_only else module.unseen_task(batch)
        preds.append(out[rows])
        labels.append(batch.y_raw.view(-1)[rows])
    return torch.cat(preds).double(), torch.cat(labels).double()


def _scores(preds_raw: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    return {
        "srcc": float(spearman_corrcoef(preds_raw.float(), labels.float())),
        "kendall": float(kendall_rank_corrcoef(preds_raw.float(), labels.float())),
        "mae": float((preds_raw - labels).abs().mean()),
    }


def _loader_on_scale(items: list, mean: float, std: float, shuffle_seed: int):
    """The few-shot items with ``y`` on another task's standard scale (the no-label-scaling baseline)."""
    from torch_geometric.loader import DataLoader

    moved = []
    for item in items:
        item = item.clone()
        item.y = (item.y_raw - mean) / std
        moved.append(item)
    return DataLoader(moved, batch_size=FINETUNE_BATCH, shuffle=True, generator=torch.Generator().manual_seed(shuffle_seed))


def run(seed: int, source_tasks: tuple[str, ...], target_task: str) -> dict:
    L.seed_everything(seed, workers=True)
    data = MultiTaskArchitectureDataModule(str(DATA), list(source_tasks), target_task, test_fraction=TEST_FRACTION,
                                           finetune_samples=FINETUNE_SAMPLES, batch_size=32, seed=seed)  # fmt: skip
    data.setup()
    module = AIOPModule(base_task=0, adapter_tasks=[0, 1], num_tasks=3, base_epochs=BASE_EPOCHS, adapter_epochs=ADAPTER_EPOCHS,
                        optimizer=lambda p: torch.optim.Adam(p, lr=LR))  # fmt: skip
    snapshot = BaseSnapshot(BASE_EPOCHS)
    trainer = L.Trainer(max_epochs=BASE_EPOCHS + 2 * ADAPTER_EPOCHS, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0, callbacks=[snapshot])  # fmt: skip
    start = time.perf_counter()
    trainer.fit(module, data)
    fit_s = time.perf_counter() - start
    module.eval()

    source, target = data.normalizers[source_tasks[0]], data.normalizers[target_task]
    test = data.test_dataloader()
    few = data.finetune_dataloader(batch_size=FINETUNE_BATCH)

    def on_scale(preds, norm):
        return preds * norm.std + norm.mean

    single = AIOPModule(base_task=0, adapter_tasks=[], num_tasks=3, base_epochs=BASE_EPOCHS)
    single.model.load_state_dict({k: v for k, v in snapshot.state.items() if k.split(".")[0] in ("encoder", "head")}, strict=False)
    single.eval()
    out: dict[str, dict] = {}
    preds, labels = _predict(single, test, base_only=True)
    out["single"] = {"zero": _scores(on_scale(preds, source), labels)}
    out["single_scaled"] = {"zero": _scores(on_scale(preds, target), labels)}
    tuned = single.finetune(
        _loader_on_scale(data.datasets["finetune"], source.mean, source.std, seed), "all", FINETUNE_EPOCHS, FINETUNE_LR["all"]
    )
    out["single"]["few"] = _scores(on_scale(_predict(tuned, test, base_only=True)[0], source), labels)
    tuned = single.finetune(few, "all", FINETUNE_EPOCHS, FINETUNE_LR["all"])
    out["single_scaled"]["few"] = _scores(on_scale(_predict(tuned, test, base_only=True)[0], target), labels)

    preds, _ = _predict(module, test, base_only=False)
    out["aio_p"] = {"zero": _scores(on_scale(preds, target), labels)}
    for mode in ("rescale", "heads"):
        tuned = module.finetune(few, mode, FINETUNE_EPOCHS, FINETUNE_LR[mode])
        out["aio_p"][f"few_{mode}"] = _scores(on_scale(_predict(tuned, test, base_only=False)[0], target), labels)
    out["aio_p"]["few"] = out["aio_p"]["few_rescale"]
    return {"seed": seed, "sources": list(source_tasks), "target": target_task, "fit_s": fit_s, "results": out, "n_test": int(len(labels))}


def main() -> dict:
    common.quiet_lightning()
    start = time.perf_counter()
    _, spent = ensure_data()
    # graphs of ~40 nodes in batches of 32: one intra-op thread is fastest (two threads on a shared 2-core
    # machine made an epoch ~50x slower here)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        runs = []
        for sources, target in SETTINGS:
            for seed in SEEDS:
                print(f"  {'+'.join(sources)} -> {target}, seed {seed} ...", file=sys.stderr, flush=True)
                runs.append(run(seed, sources, target))
    finally:
        torch.set_num_threads(threads)
    return {"runs": runs, "generation": spent, "seconds": time.perf_counter() - start}


ROWS = {
    "single": "single-task regressor ({base} only, no adapters, no label scaling)",
    "single_scaled": "single-task regressor + target label scaling",
    "aio_p": "AIO-P (K=2 adapters + label scaling; few-shot: rescale α·I+b)",
}
UNITS = {"digit_value": "−RMSE in digit units", "noisy_digits": "accuracy"}




def format_section(results: dict) -> str:
    gen = results.get("generation", {})
    made = ", ".join(f"{k.removesuffix('_s')} generated in {v:.0f} s" for k, v in gen.items() if v) or "labels were cached"
    first = results["runs"][0]
    lines = [
        "## NAS predictors: AIO-P on an unseen task",
        "",
        f"First {RECORDS} networks of `data/architectures/digits_v1.jsonl` labelled on three digits tasks (classification, noisy digits, "
        f"digit-value regression). {int(TEST_FRACTION * 100)}% of the architectures held out, never trained on for any task: "
        f"{FINETUNE_SAMPLES} few-shot (they also set the target label scale), {first['n_test']} scored. Base {BASE_EPOCHS} epochs on the first "
        f"source task + {ADAPTER_EPOCHS} per adapter, Adam {LR}; fine-tuning {FINETUNE_EPOCHS} epochs, batch {FINETUNE_BATCH}. "
        f"Seeds {list(SEEDS)} (mean ± sd); {made}; {results['seconds']:.0f} s in all. MAE in the target task's units.",
        "",
    ]
    for sources, target in SETTINGS:
        runs = [r for r in results["runs"] if r["target"] == target and tuple(r["sources"]) == tuple(sources)]
        rows = []
        for key, name in ROWS.items():
            r = [run["results"][key] for run in runs]
            rows.append([name.format(base=sources[0]), common.mean_sd([x["zero"]["srcc"] for x in r]), common.mean_sd([x["zero"]["mae"] for x in r]),
                         common.mean_sd([x["few"]["srcc"] for x in r]), common.mean_sd([x["few"]["mae"] for x in r])])  # fmt: skip
        heads = [run["results"]["aio_p"]["few_heads"] for run in runs]
        rows.append(
            [
                "AIO-P, few-shot by the adapter heads instead",
                "",
                "",
                common.mean_sd([x["srcc"] for x in heads]),
                common.mean_sd([x["mae"] for x in heads]),
            ]
        )
        lines += [
            f"Sources {' + '.join(sources)} → target **{target}** ({UNITS[target]}):",
            "",
            common.markdown_table(
                ["predictor", "SRCC zero-shot", "MAE zero-shot", f"SRCC {FINETUNE_SAMPLES}-shot", f"MAE {FINETUNE_SAMPLES}-shot"], rows
            ),
            "",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    common.setup_threads()
    out = main()
    print(format_section(out))
    print(f"({out['seconds']:.0f} s)")
