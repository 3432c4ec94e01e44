"""SASRec's self-attentive encoder against a slot-by-slot reference of the official TF computation; causality; padding."""

from __future__ import annotations

import math

import pytest
import torch

from litzoo.framework.nn.sequence_encoder import SelfAttentiveSequenceEncoder


def _layer_norm(x, norm):
    mean, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
    return (x - mean) / torch.sqrt(var + 1e-8) * norm.weight + norm.bias


def reference(encoder: SelfAttentiveSequenceEncoder, vectors: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """The official model.py / modules.py, one row and one query slot at a time, attending only to real keys <= t."""
    B, L, d = vectors.shape
    out = torch.empty(B, L, d, dtype=torch.float64)
    for b in range(B):
        x = (vectors[b] * math.sqrt(d) + encoder.position.weight[encoder.max_len - L :]) * real[b, :, None]
        for block in encoder.blocks:
            att = block.attention
            q_in = _layer_norm(x, att.norm)
            y = torch.empty_like(x)
            h = att.num_heads
            width = d // h
            for t in range(L):
                keys = [s for s in range(t + 1) if real[b, s]]
                heads = []
                for j in range(h):
                    sl = slice(j * width, (j + 1) * width)
                    q = att.query(q_in[t])[sl]
                    if not real[b, t]:
                        heads.append(torch.zeros(width, dtype=x.dtype))  # query masking
                        continue
                    k = torch.stack([att.key(x[s])[sl] for s in keys])
                    v = torch.stack([att.value(x[s])[sl] for s in keys])
                    w = torch.softmax(k @ q / math.sqrt(width), 0)
                    heads.append(w @ v)
                y[t] = q_in[t] + torch.cat(heads)
            z = _layer_norm(y, block.norm)
            ff = block.feed_forward
            x = (z + ff.outer(torch.relu(ff.inner(z)))) * real[b, :, None]
        out[b] = _layer_norm(x, encoder.norm)
    return out


def _encoder(num_heads: int = 2, causal: bool = True) -> SelfAttentiveSequenceEncoder:
    torch.manual_seed(0)
    encoder = SelfAttentiveSequenceEncoder(dim=8, max_len=6, num_blocks=2, num_heads=num_heads, dropout=0.3, causal=causal).double().eval()
    with torch.no_grad():  # non-trivial norms: a zero LN bias would hide a wrong query mask or residual
        for module in encoder.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.5)
    return encoder


@pytest.mark.parametrize("num_heads", [1, 2])
def test_encoder_equals_the_official_computation_slot_by_slot(num_heads):
    encoder = _encoder(num_heads)
    vectors = torch.randn(3, 6, 8, dtype=torch.float64)
    real = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 1]], dtype=torch.bool)
    out = encoder(vectors, real)
    assert out.shape == (3, 6, 8)
    expected = reference(encoder, vectors, real)
    assert torch.allclose(out[real], expected[real], atol=1e-10)


def test_output_at_t_ignores_later_items_and_bidirectional_does_not():
    encoder = _encoder()
    vectors = torch.randn(1, 6, 8, dtype=torch.float64)
    real = torch.ones(1, 6, dtype=torch.bool)
    changed = vectors.clone()
    changed[:, 4:] = torch.randn(1, 2, 8, dtype=torch.float64)
    a, b = encoder(vectors, real), encoder(changed, real)
    assert torch.equal(a[:, :4], b[:, :4])
    assert not torch.allclose(a[:, 4:], b[:, 4:])  # negative control: the changed slots do change
    earlier = vectors.clone()
    earlier[:, 1] += 1.0
    assert not torch.allclose(encoder(earlier, real)[:, 3], a[:, 3])  # an earlier item does reach slot 3
    bidirectional = _encoder(causal=False)
    assert not torch.allclose(bidirectional(vectors, real)[:, :4], bidirectional(changed, real)[:, :4])


def test_padding_never_changes_a_real_output():
    encoder = _encoder()
    vectors = torch.randn(2, 6, 8, dtype=torch.float64)
    real = torch.tensor([[0, 0, 0, 1, 1, 1], [0, 1, 1, 1, 1, 1]], dtype=torch.bool)
    base = encoder(vectors, real)
    garbage = vectors.clone()
    garbage[~real] = 100 * torch.randn(int((~real).sum()), 8, dtype=torch.float64)  # whatever the padding slots hold
    assert torch.allclose(encoder(garbage, real)[real], base[real], atol=1e-12)
    # the same items with less left padding (a shorter L): same outputs at the real slots (positions count from the end)
    short = encoder(vectors[:1, 3:], real[:1, 3:])
    assert torch.allclose(short[0], base[0, 3:], atol=1e-12)
    # negative control: unmasked, the padding slots would leak in
    assert not torch.allclose(encoder(garbage, torch.ones_like(real))[real], base[real])


def test_train_mode_dropout_and_bad_shapes():
    encoder = _encoder().train()
    vectors = torch.randn(2, 6, 8, dtype=torch.float64)
    real = torch.ones(2, 6, dtype=torch.bool)
    assert not torch.allclose(encoder(vectors, real), encoder(vectors, real))
    with pytest.raises(ValueError, match="exceed max_len"):
        encoder(torch.randn(1, 7, 8, dtype=torch.float64), torch.ones(1, 7, dtype=torch.bool))
    with pytest.raises(ValueError, match="multiple of num_heads"):
        SelfAttentiveSequenceEncoder(dim=10, num_heads=3)
    with pytest.raises(ValueError, match="dropout"):
        SelfAttentiveSequenceEncoder(dropout=1.0)
