"""MAE: the model against an independent plain reference, official key names and checkpoints, the loss,
and the LightningModule's recipe (lr from blr, weight-decay groups, fixed validation masks, images)."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from litzoo.datamodules.digits import DigitsDataModule
from litzoo.framework.checkpoints import convert_official_state_dict
from litzoo.framework.errors import LitzooError
from litzoo.modules.mae import MAEModule, MaskedAutoencoderViT

TINY = dict(img_size=8, patch_size=2, in_chans=2, embed_dim=16, depth=2, num_heads=2,
            decoder_embed_dim=12, decoder_depth=1, decoder_num_heads=3, mlp_ratio=2.0)  # fmt: skip


def tiny(norm_pix_loss: bool = True, seed: int = 0) -> MaskedAutoencoderViT:
    torch.manual_seed(seed)
    model = MaskedAutoencoderViT(**TINY, norm_pix_loss=norm_pix_loss)
    with torch.no_grad():  # non-trivial values everywhere (zero biases / unit norms would hide mistakes)
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    return model


# ------------------------------------------------------------ an independent plain reference of MAE


def _layer_norm(x, w, b):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + 1e-6) * w + b


def _block(x, sd, prefix, heads):
    """Pre-norm transformer block, attention head by head with an explicit softmax."""
    dim = x.shape[-1]
    head_dim = dim // heads
    h = _layer_norm(x, sd[f"{prefix}.norm1.weight"], sd[f"{prefix}.norm1.bias"])
    qkv = h @ sd[f"{prefix}.attn.qkv.weight"].T + sd[f"{prefix}.attn.qkv.bias"]
    q, k, v = qkv[:, :dim], qkv[:, dim : 2 * dim], qkv[:, 2 * dim :]
    outs = []
    for i in range(heads):
        cols = slice(i * head_dim, (i + 1) * head_dim)
        weights = torch.softmax(q[:, cols] @ k[:, cols].T / math.sqrt(head_dim), dim=-1)
        outs.append(weights @ v[:, cols])
    x = x + torch.cat(outs, dim=1) @ sd[f"{prefix}.attn.proj.weight"].T + sd[f"{prefix}.attn.proj.bias"]
    h = _layer_norm(x, sd[f"{prefix}.norm2.weight"], sd[f"{prefix}.norm2.bias"])
    h = h @ sd[f"{prefix}.mlp.fc1.weight"].T + sd[f"{prefix}.mlp.fc1.bias"]
    h = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))
    return x + h @ sd[f"{prefix}.mlp.fc2.weight"].T + sd[f"{prefix}.mlp.fc2.bias"]


def reference_mae(sd, imgs, noise, mask_ratio, p, heads, decoder_heads, depth, decoder_depth, norm_pix):
    """MAE written from the paper, one image at a time, with Python lists for the token bookkeeping."""
    batch, channels, height, width = imgs.shape
    grid_h, grid_w = height // p, width // p
    num = grid_h * grid_w
    len_keep = int(num * (1 - mask_ratio))
    conv_w = sd["patch_embed.proj.weight"].reshape(sd["patch_embed.proj.weight"].shape[0], -1)
    preds, masks, losses, count = [], [], 0.0, 0
    for b in range(batch):
        conv_in, targets = [], []
        for i in range(grid_h):
            for j in range(grid_w):
                crop = imgs[b, :, i * p : (i + 1) * p, j * p : (j + 1) * p]  # (C, p, p)
                conv_in.append(crop.reshape(-1))  # the convolution's (C, p, p) order
                targets.append(crop.permute(1, 2, 0).reshape(-1))  # MAE's target order (p, p, C)
        tokens = torch.stack(conv_in) @ conv_w.T + sd["patch_embed.proj.bias"] + sd["pos_embed"][0, 1:]
        order = sorted(range(num), key=lambda n: float(noise[b, n]))
        kept = order[:len_keep]
        x = torch.cat([sd["cls_token"][0] + sd["pos_embed"][0, :1], tokens[kept]])
        for d in range(depth):
            x = _block(x, sd, f"blocks.{d}", heads)
        x = _layer_norm(x, sd["norm.weight"], sd["norm.bias"])
        y = x @ sd["decoder_embed.weight"].T + sd["decoder_embed.bias"]
        rows = [y[0]] + [y[1 + kept.index(n)] if n in kept else sd["mask_token"][0, 0] for n in range(num)]
        y = torch.stack(rows) + sd["decoder_pos_embed"][0]
        for d in range(decoder_depth):
            y = _block(y, sd, f"decoder_blocks.{d}", decoder_heads)
        y = _layer_norm(y, sd["decoder_norm.weight"], sd["decoder_norm.bias"])
        pred = (y @ sd["decoder_pred.weight"].T + sd["decoder_pred.bias"])[1:]
        mask = torch.tensor([0.0 if n in kept else 1.0 for n in range(num)], dtype=imgs.dtype)
        for n in range(num):
            target = targets[n]
            if norm_pix:
                mean = target.sum() / len(target)
                var = ((target - mean) ** 2).sum() / (len(target) - 1)
                target = (target - mean) / torch.sqrt(var + 1e-6)
            if mask[n] == 1:
                losses = losses + ((pred[n] - target) ** 2).mean()
                count += 1
        preds.append(pred)
        masks.append(mask)
    return losses / count, torch.stack(preds), torch.stack(masks)


@pytest.mark.parametrize("norm_pix", [True, False])
@pytest.mark.parametrize("mask_ratio", [0.75, 0.5])
def test_forward_equals_plain_reference_for_the_same_noise(norm_pix, mask_ratio):
    model = tiny(norm_pix).double().eval()
    gen = torch.Generator().manual_seed(3)
    imgs = torch.rand(3, 2, 8, 8, generator=gen, dtype=torch.float64)
    noise = torch.rand(3, 16, generator=gen, dtype=torch.float64)
    loss, pred, mask = model(imgs, mask_ratio=mask_ratio, noise=noise)
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    ref_loss, ref_pred, ref_mask = reference_mae(sd, imgs, noise, mask_ratio, 2, 2, 3, 2, 1, norm_pix)
    assert torch.equal(mask, ref_mask)
    assert torch.allclose(pred, ref_pred, atol=1e-6, rtol=0)
    assert abs(float(loss) - float(ref_loss)) < 1e-6
    # float32 also matches, to float32 precision
    model32 = tiny(norm_pix).eval()
    loss32, pred32, _ = model32(imgs.float(), mask_ratio=mask_ratio, noise=noise.float())
    assert torch.allclose(pred32.double(), ref_pred, atol=1e-4) and abs(float(loss32) - float(ref_loss)) < 1e-4


def test_encoder_sees_only_visible_tokens():
    model = tiny().eval()
    seen = []
    model.blocks[0].register_forward_hook(lambda module, args, out: seen.append(args[0].shape))
    model(torch.rand(2, 2, 8, 8), mask_ratio=0.75)
    assert seen == [torch.Size([2, 1 + 4, 16])]  # class token + 4 of 16 patches


def test_loss_is_only_on_removed_patches():
    model = tiny().eval()
    imgs = torch.rand(2, 2, 8, 8)
    loss, pred, mask = model(imgs, noise=torch.rand(2, 16))
    visible = (mask == 0)[..., None]
    perturbed = pred + visible * torch.randn_like(pred) * 10
    assert torch.equal(model.forward_loss(imgs, perturbed, mask), loss)
    hidden = pred + (~visible) * 0.1
    assert not torch.allclose(model.forward_loss(imgs, hidden, mask), loss)


def test_norm_pix_target_by_hand():
    model = MaskedAutoencoderViT(**{**TINY, "in_chans": 1}, norm_pix_loss=True)
    imgs = torch.zeros(1, 1, 8, 8)
    imgs[0, 0, 0:2, 0:2] = torch.tensor([[0.0, 1.0], [2.0, 3.0]])  # patch 0, pixels in row order
    target = model.target(imgs)
    expected = (torch.tensor([0.0, 1.0, 2.0, 3.0]) - 1.5) / math.sqrt(5 / 3 + 1e-6)  # unbiased var 5/3
    assert torch.allclose(target[0, 0], expected)
    assert torch.equal(target[0, 1], torch.zeros(4))
    mask = torch.zeros(1, 16)
    mask[0, 0] = 1
    assert torch.allclose(model.forward_loss(imgs, torch.zeros(1, 16, 4), mask), (expected**2).mean())
    raw = MaskedAutoencoderViT(**{**TINY, "in_chans": 1}, norm_pix_loss=False)
    assert torch.allclose(raw.forward_loss(imgs, torch.zeros(1, 16, 4), mask), torch.tensor(14 / 4))


def test_fixed_sincos_positions_and_init():
    model = MaskedAutoencoderViT(**TINY)
    assert not model.pos_embed.requires_grad and not model.decoder_pos_embed.requires_grad
    assert (model.pos_embed[0, 0] == 0).all() and (model.decoder_pos_embed[0, 0] == 0).all()
    # token 5 of a 4x4 grid: row 1, column 1; channel 0 = sin(column · 1), channel D/4 = cos(column · 1)
    assert math.isclose(float(model.pos_embed[0, 6, 0]), math.sin(1.0), abs_tol=1e-6)
    assert math.isclose(float(model.pos_embed[0, 6, 4]), math.cos(1.0), abs_tol=1e-6)
    assert model.decoder_pred.weight.shape == (2 * 2 * 2, 12)  # p²·C outputs


# ------------------------------------------------------------------------ official names and files


def official_keys(depth: int, decoder_depth: int) -> list[str]:
    """The state-dict keys of facebookresearch/mae's MaskedAutoencoderViT (models_mae.py with timm's Block)."""

    def block(prefix):
        return [f"{prefix}.{m}.{leaf}" for m in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2") for leaf in ("weight", "bias")]

    keys = ["cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias"]
    keys += [k for i in range(depth) for k in block(f"blocks.{i}")] + ["norm.weight", "norm.bias"]
    keys += ["mask_token", "decoder_pos_embed", "decoder_embed.weight", "decoder_embed.bias"]
    keys += [k for i in range(decoder_depth) for k in block(f"decoder_blocks.{i}")]
    return keys + ["decoder_norm.weight", "decoder_norm.bias", "decoder_pred.weight", "decoder_pred.bias"]


def test_state_dict_keys_are_the_official_ones():
    model = MaskedAutoencoderViT(**TINY)
    assert sorted(model.state_dict()) == sorted(official_keys(2, 1))
    assert model.state_dict()["pos_embed"].shape == (1, 17, 16)
    assert model.state_dict()["patch_embed.proj.weight"].shape == (16, 2, 2, 2)


def test_full_official_checkpoint_loads_key_for_key(tmp_path):
    source = tiny(seed=1)
    path = tmp_path / "mae_pretrain_vit_tiny_full.pth"
    torch.save({"model": source.state_dict()}, path)
    assert set(convert_official_state_dict("mae", {"model": source.state_dict()})) == set(official_keys(2, 1))
    loaded = MaskedAutoencoderViT.from_official_checkpoint(str(path), **TINY)
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_encoder_only_checkpoint_loads_the_encoder_and_reports_the_decoder(tmp_path):
    source = tiny(seed=1)
    encoder = {k: v for k, v in source.state_dict().items() if not k.startswith(("decoder_", "mask_token"))}
    path = tmp_path / "mae_pretrain_vit_tiny.pth"
    torch.save({"model": encoder}, path)
    with pytest.warns(UserWarning, match="encoder-only: 20 decoder keys are missing"):
        loaded = MaskedAutoencoderViT.from_official_checkpoint(str(path), **TINY)
    imgs = torch.rand(2, 2, 8, 8)
    assert torch.equal(loaded.forward_features(imgs), source.forward_features(imgs))
    assert not torch.equal(loaded.decoder_pred.weight, source.decoder_pred.weight)


def test_checkpoints_that_do_not_fit_are_refused(tmp_path):
    state = tiny().state_dict()
    path = tmp_path / "finetuned.pth"
    torch.save({"model": {**state, "head.weight": torch.zeros(10, 16)}}, path)
    with pytest.raises(LitzooError, match="unexpected: head.weight"):
        MaskedAutoencoderViT.from_official_checkpoint(str(path), **TINY)
    torch.save({"model": {k: v for k, v in state.items() if k != "norm.weight"}}, path)
    with pytest.raises(LitzooError, match="missing: norm.weight"):
        MaskedAutoencoderViT.from_official_checkpoint(str(path), **TINY)
    with pytest.raises(LitzooError, match="other shapes: pos_embed"):
        torch.save({"model": {**state, "pos_embed": torch.zeros(1, 5, 16)}}, path)
        MaskedAutoencoderViT.from_official_checkpoint(str(path), **TINY)
    with pytest.raises(LitzooError, match="patch_embed.proj.weight"):
        convert_official_state_dict("mae", {"model": {"visual.conv1.weight": torch.zeros(1)}})


def test_forward_features_is_the_unmasked_class_token():
    model = tiny().eval()
    imgs = torch.rand(3, 2, 8, 8)
    features = model.forward_features(imgs)
    assert features.shape == (3, 16)
    # with nothing removed the encoder sees all tokens (shuffled, which attention does not notice)
    latent, mask, _ = model.forward_encoder(imgs, 0.0, noise=torch.rand(3, 16))
    assert mask.sum() == 0 and torch.allclose(features, latent[:, 0], atol=1e-5)


# ------------------------------------------------------------------------------ the LightningModule

MODULE = dict(img_size=8, patch_size=2, in_chans=1, embed_dim=16, depth=1, num_heads=2,
              decoder_embed_dim=8, decoder_depth=1, decoder_num_heads=2, mask_ratio=0.75)  # fmt: skip


def test_lr_from_blr_warmup_and_weight_decay_groups(tmp_path):
    module = MAEModule(**MODULE, blr=1e-3, warmup_epochs=1)
    trainer = L.Trainer(max_epochs=2, limit_train_batches=4, limit_val_batches=0, accumulate_grad_batches=2, accelerator="cpu",
                        logger=False, enable_checkpointing=False, enable_progress_bar=False, default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(module, DigitsDataModule(batch_size=32, normalize=False))
    optimizer = trainer.optimizers[0]
    assert [g["initial_lr"] for g in optimizer.param_groups] == [pytest.approx(1e-3 * 32 * 2 / 256)] * 2
    assert optimizer.defaults["betas"] == (0.9, 0.95)
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in module.named_parameters()}
    skipped = {names[id(p)] for p in no_decay["params"]}
    assert {"model.cls_token", "model.mask_token", "model.norm.weight", "model.blocks.0.attn.qkv.bias"} <= skipped
    assert all(p.ndim >= 2 for p in decay["params"]) and "model.cls_token" not in {names[id(p)] for p in decay["params"]}
    assert all(not n.endswith("pos_embed") for n in skipped | {names[id(p)] for p in decay["params"]})  # fixed, not optimised
    # 2 optimizer steps per epoch: warm-up 1 epoch = 2 steps, then cosine over the remaining 2
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    assert [scheduler.lr_lambdas[0](s) for s in range(4)] == pytest.approx([0.5, 1.0, 1.0, 0.5])


def test_validation_is_deterministic_logs_baseline_and_image(tmp_path, monkeypatch):
    module = MAEModule(**MODULE, norm_pix_loss=False, blr=1e-3, warmup_epochs=0, num_images=3)
    logger = TensorBoardLogger(tmp_path)
    images = []
    monkeypatch.setattr(logger.experiment, "add_image", lambda tag, image, step: images.append((tag, image)))
    trainer = L.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=2, accelerator="cpu", logger=logger,
                        enable_checkpointing=False, enable_progress_bar=False, num_sanity_val_steps=0)  # fmt: skip
    data = DigitsDataModule(batch_size=16, normalize=False)
    trainer.fit(module, data)
    first = trainer.validate(module, data, verbose=False)[0]
    second = trainer.validate(module, data, verbose=False)[0]
    assert first["val/loss"] == second["val/loss"]  # the same fixed masks every time
    assert 0 < first["val/mean_baseline_loss"] < 1
    tags = [tag for tag, _ in images]
    assert tags and set(tags) == {"val/reconstruction"}
    image = images[0][1]
    assert image.shape == (3, 3 * 8, 3 * 8) and image.min() >= 0 and image.max() <= 1


def test_baseline_is_the_best_constant_and_zero_for_norm_pix():
    module = MAEModule(**MODULE, norm_pix_loss=True)
    images = torch.rand(4, 1, 8, 8)
    logged = {}
    module.log = lambda name, value, **kwargs: logged.__setitem__(name, float(value))  # type: ignore[method-assign]
    module._evaluate({"image": images}, 0, "test")
    noise = module._fixed_noise(images, 0)
    _, _, mask = module.model(images, 0.75, noise)
    target = module.model.target(images)
    assert logged["test/mean_baseline_loss"] == pytest.approx(float(module.model.forward_loss(images, torch.zeros_like(target), mask)), rel=1e-5)


def test_bad_mask_ratio_is_refused():
    with pytest.raises(ValueError, match="mask_ratio"):
        MAEModule(**{**MODULE, "mask_ratio": 1.0})
