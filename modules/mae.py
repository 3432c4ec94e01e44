"""MAE — Masked Autoencoders Are Scalable Vision Learners (He et al., CVPR 2022).

Patchify, embed, add fixed 2-D sin-cos positions, remove a random 75% of the patch tokens per image;
a ViT encoder sees only the visible tokens (plus the class token); a light decoder receives the
encoded visible tokens and a shared learned ``mask_token`` for every removed one, restored to image
order, with its own fixed sin-cos positions, and predicts the ``p²·C`` pixels of every patch. The loss
is the per-patch mean squared error averaged over the **removed** patches only; with
``norm_pix_loss`` the target is each patch standardised by its own mean and ``sqrt(var + 1e-6)``.
Reference: facebookresearch/mae ``models_mae.py``, ``util/pos_embed.py``, ``main_pretrain.py``,
``PRETRAIN.md``. Parameter names are the official ones, so released ``.pth`` files load key for key.

Pretraining recipe (paper / PRETRAIN.md): AdamW β = (0.9, 0.95), weight decay 0.05,
``lr = blr · effective_batch / 256`` with ``blr = 1.5e-4``, linear warm-up (40 epochs) then cosine to 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torch.optim import AdamW

from litzoo.framework.checkpoints import (
    convert_official_state_dict,
    load_checkpoint,
    load_state_dict_checked,
    register_official_key_map,
    unwrap_state_dict,
)
from litzoo.framework.errors import LitzooError
from litzoo.framework.masked_modelling import MaskedModellingModule
from litzoo.framework.network_args import check_network_kwargs
from litzoo.framework.nn import (
    Block,
    PatchEmbed,
    denormalize_patches,
    gather_tokens,
    init_vit_weights,
    normalized_pixel_target,
    patchify,
    random_token_mask,
    restore_tokens,
    sincos_pos_embed_2d,
    unpatchify,
)

# ---------------------------------------------------------------------------------------- the model


class MaskedAutoencoderViT(nn.Module):
    """MAE's ViT encoder + light ViT decoder (official module names).

    Defaults are the paper's smallest model, ViT-B/16 with the 512-d, 8-block, 16-head decoder,
    trained with ``norm_pix_loss`` (as the released checkpoints).

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
        norm_pix_loss: regress per-patch normalised pixels instead of raw pixels.
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
        norm_pix_loss: bool = True,
    ) -> None:
        super().__init__()
        if depth < 1 or decoder_depth < 1:
            raise ValueError(f"depth and decoder_depth must be at least 1, got {depth} and {decoder_depth}")
        self.patch_size, self.in_chans, self.norm_pix_loss = patch_size, in_chans, norm_pix_loss
        # encoder
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + num_patches, embed_dim), requires_grad=False)  # fixed sin-cos
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        # decoder
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, 1 + num_patches, decoder_embed_dim), requires_grad=False)
        self.decoder_blocks = nn.ModuleList(Block(decoder_embed_dim, decoder_num_heads, mlp_ratio) for _ in range(decoder_depth))
        self.decoder_norm = nn.LayerNorm(decoder_embed_dim, eps=1e-6)
        self.decoder_pred = nn.Linear(decoder_embed_dim, patch_size**2 * in_chans)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """MAE's initialisation: fixed sin-cos positions (class slot zero), Xavier-uniform linear layers
        and patch projection (on its flattened view), zero biases, LayerNorm at identity, class and mask
        tokens ``normal(0, 0.02)``. (The official code keeps Conv2d's default bias for the patch
        projection; here it starts at zero like every other bias.)"""
        init_vit_weights(self)
        grid = self.patch_embed.grid_size
        with torch.no_grad():
            self.pos_embed.copy_(sincos_pos_embed_2d(self.pos_embed.shape[-1], grid, cls_token=True)[None])
            self.decoder_pos_embed.copy_(sincos_pos_embed_2d(self.decoder_pos_embed.shape[-1], grid, cls_token=True)[None])
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)

    # ---------------------------------------------------------------------------- patches
    def patchify(self, imgs: Tensor) -> Tensor:
        """``(B, C, H, W)`` → ``(B, L, p²·C)``."""
        return patchify(imgs, self.patch_size)

    def unpatchify(self, patches: Tensor) -> Tensor:
        """``(B, L, p²·C)`` → ``(B, C, H, W)``."""
        return unpatchify(patches, self.patch_size, self.in_chans)

    # ---------------------------------------------------------------------------- forward
    def forward_encoder(self, imgs: Tensor, mask_ratio: float, noise: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Encode the visible patches: ``(B, 1 + len_keep, D)`` latents (class token first), the
        float mask ``(B, L)`` (1 = removed) and ``ids_restore`` ``(B, L)``."""
        x = self.patch_embed(imgs) + self.pos_embed[:, 1:]  # (B, L, D)
        token_mask = random_token_mask(x.shape[0], x.shape[1], mask_ratio, noise=noise, device=x.device)
        x = gather_tokens(x, token_mask.ids_keep)  # (B, len_keep, D): the encoder sees only these
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.norm(x), token_mask.mae_mask(x.dtype), token_mask.ids_restore

    def forward_decoder(self, latent: Tensor, ids_restore: Tensor) -> Tensor:
        """``(B, 1 + len_keep, D)`` latents → ``(B, L, p²·C)`` predictions for every patch."""
        x = self.decoder_embed(latent)
        patches = restore_tokens(x[:, 1:], self.mask_token, ids_restore)  # mask tokens in the removed places
        x = torch.cat([x[:, :1], patches], dim=1) + self.decoder_pos_embed
        for block in self.decoder_blocks:
            x = block(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]  # drop the class token

    def target(self, imgs: Tensor) -> Tensor:
        """``(B, L, p²·C)`` regression target: the patches, per-patch normalised with ``norm_pix_loss``."""
        patches = self.patchify(imgs)
        return normalized_pixel_target(patches) if self.norm_pix_loss else patches

    def forward_loss(self, imgs: Tensor, pred: Tensor, mask: Tensor) -> Tensor:
        """Mean over the removed patches of the per-patch mean squared error."""
        per_patch = (pred - self.target(imgs)).pow(2).mean(dim=-1)  # (B, L)
        return (per_patch * mask).sum() / mask.sum()

    def forward(self, imgs: Tensor, mask_ratio: float = 0.75, noise: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """``(loss, pred (B, L, p²·C), mask (B, L) with 1 = removed)``; ``noise`` ``(B, L)`` fixes the mask."""
        latent, mask, ids_restore = self.forward_encoder(imgs, mask_ratio, noise)
        pred = self.forward_decoder(latent, ids_restore)
        return self.forward_loss(imgs, pred, mask), pred, mask

    def forward_features(self, imgs: Tensor) -> Tensor:
        """``(B, D)``: the class token after the final norm, the encoder run on **all** patches
        (no masking) — the features MAE's linear probe reads (``main_linprobe.py``, cls-token pooling)."""
        x = self.patch_embed(imgs) + self.pos_embed[:, 1:]
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)[:, 0]

    def reconstruct(self, imgs: Tensor, pred: Tensor, mask: Tensor) -> Tensor:
        """Images with the removed patches replaced by the predictions, in pixel space
        (``pred·mask + x·(1 − mask)``); norm-pix predictions are mapped back with each ground-truth
        patch's mean and std."""
        patches = self.patchify(imgs)
        pixels = denormalize_patches(pred, patches) if self.norm_pix_loss else pred
        return self.unpatchify(pixels * mask[..., None] + patches * (1 - mask[..., None]))

    # --------------------------------------------------------------------- released weights
    @classmethod
    def from_official_checkpoint(cls, path: str, **kwargs: Any) -> MaskedAutoencoderViT:
        """A model built with ``kwargs`` and the weights of a released MAE ``.pth``.

        Full checkpoints (``mae_pretrain_vit_*_full.pth``, ``mae_visualize_vit_*.pth``) load key for
        key. Encoder-only checkpoints (``mae_pretrain_vit_{base,large,huge}.pth``) load the encoder and
        warn that the decoder keeps its fresh initialisation (reconstructions are then meaningless).
        Pass ``norm_pix_loss=False`` for the ``mae_visualize`` models (trained on raw pixels).

        Raises:
            LitzooError: missing encoder keys, unexpected keys (e.g. a fine-tuned ``head``) or other shapes.
        """
        model = cls(**kwargs)
        state = convert_official_state_dict("mae", unwrap_state_dict(load_checkpoint(path), path))
        fit = load_state_dict_checked(model, state, path, what="MAE model", may_miss=("decoder_*", "mask_token"))
        missing = fit.tolerated_missing
        if missing:
            rank_zero_warn(
                f"checkpoint '{path}' is encoder-only: {len(missing)} decoder keys are missing ({', '.join(missing[:3])} ...); "
                "the decoder keeps its fresh initialisation, so reconstructions are meaningless until it is trained "
                "(the '_full' / 'mae_visualize' checkpoints include the decoder)"
            )
        return model


