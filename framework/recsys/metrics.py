"""HR@K, NDCG@K and MRR of a held-out item, for sampled (among 100 negatives) and full ranking, overall and per user group.

One held-out positive per sample, so with its 1-based rank ``r``: HR@K = ``[r <= K]``, NDCG@K = ``[r <= K] / log2(r + 1)``
(the ideal DCG of one relevant item is 1), MRR = ``1 / r`` (not cut at K). These are the formulas of RecGURU
(Chain123/RecGURU ``GURU/tools/metrics.py``, 0-based rank there) and SASRec's ``evaluate``; they equal torchmetrics'
``RetrievalHitRate``, ``RetrievalNormalizedDCG`` and ``RetrievalMRR`` with one relevant document per query when no
score ties the positive and every score is positive (checked in the tests): torchmetrics' ``retrieval_reciprocal_rank``
(1.x) counts a relevant item whose score is <= 0 as not retrieved, which would make MRR depend on the scores' offset, so
the ranks here are computed directly.

Ties: the rank is pessimistic, ``1 +`` the number of other candidates scoring *at least* the positive
(:func:`litzoo.framework.graphs.ranking.filtered_ranks`), so a constant scorer gets the worst rank, never HR = 1.
RecBole's top-K metrics take ``torch.topk`` of the scores, whose order among equal scores is implementation-defined
(it averages tied ranks only for its ``GAUC``); torchmetrics' retrieval metrics sort with ``argsort``, likewise
unspecified. Non-finite scores are an error.

Full ranking scores every item of the domain, ``(B, num_items + 1)`` with column 0 the padding id (never ranked), and
leaves out the user's other known items (its training items, and for the test its validation item): RecBole's
``full`` evaluation masks the history items the same way.

:class:`RankingMetrics` accumulates these as a torchmetrics ``Metric`` (sums synchronised over DDP ranks), overall and
for a user group such as sparse users (<= 3 training interactions in the target domain).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn
from torchmetrics import Metric

from litzoo.framework.graphs.ranking import filtered_ranks

#: Users with at most this many training interactions in the target domain count as sparse (cold).
SPARSE_MAX_INTERACTIONS = 3


def sampled_ranks(scores: Tensor) -> Tensor:
    """``(B,)`` 1-based pessimistic ranks of column 0 (the positive) among the ``(B, 1 + n)`` candidates' scores."""
    if scores.dim() != 2 or scores.shape[1] < 2:
        raise ValueError(f"scores must be (B, 1 + negatives) with the positive in column 0, got {tuple(scores.shape)}")
    return filtered_ranks(scores, torch.zeros(len(scores), dtype=torch.long, device=scores.device))


def history_mask(histories: Sequence[Iterable[int]], num_items: int, device: torch.device | str | None = None) -> Tensor:
    """``(B, num_items + 1)`` bool, True at each user's known items (the items of ``histories[b]``)."""
    mask = torch.zeros(len(histories), num_items + 1, dtype=torch.bool, device=device)
    for row, items in enumerate(histories):
        items = list(items)
        if items:
            mask[row, torch.as_tensor(items, dtype=torch.long, device=device)] = True
    return mask


def full_ranks(scores: Tensor, targets: Tensor, exclude: Tensor | None = None) -> Tensor:
    """``(B,)`` 1-based pessimistic ranks of ``targets`` among all items.

    Args:
        scores: ``(B, num_items + 1)``, column 0 the padding id (left out).
        targets: ``(B,)`` held-out item ids (>= 1).
        exclude: ``(B, num_items + 1)`` bool, the user's other known items to leave out (:func:`history_mask`);
            the target itself is never left out.
    """
    if scores.dim() != 2 or targets.shape != scores.shape[:1]:
        raise ValueError(f"scores must be (B, num_items + 1) and targets (B,), got {tuple(scores.shape)} and {tuple(targets.shape)}")
    if (targets < 1).any() or (targets >= scores.shape[1]).any():
        raise ValueError("targets must be item ids in 1..num_items (0 is padding)")
    leave_out = torch.zeros_like(scores, dtype=torch.bool) if exclude is None else exclude.to(torch.bool).clone()
    leave_out[:, 0] = True
    leave_out.scatter_(1, targets[:, None], False)  # the target is ranked even when it is in the given history
    # a masked score may be anything, -inf included: replace it so the finiteness check sees only ranked candidates
    return filtered_ranks(scores.masked_fill(leave_out, 0.0), targets, leave_out)


def rank_metrics(ranks: Tensor, ks: Sequence[int] = (10,), group: Tensor | None = None) -> dict[str, float]:
    """``{"hr@K", "ndcg@K", "mrr", "count"}`` means over the ranks (of ``group``'s rows, a bool mask, when given)."""
    ranks = ranks.double()
    if group is not None:
        ranks = ranks[group.to(torch.bool)]
    out: dict[str, float] = {"count": float(ranks.numel())}
    for k in ks:
        hit = ranks <= k
        out[f"hr@{k}"] = hit.double().mean().item() if ranks.numel() else float("nan")
        out[f"ndcg@{k}"] = torch.where(hit, 1.0 / torch.log2(ranks + 1.0), torch.zeros_like(ranks)).mean().item() if ranks.numel() else float("nan")
    out["mrr"] = (1.0 / ranks).mean().item() if ranks.numel() else float("nan")
    return out


