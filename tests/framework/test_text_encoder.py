"""The shared BiLSTM text encoder: padding invariance (packing), zero padding outputs, a frozen [PAD] row, bad input."""

from __future__ import annotations

import pytest
import torch

from litzoo.framework.nn.text_encoder import BiLSTMTextEncoder


def _encoder(**kwargs) -> BiLSTMTextEncoder:
    torch.manual_seed(0)
    return BiLSTMTextEncoder(vocab_size=20, embed_dim=8, hidden_dim=6, **kwargs).eval()


@pytest.mark.parametrize("num_layers", [1, 2])
def test_outputs_on_real_tokens_do_not_depend_on_padding(num_layers):
    """A sentence alone, padded in a batch with a longer one, and with junk ids under its padding: same features.
    An unpacked LSTM fails this (its backward direction would start from the padding)."""
    encoder = _encoder(num_layers=num_layers)
    short, long = torch.tensor([3, 4, 5]), torch.tensor([6, 7, 8, 9, 10, 11, 12])
    alone = encoder(short[None], torch.ones(1, 3, dtype=torch.bool))[0]
    batch = torch.zeros(2, 7, dtype=torch.long)
    batch[0, :3], batch[1] = short, long
    mask = torch.arange(7)[None] < torch.tensor([[3], [7]])
    padded = encoder(batch, mask)
    torch.testing.assert_close(padded[0, :3], alone, rtol=0, atol=1e-6)
    junk = batch.clone()
    junk[0, 3:] = torch.tensor([13, 14, 15, 16])  # padding positions hold real ids: the mask alone decides
    torch.testing.assert_close(encoder(junk, mask), padded, rtol=0, atol=1e-6)
    assert padded.shape == (2, 7, 12) and encoder.out_dim == 12
    assert torch.equal(padded[0, 3:], torch.zeros(4, 12))
    # the backward direction at the first token has read the whole sentence: changing the last token changes it
    changed = encoder(torch.tensor([[3, 4, 6]]), torch.ones(1, 3, dtype=torch.bool))[0]
    assert not torch.allclose(changed[0, 6:], alone[0, 6:])
    if num_layers == 1:  # the forward direction of a single layer has not (a second layer mixes both)
        torch.testing.assert_close(changed[0, :6], alone[0, :6], rtol=0, atol=1e-6)


def test_the_padding_embedding_is_zero_and_gets_no_gradient():
    encoder = _encoder().train()
    assert torch.equal(encoder.embedding.weight[0], torch.zeros(8))
    tokens = torch.tensor([[1, 2, 0, 0], [3, 0, 0, 0]])
    encoder(tokens).sum().backward()  # mask from the padding id
    assert torch.equal(encoder.embedding.weight.grad[0], torch.zeros(8))
    assert encoder.embedding.weight.grad[1].abs().sum() > 0


def test_bad_arguments_and_inputs_are_refused():
    with pytest.raises(ValueError, match="vocab_size"):
        BiLSTMTextEncoder(1)
    with pytest.raises(ValueError, match="dropout"):
        BiLSTMTextEncoder(10, dropout=1.0)
    with pytest.raises(ValueError, match="padding_idx"):
        BiLSTMTextEncoder(10, padding_idx=10)
    encoder = _encoder()
    with pytest.raises(ValueError, match="left-aligned"):
        encoder(torch.tensor([[1, 2, 3]]), torch.tensor([[True, False, True]]))
    with pytest.raises(ValueError, match="at least one"):
        encoder(torch.tensor([[1, 2], [0, 0]]))
    with pytest.raises(ValueError, match=r"\(B, L\)"):
        encoder(torch.tensor([1, 2]))


def test_transformer_text_encoder_ignores_padding_and_pools_real_tokens():
    from litzoo.framework.nn.text_encoder import TransformerTextEncoder, masked_mean

    torch.manual_seed(0)
    encoder = TransformerTextEncoder(vocab_size=20, max_length=12, dim=16, depth=2, num_heads=4).eval()
    tokens = torch.tensor([[5, 6, 7, 0, 0, 0]])
    mask = tokens != 0
    longer = torch.cat([tokens, torch.zeros(1, 4, dtype=torch.long)], 1)
    short_states = encoder(tokens, mask)
    long_states = encoder(longer, longer != 0)
    # the real tokens' states do not depend on how much padding follows, nor on the padded ids
    assert torch.allclose(short_states[:, :3], long_states[:, :3], atol=1e-5)
    noisy = tokens.clone()
    noisy[0, 3:] = 9
    assert torch.allclose(encoder(noisy, mask)[:, :3], short_states[:, :3], atol=1e-5)
    assert torch.allclose(encoder.pooled(tokens, mask), short_states[:, :3].mean(1), atol=1e-6)
    assert torch.equal(masked_mean(torch.ones(1, 2, 3), torch.zeros(1, 2, dtype=torch.bool)), torch.zeros(1, 3))
    with pytest.raises(ValueError, match="divisible"):
        TransformerTextEncoder(vocab_size=20, max_length=12, dim=10, num_heads=4)
