"""Relation paths between two entities up to ``max_path_len`` hops, the target edge excluded (PathCon's path features).

PathCon (Wang, Ren, Leskovec, "Relational Message Passing for Knowledge Graph Completion", KDD 2021; official code
hwwang55/PathCon ``src/utils.py:bfs``, ``count_paths`` and ``src/data_loader.py:build_kg``). Verified against that code:
edges are undirected (each training triple ``(h, r, t)`` is walkable both ways under the same relation id, no inverse
marker); a path never revisits an entity (the head included); a path is the tuple of its relation ids, and a pair's
paths form a *set* (two walks with the same relations count once). The query's own edge is excluded: PathCon drops the
length-1 path ``(r,)`` unless the reversed triple ``(t, r, h)`` is also a training edge; since a simple path can only use
the edge h-t as its single step, that is exactly "the target edge removed". Chosen where the code differs: a self-loop
is never part of a path (PathCon lets one be the first step), as a path is a sequence of distinct entities.
Enumeration is breadth-first per distinct head, as in PathCon (whose multiprocessing pool is left out).
"""

from __future__ import annotations

from collections import defaultdict

from torch import Tensor

Path = tuple[int, ...]


def undirected_neighbours(graph: Tensor) -> dict[int, set[tuple[int, int]]]:
    """PathCon's ``e2re``: entity -> set of ``(relation, neighbour)`` over the ``(N, 3)`` (head, relation, tail) edges, both ways."""
    neighbours: dict[int, set[tuple[int, int]]] = defaultdict(set)
    for head, relation, tail in graph.tolist():
        if head == tail:
            continue  # a self-loop would repeat an entity
        neighbours[head].add((relation, tail))
        neighbours[tail].add((relation, head))
    return neighbours


def paths_from(head: int, tails: set[int], neighbours: dict[int, set[tuple[int, int]]], max_path_len: int) -> dict[int, set[Path]]:
    """The relation paths of at most ``max_path_len`` hops from ``head`` to each of ``tails`` (entity-simple walks)."""
    found: dict[int, set[Path]] = defaultdict(set)
    # frontier of walks of the current length: (relations so far, entities visited, last entity)
    frontier = [((), frozenset([head]), head)]
    for step in range(max_path_len):
        final = step == max_path_len - 1
        grown = []
        for relations, visited, last in frontier:
            for relation, entity in neighbours.get(last, ()):
                if entity in visited:
                    continue
                walk = relations + (relation,)
                if entity in tails:
                    found[entity].add(walk)
                if not final:  # the last hop's walks are never extended: building their visited sets was most of the cost
                    grown.append((walk, visited | {entity}, entity))
        frontier = grown
    return found


def relation_paths(graph: Tensor, queries: Tensor, max_path_len: int) -> list[set[Path]]:
    """For each query triple ``(h, r, t)``, the set of relation paths from h to t in ``graph``, its own edge excluded.

    Args:
        graph: ``(N, 3)`` long training edges (head, relation, tail).
        queries: ``(Q, 3)`` long triples (training ones too: their own edge is then the excluded one).
        max_path_len: the longest path, in hops (PathCon's ``max_path_len``, 4 on WN18RR).
    """
    if max_path_len < 1:
        raise ValueError(f"max_path_len must be >= 1, got {max_path_len}")
    neighbours = undirected_neighbours(graph)
    edges = {tuple(row) for row in graph.tolist()}
    heads_to_tails: dict[int, set[int]] = defaultdict(set)
    rows = queries.tolist()
    for head, _, tail in rows:
        heads_to_tails[head].add(tail)
    pair_paths: dict[tuple[int, int], set[Path]] = {}
    for head, tails in heads_to_tails.items():
        for tail, paths in paths_from(head, tails, neighbours, max_path_len).items():
            pair_paths[(head, tail)] = paths
    result = []
    for head, relation, tail in rows:
        paths = set(pair_paths.get((head, tail), set()))
        # (r,) survives only when another edge (the reversed triple) carries it
        if (tail, relation, head) not in edges or head == tail:
            paths.discard((relation,))
        result.append(paths)
    return result
