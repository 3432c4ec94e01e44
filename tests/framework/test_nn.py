"""Transformer blocks (framework/nn/vit.py, framework/nn/text.py) against torch's own attention and hand-written math."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from litzoo.framework.nn import Attention, Block, Mlp, PatchEmbed, TextTransformer, VisionTransformer, init_vit_weights


def _reference_mha(attention: Attention) -> nn.MultiheadAttention:
    """``torch.nn.MultiheadAttention`` with the weights of ``attention`` (fused qkv → in_proj, proj → out_proj)."""
    dim = attention.proj.in_features
    mha = nn.MultiheadAttention(dim, attention.num_heads, batch_first=True)
    with torch.no_grad():
        mha.in_proj_weight.copy_(attention.qkv.weight)
        mha.in_proj_bias.copy_(attention.qkv.bias)
        mha.out_proj.weight.copy_(attention.proj.weight)
        mha.out_proj.bias.copy_(attention.proj.bias)
    return mha.eval()


def _randomized_attention(dim: int = 16, heads: int = 4) -> Attention:
    attention = Attention(dim, heads)
    with torch.no_grad():  # non-zero biases, so a swapped or dropped bias shows
        for p in attention.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    return attention.eval()


def _causal_mask(n: int) -> torch.Tensor:
    return torch.triu(torch.ones(n, n, dtype=torch.bool), diagonal=1)  # True = may not attend


# ------------------------------------------------------------------------------------ Attention


@pytest.mark.parametrize("causal", [False, True])
def test_attention_equals_torch_multihead_attention(causal):
    attention = _randomized_attention()
    mha = _reference_mha(attention)
    x = torch.randn(3, 7, 16)
    with torch.no_grad():
        ours = attention(x, causal=causal)
        theirs, _ = mha(x, x, x, need_weights=False, attn_mask=_causal_mask(7) if causal else None)
    assert ours.shape == (3, 7, 16)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    if causal:  # and the mask matters: the non-causal output differs after the first token
        with torch.no_grad():
            full = attention(x)
        assert not torch.allclose(full[:, :-1], ours[:, :-1], atol=1e-4)
        torch.testing.assert_close(full[:, -1], ours[:, -1], atol=1e-5, rtol=1e-5)  # the last token sees everything either way


def test_attention_with_key_padding_mask_equals_torch():
    attention = _randomized_attention()
    mha = _reference_mha(attention)
    x = torch.randn(2, 6, 16)
    padding = torch.zeros(2, 6, dtype=torch.bool)
    padding[0, 4:] = True
    padding[1, 2:] = True
    with torch.no_grad():
        ours = attention(x, key_padding_mask=padding)
        theirs, _ = mha(x, x, x, need_weights=False, key_padding_mask=padding)
        unmasked = attention(x)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(ours, unmasked, atol=1e-4)
    # padded keys are ignored: changing them leaves the unpadded queries' outputs unchanged
    changed = x.clone()
    changed[1, 2:] += 5.0
    with torch.no_grad():
        again = attention(changed, key_padding_mask=padding)
    torch.testing.assert_close(again[1, :2], ours[1, :2], atol=1e-5, rtol=1e-5)


def test_attention_causal_and_key_padding_mask_together():
    attention = _randomized_attention()
    mha = _reference_mha(attention)
    x = torch.randn(2, 6, 16)
    padding = torch.zeros(2, 6, dtype=torch.bool)
    padding[0, 5:] = True
    with torch.no_grad():
        ours = attention(x, causal=True, key_padding_mask=padding)
        theirs, _ = mha(x, x, x, need_weights=False, attn_mask=_causal_mask(6), key_padding_mask=padding)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_attention_with_boolean_and_additive_attn_mask_equals_torch():
    attention = _randomized_attention()
    mha = _reference_mha(attention)
    x = torch.randn(2, 6, 16)
    g = torch.Generator().manual_seed(0)
    allowed = torch.rand(6, 6, generator=g) > 0.4
    allowed |= torch.eye(6, dtype=torch.bool)  # every query keeps at least itself
    bias = torch.randn(6, 6, generator=g)
    padding = torch.zeros(2, 6, dtype=torch.bool)
    padding[1, 4:] = True
    with torch.no_grad():
        # boolean: ours True = may attend, torch's True = may not
        torch.testing.assert_close(attention(x, attn_mask=allowed), mha(x, x, x, need_weights=False, attn_mask=~allowed)[0],
                                   atol=1e-5, rtol=1e-5)  # fmt: skip
        # additive float offsets, alone and with a key padding mask (mixed kinds are summed as logits)
        torch.testing.assert_close(attention(x, attn_mask=bias), mha(x, x, x, need_weights=False, attn_mask=bias)[0], atol=1e-5, rtol=1e-5)
        ours = attention(x, attn_mask=bias, key_padding_mask=padding)
        padding_bias = torch.zeros(2, 6).masked_fill(padding, float("-inf"))  # same kind as attn_mask for torch
        theirs = mha(x, x, x, need_weights=False, attn_mask=bias, key_padding_mask=padding_bias)[0]
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
        # per-example, per-head masks broadcast as (B, H, N, N); with causal the masks are intersected
        per_head = allowed[None, None].expand(2, 4, 6, 6)
        torch.testing.assert_close(attention(x, attn_mask=per_head), attention(x, attn_mask=allowed), atol=1e-6, rtol=0)
        causal = attention(x, causal=True, attn_mask=allowed)
        expected = mha(x, x, x, need_weights=False, attn_mask=~(allowed & ~_causal_mask(6)))[0]
        torch.testing.assert_close(causal, expected, atol=1e-5, rtol=1e-5)


def test_attention_rejects_bad_head_count():
    with pytest.raises(ValueError, match="multiple of num_heads"):
        Attention(10, 4)
    assert Attention(8, 2, qkv_bias=False).qkv.bias is None


# --------------------------------------------------------------------------------- Mlp and Block


def test_block_is_the_pre_norm_composition():
    torch.manual_seed(1)
    block = Block(16, 4, mlp_ratio=2.0)
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    block.eval()
    assert block.mlp.fc1.out_features == 32 and isinstance(block.mlp, Mlp)
    assert block.norm1.eps == 1e-6 and block.norm2.eps == 1e-6  # timm's ViT LayerNorm eps
    mha = _reference_mha(block.attn)
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        for causal in (False, True):
            h = F.layer_norm(x, (16,), block.norm1.weight, block.norm1.bias, eps=1e-6)
            attn, _ = mha(h, h, h, need_weights=False, attn_mask=_causal_mask(5) if causal else None)
            y = x + attn
            h = F.layer_norm(y, (16,), block.norm2.weight, block.norm2.bias, eps=1e-6)
            h = F.linear(F.gelu(F.linear(h, block.mlp.fc1.weight, block.mlp.fc1.bias)), block.mlp.fc2.weight, block.mlp.fc2.bias)
            expected = y + h
            torch.testing.assert_close(block(x, causal=causal), expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="mlp_ratio"):
        Block(16, 4, mlp_ratio=0)


# ---------------------------------------------------------------------------------- PatchEmbed


def test_patch_embed_equals_explicit_patches_times_a_matrix():
    embed = PatchEmbed(image_size=8, patch_size=2, in_chans=3, dim=5)
    images = torch.randn(2, 3, 8, 8)
    # (B, C, h, p, w, p) -> (B, h, w, C, p, p): patches in row-major order, each flattened like the conv kernel
    patches = images.reshape(2, 3, 4, 2, 4, 2).permute(0, 2, 4, 1, 3, 5).reshape(2, 16, 3 * 2 * 2)
    expected = patches @ embed.proj.weight.reshape(5, -1).T + embed.proj.bias
    out = embed(images)
    assert out.shape == (2, 16, 5) and embed.num_patches == 16 and embed.grid_size == 4
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    # the token for patch (row 1, column 2) comes from pixels [2:4, 4:6]
    one = images[:, :, 2:4, 4:6].reshape(2, -1) @ embed.proj.weight.reshape(5, -1).T + embed.proj.bias
    torch.testing.assert_close(out[:, 1 * 4 + 2], one, atol=1e-5, rtol=1e-5)


def test_patch_embed_rejects_wrong_sizes():
    embed = PatchEmbed(image_size=8, patch_size=2, in_chans=1, dim=4)
    with pytest.raises(ValueError, match="8x8"):
        embed(torch.zeros(1, 1, 10, 10))
    with pytest.raises(ValueError, match="8x8"):
        embed(torch.zeros(1, 1, 8, 6))
    with pytest.raises(ValueError, match="multiple of patch_size"):
        PatchEmbed(image_size=9, patch_size=2, in_chans=1, dim=4)


def test_patch_embed_rectangular_inputs_and_patches():
    embed = PatchEmbed(image_size=(8, 4), patch_size=2, in_chans=1, dim=3)  # Audio-MAE: time x frequency
    assert embed.grid_size == (4, 2) == embed.grid_hw and embed.num_patches == 8
    assert list(embed.state_dict()) == ["proj.weight", "proj.bias"]
    x = torch.randn(2, 1, 8, 4)
    out = embed(x)
    # the token of patch (row 3, column 1) — row-major over the (4, 2) grid — comes from x[6:8, 2:4]
    one = x[:, :, 6:8, 2:4].reshape(2, -1) @ embed.proj.weight.reshape(3, -1).T + embed.proj.bias
    torch.testing.assert_close(out[:, 3 * 2 + 1], one, atol=1e-5, rtol=1e-5)
    wide = PatchEmbed(image_size=(6, 8), patch_size=(3, 2), in_chans=1, dim=3)
    assert wide.grid_size == (2, 4) and wide(torch.randn(1, 1, 6, 8)).shape == (1, 8, 3)
    with pytest.raises(ValueError, match="8x4"):
        embed(torch.zeros(1, 1, 4, 8))
    with pytest.raises(ValueError, match="multiple of patch_size"):
        PatchEmbed(image_size=(8, 5), patch_size=2, in_chans=1, dim=4)


# ------------------------------------------------------------------------------ VisionTransformer


def _tiny_vit(**kwargs) -> VisionTransformer:
    args = dict(image_size=8, patch_size=2, in_chans=1, dim=16, depth=2, num_heads=4)
    args.update(kwargs)
    return VisionTransformer(**args).eval()


def test_vision_transformer_forward_is_the_documented_composition_and_pools():
    vit = _tiny_vit()
    images = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        tokens = vit(images)
        x = vit.patch_embed(images)
        x = torch.cat([vit.cls_token.expand(3, 1, 16), x], dim=1) + vit.pos_embed
        for block in vit.blocks:
            x = block(x)
        expected = F.layer_norm(x, (16,), vit.norm.weight, vit.norm.bias, eps=1e-6)
    assert tokens.shape == (3, 1 + 16, 16)
    torch.testing.assert_close(tokens, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(vit.pool(tokens, "token"), tokens[:, 0])
    torch.testing.assert_close(vit.pool(tokens, "avg"), tokens[:, 1:].sum(dim=1) / 16)
    assert vit.pool(tokens).shape == (3, 16)
    with pytest.raises(ValueError, match="pool"):
        vit.pool(tokens, "max")
    with pytest.raises(ValueError, match="depth"):
        _tiny_vit(depth=0)
    # without a class token (PE-G) every token is a patch: 'avg' averages all 16, 'token' is refused
    headless = VisionTransformer(8, 2, 1, 16, 1, 2, class_token=False)
    with torch.no_grad():
        tokens = headless(images)
    assert tokens.shape == (3, 16, 16)
    torch.testing.assert_close(headless.pool(tokens, "avg"), tokens.sum(dim=1) / 16)
    with pytest.raises(ValueError, match="class token"):
        headless.pool(tokens, "token")


def test_vision_transformer_class_token_sees_every_patch():
    vit = _tiny_vit()
    images = torch.randn(1, 1, 8, 8)
    changed = images.clone()
    changed[..., 7, 7] += 3.0  # the last patch only
    with torch.no_grad():
        a, b = vit.pool(vit(images)), vit.pool(vit(changed))
    assert not torch.allclose(a, b, atol=1e-5)


def test_parameter_names_follow_timm():
    vit = _tiny_vit(depth=2)
    names = {name for name, _ in vit.named_parameters()}
    per_block = ["norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias",
                 "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias"]  # fmt: skip
    expected = {"cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias", "norm.weight", "norm.bias"}
    expected |= {f"blocks.{i}.{name}" for i in range(2) for name in per_block}
    assert names == expected
    shapes = dict(vit.state_dict().items())
    assert shapes["cls_token"].shape == (1, 1, 16)
    assert shapes["pos_embed"].shape == (1, 17, 16)
    assert shapes["patch_embed.proj.weight"].shape == (16, 1, 2, 2)
    assert shapes["blocks.1.attn.qkv.weight"].shape == (48, 16)
    assert shapes["blocks.0.mlp.fc1.weight"].shape == (64, 16)


def test_init_vit_weights():
    torch.manual_seed(0)
    vit = _tiny_vit(dim=64, image_size=16)
    # timm's trunc_normal_(std=0.02) (cut at ±2 absolute, so in effect N(0, 0.02²))
    assert 0.015 < vit.pos_embed.std().item() < 0.025 and abs(vit.pos_embed.mean().item()) < 0.005
    assert 0.01 < vit.cls_token.std().item() < 0.03
    block = vit.blocks[0]
    assert torch.equal(block.norm1.weight, torch.ones(64)) and torch.equal(block.norm1.bias, torch.zeros(64))
    assert torch.equal(block.attn.qkv.bias, torch.zeros(192)) and torch.equal(vit.patch_embed.proj.bias, torch.zeros(64))
    bound = (6 / (64 + 192)) ** 0.5  # Xavier-uniform bound of qkv (fan_in 64, fan_out 192)
    assert block.attn.qkv.weight.abs().max().item() <= bound
    assert block.attn.qkv.weight.abs().max().item() > 0.9 * bound
    patch_bound = (6 / (1 * 2 * 2 + 64)) ** 0.5  # the patch conv like a (64, 4) linear layer
    assert vit.patch_embed.proj.weight.abs().max().item() <= patch_bound
    assert vit.patch_embed.proj.weight.abs().max().item() > 0.8 * patch_bound
    # applied to any module: only Linear / LayerNorm / tokens are touched
    layer = nn.Linear(4, 4)
    init_vit_weights(layer)
    assert torch.equal(layer.bias, torch.zeros(4))


# ------------------------------------------------------------------------------ TextTransformer

END = 3


def _tiny_text(**kwargs) -> TextTransformer:
    args = dict(vocab_size=20, context_length=10, dim=16, depth=2, num_heads=4, end_token_id=END)
    args.update(kwargs)
    return TextTransformer(**args).eval()


def test_text_transformer_is_causal_and_pools_at_the_end_token():
    net = _tiny_text()
    tokens = torch.tensor([[2, 5, 6, 7, END, 0, 0, 0, 0, 0], [2, 8, END, 0, 0, 0, 0, 0, 0, 0]])
    with torch.no_grad():
        out = net(tokens)
        assert out.shape == (2, 16)
        after = tokens.clone()
        after[0, 5:] = torch.tensor([9, 10, 11, END, 12])
        after[1, 3:] = 13
        torch.testing.assert_close(net(after), out, atol=1e-6, rtol=1e-6)  # tokens after the end are never seen
        before = tokens.clone()
        before[0, 2] = 9  # a token before the end changes the feature
        changed = net(before)
        assert not torch.allclose(changed[0], out[0], atol=1e-4)
        torch.testing.assert_close(changed[1], out[1], atol=1e-6, rtol=1e-6)  # rows are independent
        # the feature is the final-norm output at the end position: a caption cut right after its end
        # token gives the same feature (only positions up to the end matter under the causal mask)
        torch.testing.assert_close(net(tokens[:1, :5]), out[:1], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(net(tokens[1:, :3]), out[1:], atol=1e-5, rtol=1e-5)


def test_text_transformer_pools_at_the_first_of_several_end_tokens():
    net = _tiny_text()
    tokens = torch.tensor([[2, 5, END, 6, END, 7, 0, 0, 0, 0]])
    with torch.no_grad():
        x = net.token_embedding(tokens) + net.positional_embedding[:, :10]
        for block in net.blocks:
            x = block(x, causal=True)
        hidden = net.ln_final(x)
        out = net(tokens)
    torch.testing.assert_close(out, hidden[:, 2], atol=1e-6, rtol=1e-6)
    assert not torch.allclose(out, hidden[:, 4], atol=1e-4)
    no_end = torch.tensor([[2, 5, 6, 7]])  # without an end token the first position is used
    with torch.no_grad():
        x = net.token_embedding(no_end) + net.positional_embedding[:, :4]
        for block in net.blocks:
            x = block(x, causal=True)
        torch.testing.assert_close(net(no_end), net.ln_final(x)[:, 0], atol=1e-6, rtol=1e-6)


def test_text_transformer_rejects_bad_input_and_arguments():
    net = _tiny_text()
    with pytest.raises(ValueError, match="10"):
        net(torch.zeros(1, 11, dtype=torch.long))
    with pytest.raises(ValueError):
        net(torch.zeros(10, dtype=torch.long))
    with pytest.raises(ValueError, match="end_token_id"):
        TextTransformer(vocab_size=3, context_length=4, dim=8, depth=1, num_heads=2, end_token_id=3)
    with pytest.raises(ValueError):
        TextTransformer(vocab_size=0)


def test_text_transformer_parameter_names():
    net = _tiny_text(depth=1)
    names = {name for name, _ in net.named_parameters()}
    assert {
        "token_embedding.weight",
        "positional_embedding",
        "ln_final.weight",
        "ln_final.bias",
        "blocks.0.attn.qkv.weight",
        "blocks.0.mlp.fc2.bias",
    } <= names
    assert net.positional_embedding.shape == (1, 10, 16)
    assert 0.01 < net.token_embedding.weight.std().item() < 0.03  # trunc normal, std 0.02 (not nn.Embedding's N(0, 1))
