"""Semantic polarity core (framework/text/polarity.py): pooling, 1 - cos, baselines, drift start, Granger wrapper."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from litzoo.framework.errors import LitzooError
from litzoo.framework.text.polarity import (
    cosine_distance,
    drift_start,
    granger_causality,
    permutation_baseline,
    polarity_table,
    pool_keyword_states,
    split_half_baseline,
    topic_average,
)

E1, E2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])


def test_pool_keyword_states_by_hand():
    states = torch.arange(2 * 4 * 2, dtype=torch.float32).view(2, 4, 2)  # turn 0: [0,1],[2,3],[4,5],[6,7]; turn 1: [8,9]...
    positions = torch.tensor([[0, -1, 0, -1], [-1, 1, -1, 0]])
    vectors, turn, keyword = pool_keyword_states(states, positions, 2)
    assert turn.tolist() == [0, 1, 1] and keyword.tolist() == [0, 0, 1]
    # turn 0, keyword 0: mean of positions 0 and 2; turn 1 keyword 0: position 3; keyword 1: position 1
    assert torch.equal(vectors, torch.tensor([[2.0, 3.0], [14.0, 15.0], [10.0, 11.0]]))
    with pytest.raises(ValueError, match="keyword_positions must lie"):
        pool_keyword_states(states, positions, 1)


def test_cosine_distance_identical_orthogonal_opposite():
    assert float(cosine_distance(E1 * 3, E1)) == pytest.approx(0.0, abs=1e-12)
    assert float(cosine_distance(E1, E2)) == pytest.approx(1.0)
    assert float(cosine_distance(E1, -E1)) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="zero vector"):
        cosine_distance(torch.zeros(2), E1)


def test_polarity_table_on_hand_made_embeddings():
    # keyword 0: both sources' contexts identical -> 0; keyword 1: source 0 means along e1, source 1 along e2 -> 1
    vectors = torch.stack([E1, E2, E1, E2, E1, E1, E2, E2, E1])
    keyword = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 1])
    source = torch.tensor([0, 0, 1, 1, 0, 0, 1, 1, 1])
    period = torch.zeros(9, dtype=torch.long)
    table = polarity_table(vectors, keyword, period, source, num_keywords=2, num_periods=2, draws=10)
    assert table.polarity[0, 0] == pytest.approx(0.0, abs=1e-12)
    # keyword 1: source 0 mean e1; source 1 mean (1/3, 2/3) -> cos = (1/3) / sqrt(5/9)
    assert table.polarity[1, 0] == pytest.approx(1 - (1 / 3) / np.sqrt(5 / 9))
    assert table.counts[:, 0].tolist() == [[2, 2], [2, 3]]
    assert np.isnan(table.polarity[:, 1]).all() and table.counts[:, 1].sum() == 0  # an empty period
    np.testing.assert_allclose(table.normalised, table.polarity - table.baseline)
    np.testing.assert_allclose(table.z[:, 0], table.normalised[:, 0] / np.maximum(table.baseline_sd[:, 0], 1e-12))
    orthogonal = polarity_table(torch.stack([E1, E1, E2, E2]), torch.zeros(4, dtype=torch.long), torch.zeros(4, dtype=torch.long),
                                torch.tensor([0, 0, 1, 1]), 1, 1, draws=5)  # fmt: skip
    assert orthogonal.polarity[0, 0] == pytest.approx(1.0)


def test_min_contexts_leaves_a_cell_empty():
    vectors = torch.stack([E1, E1, E2])
    table = polarity_table(vectors, torch.zeros(3, dtype=torch.long), torch.zeros(3, dtype=torch.long), torch.tensor([0, 0, 1]), 1, 1)
    assert np.isnan(table.polarity[0, 0]) and table.counts[0, 0].tolist() == [2, 1]


def test_permutation_baseline_equals_the_mean_over_all_relabellings():
    a = torch.tensor([[1.0, 0.0], [1.0, 0.2]])
    b = torch.tensor([[0.0, 1.0], [0.3, 1.0]])
    pooled = torch.cat([a, b]).double()
    exact = np.mean([float(cosine_distance(pooled[list(g)].mean(0), pooled[[i for i in range(4) if i not in g]].mean(0)))
                     for g in itertools.combinations(range(4), 2)])  # fmt: skip
    mean, sd = permutation_baseline(a, b, draws=3000, generator=torch.Generator().manual_seed(0))
    assert mean == pytest.approx(exact, abs=0.02) and sd > 0
    # a wrong baseline (the observed split, not a relabelling) is far from it
    assert abs(float(cosine_distance(a.double().mean(0), b.double().mean(0))) - exact) > 0.2


def test_split_half_baseline_by_hand():
    mean, sd = split_half_baseline(torch.stack([E1, E2]), draws=5, generator=torch.Generator().manual_seed(0))
    assert mean == pytest.approx(1.0) and sd == pytest.approx(0.0, abs=1e-12)  # the halves are always {e1}, {e2}
    # [e1, e1, e2]: halves of 1 and 2: {e1} vs {e1, e2} (p = 2/3) gives 1 - 1/sqrt(2); {e2} vs {e1, e1} (p = 1/3) gives 1
    expected = 2 / 3 * (1 - 1 / np.sqrt(2)) + 1 / 3
    mean, _ = split_half_baseline(torch.stack([E1, E1, E2]), draws=3000, generator=torch.Generator().manual_seed(1))
    assert mean == pytest.approx(expected, abs=0.02)
    table = polarity_table(torch.stack([E1, E2, E1, E2]), torch.zeros(4, dtype=torch.long), torch.zeros(4, dtype=torch.long),
                           torch.tensor([0, 0, 1, 1]), 1, 1, baseline="split_half", draws=4)  # fmt: skip
    assert table.polarity[0, 0] == pytest.approx(0.0, abs=1e-12) and table.baseline[0, 0] == pytest.approx(1.0)


def test_topic_average_and_drift_start_by_hand():
    series = np.array([[0.0, 1.0, 2.0], [2.0, 3.0, np.nan]])
    topics = topic_average(series, ["a", "b"], {"t": ["a", "b"], "u": ["b"]})
    np.testing.assert_array_equal(topics["t"], [1.0, 2.0, np.nan])
    np.testing.assert_array_equal(topics["u"], [2.0, 3.0, np.nan])
    with pytest.raises(ValueError, match="not analysed"):
        topic_average(series, ["a", "b"], {"t": ["c"]})
    z = [0, 4, 0, 3, 3.5, np.nan, 5, 5, 5, 6]
    assert drift_start(z, 3.0, persistence=1) == 1
    assert drift_start(z, 3.0, persistence=2) == 3
    assert drift_start(z, 3.0, persistence=3) == 6  # a NaN breaks a run
    assert drift_start(z, 10.0) is None
    assert drift_start([5, 5], 3.0, persistence=3) is None  # too short to persist


def _caused_pair(length=80, seed=0):
    rng = np.random.default_rng(seed)
    cause = rng.standard_normal(length)
    effect = np.concatenate([[0.0], 0.9 * cause[:-1]]) + 0.3 * rng.standard_normal(length)
    return cause, effect


def test_granger_detects_the_planted_direction_only():
    cause, effect = _caused_pair()
    forward = granger_causality(cause, effect, maxlag=3)
    reverse = granger_causality(effect, cause, maxlag=3)
    assert forward.p_value < 1e-6 and forward.lag == 1 and not forward.differenced
    assert reverse.p_value > 0.05 and reverse.min_p_value > 0.01
    assert len(forward.p_values) == 3 and forward.min_p_value == min(forward.p_values)
    # the p-values are statsmodels' ssr F test with the effect in the first column
    from statsmodels.tsa.stattools import grangercausalitytests

    reference = grangercausalitytests(np.column_stack([effect, cause]), maxlag=3)
    assert forward.p_values == pytest.approx([reference[lag][0]["ssr_ftest"][1] for lag in (1, 2, 3)])


def test_granger_differences_random_walks_when_asked_or_needed():
    rng = np.random.default_rng(3)
    cause = np.cumsum(rng.standard_normal(120))
    effect = np.concatenate([[0.0], cause[:-1]]) + 0.2 * rng.standard_normal(120)
    auto = granger_causality(cause, effect, maxlag=2)
    assert auto.differenced and auto.p_value < 1e-3
    assert not granger_causality(cause, effect, maxlag=2, difference="never").differenced


@pytest.mark.parametrize(("cause", "effect", "message"), [
    (np.arange(8.0), np.arange(8.0)[::-1] ** 2, "too few"),
    (np.ones(40), np.arange(40.0), "cause series is constant"),
    (np.r_[np.arange(39.0), np.nan], np.arange(40.0) ** 0.5, "not finite at period"),
    (np.arange(40.0), np.arange(41.0), "different lengths"),
])  # fmt: skip
def test_granger_refuses_bad_series_in_one_line(cause, effect, message):
    with pytest.raises(LitzooError, match=message) as excinfo:
        granger_causality(cause, effect, maxlag=3, difference="never" if message != "too few" else "auto")
    assert "\n" not in str(excinfo.value)
    with pytest.raises(ValueError, match="maxlag"):
        granger_causality(np.arange(40.0), np.arange(40.0), maxlag=0)