class RankingMetrics(Metric):
    """HR@K / NDCG@K / MRR accumulated over batches of ranks, overall and for a user group (summed over DDP ranks).

    ``compute()`` gives ``{"hr@K", "ndcg@K", "mrr"}`` and the same with ``"<group_name>/"`` in front for the rows
    whose group mask was True (NaN when none was).

    Args:
        ks: the cut-offs K.
        group_name: the prefix of the group's metrics.
    """

    full_state_update = False

    def __init__(self, ks: Sequence[int] = (10,), group_name: str = "sparse", **kwargs) -> None:
        super().__init__(**kwargs)
        if not ks or any(int(k) < 1 for k in ks):
            raise ValueError(f"ks must be positive cut-offs, got {ks}")
        self.ks = tuple(int(k) for k in ks)
        self.group_name = group_name
        width = 2 * len(self.ks) + 2  # hr@k..., ndcg@k..., mrr, count
        self.add_state("overall", default=torch.zeros(width, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("group", default=torch.zeros(width, dtype=torch.float64), dist_reduce_fx="sum")

    def _sums(self, ranks: Tensor) -> Tensor:
        ks = torch.tensor(self.ks, dtype=torch.float64, device=ranks.device)
        hit = ranks[:, None] <= ks[None, :]
        ndcg = torch.where(hit, 1.0 / torch.log2(ranks[:, None] + 1.0), torch.zeros_like(hit, dtype=torch.float64))
        return torch.cat([hit.double().sum(0), ndcg.sum(0), (1.0 / ranks).sum().reshape(1), ranks.new_tensor([float(len(ranks))])])

    def update(self, ranks: Tensor, group: Tensor | None = None) -> None:
        """Add a batch of 1-based ``ranks`` ``(B,)``; ``group`` ``(B,)`` bool marks the rows of the group."""
        ranks = ranks.detach().to(torch.float64).reshape(-1)
        if (ranks < 1).any() or not torch.isfinite(ranks).all():
            raise ValueError("ranks must be finite and >= 1")
        self.overall += self._sums(ranks)
        if group is not None:
            self.group += self._sums(ranks[group.reshape(-1).to(torch.bool)])

    def compute(self) -> dict[str, Tensor]:
        out = {}
        for prefix, sums in (("", self.overall), (f"{self.group_name}/", self.group)):
            count = sums[-1]
            means = sums[:-1] / count if count > 0 else torch.full_like(sums[:-1], float("nan"))
            for j, k in enumerate(self.ks):
                out[f"{prefix}hr@{k}"] = means[j]
                out[f"{prefix}ndcg@{k}"] = means[len(self.ks) + j]
            out[f"{prefix}mrr"] = means[-1]
        return out


class SplitRankingMetrics(nn.Module):
    """The ranking metrics a recommender logs: one :class:`RankingMetrics` per (split, group, kind), ``split`` val or
    test, ``kind`` one of ``kinds`` (sampled / full ranking), ``group`` every evaluated row or one of ``groups`` (e.g.
    per target domain), logged as ``{split}/[{group}/]{kind}/[sparse/]{hr@K,ndcg@K,mrr}``.

    Args:
        ks: the cut-offs K.
        kinds: the rankings reported.
        groups: names of groups reported besides all rows (``update(..., group=i)`` adds to ``groups[i]`` too).
    """

    def __init__(self, ks: Sequence[int] = (10,), kinds: Sequence[str] = ("sampled", "full"), groups: Sequence[str] = ()) -> None:
        super().__init__()
        if not kinds:
            raise ValueError("kinds must name at least one ranking")
        self.kinds, self.groups = tuple(kinds), tuple(groups)
        self.metrics = nn.ModuleDict({self._key(split, group, kind): RankingMetrics(ks) for split in ("val", "test")
                                      for group in (None, *range(len(self.groups))) for kind in self.kinds})  # fmt: skip

    @staticmethod
    def _key(split: str, group: int | None, kind: str) -> str:
        return f"{split}_{'all' if group is None else group}_{kind}"  # group indices: a domain name may hold a dot

    def update(self, split: str, kind: str, ranks: Tensor, sparse: Tensor, group: int | None = None) -> None:
        """Add 1-based ``ranks`` ``(B,)`` of ``kind`` (``sparse`` ``(B,)`` marks sparse users) to all rows' metrics, and to ``groups[group]``'s."""
        self.metrics[self._key(split, None, kind)].update(ranks, sparse)
        if group is not None:
            self.metrics[self._key(split, group, kind)].update(ranks, sparse)

    def count(self, split: str) -> int:
        """Rows this process added to ``split`` since the last :meth:`compute` (not synchronised)."""
        return int(self.metrics[self._key(split, None, self.kinds[0])].overall[-1])

    def compute(self, split: str) -> dict[str, Tensor]:
        """The logged values of ``split``, summed over DDP ranks; NaN values (a group without a row on any rank) are
        left out, the same on every rank. Resets the split."""
        out = {}
        for group in (None, *range(len(self.groups))):
            for kind in self.kinds:
                metric = self.metrics[self._key(split, group, kind)]
                prefix = f"{split}/{kind}" if group is None else f"{split}/{self.groups[group]}/{kind}"
                with warnings.catch_warnings():  # a group without a row on this rank may have rows on another
                    warnings.filterwarnings("ignore", message=".*was called before the ``update`` method.*")
                    values = metric.compute()
                out.update({f"{prefix}/{name}": value.float() for name, value in values.items() if torch.isfinite(value)})
                metric.reset()
        return out


__all__ = ["SPARSE_MAX_INTERACTIONS", "RankingMetrics", "SplitRankingMetrics", "full_ranks", "history_mask", "rank_metrics", "sampled_ranks"]
