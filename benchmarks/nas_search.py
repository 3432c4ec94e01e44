"""Predictor-guided evolutionary NAS vs random search, with the same number of real trainings.

    .venv/bin/python benchmarks/nas_search.py      # or as part of `make bench`

The claim (GENNAPE, Mills et al., AAAI 2023, arXiv 2211.17226: "when paired with a search algorithm,
GENNAPE can find architectures that improve accuracy while reducing FLOPs"; Han et al., SDM 2023,
arXiv 2302.10835: the transferable predictor in an evolutionary search): with a budget of N real
evaluations under a FLOPs limit, the best network found by training the N best-predicted candidates of a
predictor-guided evolution beats the best of N random networks within the same limit.

Setup (all on the CPU, digits 8x8):
- labelled data: ``data/architectures/digits_v1.jsonl`` (400 networks, 3 epochs each); when it is missing,
  a benchmark of ``GENERATE_PER_FAMILY`` = 50 networks per family is generated into
  ``data/architectures/nas_search_pf50.jsonl`` (200 trainings, about 2-4 minutes on 2 cores), once.
- target families ``TARGETS``: ``mobilenet`` (the family of Han et al.'s MobileNetV3 search, chosen first) and
  ``inception`` (added after mobilenet, so the section does not rest on one family); FLOPs limit = the median
  FLOPs of the target's networks in that benchmark.
- predictor: a GENNAPE k-GNN (:class:`litzoo.modules.gennape.GENNAPEModule`, official demo encoder: 6 GraphConv
  layers × 32) trained on the computation graphs of the **other three families only** (the target family
  is never labelled for it: zero-shot transfer, the papers' unseen-family setting; no few-shot fine-tuning,
  which would spend real evaluations outside the budget N). Chosen for ≤ 2 min of training: no contrastive
  phase, one head (``contrastive_epochs=0, num_clusters=1``, the "plain k-GNN" ablation of the module),
  Adam lr 1e-3 (not the demo's 1e-4, which needs many more epochs), ``PREDICTOR_EPOCHS`` epochs; trained
  once (seed 0) and shared by the seeds below. Its zero-shot SRCC on the target family is reported.
- search: :func:`litzoo.framework.nas.evolutionary_search` (regularized evolution, population 50,
  tournament 10, 25 children per generation, ``GENERATIONS`` = 12 generations: 350 candidates, fewer
  predictor calls as repeats reuse their score), scored by the predictor; the top
  N distinct predicted candidates are trained (3 epochs, as the benchmark labels).
- baseline: :func:`litzoo.framework.nas.random_search`, N random networks within the limit, trained the same way.
- seeds 0, 1, 2 (search / random draws and training seeds); the same training seed for both arms.
"""

from __future__ import annotations

import logging
import statistics
import sys
import time
import warnings
from pathlib import Path

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import common  # noqa: E402

from litzoo.datamodules.architectures import ArchitectureDataModule, DigitsSplits  # noqa: E402
from litzoo.framework.graph import load_graphs_jsonl  # noqa: E402
from litzoo.framework.nas import (  # noqa: E402
    FAMILIES,
    evaluate_candidates,
    evolutionary_search,
    generate_architecture_benchmark,
    predictor_score_fn,
    random_search,
)
from litzoo.modules.gennape import GENNAPEModule  # noqa: E402

BENCHMARK = common.ROOT / "data" / "architectures" / "digits_v1.jsonl"
GENERATED = common.ROOT / "data" / "architectures" / "nas_search_pf50.jsonl"
GENERATE_PER_FAMILY = 50
TARGETS = ("mobilenet", "inception")
SEEDS = (0, 1, 2)
N_EVALUATIONS = 20
POPULATION, SAMPLE_SIZE, CHILDREN, GENERATIONS = 50, 10, 25, 12
PREDICTOR_EPOCHS = 30
TRAIN_EPOCHS = 3


def labelled_benchmark() -> tuple[Path, float]:
    """The labelled benchmark (generated when missing) and the seconds spent generating it."""
    if BENCHMARK.is_file():
        return BENCHMARK, 0.0
    start = time.perf_counter()
    path = generate_architecture_benchmark(GENERATED, DigitsSplits(), per_family=GENERATE_PER_FAMILY, epochs=TRAIN_EPOCHS, progress=False)
    return path, time.perf_counter() - start


