"""The shared latency timer (framework/profiling.py): alternating rounds, warm-up, medians, sized samples, one thread.

No test asserts a time: a fake clock advances by what each fake model "costs", so the schedule and the
arithmetic are checked exactly.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from litzoo.framework.profiling import compare_latency, measure_latency


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Costs(nn.Module):
    """A model whose n-th forward advances the fake clock by ``costs[n]`` (the last cost repeats)."""

    def __init__(self, name: str, costs: list[float], clock: FakeClock, log: list[str]) -> None:
        super().__init__()
        self.name, self.costs, self.clock, self.log = name, costs, clock, log
        self.calls = 0
        self.modes: list[tuple[bool, bool]] = []
        self.threads: list[int] = []

    def forward(self, x):
        self.clock.now += self.costs[min(self.calls, len(self.costs) - 1)]
        self.calls += 1
        self.log.append(self.name)
        self.modes.append((self.training, torch.is_inference_mode_enabled()))
        self.threads.append(torch.get_num_threads())
        return x


def test_models_alternate_with_the_order_reversed_every_other_round():
    clock, log = FakeClock(), []
    a, b = Costs("a", [1.0], clock, log), Costs("b", [1.0], clock, log)
    compare_latency([a, b], torch.zeros(1), rounds=4, warmup=2, clock=clock)
    # warm-up (2 untimed forwards) per model, then rounds a b, b a, a b, b a
    assert log == ["a"] * 2 + ["b"] * 2 + ["a", "b", "b", "a", "a", "b", "b", "a"]
    assert all(mode == (False, True) for m in (a, b) for mode in m.modes)  # eval mode, inference_mode
    assert a.training and b.training  # modes restored


def test_the_median_drops_slow_outliers_and_warm_up_is_not_timed():
    clock, log = FakeClock(), []
    # first forwards are slow (cold caches), then one round hit by another process
    a = Costs("a", [50.0, 40.0, 2.0, 2.0, 30.0, 2.0, 2.0], clock, log)
    b = Costs("b", [60.0, 70.0, 1.0, 1.0, 1.0, 25.0, 1.0], clock, log)
    before, after = compare_latency([a, b], torch.zeros(1), rounds=5, warmup=2, clock=clock)
    assert (before, after) == (2.0, 1.0)
    assert after / before == 0.5


def test_a_sample_holds_enough_forwards_of_a_fast_model():
    clock, log = FakeClock(), []
    fast, slow = Costs("fast", [1e-4], clock, log), Costs("slow", [0.02], clock, log)
    result = compare_latency([fast, slow], torch.zeros(1), rounds=3, warmup=0, min_sample_seconds=5e-3, clock=clock)
    assert result == [pytest.approx(1e-4), pytest.approx(0.02)]  # per forward, whatever the sample size
    assert fast.calls == 1 + 3 * 50 and slow.calls == 1 + 3  # 5 ms / 0.1 ms = 50 forwards a sample; a slow model keeps 1
    capped = Costs("capped", [1e-9], clock, [])
    compare_latency([capped], torch.zeros(1), rounds=2, warmup=0, min_sample_seconds=1.0, max_forwards_per_sample=10, clock=clock)
    assert capped.calls == 1 + 2 * 10


def test_timing_runs_on_one_cpu_thread_and_restores_the_setting():
    """Intra-op threads make a CPU timing depend on whatever else runs on the machine."""
    clock, log = FakeClock(), []
    model = Costs("a", [1.0], clock, log)
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        compare_latency([model], torch.zeros(1), rounds=2, warmup=1, clock=clock)
        assert set(model.threads) == {1} and torch.get_num_threads() == 2
        compare_latency([model], torch.zeros(1), rounds=1, warmup=0, threads=None, clock=clock)
        assert model.threads[-1] == 2
    finally:
        torch.set_num_threads(previous)


def test_measure_latency_is_the_same_timer_for_one_model_and_checks_its_arguments():
    model = nn.Linear(3, 2)
    assert isinstance(measure_latency(model, torch.zeros(2, 3), repeats=3, warmup=1), float)
    with pytest.raises(ValueError, match="rounds must be >= 1"):
        compare_latency([model], torch.zeros(2, 3), rounds=0)
