"""Predictor-guided evolutionary NAS (framework/nas/search.py, mutations of framework/nas/spaces.py): mutations
(one valid local change, seeded), regularized evolution against random search on planted scores, the FLOPs limit
and predictor scoring on computation graphs. The ``nas-search`` command: tests/cli/test_nas.py."""

from __future__ import annotations

import copy
import json
import random

import pytest
import torch
from torch_geometric.data import Batch

from litzoo.framework.nas import (
    FAMILIES,
    MAX_PARAMS,
    MobileNetSpec,
    build_network,
    count_spec_parameters,
    evolutionary_search,
    mutate_spec,
    network_graph,
    predictor_score_fn,
    random_search,
    sample_spec,
    spec_flops,
    spec_from_dict,
    spec_graph,
)
from litzoo.framework.profiling import count_flops
from litzoo.modules.gennape import GENNAPEModule


def _changed_fields(parent, child) -> list[str]:
    a, b = parent.to_dict(), child.to_dict()
    return [k for k in a if a[k] != b[k]]


@pytest.mark.parametrize("family", FAMILIES)
def test_mutation_is_one_valid_local_change(family):
    rng = random.Random(0)
    spec = sample_spec(family, 0)
    touched, depths = set(), set()
    for _ in range(60):
        parent = copy.deepcopy(spec)
        child = mutate_spec(spec, rng)
        assert spec == parent  # the parent is never modified
        assert child.family == family
        assert len(_changed_fields(parent, child)) == 1
        touched.update(_changed_fields(parent, child))
        assert count_spec_parameters(child) <= MAX_PARAMS
        rebuilt = spec_from_dict(json.loads(json.dumps(child.to_dict())))
        assert rebuilt == child
        depths.add(len(getattr(child, "stages", None) or child.blocks))
        spec = child
    assert build_network(spec)(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    # every field of the family gets mutated, and depth moves (one block / stage more or fewer)
    assert touched == set(spec.to_dict()) - {"family"}
    assert len(depths) > 1


def test_mobilenet_mutations_cover_the_documented_changes():
    rng = random.Random(1)
    parent = MobileNetSpec(stem=12, act="relu6", blocks=[[4, 3, 16, 1, 0], [4, 3, 24, 2, 1], [6, 5, 24, 1, 0]])
    kinds = set()
    for _ in range(300):
        child = mutate_spec(parent, rng)
        if len(child.blocks) != len(parent.blocks):
            kinds.add("depth+" if len(child.blocks) > len(parent.blocks) else "depth-")
            continue
        for old, new in zip(parent.blocks, child.blocks):
            for position, name in enumerate(["expansion", "kernel", "width", "stride", "se"]):
                if old[position] != new[position]:
                    kinds.add(name)
                    if name == "kernel":
                        assert {old[1], new[1]} == {3, 5}
        if child.act != parent.act:
            kinds.add("act")
        if child.stem != parent.stem:
            kinds.add("stem")
    assert kinds == {"depth+", "depth-", "expansion", "kernel", "width", "stride", "se", "act", "stem"}


def test_mutation_is_seeded_and_respects_a_parameter_bound():
    spec = sample_spec("resnet", 3)
    assert mutate_spec(spec, 7) == mutate_spec(spec, 7) == mutate_spec(spec, random.Random(7))
    assert len({json.dumps(mutate_spec(spec, s).to_dict()) for s in range(20)}) > 3
    bound = count_spec_parameters(spec)
    rng = random.Random(0)
    for _ in range(20):
        assert count_spec_parameters(mutate_spec(spec, rng, max_params=bound)) <= bound
    with pytest.raises(ValueError):
        mutate_spec({"family": "resnet"}, rng)


def _planted(specs) -> torch.Tensor:
    """SYNTHETIC score of mobilenet specs: count of 5x5 kernels, SE blocks and expansion-6 blocks."""
    return torch.tensor([float(sum((b[1] == 5) + b[4] + (b[0] == 6) for b in s.blocks)) for s in specs])


def test_evolution_beats_random_search_with_the_same_score_calls():
    calls = []

    def score(specs):
        calls.append(len(specs))
        return _planted(specs)

    limit = 1.5e6
    evo = evolutionary_search("mobilenet", score, limit, population=20, generations=8, sample_size=5, children=10, top_k=5, seed=0)
    assert evo.score_calls == sum(calls) == len(evo.history) and len(calls) <= 9  # batched: one call per generation
    assert calls[0] == 20 and max(calls[1:]) <= 10
    rand = random_search("mobilenet", evo.score_calls, limit, seed=0, score_fn=_planted)
    assert rand.score_calls == evo.score_calls
    assert evo.best[0].score > rand.best[0].score + 1
    scores = [c.score for c in evo.best]
    assert scores == sorted(scores, reverse=True) and len({json.dumps(c.spec.to_dict()) for c in evo.best}) == 5
    # deterministic given the seed; another seed searches elsewhere
    again = evolutionary_search("mobilenet", _planted, limit, population=20, generations=8, sample_size=5, children=10, top_k=5, seed=0)
    assert [c.to_dict() for c in again.history] == [c.to_dict() for c in evo.history]
    other = evolutionary_search("mobilenet", _planted, limit, population=20, generations=8, sample_size=5, children=10, top_k=5, seed=1)
    assert [c.to_dict() for c in other.history] != [c.to_dict() for c in evo.history]


def test_the_flops_limit_is_never_violated_even_when_flops_are_rewarded():
    limit = 4e5

    def more_flops(specs):  # rewards exactly what the limit forbids
        return torch.tensor([float(spec_flops(s)) for s in specs])

    result = evolutionary_search("resnet", more_flops, limit, population=10, generations=6, sample_size=3, children=5, top_k=5, seed=0)
    assert result.rejected > 0  # children over the limit were drawn, and discarded
    for candidate in result.history:
        assert candidate.flops <= limit
    for candidate in result.best:
        torch.manual_seed(0)
        assert count_flops(build_network(candidate.spec), torch.zeros(1, 1, 8, 8)) == candidate.flops <= limit
    assert result.best[0].flops > 0.75 * limit  # and the search pushes up to it
    baseline = random_search("resnet", 5, limit, seed=0)
    assert all(c.flops <= limit for c in baseline.best) and len(baseline.best) == 5


def test_bad_search_arguments_are_refused():
    with pytest.raises(ValueError, match="family"):
        evolutionary_search("transformer", _planted, 1e6)
    with pytest.raises(ValueError, match="flops_limit"):
        evolutionary_search("mobilenet", _planted, 0)
    with pytest.raises(ValueError, match="sample_size"):
        evolutionary_search("mobilenet", _planted, 1e6, population=4, sample_size=5)
    with pytest.raises(ValueError, match="scores for"):
        evolutionary_search("mobilenet", lambda specs: torch.zeros(1), 1e6, population=4, sample_size=2, children=2)
    with pytest.raises(ValueError, match="raise flops_limit"):
        random_search("resnet", 2, 10.0)
    with pytest.raises(ValueError, match="n must"):
        random_search("resnet", 0, 1e6)


def _tiny_gennape(seed: int = 0) -> GENNAPEModule:
    torch.manual_seed(seed)
    return GENNAPEModule(embed_dim=8, hidden_dim=8, num_layers=2, eigvec_size=4, contrastive_epochs=0, num_clusters=1)


def test_predictor_scores_equal_the_predictor_on_the_specs_computation_graphs():
    predictor = _tiny_gennape().train()
    specs = [sample_spec("inception", i) for i in range(7)]
    scores = predictor_score_fn(predictor, batch_size=3)(specs)
    assert predictor.training  # its mode is restored
    graphs = [network_graph(build_network(s), None, s.family) for s in specs]
    assert [spec_graph(s).to_dict() for s in specs] == [g.to_dict() for g in graphs]
    with torch.no_grad():
        direct = predictor.eval()(Batch.from_data_list([g.to_pyg() for g in graphs]))
    assert scores.shape == (7,)
    assert torch.allclose(scores, direct, atol=1e-5)
    assert torch.equal(torch.argsort(scores), torch.argsort(direct))
    assert scores.std() > 0  # the specs are told apart
