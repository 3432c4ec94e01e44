"""LinearChainCRF against brute-force enumeration of every tag sequence (T = 3, L <= 4, with padding)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from litzoo.framework.nn.crf import LinearChainCRF, bio_allowed_transitions

BIO = ["O", "B-X", "I-X"]


def _crf(constrained: bool = False, seed: int = 0) -> LinearChainCRF:
    crf = LinearChainCRF.from_bio(BIO) if constrained else LinearChainCRF(3)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # scores far from the +-0.1 initialisation, so every term matters
        for parameter in crf.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator))
    return crf.double()


def _batch(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    emissions = torch.randn(3, 4, 3, generator=generator, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)
    # padding must not count: large values, different per tag and position, would dominate if it did
    emissions[~mask] = 100 * torch.randn(int((~mask).sum()), 3, generator=generator, dtype=torch.float64)
    return emissions, mask


def _allowed(crf: LinearChainCRF, path: tuple[int, ...]) -> bool:
    return bool(crf.allowed_start[path[0]] and crf.allowed_end[path[-1]] and all(crf.allowed_transitions[a, b] for a, b in itertools.pairwise(path)))


def _path_score(crf: LinearChainCRF, emissions: torch.Tensor, path: tuple[int, ...]) -> float:
    """The CRF score written out term by term, independently of the module's vectorised code."""
    trans, start, end = crf.transitions.tolist(), crf.start_transitions.tolist(), crf.end_transitions.tolist()
    total = start[path[0]] + end[path[-1]]
    total += sum(float(emissions[t, y]) for t, y in enumerate(path))
    total += sum(trans[a][b] for a, b in itertools.pairwise(path))
    return total


def _brute(crf: LinearChainCRF, emissions: torch.Tensor, length: int) -> dict[tuple[int, ...], float]:
    """Scores of every allowed tag sequence of ``length``."""
    return {
        path: _path_score(crf, emissions, path)
        for path in itertools.product(range(crf.num_tags), repeat=length)
        if _allowed(crf, path)
    }


def _logsumexp(values) -> float:
    values = list(values)
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


@pytest.mark.parametrize("constrained", [False, True])
def test_partition_gold_probability_and_viterbi_equal_brute_force(constrained):
    crf = _crf(constrained)
    emissions, mask = _batch()
    lengths = mask.sum(1).tolist()
    log_z = crf.log_partition(emissions, mask).detach()
    paths = crf.viterbi(emissions, mask)
    gold = torch.zeros(3, 4, dtype=torch.long)
    gold[0] = torch.tensor([1, 2, 0, 1])  # valid BIO: B-X I-X O B-X
    gold[1, :2] = torch.tensor([0, 1])
    gold[2, 0] = 1
    nll = crf.nll(emissions, gold, mask, reduction="none").detach()
    for b, length in enumerate(lengths):
        scores = _brute(crf, emissions[b], length)
        # valid BIO paths over O, B-X, I-X number 2, 5, 13, 34 for lengths 1..4 (hand count by last tag)
        assert len(scores) == ({1: 2, 2: 5, 3: 13, 4: 34}[length] if constrained else 3**length)
        brute_log_z = _logsumexp(scores.values())
        assert float(log_z[b]) == pytest.approx(brute_log_z, abs=1e-9)
        gold_path = tuple(gold[b, :length].tolist())
        assert math.exp(-float(nll[b])) == pytest.approx(math.exp(scores[gold_path] - brute_log_z), abs=1e-9)
        assert tuple(paths[b]) == max(scores, key=scores.get)


def test_bio_constraints_change_partition_and_decoding():
    constrained, free = _crf(True), _crf(False)
    free.load_state_dict({k: v for k, v in constrained.state_dict().items() if not k.startswith("allowed")}, strict=False)
    emissions = torch.zeros(1, 3, 3, dtype=torch.float64)
    emissions[0, :, 2] = 10.0  # every position prefers I-X, which may not start a sequence
    free_path, constrained_path = free.viterbi(emissions)[0], constrained.viterbi(emissions)[0]
    assert free_path == [2, 2, 2]
    assert constrained_path == [1, 2, 2]  # the best valid path: B-X then I-X
    with torch.no_grad():  # negative control: the unconstrained model also sums the 14 invalid paths
        assert float(free.log_partition(emissions)) > float(constrained.log_partition(emissions))


