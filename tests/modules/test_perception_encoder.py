"""Perception Encoder (modules/perception_encoder.py): PE-Core layouts, the attention-pooling head against a hand
computation, official key names of a small configuration (vision encoder, and a whole CLIP with its text tower) loading
and giving the official forward's output, one-line errors on mismatches, and a default CLIP / text tower left as they
were."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from litzoo.framework.checkpoints import convert_official_state_dict, official_key_maps
from litzoo.framework.errors import LitzooError
from litzoo.framework.nn.attention_pool import AttentionPool
from litzoo.framework.nn.clip import CLIP
from litzoo.framework.nn.text import TextTransformer
from litzoo.modules.perception_encoder import PE_CORE_CONFIGS, load_pe_clip_weights, load_pe_vision_weights, pe_core_clip, pe_core_kwargs

# --------------------------------------------------------------------------------------- configurations


@pytest.mark.parametrize(
    "name, width, depth, heads, mlp, embed, cls, image, patch, text",
    [  # core/vision_encoder/config.py, PE_VISION_CONFIG and PE_TEXT_CONFIG (context, width, heads, layers)
        ("PE-Core-T16-384", 192, 12, 3, 768, 512, True, 384, 16, (32, 512, 8, 12)),
        ("PE-Core-S16-384", 384, 12, 6, 1536, 512, True, 384, 16, (32, 512, 8, 12)),
        ("PE-Core-B16-224", 768, 12, 12, 3072, 1024, True, 224, 16, (32, 1024, 16, 24)),
        ("PE-Core-L14-336", 1024, 24, 16, 4096, 1024, True, 336, 14, (32, 1024, 16, 24)),
        ("PE-Core-G14-448", 1536, 50, 16, 8960, 1280, False, 448, 14, (72, 1280, 20, 24)),
    ],
)
def test_pe_core_layouts_have_the_official_shapes(name, width, depth, heads, mlp, embed, cls, image, patch, text):
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
    # the text tower (pe.py TextTransformer): 49,408 BPE tokens, MLP 4x, eps 1e-5 everywhere, argmax pooling, (width, output_dim) projection
    context, t_width, t_heads, t_layers = text
    assert state["text.token_embedding.weight"].shape == (49408, t_width) and state["text.positional_embedding"].shape == (1, context, t_width)
    assert f"text.blocks.{t_layers - 1}.norm1.weight" in state and f"text.blocks.{t_layers}.norm1.weight" not in state
    assert model.text.blocks[0].attn.num_heads == t_heads and state["text.blocks.0.mlp.fc1.weight"].shape == (4 * t_width, t_width)
    assert state["text_projection.weight"].shape == (embed, t_width) and not any(k.startswith("text.") and ".ls1." in k for k in state)
    assert {m.eps for m in model.text.modules() if isinstance(m, torch.nn.LayerNorm)} == {1e-5}
    assert model.text.pool == "argmax" and model.text.end_token_id == 49407
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


# the text tower of the small configuration: OpenAI BPE's layout in miniature (<end_of_text> is the largest id)
VOCAB, CONTEXT, T_WIDTH, T_DEPTH, T_HEADS, SOT, EOT = 64, 8, 16, 2, 2, 62, 63


def small_pe(class_token: bool, layer_scale: bool = False, **overrides) -> CLIP:
    return pe_core_clip(
        "PE-Core-T16-384", image_size=IMAGE, patch_size=PATCH, vision_width=WIDTH, vision_depth=DEPTH, vision_heads=HEADS,
        embed_dim=OUT, vision_class_token=class_token, vision_layer_scale_init=0.1 if layer_scale else None,
        vocab_size=VOCAB, end_token_id=EOT, context_length=CONTEXT, text_width=T_WIDTH, text_depth=T_DEPTH, text_heads=T_HEADS,
        **overrides,
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
    whole = {f"visual.{k}": v for k, v in official.items()} | {"token_embedding.weight": torch.zeros(VOCAB, T_WIDTH), "logit_scale": torch.tensor(2.0)}
    path = tmp_path / "PE-Core-whole.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in whole.items()}}, path)
    model = small_pe(True).eval()
    text_before = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("text") or k == "logit_scale"}
    with pytest.warns(UserWarning, match="2 text-tower keys .*left out"):
        load_pe_vision_weights(model, path)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in text_before.items())  # the text side keeps its values
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


# --------------------------------------------------------------------------------------- a whole PE-Core CLIP (text tower)


def fake_official_clip(seed: int = 3) -> dict[str, torch.Tensor]:
    """A whole PE CLIP's state dict (pe.py CLIP(TextTransformer)): ``visual.*`` and the text tower's official names and
    shapes at the top level, random values. Embeddings are small so that the LayerNorm eps (1e-5 vs 1e-6) shows."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape: int, scale: float = 0.2) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * scale

    state = {f"visual.{k}": v for k, v in fake_official_state(True).items()}
    state |= {"token_embedding.weight": r(VOCAB, T_WIDTH, scale=0.01), "positional_embedding": r(CONTEXT, T_WIDTH, scale=0.005),
              "ln_final.weight": 1 + r(T_WIDTH), "ln_final.bias": r(T_WIDTH), "text_projection": r(T_WIDTH, OUT),
              "logit_scale": torch.tensor(2.5)}  # fmt: skip
    for i in range(T_DEPTH):
        p = f"transformer.resblocks.{i}."
        state |= {p + "ln_1.weight": 1 + r(T_WIDTH), p + "ln_1.bias": r(T_WIDTH, scale=0.01), p + "ln_2.weight": 1 + r(T_WIDTH),
                  p + "ln_2.bias": r(T_WIDTH), p + "attn.in_proj_weight": r(3 * T_WIDTH, T_WIDTH), p + "attn.in_proj_bias": r(3 * T_WIDTH),
                  p + "attn.out_proj.weight": r(T_WIDTH, T_WIDTH, scale=0.02), p + "attn.out_proj.bias": r(T_WIDTH, scale=0.002),
                  p + "mlp.c_fc.weight": r(4 * T_WIDTH, T_WIDTH), p + "mlp.c_fc.bias": r(4 * T_WIDTH),
                  p + "mlp.c_proj.weight": r(T_WIDTH, 4 * T_WIDTH, scale=0.02), p + "mlp.c_proj.bias": r(T_WIDTH, scale=0.002)}  # fmt: skip
    return state


