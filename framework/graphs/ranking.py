"""Filtered ranking of the true answer among all candidates, and MRR / MR / Hits@k from the ranks.

Protocol (Bordes et al. 2013's "filtered" setting, as the official code applies it): for a query ``(h, r, ?)``,
``(?, r, t)`` or ``(h, ?, t)`` every candidate scores; the other candidates that form a known true triple (train, valid
or test) are filtered out, and the rank of the true candidate among the rest is reported.

Verified against the official evaluations. PathCon (hwwang55/PathCon ``src/train.py:calculate_ranking_metrics``) ranks
relations: it subtracts 1 from the softmax probability of every other true relation of ``(h, t)`` (taken from all three
splits), which puts them below every unfiltered one -- here they are removed, the same ranking. GraIL (kkteru/grail
``test_ranking.py:get_rank``) ranks the true triple, placed at index 0, among negatives that avoid known edges, with
``np.argsort(scores)[::-1]``. Both break ties by ``argsort``'s order, which is implementation-defined; for GraIL it puts
index 0 after its ties, i.e. the pessimistic rank. Chosen: ``ties="pessimistic"`` by default (rank = 1 + number of
candidates scoring at least the true one), ``"optimistic"`` (1 + strictly higher) and ``"realistic"`` (their mean, what
pykeen reports) on request, so a constant scorer can never look good. Non-finite scores are an error.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

TIES = ("pessimistic", "optimistic", "realistic")
QUERIES = {"tail": (0, 1), "head": (1, 2), "relation": (0, 2)}  # the two known columns of (head, relation, tail)
ANSWER = {"tail": 2, "head": 0, "relation": 1}


def true_answers(triples: Iterable[Tensor], query: str) -> dict[tuple[int, int], set[int]]:
    """For each known pair of a query, the set of true answers over all given ``(N, 3)`` triple tensors.

    ``query="tail"`` keys ``(head, relation)`` -> tails, ``"head"`` keys ``(relation, tail)`` -> heads,
    ``"relation"`` keys ``(head, tail)`` -> relations (PathCon's ``true_relations``)."""
    if query not in QUERIES:
        raise ValueError(f"query must be one of {sorted(QUERIES)}, got {query!r}")
    a, b = QUERIES[query]
    answers: dict[tuple[int, int], set[int]] = defaultdict(set)
    for part in triples:
        for row in part.tolist():
            answers[(row[a], row[b])].add(row[ANSWER[query]])
    return answers


def filter_mask(queries: Tensor, query: str, answers: dict[tuple[int, int], set[int]], num_candidates: int) -> Tensor:
    """``(B, num_candidates)`` bool: True at the *other* true answers of each query triple (its own answer stays False)."""
    a, b = QUERIES[query]
    mask = torch.zeros(len(queries), num_candidates, dtype=torch.bool)
    for i, row in enumerate(queries.tolist()):
        others = answers.get((row[a], row[b]), set()) - {row[ANSWER[query]]}
        if others:
            mask[i, list(others)] = True
    return mask


def filtered_ranks(scores: Tensor, targets: Tensor, filter: Tensor | None = None, ties: str = "pessimistic") -> Tensor:
    """The 1-based rank of ``scores[i, targets[i]]`` among row ``i``'s candidates, higher score = better.

    Args:
        scores: ``(B, C)`` finite scores of all candidates.
        targets: ``(B,)`` the true candidate of each row.
        filter: ``(B, C)`` bool, True at candidates to leave out (other true answers); the target itself is never left out.
        ties: how candidates scoring exactly the target's score count: ``"pessimistic"`` all ahead of it,
            ``"optimistic"`` none, ``"realistic"`` half of them (the mean of the two).

    Returns:
        ``(B,)`` float ranks.
    """
    if ties not in TIES:
        raise ValueError(f"ties must be one of {TIES}, got {ties!r}")
    if scores.dim() != 2 or targets.shape != scores.shape[:1]:
        raise ValueError(f"scores must be (B, C) and targets (B,), got {tuple(scores.shape)} and {tuple(targets.shape)}")
    if not torch.isfinite(scores).all():
        raise ValueError("scores must be finite (a NaN or infinite score has no rank)")
    target_scores = scores.gather(1, targets[:, None])
    keep = torch.ones_like(scores, dtype=torch.bool)
    if filter is not None:
        keep = ~filter.to(torch.bool)
    keep = keep.scatter(1, targets[:, None], True)
    higher = ((scores > target_scores) & keep).sum(1).float()
    tied = ((scores == target_scores) & keep).sum(1).float() - 1.0  # the target ties with itself
    if ties == "optimistic":
        return 1.0 + higher
    if ties == "pessimistic":
        return 1.0 + higher + tied
    return 1.0 + higher + tied / 2.0


def ranking_metrics(ranks: Tensor, ks: Sequence[int] = (1, 3, 10)) -> dict[str, float]:
    """``{"mrr", "mr", "hits@k"...}`` of a vector of 1-based ranks (the means PathCon and GraIL print)."""
    if ranks.numel() == 0:
        raise ValueError("no ranks to summarise")
    ranks = ranks.double()
    metrics = {"mrr": (1.0 / ranks).mean().item(), "mr": ranks.mean().item()}
    for k in ks:
        metrics[f"hits@{k}"] = (ranks <= k).double().mean().item()
    return metrics


def relation_ranking(logits: Tensor, triples: Tensor, answers: dict[tuple[int, int], set[int]]) -> tuple[Tensor, Tensor, Tensor]:
    """PathCon's evaluation of one batch of relation predictions (``src/train.py:calculate_ranking_metrics``).

    Args:
        logits: ``(B, R)`` scores of every relation for each ``(h, ?, t)`` query.
        triples: ``(B, 3)`` the true ``(h, r, t)``.
        answers: :func:`true_answers` ``(..., "relation")`` of all splits (the other true relations are filtered out).

    Returns:
        ``(ranks, correct, cross_entropy)``, each ``(B,)`` float on the CPU: the filtered pessimistic rank of ``r``,
        whether the arg-max is ``r`` and the softmax cross-entropy of ``r``; :func:`relation_ranking_metrics` sums them up.
    """
    logits = logits.detach().float().cpu()
    triples = triples.cpu()
    mask = filter_mask(triples, "relation", answers, logits.shape[1])
    ranks = filtered_ranks(logits, triples[:, 1], mask)
    correct = (logits.argmax(1) == triples[:, 1]).float()
    return ranks, correct, F.cross_entropy(logits, triples[:, 1], reduction="none")


def relation_ranking_metrics(outputs: Sequence[tuple[Tensor, Tensor, Tensor]], ks: Sequence[int] = (1, 3, 5)) -> dict[str, float]:
    """``{"mrr", "mr", "hits@k"..., "acc", "loss"}`` over the :func:`relation_ranking` outputs of an epoch's batches."""
    if not outputs:
        raise ValueError("no relation-ranking outputs to summarise")
    metrics = ranking_metrics(torch.cat([r for r, _, _ in outputs]), ks=ks)
    metrics["acc"] = torch.cat([c for _, c, _ in outputs]).mean().item()
    metrics["loss"] = torch.cat([lo for _, _, lo in outputs]).mean().item()  # cross-entropy, what checkpoints monitor
    return metrics