def test_end_transitions_matter_and_padding_is_ignored():
    crf = _crf()
    emissions, mask = _batch()
    log_z = crf.log_partition(emissions, mask).detach()
    # the padded row equals the same row cut to its length
    for b, length in enumerate(mask.sum(1).tolist()):
        alone = crf.log_partition(emissions[b : b + 1, :length]).detach()
        assert float(alone) == pytest.approx(float(log_z[b]), abs=1e-12)
    # Viterbi too: padding that strongly favours another last tag than the cut row's must not change the path
    for b, length in enumerate(mask.sum(1).tolist()):
        alone = crf.viterbi(emissions[b : b + 1, :length])[0]
        padded = emissions[b : b + 1].clone()
        padded[0, length:] = 0.0
        padded[0, length:, (alone[-1] + 1) % 3] = 1e3
        assert crf.viterbi(padded, mask[b : b + 1]) == [alone]
    # negative control: without the end transitions the partition function changes
    with torch.no_grad():
        crf.end_transitions.zero_()
    assert (crf.log_partition(emissions, mask) - log_z).abs().min() > 1e-3


def test_gradients_are_finite_and_reductions_agree():
    crf = _crf(constrained=True).float()
    emissions, mask = _batch()
    emissions = emissions.float().requires_grad_()
    tags = torch.tensor([[0, 1, 2, 2], [1, 0, 0, 0], [0, 0, 0, 0]])
    per_sequence = crf.nll(emissions, tags, mask, reduction="none")
    assert torch.allclose(crf.nll(emissions, tags, mask, reduction="sum"), per_sequence.sum())
    assert torch.allclose(crf(emissions, tags, mask), per_sequence.mean())
    assert torch.allclose(crf.nll(emissions, tags, mask, reduction="token_mean"), per_sequence.sum() / 7)
    per_sequence.sum().backward()
    for grad in (emissions.grad, crf.transitions.grad, crf.start_transitions.grad, crf.end_transitions.grad):
        assert grad is not None and torch.isfinite(grad).all()
    assert (per_sequence > 0).all()
    # forbidden transitions get no gradient (their score is -inf whatever the parameter)
    assert crf.transitions.grad[0, 2] == 0 and crf.start_transitions.grad[2] == 0
    # padded emissions get no gradient
    assert (emissions.grad[~mask] == 0).all()


def test_bio_allowed_transitions_by_hand():
    transitions, start, end = bio_allowed_transitions(["O", "B-X", "I-X", "B-Y", "I-Y"])
    expected = torch.tensor(
        [
            [1, 1, 0, 1, 0],  # O -> O, B-X, B-Y
            [1, 1, 1, 1, 0],  # B-X -> also I-X
            [1, 1, 1, 1, 0],  # I-X -> also I-X
            [1, 1, 0, 1, 1],  # B-Y -> also I-Y
            [1, 1, 0, 1, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(transitions, expected)
    assert start.tolist() == [True, True, False, True, False] and end.all()
    with pytest.raises(ValueError, match="not 'O'"):
        bio_allowed_transitions(["O", "X"])


def test_bad_arguments_are_refused():
    crf = _crf(constrained=True)
    emissions, _ = _batch()
    with pytest.raises(ValueError, match="at least one token"):
        crf.log_partition(emissions, torch.tensor([[1, 1, 1, 1], [0, 0, 0, 0], [1, 0, 0, 0]], dtype=torch.bool))
    with pytest.raises(ValueError, match="left-aligned"):
        crf.log_partition(emissions, torch.tensor([[1, 0, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.bool))
    with pytest.raises(ValueError, match="violates"):
        crf.nll(emissions, torch.tensor([[0, 2, 0, 0]] * 3))  # O then I-X
    with pytest.raises(ValueError, match="reduction"):
        crf.nll(emissions, torch.zeros(3, 4, dtype=torch.long), reduction="avg")
    with pytest.raises(ValueError, match="not finite"):
        crf.nll(torch.full((1, 2, 3), float("nan"), dtype=torch.float64), torch.zeros(1, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="num_tags"):
        LinearChainCRF(0)
    # tag 0 may start, nothing may follow it: no sequence of length 2 exists
    with pytest.raises(ValueError, match="length 2"):
        LinearChainCRF(2, allowed_transitions=torch.zeros(2, 2, dtype=torch.bool), allowed_start=torch.tensor([True, False]))


def test_half_precision_emissions_are_scored_in_float32():
    crf = _crf().float()
    emissions, mask = _batch()
    half = emissions.to(torch.bfloat16)
    with torch.no_grad():
        log_z = crf.log_partition(half, mask)
        reference = crf.log_partition(half.float(), mask)
    assert log_z.dtype == torch.float32 and torch.equal(log_z, reference)
