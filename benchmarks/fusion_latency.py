"""Fused vs unfused RepVGG: CPU inference latency, parameters, FLOPs and output agreement.

Each case builds the training-time (multi-branch) network, gives its BatchNorms non-trivial
statistics (``litzoo.framework.reparam.randomize_batchnorm``, as after training), fuses a copy with
``litzoo.framework.reparam.fuse_model`` and then times both in eval mode under ``torch.inference_mode``
with one thread per core. Measurements alternate in rounds (unfused then fused, fused then
unfused, ...) so that machine noise hits both equally; the latency is the median over rounds of
each round's median.

    .venv/bin/python benchmarks/fusion_latency.py
"""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass

import torch
from common import digits_config, markdown_table, setup_threads, yes_no
from torch import nn

from litzoo.framework.profiling import count_flops, count_parameters, eval_mode, measure_latency
from litzoo.framework.reparam import fuse_model, randomize_batchnorm
from litzoo.modules.repvgg import RepVGG, RepVGGClassifier

#: goal: the fused model takes at most this fraction of the unfused model's time
GOAL_RATIO = 0.6


@dataclass(frozen=True)
class Case:
    model: str
    batch: int
    rounds: int  # alternating rounds
    per_round: int  # timed forwards of each model per round (median taken)
    warmup: int  # untimed forwards of each model before the rounds


# RepVGG-A0 at 224 x 224, batch 64, is ~200 GFLOPs a forward (1-2 s fused on 2 cores): few repeats,
# so that the script stays well under 2 minutes on 2 cores.
CASES = (
    Case("A0", batch=1, rounds=20, per_round=3, warmup=3),
    Case("A0", batch=64, rounds=6, per_round=1, warmup=1),
    Case("digits", batch=1, rounds=40, per_round=25, warmup=20),
    Case("digits", batch=64, rounds=40, per_round=5, warmup=5),
)


def build(name: str, seed: int) -> tuple[nn.Module, tuple[int, int, int], str]:
    """``(training-time network, (C, H, W), description)``."""
    torch.manual_seed(seed)
    if name == "A0":
        return RepVGG.from_variant("A0"), (3, 224, 224), "RepVGG-A0 (paper), 1000 classes"
    if name == "digits":
        config = digits_config()
        data = config["data"]
        net = RepVGGClassifier(**config["model"]).net
        size = int(data.get("image_size", 8))
        return net, (net.stage0.in_channels, size, size), "digits config (configs/repvgg/digits.yaml), 10 classes"
    raise ValueError(f"unknown model {name!r}")


def interleaved_latency(unfused: nn.Module, fused: nn.Module, x: torch.Tensor, case: Case) -> tuple[float, float, float]:
    """Median seconds per forward of ``unfused`` and ``fused`` (alternating rounds), and the median per-round ratio."""
    if case.warmup:
        measure_latency(unfused, x, repeats=1, warmup=case.warmup - 1)
        measure_latency(fused, x, repeats=1, warmup=case.warmup - 1)
    times: dict[int, list[float]] = {0: [], 1: []}
    models = (unfused, fused)
    for r in range(case.rounds):
        order = (0, 1) if r % 2 == 0 else (1, 0)
        for index in order:
            times[index].append(measure_latency(models[index], x, repeats=case.per_round, warmup=0))
    paired = statistics.median(f / u for u, f in zip(times[0], times[1]))
    return statistics.median(times[0]), statistics.median(times[1]), paired


