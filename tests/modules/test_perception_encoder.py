"""Perception Encoder (modules/perception_encoder.py): PE-Core layouts, the attention-pooling head against a hand
computation, official key names of a small configuration loading and giving the official forward's output, one-line
errors on mismatches, and a default CLIP left as it was."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from litzoo.framework.checkpoints import convert_official_state_dict, official_key_maps
from litzoo.framework.errors import LitzooError
from litzoo.framework.nn.attention_pool import AttentionPool
from litzoo.framework.nn.clip import CLIP
from litzoo.modules.perception_encoder import PE_CORE_CONFIGS, load_pe_vision_weights, pe_core_clip, pe_core_kwargs

# --------------------------------------------------------------------------------------- configurations


@pytest.mark.parametrize(
    "name, width, depth, heads, mlp, embed, cls, image, patch",
    [  # core/vision_encoder/config.py, PE_VISION_CONFIG
        ("PE-Core-T16-384", 192, 12, 3, 768, 512, True, 384, 16),
        ("PE-Core-S16-384", 384, 12, 6, 1536, 512, True, 384, 16),
        ("PE-Core-B16-224", 768, 12, 12, 3072, 1024, True, 224, 16),
        ("PE-Core-L14-336", 1024, 24, 16, 4096, 1024, True, 336, 14),
        ("PE-Core-G14-448", 1536, 50, 16, 8960, 1280, False, 448, 14),
    ],
)
def test_pe_core_layouts_have_the_official_shapes(name, width, depth, heads, mlp, embed, cls, image, patch):
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        model = pe_core_clip(name)
    state = model.state_dict()
    grid = image // patch
    assert state["visual.pos_embed"].shape == (1, int(cls) + grid * grid, width)  # official: int(use_cls_token) + grid**2
    assert ("visual.cls_token" in state) is cls
    assert state["visual.patch_embed.proj.weight"].shape == (width, 3, patch, patch) and "visual.patch_embed.proj.bias" not in state
    assert state[f"visual.blocks.{depth - 1}.mlp.fc1.weight"].shape == (mlp, width) and f"visual.blocks.{depth}.norm1.weight" not in state
    assert model.visual.blocks[0].attn.num_heads == heads and model.visual.rope.head_dim == width // heads
    assert model.attn_pool.attn.num_heads == 8 and state["attn_pool.probe"].shape == (1, 1, width)
    assert state["visual_projection.weight"].shape == (embed, width) and "visual.norm_pre.weight" in state
    assert not any(".ls1." in key for key in state)  # PE-Core has no LayerScale
    assert len(PE_CORE_CONFIGS) == 5 and name in PE_CORE_CONFIGS
    with pytest.raises(ValueError, match="PE-Core-L14-336"):
        pe_core_kwargs("PE-Core-L16")


# --------------------------------------------------------------------------------------- attention pooling


def test_attention_pool_equals_a_hand_computation():
    torch.manual_seed(0)
    pool = AttentionPool(8, num_heads=2, num_probes=1, mlp_ratio=2.0)
    tokens = torch.randn(3, 5, 8)
    w, b = pool.attn.in_proj_weight, pool.attn.in_proj_bias
    q = pool.probe[0] @ w[:8].T + b[:8]  # (1, 8): one probe
    k, v = tokens @ w[8:16].T + b[8:16], tokens @ w[16:].T + b[16:]  # (3, 5, 8)
    heads = []
    for h in range(2):
        part = slice(4 * h, 4 * h + 4)
        weights = torch.softmax((q[:, part] @ k[..., part].transpose(1, 2)) / 2.0, dim=-1)  # scale 1/sqrt(4)
        heads.append(weights @ v[..., part])  # (3, 1, 4)
    attended = torch.cat(heads, dim=-1) @ pool.attn.out_proj.weight.T + pool.attn.out_proj.bias  # no residual from the probe
    normed = F.layer_norm(attended, (8,), pool.norm.weight, pool.norm.bias, 1e-5)
    expected = attended + F.gelu(normed @ pool.mlp.fc1.weight.T + pool.mlp.fc1.bias) @ pool.mlp.fc2.weight.T + pool.mlp.fc2.bias
    torch.testing.assert_close(pool(tokens), expected[:, 0], atol=1e-6, rtol=1e-6)
    assert pool(tokens, squeeze=False).shape == (3, 1, 8)
    assert AttentionPool(8, 2, num_probes=3)(tokens).shape == (3, 3, 8)
    with pytest.raises(ValueError, match="multiple of num_heads"):
        AttentionPool(10, 4)


# --------------------------------------------------------------------------------------- official key names

WIDTH, DEPTH, HEADS, PATCH, IMAGE, OUT, POOL_HEADS = 32, 2, 4, 4, 16, 24, 8


def fake_official_state(class_token: bool, layer_scale: bool = False, seed: int = 0) -> dict[str, torch.Tensor]:
    """A PE vision encoder's state dict with the official names and shapes (pe.py VisionTransformer), random values."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape: int, scale: float = 0.2) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * scale

    grid = IMAGE // PATCH
    state = {"conv1.weight": r(WIDTH, 3, PATCH, PATCH), "positional_embedding": r(int(class_token) + grid * grid, WIDTH),
             "ln_pre.weight": 1 + r(WIDTH), "ln_pre.bias": r(WIDTH), "ln_post.weight": 1 + r(WIDTH), "ln_post.bias": r(WIDTH),
             "proj": r(WIDTH, OUT), "attn_pool.probe": r(1, 1, WIDTH, scale=1.0),
             "attn_pool.attn.in_proj_weight": r(3 * WIDTH, WIDTH), "attn_pool.attn.in_proj_bias": r(3 * WIDTH),
             "attn_pool.attn.out_proj.weight": r(WIDTH, WIDTH), "attn_pool.attn.out_proj.bias": r(WIDTH),
             "attn_pool.layernorm.weight": 1 + r(WIDTH), "attn_pool.layernorm.bias": r(WIDTH),
             "attn_pool.mlp.c_fc.weight": r(4 * WIDTH, WIDTH), "attn_pool.mlp.c_fc.bias": r(4 * WIDTH),
             "attn_pool.mlp.c_proj.weight": r(WIDTH, 4 * WIDTH), "attn_pool.mlp.c_proj.bias": r(WIDTH)}  # fmt: skip
    if class_token:
        state["class_embedding"] = r(WIDTH)
    for i in range(DEPTH):
        p = f"transformer.resblocks.{i}."
        state |= {p + "ln_1.weight": 1 + r(WIDTH), p + "ln_1.bias": r(WIDTH), p + "ln_2.weight": 1 + r(WIDTH), p + "ln_2.bias": r(WIDTH),
                  p + "attn.in_proj_weight": r(3 * WIDTH, WIDTH), p + "attn.in_proj_bias": r(3 * WIDTH),
                  p + "attn.out_proj.weight": r(WIDTH, WIDTH), p + "attn.out_proj.bias": r(WIDTH),
                  p + "mlp.c_fc.weight": r(4 * WIDTH, WIDTH), p + "mlp.c_fc.bias": r(4 * WIDTH),
                  p + "mlp.c_proj.weight": r(WIDTH, 4 * WIDTH), p + "mlp.c_proj.bias": r(WIDTH)}  # fmt: skip
        if layer_scale:
            state |= {p + "ls_1.gamma": 1 + r(WIDTH), p + "ls_2.gamma": 1 + r(WIDTH)}
    return state


