"""PathCon: the aggregators by hand, the query edge masked from its own context, path bags equal the enumeration, the path
cache, the ablation switches, and a short fit that learns the SYNTHETIC planted compositions."""

import lightning as L
import pytest
import torch

import litzoo.framework.graphs.context as context_module
from litzoo.datamodules.knowledge_graph import PlantedRuleKGDataModule
from litzoo.framework.errors import LitzooError
from litzoo.framework.graphs import KnowledgeGraph, relation_paths
from litzoo.framework.graphs.context import cached_relation_paths, context_edges, sample_entity_edges
from litzoo.modules.pathcon import EdgeAggregator, PathCon, PathConModule

# a small graph: 6 entities, 3 relations; triples (head, relation, tail)
TRAIN = torch.tensor([[0, 0, 1], [1, 1, 2], [0, 2, 2], [2, 0, 3], [3, 1, 4], [1, 2, 4], [4, 0, 5], [5, 1, 0], [2, 2, 5]])
VALID = torch.tensor([[0, 1, 3]])
TEST = torch.tensor([[1, 0, 3]])


def tiny_graph() -> KnowledgeGraph:
    return KnowledgeGraph([f"e{i}" for i in range(6)], ["r0", "r1", "r2"], {"train": TRAIN, "valid": VALID, "test": TEST})


def built(**options) -> PathConModule:
    module = PathConModule(**{"neighbor_samples": 3, "dim": 8, **options})
    module.build(tiny_graph())
    return module


def batch_of(triples: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"head": triples[:, 0], "relation": triples[:, 1], "tail": triples[:, 2]}


@pytest.mark.parametrize("kind", ["mean", "concat", "cross"])
@pytest.mark.parametrize("self_included", [True, False])
def test_aggregators_match_a_hand_computation(kind, self_included):
    torch.manual_seed(0)
    d, samples = 3, 4
    agg = EdgeAggregator(kind, d, 5, self_included=self_included)
    with torch.no_grad():
        agg.linear.bias.normal_()
    own = torch.randn(2, 3, d)
    neighbours = torch.randn(2, 3, 2, samples, d)
    masks = (torch.rand(2, 3, 2, samples, 1) > 0.3).float()
    out = agg(own, neighbours, masks)
    W, b = agg.linear.weight.detach(), agg.linear.bias.detach()
    for i in range(2):
        for j in range(3):
            # masked neighbours count as zero, the mean still divides by the number of samples (official reduce_mean)
            a = sum(neighbours[i, j, 0, s] * masks[i, j, 0, s] for s in range(samples)) / samples
            c = sum(neighbours[i, j, 1, s] * masks[i, j, 1, s] for s in range(samples)) / samples
            if kind == "mean":
                x = (a + c) / 2 + (own[i, j] if self_included else 0)
            elif kind == "concat":
                x = torch.cat(([own[i, j]] if self_included else []) + [a, c])
            else:
                cross = torch.tensor([[a[p] * c[q] for q in range(d)] for p in range(d)]).flatten()
                x = torch.cat(([own[i, j]] if self_included else []) + [cross])
            torch.testing.assert_close(out[i, j], W @ x + b)


def test_context_edges_follow_the_official_hop_layout():
    e2e, e2ent, e2rel = sample_entity_edges(TRAIN, 6, 3, 3, torch.Generator().manual_seed(0))
    assert e2e.shape == (7, 3) and e2ent[-1].tolist() == [6, 6] and e2rel[-1].item() == 3
    for entity in range(6):  # sampled edges touch their entity; entity 0 has 3 edges -> all of them, no repeats
        assert all(entity in e2ent[e].tolist() for e in e2e[entity].tolist())
    assert sorted(e2e[0].tolist()) == [0, 2, 7]
    assert e2e[6].tolist() == [9, 9, 9]  # the null entity only has the null edge
    hop1, hop2 = context_edges(torch.tensor([[0, 3]]), e2e, e2ent, 2)
    assert hop1[0].tolist() == e2e[0].tolist() + e2e[3].tolist()
    expected = [e for edge in hop1[0].tolist() for endpoint in e2ent[edge].tolist() for e in e2e[endpoint].tolist()]
    assert hop2[0].tolist() == expected and hop2.shape == (1, 36)


