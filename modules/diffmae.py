"""DiffMAE — Diffusion Models as Masked Autoencoders (Wei et al., ICCV 2023, arXiv 2304.03283).

A masked autoencoder whose decoder is a conditional diffusion model. Patchify, embed, add fixed 2-D
sin-cos positions, remove a random 75% of the patches (as MAE); a ViT encoder sees only the **clean
visible** patches (plus the class token). The removed patches ``x_0^m`` are diffused,
``x_t^m = √ᾱ_t · x_0^m + √(1 − ᾱ_t) · ε`` with ``t ~ U{1 … T}`` and the cosine schedule (T = 1000);
the decoder takes the linearly embedded **noisy removed patches** (+ their fixed sin-cos decoder
positions + a timestep embedding) and, conditioned on the encoder, predicts the **clean pixels**
``x̂_0^m`` (not the noise). Loss: per-patch mean squared error averaged over the removed patches,
``E‖x̂_0^m − x_0^m‖²``. Inpainting runs the reverse process on the removed patches only, from pure
noise, keeping the visible patches; here DDIM (η = 0 deterministic, η = 1 DDPM-like), 50 steps.

Decoder: the paper compares a *joint* decoder (MAE-style self-attention over visible + noisy tokens),
a *cross* decoder (noisy tokens only cross-attend to the encoder) and a *cross-self* decoder (each block
cross-attends to the encoder, then self-attends among the noisy tokens). This module implements the
cross-self decoder (default) and the cross decoder (``decoder="cross"``); neither carries visible-patch
tokens (the joint decoder is not implemented), and decoder block ``j`` cross-attends to
the output of encoder block ``depth − 1 − j`` (top-down, a U-shaped pairing of decoder and encoder
blocks; decoder blocks past the encoder's depth use the first encoder block), each projected to the
decoder width by the shared ``decoder_embed``.

Sources. Confirmed from the paper (abstract, introduction and the caption of its Figure 3, "DiffMAE
with cross-self and cross decoder"): a diffusion model conditioned on the visible patches of a masked
image, used as a masked autoencoder, pretraining a recognition encoder and inpainting by iterative
denoising; the decoder's inputs are the noisy patches at randomly sampled noise levels and its outputs
are predicted **pixels**; decoder blocks are connected top-down to the encoder blocks; the cross-self
decoder self-attends in every block, the cross decoder does not. From the project notes (the rest of the
method section could not be retrieved here; there is no official code): the cosine schedule with
T = 1000, the timestep embedding added to the decoder tokens, 75% masking for images, MAE's pretraining
recipe. The paper's optional CLIP-feature target is out of scope. Raw (un-normalised) pixels are the
target: a diffusion model samples pixels, and MAE's per-patch normalisation would need the ground
truth statistics of the removed patches to be undone at sampling time.

Pretraining recipe (as MAE): AdamW β = (0.9, 0.95), weight decay 0.05, ``lr = blr · batch / 256``
with ``blr = 1.5e-4``, linear warm-up then cosine to 0.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torch.optim import AdamW

from litzoo.framework.masked_modelling import MaskedModellingModule
from litzoo.framework.network_args import check_network_kwargs
from litzoo.framework.nn import (
    Block,
    Mlp,
    PatchEmbed,
    gather_tokens,
    init_vit_weights,
    num_kept,
    patchify,
    random_token_mask,
    sincos_pos_embed_2d,
    unpatchify,
)
from litzoo.framework.nn.diffusion import GaussianDiffusion, TimestepEmbedding

# ---------------------------------------------------------------------------------------- blocks


class CrossAttention(nn.Module):
    """Multi-head attention of ``x`` ``(B, N, D)`` queries to ``context`` ``(B, M, D)`` keys/values."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim <= 0 or num_heads <= 0 or dim % num_heads:
            raise ValueError(f"dim ({dim}) must be a positive multiple of num_heads ({num_heads})")
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        batch, tokens, dim = x.shape
        head_dim = dim // self.num_heads
        q = self.q(x).reshape(batch, tokens, self.num_heads, head_dim).transpose(1, 2)  # (B, H, N, Dh)
        k, v = self.kv(context).reshape(batch, context.shape[1], 2, self.num_heads, head_dim).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))


