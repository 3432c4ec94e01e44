"""k-hop enclosing subgraphs of a target link with GraIL's double-radius node labels (CoMPILE's and GraIL's input).

GraIL (Teru, Denis, Hamilton, "Inductive Relation Prediction by Subgraph Reasoning", ICML 2020; official code
kkteru/grail ``subgraph_extraction/graph_sampler.py:subgraph_extraction_labeling``, ``node_label``; ``utils/dgl_utils.py:
_bfs_relational``), reused by CoMPILE (Mai et al., AAAI 2021). Verified against that code: the graph is treated as
undirected over all relations; the k-hop neighbourhoods of h and of t are BFS levels 1..k (the root excluded); the
enclosing subgraph takes their intersection (``enclosing=False``: union) plus both roots first; inside the subgraph
induced on those nodes, a node's label is ``(d(h, node) with t removed, d(t, node) with h removed)``, the roots are
``(0, 1)`` and ``(1, 0)``, and nodes with a label above k (unreachable ones included) are pruned; ``max_label`` clips
labels as GraIL's ``max_node_label_value``. Chosen where GraIL differs or is silent: the target edge ``(h, r, t)`` is
removed before anything is computed (the brief and CoMPILE's training setting; GraIL instead keeps it and adds it when
absent); the roots are never repeated among the neighbours (GraIL's union can list t twice); non-root nodes are sorted
by id (GraIL keeps set order).

Per-hop node sampling (GraIL's and CoMPILE's ``max_nodes_per_hop``, ``utils/dgl_utils.py:_bfs_relational``; both
``train.py`` default it to None, off): at each BFS hop from one root, the newly reached nodes (neighbours of the
current level not yet visited) are subsampled to at most ``max_nodes_per_hop`` before the next hop expands only
the kept ones; a dropped node is not marked visited, so it may be reached again at a later hop, as in GraIL. The
two roots are explored one after the other (h, then t) and the cap binds per hop *per root*, not on their
intersection or union. GraIL draws with the unseeded global ``random.sample`` from a Python set, so its subgraphs
change from run to run and with the order of extraction; here each triple has its own ``random.Random`` seeded
with :func:`~litzoo.framework.random_state.derive_seed` ``(seed, h, r, t)`` (blake2b, the same in every process) and
samples from the sorted level, so a triple's subgraph depends on nothing else: a resumed run, another DataLoader
worker or another DDP rank extracts the same one.
"""

from __future__ import annotations

import random
from collections import defaultdict, deque
from dataclasses import dataclass

import torch
from torch import Tensor

from litzoo.framework.random_state import derive_seed


@dataclass
class Subgraph:
    """``nodes[i]`` is the graph entity of local node i (``nodes[0] = h``, ``nodes[1] = t``); ``labels`` ``(n, 2)`` long;
    ``edges`` ``(m, 3)`` long local ``(head, relation, tail)`` of the graph's edges among the nodes (target removed)."""

    nodes: Tensor
    labels: Tensor
    edges: Tensor


def _adjacency(edges: list[tuple[int, int, int]]) -> dict[int, set[int]]:
    adjacency: dict[int, set[int]] = defaultdict(set)
    for head, _, tail in edges:
        adjacency[head].add(tail)
        adjacency[tail].add(head)
    return adjacency


def _check_cap(max_nodes_per_hop: int | None) -> None:
    if max_nodes_per_hop is not None and max_nodes_per_hop < 1:
        raise ValueError(f"max_nodes_per_hop must be >= 1 or None, got {max_nodes_per_hop}")


def bfs_levels(adjacency: dict[int, set[int]], root: int, hops: int, max_nodes_per_hop: int | None = None,
               rng: random.Random | None = None) -> list[set[int]]:  # fmt: skip
    """The BFS levels 1..``hops`` from ``root``, GraIL's ``_bfs_relational``: each level holds the neighbours of the
    previous one not yet visited, subsampled (``rng.sample`` of the sorted candidates) to ``max_nodes_per_hop``
    before the next hop; only kept nodes count as visited. Stops early when a level is empty.
    """
    _check_cap(max_nodes_per_hop)
    if max_nodes_per_hop is not None and rng is None:
        raise ValueError("max_nodes_per_hop needs an rng (a seeded random.Random)")
    visited, level = {root}, {root}
    levels: list[set[int]] = []
    for _ in range(hops):
        level = {n for v in level for n in adjacency.get(v, ())} - visited
        if not level:
            break
        if max_nodes_per_hop is not None and len(level) > max_nodes_per_hop:
            # sorted: a set's order is no part of the draw, so the same rng state gives the same nodes anywhere
            level = set(rng.sample(sorted(level), max_nodes_per_hop))
        visited |= level
        levels.append(level)
    return levels


