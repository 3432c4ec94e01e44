"""GraIL's enclosing subgraph and double-radius labels, checked by hand, with the target edge removed; GraIL's per-hop
node cap (``max_nodes_per_hop``) binding per hop and per root, drawn from the triple's own seeded stream."""

from __future__ import annotations

import random

import pytest
import torch

from litzoo.framework.graphs import enclosing_subgraph
from litzoo.framework.graphs.subgraphs import bfs_levels, neighbourhood, triple_rng
from litzoo.framework.random_state import derive_seed

# A hand-drawn graph (edges undirected for the neighbourhoods), target (0, r=0, 1):
#   0 - 1 (target, removed)     0 - 2 - 1      0 - 3 - 4 - 1      1 - 5 (only near t)     0 - 6 - 7 (only near h)
#   2 - 8 - 1 ... (8 adjacent to 2 and to 1)
GRAPH = torch.tensor([
    [0, 0, 1],
    [0, 1, 2], [2, 2, 1],
    [0, 1, 3], [3, 2, 4], [4, 0, 1],
    [1, 1, 5],
    [0, 2, 6], [6, 2, 7],
    [2, 0, 8], [8, 1, 1],
])


def test_two_hop_enclosing_subgraph_by_hand():
    sub = enclosing_subgraph(GRAPH, 0, 1, hops=2, relation=0)
    # within 2 hops of 0: {2, 3, 6, 8, 4, 7} (1 is reachable only through the removed edge and via 2: 1 is the root);
    # within 2 hops of 1: {2, 4, 5, 8, 0, 3}; intersection without roots: {2, 3, 4, 8}
    assert sub.nodes.tolist() == [0, 1, 2, 3, 4, 8]
    # labels (d(h, .) without t, d(t, .) without h) inside the subgraph: 2 -> (1, 1); 3 -> (1, 2); 4 -> (2, 1); 8 -> (2, 1)
    assert sub.labels.tolist() == [[0, 1], [1, 0], [1, 1], [1, 2], [2, 1], [2, 1]]
    local = {int(n): i for i, n in enumerate(sub.nodes)}
    expected = {(local[h], r, local[t]) for h, r, t in GRAPH.tolist()[1:] if h in local and t in local}
    assert set(map(tuple, sub.edges.tolist())) == expected and (0, 0, 1) not in expected


def test_one_hop_and_pruning_by_labels():
    sub = enclosing_subgraph(GRAPH, 0, 1, hops=1, relation=0)
    assert sub.nodes.tolist() == [0, 1, 2] and sub.labels.tolist() == [[0, 1], [1, 0], [1, 1]]


def test_target_edge_removal_matters():
    # with the target edge kept, 5 (neighbour of t) is 2 hops from h through t, yet labels prune it (d(h,5) without t is inf)
    kept = enclosing_subgraph(GRAPH, 0, 1, hops=2, relation=None)
    assert 5 not in kept.nodes.tolist() and 7 not in kept.nodes.tolist()
    assert (0, 0, 1) in set(map(tuple, kept.edges.tolist()))
    removed = enclosing_subgraph(GRAPH, 0, 1, hops=2, relation=0)
    assert (0, 0, 1) not in set(map(tuple, removed.edges.tolist()))


def test_union_and_max_label():
    sub = enclosing_subgraph(GRAPH, 0, 1, hops=2, relation=0, enclosing=False, max_label=1)
    # the union adds 5, 6, 7, but each is reachable from one root only once the other is removed -> pruned
    assert sub.nodes.tolist() == [0, 1, 2, 3, 4, 8]
    assert sub.labels.tolist() == [[0, 1], [1, 0], [1, 1], [1, 1], [1, 1], [1, 1]]


def test_bad_arguments():
    with pytest.raises(ValueError, match="hops"):
        enclosing_subgraph(GRAPH, 0, 1, hops=0)
    with pytest.raises(ValueError, match="differ"):
        enclosing_subgraph(GRAPH, 0, 0, hops=1)


# ---------------------------------------------------------------- GraIL's max_nodes_per_hop
def _adjacency(edges) -> dict[int, set[int]]:
    adjacency: dict[int, set[int]] = {}
    for h, _, t in edges:
        adjacency.setdefault(h, set()).add(t)
        adjacency.setdefault(t, set()).add(h)
    return adjacency


def star(leaves: int = 6) -> dict[int, set[int]]:
    """Root 0, leaves 1..leaves, each leaf i with one private child 100 + i (reachable only through i)."""
    edges = [(0, 0, i) for i in range(1, leaves + 1)] + [(i, 0, 100 + i) for i in range(1, leaves + 1)]
    return _adjacency(edges)


def test_the_cap_binds_per_hop_before_the_next_hop_expands():
    adjacency = star(6)
    seen_leaves = set()
    for seed in range(30):
        levels = bfs_levels(adjacency, 0, hops=2, max_nodes_per_hop=2, rng=random.Random(seed))
        assert len(levels) == 2 and len(levels[0]) == 2 and levels[0] <= set(range(1, 7))
        # hop 2 expands only the kept leaves: exactly their children (a cap applied to the union, or after the last hop,
        # would keep children of dropped leaves or more than 2 leaves)
        assert levels[1] == {100 + leaf for leaf in levels[0]}
        assert neighbourhood(adjacency, 0, 2, 2, random.Random(seed)) == levels[0] | levels[1]
        seen_leaves |= levels[0]
    assert seen_leaves == set(range(1, 7))  # a draw, not the first two
    # negative control: no cap reaches every leaf and every child
    assert neighbourhood(adjacency, 0, 2) == set(range(1, 7)) | set(range(101, 107))


