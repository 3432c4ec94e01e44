"""R5's query path extraction against the official procedure (networkx's simple edge paths on a MultiDiGraph) and hand cases."""

from __future__ import annotations

import itertools
import random

import networkx as nx
import pytest

from litzoo.framework.graphs.query_paths import PathQuery, query_relation_paths


def official_paths(edges, source, target):
    """The official get_rel_path + find_edge_chains, on networkx: dedup the edges, grow the cutoff from 2 until a path
    exists, then every edge path up to it with each hop replaced by all relations of its node pair."""
    unique = sorted(set(edges))
    graph = nx.MultiDiGraph()
    graph.add_edges_from((u, v) for u, v, _ in unique)
    by_pair = {}
    for u, v, r in unique:
        by_pair.setdefault((u, v), []).append(r)
    cutoff = 2
    while next(nx.all_simple_edge_paths(graph, source, target, cutoff=cutoff), None) is None:
        cutoff += 1
        assert cutoff <= graph.number_of_nodes(), "no path (the official loop would never end)"
    found = set()
    for edge_path in nx.all_simple_edge_paths(graph, source, target, cutoff=cutoff):
        found.update(itertools.product(*(by_pair[(u, v)] for u, v, _ in edge_path)))
    return found


def test_equals_the_official_enumeration_on_random_multigraphs():
    rng = random.Random(0)
    checked = 0
    for trial in range(150):
        nodes = rng.randint(3, 8)
        edges = [(rng.randrange(nodes), rng.randrange(nodes), rng.randint(1, 3)) for _ in range(rng.randint(3, 18))]
        edges += rng.sample(edges, k=min(3, len(edges)))  # repeated edges, as GraphLog stories have
        source, target = rng.sample(range(nodes), 2)
        graph = nx.DiGraph([(u, v) for u, v, _ in edges if u != v])
        if source not in graph or target not in graph or not nx.has_path(graph, source, target):
            with pytest.raises(ValueError, match="no directed path"):
                query_relation_paths(edges, source, target)
            continue
        paths = query_relation_paths(edges, source, target)
        assert set(paths) == official_paths(edges, source, target), trial
        assert len(paths) == len(set(paths)) and list(paths) == sorted(paths, key=lambda p: (len(p), p))
        checked += 1
    assert checked > 60  # most trials were connected: the comparison ran


def test_minimal_cutoff_two_takes_only_the_short_path():
    # 0 -1-> 1 -2-> 5 (2 edges) and 0 -3-> 2 -3-> 3 -3-> 4 -4-> 5 (4 edges): the cutoff stays 2
    edges = [(0, 1, 1), (1, 5, 2), (0, 2, 3), (2, 3, 3), (3, 4, 3), (4, 5, 4)]
    assert query_relation_paths(edges, 0, 5) == ((1, 2),)
    assert query_relation_paths(edges, 0, 5, min_cutoff=4) == ((1, 2), (3, 3, 3, 4))
    # a direct edge and min_cutoff 2: the 1- and 2-edge paths, not the 4-edge one
    assert query_relation_paths(edges + [(0, 5, 7)], 0, 5) == ((7,), (1, 2))


def test_minimal_cutoff_grows_to_the_shortest_path():
    # shortest 3 edges; a 3-edge and a 4-edge alternative: all paths of <= 3 edges, the 4-edge one left out
    edges = [(0, 1, 1), (1, 2, 2), (2, 9, 3), (0, 3, 4), (3, 4, 5), (4, 9, 6), (0, 5, 7), (5, 6, 7), (6, 7, 7), (7, 9, 7)]
    assert query_relation_paths(edges, 0, 9) == ((1, 2, 3), (4, 5, 6))
    # a wrong, non-minimal rule (a fixed cutoff of 4) would also return the 4-edge path
    assert (7, 7, 7, 7) in query_relation_paths(edges, 0, 9, min_cutoff=4)


def test_parallel_relations_expand_to_the_cartesian_product_and_dedup():
    edges = [(0, 1, 1), (0, 1, 2), (1, 2, 3), (1, 2, 4), (1, 2, 4), (0, 3, 1), (3, 2, 3)]
    # (0,1) carries {1, 2} and (1,2) {3, 4}: four sequences; the path through 3 gives (1, 3) again, kept once
    assert query_relation_paths(edges, 0, 2) == ((1, 3), (1, 4), (2, 3), (2, 4))


def test_direction_self_loops_and_bad_queries():
    edges = [(0, 1, 1), (1, 1, 5), (1, 2, 2), (2, 2, 6)]
    assert query_relation_paths(edges, 0, 2) == ((1, 2),)  # the self loops on 1 and 2 are never on a simple path
    with pytest.raises(ValueError, match="no directed path"):
        query_relation_paths(edges, 2, 0)  # edges are directed
    with pytest.raises(ValueError, match="same node"):
        query_relation_paths(edges, 1, 1)
    with pytest.raises(ValueError, match="no directed path"):
        query_relation_paths(edges, 0, 42)
    with pytest.raises(ValueError, match="min_cutoff"):
        query_relation_paths(edges, 0, 2, min_cutoff=0)


def test_a_batch_of_queries_passes_lightnings_device_transfer():
    from lightning.fabric.utilities.apply_func import move_data_to_device

    batch = [PathQuery(paths=((1, 2),), target=3, length=2)]
    # Lightning rebuilds dataclasses it finds in a batch and refuses frozen ones, unless they have `to`
    assert move_data_to_device(batch, "cpu") == batch


def test_path_query_longest():
    query = PathQuery(paths=((1, 2), (3, 4, 5)), target=6, length=2)
    assert query.longest == 3
    with pytest.raises(AttributeError):
        query.target = 1  # frozen: queries are shared between epochs and loaders
