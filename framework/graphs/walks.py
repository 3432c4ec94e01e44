"""Uniform random walks on a graph and the skip-gram-with-negative-sampling (SGNS) loss on them.

DeepWalk (Perozzi et al., KDD 2014) turns a graph into "sentences": truncated uniform random walks; a
skip-gram model then makes each node's embedding predict the nodes that co-occur with it within a
window. RWR-GAE (Vaibhav, Huang, Frederking, arXiv 1908.04003; official code MysteryVaibhav/RWR-GAE,
``deepWalk/graph.py``, ``deepWalk/skipGram.py``, ``gae/train.py``) adds that objective to a graph
auto-encoder's node embeddings. The pieces here are shared by the method (``modules/rwr_gae.py``) and
the ``RandomWalkRegularizer`` callback.

What follows the official code (read line by line):

- a walk starts at a given node and moves to a neighbour drawn uniformly (``rand.choice(G[cur])``,
  restart probability ``alpha=0``), ``walk_length`` nodes in all, and stops early at a node with no
  neighbour (there the rest of the walk is ``-1`` here, and pairs never use it);
- the skip-gram score of a (center, context) pair is the dot product of the center's embedding and the
  context's *context embedding* (a second table, ``context_embedding`` in ``skipGram.py``); the loss is
  ``-log σ(z_c·h_o) - Σ_k log σ(-z_c·h_{n_k})`` (``neg_sample=True`` flips the score's sign);
- negatives are drawn uniformly over the nodes, rejecting the nodes of the same walk
  (``if rand_node not in pos_nodes``).

Chosen where the official code differs from the paper or is silent (documented in the callers too):

- pairs come from a window (``window`` positions either side, the DeepWalk definition and the official
  ``--window-size 3``) rather than the official default ``--context 0`` (walk[0] against the whole
  walk); ``skipgram_pairs(..., window=walk_length)`` from position 0 only is not offered;
- the loss is the *mean* over pairs (the official sums per walk and steps once per walk), so its scale
  does not depend on how many walks are drawn;
- all randomness comes from a ``torch.Generator`` the caller owns (the official uses Python's
  ``random``), so a seeded run is reproducible;
- data-parallel (the official is single-process): ``WalkSkipGram(..., rank, world_size)`` draws the whole
  corpus (walks and negatives) on every rank from the same generator and keeps the pairs of every
  ``world_size``-th walk; the rank's loss is its pairs' summed loss over the corpus's pair count, so the
  gradients summed over ranks are the single-process mean's exactly (up to float order).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _csr(edge_index: Tensor, num_nodes: int) -> tuple[Tensor, Tensor]:
    """(rowptr, col) of the directed edges ``edge_index`` (2, E) sorted by source."""
    if edge_index.dim() != 2 or edge_index.shape[0] != 2:
        raise ValueError(f"edge_index must have shape (2, E), got {tuple(edge_index.shape)}")
    if edge_index.numel() and (int(edge_index.min()) < 0 or int(edge_index.max()) >= num_nodes):
        raise ValueError(f"edge_index has node ids outside [0, {num_nodes})")
    src, dst = edge_index.long()
    order = torch.argsort(src * num_nodes + dst)
    src, col = src[order], dst[order]
    rowptr = torch.zeros(num_nodes + 1, dtype=torch.long)
    rowptr[1:] = torch.cumsum(torch.bincount(src, minlength=num_nodes), 0)
    return rowptr, col


def random_walks(edge_index: Tensor, num_nodes: int, walk_length: int, walks_per_node: int = 1,
                 start: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
    """Uniform random walks, one row per walk, ``walk_length`` node ids each.

    Args:
        edge_index: (2, E) directed edges; give both directions for an undirected graph (a walk follows
            ``src -> dst`` only). Repeated edges weigh their neighbour more, as in a multigraph.
        num_nodes: the number of nodes (ids are ``0..num_nodes-1``).
        walk_length: nodes per walk, the start included (the official ``--walk-length``, default 5).
        walks_per_node: walks started at every node (the official ``--number-walks``); ignored when
            ``start`` is given.
        start: the start node of each walk (overrides ``walks_per_node``).
        generator: the source of randomness (a seeded generator gives the same walks).

    Returns:
        a long tensor (num_walks, walk_length); positions after a node with no out-neighbour are ``-1``.
        Without ``start``, walk ``i`` starts at node ``i % num_nodes`` (round ``i // num_nodes``).
    """
    if walk_length < 1:
        raise ValueError(f"walk_length must be >= 1, got {walk_length}")
    if walks_per_node < 1:
        raise ValueError(f"walks_per_node must be >= 1, got {walks_per_node}")
    rowptr, col = _csr(edge_index, num_nodes)
    if start is None:
        start = torch.arange(num_nodes).repeat(walks_per_node)
    current = start.long().clone()
    walks = torch.full((current.numel(), walk_length), -1, dtype=torch.long)
    walks[:, 0] = current
    degree = rowptr[1:] - rowptr[:-1]
    for step in range(1, walk_length):
        alive = current >= 0
        deg = torch.where(alive, degree[current.clamp(min=0)], torch.zeros_like(current))
        # uniform neighbour: floor(u * deg) is uniform on {0..deg-1}; u < 1 so it never reaches deg
        u = torch.rand(current.numel(), generator=generator, dtype=torch.float64)
        offset = (u * deg).floor().long()
        moving = deg > 0
        nxt = torch.full_like(current, -1)
        nxt[moving] = col[rowptr[current[moving]] + offset[moving]]
        walks[:, step] = nxt
        current = nxt
    return walks


def skipgram_pairs(walks: Tensor, window: int) -> tuple[Tensor, Tensor, Tensor]:
    """Every (center, context) pair of nodes at most ``window`` positions apart in the same walk.

    Returns:
        ``(center, context, walk_id)``, three long tensors of one entry per pair; positions holding
        ``-1`` (after a walk stopped) are skipped. A node met twice in a walk pairs with itself, as in
        DeepWalk's corpus.
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    num_walks, length = walks.shape
    centers, contexts, ids = [], [], []
    for shift in range(1, min(window, length - 1) + 1):
        for a, b in ((walks[:, :-shift], walks[:, shift:]), (walks[:, shift:], walks[:, :-shift])):
            valid = (a >= 0) & (b >= 0)
            centers.append(a[valid])
            contexts.append(b[valid])
            ids.append(torch.arange(num_walks).unsqueeze(1).expand_as(a)[valid])
    if not centers:
        empty = torch.zeros(0, dtype=torch.long)
        return empty, empty, empty
    return torch.cat(centers), torch.cat(contexts), torch.cat(ids)


def negative_samples(walks: Tensor, walk_id: Tensor, num_negatives: int, num_nodes: int,
                     generator: torch.Generator | None = None, max_rounds: int = 100) -> Tensor:
    """``num_negatives`` nodes per pair, uniform over the nodes outside the pair's walk (the official
    rejection rule).

    Raises:
        ValueError: a walk visits every node (no negative exists), or rejection did not finish in
            ``max_rounds`` rounds.
    """
    if num_negatives < 1:
        raise ValueError(f"num_negatives must be >= 1, got {num_negatives}")
    in_walk = torch.zeros(walks.shape[0], num_nodes + 1, dtype=torch.bool)  # column num_nodes absorbs the -1 padding
    in_walk.scatter_(1, torch.where(walks >= 0, walks, num_nodes), True)
    if bool(in_walk[:, :num_nodes].all(dim=1).any()):
        raise ValueError("a walk visits every node of the graph, so it has no negative node")
    negatives = torch.randint(num_nodes, (walk_id.numel(), num_negatives), generator=generator)
    for _ in range(max_rounds):
        bad = in_walk[walk_id.unsqueeze(1).expand_as(negatives), negatives]
        if not bool(bad.any()):
            return negatives
        negatives[bad] = torch.randint(num_nodes, (int(bad.sum()),), generator=generator)
    raise ValueError(f"negative sampling did not finish in {max_rounds} rounds (walks cover almost every node)")


def sgns_loss(center: Tensor, context: Tensor, negatives: Tensor, reduction: str = "mean") -> Tensor:
    """Skip-gram with negative sampling, the mean over pairs of
    ``-log σ(c·o) - Σ_k log σ(-c·n_k)``.

    Args:
        center: (P, d) center embeddings ``c``.
        context: (P, d) context embeddings ``o`` of the positive nodes.
        negatives: (P, K, d) context embeddings ``n_k`` of the negative nodes.
        reduction: ``"mean"`` over pairs, ``"sum"``, or ``"none"`` (one loss per pair).
    """
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    if center.shape != context.shape or negatives.dim() != 3 or negatives.shape[0] != center.shape[0]:
        raise ValueError(f"shapes must be (P, d), (P, d), (P, K, d); got {tuple(center.shape)}, {tuple(context.shape)}, "
                         f"{tuple(negatives.shape)}")  # fmt: skip
    positive = F.logsigmoid((center * context).sum(-1))
    negative = F.logsigmoid(-torch.einsum("pd,pkd->pk", center, negatives)).sum(-1)
    per_pair = -(positive + negative)
    return per_pair if reduction == "none" else per_pair.sum() if reduction == "sum" else per_pair.mean()


class WalkSkipGram(torch.nn.Module):
    """The skip-gram step of RWR-GAE on given node embeddings: draws walks on a graph, builds window pairs
    and negatives, and scores them against a learnable *context* table (the official ``SkipGram``'s
    ``context_embedding``, Xavier-uniform initialised). The node embeddings play the official
    ``word_embedding``'s part, so the loss's gradient reaches whatever computed them.

    Args:
        num_nodes: nodes in the graph (rows of the context table).
        dim: embedding width.
        walk_length: nodes per walk (official default 5).
        walks_per_node: walks started at every node per call (official ``--number-walks`` 5).
        window: positions either side that pair (official ``--window-size`` 3).
        num_negatives: negatives per pair (the official draws ``walk_length - 1`` per walk).
        generator: draws the context table's initial values (default: the global RNG); a seeded one gives
            the same table on every DDP rank and draws nothing from the global RNG (a resumed run that builds
            the table late leaves the global random stream where the uninterrupted run had it).
    """

    def __init__(self, num_nodes: int, dim: int, walk_length: int = 5, walks_per_node: int = 5, window: int = 3,
                 num_negatives: int = 4, generator: torch.Generator | None = None) -> None:
        super().__init__()
        for name, value in (("num_nodes", num_nodes), ("dim", dim), ("walk_length", walk_length), ("walks_per_node", walks_per_node),
                            ("window", window), ("num_negatives", num_negatives)):  # fmt: skip
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if walk_length < 2:
            raise ValueError(f"walk_length must be >= 2 for a walk to hold a pair, got {walk_length}")
        self.num_nodes, self.walk_length, self.walks_per_node = num_nodes, walk_length, walks_per_node
        self.window, self.num_negatives = window, num_negatives
        if generator is None:
            self.context = torch.nn.Embedding(num_nodes, dim)
            torch.nn.init.xavier_uniform_(self.context.weight)
        else:  # from_pretrained: nn.Embedding's own normal_ init would draw from the global RNG first
            table = torch.nn.init.xavier_uniform_(torch.empty(num_nodes, dim), generator=generator)
            self.context = torch.nn.Embedding.from_pretrained(table, freeze=False)

    def forward(self, embeddings: Tensor, edge_index: Tensor, generator: torch.Generator | None = None, rank: int = 0,
                world_size: int = 1) -> Tensor:  # fmt: skip
        """The SGNS loss of ``embeddings`` (num_nodes, dim) on fresh walks over ``edge_index``: the mean over the
        corpus's pairs, or with ``world_size > 1`` this rank's share of it (the summed loss of the pairs of walks
        ``rank, rank + world_size, ...`` over the corpus's pair count; the shares of all ranks add up to the mean)."""
        if not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank {rank} of {world_size}")
        if embeddings.shape != self.context.weight.shape:
            raise ValueError(f"embeddings must have shape {tuple(self.context.weight.shape)}, got {tuple(embeddings.shape)}")
        walks = random_walks(edge_index, self.num_nodes, self.walk_length, self.walks_per_node, generator=generator)
        center, context, walk_id = skipgram_pairs(walks, self.window)
        if center.numel() == 0:
            return embeddings.sum() * 0.0  # no edge to walk on: nothing to regularise, but keep the graph connected
        # every rank draws the whole corpus (the same generator draws the same numbers), then keeps its walks' pairs
        negatives = negative_samples(walks, walk_id, self.num_negatives, self.num_nodes, generator)
        context_table = self.context.weight.to(embeddings.dtype)
        if world_size == 1:
            return sgns_loss(embeddings[center], context_table[context], context_table[negatives])
        mine = walk_id % world_size == rank
        share = sgns_loss(embeddings[center[mine]], context_table[context[mine]], context_table[negatives[mine]], reduction="sum")
        return share / center.numel()
