"""The core ViT's DINOv2 options: LayerScale, stochastic depth in the block (per-sample and DINOv2's batch
subset), dynamic input sizes in the patch embedding, and the position-table resampling; the defaults
leave the block and the ViT exactly as they were."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from litzoo.framework.nn.pos_embed import interpolate_pos_embed
from litzoo.framework.nn.vit import Attention, Block, LayerScale, Mlp, PatchEmbed, VisionTransformer


class _OldBlock(nn.Module):
    """The block as it was before the options were added (a saved copy of its logic)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, causal: bool = False, key_padding_mask: Tensor | None = None) -> Tensor:
        x = x + self.attn(self.norm1(x), causal=causal, key_padding_mask=key_padding_mask)
        return x + self.mlp(self.norm2(x))


def _randomize(module: nn.Module, scale: float = 0.3) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * scale)


def test_default_block_has_the_old_parameters_random_draws_and_outputs():
    torch.manual_seed(3)
    old = _OldBlock(16, 4, mlp_ratio=2.0)
    torch.manual_seed(3)
    new = Block(16, 4, mlp_ratio=2.0)
    old_state, new_state = old.state_dict(), new.state_dict()
    assert list(new_state) == list(old_state)  # same keys, same order
    assert all(torch.equal(new_state[k], old_state[k]) for k in old_state)  # same random draws at construction
    assert [n for n, _ in new.named_modules()] == [n for n, _ in old.named_modules()]  # no extra modules
    _randomize(old)
    new.load_state_dict(old.state_dict())
    x = torch.randn(3, 5, 16)
    pad = torch.tensor([[False] * 4 + [True]] * 3)
    for mode in ("train", "eval"):
        getattr(old, mode)(), getattr(new, mode)()
        assert torch.equal(new(x), old(x))
        assert torch.equal(new(x, causal=True), old(x, causal=True))
        assert torch.equal(new(x, key_padding_mask=pad), old(x, key_padding_mask=pad))


def test_default_vision_transformer_is_unchanged():
    torch.manual_seed(0)
    vit = VisionTransformer(image_size=8, patch_size=4, dim=16, depth=2, num_heads=2).eval()
    keys = list(vit.state_dict())
    per_block = ["norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias",
                 "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias"]
    expected = ["cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias"]
    expected += [f"blocks.{i}.{k}" for i in range(2) for k in per_block] + ["norm.weight", "norm.bias"]
    assert keys == expected
    _randomize(vit)
    images = torch.randn(2, 3, 8, 8)
    x = vit.patch_embed(images)
    x = torch.cat([vit.cls_token.expand(2, -1, -1), x], dim=1) + vit.pos_embed
    for block in vit.blocks:
        old = _OldBlock(16, 2).eval()
        old.load_state_dict(block.state_dict())
        x = old(x)
    torch.testing.assert_close(vit(images), vit.norm(x), atol=0, rtol=0)


def test_layer_scale_multiplies_by_gamma():
    scale = LayerScale(4, init=0.5)
    assert torch.equal(scale.gamma.detach(), torch.full((4,), 0.5)) and scale.gamma.requires_grad
    x = torch.ones(2, 3, 4)
    assert torch.equal(scale(x), torch.full((2, 3, 4), 0.5))
    with torch.no_grad():
        scale.gamma.copy_(torch.tensor([1.0, 2.0, -3.0, 0.0]))
    assert torch.equal(scale(x)[1, 2], torch.tensor([1.0, 2.0, -3.0, 0.0]))


