"""CoMPILE: one message-passing iteration by hand, the margin loss by hand, negatives never true, the target edge absent
from its own subgraph, the restricted extraction equal to the whole-graph one, and a short inductive fit on unseen entities."""

import random

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from litzoo.datamodules.knowledge_graph import PlantedRuleKGDataModule
from litzoo.framework.graphs import Subgraph, enclosing_subgraph
from litzoo.modules.compile import CoMPILE, CoMPILEModule, SubgraphExtractor, batch_subgraphs, corrupt, margin_loss, ranking_candidates


def three_node_subgraph() -> Subgraph:
    # h = local 0, t = local 1, one middle node 2 on the path h -r0-> 2 -r1-> t
    return Subgraph(nodes=torch.tensor([10, 11, 12]), labels=torch.tensor([[0, 1], [1, 0], [1, 1]]), edges=torch.tensor([[0, 0, 2], [2, 1, 1]]))


def test_one_iteration_matches_a_hand_computation():
    torch.manual_seed(0)
    net = CoMPILE(num_relations=3, hops=1, dim=4, depth=2).eval()
    b = batch_subgraphs([three_node_subgraph()], torch.tensor([2]), hops=1, add_target_edge=False)
    m, e, attention, m0 = net.propagate(b, iterations=1)
    R, target = net.relation_embeddings, net.relation_embeddings[2]
    onehot = {0: [1, 0, 0, 1], 1: [0, 1, 1, 0], 2: [0, 1, 0, 1]}  # (d_h, d_t) one-hot, hops + 1 = 2 slots each
    x = {v: torch.tensor(onehot[v], dtype=torch.float) for v in range(3)}
    edges = [(0, 0, 2), (2, 1, 1)]
    node0 = {v: F.relu(net.w_i_node.weight @ x[v]) for v in range(3)}
    edge0 = [F.relu(net.w_i_edge.weight @ torch.cat([x[u], R[r], x[v]])) for u, r, v in edges]

    def att(layer, node):
        return [
            torch.sigmoid(net.att2[layer].weight @ F.relu(net.att1[layer].weight @ torch.cat([node[0] + target - node[1], node[u] + R[r] - node[v]])))
            for u, r, v in edges
        ]

    a0 = att(0, node0)
    weighted = [a0[i] * edge0[i] for i in range(2)]
    node1 = {}
    for v in range(3):
        incoming = sum((weighted[i] for i, (_, _, d) in enumerate(edges) if d == v), torch.zeros(4))
        node1[v] = F.relu(net.w_h_node[0].weight @ (node0[v] + incoming))
    edge1 = [
        F.relu(edge0[i] + net.w_h_edge[0].weight @ F.relu(weighted[i] + torch.tanh(node1[u] + R[r] - node1[v])))
        for i, (u, r, v) in enumerate(edges)
    ]
    a1 = att(1, node1)
    torch.testing.assert_close(m0, torch.stack([node0[v] for v in range(3)]))
    torch.testing.assert_close(m, torch.stack([node1[v] for v in range(3)]))
    torch.testing.assert_close(e, torch.stack(edge1))
    torch.testing.assert_close(attention, torch.stack(a1))
    # node 0 (h) has no incoming edge: its update sees only its own state (the subgraph is directed)
    torch.testing.assert_close(m[0], F.relu(net.w_h_node[0].weight @ node0[0]))
    assert net(b).shape == (1,)


def test_margin_loss_by_hand():
    positive = torch.tensor([3.0, -1.0, 20.0])
    negative = torch.tensor([[1.0, 5.0], [0.0, 0.0], [2.0, 4.0]])
    # means 3, 0, 3 -> max(0, 10 - (3 - 3)) + max(0, 10 - (-1 - 0)) + max(0, 10 - (20 - 3)) = 10 + 11 + 0
    assert margin_loss(positive, negative, 10.0).item() == pytest.approx(21.0)
    assert margin_loss(positive, negative, 1.0).item() == pytest.approx(1.0 + 2.0)


def test_negatives_never_equal_a_known_triple_and_change_one_side():
    rng = random.Random(0)
    triples = torch.tensor([[0, 0, 1], [1, 0, 2], [2, 1, 0], [0, 1, 2]])
    known = {tuple(t) for t in triples.tolist()} | {(3, 0, 1), (0, 0, 3)}
    negatives = corrupt(triples, 5, known, rng, per_triple=20).reshape(4, 20, 3)
    for (h, r, t), negs in zip(triples.tolist(), negatives.tolist()):
        for nh, nr, nt in negs:
            assert (nh, nr, nt) not in known and nh != nt and nr == r
            assert (nh == h) != (nt == t)  # exactly one side replaced
    candidates = ranking_candidates((0, 0, 1), 5, known, 50, rng, "tail")
    assert candidates[0] == (0, 0, 1) and all(c not in known for c in candidates[1:])
    assert sorted(c[2] for c in candidates[1:]) == [2, 4]  # 3 is a known tail, 0 the head, 1 the true tail


def test_target_edge_is_absent_from_its_own_subgraph_and_the_restricted_extraction_is_exact():
    dm = PlantedRuleKGDataModule(root="/tmp/litzoo_test_compile_kg", num_entities=60, edges_per_relation=30, inductive=True)
    dm.load()
    graph = dm.graph.splits["train"]
    extractor = SubgraphExtractor(graph, hops=2)
    for h, r, t in graph[:40].tolist():
        sub = extractor((h, r, t))
        assert int(sub.nodes[0]) == h and int(sub.nodes[1]) == t
        assert [0, r, 1] not in sub.edges.tolist()
        whole = enclosing_subgraph(graph, h, t, 2, relation=r)
        assert torch.equal(sub.nodes, whole.nodes) and torch.equal(sub.labels, whole.labels) and torch.equal(sub.edges, whole.edges)
    # the appended target edge is the same for a positive and its negative: its presence carries no label
    b = batch_subgraphs([extractor(tuple(graph[0].tolist()))], graph[:1, 1], hops=2, add_target_edge=True)
    assert (b["src"][-1], b["edge_type"][-1], b["dst"][-1]) == (0, graph[0, 1], 1)


def test_short_fit_ranks_true_triples_of_the_unseen_entity_graph_above_corrupted_ones():
    L.seed_everything(0)
    dm = PlantedRuleKGDataModule(root="/tmp/litzoo_test_compile_kg", num_entities=200, edges_per_relation=100, inductive=True, batch_size=16)
    module = CoMPILEModule(hops=2, ranking_negatives=0, lr=5e-3)
    trainer = L.Trainer(max_epochs=4, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, dm)
    module.eval()
    test_graph = dm.test_graph
    assert not set(test_graph.entities) & set(dm.graph.entities)  # unseen entities
    triples = torch.cat([test_graph.splits["test"], test_graph.splits["valid"]])
    negatives = corrupt(triples, test_graph.num_entities, module.known["test_graph"], random.Random(1))
    with torch.no_grad():
        scores = torch.cat([module.score(triples, "test"), module.score(negatives, "test")])
    labels = [1] * len(triples) + [0] * len(negatives)
    auc = roc_auc_score(labels, scores.numpy())
    print("inductive AUC", auc)
    assert auc > 0.8
