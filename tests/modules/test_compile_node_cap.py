"""CoMPILE with GraIL's ``max_nodes_per_hop``: the restricted extraction stays exact with the cap, the order of
extraction (another worker, a resumed run) changes nothing, and the module passes the cap and its seed through."""

import pytest
import torch

from litzoo.datamodules.knowledge_graph import PlantedRuleKGDataModule
from litzoo.framework.graphs import enclosing_subgraph
from litzoo.modules.compile import CoMPILEModule, SubgraphExtractor


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    dm = PlantedRuleKGDataModule(root=str(tmp_path_factory.mktemp("kg")), num_entities=60, edges_per_relation=30, inductive=True)
    dm.load()
    return dm


def test_capped_restricted_extraction_equals_the_whole_graph_one_in_any_order(planted):
    graph = planted.graph.splits["train"]
    triples = [tuple(row) for row in graph[:30].tolist()]
    forward, backward = SubgraphExtractor(graph, hops=2, max_nodes_per_hop=2, seed=3), SubgraphExtractor(graph, hops=2, max_nodes_per_hop=2, seed=3)
    for triple in reversed(triples):
        backward(triple)
    binding = 0
    for h, r, t in triples:
        sub = forward((h, r, t))
        whole = enclosing_subgraph(graph, h, t, 2, relation=r, max_nodes_per_hop=2, seed=3)
        assert torch.equal(sub.nodes, whole.nodes) and torch.equal(sub.labels, whole.labels) and torch.equal(sub.edges, whole.edges)
        assert torch.equal(backward((h, r, t)).nodes, sub.nodes)
        assert [0, r, 1] not in sub.edges.tolist()
        # at most 2 new nodes per hop from each root: the intersection holds at most 2 * hops others
        assert len(sub.nodes) <= 2 + 2 * 2
        binding += len(sub.nodes) < len(enclosing_subgraph(graph, h, t, 2, relation=r).nodes)
    assert binding > 0  # negative control: on this graph the cap changes some subgraphs


def test_module_passes_the_cap_and_its_seed_to_every_extractor(planted):
    module = CoMPILEModule(hops=2, max_nodes_per_hop=2, negative_seed=5, ranking_negatives=0)
    module.build(planted.graph, planted.test_graph)
    assert {(e.max_nodes_per_hop, e.seed) for e in module.extractors.values()} == {(2, 5)}
    h, r, t = planted.test_graph.splits["test"][0].tolist()
    cached = module.extractors["test_graph"]((h, r, t))
    expected = enclosing_subgraph(planted.test_graph.splits["train"], h, t, 2, relation=r, max_nodes_per_hop=2, seed=5)
    assert torch.equal(cached.nodes, expected.nodes) and torch.equal(cached.edges, expected.edges)
    assert CoMPILEModule().hparams.max_nodes_per_hop is None and CoMPILEModule().extractors == {}
    with pytest.raises(ValueError, match="max_nodes_per_hop"):
        CoMPILEModule(max_nodes_per_hop=0)