def main(cases: tuple[Case, ...] = CASES, seed: int = 0) -> dict:
    """Run every case; returns ``{"models": [...], "latency": [...], "threads", "seconds"}``."""
    threads = setup_threads()
    start = time.perf_counter()
    models, latency, built = [], [], {}
    generator = torch.Generator().manual_seed(seed)
    for case in cases:
        if case.model not in built:
            net, shape, description = build(case.model, seed)
            net.eval()
            randomize_batchnorm(net, seed)
            fused = fuse_model(net).eval()
            one = torch.randn(1, *shape, generator=generator)
            flops_unfused, flops_fused = count_flops(net, one), count_flops(fused, one)
            built[case.model] = (net, fused, shape)
            models.append(
                {
                    "model": case.model,
                    "description": description,
                    "input": "x".join(str(s) for s in shape),
                    "params_unfused": count_parameters(net),
                    "params_fused": count_parameters(fused),
                    "flops_unfused": flops_unfused,
                    "flops_fused": flops_fused,
                }
            )
        net, fused, shape = built[case.model]
        x = torch.randn(case.batch, *shape, generator=generator)
        with eval_mode(net), eval_mode(fused), torch.inference_mode():
            y_unfused, y_fused = net(x), fused(x)
        max_diff = (y_unfused - y_fused).abs().max().item()
        scale = y_unfused.abs().max().item()
        t_unfused, t_fused, paired = interleaved_latency(net, fused, x, case)
        ratio = t_fused / t_unfused
        latency.append(
            {
                "model": case.model,
                "input": "x".join(str(s) for s in shape),
                "batch": case.batch,
                "ms_unfused": 1e3 * t_unfused,
                "ms_fused": 1e3 * t_fused,
                "ratio": ratio,
                "meets_goal": ratio <= GOAL_RATIO,
                "paired_ratio": paired,
                "max_abs_diff": max_diff,
                "max_abs_output": scale,
                "rounds": case.rounds,
                "per_round": case.per_round,
                "warmup": case.warmup,
            }
        )
    return {"models": models, "latency": latency, "threads": threads, "goal_ratio": GOAL_RATIO, "seconds": time.perf_counter() - start}


def to_markdown(results: dict) -> str:
    cost = markdown_table(
        ["model", "input (CxHxW)", "params unfused", "params fused", "GFLOPs/image unfused", "GFLOPs/image fused", "FLOPs fused/unfused"],
        [
            [
                f"{m['model']}: {m['description']}",
                m["input"],
                f"{m['params_unfused']:,}",
                f"{m['params_fused']:,}",
                f"{m['flops_unfused'] / 1e9:.4g}",
                f"{m['flops_fused'] / 1e9:.4g}",
                f"{m['flops_fused'] / m['flops_unfused']:.3f}",
            ]
            for m in results["models"]
        ],
    )
    speed = markdown_table(
        [
            "model", "batch", "unfused ms", "fused ms", "fused/unfused", f"≤ {results['goal_ratio']}?", "median of per-round ratios",
            "max abs diff (fp32)", "max abs output", "timed forwards each (rounds x per round), warm-up",
        ],
        [
            [
                r["model"],
                r["batch"],
                f"{r['ms_unfused']:.3f}",
                f"{r['ms_fused']:.3f}",
                f"{r['ratio']:.3f}",
                yes_no(r["meets_goal"]),
                f"{r['paired_ratio']:.3f}",
                f"{r['max_abs_diff']:.2e}",
                f"{r['max_abs_output']:.3g}",
                f"{r['rounds'] * r['per_round']} ({r['rounds']} x {r['per_round']}), {r['warmup']}",
            ]
            for r in results["latency"]
        ],
    )
    return (
        f"{cost}\n\n"
        "FLOPs from `torch.utils.flop_counter` (`litzoo.framework.profiling.count_flops`): FLOPs = 2 x MACs; "
        "convolutions and the linear layer only (BatchNorm, ReLU and the branch additions are not counted).\n\n"
        f"{speed}\n\n"
        f"Latency: median of per-round medians, eval mode, `torch.inference_mode`, {results['threads']} threads; "
        "unfused and fused measured in alternating rounds on the same random batch. Max abs diff: fused vs unfused "
        "outputs on that batch, BatchNorm statistics randomised before fusion. The goal column uses fused ms / unfused ms; "
        "the per-round ratios (one unfused and one fused measurement back to back) show how much load drift moved it."
    )


if __name__ == "__main__":
    results = main()
    print(to_markdown(results))
    print(f"\n({results['seconds']:.0f} s)", file=sys.stderr)
