"""DiffMAE: the cosine schedule and q_sample by hand, the decoder's inputs (noisy removed patches only,
conditioned on the visible ones), the masked-patch loss, DDIM inpainting with an oracle, and the
LightningModule's recipe (lr from blr, weight-decay groups, fixed validation draws, images)."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from litzoo.datamodules.digits import DigitsDataModule
from litzoo.framework.nn import gather_tokens, random_token_mask
from litzoo.framework.nn.diffusion import GaussianDiffusion, TimestepEmbedding, cosine_alphas_cumprod
from litzoo.modules.diffmae import DiffMAEModule, DiffMAEViT

TINY = dict(img_size=8, patch_size=2, in_chans=2, embed_dim=16, depth=2, num_heads=2,
            decoder_embed_dim=12, decoder_depth=3, decoder_num_heads=3, mlp_ratio=2.0, timesteps=1000)  # fmt: skip


def tiny(seed: int = 0) -> DiffMAEViT:
    torch.manual_seed(seed)
    model = DiffMAEViT(**TINY)
    with torch.no_grad():  # non-trivial values everywhere (zero biases / unit norms would hide mistakes)
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def fixed_mask(batch: int = 3, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    return random_token_mask(batch, 16, 0.75, noise=torch.rand(batch, 16, generator=generator))


# ------------------------------------------------------------------------------------ the schedule


def _cosine_by_hand(t: int, T: int = 1000, s: float = 0.008) -> float:
    f = lambda u: math.cos((u / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    return f(t) / f(0)


def test_cosine_schedule_values():
    abar = cosine_alphas_cumprod(1000)
    assert abar.shape == (1001,) and abar[0] == 1.0
    assert (abar[1:] < abar[:-1]).all()  # strictly decreasing
    assert abar[-1] < 1e-8  # pure noise at t = T
    for t in (1, 10, 250, 500, 750, 990):
        assert float(abar[t]) == pytest.approx(_cosine_by_hand(t), rel=1e-9, abs=1e-12)
    assert float(abar[500]) == pytest.approx(0.4938, abs=1e-3)  # roughly one half at the middle
    # only the last β (= 1 exactly without clipping) is clipped to 0.999
    assert float(abar[1000]) == pytest.approx(float(abar[999]) * 0.001, rel=1e-9)


def test_q_sample_formula():
    diffusion = GaussianDiffusion(1000)
    x0 = torch.tensor([[2.0, -1.0], [0.5, 3.0]])
    eps = torch.tensor([[1.0, 0.5], [-2.0, 0.0]])
    t = torch.tensor([500, 0])
    out = diffusion.q_sample(x0, t, eps)
    a = _cosine_by_hand(500)
    expected0 = [math.sqrt(a) * 2.0 + math.sqrt(1 - a) * 1.0, math.sqrt(a) * -1.0 + math.sqrt(1 - a) * 0.5]
    assert out[0].tolist() == pytest.approx(expected0, rel=1e-6)
    assert torch.equal(out[1], x0[1])  # t = 0 is clean
    assert diffusion.q_sample(x0, torch.tensor([1000, 1000]), eps) == pytest.approx(eps, abs=1e-3)  # t = T is noise


def test_ddim_step_deterministic_and_exact_at_zero():
    diffusion = GaussianDiffusion(1000)
    x0 = torch.randn(2, 5)
    eps = torch.randn(2, 5)
    x_t = diffusion.q_sample(x0, torch.tensor([700, 700]), eps)
    # with the true x0 the DDIM (η = 0) update lands exactly on q_sample(x0, t', ε): the same ε is kept
    x_prev = diffusion.ddim_step(x_t, x0, 700, 300)
    torch.testing.assert_close(x_prev, diffusion.q_sample(x0, torch.tensor([300, 300]), eps), rtol=1e-5, atol=1e-5)
    assert torch.equal(diffusion.ddim_step(x_t, x0, 700, 0), x0)
    pairs = diffusion.ddim_timesteps(4)
    assert pairs == [(1000, 750), (750, 500), (500, 250), (250, 0)]


def test_timestep_embedding_is_sinusoidal_then_mlp():
    embed = TimestepEmbedding(8)
    t = torch.tensor([0, 3, 999])
    omega = [1 / 10000 ** (i / 4) for i in range(4)]
    features = torch.tensor([[math.sin(u * w) for w in omega] + [math.cos(u * w) for w in omega] for u in (0, 3, 999)])
    torch.testing.assert_close(embed(t), embed.mlp(features))
    assert not torch.allclose(embed(t)[1], embed(t)[2])


# -------------------------------------------------------------------------------- model and loss


def test_forward_is_the_decoder_on_q_sample_of_the_removed_patches():
    model = tiny()
    imgs = torch.randn(3, 2, 8, 8)
    mask_noise = torch.rand(3, 16)
    t = torch.tensor([5, 500, 999])
    eps = torch.randn(3, 12, 8)
    loss, pred, mask = model(imgs, 0.75, mask_noise, t, eps)
    token_mask = random_token_mask(3, 16, 0.75, noise=mask_noise)
    assert torch.equal(mask, token_mask.mae_mask())
    ids_keep, ids_masked = model.split_ids(mask)
    assert torch.equal(mask.gather(1, ids_masked), torch.ones(3, 12)) and torch.equal(mask.gather(1, ids_keep), torch.zeros(3, 4))
    x0 = gather_tokens(model.patchify(imgs), ids_masked)
    abar = model.diffusion.alphas_cumprod[t][:, None, None]
    x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * eps
    expected = model.predict_x0(x_t, t, ids_masked, model.forward_encoder(imgs, ids_keep))
    torch.testing.assert_close(gather_tokens(pred, ids_masked), expected)
    assert torch.equal(gather_tokens(pred, ids_keep), torch.zeros(3, 4, 8))
    torch.testing.assert_close(loss, (expected - x0).pow(2).mean())


def test_loss_is_only_on_removed_patches():
    model = tiny()
    imgs = torch.randn(3, 2, 8, 8)
    loss, pred, mask = model(imgs, 0.75, torch.rand(3, 16), torch.tensor([1, 2, 3]), torch.randn(3, 12, 8))
    kept = (1 - mask)[..., None]
    assert torch.equal(model.forward_loss(imgs, pred + 5.0 * kept * torch.randn_like(pred), mask), loss)
    assert model.forward_loss(imgs, pred + 0.1 * mask[..., None], mask) != loss


def test_decoder_never_sees_the_clean_removed_pixels_but_sees_the_visible_ones():
    model = tiny()
    token_mask = fixed_mask()
    mask = token_mask.mae_mask()
    ids_keep, ids_masked = model.split_ids(mask)
    imgs = torch.randn(3, 2, 8, 8)
    removed_pixels = model.unpatchify(mask[..., None].expand(-1, -1, 8).contiguous()).bool()
    other = torch.where(removed_pixels, torch.randn_like(imgs) * 3, imgs)  # new clean pixels where removed
    assert not torch.equal(other, imgs)
    x_t, t = torch.randn(3, 12, 8), torch.tensor([10, 500, 900])
    pred = model.predict_x0(x_t, t, ids_masked, model.forward_encoder(imgs, ids_keep))
    pred_other = model.predict_x0(x_t, t, ids_masked, model.forward_encoder(other, ids_keep))
    assert torch.equal(pred, pred_other)  # noisy input held fixed: the clean removed pixels do not matter
    # ... so with fixed ε and t the loss changes only through the target (and the noisy input)
    visible = torch.where(removed_pixels, imgs, imgs + torch.randn_like(imgs))
    pred_visible = model.predict_x0(x_t, t, ids_masked, model.forward_encoder(visible, ids_keep))
    assert (pred_visible - pred).abs().amax(dim=(1, 2)).min() > 1e-4  # every image's prediction moves
    # the noisy input and the time both matter
    assert not torch.allclose(model.predict_x0(x_t + 1, t, ids_masked, model.forward_encoder(imgs, ids_keep)), pred)
    assert not torch.allclose(model.predict_x0(x_t, t.flip(0), ids_masked, model.forward_encoder(imgs, ids_keep)), pred)


def test_cross_decoder_decodes_each_noisy_token_alone_and_cross_self_mixes_them():
    """The paper's two decoders: without self-attention a token's prediction depends on its own noisy
    patch (and the encoder) only; with it, changing one noisy patch moves the others' predictions."""
    token_mask = fixed_mask()
    imgs = torch.randn(3, 2, 8, 8)
    x_t, t = torch.randn(3, 12, 8), torch.tensor([10, 500, 900])
    changed = x_t.clone()
    changed[:, 0] += 5.0  # only the first removed patch's noisy input changes
    moved = {}
    for decoder in ("cross", "cross_self"):
        torch.manual_seed(0)
        model = DiffMAEViT(**TINY, decoder=decoder).eval()
        ids_keep, ids_masked = model.split_ids(token_mask.mae_mask())
        features = model.forward_encoder(imgs, ids_keep)
        pred, pred_changed = model.predict_x0(x_t, t, ids_masked, features), model.predict_x0(changed, t, ids_masked, features)
        assert (pred_changed[:, 0] - pred[:, 0]).abs().max() > 1e-3
        moved[decoder] = (pred_changed[:, 1:] - pred[:, 1:]).abs().max().item()
    assert moved["cross"] < 1e-6
    assert moved["cross_self"] > 1e-3
    with pytest.raises(ValueError, match="decoder must be one of"):
        DiffMAEViT(**TINY, decoder="joint")


