"""Semantic polarity between two sources that use the same keywords, and Granger causality between polarity series.

Ding, Horning, Rho, "Same Words, Different Meanings: Semantic Polarization in Broadcast Media Language Forecasts
Polarization on Social Media Discourse", ICWSM 2023 (arXiv:2301.08832). **No official code exists.** Pure tensor /
numpy functions (no Lightning): :mod:`litzoo.modules.polarization` runs them on a trained encoder's token states.

What the paper fixes (Study 1 / Study 3) and these functions follow:

* a *context* is a speaker turn containing the keyword; the keyword's contextual embedding in a turn comes from the
  language model's token states at the keyword's position(s);
* per keyword, period and source the contextual embeddings are averaged; the semantic polarity of the keyword in a
  period is the cosine *distance* between the two sources' means, ``1 - cos(mean_a, mean_b)``; topic polarity averages
  the topic's keywords;
* Study 3 tests with ``statsmodels.tsa.stattools.grangercausalitytests`` whether the TV polarity series forecasts the
  social-media polarity series, and the reverse.

Chosen here where the paper (as readable offline) is silent — each marked "(ours)" below:

* pooling: a turn holding the keyword several times (or a multi-word keyword) gives **one** vector, the mean of the
  states at all those positions (ours: the unit is the speaker turn, as the paper's counts are of turns);
* **baseline** (ours): the sampling noise of ``1 - cos`` between two finite means is not zero even for two sources
  that speak alike, and it grows as contexts get fewer. The default baseline is a **permutation null**: the two
  sources' contexts of a (keyword, period) are pooled, relabelled at random into groups of the observed sizes
  ``n_a``, ``n_b``, and ``1 - cos`` of the group means is taken; the baseline is its mean over ``draws`` relabellings,
  with its standard deviation for a z-score. Same sizes as the observed comparison, so under "no difference" the
  polarity and its baseline have the same distribution. The brief's alternative, ``"split_half"``, is the within-source
  ``1 - cos`` between two random halves of each source's contexts (averaged over both sources); halves hold half the
  contexts, so it sits about twice above the null polarity — offered, not the default;
* **normalised polarity** (ours) = polarity − baseline (the excess over sampling noise; a difference rather than a
  ratio, which explodes when the baseline is near 0), and the z-score ``(polarity − baseline) / baseline_sd``;
* **drift start** (ours): the first period from which the z-score stays at or above ``z_threshold`` for
  ``persistence`` consecutive periods;
* **Granger** (ours where the paper gives no numbers): the ssr-based F test of ``grangercausalitytests`` at every lag
  ``1..maxlag``; the reported lag is the one the AIC of a VAR on the pair selects on a common sample
  (``statsmodels.tsa.api.VAR.select_order``, clipped to ``1..maxlag``), and the minimum p-value over lags is reported
  beside it (not corrected for the several lags). Series are differenced once when the augmented Dickey–Fuller test
  (``adfuller``) does not reject a unit root (p > 0.05) for either series (``difference="auto"``, the usual practice
  before a Granger test on trending series), or always / never.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from litzoo.framework.errors import LitzooError

__all__ = [
    "GrangerResult", "PolarityTable", "cosine_distance", "drift_start", "granger_causality", "group_means",
    "permutation_baseline", "pool_keyword_states", "polarity_table", "split_half_baseline", "topic_average",
]  # fmt: skip


def pool_keyword_states(states: Tensor, keyword_positions: Tensor, num_keywords: int) -> tuple[Tensor, Tensor, Tensor]:
    """One contextual vector per (turn, keyword present in it): the mean of the token states at the keyword's positions.

    Args:
        states: ``(N, L, D)`` token states.
        keyword_positions: ``(N, L)`` long, the keyword index at each position, ``-1`` elsewhere.
        num_keywords: keywords ``0..num_keywords-1``.

    Returns:
        ``(vectors (M, D), turn (M,), keyword (M,))``: one row per pair (turn, keyword) with the keyword in the turn,
        ordered by turn, then keyword.
    """
    if states.dim() != 3 or tuple(keyword_positions.shape) != tuple(states.shape[:2]):
        raise ValueError(f"states must be (N, L, D) and keyword_positions (N, L), got {tuple(states.shape)} and {tuple(keyword_positions.shape)}")
    if num_keywords < 1 or int(keyword_positions.max()) >= num_keywords or int(keyword_positions.min()) < -1:
        raise ValueError(f"keyword_positions must lie in [-1, {num_keywords}), got [{int(keyword_positions.min())}, {int(keyword_positions.max())}]")
    one_hot = torch.stack([keyword_positions == k for k in range(num_keywords)], dim=1).to(states.dtype)  # (N, K, L)
    counts = one_hot.sum(-1)  # (N, K)
    sums = torch.einsum("nkl,nld->nkd", one_hot, states)
    turn, keyword = torch.nonzero(counts > 0, as_tuple=True)
    return sums[turn, keyword] / counts[turn, keyword, None], turn, keyword


def group_means(vectors: Tensor, groups: Tensor, num_groups: int) -> tuple[Tensor, Tensor]:
    """``(means (G, D), counts (G,))`` of the rows of ``vectors`` per group id; a group without rows has a zero mean."""
    sums = torch.zeros(num_groups, vectors.shape[1], dtype=vectors.dtype).index_add_(0, groups, vectors)
    counts = torch.zeros(num_groups, dtype=torch.long).index_add_(0, groups, torch.ones_like(groups))
    return sums / counts.clamp_min(1)[:, None].to(vectors.dtype), counts


def cosine_distance(a: Tensor, b: Tensor) -> Tensor:
    """``1 - cos(a, b)`` along the last dimension (0 for parallel, 1 for orthogonal, 2 for opposite vectors).

    Raises:
        ValueError: a zero vector (its direction, hence the cosine, is undefined).
    """
    a, b = a.double(), b.double()
    norms = a.norm(dim=-1) * b.norm(dim=-1)
    if bool((norms == 0).any()):
        raise ValueError("cosine distance of a zero vector is undefined")
    return 1.0 - (a * b).sum(-1) / norms


def permutation_baseline(vectors_a: Tensor, vectors_b: Tensor, draws: int, generator: torch.Generator) -> tuple[float, float]:
    """Mean and standard deviation of ``1 - cos`` between the means of random relabellings of the pooled contexts into
    groups of sizes ``len(vectors_a)`` and ``len(vectors_b)`` (the permutation null of the polarity; see the module docstring)."""
    if draws < 2:
        raise ValueError(f"draws must be at least 2 (a standard deviation), got {draws}")
    pooled = torch.cat([vectors_a, vectors_b]).double()
    n_a = len(vectors_a)
    values = []
    for _ in range(draws):
        order = torch.randperm(len(pooled), generator=generator)
        values.append(float(cosine_distance(pooled[order[:n_a]].mean(0), pooled[order[n_a:]].mean(0))))
    return float(np.mean(values)), float(np.std(values, ddof=1))


def split_half_baseline(vectors: Tensor, draws: int, generator: torch.Generator) -> tuple[float, float]:
    """Mean and standard deviation of the within-source ``1 - cos`` between the means of two random halves of one
    source's contexts (an odd count leaves the extra context in the second half)."""
    if len(vectors) < 2 or draws < 2:
        raise ValueError(f"need at least 2 contexts and 2 draws, got {len(vectors)} and {draws}")
    values = []
    for _ in range(draws):
        order = torch.randperm(len(vectors), generator=generator)
        half = len(vectors) // 2
        values.append(float(cosine_distance(vectors[order[:half]].double().mean(0), vectors[order[half:]].double().mean(0))))
    return float(np.mean(values)), float(np.std(values, ddof=1))


