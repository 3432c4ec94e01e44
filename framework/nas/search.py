"""Predictor-guided, FLOPs-constrained evolutionary architecture search over :mod:`litzoo.framework.nas.spaces`.

GENNAPE (Mills et al., "GENNAPE: Towards Generalized Neural Architecture Performance Estimators",
AAAI 2023, arXiv 2211.17226) reports that "when paired with a search algorithm, GENNAPE can find
architectures that improve accuracy while reducing FLOPs", and the transferable computation-graph
predictor (Han et al., "A General-Purpose Transferable Predictor for Neural Architecture Search", SDM 2023,
arXiv 2302.10835) uses its predictor "in an evolutionary neural architecture search algorithm". Neither
paper's search code is public (the GENNAPE repository, Ascend-Research/GENNAPE, releases the predictor
demo only) and their abstracts do not give the search's settings, so this module implements the standard
mutation-only evolution of predictor-based NAS, **regularized (aging) evolution** (Real et al.,
"Regularized Evolution for Image Classifier Architecture Search", AAAI 2019):

1. draw ``population`` random specs of the family whose FLOPs are within ``flops_limit`` and score them;
2. each generation, ``children`` times: take ``sample_size`` members of the population at random, the best
   of them (tournament) is the parent, :func:`litzoo.framework.nas.spaces.mutate_spec` makes one local change;
   children over ``flops_limit`` are discarded (redrawn) before they are scored;
3. the children of a generation are scored in one batched call ``score_fn(specs)`` and join the population;
   the same number of the *oldest* members leave it (aging, not the worst: Real et al.'s regularization);
4. every scored spec is kept in the history; the result is the ``top_k`` distinct specs by score.

Defaults, chosen here (not from the papers): ``population=50``, ``sample_size=10``, ``children=25`` per
generation, ``generations=40`` — 1,050 predictor calls, seconds of GNN inference; Real et al. use
population 100 / sample 25 on NAS-Bench-like budgets, and the predictor papers then train the top
candidates for real (the command here: ``--evaluate 20``). A spec met again is not rescored: its first
score is reused (the score functions here are deterministic), so ``score_calls`` counts distinct specs.

FLOPs follow :func:`litzoo.framework.profiling.count_flops` (a multiply-add is 2 FLOPs) of the built network on one
``1x1x8x8`` digit (the global RNG is left untouched), cached per spec JSON.

:func:`predictor_score_fn` turns any predictor whose ``forward`` takes a ``torch_geometric`` ``Batch`` of
computation graphs (e.g. :class:`litzoo.modules.gennape.GENNAPEModule`) into a ``score_fn``; :func:`random_search`
is the baseline; :func:`evaluate_candidates` trains the best candidates for real on injected data
(:class:`litzoo.framework.nas.labelling.TrainValSplits`). ``litzoo nas-search`` (``litzoo/cli/nas.py``) is the
command: it loads a GENNAPE checkpoint, searches and evaluates on the digits.
"""

from __future__ import annotations

import functools
import json
import math
import random
from collections import deque
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from litzoo.framework.nas.labelling import TrainValSplits, label_network, network_graph
from litzoo.framework.nas.spaces import (
    FAMILIES,
    INPUT_SHAPE,
    MAX_PARAMS,
    ArchSpec,
    build_network,
    check_family,
    mutate_spec,
    sample_spec,
    spec_from_dict,
)

ScoreFn = Callable[[Sequence[ArchSpec]], Tensor]
"""``score_fn(specs) -> (len(specs),)`` scores, higher is better (e.g. predicted accuracy)."""


# --------------------------------------------------------------------------------------------- costs
def spec_key(spec: ArchSpec) -> str:
    """The canonical JSON of a spec: the key of every cache and of "distinct"."""
    return json.dumps(spec.to_dict(), sort_keys=True, separators=(",", ":"))