@pytest.mark.parametrize("hops", [1, 2, 3])
def test_training_edge_is_masked_out_of_its_own_context(hops):
    module = built(use_path=False, context_hops=hops, neighbor_agg="cross")
    net = module.net
    triple = TRAIN[[2]]  # edge 2: (0, r2, 2)
    assert module.training_edges(triple).tolist() == [2]
    masked = module.scores(batch_of(triple), mask_own_edge=True)
    unmasked = module.scores(batch_of(triple), mask_own_edge=False)
    # the masked score cannot depend on the edge's relation nor on anything reached only through it
    net.edge2relation[2] = 1
    torch.testing.assert_close(module.scores(batch_of(triple), mask_own_edge=True), masked)
    assert not torch.allclose(module.scores(batch_of(triple), mask_own_edge=False), unmasked)  # negative control
    assert module.training_edges(VALID).tolist() == [-1]


def test_path_bags_equal_the_enumeration():
    module = built(use_context=False, max_path_len=3)
    triples = torch.cat([TRAIN, VALID, TEST])
    expected = relation_paths(TRAIN, triples, 3)
    rows = module.lookup(triples)
    vocab = module.net.path_weight.shape[0]
    with torch.no_grad():
        module.net.path_weight.copy_(torch.randn_like(module.net.path_weight))
        module.net.path_bias.copy_(torch.randn(3))
    scores = module.scores(batch_of(triples), mask_own_edge=False)
    table = cached_relation_paths(TRAIN, module.queries, 3, 3, [], None)
    decoded = {tuple(table["vocab"][i, : table["lengths"][i]].tolist()): i for i in range(len(table["vocab"]))}
    assert len(decoded) == vocab
    for k, row in enumerate(rows.tolist()):
        bag = table["ids"][table["offsets"][row] : table["offsets"][row + 1]].tolist()
        found = {tuple(table["vocab"][i, : table["lengths"][i]].tolist()) for i in bag}
        assert found == expected[k]
        hand = module.net.path_bias + sum((module.net.path_weight[decoded[p]] for p in expected[k]), torch.zeros(3))
        torch.testing.assert_close(scores[k], hand)
    assert any(len(p) > 0 for p in expected) and (2,) not in expected[2]  # the query edge is not its own path


def test_path_cache_is_reused_and_invalidated(tmp_path, monkeypatch):
    data = tmp_path / "train.txt"
    data.write_text("a\tr\tb\n")
    queries = torch.cat([TRAIN, VALID])
    first = cached_relation_paths(TRAIN, queries, 2, 3, [data], tmp_path / "cache")
    files = list((tmp_path / "cache").glob("*.pt"))
    assert len(files) == 1 and torch.load(files[0], weights_only=True)["ids"].tolist() == first["ids"].tolist()
    calls = []
    real = context_module.relation_paths
    monkeypatch.setattr(context_module, "relation_paths", lambda *a: calls.append(1) or real(*a))
    again = cached_relation_paths(TRAIN, queries, 2, 3, [data], tmp_path / "cache")
    assert calls == [] and torch.equal(again["ids"], first["ids"])  # reused
    cached_relation_paths(TRAIN, queries, 3, 3, [data], tmp_path / "cache")
    assert calls == [1]  # another option: recomputed
    other = cached_relation_paths(TRAIN, torch.cat([TRAIN, TEST]), 2, 3, [data], tmp_path / "cache")
    assert calls == [1, 1] and torch.equal(other["queries"], torch.cat([TRAIN, TEST]))  # other queries: recomputed
    data.write_text("a\tr\tc\n")
    cached_relation_paths(TRAIN, queries, 2, 3, [data], tmp_path / "cache")
    assert calls == [1, 1, 1] and len(list((tmp_path / "cache").glob("*.pt"))) == 3  # the data changed: recomputed
    files[0].write_bytes(b"not a torch file")
    data.write_text("a\tr\tb\n")
    with pytest.raises(LitzooError, match=files[0].name):
        cached_relation_paths(TRAIN, queries, 2, 3, [data], tmp_path / "cache")


