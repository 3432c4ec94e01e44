"""DINOv2's backbone, DINO head and official key map.

Files are written in the official layout (the keys and shapes of ``dinov2_vits14_pretrain.pth``, listed
here by hand, at a tiny width) and compared with an independent functional transcription of the
official forward (``dinov2/models/vision_transformer.py``: prepare_tokens_with_masks,
interpolate_pos_encoding, Block, forward_features).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from litzoo.framework.checkpoints import convert_official_state_dict, official_key_maps
from litzoo.framework.errors import LitzooError
from litzoo.framework.nn.pos_embed import interpolate_pos_embed
from litzoo.modules.dinov2 import (
    DINOHead,
    DinoVisionTransformer,
    dinov2_layout,
    load_official_dinov2,
    vit_base,
    vit_giant2,
    vit_large,
    vit_small,
)

DIM, HEADS, PATCH = 32, 2, 14


def _official_layout(depth: int = 2, grid: int = 4, registers: int = 0, swiglu: bool = False, dim: int = DIM) -> dict[str, tuple[int, ...]]:
    """Keys and shapes of a released DINOv2 backbone (``dinov2_vits14[_reg4]``; ``vitg14`` with SwiGLU), in file order."""
    layout: dict[str, tuple[int, ...]] = {"cls_token": (1, 1, dim), "pos_embed": (1, 1 + grid * grid, dim)}
    if registers:
        layout["register_tokens"] = (1, registers, dim)
    layout |= {"mask_token": (1, dim), "patch_embed.proj.weight": (dim, 3, PATCH, PATCH), "patch_embed.proj.bias": (dim,)}
    hidden = (int(4 * dim * 2 / 3) + 7) // 8 * 8
    for i in range(depth):
        b = f"blocks.{i}."
        layout |= {b + "norm1.weight": (dim,), b + "norm1.bias": (dim,), b + "attn.qkv.weight": (3 * dim, dim), b + "attn.qkv.bias": (3 * dim,)}
        layout |= {b + "attn.proj.weight": (dim, dim), b + "attn.proj.bias": (dim,), b + "ls1.gamma": (dim,)}
        layout |= {b + "norm2.weight": (dim,), b + "norm2.bias": (dim,)}
        if swiglu:
            layout |= {b + "mlp.w12.weight": (2 * hidden, dim), b + "mlp.w12.bias": (2 * hidden,), b + "mlp.w3.weight": (dim, hidden), b + "mlp.w3.bias": (dim,)}
        else:
            layout |= {b + "mlp.fc1.weight": (4 * dim, dim), b + "mlp.fc1.bias": (4 * dim,), b + "mlp.fc2.weight": (dim, 4 * dim), b + "mlp.fc2.bias": (dim,)}
        layout[b + "ls2.gamma"] = (dim,)
    return layout | {"norm.weight": (dim,), "norm.bias": (dim,)}


def _official_state(seed: int = 0, **kwargs) -> dict[str, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in _official_layout(**kwargs).items():
        value = torch.randn(shape, generator=generator)
        if key.endswith(("norm1.weight", "norm2.weight", "norm.weight")):
            value = 1 + 0.1 * value
        elif key.endswith("gamma"):
            value = 0.5 + 0.1 * value
        elif key.startswith("blocks."):
            value = value * 0.15
        elif key == "patch_embed.proj.weight":
            value = value * 0.05
        state[key] = value
    return state


def _reference_forward(sd: dict[str, Tensor], images: Tensor, masks: Tensor | None = None, heads: int = HEADS, offset: float = 0.1,
                       antialias: bool = False) -> tuple[Tensor, Tensor]:
    """The official forward, transcribed with functional ops: ``(x_norm, x_prenorm)``."""
    batch, _, w, h = images.shape  # the official names: w = rows, h = columns
    patch = sd["patch_embed.proj.weight"].shape[-1]
    dim = sd["cls_token"].shape[-1]
    x = F.conv2d(images, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=patch).flatten(2).transpose(1, 2)
    if masks is not None:
        x = torch.where(masks.unsqueeze(-1), sd["mask_token"].unsqueeze(0), x)
    x = torch.cat((sd["cls_token"].expand(batch, -1, -1), x), dim=1)
    pos = sd["pos_embed"]
    npatch, n = x.shape[1] - 1, pos.shape[1] - 1
    if npatch == n and w == h:
        x = x + pos
    else:
        m = int(math.sqrt(n))
        w0, h0 = w // patch, h // patch
        kwargs = {"scale_factor": (float(w0 + offset) / m, float(h0 + offset) / m)} if offset else {"size": (w0, h0)}
        grid = F.interpolate(pos[:, 1:].reshape(1, m, m, dim).permute(0, 3, 1, 2), mode="bicubic", antialias=antialias, **kwargs)
        x = x + torch.cat((pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, -1, dim)), dim=1)
    if "register_tokens" in sd:
        x = torch.cat((x[:, :1], sd["register_tokens"].expand(batch, -1, -1), x[:, 1:]), dim=1)
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    for i in range(depth):
        def g(name: str, i: int = i) -> Tensor:
            return sd[f"blocks.{i}.{name}"]

        tokens = x.shape[1]
        y = F.layer_norm(x, (dim,), g("norm1.weight"), g("norm1.bias"), eps=1e-6)
        q, k, v = F.linear(y, g("attn.qkv.weight"), g("attn.qkv.bias")).reshape(batch, tokens, 3, heads, dim // heads).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        attn = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(dim // heads), dim=-1) @ v
        x = x + g("ls1.gamma") * F.linear(attn.transpose(1, 2).reshape(batch, tokens, dim), g("attn.proj.weight"), g("attn.proj.bias"))
        y = F.layer_norm(x, (dim,), g("norm2.weight"), g("norm2.bias"), eps=1e-6)
        if f"blocks.{i}.mlp.w12.weight" in sd:
            a, b = F.linear(y, g("mlp.w12.weight"), g("mlp.w12.bias")).chunk(2, dim=-1)
            y = F.linear(F.silu(a) * b, g("mlp.w3.weight"), g("mlp.w3.bias"))
        else:
            y = F.linear(F.gelu(F.linear(y, g("mlp.fc1.weight"), g("mlp.fc1.bias"))), g("mlp.fc2.weight"), g("mlp.fc2.bias"))
        x = x + g("ls2.gamma") * y
    return F.layer_norm(x, (dim,), sd["norm.weight"], sd["norm.bias"], eps=1e-6), x


def _tiny(**kwargs) -> DinoVisionTransformer:
    args = {"image_size": 4 * PATCH, "patch_size": PATCH, "dim": DIM, "depth": 2, "num_heads": HEADS, "layer_scale_init": 1.0}
    return DinoVisionTransformer(**(args | kwargs))


# ---------------------------------------------------------------------------------------- the backbone


@pytest.mark.parametrize("registers", [0, 4])
def test_parameter_names_and_shapes_are_the_official_ones(registers):
    model = _tiny(num_register_tokens=registers)
    expected = _official_layout(registers=registers)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == expected
    giant = _tiny(ffn_layer="swiglu")
    assert {k: tuple(v.shape) for k, v in giant.state_dict().items()} == _official_layout(swiglu=True)


@pytest.mark.parametrize("registers", [0, 4])
def test_official_file_loads_and_equals_the_official_forward(tmp_path, registers):
    state = _official_state(registers=registers)
    path = tmp_path / ("dinov2_vits14_reg4_pretrain.pth" if registers else "dinov2_vits14_pretrain.pth")
    torch.save(state, path)
    model = load_official_dinov2(path, num_heads=HEADS).eval()
    assert model.num_register_tokens == registers
    # the hub's resampling: offset 0.1, or offset 0 with antialias for the register variants
    offset, antialias = (0.0, True) if registers else (0.1, False)
    assert (model.interpolate_offset, model.interpolate_antialias) == (offset, antialias)
    images = torch.randn(2, 3, 3 * PATCH, 5 * PATCH)  # another grid than the stored 4 x 4: positions resampled
    masks = torch.rand(2, 15) < 0.4
    with torch.no_grad():
        for m in (None, masks):
            out = model.forward_features(images, m)
            x_norm, x_prenorm = _reference_forward(state, images, m, offset=offset, antialias=antialias)
            torch.testing.assert_close(out["x_prenorm"], x_prenorm, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(out["x_norm_clstoken"], x_norm[:, 0], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(out["x_norm_regtokens"], x_norm[:, 1 : 1 + registers], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(out["x_norm_patchtokens"], x_norm[:, 1 + registers :], atol=1e-5, rtol=1e-5)
            assert out["masks"] is m
        same_grid = torch.randn(1, 3, 4 * PATCH, 4 * PATCH)
        torch.testing.assert_close(model(same_grid), _reference_forward(state, same_grid, offset=offset, antialias=antialias)[0][:, 0],
                                   atol=1e-5, rtol=1e-5)


def test_a_model_written_in_the_official_layout_loads_back_identically(tmp_path):
    torch.manual_seed(0)
    writer = _tiny(num_register_tokens=4, interpolate_offset=0.0, interpolate_antialias=True).eval()
    with torch.no_grad():
        for p in writer.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    torch.save(writer.state_dict(), tmp_path / "dinov2_vits14_reg4_pretrain.pth")
    loaded = load_official_dinov2(tmp_path / "dinov2_vits14_reg4_pretrain.pth", num_heads=HEADS).eval()
    images = torch.randn(2, 3, 2 * PATCH, 3 * PATCH)
    with torch.no_grad():
        assert torch.equal(loaded(images), writer(images))


def test_swiglu_giant_layout_loads_and_equals_the_official_forward(tmp_path):
    state = _official_state(swiglu=True, depth=1)
    torch.save(state, tmp_path / "dinov2_vitg14_pretrain.pth")
    model = load_official_dinov2(tmp_path / "dinov2_vitg14_pretrain.pth", num_heads=HEADS).eval()
    images = torch.randn(1, 3, 2 * PATCH, 2 * PATCH)
    with torch.no_grad():
        torch.testing.assert_close(model(images), _reference_forward(state, images)[0][:, 0], atol=1e-5, rtol=1e-5)


def test_training_checkpoints_block_chunks_and_wrappers(tmp_path):
    bare = _official_state(depth=2)
    # FSDP block chunks (block_chunks=2, depth 2): chunk 0 holds block 0, chunk 1 holds Identity + block 1
    chunked = {k.replace("blocks.0.", "blocks.0.0.").replace("blocks.1.", "blocks.1.1."): v for k, v in bare.items()}
    head = {"dino_head.mlp.0.weight": torch.randn(8, DIM), "dino_head.last_layer.weight_g": torch.ones(16, 1)}
    student = {k: v + 1 for k, v in chunked.items()}
    model_ckpt = {"model": {f"teacher.backbone.{k}": v for k, v in chunked.items()}
                  | {f"student.backbone.{k}": v for k, v in student.items()}
                  | {f"teacher.{k}": v for k, v in head.items()}, "iteration": torch.tensor(5)}
    torch.save(model_ckpt, tmp_path / "model_0000099.rank_0.pth")
    torch.save({"teacher": {f"backbone.{k}": v for k, v in bare.items()} | head}, tmp_path / "teacher_checkpoint.pth")
    torch.save(bare, tmp_path / "bare.pth")
    images = torch.randn(1, 3, 4 * PATCH, 4 * PATCH)
    reference = load_official_dinov2(tmp_path / "bare.pth", num_heads=HEADS).eval()(images)
    for name in ("model_0000099.rank_0.pth", "teacher_checkpoint.pth"):
        torch.testing.assert_close(load_official_dinov2(tmp_path / name, num_heads=HEADS).eval()(images), reference, atol=0, rtol=0)
    from_student = load_official_dinov2(tmp_path / "model_0000099.rank_0.pth", which="student", num_heads=HEADS)
    assert torch.equal(from_student.cls_token, bare["cls_token"] + 1)
    # the registered key map gives the same names (the core's loader finds it by name)
    assert "dinov2" in official_key_maps()
    converted = convert_official_state_dict("dinov2", {f"teacher.backbone.{k}": v for k, v in chunked.items()})
    assert set(converted) == set(bare)


def test_bad_files_give_one_line_errors_naming_the_file_and_keys(tmp_path):
    state = _official_state(depth=2)
    missing = dict(state)
    del missing["blocks.1.ls2.gamma"]
    unexpected = dict(state) | {"head.weight": torch.zeros(3, DIM)}
    reshaped = dict(state) | {"norm.weight": torch.zeros(DIM + 1)}
    cases = {"missing.pth": (missing, "missing: blocks.1.ls2.gamma"), "unexpected.pth": (unexpected, "unexpected: head.weight"),
             "reshaped.pth": (reshaped, "other shapes: norm.weight")}
    for name, (sd, words) in cases.items():
        torch.save(sd, tmp_path / name)
        with pytest.raises(LitzooError) as error:
            load_official_dinov2(tmp_path / name, num_heads=HEADS)
        assert str(tmp_path / name) in str(error.value) and words in str(error.value) and "\n" not in str(error.value)
    no_patch = {k: v for k, v in state.items() if not k.startswith("patch_embed")}
    torch.save(no_patch, tmp_path / "no_patch.pth")
    with pytest.raises(LitzooError, match="no_patch.pth.*not a DINOv2 backbone.*patch_embed.proj.weight"):
        load_official_dinov2(tmp_path / "no_patch.pth")
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(LitzooError, match="garbage.pth"):
        load_official_dinov2(tmp_path / "garbage.pth")
    torch.save({"model": {"teacher.dino_head.mlp.0.weight": torch.zeros(2, 2)}}, tmp_path / "heads_only.pth")
    with pytest.raises(LitzooError, match="heads_only.pth.*teacher.backbone"):
        load_official_dinov2(tmp_path / "heads_only.pth")
    with pytest.raises(ValueError, match="num_heads"):  # 32 wide: heads cannot be read off a 64-per-head rule
        load_official_dinov2(state)


def test_layout_is_read_from_the_file():
    layout = dinov2_layout(_official_state(registers=4, depth=3))
    assert layout | {"num_heads": HEADS} == {
        "image_size": 4 * PATCH, "patch_size": PATCH, "in_chans": 3, "dim": DIM, "depth": 3, "num_heads": HEADS, "mlp_ratio": 4.0,
        "qkv_bias": True, "ffn_layer": "mlp", "layer_scale_init": 1.0, "num_register_tokens": 4, "interpolate_offset": 0.0,
        "interpolate_antialias": True,
    }
    assert dinov2_layout({k: v for k, v in _official_state(dim=128, depth=1).items()})["num_heads"] == 2
    narrow = _official_state(depth=1) | {"blocks.0.mlp.fc1.weight": torch.zeros(2 * DIM, DIM)}
    assert dinov2_layout(narrow)["mlp_ratio"] == 2.0
    assert dinov2_layout(_official_state(depth=1, swiglu=True))["ffn_layer"] == "swiglu"


def test_registers_sit_after_the_class_token_and_masks_replace_patches_before_positions():
    torch.manual_seed(0)
    model = _tiny(num_register_tokens=4).eval()
    with torch.no_grad():
        for block in model.blocks:  # gamma = 0: every block is the identity, x_prenorm = the prepared tokens
            block.ls1.gamma.zero_()
            block.ls2.gamma.zero_()
        model.mask_token.normal_()
        model.register_tokens.normal_()
    images = torch.randn(2, 3, 4 * PATCH, 4 * PATCH)
    masks = torch.zeros(2, 16, dtype=torch.bool)
    masks[0, [1, 5]] = True
    masks[1, 15] = True
    with torch.no_grad():
        tokens = model.forward_features(images, masks)["x_prenorm"]
        patches = model.patch_embed(images)
    pos = model.pos_embed.detach()
    torch.testing.assert_close(tokens[:, 0], (model.cls_token[0, 0] + pos[0, 0]).detach().expand(2, -1))
    torch.testing.assert_close(tokens[:, 1:5], model.register_tokens.detach().expand(2, -1, -1))  # no positions
    expected = torch.where(masks[..., None], model.mask_token.detach()[None], patches) + pos[:, 1:]
    torch.testing.assert_close(tokens[:, 5:], expected)
    assert not torch.allclose(tokens[0, 5 + 1], patches[0, 1] + pos[0, 1 + 1])  # a masked patch changed ...
    with torch.no_grad():
        unmasked = model.forward_features(images)["x_prenorm"]
    changed = (tokens != unmasked).any(dim=-1)
    assert torch.equal(changed[:, 5:], masks) and not changed[:, :5].any()  # ... and only the masked ones
    with pytest.raises(ValueError, match="boolean"):
        model.forward_features(images, masks.float())


def test_a_518_layout_runs_at_224_through_interpolated_positions():
    model = DinoVisionTransformer(image_size=518, patch_size=14, dim=DIM, depth=1, num_heads=HEADS, layer_scale_init=1.0).eval()
    assert model.pos_embed.shape == (1, 1 + 37 * 37, DIM)
    images = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        out = model.forward_features(images)
        reference = _reference_forward(model.state_dict(), images)[0]
        prepared = model.prepare_tokens_with_masks(images)
    assert out["x_norm_patchtokens"].shape == (1, 16 * 16, DIM)
    torch.testing.assert_close(out["x_norm_patchtokens"], reference[:, 1:], atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(prepared - torch.cat([model.cls_token.expand(1, -1, -1), model.patch_embed(images)], dim=1),
                                   interpolate_pos_embed(model.pos_embed, (16, 16)).expand(1, -1, -1))
    with pytest.raises(ValueError, match="multiples of the patch"):
        model(torch.randn(1, 3, 225, 224))


def test_intermediate_layers_and_lists_of_crops():
    torch.manual_seed(0)
    model = _tiny(depth=3, num_register_tokens=4).eval()
    images = torch.randn(2, 3, 2 * PATCH, 3 * PATCH)
    with torch.no_grad():
        x = model.prepare_tokens_with_masks(images)
        per_block = []
        for block in model.blocks:
            x = block(x)
            per_block.append(x)
        last_two = model.get_intermediate_layers(images, n=2)
        assert len(last_two) == 2
        for out, raw in zip(last_two, per_block[1:], strict=True):
            torch.testing.assert_close(out, model.norm(raw)[:, 5:])  # patch tokens only, registers left out
        raw = model.get_intermediate_layers(images, n=[0], norm=False, return_class_token=True)
        torch.testing.assert_close(raw[0][0], per_block[0][:, 5:])
        torch.testing.assert_close(raw[0][1], per_block[0][:, 0])
        maps = model.get_intermediate_layers(images, n=1, reshape=True)
        assert maps[0].shape == (2, DIM, 2, 3)
        torch.testing.assert_close(maps[0].flatten(2).transpose(1, 2), model.forward_features(images)["x_norm_patchtokens"])
        with pytest.raises(ValueError, match="select blocks"):
            model.get_intermediate_layers(images, n=[3])
        small = torch.randn(2, 3, PATCH, PATCH)
        outs = model.forward_features([images, small], [None, torch.ones(2, 1, dtype=torch.bool)])
        torch.testing.assert_close(outs[0]["x_norm_clstoken"], model(images))
        torch.testing.assert_close(outs[1]["x_prenorm"], model.forward_features(small, torch.ones(2, 1, dtype=torch.bool))["x_prenorm"])


def test_presets_init_and_stochastic_depth_schedule():
    layouts = {vit_small: (384, 12, 6, 22_056_576), vit_base: (768, 12, 12, 86_580_480), vit_large: (1024, 24, 16, 304_368_640),
               vit_giant2: (1536, 40, 24, 1_136_480_768)}
    with torch.device("meta"):  # shapes only, no memory
        for preset, (dim, depth, heads, params) in layouts.items():
            model = preset(image_size=518, patch_size=14)
            assert (model.embed_dim, len(model.blocks), model.num_heads) == (dim, depth, heads)
            assert sum(p.numel() for p in model.parameters()) == params  # the released models' sizes
        assert vit_giant2().blocks[0].mlp.w12.out_features == 2 * 4096  # 4 * 1536 * 2/3, rounded to 8
    torch.manual_seed(0)
    model = _tiny(layer_scale_init=1e-5, drop_path_rate=0.3, depth=4)
    assert torch.equal(model.mask_token, torch.zeros(1, DIM))
    assert model.cls_token.abs().max() < 1e-4 and 0.01 < model.pos_embed.std() < 0.03
    assert torch.allclose(model.blocks[0].ls1.gamma, torch.full((DIM,), 1e-5))
    assert [b.drop_path_rate for b in model.blocks] == [0.3] * 4 and all(b.subset_drop_path for b in model.blocks)
    linear = _tiny(drop_path_rate=0.3, drop_path_uniform=False, depth=4)
    assert [round(b.drop_path_rate, 6) for b in linear.blocks] == [0.0, 0.1, 0.2, 0.3]
    qkv = model.blocks[0].attn.qkv
    assert torch.equal(qkv.bias, torch.zeros_like(qkv.bias)) and 0.015 < qkv.weight.std() < 0.025
    with pytest.raises(ValueError, match="arch"):
        DinoVisionTransformer(arch="vit_tiny")


# ---------------------------------------------------------------------------------------- the DINO head


def test_dino_head_is_the_official_head():
    torch.manual_seed(0)
    head = DINOHead(DIM, out_dim=50, hidden_dim=24, bottleneck_dim=12).eval()
    assert [k for k in head.state_dict()] == [
        "mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias", "mlp.4.weight", "mlp.4.bias",
        "last_layer.parametrizations.weight.original0", "last_layer.parametrizations.weight.original1",
    ]
    g = head.last_layer.parametrizations.weight.original0
    assert torch.equal(g, torch.ones(50, 1)) and g.requires_grad  # DINOv2 trains g (DINO v1 froze it)
    assert torch.allclose(head.last_layer.weight.norm(dim=1), torch.ones(50))  # rows of norm g = 1
    x = torch.randn(5, DIM)
    out = head(x)
    assert out.shape == (5, 50)
    mlp = head.mlp
    with torch.no_grad():
        z = mlp[4](F.gelu(mlp[2](F.gelu(mlp[0](x)))))
        v = head.last_layer.parametrizations.weight.original1
        expected = (z / z.norm(dim=1, keepdim=True)) @ (v / v.norm(dim=1, keepdim=True)).T
    torch.testing.assert_close(out, expected)
    with torch.no_grad():
        g.fill_(2.0)
    torch.testing.assert_close(head(x), 2 * expected)  # the magnitude scales every prototype
    frozen = DINOHead(DIM, out_dim=50, hidden_dim=24, bottleneck_dim=12, norm_last_layer=True)
    assert not frozen.last_layer.parametrizations.weight.original0.requires_grad
    assert frozen.mlp[0].bias.abs().max() == 0 and 0.01 < frozen.mlp[0].weight.std() < 0.03
    teacher = copy.deepcopy(head)  # the EMA teacher is a copy of the student
    torch.testing.assert_close(teacher(x), head(x))


def test_dino_head_loads_the_official_weight_norm_names():
    torch.manual_seed(1)
    head = DINOHead(DIM, out_dim=20, hidden_dim=16, bottleneck_dim=8, nlayers=2)
    official = {"mlp.0.weight": torch.randn(16, DIM), "mlp.0.bias": torch.randn(16), "mlp.2.weight": torch.randn(8, 16),
                "mlp.2.bias": torch.randn(8), "last_layer.weight_g": torch.full((20, 1), 3.0), "last_layer.weight_v": torch.randn(20, 8)}
    head.load_state_dict(official)
    v = official["last_layer.weight_v"]
    torch.testing.assert_close(head.last_layer.weight, 3.0 * v / v.norm(dim=1, keepdim=True))
    assert torch.equal(head.mlp[2].weight, official["mlp.2.weight"])
    one = DINOHead(DIM, out_dim=20, bottleneck_dim=8, nlayers=1)
    assert isinstance(one.mlp, torch.nn.Linear)
    with_bn = DINOHead(DIM, out_dim=20, hidden_dim=16, bottleneck_dim=8, use_bn=True)
    assert [type(m).__name__ for m in with_bn.mlp] == ["Linear", "BatchNorm1d", "GELU", "Linear", "BatchNorm1d", "GELU", "Linear"]