@contextmanager
def _one_thread():
    """Batch-1 forwards of tiny networks run fastest on one intra-op thread (and leave the other cores free)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@functools.lru_cache(maxsize=65536)
def _flops_of_key(key: str) -> int:
    from litzoo.framework.profiling import count_flops

    with _one_thread(), torch.random.fork_rng(devices=[]):  # weights do not change FLOPs; the global RNG is left as it was
        return count_flops(build_network(spec_from_dict(json.loads(key))), torch.zeros(INPUT_SHAPE))


def spec_flops(spec: ArchSpec) -> int:
    """FLOPs of ``build_network(spec)`` on one ``1x1x8x8`` input (``torch.utils.flop_counter``; cached per spec)."""
    return _flops_of_key(spec_key(spec))


def spec_graph(spec: ArchSpec):
    """The unlabelled computation graph of ``build_network(spec)`` (:func:`litzoo.framework.nas.labelling.network_graph`,
    input ``1x1x8x8``); the global RNG is left untouched."""
    with _one_thread(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the graph holds shapes, not weights; seeded anyway so it never depends on state
        return network_graph(build_network(spec), None, spec.family)


# --------------------------------------------------------------------------------------------- results
@dataclass
class Candidate:
    """A scored spec: ``score`` from the score function, ``flops`` at batch 1, ``step`` = its order in the search."""

    spec: ArchSpec
    score: float
    flops: int
    step: int

    def to_dict(self) -> dict[str, Any]:
        return {"spec": self.spec.to_dict(), "score": self.score, "flops": self.flops, "step": self.step}


@dataclass
class SearchResult:
    """What a search returns.

    Attributes:
        family: the searched family.
        flops_limit: the FLOPs bound every candidate satisfies.
        best: the ``top_k`` distinct candidates, best score first.
        history: every scored candidate in the order scored (each distinct spec once).
        score_calls: specs passed to the score function (= ``len(history)``).
        rejected: specs drawn or mutated over ``flops_limit`` and discarded unscored.
    """

    family: str
    flops_limit: float
    best: list[Candidate]
    history: list[Candidate] = field(default_factory=list)
    score_calls: int = 0
    rejected: int = 0


def _check_common(family: str, flops_limit: float, seed: int) -> str:
    if family not in FAMILIES:
        raise ValueError(f"unknown architecture family '{family}' (expected one of {', '.join(FAMILIES)})")
    if not isinstance(flops_limit, (int, float)) or not flops_limit > 0 or math.isnan(flops_limit):
        raise ValueError(f"flops_limit must be a positive number of FLOPs, got {flops_limit}")
    if not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    return check_family(family)


def _score(score_fn: ScoreFn, specs: list[ArchSpec]) -> list[float]:
    scores = score_fn(specs)
    scores = torch.as_tensor(scores, dtype=torch.float64).detach().cpu().reshape(-1)
    if scores.numel() != len(specs):
        raise ValueError(f"score_fn returned {scores.numel()} scores for {len(specs)} specs")
    if not bool(torch.isfinite(scores).all()):
        raise ValueError("score_fn returned a non-finite score")
    return scores.tolist()


def _sample_within(family: str, rng: random.Random, flops_limit: float, max_params: int, tries: int) -> tuple[ArchSpec, int]:
    """A random spec within ``flops_limit`` and how many were rejected before it."""
    for rejected in range(tries):
        spec = sample_spec(family, rng, max_params)
        if spec_flops(spec) <= flops_limit:
            return spec, rejected
    raise ValueError(f"no random {family} network within {flops_limit:.3g} FLOPs in {tries} draws: raise flops_limit")


def _top_k(history: list[Candidate], top_k: int) -> list[Candidate]:
    # history holds each spec once; a stable sort keeps the earlier of equal scores first
    return sorted(history, key=lambda c: -c.score)[:top_k]


# --------------------------------------------------------------------------------------------- searches
def random_search(
    family: str,
    n: int,
    flops_limit: float,
    seed: int = 0,
    score_fn: ScoreFn | None = None,
    max_params: int = MAX_PARAMS,
    top_k: int | None = None,
) -> SearchResult:
    """The baseline: ``n`` distinct random specs of ``family`` (the sampler of :mod:`litzoo.framework.nas.spaces`,
    seeded) within ``flops_limit``.

    Args:
        family: one of :data:`litzoo.framework.nas.spaces.FAMILIES`.
        n: distinct specs to draw.
        flops_limit: FLOPs bound (batch 1); specs over it are redrawn.
        seed: seed of the draws.
        score_fn: scores the ``n`` specs in one call (``None``: no scoring, every score is NaN and ``best``
            keeps the draw order).
        max_params: parameter bound of the specs.
        top_k: candidates in ``best`` (default ``n``).
    """
    family = _check_common(family, flops_limit, seed)
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    rng = random.Random(seed)
    specs: dict[str, ArchSpec] = {}
    rejected = 0
    for _ in range(100 * n):
        if len(specs) == n:
            break
        spec, skipped = _sample_within(family, rng, flops_limit, max_params, tries=100 * n)
        rejected += skipped
        specs.setdefault(spec_key(spec), spec)
    if len(specs) < n:
        raise ValueError(f"could not draw {n} distinct {family} networks within {flops_limit:.3g} FLOPs")
    chosen = list(specs.values())
    scores = _score(score_fn, chosen) if score_fn is not None else [math.nan] * n
    history = [Candidate(s, v, spec_flops(s), i) for i, (s, v) in enumerate(zip(chosen, scores, strict=True))]
    best = _top_k(history, top_k or n) if score_fn is not None else history[: top_k or n]
    return SearchResult(family, float(flops_limit), best, history, n if score_fn is not None else 0, rejected)


def evolutionary_search(
    family: str,
    score_fn: ScoreFn,
    flops_limit: float,
    population: int = 50,
    generations: int = 40,
    sample_size: int = 10,
    children: int = 25,
    top_k: int = 20,
    seed: int = 0,
    max_params: int = MAX_PARAMS,
    progress: bool = False,
) -> SearchResult:
    """Regularized (aging) evolution (Real et al., AAAI 2019) of ``family`` specs under a FLOPs limit, scored
    by ``score_fn`` — a performance predictor in the predictor-guided NAS of GENNAPE (arXiv 2211.17226) and
    of Han et al. (arXiv 2302.10835). See the module docstring for the loop; deterministic given ``seed``
    (and a deterministic ``score_fn``).

    Args:
        family: one of :data:`litzoo.framework.nas.spaces.FAMILIES`.
        score_fn: ``score_fn(specs) -> (len(specs),)`` tensor, higher is better; called once for the initial
            population and once per generation (batched).
        flops_limit: no candidate (scored or returned) has more FLOPs (batch 1).
        population: size of the aging population (and of the random initial one).
        generations: evolution cycles after the initial population.
        sample_size: tournament size (members sampled to choose a parent), at most ``population``.
        children: mutated children per generation (scored in one call), at most ``population``.
        top_k: distinct best-scored candidates returned in ``best``.
        seed: seed of sampling, tournaments and mutations.
        max_params: parameter bound of every spec.
        progress: show a tqdm progress bar over generations.
    """
    family = _check_common(family, flops_limit, seed)
    for name, value in (("population", population), ("sample_size", sample_size), ("children", children), ("top_k", top_k)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if not isinstance(generations, int) or generations < 0:
        raise ValueError(f"generations must be an int >= 0, got {generations!r}")
    if sample_size > population or children > population:
        raise ValueError(f"sample_size ({sample_size}) and children ({children}) must not exceed population ({population})")
    if not callable(score_fn):
        raise ValueError("score_fn must be callable: score_fn(specs) -> tensor of scores")
    from tqdm.auto import tqdm

    rng = random.Random(seed)
    seen: dict[str, Candidate] = {}
    history: list[Candidate] = []
    rejected = 0

    def score_new(specs: list[ArchSpec]) -> list[Candidate]:
        """Candidates of ``specs``: new distinct specs scored in one call, specs met before reuse their score."""
        fresh: dict[str, ArchSpec] = {}
        for spec in specs:
            key = spec_key(spec)
            if key not in seen:
                fresh.setdefault(key, spec)
        if fresh:
            for spec, value in zip(fresh.values(), _score(score_fn, list(fresh.values())), strict=True):
                candidate = Candidate(spec, value, spec_flops(spec), len(history))
                seen[spec_key(spec)] = candidate
                history.append(candidate)
        return [seen[spec_key(spec)] for spec in specs]

    initial = []
    for _ in range(population):
        spec, skipped = _sample_within(family, rng, flops_limit, max_params, tries=100 * population)
        rejected += skipped
        initial.append(spec)
    members: deque[Candidate] = deque(score_new(initial))
    for _ in tqdm(range(generations), desc=f"evolution {family}", disable=not progress):
        offspring = []
        for _ in range(children):
            parent = max(rng.sample(list(members), sample_size), key=lambda c: c.score)
            for _ in range(100):
                child = mutate_spec(parent.spec, rng, max_params)
                if spec_flops(child) <= flops_limit:
                    offspring.append(child)
                    break
                rejected += 1
            # a parent with no child within the limit in 100 tries adds nothing this time
        for candidate in score_new(offspring):
            members.append(candidate)
            members.popleft()  # aging: the oldest member dies
    return SearchResult(family, float(flops_limit), _top_k(history, top_k), history, len(history), rejected)


# --------------------------------------------------------------------------------------------- predictors
def predictor_score_fn(predictor: nn.Module, batch_size: int = 64, device: str | torch.device | None = None) -> ScoreFn:
    """A ``score_fn`` that scores specs with ``predictor`` on their computation graphs.

    Each spec becomes :func:`spec_graph` ``(spec).to_pyg()`` (cached per spec JSON); graphs are batched
    (``torch_geometric.data.Batch``, ``batch_size`` at a time) and ``predictor(batch)`` must return one score
    per graph (e.g. :class:`litzoo.modules.gennape.GENNAPEModule`: standardised predicted accuracy). The predictor
    runs in eval mode under ``no_grad`` and is returned to its previous mode.

    Args:
        predictor: an ``nn.Module`` whose forward takes a ``torch_geometric`` ``Batch``.
        batch_size: graphs per forward.
        device: where to run (default: the device of the predictor's first parameter, else CPU).
    """
    if not isinstance(predictor, nn.Module):
        raise ValueError(f"predictor must be an nn.Module whose forward takes a torch_geometric Batch, got {type(predictor).__name__}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if device is None:
        first = next(predictor.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
    cache: dict[str, Any] = {}

    def data_of(spec: ArchSpec):
        key = spec_key(spec)
        if key not in cache:
            cache[key] = spec_graph(spec).to_pyg()
        return cache[key]

    def score(specs: Sequence[ArchSpec]) -> Tensor:
        from torch_geometric.data import Batch

        if not specs:
            return torch.zeros(0)
        graphs = [data_of(spec) for spec in specs]
        was_training = predictor.training
        predictor.eval()
        outputs = []
        try:
            with torch.no_grad():
                for start in range(0, len(graphs), batch_size):
                    batch = Batch.from_data_list(graphs[start : start + batch_size]).to(device)
                    outputs.append(predictor(batch).reshape(-1).float().cpu())
        finally:
            predictor.train(was_training)
        return torch.cat(outputs)

    return score


def evaluate_candidates(
    candidates: Sequence[Candidate],
    data: TrainValSplits,
    epochs: int = 3,
    seed: int = 0,
    train_subset: int | None = None,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Trains each candidate on ``data`` (:func:`litzoo.framework.nas.labelling.label_network`: AdamW, ``epochs``,
    weights and batch order seeded by ``seed``, one thread; the first ``train_subset`` training images only when
    given) and returns ``{"rank", "family", "spec", "predicted", "accuracy", "flops", "params", "latency_ms"}``
    per candidate, in the given order."""
    from tqdm.auto import tqdm

    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    data = data.with_train_subset(train_subset)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    records = []
    try:
        for rank, candidate in enumerate(tqdm(candidates, desc="training candidates", disable=not progress)):
            _, labels = label_network(candidate.spec, data, epochs, seed, latency_repeats=3)
            records.append({"rank": rank, "family": candidate.spec.family, "spec": candidate.spec.to_dict(), "predicted": candidate.score,
                            "accuracy": labels["accuracy"], "flops": labels["flops"], "params": labels["params"],
                            "latency_ms": labels["latency_ms"]})  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    return records
