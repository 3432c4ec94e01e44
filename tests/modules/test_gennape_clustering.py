"""GENNAPE's fuzzy c-means (modules/gennape.py): memberships by the formula on a hand example, the objective never increases,
planted clusters are recovered, and bad arguments are refused."""

from __future__ import annotations

import pytest
import torch

from litzoo.modules.gennape import fcm_objective, fuzzy_c_means, fuzzy_memberships


def test_memberships_match_the_formula_by_hand():
    points = torch.tensor([[0.0, 0.0], [1.0, 0.0], [3.0, 4.0]], dtype=torch.float64)
    centers = torch.tensor([[0.0, 1.0], [4.0, 4.0]], dtype=torch.float64)
    for m in (2.0, 3.0):
        u = fuzzy_memberships(points, centers, m)
        for i, z in enumerate(points):
            d = [float((z - c).norm()) for c in centers]
            for k in range(2):
                expected = 1.0 / sum((d[k] / d[j]) ** (2 / (m - 1)) for j in range(2))
                assert u[i, k].item() == pytest.approx(expected, abs=1e-12)
    # point (0, 0): distances 1 and sqrt(32); with m = 2: u = 1 / (1 + 1/32) = 32/33
    assert fuzzy_memberships(points, centers, 2.0)[0, 0].item() == pytest.approx(32 / 33, abs=1e-12)


def test_a_point_on_a_centre_belongs_to_it():
    u = fuzzy_memberships(torch.tensor([[1.0, 1.0]]), torch.tensor([[1.0, 1.0], [5.0, 5.0]]))
    assert u.tolist() == [[1.0, 0.0]]


def _blobs(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    means = torch.tensor([[0.0, 0.0], [6.0, 0.0], [0.0, 6.0]])
    labels = torch.arange(3).repeat_interleave(40)
    return means[labels] + 0.5 * torch.randn(120, 2, generator=generator), labels


def test_planted_clusters_are_recovered_and_rows_sum_to_one():
    points, labels = _blobs()
    fit = fuzzy_c_means(points, 3, seed=0)
    assignment = fit.memberships.argmax(dim=1)
    for cluster in range(3):  # each planted blob maps to one fitted cluster
        assert assignment[labels == cluster].unique().numel() == 1
    assert assignment.unique().numel() == 3
    assert torch.allclose(fit.memberships.sum(dim=1), torch.ones(120), atol=1e-6)
    assert torch.allclose(fit.predict(points), fit.memberships, atol=1e-6)
    # centres sit near the planted means
    assert torch.cdist(fit.centers, torch.tensor([[0.0, 0.0], [6.0, 0.0], [0.0, 6.0]])).min(dim=1).values.max() < 0.5


def test_objective_never_increases_with_more_iterations():
    points, _ = _blobs(1)
    objectives = [fuzzy_c_means(points, 3, max_iter=k, tol=0.0, seed=3).objective for k in (1, 2, 3, 5, 8, 13)]
    assert all(b <= a + 1e-9 for a, b in zip(objectives, objectives[1:]))
    fit = fuzzy_c_means(points, 3, seed=3)
    assert fit.objective == pytest.approx(float(fcm_objective(points.double(), fit.centers.double(), fit.memberships.double())), rel=1e-5)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="fuzzifier"):
        fuzzy_memberships(torch.zeros(2, 2), torch.ones(1, 2), m=1.0)
    with pytest.raises(ValueError, match="num_clusters"):
        fuzzy_c_means(torch.zeros(3, 2), 4)
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        fuzzy_c_means(torch.zeros(3), 1)