def official_forward(sd: dict[str, torch.Tensor], x: torch.Tensor, class_token: bool, layer_scale: bool = False) -> torch.Tensor:
    """Transcription of pe.py VisionTransformer.forward (use_rope2d, pool_type='attn', ln_pre / ln_post, eps 1e-5)."""
    batch, _, h, w = x.shape
    gh, gw = h // PATCH, w // PATCH
    x = F.conv2d(x, sd["conv1.weight"], stride=PATCH).permute(0, 2, 3, 1).reshape(batch, -1, WIDTH)
    if class_token:
        x = torch.cat([sd["class_embedding"].view(1, 1, -1).expand(batch, -1, -1), x], dim=1)
    pos = sd["positional_embedding"]
    grid = IMAGE // PATCH
    if (gh, gw) != (grid, grid):  # _sample_abs_posemb
        cls_pos, pos = (pos[:1], pos[1:]) if class_token else (None, pos)
        pos = pos.reshape(1, grid, grid, -1).permute(0, 3, 1, 2)
        pos = F.interpolate(pos, size=(gh, gw), mode="bilinear", align_corners=False).permute(0, 2, 3, 1).reshape(-1, WIDTH)
        pos = torch.cat([cls_pos, pos], dim=0) if class_token else pos
    x = x + pos[None]
    # Rope2D.update_grid: RotaryEmbedding(head_dim // 2), 'lang' frequencies
    dim = WIDTH // HEADS // 2
    freqs = 1.0 / (10000 ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim))
    off = 1 if class_token else 0
    fy = (torch.outer(torch.arange(gh) + off, freqs).repeat_interleave(2, -1))[:, None].expand(gh, gw, -1)
    fx = (torch.outer(torch.arange(gw) + off, freqs).repeat_interleave(2, -1))[None, :].expand(gh, gw, -1)
    freq = torch.cat([fx, fy], dim=-1).reshape(gh * gw, -1)
    if class_token:
        freq = torch.cat([torch.zeros(1, freq.shape[-1]), freq])

    def rotate(t):
        pairs = t.unflatten(-1, (-1, 2))
        return t * freq.cos() + torch.stack((-pairs[..., 1], pairs[..., 0]), -1).flatten(-2) * freq.sin()

    def ln(t, name):
        return F.layer_norm(t, (WIDTH,), sd[name + ".weight"], sd[name + ".bias"], 1e-5)

    x = ln(x, "ln_pre")
    for i in range(DEPTH):
        p = f"transformer.resblocks.{i}."
        y = F.linear(ln(x, p + "ln_1"), sd[p + "attn.in_proj_weight"], sd[p + "attn.in_proj_bias"])
        q, k, v = (t.reshape(batch, -1, HEADS, WIDTH // HEADS).transpose(1, 2) for t in y.unflatten(-1, (3, WIDTH)).unbind(-2))
        y = F.scaled_dot_product_attention(rotate(q), rotate(k), v, scale=(WIDTH // HEADS) ** -0.5).transpose(1, 2).reshape(batch, -1, WIDTH)
        y = F.linear(y, sd[p + "attn.out_proj.weight"], sd[p + "attn.out_proj.bias"])
        x = x + (y * sd[p + "ls_1.gamma"] if layer_scale else y)
        y = F.linear(F.gelu(F.linear(ln(x, p + "ln_2"), sd[p + "mlp.c_fc.weight"], sd[p + "mlp.c_fc.bias"])), sd[p + "mlp.c_proj.weight"], sd[p + "mlp.c_proj.bias"])
        x = x + (y * sd[p + "ls_2.gamma"] if layer_scale else y)
    x = ln(x, "ln_post")
    # AttentionPooling: nn.MultiheadAttention(probe, x, x), then x + mlp(layernorm(x))
    mha = torch.nn.MultiheadAttention(WIDTH, POOL_HEADS, batch_first=True)
    mha.load_state_dict({k[len("attn_pool.attn.") :]: v for k, v in sd.items() if k.startswith("attn_pool.attn.")})
    pooled = mha(sd["attn_pool.probe"].repeat(batch, 1, 1), x, x, need_weights=False)[0]
    normed = F.layer_norm(pooled, (WIDTH,), sd["attn_pool.layernorm.weight"], sd["attn_pool.layernorm.bias"], 1e-5)
    hidden = F.gelu(F.linear(normed, sd["attn_pool.mlp.c_fc.weight"], sd["attn_pool.mlp.c_fc.bias"]))
    pooled = pooled + F.linear(hidden, sd["attn_pool.mlp.c_proj.weight"], sd["attn_pool.mlp.c_proj.bias"])
    return pooled.squeeze(1) @ sd["proj"]


def small_pe(class_token: bool, layer_scale: bool = False) -> CLIP:
    return pe_core_clip(
        "PE-Core-T16-384", image_size=IMAGE, patch_size=PATCH, vision_width=WIDTH, vision_depth=DEPTH, vision_heads=HEADS,
        embed_dim=OUT, vision_class_token=class_token, vision_layer_scale_init=0.1 if layer_scale else None,
        vocab_size=64, end_token_id=63, context_length=8, text_width=16, text_depth=1, text_heads=2,
    )  # fmt: skip


@pytest.mark.parametrize("class_token, layer_scale", [(True, False), (False, False), (True, True)])
def test_official_key_names_load_and_give_the_official_forward(tmp_path: Path, class_token: bool, layer_scale: bool):
    official = fake_official_state(class_token, layer_scale)
    path = tmp_path / "PE-Core-small.pt"
    torch.save(official, path)
    torch.manual_seed(1)
    model = small_pe(class_token, layer_scale).eval()
    text_before = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("text")}
    load_pe_vision_weights(model, path)
    g = torch.Generator().manual_seed(2)
    for side in (IMAGE, 24, 8):  # the stored grid, a larger one and a smaller one (positions resampled, RoPE follows)
        images = torch.randn(2, 3, side, side, generator=g)
        with torch.no_grad():
            ours = model.encode_image(images, normalize=False)
        torch.testing.assert_close(ours, official_forward(official, images, class_token, layer_scale), atol=2e-5, rtol=2e-5)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in text_before.items())  # the text tower is untouched
    # negative control: a transcription without RoPE does not match
    with torch.no_grad():
        plain = small_pe(class_token, layer_scale).eval()
        plain.visual.rope = None
        load_pe_vision_weights(plain, path)
        assert not torch.allclose(plain.encode_image(images, normalize=False), ours, atol=1e-3)


def test_a_whole_pe_clip_checkpoint_loads_its_vision_tower(tmp_path: Path):
    official = fake_official_state(True)
    whole = {f"visual.{k}": v for k, v in official.items()} | {"token_embedding.weight": torch.zeros(64, 16), "logit_scale": torch.tensor(2.0)}
    path = tmp_path / "PE-Core-whole.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in whole.items()}}, path)
    model = small_pe(True).eval()
    with pytest.warns(UserWarning, match="text-tower keys"):
        load_pe_vision_weights(model, path)
    images = torch.randn(2, 3, IMAGE, IMAGE)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(images, normalize=False), official_forward(official, images, True), atol=2e-5, rtol=2e-5)


def test_mismatches_are_one_line_errors_naming_the_file(tmp_path: Path):
    assert "perception_encoder" in official_key_maps()
    assert "visual.cls_token" not in convert_official_state_dict("perception_encoder", fake_official_state(False))
    # a G-style file (no class token) into a layout with one
    path = tmp_path / "pe_no_cls.pt"
    torch.save(fake_official_state(False), path)
    with pytest.raises(LitzooError, match=r"pe_no_cls\.pt.*missing: visual\.cls_token") as error:
        load_pe_vision_weights(small_pe(True), path)
    assert "\n" not in str(error.value)
    # other shapes: a wider file
    state = fake_official_state(True)
    state["ln_post.weight"] = torch.ones(WIDTH + 1)
    torch.save(state, path)
    with pytest.raises(LitzooError, match=r"other shapes: visual\.norm\.weight"):
        load_pe_vision_weights(small_pe(True), path)
    # not a PE file, and a key the map does not know
    torch.save({"patch_embed.proj.weight": torch.zeros(1)}, path)
    with pytest.raises(LitzooError, match=r"pe_no_cls\.pt.*not a PE vision encoder"):
        load_pe_vision_weights(small_pe(True), path)
    torch.save(fake_official_state(True) | {"transformer.extra": torch.zeros(1)} | {"mask_token": torch.zeros(1)}, path)
    with pytest.raises(LitzooError, match="unknown key"):
        load_pe_vision_weights(small_pe(True), path)


# --------------------------------------------------------------------------------------- defaults unchanged


def test_default_clip_is_unchanged():
    """A default CLIP has exactly the plain ViT's parameters, draws the same initial values as before the PE options
    (numbers recorded from the code before them), and computes the plain CLIP forward."""
    torch.manual_seed(0)
    model = CLIP(vocab_size=32, embed_dim=16, image_size=8, patch_size=2, in_chans=1, vision_width=16, vision_depth=2, vision_heads=2,
                 context_length=6, text_width=16, text_depth=1, text_heads=2).eval()  # fmt: skip
    state = model.state_dict()
    assert model.attn_pool is None and model.visual.rope is None and model.visual.norm_pre is None
    assert not any(k.startswith("attn_pool") or "norm_pre" in k or ".ls1" in k for k in state) and "visual.patch_embed.proj.bias" in state
    assert model.visual.norm.eps == 1e-6 and model.visual.blocks[0].norm1.eps == 1e-6
    checksum = sum(float(v.double().abs().sum()) for v in state.values())
    assert checksum == pytest.approx(RECORDED_CHECKSUM, rel=1e-9)
    images = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = model.encode_image(images, normalize=False)
        v = model.visual  # the plain ViT CLIP forward, written out
        x = torch.cat([v.cls_token.expand(3, -1, -1), v.patch_embed.proj(images).flatten(2).transpose(1, 2)], dim=1) + v.pos_embed
        for block in v.blocks:
            x = x + block.attn(block.norm1(x))
            x = x + block.mlp(block.norm2(x))
        expected = model.visual_projection(v.norm(x)[:, 0])
    assert torch.equal(ours, expected)
    assert float(ours.double().sum()) == pytest.approx(RECORDED_OUTPUT_SUM, rel=1e-6, abs=1e-6)
    with pytest.raises(ValueError, match="class token"):
        CLIP(pool_type="token", vision_class_token=False)
    with pytest.raises(ValueError, match="pool_type"):
        CLIP(pool_type="avg")


# recorded with framework/ as of commit 69935f9 (before the PE options), same seed and model
RECORDED_CHECKSUM = 1624.8489311071917
RECORDED_OUTPUT_SUM = -8.485738578718156