class CrossSelfBlock(nn.Module):
    """Pre-norm decoder block: ``x + cross_attn(norm1(x), norm_context(c))``, then
    ``x + attn(norm2(x))`` (self-attention among the noisy tokens), then ``x + mlp(norm3(x))``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.norm_context = nn.LayerNorm(dim, eps=1e-6)
        self.cross_attn = CrossAttention(dim, num_heads)
        self.self_block = Block(dim, num_heads, mlp_ratio)  # norm → self-attention, norm → MLP

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        x = x + self.cross_attn(self.norm1(x), self.norm_context(context))
        return self.self_block(x)


class CrossBlock(nn.Module):
    """The paper's *cross* decoder block: ``x + cross_attn(norm1(x), norm_context(c))``, then
    ``x + mlp(norm2(x))``. No self-attention, so each noisy token is decoded independently of the
    other noisy tokens, from the encoder features alone."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.norm_context = nn.LayerNorm(dim, eps=1e-6)
        self.cross_attn = CrossAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        x = x + self.cross_attn(self.norm1(x), self.norm_context(context))
        return x + self.mlp(self.norm2(x))


DECODER_BLOCKS = {"cross_self": CrossSelfBlock, "cross": CrossBlock}

# ---------------------------------------------------------------------------------------- the model