def flops_limit(path: Path, family: str) -> float:
    """The median FLOPs (batch 1) of ``family``'s networks in the benchmark."""
    return float(statistics.median(g.label["flops"] for g in load_graphs_jsonl(path) if g.family == family))


def train_predictor(path: Path, family: str, seed: int = 0) -> tuple[GENNAPEModule, dict]:
    """GENNAPE k-GNN trained on the other families' graphs; its zero-shot test metrics on ``family``."""
    L.seed_everything(seed, verbose=False)
    data = ArchitectureDataModule(str(path), target="accuracy", test_families=[family], batch_size=32, seed=seed)
    model = GENNAPEModule(contrastive_epochs=0, num_clusters=1, optimizer=lambda p: torch.optim.Adam(p, lr=1e-3))
    trainer = L.Trainer(max_epochs=PREDICTOR_EPOCHS, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    start = time.perf_counter()
    trainer.fit(model, data)
    seconds = time.perf_counter() - start
    metrics = trainer.test(model, data, verbose=False)[0]
    return model.eval(), {"seconds": seconds, "srcc": metrics["test/srcc"], "kendall": metrics["test/kendall"],
                          "train_families": sorted({g.family for g in data.graphs["train"]})}  # fmt: skip


def _summary(records: list[dict]) -> dict:
    best = max(records, key=lambda r: r["accuracy"])
    return {"best_accuracy": best["accuracy"], "best_flops": best["flops"], "best_spec": best["spec"],
            "mean_accuracy": statistics.mean(r["accuracy"] for r in records),
            "mean_flops": statistics.mean(r["flops"] for r in records)}  # fmt: skip


def search_and_evaluate(predictor: GENNAPEModule, target: str, limit: float, seed: int) -> dict:
    """One seed: the N best-predicted candidates of the evolution and N random ones, trained for real."""
    start = time.perf_counter()
    evo = evolutionary_search(target, predictor_score_fn(predictor), limit, population=POPULATION, generations=GENERATIONS,
                              sample_size=SAMPLE_SIZE, children=CHILDREN, top_k=N_EVALUATIONS, seed=seed)  # fmt: skip
    search_seconds = time.perf_counter() - start
    digits = DigitsSplits()
    guided = evaluate_candidates(evo.best, digits, TRAIN_EPOCHS, seed)
    rand = random_search(target, N_EVALUATIONS, limit, seed=seed)
    random_records = evaluate_candidates(rand.best, digits, TRAIN_EPOCHS, seed)
    return {"seed": seed, "search_seconds": search_seconds, "predictor_calls": evo.score_calls, "guided": _summary(guided),
            "random": _summary(random_records), "guided_records": guided, "random_records": random_records}  # fmt: skip


def run_target(path: Path, target: str) -> dict:
    """The predictor, the limit and the three seeds' comparison for one target family."""
    limit = flops_limit(path, target)
    predictor, predictor_info = train_predictor(path, target)
    print(
        f"  {target} predictor: {predictor_info['seconds']:.0f} s, zero-shot SRCC {predictor_info['srcc']:.3f}", file=sys.stderr, flush=True
    )
    runs = []
    for seed in SEEDS:
        runs.append(search_and_evaluate(predictor, target, limit, seed))
        r = runs[-1]
        print(f"  {target} seed {seed}: guided best {r['guided']['best_accuracy']:.4f} ({r['guided']['best_flops'] / 1e6:.3f} MFLOPs), "
              f"random best {r['random']['best_accuracy']:.4f} ({r['random']['best_flops'] / 1e6:.3f} MFLOPs)", file=sys.stderr, flush=True)  # fmt: skip
    return {"target": target, "flops_limit": limit, "predictor": predictor_info, "runs": runs}


def main(targets: tuple[str, ...] = TARGETS) -> dict:
    """The section's measurements for each target family (``--targets inception`` runs one)."""
    for target in targets:
        if target not in FAMILIES:
            raise ValueError(f"unknown target family '{target}' (expected one of {', '.join(FAMILIES)})")
    common.quiet_lightning()
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*SpearmanCorrcoef.*")
    start = time.perf_counter()
    path, generate_seconds = labelled_benchmark()
    results = [run_target(path, target) for target in targets]
    return {"benchmark": str(path.relative_to(common.ROOT)) if path.is_relative_to(common.ROOT) else str(path),
            "generate_seconds": generate_seconds, "n": N_EVALUATIONS, "targets": results,
            "seconds": time.perf_counter() - start}  # fmt: skip


def _mean_sd(values: list[float], scale: float = 1.0, digits: int = 3) -> str:
    values = [v / scale for v in values]
    if len(values) > 1:
        return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"
    return f"{values[0]:.{digits}f}"


def _target_lines(result: dict, n: int) -> list[str]:
    runs, limit, p, target = result["runs"], result["flops_limit"], result["predictor"], result["target"]
    rows = []
    for arm, label in (("guided", f"GENNAPE-guided evolution, top {n} predicted"), ("random", f"random search, {n} networks")):
        rows.append([
            label,
            _mean_sd([r[arm]["best_accuracy"] for r in runs], digits=4),
            _mean_sd([r[arm]["best_flops"] for r in runs], 1e6),
            _mean_sd([r[arm]["mean_accuracy"] for r in runs], digits=4),
            _mean_sd([r[arm]["mean_flops"] for r in runs], 1e6),
        ])  # fmt: skip
    per_seed = ", ".join(f"seed {r['seed']} {r['guided']['best_accuracy']:.4f} vs {r['random']['best_accuracy']:.4f} "
                         f"({r['predictor_calls']} predictor calls, search {r['search_seconds']:.0f} s)" for r in runs)  # fmt: skip
    wins = sum(r["guided"]["best_accuracy"] > r["random"]["best_accuracy"] for r in runs)
    return [
        f"### Target `{target}` (FLOPs limit {limit / 1e6:.3f} MFLOPs, its median)",
        "",
        f"Predictor trained on {', '.join(p['train_families'])} only ({p['seconds']:.0f} s); zero-shot on {target}: "
        f"SRCC {p['srcc']:.3f}, Kendall {p['kendall']:.3f}.",
        "",
        common.markdown_table(["arm", "best accuracy", "its MFLOPs", f"mean accuracy of the {n}", "mean MFLOPs"], rows),
        "",
        f"Best guided vs best random: {per_seed}. Guided search found the more accurate best network in {wins} of {len(runs)} seeds.",
        "",
    ]  # fmt: skip


def format_section(results: dict) -> str:
    n = results["n"]
    generated = f" (generated in {results['generate_seconds']:.0f} s)" if results["generate_seconds"] else ""
    lines = [
        f"## NAS search: predictor-guided evolution vs random search, {n} real evaluations under a FLOPs limit",
        "",
        f"Labelled data `{results['benchmark']}`{generated}. For each target family: a GENNAPE k-GNN predictor "
        f"(`contrastive_epochs=0, num_clusters=1`, Adam 1e-3, {PREDICTOR_EPOCHS} epochs) trained on the other three families only "
        f"(zero-shot transfer); regularized evolution (population {POPULATION}, tournament {SAMPLE_SIZE}, {CHILDREN} children × "
        f"{GENERATIONS} generations) scored by it, then the top {n} predicted are trained; the baseline trains {n} random networks "
        f"within the same limit (the family's median FLOPs; batch 1, a multiply-add = 2 FLOPs). Every network: {TRAIN_EPOCHS} epochs "
        f"AdamW on the digits, validation accuracy, the same training seed in both arms; seeds {list(SEEDS)} (mean ± sd). Every "
        "candidate is within the limit (the search discards children over it).",
        "",
    ]
    for result in results["targets"]:
        lines += _target_lines(result, n)
    lines += [f"Whole section: {results['seconds']:.0f} s.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="predictor-guided evolution vs random search")
    parser.add_argument("--targets", nargs="+", default=list(TARGETS), choices=list(FAMILIES), help="families to search")
    common.setup_threads()
    out = main(tuple(parser.parse_args().targets))
    print(format_section(out))
    print(f"({out['seconds']:.0f} s)")