def test_use_context_and_use_path_switches():
    with pytest.raises(ValueError):
        PathConModule(use_context=False, use_path=False)
    with pytest.raises(ValueError):
        PathConModule(use_context=False, path_type="rnn", path_agg="att")
    triples = torch.cat([TRAIN, VALID])
    only_context = built(use_path=False)
    assert not hasattr(only_context.net, "path_weight")
    torch.testing.assert_close(only_context.scores(batch_of(triples), False), only_context.net.context_scores(triples[:, [0, 2]]))
    only_paths = built(use_context=False)
    assert not hasattr(only_paths.net, "aggregators")
    with torch.no_grad():
        only_paths.net.path_bias.copy_(torch.tensor([1.0, 2.0, 3.0]))
    scores = only_paths.scores(batch_of(triples), False)
    both = built()
    with torch.no_grad():
        both.net.path_weight.copy_(only_paths.net.path_weight)
        both.net.path_bias.copy_(only_paths.net.path_bias)
    torch.testing.assert_close(both.scores(batch_of(triples), False), scores + both.net.context_scores(triples[:, [0, 2]]))


@pytest.mark.parametrize("path_agg", ["mean", "att"])
def test_rnn_paths_aggregate_per_path_logits(path_agg):
    module = built(path_type="rnn", path_agg=path_agg, path_samples=4, max_path_len=3)
    net = module.net
    triples = torch.cat([TRAIN, VALID])
    rows = module.lookup(triples)
    empty = len(module.net.path_vocab) - 1  # the empty path of triples without paths (length 0: the zero state)
    assert module.net.path_lengths[empty].item() == 0
    ids = torch.cat([module.path_sample_ids[rows][:, :3], torch.full((len(rows), 1), empty)], 1)
    context = net.context_scores(triples[:, [0, 2]])
    got = net.path_scores(ids, None, context)
    for b in range(len(triples)):
        logits = []
        for i in ids[b].tolist():
            length = int(net.path_lengths[i])
            h = torch.zeros(8)
            if length:
                _, (hn, _) = net.lstm(net.relation_features[net.path_vocab[i, :length]][None])
                h = hn[0, 0]
            logits.append(h @ net.path_weight + net.path_bias)
        logits = torch.stack(logits)
        weights = torch.full((4,), 0.25) if path_agg == "mean" else torch.softmax(logits @ context[b], 0)
        torch.testing.assert_close(got[b], weights @ logits)
    assert isinstance(net, PathCon)


def test_short_fit_learns_the_planted_composition(tmp_path):
    L.seed_everything(0, verbose=False)
    dm = PlantedRuleKGDataModule(root=str(tmp_path), num_entities=150, edges_per_relation=150, batch_size=64)
    model = PathConModule(use_context=False)
    trainer = L.Trainer(max_epochs=8, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, accelerator="cpu", devices=1)  # fmt: skip
    trainer.fit(model, dm)
    result = trainer.test(model, dm, verbose=False)[0]
    # 10 relations: chance accuracy 0.1; the held-out facts are derived ones, answerable by their 2-hop body
    assert result["test/acc"] > 0.6 and result["test/hits@1"] > 0.6 and result["test/mrr"] > 0.7
    assert list((dm.train_folder / "pathcon_cache").glob("pathcon_paths_L2_*.pt"))


@pytest.mark.skipif(__import__("importlib").util.find_spec("pykeen") is None, reason='the "kg" extra (pykeen) is not installed')
def test_real_nations_caches_its_paths_under_cache_root_never_in_the_package(tmp_path):
    from litzoo.datamodules.knowledge_graph import PackagedKGDataModule, pykeen_datasets_folder

    dm = PackagedKGDataModule("nations", cache_root=str(tmp_path / "cache"), batch_size=64)
    model = PathConModule(neighbor_samples=4, dim=8)
    L.Trainer(fast_dev_run=True, logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", devices=1).fit(model, dm)
    assert list((tmp_path / "cache" / "nations" / "pathcon_cache").glob("pathcon_paths_L2_*.pt"))
    assert not (pykeen_datasets_folder() / "nations" / "pathcon_cache").exists()
    # the bags are the enumeration's: every distinct triple of the three splits, Nations' 1992 rows
    assert len(model.queries) == 1992 and len(model.path_offsets) == 1993
    without = PackagedKGDataModule("nations")
    assert without.cache_folder is None  # no cache_root: nothing written anywhere
