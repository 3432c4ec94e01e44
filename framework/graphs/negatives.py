"""Corrupted negatives of knowledge-graph triples, the margin ranking objective against them, and the ranking candidates
of the GraIL / CoMPILE evaluation; shared by CoMPILE and its entity-embedding baseline (DistMult, link mode) so both
train and evaluate against the same draws.

Verified against GraIL (kkteru/grail ``subgraph_extraction/graph_sampler.py:sample_neg``, ``test_ranking.py``) and CoMPILE
(TmacMai/CoMPILE_Inductive_Knowledge_Graph ``managers/trainer.py``), which builds on it: a negative replaces the head or
the tail, with probability 1/2 each, by a uniform entity and is rejected when its head equals its tail or it is a known
triple; the loss is ``MarginRankingLoss(margin, reduction="sum")`` with target 1 between each positive and its negative;
a ranking query is the true triple against corrupted heads (and separately corrupted tails) that are not known triples.
Chosen where the code is silent: several negatives per positive enter the loss through their mean; the ranking
candidates are drawn without replacement from the free entities with a seeded ``random.Random``.

:func:`split_negatives` draws, from one seeded generator, the negatives of the train, valid and test splits in that order
(the test split over the test graph, the disjoint-entity one in the inductive setting): the order CoMPILE draws them in,
so two modules given the same graphs and seed see the same negatives. :func:`link_ranks` and :func:`link_metrics` are
CoMPILE's evaluation (``test_ranking.py``, ``test_auc.py``) as functions of a scorer: the ranks among corrupted heads and
tails, AUC-PR and ROC-AUC.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from sklearn.metrics import average_precision_score, roc_auc_score
from torch import Tensor

from litzoo.framework.graphs.ranking import filtered_ranks, ranking_metrics
from litzoo.framework.graphs.triples import KnowledgeGraph

Triple = tuple[int, int, int]

#: (module split, name of the graph it is drawn over, file split) in the order negatives are drawn
SPLIT_SOURCES = (("train", "train_graph", "train"), ("val", "train_graph", "valid"), ("test", "test_graph", "test"))


def margin_loss(positive: Tensor, negative: Tensor, margin: float) -> Tensor:
    """``sum_i max(0, margin - (s+_i - mean_j s-_ij))``: the official ``MarginRankingLoss(margin, reduction='sum')``
    with target 1 against the mean of each positive's ``negative`` row ``(B, K)`` (or ``(B,)``)."""
    return F.margin_ranking_loss(positive, negative.reshape(len(positive), -1).mean(1), torch.ones_like(positive), margin=margin, reduction="sum")


def corrupt(triples: Tensor, num_entities: int, known: set[Triple], rng: random.Random, per_triple: int = 1) -> Tensor:
    """``per_triple`` negatives per row of ``triples`` (``(N, 3)``), the official ``sample_neg``: head or tail (1/2 each)
    replaced by a uniform entity, rejected when head == tail or the triple is ``known``. Returns ``(N * per_triple, 3)``."""
    if num_entities < 3:
        raise ValueError("need at least 3 entities to corrupt a triple")
    out = []
    for h, r, t in triples.tolist():
        drawn = 0
        for _ in range(1000 * per_triple):
            nh, nt = (rng.randrange(num_entities), t) if rng.random() < 0.5 else (h, rng.randrange(num_entities))
            if nh != nt and (nh, r, nt) not in known:
                out.append((nh, r, nt))
                drawn += 1
                if drawn == per_triple:
                    break
        if drawn < per_triple:
            raise ValueError(f"could not draw {per_triple} negatives for ({h}, {r}, {t}): too few free entities")
    return torch.tensor(out, dtype=torch.long).reshape(-1, 3)


def ranking_candidates(triple: Triple, num_entities: int, known: set[Triple], count: int, rng: random.Random, side: str) -> list[Triple]:
    """``triple`` then up to ``count`` distinct corruptions of its ``side`` ("head" or "tail") that are not ``known``."""
    h, r, t = triple
    free = [e for e in range(num_entities) if e not in (h, t) and ((e, r, t) if side == "head" else (h, r, e)) not in known]
    chosen = rng.sample(free, min(count, len(free)))
    return [triple] + [((e, r, t) if side == "head" else (h, r, e)) for e in chosen]


