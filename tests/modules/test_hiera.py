"""Hiera: unroll / reroll, q-pooling as max-pooling, mask-unit attention, no leakage of masked pixels
(masked conv), the official sizes and key names, the MAE loss, the LightningModules."""

from __future__ import annotations

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.data import DataLoader

from litzoo.datamodules.digits import DigitsDataModule
from litzoo.framework.checkpoints import convert_official_state_dict
from litzoo.framework.errors import LitzooError
from litzoo.framework.visualization import image_grid
from litzoo.modules.hiera import Hiera, HieraClassifier, HieraMAEModule, MaskedAutoencoderHiera, MaskUnitAttention, q_pool, reroll, unroll

# 32x32 images, 8x8 tokens, mask units 4x4 tokens (16x16 px): 4 units; widths 8-16-32
TINY = dict(img_size=32, in_chans=2, embed_dim=8, num_heads=1, stages=(1, 2, 1), q_pool=2, q_stride=2,
            mask_unit_size=4, mask_unit_attn=(True, True, False), mlp_ratio=2.0)  # fmt: skip
SCHEDULE = [(2, 2)] * 3


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    with torch.no_grad():  # non-trivial values everywhere (zero biases / unit norms would hide mistakes)
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


# ------------------------------------------------------------------------- unroll / reroll


def test_reroll_undoes_unroll_for_every_remaining_schedule():
    x = torch.randn(2, 16 * 16, 3)
    for consumed in range(4):  # the stage outputs: 0..3 unrolls already consumed by pooling
        side = 16 // 2**consumed
        grid = torch.randn(2, side * side, 3)
        rolled = unroll(grid, (side, side), SCHEDULE[consumed:])
        assert not torch.equal(rolled, grid) or consumed == 3
        assert torch.equal(reroll(rolled, (side, side), SCHEDULE[consumed:]), grid.reshape(2, side, side, 3))
    assert torch.equal(unroll(x, (16, 16), []), x)


def test_q_pooling_after_unroll_is_2x2_max_pooling_on_the_grid():
    x = torch.randn(2, 16 * 16, 5)
    spatial = x.reshape(2, 16, 16, 5).permute(0, 3, 1, 2)
    rolled = unroll(x, (16, 16), SCHEDULE)
    for step in range(3):  # pool three times in the unrolled layout, compare with max_pool2d each time
        rolled = q_pool(rolled, 4)
        spatial = F.max_pool2d(spatial, 2)
        side = spatial.shape[-1]
        expected = unroll(spatial.flatten(2).transpose(1, 2), (side, side), SCHEDULE[step + 1 :])
        assert torch.equal(rolled, expected)


def test_unrolled_mask_units_are_the_last_axis():
    ids = torch.arange(16 * 16, dtype=torch.float32).reshape(1, -1, 1)  # token id = y * 16 + x
    rolled = unroll(ids, (16, 16), SCHEDULE)[0, :, 0].long()
    units = 4  # 16x16 tokens, 8x8-token mask units -> 2x2 units
    for u in range(units):
        members = rolled[u::units]
        uy, ux = divmod(u, 2)
        expected = {(uy * 8 + dy) * 16 + ux * 8 + dx for dy in range(8) for dx in range(8)}
        assert set(members.tolist()) == expected


# ------------------------------------------------------------------------- attention