@dataclass(frozen=True)
class PolarityTable:
    """Polarity per keyword and period, ``(K, T)`` float64 arrays; ``NaN`` where a source has fewer than ``min_contexts``.

    Attributes:
        polarity: ``1 - cos(mean_a, mean_b)``.
        baseline: the mean of the baseline draws (see the module docstring).
        baseline_sd: their standard deviation.
        normalised: ``polarity - baseline``.
        z: ``(polarity - baseline) / baseline_sd`` (``baseline_sd`` floored at 1e-12).
        counts: ``(K, T, 2)`` contexts of source 0 and source 1.
    """

    polarity: np.ndarray
    baseline: np.ndarray
    baseline_sd: np.ndarray
    normalised: np.ndarray
    z: np.ndarray
    counts: np.ndarray

    def to_dict(self) -> dict[str, list]:
        """JSON-ready lists (``NaN`` becomes ``None``)."""
        return {name: np.where(np.isnan(v), None, v).tolist() if v.dtype.kind == "f" else v.tolist() for name, v in asdict(self).items()}


def polarity_table(
    vectors: Tensor,
    keyword: Tensor,
    period: Tensor,
    source: Tensor,
    num_keywords: int,
    num_periods: int,
    baseline: Literal["permutation", "split_half"] = "permutation",
    draws: int = 20,
    min_contexts: int = 2,
    seed: int = 0,
) -> PolarityTable:
    """Polarity, baseline and normalised polarity of every (keyword, period) from contextual vectors.

    Args:
        vectors: ``(M, D)`` contextual vectors (e.g. from :func:`pool_keyword_states`).
        keyword, period, source: ``(M,)`` long ids of each vector (source 0 or 1).
        num_keywords, num_periods: the table's size.
        baseline: ``"permutation"`` (default) or ``"split_half"``, see the module docstring.
        draws: random draws per cell for the baseline.
        min_contexts: a cell needs at least this many contexts from each source (>= 2), else it is ``NaN``.
        seed: the seed of the baseline draws (a ``torch.Generator``: the table is reproducible).

    Raises:
        ValueError: bad shapes or ids, an unknown baseline, ``min_contexts < 2``, non-finite vectors.
    """
    if baseline not in ("permutation", "split_half"):
        raise ValueError(f"baseline must be 'permutation' or 'split_half', got {baseline!r}")
    if min_contexts < 2:
        raise ValueError(f"min_contexts must be at least 2, got {min_contexts}")
    if vectors.dim() != 2 or not (len(keyword) == len(period) == len(source) == len(vectors)):
        raise ValueError("vectors must be (M, D) with one keyword, period and source id per row")
    if not bool(torch.isfinite(vectors).all()):
        raise ValueError("the contextual vectors are not finite")
    if len(source) and not bool(((source == 0) | (source == 1)).all()):
        raise ValueError("source ids must be 0 or 1")
    generator = torch.Generator().manual_seed(seed)
    shape = (num_keywords, num_periods)
    pol, base, sd = np.full(shape, np.nan), np.full(shape, np.nan), np.full(shape, np.nan)
    counts = np.zeros(shape + (2,), dtype=np.int64)
    vectors = vectors.double()
    for k in range(num_keywords):
        for t in range(num_periods):
            cell = (keyword == k) & (period == t)
            a, b = vectors[cell & (source == 0)], vectors[cell & (source == 1)]
            counts[k, t] = (len(a), len(b))
            if min(len(a), len(b)) < min_contexts:
                continue
            pol[k, t] = float(cosine_distance(a.mean(0), b.mean(0)))
            if baseline == "permutation":
                base[k, t], sd[k, t] = permutation_baseline(a, b, draws, generator)
            else:
                (mean_a, sd_a), (mean_b, sd_b) = split_half_baseline(a, draws, generator), split_half_baseline(b, draws, generator)
                base[k, t], sd[k, t] = (mean_a + mean_b) / 2, float(np.sqrt((sd_a**2 + sd_b**2) / 2))
    normalised = pol - base
    return PolarityTable(pol, base, sd, normalised, normalised / np.maximum(sd, 1e-12), counts)