def test_block_with_layer_scale_scales_each_branch():
    torch.manual_seed(0)
    block = Block(8, 2, layer_scale_init=1e-5)
    assert block.ls1.gamma.shape == (8,) and torch.allclose(block.ls1.gamma, torch.full((8,), 1e-5))
    keys = set(block.state_dict())
    assert {"ls1.gamma", "ls2.gamma"} <= keys and keys - {"ls1.gamma", "ls2.gamma"} == set(Block(8, 2).state_dict())
    assert "ls1.gamma" not in Block(8, 2, layer_scale_init=0).state_dict()  # 0 = off, as DINOv2's init_values
    _randomize(block)
    block.eval()
    x = torch.randn(2, 5, 8)
    plain = Block(8, 2).eval()
    plain.load_state_dict({k: v for k, v in block.state_dict().items() if "ls" not in k})
    with torch.no_grad():
        y = x + block.ls1.gamma * plain.attn(plain.norm1(x))
        expected = y + block.ls2.gamma * plain.mlp(plain.norm2(y))
        torch.testing.assert_close(block(x), expected)
        # negative control: without the scales the output differs
        assert not torch.allclose(block(x), plain(x), atol=1e-3)


def _attn_only_block(**kwargs) -> Block:
    """A block whose MLP branch is zero, so each output row is x or x + (scaled) attention residual."""
    block = Block(8, 2, **kwargs)
    _randomize(block)
    with torch.no_grad():
        block.mlp.fc2.weight.zero_()
        block.mlp.fc2.bias.zero_()
    return block


def test_drop_path_zeroes_whole_residuals_in_training_and_is_off_in_eval():
    torch.manual_seed(1)
    block = _attn_only_block(drop_path=0.5)
    x = torch.randn(64, 4, 8)
    with torch.no_grad():
        residual = block.attn(block.norm1(x))
        block.eval()
        torch.testing.assert_close(block(x), x + residual)  # eval: identity drop path
        block.train()
        out = block(x)
    dropped = (out - x).abs().flatten(1).amax(dim=1) == 0
    kept = torch.isclose(out, x + residual / 0.5, atol=1e-5).flatten(1).all(dim=1)
    assert torch.all(dropped | kept) and 10 < int(dropped.sum()) < 54  # a per-sample Bernoulli(0.5)


def test_subset_drop_path_adds_the_scaled_residual_to_exactly_a_subset():
    torch.manual_seed(2)
    block = _attn_only_block(drop_path=0.5, subset_drop_path=True)
    x = torch.randn(8, 4, 8)
    with torch.no_grad():
        residual = block.attn(block.norm1(x))
        out = block.train()(x)
        changed = (out - x).abs().flatten(1).amax(dim=1) > 0
        assert int(changed.sum()) == 4  # max(int(8 * (1 - 0.5)), 1) samples, exactly
        torch.testing.assert_close(out[changed], x[changed] + residual[changed] * (8 / 4))
        assert torch.equal(out[~changed], x[~changed])
        torch.testing.assert_close(block.eval()(x), x + residual)
        # at rate <= 0.1 DINOv2 falls back to the per-sample mask: survivors scaled by 1 / (1 - p), not by
        # B / max(int(B (1 - p)), 1) = 4 / 3 as the subset would be
        low = _attn_only_block(drop_path=0.1, subset_drop_path=True)
        low.load_state_dict(block.state_dict())
        x = torch.randn(4, 4, 8)
        residual = low.attn(low.norm1(x))
        for _ in range(5):
            out = low.train()(x)
            kept = torch.isclose(out, x + residual / 0.9, atol=1e-5).flatten(1).all(dim=1)
            assert torch.all(kept | torch.isclose(out, x).flatten(1).all(dim=1)) and kept.any()


def test_subset_drop_path_subsets_the_key_padding_mask_with_the_rows():
    torch.manual_seed(4)
    block = Block(8, 2, drop_path=0.5, subset_drop_path=True)
    _randomize(block)
    x = torch.randn(6, 5, 8)
    pad = torch.rand(6, 5) < 0.4
    pad[:, 0] = False
    with torch.no_grad():
        torch.manual_seed(9)
        out = block.train()(x, key_padding_mask=pad)
        torch.manual_seed(9)
        idx1 = torch.randperm(6)[:3]
        idx2 = torch.randperm(6)[:3]
        y = x.clone()
        y[idx1] += 2 * block.attn(block.norm1(x[idx1]), key_padding_mask=pad[idx1])
        y[idx2] += 2 * block.mlp(block.norm2(y[idx2]))
    torch.testing.assert_close(out, y)


