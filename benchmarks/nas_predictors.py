"""NAS performance predictors on computation graphs: GENNAPE's ablations on a benchmark made here.

    .venv/bin/python benchmarks/nas_predictors.py      # or as part of `make bench`

Data: ``data/architectures/digits_v1.jsonl``, 100 tiny CNNs of each of four families (ResNet, MobileNet,
Inception, VGG/RepVGG) trained 3 epochs on the digits (``litzoo architectures --per-family 100``; made
here when missing, about 8 minutes). Each family is held out in turn: predictors train on the other
three, are scored zero-shot on the held-out family, then fine-tuned on 50 labelled graphs of it and
scored again on the same remaining graphs (GENNAPE's protocol: NB-101 → other families, "no or minimal
fine-tuning").

Variants (GENNAPE's ablations, ``modules/gennape.py``): the plain k-GNN regressor (no contrastive
pretraining, one head: the official demo), + contrastive pretraining (frozen encoder, one head), and
GENNAPE (contrastive pretraining + fuzzy c-means, 3 heads). 3 seeds each. Baselines on the same test
graphs: Spearman's ρ of the parameter count and of the FLOPs with accuracy — with 3 training epochs
capacity explains much of the accuracy, so a predictor has to be judged against them.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import lightning as L
import torch
from torchmetrics.functional import kendall_rank_corrcoef, spearman_corrcoef

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import common  # noqa: E402

from litzoo.datamodules.architectures import ArchitectureDataModule, DigitsSplits  # noqa: E402
from litzoo.framework.nas import FAMILIES, generate_architecture_benchmark, top_k_precision  # noqa: E402
from litzoo.modules.gennape import GENNAPEModule  # noqa: E402

DATA = common.ROOT / "data" / "architectures" / "digits_v1.jsonl"
PER_FAMILY = 100
SEEDS = (0, 1, 2)
FINETUNE_SAMPLES = 50
REGRESSION_EPOCHS = 40  # the official demo's epochs
CONTRASTIVE_EPOCHS = 20
LR = 1e-3  # the demo's 1e-4 is for NB-101's thousands of steps per epoch; here an epoch is 10 steps
VARIANTS = {
    "k-GNN regressor (no CL, 1 head)": {"contrastive_epochs": 0, "num_clusters": 1},
    "+ contrastive pretraining (1 head)": {"contrastive_epochs": CONTRASTIVE_EPOCHS, "num_clusters": 1},
    "GENNAPE (CL + fuzzy c-means, 3 heads)": {"contrastive_epochs": CONTRASTIVE_EPOCHS, "num_clusters": 3},
}


def ensure_benchmark() -> Path:
    if not DATA.is_file() or sum(1 for _ in DATA.open()) < PER_FAMILY * len(FAMILIES):
        print(f"  generating {DATA} ({PER_FAMILY} networks per family) ...", file=sys.stderr, flush=True)
        generate_architecture_benchmark(DATA, DigitsSplits(), PER_FAMILY, FAMILIES, seed=0, epochs=3, progress=False)
    return DATA


@torch.no_grad()
def _scores(model: GENNAPEModule, loader) -> tuple[torch.Tensor, torch.Tensor]:
    model.eval()
    preds, target = [], []
    for batch in loader:
        preds.append(model(batch))
        target.append(batch.y.view(-1))
    return torch.cat(preds), torch.cat(target)


def _metrics(preds: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    return {"srcc": float(spearman_corrcoef(preds, target)), "kendall": float(kendall_rank_corrcoef(preds, target)),
            "top10": float(top_k_precision(preds, target, 0.1))}  # fmt: skip


def run(held_out: str, variant: str, seed: int) -> dict:
    data = ArchitectureDataModule(str(DATA), test_families=[held_out], finetune_samples=FINETUNE_SAMPLES, batch_size=32, seed=seed)
    data.setup()
    L.seed_everything(seed, verbose=False)
    kwargs = VARIANTS[variant]
    model = GENNAPEModule(**kwargs, optimizer=lambda params: torch.optim.Adam(params, lr=LR))
    trainer = L.Trainer(max_epochs=kwargs["contrastive_epochs"] + REGRESSION_EPOCHS, accelerator="cpu", devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(model, data)
    zero_shot = _metrics(*_scores(model, data.test_dataloader()))
    tuned = model.finetune(data.finetune_dataloader(), epochs=100, lr=LR)
    few_shot = _metrics(*_scores(tuned, data.test_dataloader()))
    return {"held_out": held_out, "variant": variant, "seed": seed, "zero_shot": zero_shot, "few_shot": few_shot}


def baselines(held_out: str, seed: int) -> dict[str, float]:
    """Spearman's ρ of params / FLOPs with accuracy on the test graphs of the split used above."""
    data = ArchitectureDataModule(str(DATA), test_families=[held_out], finetune_samples=FINETUNE_SAMPLES, seed=seed)
    data.setup()
    graphs = data.graphs["test"]
    accuracy = torch.tensor([g.label["accuracy"] for g in graphs])
    return {name: float(spearman_corrcoef(torch.tensor([float(g.label[name]) for g in graphs]), accuracy)) for name in ("params", "flops")}