def topic_average(series: np.ndarray, keywords: Sequence[str], topics: Mapping[str, Sequence[str]]) -> dict[str, np.ndarray]:
    """Per topic, the mean over its keywords of ``series`` ``(K, T)`` (row ``k`` is ``keywords[k]``); NaN propagates."""
    index = {word: k for k, word in enumerate(keywords)}
    out = {}
    for topic, words in topics.items():
        missing = [w for w in words if w not in index]
        if missing or not words:
            raise ValueError(f"topic {topic!r} names keywords that are not analysed: {missing or 'none given'}")
        out[topic] = series[[index[w] for w in words]].mean(0)
    return out


def drift_start(z: Sequence[float] | np.ndarray, z_threshold: float = 3.0, persistence: int = 3) -> int | None:
    """The first period ``t`` with ``z[t], ..., z[t + persistence - 1]`` all ``>= z_threshold``; ``None`` if there is none.

    ``NaN`` periods never count as above the threshold.
    """
    if persistence < 1:
        raise ValueError(f"persistence must be at least 1, got {persistence}")
    above = np.nan_to_num(np.asarray(z, dtype=np.float64), nan=-np.inf) >= z_threshold
    for t in range(len(above)):
        if t + persistence <= len(above) and above[t : t + persistence].all():
            return t
    return None


