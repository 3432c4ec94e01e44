"""Random walks, skip-gram pairs, negatives and the SGNS loss (framework/graphs/walks.py)."""

import itertools

import pytest
import torch

from litzoo.framework.graphs.walks import WalkSkipGram, negative_samples, random_walks, sgns_loss, skipgram_pairs


def both(edges):
    e = torch.tensor(edges).t()
    return torch.cat([e, e.flip(0)], 1)


def test_walks_follow_edges_start_right_and_are_seeded():
    edge_index = both([(0, 1), (1, 2), (2, 3), (3, 0), (1, 3)])
    walks = random_walks(edge_index, 4, walk_length=6, walks_per_node=3, generator=torch.Generator().manual_seed(1))
    assert walks.shape == (12, 6)
    assert walks[:, 0].tolist() == [0, 1, 2, 3] * 3
    edges = set(map(tuple, edge_index.t().tolist()))
    assert all((a, b) in edges for w in walks.tolist() for a, b in itertools.pairwise(w))
    again = random_walks(edge_index, 4, walk_length=6, walks_per_node=3, generator=torch.Generator().manual_seed(1))
    assert torch.equal(walks, again)


def test_walk_neighbour_choice_is_uniform_and_dead_ends_stop():
    star = both([(0, 1), (0, 2), (0, 3)])
    walks = random_walks(star, 5, 2, start=torch.zeros(6000, dtype=torch.long), generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(walks[:, 1], minlength=5).float() / 6000
    assert torch.allclose(freq[1:4], torch.full((3,), 1 / 3), atol=0.03) and freq[4] == 0 and freq[0] == 0
    isolated = random_walks(star, 5, 3, start=torch.tensor([4]))
    assert isolated.tolist() == [[4, -1, -1]]


def test_skipgram_pairs_equal_brute_force():
    walks = torch.tensor([[0, 1, 2, 3, 4], [5, 6, 7, -1, -1]])
    center, context, walk_id = skipgram_pairs(walks, window=2)
    got = sorted(zip(center.tolist(), context.tolist(), walk_id.tolist(), strict=True))
    expected = sorted((int(w[i]), int(w[j]), k) for k, w in enumerate(walks) for i in range(5) for j in range(5)
                      if i != j and abs(i - j) <= 2 and w[i] >= 0 and w[j] >= 0)
    assert got == expected and len(got) == 14 + 6


def test_negatives_avoid_the_walk():
    walks = torch.tensor([[0, 1, 2], [3, 4, 5]])
    negatives = negative_samples(walks, torch.tensor([0, 0, 1]), 50, 7, torch.Generator().manual_seed(0))
    assert set(negatives[:2].flatten().tolist()) <= {3, 4, 5, 6} and set(negatives[2].tolist()) <= {0, 1, 2, 6}
    with pytest.raises(ValueError, match="every node"):
        negative_samples(torch.tensor([[0, 1, 2]]), torch.tensor([0]), 1, 3)


def test_sgns_loss_and_gradient_by_hand():
    c = torch.tensor([[1.0, 0.5]], requires_grad=True)
    o = torch.tensor([[0.2, -1.0]], requires_grad=True)
    n = torch.tensor([[[0.3, 0.4], [-0.5, 1.0]]], requires_grad=True)
    loss = sgns_loss(c, o, n)
    s = torch.sigmoid
    co, cn1, cn2 = 1 * 0.2 + 0.5 * -1.0, 0.3 + 0.2, -0.5 + 0.5
    expected = -torch.log(s(torch.tensor(co))) - torch.log(s(torch.tensor(-cn1))) - torch.log(s(torch.tensor(-cn2)))
    assert torch.isclose(loss, expected)
    loss.backward()
    # d/dc = -(1 - σ(c·o)) o + Σ σ(c·n_k) n_k ;  d/do = -(1 - σ(c·o)) c ;  d/dn_k = σ(c·n_k) c
    g_c = -(1 - s(torch.tensor(co))) * o[0] + s(torch.tensor(cn1)) * n[0, 0] + s(torch.tensor(cn2)) * n[0, 1]
    assert torch.allclose(c.grad[0], g_c.detach())
    assert torch.allclose(o.grad[0], (-(1 - s(torch.tensor(co))) * c[0]).detach())
    assert torch.allclose(n.grad[0, 0], (s(torch.tensor(cn1)) * c[0]).detach())


def test_skipgram_step_pulls_walk_neighbours_together():
    # two disjoint triangles: after SGNS steps, same-triangle nodes score higher than cross-triangle ones
    edge_index = both([(0, 1), (1, 2), (2, 0), (3, 4), (4, 5), (5, 3)])
    torch.manual_seed(0)
    emb = torch.nn.Parameter(torch.randn(6, 4) * 0.1)
    sg = WalkSkipGram(6, 4, walk_length=4, walks_per_node=4, window=2, num_negatives=2)
    opt = torch.optim.Adam([emb, *sg.parameters()], lr=0.05)
    gen = torch.Generator().manual_seed(0)
    first = None
    for _ in range(200):
        loss = sg(emb, edge_index, gen)
        first = float(loss) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss) < first
    scores = emb @ sg.context.weight.t()
    same = torch.tensor([[i // 3 == j // 3 for j in range(6)] for i in range(6)])
    assert scores[same].mean() > scores[~same].mean() + 1.0


def test_rank_shares_add_up_to_the_single_process_loss_and_gradient():
    # DDP's split: each rank keeps the pairs of every world_size-th walk of the same corpus; the shares' gradients summed
    # over the ranks (what the all-reduce does) equal the one-process mean's
    edge_index = both([(0, 1), (1, 2), (2, 3), (3, 0), (4, 5), (5, 6), (6, 4), (2, 4), (7, 0), (7, 5)])
    emb = torch.nn.Parameter(torch.randn(8, 4))
    sg = WalkSkipGram(8, 4, walk_length=4, walks_per_node=3, window=2, num_negatives=2, generator=torch.Generator().manual_seed(1))
    whole = sg(emb, edge_index, torch.Generator().manual_seed(5))
    expected = torch.autograd.grad(whole, [emb, sg.context.weight])
    world = 3
    shares = [sg(emb, edge_index, torch.Generator().manual_seed(5), rank, world) for rank in range(world)]
    grads = [torch.autograd.grad(share, [emb, sg.context.weight]) for share in shares]
    assert torch.allclose(sum(shares), whole, atol=1e-6)
    for i in range(2):
        assert torch.allclose(sum(g[i] for g in grads), expected[i], atol=1e-6)
        assert not torch.allclose(grads[0][i], expected[i] / world, atol=1e-4)  # the ranks' shares really differ
    with pytest.raises(ValueError, match="rank"):
        sg(emb, edge_index, None, 3, 3)


def test_a_seeded_context_table_leaves_the_global_rng_alone():
    torch.manual_seed(0)
    before = torch.get_rng_state()
    a = WalkSkipGram(10, 4, generator=torch.Generator().manual_seed(2))
    assert torch.equal(torch.get_rng_state(), before)  # nn.Embedding's own init would have drawn from it
    b = WalkSkipGram(10, 4, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a.context.weight, b.context.weight) and a.context.weight.requires_grad
    bound = (6 / (10 + 4)) ** 0.5  # Xavier-uniform
    assert a.context.weight.abs().max() <= bound and a.context.weight.std() > bound / 3
    WalkSkipGram(10, 4)
    assert not torch.equal(torch.get_rng_state(), before)  # the default (RWR-GAE's, unchanged) draws from it


def test_sgns_reductions_agree():
    c, o, n = torch.randn(5, 3), torch.randn(5, 3), torch.randn(5, 2, 3)
    per_pair = sgns_loss(c, o, n, reduction="none")
    assert per_pair.shape == (5,) and torch.allclose(per_pair.mean(), sgns_loss(c, o, n)) and torch.allclose(per_pair.sum(), sgns_loss(c, o, n, "sum"))
    with pytest.raises(ValueError, match="reduction"):
        sgns_loss(c, o, n, "max")
