"""The commands of the NAS wing: argument parsing and files; the work is in :mod:`litzoo.framework.nas` (labelling,
search), :mod:`litzoo.datamodules.architectures` (the digits) and :mod:`litzoo.datamodules.architecture_tasks`.

    litzoo architectures --out data/architectures/digits.jsonl --per-family 50       # a labelled NAS benchmark
    litzoo architecture-tasks --benchmark data/architectures/digits_v1.jsonl --limit 200   # AIO-P's extra tasks
    litzoo nas-search --predictor gennape.ckpt --family mobilenet --flops-limit 6e5 --evaluate 20
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from litzoo.framework.errors import LitzooError
from litzoo.framework.nas import FAMILIES


def _summary(doc: str | None) -> str:
    """The first paragraph of a docstring as one line (a ``--help`` description; its first line alone stops mid-sentence)."""
    paragraph = (doc or "").strip().split("\n\n")[0]
    return " ".join(paragraph.split())


def architectures_command(argv: Sequence[str]) -> None:
    """``litzoo architectures --out data/architectures/digits.jsonl --per-family 50 --seed 0``: generate or resume a
    benchmark of networks trained on the digits (:func:`litzoo.framework.nas.generate_architecture_benchmark`) and
    print a per-family summary."""
    from litzoo.datamodules.architectures import DigitsSplits
    from litzoo.framework.nas import format_benchmark_summary, generate_architecture_benchmark

    parser = argparse.ArgumentParser(prog="litzoo architectures", description=_summary(generate_architecture_benchmark.__doc__))
    parser.add_argument("--out", default="data/architectures/digits.jsonl", help="JSONL file to write or resume")
    parser.add_argument("--per-family", type=int, default=50, help="networks per family")
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES), help="families to sample")
    parser.add_argument("--seed", type=int, default=0, help="benchmark seed")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs per network")
    parser.add_argument("--train-subset", type=int, default=None, help="train on the first N digits only")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(list(argv))
    start = time.perf_counter()
    path = generate_architecture_benchmark(
        args.out, DigitsSplits(), args.per_family, args.families, args.seed, args.epochs, args.train_subset, progress=not args.no_progress
    )
    print(f"{path}: generated or resumed in {time.perf_counter() - start:.1f} s")
    print(format_benchmark_summary(path))


def architecture_tasks_command(argv: Sequence[str]) -> None:
    """``litzoo architecture-tasks --benchmark data/architectures/digits_v1.jsonl --limit 200``: label the networks of a
    benchmark on AIO-P's extra digits tasks (:func:`litzoo.datamodules.architecture_tasks.generate_task_labels`)."""
    from litzoo.datamodules.architecture_tasks import EXTRA_TASKS, generate_task_labels

    parser = argparse.ArgumentParser(prog="litzoo architecture-tasks", description=_summary(generate_task_labels.__doc__))
    parser.add_argument("--benchmark", required=True, help="benchmark JSONL (with its .specs.jsonl)")
    parser.add_argument("--tasks", nargs="+", default=list(EXTRA_TASKS), choices=list(EXTRA_TASKS))
    parser.add_argument("--limit", type=int, default=None, help="label only the first N records")
    parser.add_argument("--noise-sigma", type=float, default=1.0)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(list(argv))
    start = time.perf_counter()
    path = generate_task_labels(args.benchmark, args.tasks, args.limit, noise_sigma=args.noise_sigma, progress=not args.no_progress)
    print(f"{path}: generated or resumed in {time.perf_counter() - start:.1f} s")


def load_gennape_predictor(path: str | Path):
    """A :class:`litzoo.modules.gennape.GENNAPEModule` from a Lightning checkpoint (the ``last.ckpt`` / ``best.ckpt``
    that ``litzoo fit -c configs/gennape/architectures.yaml`` writes), loaded with ``weights_only=True`` on the CPU,
    in eval mode. A missing, corrupt or foreign file raises a one-line :class:`LitzooError` naming the file and
    what it holds."""
    from litzoo.framework.checkpoints import check_checkpoint_class, load_checkpoint
    from litzoo.modules.gennape import GENNAPEModule  # imported before loading: Lightning rebuilds only known classes

    path = Path(path).expanduser()
    checkpoint = load_checkpoint(path)  # LitzooError for missing / not torch / unsafe files
    check_checkpoint_class(path, checkpoint, GENNAPEModule, what="--predictor needs")
    if not isinstance(checkpoint.get("hyper_parameters"), dict):
        raise LitzooError(f"checkpoint '{path}' has no hyper-parameters, so the GENNAPE predictor it holds cannot be rebuilt")
    try:
        model = GENNAPEModule.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    except Exception as error:  # wrong keys or shapes, hyper-parameters of another version
        reason = " ".join(str(error).split()) or type(error).__name__  # every line of it (each mismatched key), as one line
        raise LitzooError(f"checkpoint '{path}' does not load as a GENNAPE predictor: {reason}") from None
    return model.eval()