@dataclass(frozen=True)
class GrangerResult:
    """One direction of a Granger test, ``cause -> effect``.

    Attributes:
        p_values: the ssr F-test p-value at lags ``1..maxlag``.
        f_statistics: the F statistics at those lags.
        lag: the lag the VAR's AIC selected (1..maxlag).
        p_value: the p-value at ``lag``.
        min_p_value: the smallest p-value over the lags (uncorrected).
        differenced: whether the series were differenced once before the test.
    """

    p_values: list[float]
    f_statistics: list[float]
    lag: int
    p_value: float
    min_p_value: float
    differenced: bool

    def to_dict(self) -> dict:
        return asdict(self)


def _check_series(values: np.ndarray, name: str, maxlag: int) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1:
        raise LitzooError(f"Granger test: the {name} series must be one-dimensional, got shape {values.shape}")
    bad = np.flatnonzero(~np.isfinite(values))
    if len(bad):
        raise LitzooError(f"Granger test: the {name} series is not finite at period(s) {bad.tolist()[:5]}")
    if np.ptp(values) == 0:
        raise LitzooError(f"Granger test: the {name} series is constant ({values[0]:g}); nothing can be forecast from or of it")
    return values


def granger_causality(
    cause: Sequence[float] | np.ndarray,
    effect: Sequence[float] | np.ndarray,
    maxlag: int = 3,
    difference: Literal["auto", "always", "never"] = "auto",
) -> GrangerResult:
    """Whether ``cause`` Granger-causes ``effect``: statsmodels' ssr F test at lags ``1..maxlag`` (see the module docstring).

    Raises:
        LitzooError: series of different lengths, too short for ``maxlag`` (statsmodels needs more than ``3 * maxlag + 1``
            observations after differencing, here at least ``3 * maxlag + 2``), constant, or not finite.
        ValueError: ``maxlag < 1`` or an unknown ``difference``.
    """
    from statsmodels.tsa.api import VAR
    from statsmodels.tsa.stattools import adfuller, grangercausalitytests

    if not isinstance(maxlag, int) or maxlag < 1:
        raise ValueError(f"maxlag must be a positive integer, got {maxlag!r}")
    if difference not in ("auto", "always", "never"):
        raise ValueError(f"difference must be 'auto', 'always' or 'never', got {difference!r}")
    x, y = _check_series(cause, "cause", maxlag), _check_series(effect, "effect", maxlag)
    if len(x) != len(y):
        raise LitzooError(f"Granger test: the series have different lengths ({len(x)} and {len(y)})")
    differenced = difference == "always"
    if difference == "auto":
        if len(x) < 3 * maxlag + 3:
            raise LitzooError(f"Granger test: {len(x)} periods are too few for maxlag {maxlag} (need at least {3 * maxlag + 3} with a stationarity check)")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            differenced = max(adfuller(x, autolag="AIC")[1], adfuller(y, autolag="AIC")[1]) > 0.05
    if differenced:
        x, y = _check_series(np.diff(x), "differenced cause", maxlag), _check_series(np.diff(y), "differenced effect", maxlag)
    if len(x) < 3 * maxlag + 2:
        raise LitzooError(f"Granger test: {len(x)} periods{' after differencing' if differenced else ''} are too few for maxlag {maxlag} "
                          f"(need at least {3 * maxlag + 2})")  # fmt: skip
    data = np.column_stack([y, x])  # statsmodels tests whether the second column Granger-causes the first
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = grangercausalitytests(data, maxlag=maxlag)
        try:
            selected = VAR(data).select_order(maxlag).selected_orders["aic"]
        except (ValueError, np.linalg.LinAlgError):
            selected = 1
    f_stats = [float(results[lag][0]["ssr_ftest"][0]) for lag in range(1, maxlag + 1)]
    p_values = [float(results[lag][0]["ssr_ftest"][1]) for lag in range(1, maxlag + 1)]
    if not np.all(np.isfinite(p_values)):
        raise LitzooError("Granger test: statsmodels returned non-finite p-values (a perfectly collinear pair of series?)")
    lag = int(min(max(int(selected), 1), maxlag))
    return GrangerResult(p_values, f_stats, lag, p_values[lag - 1], float(min(p_values)), bool(differenced))