def _reference_attention(attn: MaskUnitAttention, tokens: torch.Tensor, q_stride: int) -> torch.Tensor:
    """Plain softmax attention on one mask unit's tokens (already in unrolled order within the unit)."""
    heads, dim_out = attn.heads, attn.dim_out
    q, k, v = attn.qkv(tokens).reshape(tokens.shape[0], tokens.shape[1], 3, heads, dim_out // heads).permute(2, 0, 3, 1, 4)
    if q_stride > 1:  # max over the 2x2 cells: the leading q_stride offsets of the unit
        q = q.reshape(q.shape[0], heads, q_stride, -1, q.shape[-1]).amax(dim=2)
    weights = (q @ k.transpose(-1, -2) / (dim_out // heads) ** 0.5).softmax(dim=-1)
    return attn.proj((weights @ v).transpose(1, 2).reshape(tokens.shape[0], -1, dim_out))


@pytest.mark.parametrize("q_stride", [1, 4])
def test_mask_unit_attention_is_plain_attention_per_unit(q_stride):
    torch.manual_seed(0)
    units, per_unit, dim = 3, 16, 12
    attn = randomize(MaskUnitAttention(dim, 2 * dim, heads=2, q_stride=q_stride, window_size=per_unit // q_stride, use_mask_unit_attn=True))
    x = torch.randn(2, units * per_unit, dim)  # unit u holds tokens u, u + units, ...
    with torch.no_grad():
        out = attn(x)
        for u in range(units):
            torch.testing.assert_close(out[:, u::units], _reference_attention(attn, x[:, u::units], q_stride), atol=1e-5, rtol=1e-5)
        # tokens of other units do not interact: changing unit 1 leaves units 0 and 2 bit-identical
        y = x.clone()
        y[:, 1::units] += 1.0
        changed = attn(y)
    assert torch.equal(changed[:, 0::units], out[:, 0::units]) and torch.equal(changed[:, 2::units], out[:, 2::units])
    assert not torch.allclose(changed[:, 1::units], out[:, 1::units])
    glob = randomize(MaskUnitAttention(dim, dim, heads=2, use_mask_unit_attn=False))
    with torch.no_grad():  # global attention does mix the units
        assert not torch.allclose(glob(y)[:, 0::units], glob(x)[:, 0::units])


# ------------------------------------------------------------------------- masking


def _masked_inputs():
    torch.manual_seed(1)
    images = torch.randn(2, 2, 32, 32)
    keep = torch.tensor([[True, False, False, True], [False, True, True, False]])
    perturbed = images.clone()
    for b in range(2):
        for u in range(4):
            if not keep[b, u]:
                uy, ux = divmod(u, 2)
                perturbed[b, :, uy * 16 : (uy + 1) * 16, ux * 16 : (ux + 1) * 16] += 5 * torch.randn(2, 16, 16)
    return images, perturbed, keep


def test_masked_pixels_do_not_influence_visible_outputs():
    model = randomize(Hiera(num_classes=3, **TINY))
    images, perturbed, keep = _masked_inputs()
    with torch.no_grad():
        out, inter = model.forward_tokens(images, keep, return_intermediates=True)
        out2, inter2 = model.forward_tokens(perturbed, keep, return_intermediates=True)
    assert out.shape == (2, 2 * 1, 32)  # 2 kept units x 1x1 tokens after two 2x2 poolings, width 32
    assert [i.shape for i in inter] == [(2, 2, 4, 4, 8), (2, 2, 2, 2, 16), (2, 2, 1, 1, 32)]
    assert torch.equal(out, out2) and all(torch.equal(a, b) for a, b in zip(inter, inter2, strict=True))


def test_without_masked_conv_masked_pixels_leak(monkeypatch):
    """Negative control: the 7x7 kernel overlaps neighbouring units, so without zeroing the pixels of
    removed units first the kept tokens at unit borders change."""
    model = randomize(Hiera(num_classes=3, **TINY))
    images, perturbed, keep = _masked_inputs()
    plain = model.patch_embed.forward
    monkeypatch.setattr(model.patch_embed, "forward", lambda x, keep_map=None: plain(x))
    with torch.no_grad():
        out, _ = model.forward_tokens(images, keep)
        out2, _ = model.forward_tokens(perturbed, keep)
    assert not torch.allclose(out, out2)


def test_masked_encoder_equals_the_encoder_on_zeroed_units_for_a_mask_unit_local_model():
    """With mask-unit attention in every stage and no pooling across units, the kept units' tokens are
    the same whether the removed units are dropped or present with zeroed pixels."""
    kw = dict(TINY, mask_unit_attn=(True, True, True), stages=(1, 1, 1), q_pool=2)
    model = randomize(Hiera(num_classes=3, **kw))
    images, _, keep = _masked_inputs()
    zeroed = images * F.interpolate(keep.reshape(2, 1, 2, 2).float(), size=(32, 32))
    with torch.no_grad():
        _, masked = model.forward_tokens(images, keep, return_intermediates=True)
        _, full = model.forward_tokens(zeroed, return_intermediates=True)
    windows = full[-1].reshape(2, 2, 1, 2, 1, 32).permute(0, 1, 3, 2, 4, 5).reshape(2, 4, 1, 1, 32)  # (B, units, 1, 1, C)
    torch.testing.assert_close(masked[-1], windows[keep].reshape(2, 2, 1, 1, 32), atol=1e-5, rtol=1e-5)


def test_random_keep_matches_the_official_rule():
    model = Hiera(num_classes=3, **TINY)
    noise = torch.tensor([[0.9, 0.1, 0.5, 0.3], [0.2, 0.8, 0.4, 0.6]])
    keep = model.random_keep(2, 0.5, noise=noise)  # the two smallest noises kept (True = keep)
    assert keep.tolist() == [[False, True, False, True], [True, False, True, False]]


def test_bad_configurations_are_refused():
    with pytest.raises(ValueError, match="mask_unit_size"):
        Hiera(**dict(TINY, mask_unit_size=2))
    with pytest.raises(ValueError, match="q_pool"):
        Hiera(**dict(TINY, q_pool=3))
    with pytest.raises(ValueError, match="mask_unit_attn"):
        Hiera(**dict(TINY, mask_unit_attn=(True,)))
    with pytest.raises(ValueError, match="mask_ratio"):
        HieraMAEModule(**{k: v for k, v in TINY.items()}, decoder_embed_dim=8, decoder_depth=1, decoder_num_heads=1, mask_ratio=0.9)


# ------------------------------------------------------------------------- official sizes / names


def test_hiera_tiny_matches_the_official_parameter_counts():
    # counted from the official package (hiera-transformer 0.1.4): hiera_tiny_224(), mae_hiera_tiny_224()
    assert sum(p.numel() for p in Hiera().parameters()) == 27_910_216
    assert sum(p.numel() for p in MaskedAutoencoderHiera().parameters()) == 55_020_896


def official_hiera_tiny_keys() -> dict[str, tuple[int, ...]]:
    """Official ``hiera_tiny_224`` state-dict keys and shapes (facebookresearch/hiera ``hiera.py``)."""
    keys = {"patch_embed.proj.weight": (96, 3, 7, 7), "patch_embed.proj.bias": (96,), "pos_embed": (1, 3136, 96)}
    dims = [96] * 1 + [192] * 2 + [384] * 7 + [768] * 2
    dim_in = 96
    for i, dim in enumerate(dims):
        p = f"blocks.{i}."
        keys.update({p + "norm1.weight": (dim_in,), p + "norm1.bias": (dim_in,), p + "attn.qkv.weight": (3 * dim, dim_in),
                     p + "attn.qkv.bias": (3 * dim,), p + "attn.proj.weight": (dim, dim), p + "attn.proj.bias": (dim,),
                     p + "norm2.weight": (dim,), p + "norm2.bias": (dim,), p + "mlp.fc1.weight": (4 * dim, dim),
                     p + "mlp.fc1.bias": (4 * dim,), p + "mlp.fc2.weight": (dim, 4 * dim), p + "mlp.fc2.bias": (dim,)})  # fmt: skip
        if dim != dim_in:
            keys.update({p + "proj.weight": (dim, dim_in), p + "proj.bias": (dim,)})
        dim_in = dim
    keys.update({"norm.weight": (768,), "norm.bias": (768,), "head.projection.weight": (1000, 768), "head.projection.bias": (1000,)})
    return keys


def test_official_key_names_and_converter():
    model = Hiera()
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == official_hiera_tiny_keys()
    state = {k: torch.zeros(s) for k, s in official_hiera_tiny_keys().items()}
    converted = convert_official_state_dict("hiera", {"model_state": state})  # the released files' wrapper
    assert converted.keys() == state.keys()
    model.load_state_dict(converted)  # strict
    with pytest.raises(LitzooError, match="not a Hiera"):
        convert_official_state_dict("hiera", {"model_state": {"conv1.weight": torch.zeros(1)}})
    mae_keys = set(MaskedAutoencoderHiera().state_dict())
    assert {"encoder_norm.weight", "multi_scale_fusion_heads.0.weight", "multi_scale_fusion_heads.1.weight", "decoder_embed.weight",
            "mask_token", "decoder_pos_embed", "decoder_blocks.7.mlp.fc2.weight", "decoder_norm.weight", "decoder_pred.weight"} <= mae_keys  # fmt: skip
    assert "head.projection.weight" not in mae_keys and "norm.weight" not in mae_keys


def test_from_official_checkpoint(tmp_path):
    source = randomize(Hiera(num_classes=3, **TINY))
    path = tmp_path / "hiera.pth"
    torch.save({"model_state": source.state_dict()}, path)
    loaded = Hiera.from_official_checkpoint(str(path), num_classes=3, **TINY).eval()
    x = torch.randn(2, 2, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), source(x))
    with pytest.raises(LitzooError, match="other shapes"):
        Hiera.from_official_checkpoint(str(path), num_classes=5, **TINY)


def test_matches_the_official_package_when_installed():
    """Bit-exact against facebookresearch/hiera (``pip install hiera-transformer``; needs timm)."""
    hiera = pytest.importorskip("hiera")
    torch.manual_seed(0)
    official = hiera.Hiera(input_size=(32, 32), in_chans=2, embed_dim=8, num_heads=1, num_classes=3, stages=(1, 2, 1), q_pool=2,
                           mask_unit_size=(4, 4), mask_unit_attn=(True, True, False), mlp_ratio=2.0).eval()  # fmt: skip
    ours = Hiera(num_classes=3, **TINY).eval()
    ours.load_state_dict(convert_official_state_dict("hiera", {"model_state": official.state_dict()}))
    x = torch.randn(2, 2, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x).softmax(-1), official(x), atol=1e-6, rtol=1e-6)


# ------------------------------------------------------------------------- MAE


def tiny_mae(norm_pix_loss: bool = True) -> MaskedAutoencoderHiera:
    return randomize(MaskedAutoencoderHiera(**TINY, decoder_embed_dim=8, decoder_depth=1, decoder_num_heads=2, norm_pix_loss=norm_pix_loss))


def test_mae_shapes_and_loss_on_removed_patches_only():
    model = tiny_mae()
    images, perturbed, keep = _masked_inputs()
    assert model.pred_stride == 16 and model.multi_scale_fusion_heads[0].kernel_size == (4, 4)
    with torch.no_grad():
        loss, pred, _ = model(images, keep=keep)
        latent = model.forward_encoder(images, keep)
    assert latent.shape == (2, 2, 1, 1, 32) and pred.shape == (2, 4, 16 * 16 * 2)
    removed = ~model.token_keep(keep)
    expected = (pred[removed] - model.target(images)[removed]).pow(2).mean()
    torch.testing.assert_close(loss, expected)
    # the visible patches' targets do not enter the loss: change them (not the removed ones) -> same target term
    target = model.target(images)
    assert torch.allclose(target.mean(-1), torch.zeros(2, 4), atol=1e-5)  # norm-pix: each patch has mean 0
    with torch.no_grad():  # masked pixels do not reach the encoder
        assert torch.equal(model.forward_encoder(perturbed, keep), latent)
    # reconstructions keep the visible patches exactly
    recon = model.reconstruct(images, pred, keep)
    kept_pixels = F.interpolate(keep.reshape(2, 1, 2, 2).float(), size=(32, 32)).bool().expand(-1, 2, -1, -1)
    torch.testing.assert_close(recon[kept_pixels], images[kept_pixels])
    assert torch.equal(model.unpatchify(model.patchify(images)), images)


def test_mae_module_trains_one_step_and_gives_features(tmp_path):
    module = HieraMAEModule(**dict(TINY, in_chans=1), decoder_embed_dim=8, decoder_depth=1, decoder_num_heads=2, mask_ratio=0.5, warmup_epochs=0)
    data = DigitsDataModule(batch_size=16, image_size=32)
    before = module.model.pos_embed.detach().clone()
    trainer = L.Trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(module, data)
    assert not torch.equal(before, module.model.pos_embed)
    assert torch.isfinite(trainer.callback_metrics["val/loss"])
    assert module.forward_features(torch.randn(3, 1, 32, 32)).shape == (3, 32)


def test_mae_features_without_a_mask_equal_the_all_visible_mask_path():
    """forward_features runs the encoder without selecting tokens (so it traces); it must equal the
    masked path with every mask unit kept."""
    torch.manual_seed(0)
    model = MaskedAutoencoderHiera(**TINY, decoder_embed_dim=8, decoder_depth=1, decoder_num_heads=2).eval()
    images = torch.randn(2, 2, 32, 32)
    keep_all = torch.ones(2, model.mask_grid**2, dtype=torch.bool)
    assert torch.allclose(model.forward_encoder(images, None), model.forward_encoder(images, keep_all), atol=1e-6)
    assert torch.allclose(model.forward_features(images), model.forward_encoder(images, keep_all).mean(dim=(1, 2, 3)), atol=1e-6)


def test_classifier_module_features_and_weight_decay_groups():
    module = HieraClassifier(num_classes=10, **dict(TINY, in_chans=1))
    assert module(torch.randn(2, 1, 32, 32)).shape == (2, 10)
    assert module.forward_features(torch.randn(2, 1, 32, 32)).shape == (2, 32)
    assert "net.pos_embed" in module.no_weight_decay() and "net.blocks.0.attn.qkv.weight" not in module.no_weight_decay()


def test_mae_module_logs_reconstructions_of_its_fixed_masks(tmp_path, monkeypatch):
    """Rows original / masked / reconstruction of the first validation batch, with the mask of
    ``Generator().manual_seed(val_seed)``; q_pool 1 makes each mask unit 2x2 predicted patches of 8x8 px."""
    torch.manual_seed(0)
    module = HieraMAEModule(**dict(TINY, in_chans=1, q_pool=1), decoder_embed_dim=8, decoder_depth=1, decoder_num_heads=2,
                            mask_ratio=0.5, num_images=2, val_seed=3)  # fmt: skip
    assert module.model.pred_stride == 8 and module.model.unit_final == 2
    images = torch.randn(3, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    logger = TensorBoardLogger(tmp_path)
    logged = []
    monkeypatch.setattr(logger.experiment, "add_image", lambda tag, image, step: logged.append((tag, image)))
    trainer = L.Trainer(accelerator="cpu", logger=logger, enable_progress_bar=False, enable_model_summary=False)
    metrics = trainer.validate(module, DataLoader([{"image": images}], batch_size=None), verbose=False)[0]
    assert [tag for tag, _ in logged] == ["val/reconstruction"] and 0 < metrics["val/mean_baseline_loss"]
    grid = logged[0][1]
    assert grid.shape == (3, 3 * 32, 2 * 32)
    model = module.model.eval()
    keep = model.random_keep(3, 0.5, noise=torch.rand(3, 4, generator=torch.Generator().manual_seed(3)))
    with torch.no_grad():
        loss, pred, _ = model(images, keep=keep)
    assert metrics["val/loss"] == pytest.approx(float(loss), rel=1e-6)
    kept_pixels = F.interpolate(keep.reshape(3, 1, 2, 2).float(), size=(32, 32)).bool()
    masked = torch.where(kept_pixels, images, images.flatten(1).min(dim=1).values[:, None, None, None])
    reconstruction = model.reconstruct(images, pred, keep)  # the network's own: visible pixels kept exactly
    assert not torch.allclose(reconstruction[~kept_pixels], images[~kept_pixels])
    torch.testing.assert_close(grid, image_grid([images[:2], masked[:2], reconstruction[:2]]))


def test_network_arguments_are_forwarded_and_saved_flat():
    clf = HieraClassifier(num_classes=10, **dict(TINY, in_chans=1), dim_mul=1.0, head_mul=1.0, head_init_scale=0.0)
    assert clf.net.dim == 8 and clf.net.blocks[-1].attn.heads == 1  # dim_mul / head_mul reach the network
    assert not clf.net.head.projection.weight.any()  # head_init_scale 0
    hparams = dict(clf.hparams)
    assert {"num_classes": 10, "embed_dim": 8, "stages": (1, 2, 1), "dim_mul": 1.0, "head_init_scale": 0.0}.items() <= hparams.items()
    assert not any(isinstance(v, dict) for v in hparams.values())  # flat: no nested net_kwargs
    rebuilt = HieraClassifier(**hparams)  # how a checkpoint rebuilds the module
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in clf.state_dict().items()}
    mae = HieraMAEModule(**dict(TINY, in_chans=1), decoder_embed_dim=8, decoder_depth=1, decoder_num_heads=2, mask_ratio=0.5)
    hparams = dict(mae.hparams)
    assert {"mask_ratio": 0.5, "q_pool": 2, "decoder_embed_dim": 8, "mask_unit_size": 4, "in_chans": 1}.items() <= hparams.items()
    assert not any(isinstance(v, dict) for v in hparams.values())
    assert set(HieraMAEModule(**hparams).state_dict()) == set(mae.state_dict())


def test_unknown_network_arguments_are_named():
    with pytest.raises(ValueError, match=r"HieraClassifier: unknown network argument 'embed_dims' \(did you mean 'embed_dim'\?\) for Hiera"):
        HieraClassifier(num_classes=10, embed_dims=8)
    with pytest.raises(ValueError, match=r"HieraMAEModule: unknown network argument 'decoder_dim'.* for MaskedAutoencoderHiera"):
        HieraMAEModule(decoder_dim=8)
    with pytest.raises(TypeError, match="nonsense"):  # the plain models: Python's own error names it
        MaskedAutoencoderHiera(nonsense=1)


@pytest.mark.parametrize("class_path", ["litzoo.modules.hiera.HieraClassifier", "litzoo.modules.hiera.HieraMAEModule"])
def test_cli_help_lists_the_network_arguments_with_types(class_path, capsys):
    from litzoo.cli import main

    with pytest.raises(SystemExit):
        main(["fit", "--model.help", class_path])
    text = " ".join(capsys.readouterr().out.split())
    sections: dict[str, str] = {}  # argument name -> its help ("--model.stages [ITEM,...], --model.stages+ [ITEM,...] ...")
    for part in text.split("--model.")[1:]:
        name = part.split()[0].rstrip("+")
        sections[name] = sections.get(name, "") + part
    for argument, kind in (("embed_dim", "int"), ("stages", "Sequence[int]"), ("mask_unit_attn", "Sequence[bool]"), ("dim_mul", "float")):
        assert f"(type: {kind}, default:" in sections[argument], argument
    if class_path.endswith("HieraMAEModule"):  # the encoder's arguments through MaskedAutoencoderHiera's **kwargs, not the head's
        assert "(type: int, default: 8)" in sections["decoder_depth"] and "(type: int, default: 2)" in sections["q_pool"]
        assert not {"num_classes", "head_dropout", "head_init_scale"} & set(sections)
    else:
        assert "(type: float, default: 0.001)" in sections["head_init_scale"] and "decoder_depth" not in sections