def test_forward_features_is_the_unmasked_class_token():
    model = tiny()
    imgs = torch.randn(2, 2, 8, 8)
    features = model.forward_features(imgs)
    assert features.shape == (2, 16)
    changed = imgs.clone()
    changed[:, :, 6:, 6:] += 1.0  # the last patch: no patch is hidden from the features
    assert not torch.allclose(model.forward_features(changed), features)


# ------------------------------------------------------------------------------------ inpainting


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_with_an_oracle_reproduces_the_image(eta):
    model = tiny()
    imgs = torch.randn(3, 2, 8, 8)
    mask = fixed_mask().drop
    _, ids_masked = model.split_ids(mask)
    truth = gather_tokens(model.patchify(imgs), ids_masked)
    calls = []

    def oracle(x_t, t, ids, features):
        calls.append(int(t[0]))
        assert torch.equal(ids, ids_masked)
        return truth

    model.predict_x0 = oracle  # type: ignore[method-assign]
    out = model.inpaint(imgs, mask, steps=7, eta=eta, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, imgs, rtol=0, atol=1e-5)
    assert calls == [t for t, _ in model.diffusion.ddim_timesteps(7)] and calls[0] == 1000


def test_inpainting_keeps_visible_patches_bit_identical_and_fills_the_removed():
    model = tiny()
    imgs = torch.randn(3, 2, 8, 8)
    mask = fixed_mask().drop
    out = model.inpaint(imgs, mask, steps=5, generator=torch.Generator().manual_seed(0))
    patches, filled = model.patchify(imgs), model.patchify(out)
    assert torch.equal(filled[~mask], patches[~mask])
    assert not torch.allclose(filled[mask], patches[mask])
    again = model.inpaint(imgs, mask, steps=5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again, out)  # reproducible with a seeded generator
    with pytest.raises(ValueError, match="same number"):
        model.inpaint(imgs, torch.cat([mask[:2], torch.zeros(1, 16, dtype=torch.bool)]), steps=2)


