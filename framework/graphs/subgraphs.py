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
by id (GraIL keeps set order); no per-hop node sampling (GraIL's ``max_nodes_per_hop`` defaults to off).
"""

from __future__ import annotations

from collections import defaultdict, deque
from dataclasses import dataclass

import torch
from torch import Tensor


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


def neighbourhood(adjacency: dict[int, set[int]], root: int, hops: int) -> set[int]:
    """Nodes 1..``hops`` BFS levels away from ``root`` (the root excluded), GraIL's ``get_neighbor_nodes``."""
    visited, level = {root}, {root}
    reached: set[int] = set()
    for _ in range(hops):
        level = {n for v in level for n in adjacency.get(v, ())} - visited
        if not level:
            break
        visited |= level
        reached |= level
    return reached


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
) -> Subgraph:
    """The ``hops``-hop subgraph around ``(head, relation, tail)`` in ``graph`` (``(N, 3)`` long), GraIL-labelled.

    Args:
        relation: the target edge's relation; every copy of ``(head, relation, tail)`` is removed first (None: nothing
            removed, for a candidate link that is not in the graph).
        enclosing: intersection of the two neighbourhoods (GraIL's ``enclosing_sub_graph=True``), else their union.
        max_label: clip each label component to this value (GraIL's ``max_node_label_value``).
    """
    if hops < 1:
        raise ValueError(f"hops must be >= 1, got {hops}")
    if head == tail:
        raise ValueError("head and tail must differ: the double-radius labels need two roots")
    edges = [tuple(row) for row in graph.tolist()]
    if relation is not None:
        edges = [e for e in edges if e != (head, relation, tail)]
    adjacency = _adjacency(edges)
    around_head = neighbourhood(adjacency, head, hops)
    around_tail = neighbourhood(adjacency, tail, hops)
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