def test_a_node_dropped_at_one_hop_is_reached_again_at_the_next_as_in_grail():
    # 0 - a, 0 - b, a - b: with a cap of 1, hop 1 keeps a or b; the other is not marked visited, so hop 2 reaches it
    adjacency = _adjacency([(0, 0, 1), (0, 0, 2), (1, 0, 2)])
    for seed in range(5):
        levels = bfs_levels(adjacency, 0, hops=2, max_nodes_per_hop=1, rng=random.Random(seed))
        assert [len(level) for level in levels] == [1, 1] and levels[0] | levels[1] == {1, 2}


def test_capped_enclosing_subgraph_samples_per_root_from_the_triples_own_stream():
    # h = 0 and t = 1 are both adjacent to the leaves 2..11; the target edge 0 -r0-> 1 must stay out
    graph = torch.tensor([[0, 0, 1]] + [[0, 1, leaf] for leaf in range(2, 12)] + [[leaf, 2, 1] for leaf in range(2, 12)])
    leaves = list(range(2, 12))
    unions = set()
    for seed in range(12):
        sub = enclosing_subgraph(graph, 0, 1, hops=1, relation=0, enclosing=False, max_nodes_per_hop=3, seed=seed)
        # reference: h's BFS draws first, then t's, from random.Random(derive_seed(seed, h, r, t)), over sorted candidates
        rng = random.Random(derive_seed(seed, 0, 0, 1))
        from_head, from_tail = set(rng.sample(leaves, 3)), set(rng.sample(leaves, 3))
        assert sub.nodes.tolist() == [0, 1, *sorted(from_head | from_tail)]
        assert [0, 0, 1] not in sub.edges.tolist() and len(sub.edges) == 2 * len(from_head | from_tail)
        again = enclosing_subgraph(graph, 0, 1, hops=1, relation=0, enclosing=False, max_nodes_per_hop=3, seed=seed)
        assert torch.equal(again.nodes, sub.nodes) and torch.equal(again.edges, sub.edges)  # the same triple twice
        unions.add(len(sub.nodes) - 2)
    assert max(unions) > 3  # the cap binds per root, not on the union
    capped = enclosing_subgraph(graph, 0, 1, hops=1, relation=0, max_nodes_per_hop=3, seed=0)  # intersection: at most 3
    assert 2 <= len(capped.nodes) <= 5
    # negative control: without a cap every leaf is in
    assert enclosing_subgraph(graph, 0, 1, hops=1, relation=0).nodes.tolist() == [0, 1, *leaves]


def test_no_cap_and_a_cap_that_never_binds_give_the_unsampled_subgraph():
    g = torch.Generator().manual_seed(3)
    graph = torch.stack([torch.randint(0, 25, (80,), generator=g), torch.randint(0, 3, (80,), generator=g), torch.randint(0, 25, (80,), generator=g)], 1)
    graph = graph[graph[:, 0] != graph[:, 2]]
    for h, r, t in graph[:20].tolist():
        plain = enclosing_subgraph(graph, h, t, 2, relation=r)
        loose = enclosing_subgraph(graph, h, t, 2, relation=r, max_nodes_per_hop=25, seed=7)
        assert torch.equal(plain.nodes, loose.nodes) and torch.equal(plain.labels, loose.labels) and torch.equal(plain.edges, loose.edges)
        tight = enclosing_subgraph(graph, h, t, 2, relation=r, max_nodes_per_hop=2, seed=7)
        assert set(tight.nodes.tolist()) <= set(plain.nodes.tolist()) | set(neighbourhood(_adjacency(graph.tolist()), h, 2))


def test_the_triple_alone_decides_its_subgraph_not_the_order_or_the_global_rng():
    graph = torch.tensor([[0, 0, 1]] + [[0, 1, leaf] for leaf in range(2, 12)] + [[leaf, 2, 1] for leaf in range(2, 12)] + [[1, 1, 12], [0, 2, 13]])
    triples = [(0, 0, 1), (0, 1, 5), (7, 2, 1), (0, 1, 9)]
    first = []
    for h, r, t in triples:
        random.seed(h * 7 + t)  # global state moved between extractions: no effect
        first.append(enclosing_subgraph(graph, h, t, 2, relation=r, enclosing=False, max_nodes_per_hop=2, seed=1).nodes.tolist())
    second = [enclosing_subgraph(graph, h, t, 2, relation=r, enclosing=False, max_nodes_per_hop=2, seed=1).nodes.tolist() for h, r, t in reversed(triples)]
    assert first == second[::-1]
    assert triple_rng(1, 0, None, 1).random() == random.Random(derive_seed(1, 0, -1, 1)).random()
    with pytest.raises(ValueError, match="max_nodes_per_hop"):
        enclosing_subgraph(graph, 0, 1, hops=1, max_nodes_per_hop=0)
    with pytest.raises(ValueError, match="rng"):
        bfs_levels(star(), 0, 1, max_nodes_per_hop=1)
