"""Model cost: parameters, FLOPs (``torch.utils.flop_counter``) and CPU latency.

FLOPs follow ``torch.utils.flop_counter``: a multiply-add counts as 2 FLOPs (so a conv's FLOPs are
twice its MACs, the unit most papers quote).
"""

from __future__ import annotations

import statistics
import time
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements (shared parameters counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


@contextmanager
def eval_mode(model: nn.Module):
    """Temporarily switch ``model`` to eval mode (a forward in train mode would move BN statistics)."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes.items():
            module.training = training


def count_flops(model: nn.Module, example_input: Tensor | tuple[Tensor, ...]) -> int:
    """FLOPs of one forward pass on ``example_input`` (a tuple = several forward arguments; eval mode, no grad)."""
    inputs = example_input if isinstance(example_input, tuple) else (example_input,)
    with eval_mode(model), torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(*inputs)
    return int(counter.get_total_flops())


def measure_latency(model: nn.Module, example_input: Tensor, repeats: int = 20, warmup: int = 3) -> float:
    """Median wall-clock seconds of one forward pass (eval mode, ``inference_mode``).

    For benchmarks and logs only; tests never assert on it.
    """
    times = []
    with eval_mode(model), torch.inference_mode():
        for i in range(warmup + repeats):
            start = time.perf_counter()
            model(example_input)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return statistics.median(times)


def format_count(value: float) -> str:
    """``1234567 -> '1.23 M'``, the way model summaries print sizes."""
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f} {unit}"
    return f"{value:.0f}"