def neighbourhood(adjacency: dict[int, set[int]], root: int, hops: int, max_nodes_per_hop: int | None = None,
                  rng: random.Random | None = None) -> set[int]:  # fmt: skip
    """Nodes 1..``hops`` BFS levels away from ``root`` (the root excluded), GraIL's ``get_neighbor_nodes``
    (with ``max_nodes_per_hop``: at most that many new nodes per level, see :func:`bfs_levels`)."""
    return set().union(*bfs_levels(adjacency, root, hops, max_nodes_per_hop, rng))


def triple_rng(seed: int, head: int, relation: int | None, tail: int) -> random.Random:
    """The per-hop sampling generator of the triple ``(head, relation, tail)``: ``random.Random(derive_seed(seed, h,
    r, t))`` (``r = -1`` for None), a function of the triple alone, identical in every process."""
    return random.Random(derive_seed(seed, head, -1 if relation is None else relation, tail))


def _distances(adjacency: dict[int, set[int]], source: int, allowed: set[int]) -> dict[int, int]:
    """Unweighted shortest distances from ``source`` within the nodes ``allowed``."""
    distance = {source: 0}
    queue = deque([source])
    while queue:
        v = queue.popleft()
        for n in adjacency.get(v, ()):
            if n in allowed and n not in distance:
                distance[n] = distance[v] + 1
                queue.append(n)
    return distance


def enclosing_subgraph(
    graph: Tensor,
    head: int,
    tail: int,
    hops: int,
    relation: int | None = None,
    enclosing: bool = True,
    max_label: int | None = None,
    max_nodes_per_hop: int | None = None,
    seed: int = 0,
) -> Subgraph:
    """The ``hops``-hop subgraph around ``(head, relation, tail)`` in ``graph`` (``(N, 3)`` long), GraIL-labelled.

    Args:
        relation: the target edge's relation; every copy of ``(head, relation, tail)`` is removed first (None: nothing
            removed, for a candidate link that is not in the graph).
        enclosing: intersection of the two neighbourhoods (GraIL's ``enclosing_sub_graph=True``), else their union.
        max_label: clip each label component to this value (GraIL's ``max_node_label_value``).
        max_nodes_per_hop: keep at most this many new nodes per BFS hop from each root (GraIL's option; None: all).
        seed: with ``max_nodes_per_hop``, the sampling draws from :func:`triple_rng` ``(seed, head, relation, tail)``,
            first for h's BFS, then for t's.
    """
    if hops < 1:
        raise ValueError(f"hops must be >= 1, got {hops}")
    if head == tail:
        raise ValueError("head and tail must differ: the double-radius labels need two roots")
    edges = [tuple(row) for row in graph.tolist()]
    if relation is not None:
        edges = [e for e in edges if e != (head, relation, tail)]
    _check_cap(max_nodes_per_hop)
    adjacency = _adjacency(edges)
    rng = triple_rng(seed, head, relation, tail) if max_nodes_per_hop is not None else None
    around_head = neighbourhood(adjacency, head, hops, max_nodes_per_hop, rng)
    around_tail = neighbourhood(adjacency, tail, hops, max_nodes_per_hop, rng)
    others = (around_head & around_tail) if enclosing else (around_head | around_tail)
    candidates = [head, tail] + sorted(others - {head, tail})
    members = set(candidates)
    from_head = _distances(adjacency, head, members - {tail})
    from_tail = _distances(adjacency, tail, members - {head})
    unreachable = hops + 1  # any value above hops: pruned, as GraIL's clipped 1e7
    nodes, labels = [head, tail], [[0, 1], [1, 0]]
    for node in candidates[2:]:
        label = [from_head.get(node, unreachable), from_tail.get(node, unreachable)]
        if max(label) <= hops:
            nodes.append(node)
            labels.append(label)
    if max_label is not None:
        labels = [[min(a, max_label), min(b, max_label)] for a, b in labels]
    local = {node: i for i, node in enumerate(nodes)}
    kept = [(local[h], r, local[t]) for h, r, t in edges if h in local and t in local]
    return Subgraph(
        nodes=torch.tensor(nodes, dtype=torch.long),
        labels=torch.tensor(labels, dtype=torch.long),
        edges=torch.tensor(kept, dtype=torch.long).reshape(-1, 3),
    )