def test_block_rejects_bad_drop_path():
    with pytest.raises(ValueError, match="drop_path"):
        Block(8, 2, drop_path=1.0)


def test_patch_embed_dynamic_size():
    embed = PatchEmbed(8, 4, 3, 5, dynamic_size=True)
    images = torch.randn(2, 3, 12, 20)
    assert embed.grid_for(images) == (3, 5)
    expected = F.conv2d(images, embed.proj.weight, embed.proj.bias, stride=4).flatten(2).transpose(1, 2)
    assert torch.equal(embed(images), expected)
    with pytest.raises(ValueError, match="multiples of the patch"):
        embed(torch.randn(1, 3, 12, 10))
    with pytest.raises(ValueError, match="expected 8x8"):
        PatchEmbed(8, 4, 3, 5)(images)  # the default still takes one size only


# ---------------------------------------------------------------------------- interpolate_pos_embed


def _official_formula(pos: Tensor, h: int, w: int, offset: float, antialias: bool) -> Tensor:
    """DINOv2's interpolate_pos_encoding, transcribed (their w0 / h0 are the grid's rows / columns)."""
    n = pos.shape[1] - 1
    m = int(n**0.5)
    patch = pos[:, 1:].float().reshape(1, m, m, -1).permute(0, 3, 1, 2)
    kwargs = {"scale_factor": (float(h + offset) / m, float(w + offset) / m)} if offset else {"size": (h, w)}
    patch = F.interpolate(patch, mode="bicubic", antialias=antialias, **kwargs)
    return torch.cat([pos[:, :1].float(), patch.permute(0, 2, 3, 1).reshape(1, -1, pos.shape[-1])], dim=1).to(pos.dtype)


@pytest.mark.parametrize("offset,antialias", [(0.1, False), (0.0, True), (0.0, False)])
@pytest.mark.parametrize("grid", [(3, 5), (7, 7), (2, 2)])
def test_interpolate_pos_embed_equals_the_official_formula(offset, antialias, grid):
    torch.manual_seed(0)
    pos = torch.randn(1, 1 + 16, 6)
    out = interpolate_pos_embed(pos, grid, num_prefix_tokens=1, offset=offset, antialias=antialias)
    assert out.shape == (1, 1 + grid[0] * grid[1], 6)
    torch.testing.assert_close(out, _official_formula(pos, *grid, offset, antialias), atol=0, rtol=0)
    assert torch.equal(out[:, 0], pos[:, 0])  # the class position is kept


def test_interpolate_pos_embed_offset_matters_and_unchanged_grid_is_identity():
    torch.manual_seed(0)
    pos = torch.randn(1, 1 + 16, 6)
    with_offset = interpolate_pos_embed(pos, (7, 7), offset=0.1)
    by_size = interpolate_pos_embed(pos, (7, 7), offset=0.0)
    assert not torch.allclose(with_offset, by_size, atol=1e-4)  # PyTorch samples with the given scale
    assert interpolate_pos_embed(pos, (4, 4)) is pos
    two_d = interpolate_pos_embed(pos[0], (3, 5))
    torch.testing.assert_close(two_d, interpolate_pos_embed(pos, (3, 5))[0])
    half = interpolate_pos_embed(pos.to(torch.bfloat16), (3, 5))
    assert half.dtype == torch.bfloat16
    # two prefix tokens and a stored rectangular grid
    rect = torch.randn(1, 2 + 6, 4)
    out = interpolate_pos_embed(rect, (4, 6), num_prefix_tokens=2, offset=0.0, source_hw=(2, 3))
    grid = rect[:, 2:].reshape(1, 2, 3, 4).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(4, 6), mode="bicubic").permute(0, 2, 3, 1).reshape(1, 24, 4)
    torch.testing.assert_close(out, torch.cat([rect[:, :2], expected], dim=1))
    with pytest.raises(ValueError, match="not a square grid"):
        interpolate_pos_embed(rect, (4, 6))
    with pytest.raises(ValueError, match="does not match"):
        interpolate_pos_embed(rect, (4, 6), num_prefix_tokens=2, source_hw=(2, 2))