def official_text_forward(sd: dict[str, torch.Tensor], text: torch.Tensor) -> torch.Tensor:
    """Transcription of pe.py TextTransformer.forward (pool_type='argmax', proj_bias=False, LayerNorm eps 1e-5): the
    blocks are nn.MultiheadAttention under the additive causal mask (build_causal_mask: -inf above the diagonal)."""
    seq_len = text.shape[1]
    x = F.embedding(text, sd["token_embedding.weight"]) + sd["positional_embedding"][:seq_len]
    mask = torch.full((CONTEXT, CONTEXT), float("-inf")).triu_(1)[:seq_len, :seq_len]

    def ln(t, name):
        return F.layer_norm(t, (T_WIDTH,), sd[name + ".weight"], sd[name + ".bias"], 1e-5)

    for i in range(T_DEPTH):
        p = f"transformer.resblocks.{i}."
        mha = torch.nn.MultiheadAttention(T_WIDTH, T_HEADS, batch_first=True)
        mha.load_state_dict({k[len(p + "attn.") :]: v for k, v in sd.items() if k.startswith(p + "attn.")})
        y = ln(x, p + "ln_1")
        x = x + mha(y, y, y, attn_mask=mask, need_weights=False)[0]
        hidden = F.gelu(F.linear(ln(x, p + "ln_2"), sd[p + "mlp.c_fc.weight"], sd[p + "mlp.c_fc.bias"]))
        x = x + F.linear(hidden, sd[p + "mlp.c_proj.weight"], sd[p + "mlp.c_proj.bias"])
    x = ln(x, "ln_final")
    pooled = x[torch.arange(x.shape[0]), text.argmax(dim=-1)]  # text_global_pool: "eot_token is the highest number"
    return pooled @ sd["text_projection"]


def official_clip_logits(sd: dict[str, torch.Tensor], images: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """pe.py CLIP.forward (normalised features, logit_scale.exp()) → logits per image, as the CLIP loss uses them."""
    vision = {k[len("visual.") :]: v for k, v in sd.items() if k.startswith("visual.")}
    image_features = F.normalize(official_forward(vision, images, True), dim=-1)
    text_features = F.normalize(official_text_forward(sd, text), dim=-1)
    return sd["logit_scale"].exp() * image_features @ text_features.T


# captions as PE's tokenizer writes them: <start> ids <end> 0-padding; row 1 has two end tokens (pooled at the first),
# row 2 has neither <start> nor <end> (PE pools at its largest id, 61 at position 1, not at position 0; a row that starts
# with <start>, the second-largest id, would pool at 0 either way)
CAPTIONS = torch.tensor([[SOT, 5, 17, 40, EOT, 0, 0, 0], [SOT, 9, EOT, 12, EOT, 0, 0, 0], [3, 61, 8, 30, 22, 1, 2, 5], [SOT, EOT, 0, 0, 0, 0, 0, 0]])


def test_a_whole_pe_clip_loads_and_gives_the_official_text_features_and_logits(tmp_path: Path):
    official = fake_official_clip()
    path = tmp_path / "PE-Core-whole.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in official.items()}}, path)  # as PE's load_ckpt accepts it
    torch.manual_seed(4)
    model = load_pe_clip_weights(small_pe(True).eval(), path)
    assert model.logit_scale.item() == 2.5
    images = torch.randn(CAPTIONS.shape[0], 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ours = model.encode_text(CAPTIONS, normalize=False)
        expected = official_text_forward(official, CAPTIONS)
        torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model.encode_text(CAPTIONS[:, :5], normalize=False)[:2], official_text_forward(official, CAPTIONS[:2, :5]))
        image_features, text_features, scale = model(images, CAPTIONS)
        torch.testing.assert_close(scale * image_features @ text_features.T, official_clip_logits(official, images, CAPTIONS), atol=1e-4, rtol=1e-5)
    # negative controls: pooling at the first end token differs on the truncated row only; eps 1e-6 differs everywhere
    for overrides, rows in (({"text_pool": "end_token"}, [2]), ({"text_norm_eps": 1e-6}, [0, 1, 2, 3])):
        other = small_pe(True, **overrides).eval()
        with pytest.warns(UserWarning, match="not laid out as PE's"):
            load_pe_clip_weights(other, path)
        with torch.no_grad():
            theirs = other.encode_text(CAPTIONS, normalize=False)
        for row in range(CAPTIONS.shape[0]):
            assert torch.allclose(theirs[row], expected[row], atol=1e-5, rtol=1e-5) is (row not in rows), (overrides, row)
    # the generic loader takes the same file through the registered key map
    from litzoo.framework.checkpoints import load_official_weights

    generic = load_official_weights(small_pe(True).eval(), "perception_encoder", path)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in generic.state_dict().items())