def nas_search_command(argv: Sequence[str]) -> list[dict[str, Any]]:
    """``litzoo nas-search --predictor gennape.ckpt --family mobilenet --flops-limit 1e6 --evaluate 20 --out
    results.jsonl``: predictor-guided evolutionary search (:func:`litzoo.framework.nas.evolutionary_search` scored by
    :func:`litzoo.framework.nas.predictor_score_fn` of a GENNAPE checkpoint), then the ``--evaluate`` best-predicted
    distinct candidates are trained for real on the digits (:func:`litzoo.framework.nas.evaluate_candidates`, one
    thread, the same seed for every candidate) and written as JSONL records ``{"rank", "family", "spec", "predicted",
    "accuracy", "flops", "params", "latency_ms"}`` (``predicted``: the predictor's score, standardised accuracy for
    GENNAPE; ``flops`` at batch 1). Prints the most accurate one; returns the records."""
    from litzoo.datamodules.architectures import DigitsSplits
    from litzoo.framework.nas import evaluate_candidates, evolutionary_search, predictor_score_fn

    parser = argparse.ArgumentParser(prog="litzoo nas-search", description=_summary(nas_search_command.__doc__))
    parser.add_argument("--predictor", required=True, help="GENNAPE Lightning checkpoint (.ckpt)")
    parser.add_argument("--family", required=True, choices=list(FAMILIES), help="architecture family to search")
    parser.add_argument("--flops-limit", type=float, required=True, help="FLOPs bound at batch 1 (a multiply-add is 2 FLOPs)")
    parser.add_argument("--evaluate", type=int, default=20, help="best-predicted candidates to train for real")
    parser.add_argument("--out", default="nas_search.jsonl", help="JSONL file of the evaluated candidates")
    parser.add_argument("--population", type=int, default=50, help="aging-evolution population")
    parser.add_argument("--generations", type=int, default=40, help="evolution cycles")
    parser.add_argument("--children", type=int, default=25, help="children per generation")
    parser.add_argument("--sample-size", type=int, default=10, help="tournament size")
    parser.add_argument("--seed", type=int, default=0, help="seed of the search and of the real training")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs of each evaluated candidate")
    parser.add_argument("--train-subset", type=int, default=None, help="train on the first N digits only (tests)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(list(argv))
    if args.evaluate < 1 or args.epochs < 1 or not args.flops_limit > 0:
        parser.error(
            f"--evaluate and --epochs must be at least 1 and --flops-limit positive, got {args.evaluate}, {args.epochs}, {args.flops_limit:g}"
        )
    predictor = load_gennape_predictor(args.predictor)
    start = time.perf_counter()
    try:
        result = evolutionary_search(
            args.family, predictor_score_fn(predictor), args.flops_limit, population=args.population, generations=args.generations,
            sample_size=args.sample_size, children=args.children, top_k=args.evaluate, seed=args.seed, progress=not args.no_progress,
        )  # fmt: skip
    except ValueError as error:
        raise LitzooError(f"nas-search: {error}") from None
    searched = time.perf_counter() - start
    records = evaluate_candidates(result.best, DigitsSplits(), args.epochs, args.seed, args.train_subset, progress=not args.no_progress)
    out = Path(args.out).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, separators=(",", ":")) + "\n")
    best = max(records, key=lambda r: r["accuracy"])
    print(
        f"searched {result.score_calls} {args.family} candidates within {args.flops_limit:.3g} FLOPs in {searched:.1f} s, trained the "
        f"{len(records)} best-predicted; best: accuracy {best['accuracy']:.4f}, {best['flops'] / 1e6:.3f} MFLOPs, rank {best['rank']} "
        f"(predicted {best['predicted']:+.3f}): {json.dumps(best['spec'])} -> {out}"
    )
    return records