@register_official_key_map("mae")
def official_mae_key_map(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """facebookresearch/mae weights -> :class:`MaskedAutoencoderViT`: the names are the same (timm ViT), so
    only a ``{'model': ...}`` wrapper and ``module.`` prefixes are removed. Encoder-only files such as
    ``mae_pretrain_vit_base.pth`` give encoder keys only (:meth:`MaskedAutoencoderViT.from_official_checkpoint`
    reports the missing decoder).

    Raises:
        LitzooError: not an MAE / timm ViT state dict (no ``patch_embed.proj.weight``).
    """
    if isinstance(state.get("model"), Mapping) or all(k.startswith("module.") for k in state):
        state = unwrap_state_dict(state)
    if "patch_embed.proj.weight" not in state:
        raise LitzooError("official mae state dict: no 'patch_embed.proj.weight', so not an MAE / timm ViT checkpoint")
    return dict(state)


# ------------------------------------------------------------------------------ optimizer default


def adamw_mae(params: Any, lr: float = 1.5e-4, betas: tuple[float, float] = (0.9, 0.95), weight_decay: float = 0.05) -> AdamW:
    """AdamW with MAE's pretraining settings (β = (0.9, 0.95), wd 0.05). ``lr`` is replaced by
    ``blr · effective_batch / 256`` when :class:`MAEModule` has ``blr`` set."""
    return AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay)


