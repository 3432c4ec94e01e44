"""RoPE-2D (framework/nn/rope.py) and its use in the ViT attention: explicit per-pair rotations, the official
``Rope2D`` layout transcribed, the relative-position property, and the attention that applies it."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from litzoo.framework.nn.rope import Rope2D, apply_rope, rope_2d_angles
from litzoo.framework.nn.vit import Attention, VisionTransformer


def explicit_rotation(x: torch.Tensor, grid_hw: tuple[int, int], theta: float, class_token: bool) -> torch.Tensor:
    """Hand-built: token t at (row, col); channel pair i of the first half turned by col·ω_i, of the second half by
    row·ω_i, ω_i = θ^(−4i/D), each pair by the 2x2 matrix [[cos, −sin], [sin, cos]]; patches at 1.. with a class token."""
    tokens, dim = x.shape[-2:]
    out = x.clone().double()
    start = 1 if class_token else 0
    for t in range(tokens):
        if class_token and t == 0:
            continue  # the class token is not rotated
        n = t - start
        row, col = n // grid_hw[1] + start, n % grid_hw[1] + start
        for half, pos in ((0, col), (1, row)):
            for i in range(dim // 4):
                angle = pos * theta ** (-4 * i / dim)
                a, b = 2 * i + half * dim // 2, 2 * i + 1 + half * dim // 2
                rot = torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]], dtype=torch.float64)
                out[..., t, [a, b]] = (rot @ x[..., t, [a, b]].double().unsqueeze(-1)).squeeze(-1)
    return out.float()


@pytest.mark.parametrize("class_token", [False, True])
def test_rope_equals_explicit_per_pair_rotations(class_token: bool):
    grid, dim = (2, 3), 12
    x = torch.randn(2, 3, int(class_token) + 6, dim, generator=torch.Generator().manual_seed(0))
    ours = apply_rope(x, rope_2d_angles(dim, grid, 10000.0, class_token))
    torch.testing.assert_close(ours, explicit_rotation(x, grid, 10000.0, class_token), atol=1e-5, rtol=1e-5)
    # negative control: swapping the axes (rows in the first half) is a different rotation
    swapped = apply_rope(x, rope_2d_angles(dim, (3, 2), 10000.0, class_token))
    assert not torch.allclose(swapped, ours, atol=1e-3)


def official_rope2d_freq(head_dim: int, grid_h: int, grid_w: int, use_cls_token: bool) -> torch.Tensor:
    """Transcription of perception_models core/vision_encoder/rope.py: RotaryEmbedding(dim // 2) 'lang' freqs,
    repeat '... n -> ... (n r)', cat([freqs_x, freqs_y]), a zero row for the class token."""
    dim = head_dim // 2
    freqs = 1.0 / (10000 ** (torch.arange(0, dim, 2)[: (dim // 2)].float() / dim))

    def rope(t):
        f = torch.einsum("..., f -> ... f", t.float(), freqs)
        return f.repeat_interleave(2, dim=-1)

    offset = 1 if use_cls_token else 0
    freqs_y = rope(torch.arange(grid_h) + offset)[:, None].expand(grid_h, grid_w, -1)
    freqs_x = rope(torch.arange(grid_w) + offset)[None, :].expand(grid_h, grid_w, -1)
    freq = torch.cat([freqs_x, freqs_y], dim=-1).reshape(grid_h * grid_w, -1)
    if use_cls_token:
        freq = torch.cat([torch.zeros(1, freq.shape[-1]), freq], dim=0)
    return freq


def official_apply_rotary_emb(freqs: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """rope.py's apply_rotary_emb with rotate_half ('... (d r) -> ... d r', r = 2; (x1, x2) -> (-x2, x1))."""
    pairs = t.unflatten(-1, (-1, 2))
    rotated = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
    return t * freqs.cos() + rotated * freqs.sin()


@pytest.mark.parametrize("class_token", [False, True])
def test_rope_table_equals_the_official_rope2d(class_token: bool):
    table = rope_2d_angles(16, (3, 5), class_token=class_token)
    torch.testing.assert_close(table, official_rope2d_freq(16, 3, 5, class_token), atol=0, rtol=0)
    x = torch.randn(1, 2, table.shape[0], 16)
    torch.testing.assert_close(apply_rope(x, table), official_apply_rotary_emb(table[None, None], x), atol=1e-6, rtol=1e-6)


def test_query_key_product_depends_only_on_the_offset():
    dim, grid = 16, (6, 6)
    table = rope_2d_angles(dim, grid)
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(dim, generator=g), torch.randn(dim, generator=g)

    def score(q_at: tuple[int, int], k_at: tuple[int, int]) -> float:
        x = torch.stack([q, k])  # two tokens placed at the given grid cells
        rq = apply_rope(x[:1], table[q_at[0] * grid[1] + q_at[1]][None])
        rk = apply_rope(x[1:], table[k_at[0] * grid[1] + k_at[1]][None])
        return float((rq * rk).sum())

    base = score((1, 2), (3, 1))  # offset (−2, +1)
    for shift in ((1, 1), (2, 0), (0, 3), (-1, 2)):
        moved = score((1 + shift[0], 2 + shift[1]), (3 + shift[0], 1 + shift[1]))
        assert moved == pytest.approx(base, abs=1e-5)
    assert score((1, 2), (3, 2)) != pytest.approx(base, abs=1e-3)  # another offset: another score (negative control)


def test_rope_refuses_bad_arguments():
    with pytest.raises(ValueError, match="multiple of 4"):
        rope_2d_angles(6, (2, 2))
    with pytest.raises(ValueError, match="does not match"):
        apply_rope(torch.randn(1, 5, 8), rope_2d_angles(8, (2, 3)))
    rope = Rope2D(8, class_token=True)
    assert rope((2, 3)).shape == (7, 8) and rope((2, 3)) is rope((2, 3))  # cached per grid
    assert list(rope.state_dict()) == []  # nothing in a checkpoint, as the official


def test_attention_applies_rope_to_queries_and_keys_only():
    torch.manual_seed(0)
    attn = Attention(16, 2)
    x = torch.randn(2, 4, 16)
    table = rope_2d_angles(8, (2, 2))
    q, k, v = attn.qkv(x).reshape(2, 4, 3, 2, 8).permute(2, 0, 3, 1, 4)
    expected = F.scaled_dot_product_attention(apply_rope(q, table), apply_rope(k, table), v)
    expected = attn.proj(expected.transpose(1, 2).reshape(2, 4, 16))
    torch.testing.assert_close(attn(x, rope=table), expected, atol=1e-6, rtol=1e-6)
    assert not torch.allclose(attn(x), expected, atol=1e-4)  # without RoPE the output differs


def test_vit_with_rope_takes_any_grid_and_leaves_positions_out_of_the_state_dict():
    torch.manual_seed(0)
    vit = VisionTransformer(8, 2, 1, 16, 1, 2, use_rope2d=True, abs_pos_embed=False, dynamic_size=True)
    assert not any("rope" in key or "pos_embed" in key for key in vit.state_dict())
    assert vit(torch.randn(2, 1, 8, 8)).shape == (2, 17, 16)
    assert vit(torch.randn(2, 1, 12, 6)).shape == (2, 1 + 18, 16)
    # without absolute positions, RoPE alone makes the ViT see where patches are: shuffling patches changes the class token
    images = torch.randn(1, 1, 8, 8)
    plain = VisionTransformer(8, 2, 1, 16, 1, 2, abs_pos_embed=False)
    plain.load_state_dict(vit.state_dict())
    # a mirror permutes the patches (and their pixels); with no position signal at all the class token only sees a set
    mirror_patches = images.unfold(2, 2, 2).unfold(3, 2, 2)  # (1, 1, 4, 4, 2, 2)
    permuted = mirror_patches.flip(3).permute(0, 1, 2, 4, 3, 5).reshape(1, 1, 8, 8)  # patches reordered, contents kept
    assert torch.allclose(plain(images)[:, 0], plain(permuted)[:, 0], atol=1e-5)
    assert not torch.allclose(vit(images)[:, 0], vit(permuted)[:, 0], atol=1e-4)