# ----------------------------------------------------------------------------- LightningModule

MODULE = dict(img_size=8, patch_size=2, in_chans=1, embed_dim=16, depth=1, num_heads=2,
              decoder_embed_dim=8, decoder_depth=1, decoder_num_heads=2, mask_ratio=0.75, sample_steps=4)  # fmt: skip


def test_lr_from_blr_warmup_and_weight_decay_groups(tmp_path):
    module = DiffMAEModule(**MODULE, blr=1e-3, warmup_epochs=1)
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
    assert {"model.cls_token", "model.norm.weight", "model.decoder_blocks.0.cross_attn.q.bias"} <= skipped
    assert all(p.ndim >= 2 for p in decay["params"])
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    assert [scheduler.lr_lambdas[0](s) for s in range(4)] == pytest.approx([0.5, 1.0, 1.0, 0.5])


def test_validation_is_deterministic_logs_metrics_and_image(tmp_path, monkeypatch):
    module = DiffMAEModule(**MODULE, blr=1e-3, warmup_epochs=0, num_images=3)
    logger = TensorBoardLogger(tmp_path)
    images = []
    monkeypatch.setattr(logger.experiment, "add_image", lambda tag, image, step: images.append((tag, image)))
    trainer = L.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=2, accelerator="cpu", logger=logger,
                        enable_checkpointing=False, enable_progress_bar=False, num_sanity_val_steps=0)  # fmt: skip
    data = DigitsDataModule(batch_size=16, normalize=False)
    trainer.fit(module, data)
    first = trainer.validate(module, data, verbose=False)[0]
    second = trainer.validate(module, data, verbose=False)[0]
    assert first == second  # the same masks, times, noise and sampling noise every time
    assert {"val/loss", "val/loss_mid_t", "val/mean_baseline_loss", "val/inpaint_mse"} <= set(first)
    assert 0 < first["val/mean_baseline_loss"] < 1
    assert images and {tag for tag, _ in images} == {"val/inpainting"}
    image = images[0][1]
    assert image.shape == (3, 3 * 8, 3 * 8) and image.min() >= 0 and image.max() <= 1


def test_bad_hyperparameters_are_refused():
    for bad in ({"mask_ratio": 1.0}, {"mask_ratio": 0.0}, {"sample_steps": 2000}, {"eta": 2.0}, {"blr": 0.0}):
        with pytest.raises(ValueError):
            DiffMAEModule(**{**MODULE, **bad})