def main() -> dict:
    common.quiet_lightning()
    start = time.perf_counter()
    ensure_benchmark()
    runs, base = [], []
    for held_out in FAMILIES:
        for seed in SEEDS:
            base.append({"held_out": held_out, "seed": seed, **baselines(held_out, seed)})
            for variant in VARIANTS:
                runs.append(run(held_out, variant, seed))
                r = runs[-1]
                print(f"  {held_out} seed {seed} {variant}: zero-shot {r['zero_shot']['srcc']:.3f}, 50-shot {r['few_shot']['srcc']:.3f}",
                      file=sys.stderr, flush=True)  # fmt: skip
    return {"runs": runs, "baselines": base, "seconds": time.perf_counter() - start}




def format_section(results: dict) -> str:
    runs, base = results["runs"], results["baselines"]
    rows = []
    for held_out in FAMILIES:
        b = [r for r in base if r["held_out"] == held_out]
        rows.append([held_out, "params alone", common.mean_sd([r["params"] for r in b]), "", ""])
        rows.append(["", "FLOPs alone", common.mean_sd([r["flops"] for r in b]), "", ""])
        for variant in VARIANTS:
            v = [r for r in runs if r["held_out"] == held_out and r["variant"] == variant]
            rows.append(["", variant, common.mean_sd([r["zero_shot"]["srcc"] for r in v]), common.mean_sd([r["few_shot"]["srcc"] for r in v]),
                         common.mean_sd([r["few_shot"]["top10"] for r in v])])  # fmt: skip
    mean_rows = []
    for variant in VARIANTS:
        v = [r for r in runs if r["variant"] == variant]
        mean_rows.append([variant, f"{statistics.mean(r['zero_shot']['srcc'] for r in v):.3f}", f"{statistics.mean(r['few_shot']['srcc'] for r in v):.3f}",
                          f"{statistics.mean(r['few_shot']['kendall'] for r in v):.3f}"])  # fmt: skip
    mean_rows.append(["params alone", f"{statistics.mean(r['params'] for r in base):.3f}", "", ""])
    mean_rows.append(["FLOPs alone", f"{statistics.mean(r['flops'] for r in base):.3f}", "", ""])
    return "\n".join([
        "## NAS predictors: GENNAPE on a held-out architecture family",
        "",
        f"`data/architectures/digits_v1.jsonl` ({PER_FAMILY} networks per family, 3 training epochs each). Each family held out in turn; "
        f"predictors ({REGRESSION_EPOCHS} regression epochs, {CONTRASTIVE_EPOCHS} contrastive epochs before them where used, Adam {LR}) "
        f"train on the other three; Spearman ρ on the held-out family zero-shot and after fine-tuning on {FINETUNE_SAMPLES} of its graphs "
        f"(same remaining test graphs), seeds {list(SEEDS)} (mean ± sd):",
        "",
        common.markdown_table(["held-out family", "predictor", "SRCC zero-shot", f"SRCC {FINETUNE_SAMPLES}-shot", f"top-10% precision {FINETUNE_SAMPLES}-shot"], rows),
        "",
        "Mean over the four held-out families:",
        "",
        common.markdown_table(["predictor", "SRCC zero-shot", f"SRCC {FINETUNE_SAMPLES}-shot", f"Kendall τ {FINETUNE_SAMPLES}-shot"], mean_rows),
        "",
    ])  # fmt: skip


if __name__ == "__main__":
    common.setup_threads()
    out = main()
    print(format_section(out))
    print(f"({out['seconds']:.0f} s)")
