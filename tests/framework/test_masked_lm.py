import pytest
import torch
from torch import nn

from litzoo.framework.text.masked_lm import IGNORE_INDEX, MaskedLMHead, mlm_corrupt


def _batch(rows: int = 400, length: int = 50, vocab: int = 1000):
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(3, vocab, (rows, length), generator=g)
    lengths = torch.randint(1, length + 1, (rows,), generator=g)
    mask = torch.arange(length)[None] < lengths[:, None]
    tokens[~mask] = 0
    tokens[:, 0] = 1  # an [UNK] at every row start: special, never chosen
    return tokens, mask


def test_mlm_corrupt_rates_and_rules():
    tokens, mask = _batch()
    inputs, labels = mlm_corrupt(tokens, mask, mask_token_id=2, first_word_id=3, vocab_size=1000, generator=torch.Generator().manual_seed(1))
    chosen = labels != IGNORE_INDEX
    eligible = mask & (tokens >= 3)
    assert not (chosen & ~eligible).any()  # never padding, never a special token
    assert torch.equal(labels[chosen], tokens[chosen])
    assert torch.equal(inputs[~chosen], tokens[~chosen])  # what is not chosen is untouched
    share = chosen.sum().item() / eligible.sum().item()
    assert abs(share - 0.15) < 0.01
    n = chosen.sum().item()
    masked = (inputs[chosen] == 2).sum().item() / n
    kept = (inputs[chosen] == tokens[chosen]).sum().item() / n
    assert abs(masked - 0.8) < 0.03 and abs(kept - 0.1) < 0.03  # random draws equal to the original are rare (1/997)
    assert (inputs[chosen & (inputs != 2)] >= 3).all()  # replacements are words, never specials


def test_mlm_corrupt_is_seeded_and_checks_arguments():
    tokens, mask = _batch(8, 10)
    a = mlm_corrupt(tokens, mask, 2, 3, 1000, generator=torch.Generator().manual_seed(5))
    b = mlm_corrupt(tokens, mask, 2, 3, 1000, generator=torch.Generator().manual_seed(5))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    with pytest.raises(ValueError, match="probability"):
        mlm_corrupt(tokens, mask, 2, 3, 1000, probability=0.0)
    with pytest.raises(ValueError, match="mask_token_id"):
        mlm_corrupt(tokens, mask, 3, 3, 1000)


def test_masked_lm_head_is_tied_and_matches_bert_formula():
    torch.manual_seed(0)
    embedding = nn.Embedding(11, 6)
    head = MaskedLMHead(embedding)
    assert head.embedding.weight is embedding.weight
    states = torch.randn(2, 3, 6)
    expected = torch.nn.functional.layer_norm(torch.nn.functional.gelu(states @ head.dense.weight.T + head.dense.bias), (6,),
                                              head.norm.weight, head.norm.bias) @ embedding.weight.T + head.bias  # fmt: skip
    assert torch.allclose(head(states), expected, atol=1e-6)
    head(states).sum().backward()
    assert embedding.weight.grad is not None  # the decoder trains the input embedding
