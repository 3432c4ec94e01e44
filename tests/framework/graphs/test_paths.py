"""PathCon's relation-path enumeration against brute force over edge sequences, the target edge excluded."""

from __future__ import annotations

import itertools

import pytest
import torch

from litzoo.framework.graphs import relation_paths


def brute_force(graph, query, max_len):
    """Every sequence of distinct-entity hops over undirected edges from h to t, never using the query's own edge."""
    h, r, t = query
    edges = [tuple(e) for e in graph.tolist() if e[0] != e[2]]
    steps = [(a, rel, b, i) for i, (a, rel, b) in enumerate(edges)] + [(b, rel, a, i) for i, (a, rel, b) in enumerate(edges)]
    own = {i for i, e in enumerate(edges) if e == (h, r, t)}
    found = set()
    for length in range(1, max_len + 1):
        for seq in itertools.product(steps, repeat=length):
            if seq[0][0] != h or seq[-1][2] != t or any(s[3] in own for s in seq):
                continue
            if any(seq[k][2] != seq[k + 1][0] for k in range(length - 1)):
                continue
            visited = [h] + [s[2] for s in seq]
            if len(set(visited)) == len(visited):
                found.add(tuple(s[1] for s in seq))
    return found


def test_hand_example():
    # 0 -a-> 1 -b-> 2, 0 -c-> 2 (the target), 2 -a-> 0 reversed: paths from 0 to 2 are (a, b) and (a,) via the reversed edge
    graph = torch.tensor([[0, 0, 1], [1, 1, 2], [0, 2, 2], [2, 0, 0]])
    assert relation_paths(graph, torch.tensor([[0, 2, 2]]), 3) == [{(0, 1), (0,)}]
    # a query whose relation matches the reversed edge keeps (a,): another edge carries it
    assert relation_paths(graph, torch.tensor([[0, 0, 2]]), 1) == [{(0,), (2,)}]
    assert relation_paths(graph, torch.tensor([[0, 0, 2]]), 2) == [{(0,), (2,), (0, 1)}]


@pytest.mark.parametrize("seed", range(4))
def test_matches_brute_force_on_random_graphs(seed):
    generator = torch.Generator().manual_seed(seed)
    graph = torch.stack([torch.randint(0, 6, (9,), generator=generator), torch.randint(0, 3, (9,), generator=generator), torch.randint(0, 6, (9,), generator=generator)], 1)
    queries = torch.cat([graph[:4], torch.tensor([[0, 1, 5], [2, 0, 3]])])
    queries = queries[queries[:, 0] != queries[:, 2]]
    ours = relation_paths(graph, queries, 3)
    for query, paths in zip(queries.tolist(), ours):
        assert paths == brute_force(graph, query, 3), query


def test_max_path_len_checked():
    with pytest.raises(ValueError, match="max_path_len"):
        relation_paths(torch.zeros(0, 3, dtype=torch.long), torch.zeros(0, 3, dtype=torch.long), 0)
