"""GraIL's enclosing subgraph and double-radius labels, checked by hand, with the target edge removed."""

from __future__ import annotations

import pytest
import torch

from litzoo.framework.graphs import enclosing_subgraph

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
