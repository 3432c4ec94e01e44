"""PE-Core's vision tower in the core (framework/nn/pe_core.py): the release→litzoo vision-key conversion against the names
written out by hand, the vision-only model equals CLIP's vision side built as PE-Core, and the size presets."""

from __future__ import annotations

import pytest
import torch

from litzoo.framework.errors import LitzooError
from litzoo.framework.nn.pe_core import PE_CORE_CONFIGS, PECoreVision, convert_pe_vision_state, pe_core_vision, pe_core_vision_kwargs
from litzoo.modules.perception_encoder import PE_CORE_CONFIGS as PE_MODULE_CONFIGS
from litzoo.modules.perception_encoder import official_pe_key_map, pe_core_clip

WIDTH, EMBED, PATCH, IMAGE, HEADS = 8, 6, 4, 8, 2
SMALL = {"image_size": IMAGE, "patch_size": PATCH, "vision_width": WIDTH, "vision_depth": 2, "vision_heads": HEADS, "vision_mlp_ratio": 4.0,
         "embed_dim": EMBED, "vision_class_token": True, "attn_pooler_heads": HEADS}  # fmt: skip


def release_vision_state(depth: int = 2, layer_scale: bool = False, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random values under the official names and shapes of ``core/vision_encoder/pe.py`` ``VisionTransformer`` (class token,
    ``(1 + grid²)`` positions, bias-free ``conv1``, ``(width, output_dim)`` ``proj``, ``AttentionPooling`` with one probe)."""
    generator = torch.Generator().manual_seed(seed)

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) * 0.3

    w, grid = WIDTH, IMAGE // PATCH
    state = {"conv1.weight": r(w, 3, PATCH, PATCH), "class_embedding": r(w), "positional_embedding": r(1 + grid * grid, w),
             "ln_pre.weight": 1 + r(w), "ln_pre.bias": r(w), "ln_post.weight": 1 + r(w), "ln_post.bias": r(w), "proj": r(w, EMBED),
             "attn_pool.probe": r(1, 1, w), "attn_pool.attn.in_proj_weight": r(3 * w, w), "attn_pool.attn.in_proj_bias": r(3 * w),
             "attn_pool.attn.out_proj.weight": r(w, w), "attn_pool.attn.out_proj.bias": r(w), "attn_pool.layernorm.weight": 1 + r(w),
             "attn_pool.layernorm.bias": r(w), "attn_pool.mlp.c_fc.weight": r(4 * w, w), "attn_pool.mlp.c_fc.bias": r(4 * w),
             "attn_pool.mlp.c_proj.weight": r(w, 4 * w), "attn_pool.mlp.c_proj.bias": r(w)}  # fmt: skip
    for i in range(depth):
        block = {"ln_1.weight": (w,), "ln_1.bias": (w,), "attn.in_proj_weight": (3 * w, w), "attn.in_proj_bias": (3 * w,),
                 "attn.out_proj.weight": (w, w), "attn.out_proj.bias": (w,), "ln_2.weight": (w,), "ln_2.bias": (w,),
                 "mlp.c_fc.weight": (4 * w, w), "mlp.c_fc.bias": (4 * w,), "mlp.c_proj.weight": (w, 4 * w), "mlp.c_proj.bias": (w,)}  # fmt: skip
        if layer_scale:
            block |= {"ls_1.gamma": (w,), "ls_2.gamma": (w,)}
        state |= {f"transformer.resblocks.{i}.{name}": r(*shape) for name, shape in block.items()}
    return state


#: official name -> litzoo name, written out by hand (pe.py VisionTransformer / AttentionPooling / ResidualAttentionBlock vs
#: framework/nn/vit.py VisionTransformer / Block, framework/nn/attention_pool.py AttentionPool, CLIP's visual_projection)
BY_HAND = {
    "conv1.weight": "visual.patch_embed.proj.weight", "class_embedding": "visual.cls_token", "positional_embedding": "visual.pos_embed",
    "ln_pre.weight": "visual.norm_pre.weight", "ln_pre.bias": "visual.norm_pre.bias", "ln_post.weight": "visual.norm.weight",
    "ln_post.bias": "visual.norm.bias", "proj": "visual_projection.weight", "attn_pool.probe": "attn_pool.probe",
    "attn_pool.attn.in_proj_weight": "attn_pool.attn.in_proj_weight", "attn_pool.attn.in_proj_bias": "attn_pool.attn.in_proj_bias",
    "attn_pool.attn.out_proj.weight": "attn_pool.attn.out_proj.weight", "attn_pool.attn.out_proj.bias": "attn_pool.attn.out_proj.bias",
    "attn_pool.layernorm.weight": "attn_pool.norm.weight", "attn_pool.layernorm.bias": "attn_pool.norm.bias",
    "attn_pool.mlp.c_fc.weight": "attn_pool.mlp.fc1.weight", "attn_pool.mlp.c_fc.bias": "attn_pool.mlp.fc1.bias",
    "attn_pool.mlp.c_proj.weight": "attn_pool.mlp.fc2.weight", "attn_pool.mlp.c_proj.bias": "attn_pool.mlp.fc2.bias",
    "transformer.resblocks.1.ln_1.weight": "visual.blocks.1.norm1.weight", "transformer.resblocks.1.ln_2.bias": "visual.blocks.1.norm2.bias",
    "transformer.resblocks.1.attn.in_proj_weight": "visual.blocks.1.attn.qkv.weight",
    "transformer.resblocks.1.attn.in_proj_bias": "visual.blocks.1.attn.qkv.bias",
    "transformer.resblocks.0.attn.out_proj.weight": "visual.blocks.0.attn.proj.weight",
    "transformer.resblocks.0.mlp.c_fc.weight": "visual.blocks.0.mlp.fc1.weight", "transformer.resblocks.0.mlp.c_proj.bias": "visual.blocks.0.mlp.fc2.bias",
    "transformer.resblocks.0.ls_1.gamma": "visual.blocks.0.ls1.gamma", "transformer.resblocks.1.ls_2.gamma": "visual.blocks.1.ls2.gamma",
}  # fmt: skip


def test_vision_keys_convert_as_written_out_by_hand():
    official = release_vision_state(layer_scale=True)
    converted = convert_pe_vision_state(official)
    assert len(converted) == len(official)  # one litzoo key per official key
    for old, new in BY_HAND.items():
        if old == "class_embedding":
            assert torch.equal(converted[new], official[old].reshape(1, 1, WIDTH))
        elif old == "positional_embedding":
            assert torch.equal(converted[new], official[old][None])
        elif old == "proj":  # x @ proj (width, E) -> Linear weight (E, width)
            assert torch.equal(converted[new], official[old].T)
        else:
            assert torch.equal(converted[new], official[old]), old
    # modules/perception_encoder.py converts through it: a vision file, a whole CLIP's vision side, PE's "module." unwrapping
    assert official_pe_key_map(official).keys() == converted.keys()
    whole = official_pe_key_map({**{f"module.visual.{k}": v for k, v in official.items()}, "logit_scale": torch.tensor(2.0)})
    assert all(torch.equal(whole[k], v) for k, v in converted.items()) and set(whole) - set(converted) == {"logit_scale"}
    assert PE_MODULE_CONFIGS is PE_CORE_CONFIGS  # the presets moved, not copied
    with pytest.raises(LitzooError, match="unknown key 'rope.freqs'"):
        convert_pe_vision_state({**official, "rope.freqs": torch.zeros(2)})
    with pytest.raises(LitzooError, match="no 'conv1.weight'"):
        convert_pe_vision_state({"proj": official["proj"]})


def test_pe_core_vision_loads_strict_and_equals_clips_vision_side():
    official = release_vision_state()
    torch.manual_seed(0)
    tower = PECoreVision(**SMALL).eval()
    tower.load_state_dict(convert_pe_vision_state(official), strict=True)  # every key, no other
    clip = pe_core_clip("PE-Core-T16-384", **SMALL, context_length=4, text_width=8, text_depth=1, text_heads=2, vocab_size=20, end_token_id=19).eval()
    missing, unexpected = clip.load_state_dict(convert_pe_vision_state(official), strict=False)
    assert not unexpected and all(k.startswith(("text.", "text_projection.", "logit_scale")) for k in missing)
    images = torch.randn(3, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(tower(images), clip.encode_image(images, normalize=False), rtol=1e-5, atol=1e-6)
        # any multiple of the patch (PE's dynamic size: positions resampled), as CLIP's
        larger = torch.randn(2, 3, 3 * PATCH, 4 * PATCH, generator=torch.Generator().manual_seed(2))
        torch.testing.assert_close(tower(larger), clip.encode_image(larger, normalize=False), rtol=1e-5, atol=1e-6)
    # the projection is what turns the pooled width into embed_dim: the output moves with it
    with torch.no_grad():
        tower.visual_projection.weight.mul_(2)
        torch.testing.assert_close(tower(images), 2 * clip.encode_image(images, normalize=False), rtol=1e-5, atol=1e-6)


def test_presets_give_the_official_vision_shapes():
    with torch.device("meta"):  # shapes only
        tower = pe_core_vision("PE-Core-L14-336")
    state = tower.state_dict()
    assert state["visual.pos_embed"].shape == (1, 1 + 24 * 24, 1024) and state["visual.patch_embed.proj.weight"].shape == (1024, 3, 14, 14)
    assert state["visual_projection.weight"].shape == (1024, 1024) and tower.embed_dim == 1024 and "visual.blocks.23.norm1.weight" in state
    assert "visual.blocks.24.norm1.weight" not in state and tower.attn_pool is not None and tower.attn_pool.attn.num_heads == 8
    assert not any(k.startswith("text") for k in state)
    assert pe_core_vision_kwargs("PE-Core-G14-448")["vision_class_token"] is False
    with pytest.raises(ValueError, match="PE-Core-L14-336"):
        pe_core_vision_kwargs("PE-Core-L16")
    with pytest.raises(ValueError, match="needs a class token"):
        PECoreVision(**{**SMALL, "vision_class_token": False}, pool_type="token")
    with pytest.raises(ValueError, match="pool_type"):
        PECoreVision(**SMALL, pool_type="avg")
