"""Stochastic depth: per-sample Bernoulli keep, survivors scaled by 1 / (1 - p), identity in eval."""

from __future__ import annotations

import pytest
import torch

from litzoo.framework.nn.drop import DropPath


def test_drop_path_zeroes_whole_samples_and_rescales_survivors():
    torch.manual_seed(0)
    drop = DropPath(0.25).train()
    x = torch.randn(4000, 3, 5) + 3.0
    out = drop(x)
    ratio = out / x
    per_sample = ratio.flatten(1)
    # each sample is either dropped entirely (0) or kept and scaled by 1 / 0.75, never a mix
    assert torch.all((per_sample == 0).all(dim=1) | torch.isclose(per_sample, torch.tensor(4 / 3)).all(dim=1))
    kept = (per_sample != 0).all(dim=1).float().mean().item()
    assert abs(kept - 0.75) < 0.03  # 4000 samples: 3 sigma is about 0.02
    # expectation preserved
    assert torch.allclose(out.mean(dim=0), x.mean(dim=0), atol=0.25)


def test_drop_path_is_identity_in_eval_and_at_zero_rate():
    x = torch.randn(8, 4)
    assert torch.equal(DropPath(0.5).eval()(x), x)
    assert torch.equal(DropPath(0.0).train()(x), x)


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5])
def test_drop_path_rejects_bad_rates(rate):
    with pytest.raises(ValueError, match="drop path rate"):
        DropPath(rate)
