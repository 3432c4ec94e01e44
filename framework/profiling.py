"""Model cost: parameters, FLOPs (``torch.utils.flop_counter``) and CPU latency.

FLOPs follow ``torch.utils.flop_counter``: a multiply-add counts as 2 FLOPs (so a conv's FLOPs are
twice its MACs, the unit most papers quote).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack, contextmanager

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


def compare_latency(
    models: Sequence[nn.Module],
    example_input: Tensor,
    rounds: int = 15,
    warmup: int = 3,
    min_sample_seconds: float = 0.0,
    max_forwards_per_sample: int = 1000,
    threads: int | None = 1,
    clock: Callable[[], float] = time.perf_counter,
) -> list[float]:
    """Median wall-clock seconds of one forward pass of each model, timed in alternating rounds.

    Two models timed one after the other (all of A, then all of B) see different machines: another
    process wakes up, the CPU clocks up or down, caches and oneDNN's kernel cache are cold for the
    first calls of each new layer shape. Their ratio then moves by factors (a fusion's latency ratio
    read x0.04, x0.21 and x8.82 on three runs of one model). Here every model is warmed up, then
    timed once per round, the order reversed every other round (A B, B A, A B ...) so that a drift
    within a round weighs on both sides, and the median over rounds drops the outliers. A sample is
    ``number`` forwards timed together, ``number`` chosen per model from one more timed warm-up forward
    so that a sample lasts at least ``min_sample_seconds`` (a tiny model's single forward is close to the clock's
    resolution and the Python overhead); a large model keeps one forward per sample.

    On the CPU the models run on ``threads`` intra-op threads (one by default). With several, an op
    waits for its slowest thread, and on a machine where anything else runs (2 cores, a test suite
    next door) that wait dominates: a fused RepVGG read x0.24 to x0.99 on two threads in five
    repetitions under load, x0.50 to x0.51 on one thread. The ratio on one thread is the model's
    compute saving; the absolute times are those of one core. On a GPU the device is synchronised
    around every sample (kernels run asynchronously).

    For benchmarks and logs only; tests never assert on a time.

    Args:
        models: the models to compare (each in eval mode and ``inference_mode`` while timed).
        example_input: the batch every model runs on.
        rounds: timed samples per model (the median of these is returned).
        warmup: untimed forwards per model before the first round.
        min_sample_seconds: the shortest sample; 0 times single forwards.
        max_forwards_per_sample: the most forwards in one sample.
        threads: CPU intra-op threads while timing (``torch.set_num_threads``, restored after); ``None``
            keeps the current setting.
        clock: returns seconds (``time.perf_counter``; a test passes a fake one).

    Returns:
        Seconds per forward, one value per model, in the order of ``models``.
    """
    if rounds < 1 or warmup < 0:
        raise ValueError(f"rounds must be >= 1 and warmup >= 0, got {rounds} and {warmup}")
    samples: list[list[float]] = [[] for _ in models]
    previous_threads = torch.get_num_threads()
    device = example_input.device
    with ExitStack() as stack, torch.inference_mode():
        for model in models:
            stack.enter_context(eval_mode(model))
        if threads is not None:
            torch.set_num_threads(threads)
            stack.callback(torch.set_num_threads, previous_threads)
        numbers = []
        for model in models:
            for _ in range(warmup):
                model(example_input)
            if min_sample_seconds <= 0:
                numbers.append(1)
                continue
            one = _timed(model, example_input, 1, clock, device)  # one more warm forward, timed: sizes the samples
            wanted = math.ceil(min_sample_seconds / one) if one > 0 else max_forwards_per_sample
            numbers.append(min(max(1, wanted), max_forwards_per_sample))
        for round_index in range(rounds):
            order = range(len(models)) if round_index % 2 == 0 else reversed(range(len(models)))
            for i in order:
                samples[i].append(_timed(models[i], example_input, numbers[i], clock, device) / numbers[i])
    return [statistics.median(s) for s in samples]


def _timed(model: nn.Module, example_input: Tensor, number: int, clock: Callable[[], float], device: torch.device) -> float:
    _synchronize(device)
    start = clock()
    for _ in range(number):
        model(example_input)
    _synchronize(device)
    return clock() - start


def _synchronize(device: torch.device) -> None:
    """Wait for the device's queued kernels (a GPU runs them asynchronously; the CPU needs nothing)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_latency(model: nn.Module, example_input: Tensor, repeats: int = 20, warmup: int = 3, threads: int | None = None) -> float:
    """Median wall-clock seconds of one forward pass (eval mode, ``inference_mode``), ``repeats`` single forwards
    on ``threads`` CPU threads (``None``: the current setting).

    To compare two models (before / after a fusion or a pruning), use :func:`compare_latency`, which
    alternates them. For benchmarks and logs only; tests never assert on it.
    """
    return compare_latency([model], example_input, rounds=repeats, warmup=warmup, threads=threads)[0]


def format_count(value: float) -> str:
    """``1234567 -> '1.23 M'``, the way model summaries print sizes."""
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f} {unit}"
    return f"{value:.0f}"
