"""PE-AV's RoPE tower: each piece by hand, the relative-position property, padding invariance, the whole tower against a
transcription of the official forward (facebookresearch/perception_models core/audio_visual_encoder/transformer.py,
patcher.py, core/transformer.py) written here, and the official state-dict names loading strict."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from litzoo.framework.nn.rope import apply_rope
from litzoo.framework.nn.rope_transformer import (
    MaskedGroupNorm,
    RopeAttention,
    RopeTransformer,
    SwiGLU,
    pe_av_rope_theta,
    rope_1d_angles,
    swiglu_hidden_size,
)

DIM, HEADS, FFN, DEPTH = 16, 2, 24, 2


# ------------------------------------------------------------------------------------- a transcription of the official forward
def ref_rms(x, w, eps=1e-5):
    x64 = x.double()
    return (x64 / torch.sqrt(x64.pow(2).mean(-1, keepdim=True) + eps) * w.double()).to(x.dtype)


def ref_freqs_cis(head_dim, length, theta):
    """core/transformer.py precompute_freqs_cis: (S, D/2, 2, 2) rotation matrices [[cos, -sin], [sin, cos]]."""
    freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 2)[: head_dim // 2].float() / head_dim))
    angles = torch.outer(torch.arange(length).float(), freqs)
    return torch.stack((angles.cos(), -angles.sin(), angles.sin(), angles.cos()), dim=-1).view(length, head_dim // 2, 2, 2)


def ref_apply_rotary(x, freqs_cis):
    """apply_rotary_emb with x (B, H, S, D), seq_dim 2: pairs of adjacent channels times the 2x2 matrices."""
    b, h, s, d = x.shape
    pairs = x.reshape(b, h, s, d // 2, 1, 2)
    return (pairs * freqs_cis.view(1, 1, s, d // 2, 2, 2)).sum(5).flatten(3)


def ref_groupnorm(x, mask, w, b, eps=1e-5):
    """MaskedGroupNorm with one group, sample by sample over the real steps (mask (B, L) of 0/1, True = real)."""
    out = torch.zeros_like(x)
    for i in range(x.shape[0]):
        real = mask[i].bool()
        values = x[i][:, real]
        mean, var = values.mean(), values.var(unbiased=False)
        out[i] = ((x[i] - mean) / torch.sqrt(var + eps) * w[:, None] + b[:, None]) * mask[i][None].to(x.dtype)
    return out


def ref_tower(sd, x, mask, num_heads, depth, max_pos=10_000, eps=1e-5):
    """Transformer.forward: Embeddings (cls, ResnetBlock1d), DecoderLayers, RMSNorm, output; returns (states, pooled)."""
    b, t, d = x.shape
    mask = torch.ones(b, t, dtype=torch.bool) if mask is None else mask.bool()
    mask = torch.cat([torch.ones(b, 1, dtype=torch.bool), mask], dim=1)
    h = torch.cat([sd["embeddings.cls_token"].expand(b, 1, d), x], dim=1).transpose(1, 2)  # B C L
    r = h
    for blk in ("block1", "block2"):
        p = f"embeddings.resnet_block.{blk}."
        r = ref_groupnorm(r, mask, sd[p + "groupnorm.weight"], sd[p + "groupnorm.bias"])
        r = r * torch.sigmoid(r)
        r = F.conv1d(F.pad(r, (1, 1)), sd[p + "project.weight"], sd[p + "project.bias"])
    h = (h + r).transpose(1, 2)
    hd = d // num_heads
    freqs = ref_freqs_cis(hd, t + 1, max(10_000, 2 * max_pos))
    for i in range(depth):
        p = f"layers.{i}."
        a = ref_rms(h, sd[p + "input_layernorm.weight"], eps)
        q = ref_rms(
            (a @ sd[p + "self_attn.q_proj.weight"].T).view(b, t + 1, num_heads, hd), sd[p + "self_attn.q_norm.weight"], eps
        ).transpose(1, 2)
        k = ref_rms(
            (a @ sd[p + "self_attn.k_proj.weight"].T).view(b, t + 1, num_heads, hd), sd[p + "self_attn.k_norm.weight"], eps
        ).transpose(1, 2)
        v = (a @ sd[p + "self_attn.v_proj.weight"].T).view(b, t + 1, num_heads, hd).transpose(1, 2)
        q, k = ref_apply_rotary(q, freqs), ref_apply_rotary(k, freqs)
        scores = q @ k.transpose(-1, -2) / math.sqrt(hd)
        scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
        o = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, t + 1, d)
        h = h + o @ sd[p + "self_attn.o_proj.weight"].T
        m = ref_rms(h, sd[p + "post_attention_layernorm.weight"], eps)
        gate, up = m @ sd[p + "mlp.gate_proj.weight"].T, m @ sd[p + "mlp.up_proj.weight"].T
        h = h + (gate * torch.sigmoid(gate) * up) @ sd[p + "mlp.down_proj.weight"].T
    h = ref_rms(h, sd["norm.weight"], eps) @ sd["output.weight"].T
    return h[:, 1:], h[:, 0]


def official_state_dict(dim, depth, ffn, num_heads, seed=0):
    """A state dict under the official names and shapes of core/audio_visual_encoder/transformer.py Transformer."""
    g = torch.Generator().manual_seed(seed)
    hd = dim // num_heads

    def r(*shape, scale=0.3):
        return torch.randn(*shape, generator=g) * scale

    sd = {"embeddings.cls_token": r(1, 1, dim, scale=1.0)}
    for blk in ("block1", "block2"):
        p = f"embeddings.resnet_block.{blk}."
        sd |= {
            p + "groupnorm.weight": 1 + r(dim),
            p + "groupnorm.bias": r(dim),
            p + "project.weight": r(dim, dim, 3),
            p + "project.bias": r(dim),
        }
    for i in range(depth):
        p = f"layers.{i}."
        sd |= {p + f"self_attn.{n}_proj.weight": r(dim, dim) for n in "qkvo"}
        sd |= {p + "self_attn.q_norm.weight": 1 + r(hd), p + "self_attn.k_norm.weight": 1 + r(hd)}
        sd |= {p + "mlp.gate_proj.weight": r(ffn, dim), p + "mlp.up_proj.weight": r(ffn, dim), p + "mlp.down_proj.weight": r(dim, ffn)}
        sd |= {p + "input_layernorm.weight": 1 + r(dim), p + "post_attention_layernorm.weight": 1 + r(dim)}
    sd |= {"norm.weight": 1 + r(dim), "output.weight": r(dim, dim)}
    return sd


# ------------------------------------------------------------------------------------------------------------------- tests
def test_rmsnorms_are_the_formula_with_eps_1e_5():
    torch.manual_seed(0)
    tower = RopeTransformer(DIM, 1, HEADS, FFN, max_position_embeddings=32)
    norms = [tower.norm, tower.layers[0].input_layernorm, tower.layers[0].post_attention_layernorm, tower.layers[0].self_attn.q_norm]
    x = torch.randn(3, 5, DIM) * 1e-3  # small inputs: eps matters
    for norm in norms:
        assert norm.eps == 1e-5
        with torch.no_grad():
            norm.weight.normal_()
        xi = x[..., : norm.weight.shape[0]]
        torch.testing.assert_close(norm(xi), ref_rms(xi, norm.weight.detach()), atol=1e-6, rtol=1e-5)
    assert tower.layers[0].self_attn.q_norm.weight.shape == (DIM // HEADS,)  # QK-norm over the head width


def test_swiglu_hidden_size_rule_by_hand_and_the_mlp():
    assert swiglu_hidden_size(1024, multiple_of=64) == 2752  # int(8192/3) = 2730 -> 43 * 64: PE-AV's default intermediate_size
    assert swiglu_hidden_size(1024, multiple_of=32) == 2752  # 2730 -> 86 * 32
    assert swiglu_hidden_size(1024, multiple_of=256) == 2816  # 2730 -> 11 * 256
    assert swiglu_hidden_size(4096, multiple_of=256) == 11008  # Llama-2 7B: 10922 -> 43 * 256
    assert swiglu_hidden_size(4096, multiple_of=1024, ffn_dim_multiplier=1.3) == 14336  # Llama-3 8B: int(1.3 * 10922) = 14198 -> 14 * 1024
    torch.manual_seed(0)
    mlp = SwiGLU(4, 6)
    x = torch.randn(2, 4)
    gate, up = x @ mlp.gate_proj.weight.T, x @ mlp.up_proj.weight.T
    torch.testing.assert_close(mlp(x), (gate / (1 + torch.exp(-gate)) * up) @ mlp.down_proj.weight.T)
    assert mlp.gate_proj.bias is None and mlp.down_proj.bias is None


def test_rope_angles_by_hand_and_scores_depend_only_on_the_offset():
    assert pe_av_rope_theta(10_000) == 20_000 and pe_av_rope_theta(1_000) == 10_000
    angles = rope_1d_angles(4, 3, 100.0)
    expected = torch.tensor([[0, 0, 0, 0], [1, 1, 0.1, 0.1], [2, 2, 0.2, 0.2]])  # t * 100^(-0/4), t * 100^(-2/4)
    torch.testing.assert_close(angles, expected)
    torch.manual_seed(0)
    attn = RopeAttention(8, 1).eval()
    q, k = torch.randn(8), torch.randn(8)

    def score(m, n):
        length = max(m, n) + 1
        table = rope_1d_angles(8, length, 20_000.0)
        qs, ks = torch.zeros(1, 1, length, 8), torch.zeros(1, 1, length, 8)
        qs[..., m, :], ks[..., n, :] = q, k
        return float(apply_rope(qs, table)[0, 0, m] @ apply_rope(ks, table)[0, 0, n])

    for m, n in [(3, 1), (0, 2), (5, 5)]:
        assert score(m, n) == pytest.approx(score(m + 7, n + 7), abs=1e-5)
    assert abs(score(3, 1) - score(1, 3)) > 1e-3  # not symmetric: the sign of the offset matters
    # the rotation is the official matrix product on adjacent pairs (interleaved, not half-split)
    x = torch.randn(1, 2, 6, 8)
    torch.testing.assert_close(apply_rope(x, rope_1d_angles(8, 6, 20_000.0)), ref_apply_rotary(x, ref_freqs_cis(8, 6, 20_000.0)))
    assert attn.q_proj.bias is None


def test_masked_groupnorm_uses_only_real_steps_and_zeroes_padding():
    torch.manual_seed(0)
    norm = MaskedGroupNorm(1, 4)
    with torch.no_grad():
        norm.weight.normal_(), norm.bias.normal_()
    x = torch.randn(2, 4, 6)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    out = norm(x, mask)
    torch.testing.assert_close(out, ref_groupnorm(x, mask, norm.weight.detach(), norm.bias.detach()))
    assert torch.all(out[0, :, 4:] == 0)
    torch.testing.assert_close(norm(x), F.group_norm(x, 1, norm.weight, norm.bias, 1e-5))


def test_official_names_load_strict_and_the_tower_equals_the_transcription():
    sd = official_state_dict(DIM, DEPTH, FFN, HEADS)
    tower = RopeTransformer(DIM, DEPTH, HEADS, FFN).eval()
    assert set(tower.state_dict()) == set(sd)  # the RoPE table is not a persistent buffer, as in the release
    tower.load_state_dict(sd, strict=True)
    x = torch.randn(3, 7, DIM, generator=torch.Generator().manual_seed(1))
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[1, 5:] = False
    mask[2, 2:] = False
    for m in (None, mask):
        states, pooled = tower(x, m)
        ref_states, ref_pooled = ref_tower(sd, x, m, HEADS, DEPTH)
        torch.testing.assert_close(states, ref_states, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(pooled, ref_pooled, atol=1e-5, rtol=1e-5)
    # max_position_embeddings sets the RoPE base: another base gives another output
    other = RopeTransformer(DIM, DEPTH, HEADS, FFN, max_position_embeddings=20_000).eval()
    other.load_state_dict(sd)
    assert not torch.allclose(other(x)[1], tower(x)[1], atol=1e-4)
    torch.testing.assert_close(other(x)[1], ref_tower(sd, x, None, HEADS, DEPTH, max_pos=20_000)[1], atol=1e-5, rtol=1e-5)


def test_padded_steps_do_not_change_the_real_steps():
    sd = official_state_dict(DIM, DEPTH, FFN, HEADS, seed=2)
    tower = RopeTransformer(DIM, DEPTH, HEADS, FFN).eval()
    tower.load_state_dict(sd)
    x = torch.randn(2, 5, DIM, generator=torch.Generator().manual_seed(3))
    padded = torch.cat([x, 50 * torch.randn(2, 4, DIM, generator=torch.Generator().manual_seed(4))], dim=1)
    mask = torch.cat([torch.ones(2, 5, dtype=torch.bool), torch.zeros(2, 4, dtype=torch.bool)], dim=1)
    states, pooled = tower(x)
    states_p, pooled_p = tower(padded, mask)
    torch.testing.assert_close(states_p[:, :5], states, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pooled_p, pooled, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(tower(padded)[1], pooled, atol=1e-3)  # without the mask the padding does leak in


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="even width"):
        RopeAttention(12, 4)  # head width 3
    with pytest.raises(ValueError):
        RopeTransformer(DIM, 0, HEADS, FFN)
    with pytest.raises(ValueError, match="1 \\+ T"):
        RopeTransformer(DIM, 1, HEADS, FFN, max_position_embeddings=4)(torch.randn(1, 4, DIM))
    with pytest.raises(ValueError):
        swiglu_hidden_size(0)