def test_whole_pe_clip_mismatches_are_one_line_errors(tmp_path: Path):
    path = tmp_path / "pe_clip.pt"

    def refused(state: dict[str, torch.Tensor], match: str) -> None:
        torch.save(state, path)
        with pytest.raises(LitzooError, match=match) as error:
            load_pe_clip_weights(small_pe(True), path)
        assert "\n" not in str(error.value) and "pe_clip.pt" in str(error.value)

    official = fake_official_clip()
    refused({k: v for k, v in official.items() if k != "ln_final.bias"}, r"missing: text\.ln_final\.bias")
    refused({k: v for k, v in official.items() if k != "transformer.resblocks.1.attn.in_proj_weight"}, r"missing: text\.blocks\.1\.attn\.qkv\.weight")
    refused({k: v for k, v in official.items() if k != "logit_scale"}, "missing: logit_scale")
    refused(official | {"text_projection": torch.zeros(T_WIDTH, OUT + 1)}, r"other shapes: text_projection\.weight")
    refused(official | {"positional_embedding": torch.zeros(CONTEXT + 2, T_WIDTH)}, r"other shapes: text\.positional_embedding")
    refused(official | {"transformer.resblocks.2.ln_1.weight": torch.ones(T_WIDTH)}, r"unexpected: text\.blocks\.2\.norm1\.weight")
    refused(official | {"logit_bias": torch.tensor([-10.0])}, r"'logit_bias'.*no logit bias")
    refused(official | {"text_projection.bias": torch.zeros(OUT)}, r"unknown key 'text_projection\.bias'")
    refused(official | {"attn_pool.probe": torch.zeros(1, 1, T_WIDTH)}, r"unknown key 'attn_pool\.probe'")
    refused(fake_official_state(True), r"vision encoder only.*load_pe_vision_weights")
    # the causal mask, were a file to hold it, is skipped (litzoo builds it)
    torch.save(official | {"attn_mask": torch.full((CONTEXT, CONTEXT), float("-inf")).triu(1)}, path)
    load_pe_clip_weights(small_pe(True), path)


# --------------------------------------------------------------------------------------- defaults unchanged


def test_default_text_transformer_is_unchanged():
    """A default TextTransformer draws the same initial values and computes the same features as before the PE options
    (recorded from framework/nn/text.py at commit HEAD before them: blocks eps 1e-6, ln_final eps 1e-5, first end token)."""
    torch.manual_seed(0)
    model = TextTransformer(vocab_size=20, context_length=6, dim=16, depth=2, num_heads=2, end_token_id=19).eval()
    assert model.pool == "end_token" and model.blocks[0].norm1.eps == 1e-6 and model.ln_final.eps == 1e-5
    checksum = sum(float(v.double().abs().sum()) for v in model.state_dict().values())
    assert checksum == pytest.approx(997.5501245493579, rel=1e-9)
    tokens = torch.tensor([[18, 5, 7, 19, 0, 0], [18, 3, 19, 4, 19, 0], [18, 11, 12, 13, 14, 15]])  # row 2 has no end token
    with torch.no_grad():
        ours = model(tokens)
        x = model.token_embedding(tokens) + model.positional_embedding  # the plain causal tower, written out
        for block in model.blocks:
            x = block(x, causal=True)
        x = F.layer_norm(x, (16,), model.ln_final.weight, model.ln_final.bias, 1e-5)
    assert torch.equal(ours, x[torch.arange(3), torch.tensor([3, 2, 0])])  # first end token; position 0 when absent
    assert float(ours.double().abs().sum()) == pytest.approx(38.70190544612706, rel=1e-6)
    with pytest.raises(ValueError, match="pool"):
        TextTransformer(vocab_size=20, pool="mean")
    with pytest.raises(ValueError, match="norm_eps"):
        TextTransformer(vocab_size=20, norm_eps=0.0)


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