class DiffMAEViT(nn.Module):
    """DiffMAE's ViT encoder + diffusion decoder (cross-self by default, or the paper's cross variant).

    Defaults are the smallest published model, ViT-B/16 with a 512-d, 8-block, 16-head decoder.

    Args:
        img_size: side of the square input images.
        patch_size: side of a patch.
        in_chans: image channels.
        embed_dim: encoder width.
        depth: encoder blocks.
        num_heads: encoder attention heads.
        decoder_embed_dim: decoder width.
        decoder_depth: decoder blocks.
        decoder_num_heads: decoder attention heads.
        mlp_ratio: MLP hidden width over the token width (both towers).
        timesteps: diffusion steps ``T`` of the cosine schedule.
        decoder: ``"cross_self"`` (default: cross-attention to the paired encoder block, then
            self-attention among the noisy tokens) or ``"cross"`` (cross-attention only).
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        decoder_embed_dim: int = 512,
        decoder_depth: int = 8,
        decoder_num_heads: int = 16,
        mlp_ratio: float = 4.0,
        timesteps: int = 1000,
        decoder: str = "cross_self",
    ) -> None:
        super().__init__()
        if decoder not in DECODER_BLOCKS:
            raise ValueError(f"decoder must be one of {sorted(DECODER_BLOCKS)}, got {decoder!r}")
        if depth < 1 or decoder_depth < 1:
            raise ValueError(f"depth and decoder_depth must be at least 1, got {depth} and {decoder_depth}")
        self.patch_size, self.in_chans = patch_size, in_chans
        patch_dim = patch_size**2 * in_chans
        self.diffusion = GaussianDiffusion(timesteps)
        # encoder (as MAE)
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + num_patches, embed_dim), requires_grad=False)  # fixed sin-cos
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        # decoder: noisy removed patches in, clean removed patches out
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)  # encoder features -> decoder width
        self.decoder_patch_embed = nn.Linear(patch_dim, decoder_embed_dim)  # noisy pixels -> tokens
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, num_patches, decoder_embed_dim), requires_grad=False)
        self.time_embed = TimestepEmbedding(decoder_embed_dim)
        block = DECODER_BLOCKS[decoder]
        self.decoder_blocks = nn.ModuleList(block(decoder_embed_dim, decoder_num_heads, mlp_ratio) for _ in range(decoder_depth))
        self.decoder_norm = nn.LayerNorm(decoder_embed_dim, eps=1e-6)
        self.decoder_pred = nn.Linear(decoder_embed_dim, patch_dim)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """MAE's initialisation: fixed sin-cos positions, Xavier-uniform linear layers, zero biases,
        LayerNorm at identity, class token ``normal(0, 0.02)``."""
        init_vit_weights(self)
        grid = self.patch_embed.grid_size
        with torch.no_grad():
            self.pos_embed.copy_(sincos_pos_embed_2d(self.pos_embed.shape[-1], grid, cls_token=True)[None])
            self.decoder_pos_embed.copy_(sincos_pos_embed_2d(self.decoder_pos_embed.shape[-1], grid)[None])
        nn.init.normal_(self.cls_token, std=0.02)

    # ---------------------------------------------------------------------------- patches
    def patchify(self, imgs: Tensor) -> Tensor:
        """``(B, C, H, W)`` → ``(B, L, p²·C)``."""
        return patchify(imgs, self.patch_size)

    def unpatchify(self, patches: Tensor) -> Tensor:
        """``(B, L, p²·C)`` → ``(B, C, H, W)``."""
        return unpatchify(patches, self.patch_size, self.in_chans)

    @staticmethod
    def split_ids(mask: Tensor) -> tuple[Tensor, Tensor]:
        """``(B, L)`` mask (nonzero / True = removed, the same count per row) → ``ids_keep``
        ``(B, L_v)`` and ``ids_masked`` ``(B, L_m)``, each in increasing patch order."""
        removed = mask.bool()
        counts = removed.sum(dim=1)
        if (counts != counts[0]).any():
            raise ValueError("every image must have the same number of removed patches")
        order = torch.argsort(removed.to(torch.int8), dim=1, stable=True)  # kept (0) first, then removed (1)
        len_keep = removed.shape[1] - int(counts[0])
        return order[:, :len_keep], order[:, len_keep:]

    # ---------------------------------------------------------------------------- forward
    def forward_encoder(self, imgs: Tensor, ids_keep: Tensor) -> list[Tensor]:
        """Encode the clean visible patches: the ``(B, 1 + L_v, D)`` output of every encoder block
        (class token first), the last one after the final norm."""
        x = gather_tokens(self.patch_embed(imgs) + self.pos_embed[:, 1:], ids_keep)  # only these are seen
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        features = []
        for block in self.blocks:
            x = block(x)
            features.append(x)
        features[-1] = self.norm(x)
        return features

    def predict_x0(self, x_t: Tensor, t: Tensor, ids_masked: Tensor, features: list[Tensor]) -> Tensor:
        """The decoder: noisy removed patches ``x_t`` ``(B, L_m, p²·C)`` at patch indices ``ids_masked``,
        times ``t`` ``(B,)`` and the encoder's ``features`` → predicted clean patches ``(B, L_m, p²·C)``."""
        pos = gather_tokens(self.decoder_pos_embed.expand(x_t.shape[0], -1, -1), ids_masked)
        x = self.decoder_patch_embed(x_t) + pos + self.time_embed(t)[:, None]
        for j, block in enumerate(self.decoder_blocks):
            x = block(x, self.decoder_embed(features[max(len(features) - 1 - j, 0)]))  # top-down pairing
        return self.decoder_pred(self.decoder_norm(x))

    def forward_loss(self, imgs: Tensor, pred: Tensor, mask: Tensor) -> Tensor:
        """Mean over the removed patches of the per-patch mean squared error; ``pred`` ``(B, L, p²·C)``
        (its values at kept patches are ignored), ``mask`` ``(B, L)`` with 1 = removed."""
        per_patch = (pred - self.patchify(imgs)).pow(2).mean(dim=-1)
        return (per_patch * mask).sum() / mask.sum()

    def forward(
        self,
        imgs: Tensor,
        mask_ratio: float = 0.75,
        mask_noise: Tensor | None = None,
        t: Tensor | None = None,
        noise: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``(loss, pred (B, L, p²·C) — zeros at kept patches, mask (B, L) with 1 = removed)``.

        ``mask_noise`` ``(B, L)`` fixes the mask (as MAE's ``noise``), ``t`` ``(B,)`` the diffusion times
        (default uniform on 1 … T) and ``noise`` ``(B, L_m, p²·C)`` the Gaussian ``ε``.
        """
        token_mask = random_token_mask(imgs.shape[0], self.patch_embed.num_patches, mask_ratio, noise=mask_noise, device=imgs.device)
        mask = token_mask.mae_mask(imgs.dtype)
        ids_keep, ids_masked = self.split_ids(mask)
        patches = self.patchify(imgs)
        x0 = gather_tokens(patches, ids_masked)
        if t is None:
            t = self.diffusion.sample_timesteps(imgs.shape[0], imgs.device)
        if noise is None:
            noise = torch.randn_like(x0)
        x_t = self.diffusion.q_sample(x0, t, noise)
        pred_masked = self.predict_x0(x_t, t, ids_masked, self.forward_encoder(imgs, ids_keep))
        pred = torch.zeros_like(patches).scatter(1, ids_masked[..., None].expand_as(pred_masked), pred_masked)
        return self.forward_loss(imgs, pred, mask), pred, mask

    def forward_features(self, imgs: Tensor) -> Tensor:
        """``(B, D)``: the class token after the final norm, the encoder run on **all** patches."""
        ids_all = torch.arange(self.patch_embed.num_patches, device=imgs.device).expand(imgs.shape[0], -1)
        return self.forward_encoder(imgs, ids_all)[-1][:, 0]

    # ---------------------------------------------------------------------------- sampling
    @torch.no_grad()
    def inpaint(self, imgs: Tensor, mask: Tensor, steps: int = 50, eta: float = 0.0, generator: torch.Generator | None = None) -> Tensor:
        """Fill the removed patches of ``imgs`` by DDIM sampling from pure noise over ``steps`` steps.

        Args:
            imgs: ``(B, C, H, W)``.
            mask: ``(B, L)``, nonzero / True = removed (the same count per image).
            steps: reverse steps from ``T`` to 0.
            eta: 0 = deterministic DDIM, 1 = DDPM-like ancestral noise.
            generator: CPU generator for the initial noise and the ancestral noise (reproducible samples).

        Returns ``(B, C, H, W)``; the kept patches are bit-identical to ``imgs``.
        """
        ids_keep, ids_masked = self.split_ids(mask)
        patches = self.patchify(imgs)
        features = self.forward_encoder(imgs, ids_keep)  # the visible patches are encoded once

        def gaussian() -> Tensor:
            shape = (*ids_masked.shape, patches.shape[-1])
            return torch.randn(shape, generator=generator, dtype=patches.dtype).to(imgs.device)

        x = gaussian()
        for t, t_prev in self.diffusion.ddim_timesteps(steps):
            times = torch.full((imgs.shape[0],), t, device=imgs.device, dtype=torch.long)
            x0_pred = self.predict_x0(x, times, ids_masked, features)
            x = self.diffusion.ddim_step(x, x0_pred, t, t_prev, eta, noise=gaussian() if eta > 0 else None)
        filled = patches.scatter(1, ids_masked[..., None].expand_as(x), x)
        return self.unpatchify(filled)


# ------------------------------------------------------------------------------ optimizer default


def adamw_diffmae(params: Any, lr: float = 1.5e-4, betas: tuple[float, float] = (0.9, 0.95), weight_decay: float = 0.05) -> AdamW:
    """AdamW with MAE's pretraining settings (β = (0.9, 0.95), wd 0.05), which DiffMAE follows. ``lr``
    is replaced by ``blr · effective_batch / 256`` when :class:`DiffMAEModule` has ``blr`` set."""
    return AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay)


# ------------------------------------------------------------------------------ the LightningModule


class DiffMAEModule(MaskedModellingModule):
    """DiffMAE pretraining of :class:`DiffMAEViT` on ``{"image": ...}`` batches.

    The Lightning side is :class:`litzoo.framework.masked_modelling.MaskedModellingModule`. Logs ``train/loss``;
    on validation / test, with the mask, ``t`` and ``ε`` of batch ``i`` drawn from
    ``torch.Generator().manual_seed(val_seed + i)`` (comparable across epochs): ``val/loss`` (one-step
    ``x̂_0`` masked-patch MSE at random ``t``), ``val/loss_mid_t`` (the same at ``t = T/2``),
    ``val/mean_baseline_loss`` (every removed pixel predicted as the batch's mean removed pixel), and,
    on the first batch, ``val/inpaint_mse`` (masked-patch MSE of DDIM inpainting). The first
    ``num_images`` images go to TensorBoard each validation epoch as rows original / masked / inpainted.

    Args:
        mask_ratio: fraction of patches removed (paper: 0.75 for images).
        sample_steps: DDIM steps for inpainting (validation images, :meth:`inpaint`).
        eta: DDIM η for inpainting (0 deterministic, 1 DDPM-like).
        blr: base learning rate; ``lr = blr · effective_batch / 256``. ``None`` keeps the optimizer's lr.
        warmup_epochs: linear warm-up length of the default schedule.
        val_seed: seed of the fixed validation masks, times and noise.
        num_images: images in the validation grid (0 = none).
        optimizer: called with parameter groups; default AdamW(β (0.9, 0.95), wd 0.05), no weight decay
            on 1-D parameters nor on the class token and position embeddings.
        lr_scheduler: called with the optimizer; ``None`` = warm-up then cosine to 0, per step.
        **net_kwargs: the :class:`DiffMAEViT`'s arguments, ``img_size`` … ``timesteps``, ``decoder``.
    """

    grid_tag = "val/inpainting"

    def __init__(
        self,
        mask_ratio: float = 0.75,
        sample_steps: int = 50,
        eta: float = 0.0,
        blr: float | None = 1.5e-4,
        warmup_epochs: float = 40.0,
        val_seed: int = 0,
        num_images: int = 8,
        optimizer: OptimizerCallable = adamw_diffmae,
        lr_scheduler: LRSchedulerCallable | None = None,
        **net_kwargs: Any,
    ) -> None:
        check_network_kwargs(DiffMAEViT, net_kwargs, type(self).__name__)
        net = DiffMAEViT(**net_kwargs)
        super().__init__(net, mask_ratio, blr, warmup_epochs, val_seed, num_images, optimizer, lr_scheduler)
        if mask_ratio <= 0:
            raise ValueError(f"mask_ratio must be positive (DiffMAE needs removed patches to diffuse), got {mask_ratio}")
        if not 1 <= sample_steps <= net.diffusion.timesteps:
            raise ValueError(f"sample_steps must be in [1, timesteps = {net.diffusion.timesteps}], got {sample_steps}")
        if not 0.0 <= eta <= 1.0:
            raise ValueError(f"eta must be in [0, 1], got {eta}")
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])

    def forward(
        self, imgs: Tensor, mask_noise: Tensor | None = None, t: Tensor | None = None, noise: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        return self.model(imgs, self.mask_ratio, mask_noise, t, noise)

    def target(self, inputs: Tensor) -> Tensor:
        """Raw pixel patches: the diffusion samples pixels (no per-patch normalisation)."""
        return self.model.patchify(inputs)

    def inpaint(self, images: Tensor, mask: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """``images`` with the removed patches (``mask`` ``(B, L)``, True = removed) sampled by DDIM."""
        return self.model.inpaint(images, mask, self.hparams.sample_steps, self.hparams.eta, generator)

    # ------------------------------------------------------------------------------- evaluation
    def fixed_draws(self, images: Tensor, batch_idx: int) -> tuple[torch.Generator, Tensor, Tensor, Tensor]:
        """The generator and the mask noise ``(B, L)``, times ``(B,)`` and ``ε`` of evaluation batch ``batch_idx``,
        drawn in that order from :meth:`fixed_generator` (the generator then serves the inpainting)."""
        generator = self.fixed_generator(batch_idx)
        mask_noise = self._fixed_noise(images, batch_idx, generator)
        t = self.model.diffusion.sample_timesteps(len(images), images.device, generator)
        removed = self.num_mask_units - num_kept(self.num_mask_units, self.mask_ratio)
        noise = torch.randn(len(images), removed, self.model.patchify(images[:1]).shape[-1], generator=generator).to(
            images.device, images.dtype
        )
        return generator, mask_noise, t, noise

    def _evaluate(self, batch: dict[str, Tensor], batch_idx: int, stage: str) -> None:
        images = self.inputs(batch)
        generator, mask_noise, t, noise = self.fixed_draws(images, batch_idx)
        loss, _, mask = self(images, mask_noise, t, noise)
        self.log_losses(stage, images, loss, mask)
        mid_loss, _, _ = self(images, mask_noise, torch.full_like(t, self.model.diffusion.timesteps // 2), noise)
        self.log(f"{stage}/loss_mid_t", mid_loss, sync_dist=True, batch_size=len(images))
        if batch_idx == 0:
            inpainted = self.inpaint(images, mask, generator)
            inpaint_loss = self.model.forward_loss(inpainted, self.target(images), mask)
            self.log(f"{stage}/inpaint_mse", inpaint_loss, sync_dist=True, batch_size=len(images))
            if self.keeps_grid(stage, batch_idx):
                self.keep_grid(images, mask, inpainted)