# ------------------------------------------------------------------------------ the LightningModule


class MAEModule(MaskedModellingModule):
    """Masked-autoencoder pretraining of :class:`MaskedAutoencoderViT` on ``{"image": ...}`` batches.

    The Lightning side is :class:`litzoo.framework.masked_modelling.MaskedModellingModule`: logs ``train/loss``;
    on validation ``val/loss`` (masked-patch loss on held-out images with a fixed mask: the noise of batch
    ``i`` is drawn from ``torch.Generator().manual_seed(val_seed + i)``, so epochs are comparable) and
    ``val/mean_baseline_loss``, the same loss for the best constant predictor (0 for norm-pix targets, the
    mean pixel otherwise). Every validation epoch a TensorBoard image ``val/reconstruction`` shows rows of
    originals, masked inputs (removed patches at the image's minimum) and reconstructions in pixel space.
    :meth:`forward_features` gives the class token of the encoder run on all patches (what probes read).

    Args:
        mask_ratio: fraction of patches removed (0.75).
        blr: base learning rate; the optimizer's lr becomes ``blr · effective_batch / 256`` with
            ``effective_batch = DataModule.batch_size × devices × nodes × accumulate_grad_batches``.
            ``None`` keeps the optimizer's own lr.
        warmup_epochs: linear warm-up of the default schedule, in epochs (converted to steps).
        val_seed: seed of the fixed validation masks.
        num_images: images in the TensorBoard reconstruction grid.
        optimizer: called with parameter groups; default AdamW(β (0.9, 0.95), wd 0.05). No weight decay
            on 1-D parameters (biases, norms) nor on ``cls_token`` / ``mask_token`` / position embeddings
            (timm's ``no_weight_decay`` list; the official pretraining script, through timm 0.3.2's
            ``add_weight_decay``, decays the two 3-D tokens — a negligible difference).
        lr_scheduler: called with the optimizer; ``None`` = warm-up then cosine to 0, per step.
        **net_kwargs: the :class:`MaskedAutoencoderViT`'s arguments, ``img_size`` … ``norm_pix_loss``
            (defaults: ViT-B/16, decoder 512-d × 8, norm-pix targets).
    """

    def __init__(
        self,
        mask_ratio: float = 0.75,
        blr: float | None = 1.5e-4,
        warmup_epochs: float = 40.0,
        val_seed: int = 0,
        num_images: int = 8,
        optimizer: OptimizerCallable = adamw_mae,
        lr_scheduler: LRSchedulerCallable | None = None,
        **net_kwargs: Any,
    ) -> None:
        check_network_kwargs(MaskedAutoencoderViT, net_kwargs, type(self).__name__)
        net = MaskedAutoencoderViT(**net_kwargs)
        super().__init__(net, mask_ratio, blr, warmup_epochs, val_seed, num_images, optimizer, lr_scheduler)
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        self.example_input_array = torch.zeros(2, net.in_chans, *net.patch_embed.input_hw)
