"""The relation paths between a query's two nodes in a small story graph: what R5 reasons over.

R5 (Lu, Liu, Mills, Jui, Niu, "R5: Rule Discovery with Reinforced and Recurrent Relational Reasoning", ICLR 2022;
official code sluxsr/r5_graph_reasoning, ``graphlog/inits.py``: ``get_rel_path`` and ``find_edge_chains``) turns each
story (a GraphLog or CLUTRR graph of directed, relation-labelled edges) and its query ``(source, target)`` into the set of
relation sequences along the simple directed paths source -> target, then reasons over those sequences only.

Verified against that code:

* the cutoff is *minimal*: it starts at 2 and grows until networkx's ``all_simple_edge_paths`` on the story's
  ``MultiDiGraph`` yields a path, and then every simple path of at most that many edges is taken. So the cutoff is
  ``max(2, shortest distance)``: with a 1- or 2-edge path, all paths of 1 and 2 edges; with a shortest path of 3, all
  paths of at most 3 edges (never the longer ones);
* duplicate edges (same u, v and relation) count once: the official loader sorts a story's edges and drops repeats;
* an edge path visiting a node pair (u, v) that carries several relations becomes every combination of those relations
  (``find_edge_chains`` looks up all relations of the pair and takes ``torch.cartesian_prod``), and the relation
  sequences are deduplicated;
* a simple path repeats no node, so a self loop is never on one.

Chosen where the code is silent or odd: the official enumeration loops forever when the query nodes are not connected;
here that raises ``ValueError`` (as does ``source == target``). The enumeration is a depth-first search over distinct
node paths (each node pair expanded once into its relation product, instead of one networkx edge path per parallel edge),
pruned by the breadth-first distance to the target; the tests check it against networkx's enumeration. The official order
is networkx's iteration order, which depends on node ids and insertion order; here the sequences are sorted by
(length, relation ids), so the order does not depend on how the story numbered its nodes.
"""

from __future__ import annotations

import itertools
from collections import defaultdict, deque
from collections.abc import Sequence
from dataclasses import dataclass

RelationPath = tuple[int, ...]


@dataclass(frozen=True)
class PathQuery:
    """One reasoning query of a story graph, reduced to what R5 reads (official ``get_rel_path``).

    Attributes:
        paths: relation ids along each simple path source -> target, deduplicated, sorted by (length, ids).
        target: the query relation's id.
        length: the story's descriptor length (number of relations on the resolution path): the "k" of per-length accuracy.
    """

    paths: tuple[RelationPath, ...]
    target: int
    length: int

    @property
    def longest(self) -> int:
        """The number of relations on the longest path: the key of the official curriculum's first epoch."""
        return max(len(path) for path in self.paths)

    def to(self, *args: object, **kwargs: object) -> PathQuery:
        """Itself: a query holds Python ints only. With this method Lightning's batch transfer (which moves every object
        that has ``to``) passes a batch of queries through unchanged, instead of failing on a frozen dataclass."""
        return self


def query_relation_paths(edges: Sequence[tuple[int, int, int]], source: int, target: int, min_cutoff: int = 2) -> tuple[RelationPath, ...]:
    """R5's path extraction: all simple *directed* edge paths source -> target of at most ``cutoff`` edges.

    ``cutoff`` is the smallest value ``>= min_cutoff`` at which at least one path exists (official
    ``graphlog/inits.py:get_rel_path``: cutoff starts at 2 and grows until a path appears, then ALL simple paths up to
    that cutoff are taken); duplicate edges (same u, v, relation) are dropped first; a node pair (u, v) carrying several
    relations expands to the cartesian product of relation sequences (``find_edge_chains``); relation sequences are
    deduplicated and returned sorted by (length, relation ids).

    Args:
        edges: ``(u, v, relation)`` integer triples of the story.
        source: the query's first node.
        target: the query's second node.
        min_cutoff: the first cutoff tried (2 in the official code).

    Raises:
        ValueError: ``min_cutoff < 1``, ``source == target``, or no directed path from source to target at all.
    """
    if min_cutoff < 1:
        raise ValueError(f"min_cutoff must be >= 1, got {min_cutoff}")
    if source == target:
        raise ValueError(f"the query's source and target are the same node {source}: a simple path needs two nodes")
    relations: dict[tuple[int, int], set[int]] = defaultdict(set)
    for u, v, relation in edges:
        if u != v:  # a self loop repeats a node: never on a simple path
            relations[(int(u), int(v))].add(int(relation))
    successors: dict[int, list[int]] = defaultdict(list)
    predecessors: dict[int, list[int]] = defaultdict(list)
    for u, v in sorted(relations):
        successors[u].append(v)
        predecessors[v].append(u)
    # the number of edges from each node to the target (breadth-first on the reversed graph): the shortest path gives the
    # minimal cutoff, and a branch that cannot reach the target within the edges left is never walked
    to_target = {target: 0}
    queue = deque([target])
    while queue:
        node = queue.popleft()
        for previous in predecessors.get(node, ()):
            if previous not in to_target:
                to_target[previous] = to_target[node] + 1
                queue.append(previous)
    if source not in to_target:
        raise ValueError(f"no directed path from node {source} to node {target}")
    cutoff = max(min_cutoff, to_target[source])
    found: set[RelationPath] = set()
    # depth-first over node paths; a path ends at its first arrival at the target (a simple path visits it once)
    stack: list[tuple[int, tuple[int, ...]]] = [(source, (source,))]
    while stack:
        node, nodes = stack.pop()
        used = len(nodes) - 1
        for following in successors.get(node, ()):
            if following in nodes or following not in to_target or used + 1 + to_target[following] > cutoff:
                continue
            walk = nodes + (following,)
            if following == target:
                hops = [sorted(relations[pair]) for pair in itertools.pairwise(walk)]
                found.update(itertools.product(*hops))
            else:
                stack.append((following, walk))
    return tuple(sorted(found, key=lambda path: (len(path), path)))


__all__ = ["PathQuery", "RelationPath", "query_relation_paths"]