def known_triples(graph: KnowledgeGraph) -> set[Triple]:
    """Every triple of every split of ``graph``: what a negative or a ranking candidate must not be."""
    return {tuple(row) for part in graph.splits.values() for row in part.tolist()}


def split_negatives(
    graph: KnowledgeGraph, test_graph: KnowledgeGraph, per_triple: int, seed: int
) -> tuple[dict[str, dict[Triple, Tensor]], dict[str, set[Triple]]]:
    """The negatives of every split, drawn once from ``random.Random(seed)`` in the order train, valid, test.

    Returns ``negatives[split][triple]`` (``(per_triple, 3)``; splits ``"train"``, ``"val"``, ``"test"`` that have
    triples) and ``known[graph_name]`` (``"train_graph"``, ``"test_graph"``; the same set object when they are one graph),
    the known triples the draws avoided."""
    rng = random.Random(seed)
    graphs = {"train_graph": graph, "test_graph": test_graph}
    known: dict[str, set[Triple]] = {"train_graph": known_triples(graph)}
    known["test_graph"] = known["train_graph"] if test_graph is graph else known_triples(test_graph)
    negatives: dict[str, dict[Triple, Tensor]] = {}
    for split, source, name in SPLIT_SOURCES:
        triples = graphs[source].splits.get(name)
        if triples is None or len(triples) == 0:
            continue
        drawn = corrupt(triples, graphs[source].num_entities, known[source], rng, per_triple).reshape(len(triples), per_triple, 3)
        negatives[split] = {tuple(row): negs for row, negs in zip(triples.tolist(), drawn, strict=True)}
    return negatives, known


def link_ranks(score: Callable[[Tensor], Tensor], positives: Tensor, num_entities: int, known: set[Triple], count: int, seed: int) -> Tensor:
    """The rank of each true triple among ``count`` corrupted heads, then among ``count`` corrupted tails (``(2 N,)``,
    pessimistic ties), the candidates drawn by :func:`ranking_candidates` from ``random.Random(seed)`` created here, so
    each call (CoMPILE's evaluation makes one per test batch) draws the same way. ``score`` maps ``(M, 3)`` triples to
    ``(M,)`` scores."""
    rng = random.Random(seed)
    ranks = []
    for row in positives.tolist():
        for side in ("head", "tail"):
            candidates = ranking_candidates(tuple(row), num_entities, known, count, rng, side)
            scores = score(torch.tensor(candidates)).detach().float().cpu()
            ranks.append(filtered_ranks(scores.unsqueeze(0), torch.zeros(1, dtype=torch.long)))
    return torch.cat(ranks) if ranks else torch.empty(0)


def link_metrics(outputs: Sequence[tuple[Tensor, Tensor, Tensor, Tensor]], ks: Sequence[int] = (1, 10)) -> dict[str, float]:
    """``{"loss", "auc_pr", "auc"}`` (and ``mrr``, ``mr``, ``hits@k`` when there are ranks) of an epoch's batches, each
    ``(scores, labels, loss, ranks)``: the scores of true (label 1) and corrupted (label 0) triples, the batch's mean loss
    and its :func:`link_ranks` (possibly empty); what CoMPILE's ``test_auc.py`` / ``test_ranking.py`` report.

    Raises:
        FloatingPointError: a non-finite score.
    """
    scores = torch.cat([o[0] for o in outputs])
    labels = torch.cat([o[1] for o in outputs])
    if not torch.isfinite(scores).all():
        raise FloatingPointError("non-finite link-prediction scores")
    metrics = {
        "loss": torch.cat([o[2].reshape(-1) for o in outputs]).mean().item(),
        "auc_pr": float(average_precision_score(labels.numpy(), scores.numpy())),
        "auc": float(roc_auc_score(labels.numpy(), scores.numpy())),
    }
    ranks = torch.cat([o[3] for o in outputs])
    if ranks.numel():
        metrics.update(ranking_metrics(ranks, ks=ks))
    return metrics


__all__ = [
    "SPLIT_SOURCES",
    "Triple",
    "corrupt",
    "known_triples",
    "link_metrics",
    "link_ranks",
    "margin_loss",
    "ranking_candidates",
    "split_negatives",
]
