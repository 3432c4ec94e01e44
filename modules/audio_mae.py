"""Audio-MAE — Masked Autoencoders that Listen (Huang et al., NeurIPS 2022).

A log-mel spectrogram ``(B, 1, T, F)`` (time × frequency; Kaldi fbank, see
``litzoo.framework.data.audio``) is cut into non-overlapping ``p × p`` patches, a ``(T/p) × (F/p)`` grid
in time-major order with fixed 2-D sin-cos positions. As in MAE a random 80% of the patches is
removed per example; a ViT encoder sees the rest (plus a class token). The decoder puts a learned
mask token in every removed place and — Audio-MAE's change — runs **local window attention**:
Swin-style blocks attending inside ``(4, 4)`` windows of the patch grid, every second block with
windows shifted by ``(2, 0)`` (time only) so neighbouring windows exchange information. The loss is
the mean squared error over removed patches, on per-patch normalised targets (``norm_pix_loss``,
the AS-2M pretraining script). Reference: facebookresearch/AudioMAE ``models_mae.py``
(``decoder_mode=1``: 16 Swin blocks, 16 heads, window (4, 4), shifts alternating (0, 0) / (2, 0),
the class token dropped before the decoder blocks), ``models_vit.py`` (fine-tuning: mean-pooled
patch tokens → ``fc_norm`` → ``head``, with 2-D time/frequency token masking as augmentation).

Differences: the official decoder blocks are timm's *Swin-V2-CR* ``SwinTransformerBlock``
(``timm_patch/swin_transformer.py``: post-norm branches ``x + norm1(attn(x))``, scaled *cosine*
attention with a learned per-head temperature ``tau`` and a log-spaced continuous position bias from a
small ``meta_mlp``); ours are pre-norm Swin blocks with plain dot-product attention and no position
bias (the tokens carry absolute sin-cos positions already). So the official decoder blocks' weights
cannot be loaded (:func:`convert_official_audio_mae_state_dict` reports them); the encoder, the
decoder's embedding / norm / prediction and the fine-tuned classifier load exactly. The number of
decoder blocks / heads is ``decoder_depth`` / ``decoder_num_heads`` rather than hard-coded 16 / 16
(the defaults are 16 / 16).

Fine-tuning (:class:`AudioMAEClassifier`): single-label cross-entropy (ESC-50, SPC) or, with
``multilabel=True``, AudioSet's BCE-with-logits on multi-hot (mixup-softened) targets and macro mAP
(AudioMAE ``main_finetune_as.py`` / ``engine_finetune_as.py``); data augmentation (SpecAugment, mixup)
lives in the data modules (``datamodules/audioset.py``), as in the official ``dataset.py``.

Pretraining recipe (AS-2M script): AdamW β = (0.9, 0.95), weight decay 1e-4,
``lr = blr · effective_batch / 256`` with ``blr = 2e-4``, 3 warm-up epochs then cosine.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from torch.optim import AdamW
from torchmetrics.classification import MulticlassAccuracy, MultilabelAveragePrecision

from litzoo.framework.checkpoints import check_state_dict, load_checkpoint, register_official_key_map, unwrap_state_dict
from litzoo.framework.errors import LitzooError
from litzoo.framework.masked_modelling import BlrWarmupCosine, MaskedModellingModule
from litzoo.framework.network_args import check_network_kwargs
from litzoo.framework.nn import (
    Attention,
    Block,
    Mlp,
    PatchEmbed,
    gather_tokens,
    init_vit_weights,
    normalized_pixel_target,
    patchify,
    random_token_mask,
    restore_tokens,
    sincos_pos_embed_2d,
    unpatchify,
)


def _pair(value: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


# ------------------------------------------------------------------------------------- blocks


def window_partition(x: Tensor, window: tuple[int, int]) -> Tensor:
    """``(B, H, W, D)`` grid → ``(B·nW, wh·ww, D)`` windows (row-major over windows, then inside each)."""
    b, h, w, d = x.shape
    wh, ww = window
    x = x.reshape(b, h // wh, wh, w // ww, ww, d).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, wh * ww, d)


def window_reverse(windows: Tensor, window: tuple[int, int], grid: tuple[int, int]) -> Tensor:
    """Inverse of :func:`window_partition`: ``(B·nW, wh·ww, D)`` → ``(B, H, W, D)``."""
    (wh, ww), (h, w) = window, grid
    d = windows.shape[-1]
    x = windows.reshape(-1, h // wh, w // ww, wh, ww, d).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h, w, d)


def shifted_window_mask(grid: tuple[int, int], window: tuple[int, int], shift: tuple[int, int]) -> Tensor:
    """``(nW, N, N)`` bool, True = may attend, for windows over a grid rolled by ``−shift`` (Swin).

    After the cyclic roll, a window at the end of an axis holds tokens from both ends of the grid;
    tokens from different original regions must not attend to each other.
    """
    regions = torch.zeros(grid, dtype=torch.long)
    label = 0
    slices = []
    for size, win, sh in zip(grid, window, shift, strict=True):
        slices.append([slice(0, size - win), slice(size - win, size - sh), slice(size - sh, size)] if sh else [slice(0, size)])
    for rows in slices[0]:
        for cols in slices[1]:
            regions[rows, cols] = label
            label += 1
    ids = window_partition(regions[None, :, :, None], window)[..., 0]  # (nW, N)
    return ids[:, :, None] == ids[:, None, :]


class WindowAttention(Attention):
    """Multi-head self-attention inside each window: :class:`litzoo.framework.nn.Attention` (same ``qkv`` / ``proj``
    names) with an optional ``(nW, N, N)`` boolean window mask (True = may attend) repeated over the batch."""

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:  # type: ignore[override]
        # x: (B·nW, N, D), the windows of one example consecutive (window_partition's order)
        attn_mask = None
        if mask is not None:
            bw, n, _ = x.shape
            nw = mask.shape[0]
            attn_mask = mask[None, :, None].expand(bw // nw, nw, 1, n, n).reshape(bw, 1, n, n)
        return super().forward(x, attn_mask=attn_mask)


class SwinWindowBlock(nn.Module):
    """Pre-norm transformer block whose attention is restricted to local windows of the token grid.

    ``(B, H·W, D)`` tokens in row-major grid order → same shape. With a non-zero ``shift_size`` the
    grid is rolled by ``−shift`` before windowing and back after, with :func:`shifted_window_mask`
    (Swin Transformer, Liu et al. 2021). A window larger than the grid along an axis is clipped to it
    (and that axis is not shifted). The grid must be a multiple of the window.

    Args:
        dim: token width.
        num_heads: attention heads.
        grid_size: ``(H, W)`` tokens (time, frequency patches).
        window_size: ``(wh, ww)`` in tokens.
        shift_size: ``(sh, sw)``, each smaller than the window along its axis.
        mlp_ratio: MLP hidden width over ``dim``.
    """

    def __init__(self, dim: int, num_heads: int, grid_size: tuple[int, int], window_size: tuple[int, int],
                 shift_size: tuple[int, int] = (0, 0), mlp_ratio: float = 4.0) -> None:  # fmt: skip
        super().__init__()
        grid = _pair(grid_size)
        window = tuple(min(w, g) for w, g in zip(_pair(window_size), grid, strict=True))
        shift = tuple(0 if g <= w else s for s, w, g in zip(_pair(shift_size), window, grid, strict=True))
        if any(g % w for g, w in zip(grid, window, strict=True)) or min(window) < 1:
            raise ValueError(f"the decoder's patch grid {grid} must be a multiple of the window size {window}")
        if any(not 0 <= s < w for s, w in zip(shift, window, strict=True)):
            raise ValueError(f"shift_size {shift} must be >= 0 and smaller than the window {window}")
        self.grid_size, self.window_size, self.shift_size = grid, window, shift
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = WindowAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        mask = shifted_window_mask(grid, window, shift) if any(shift) else None
        self.register_buffer("attn_mask", mask, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        h, w = self.grid_size
        if n != h * w:
            raise ValueError(f"expected {h}x{w} = {h * w} tokens, got {n}")
        y = self.norm1(x).reshape(b, h, w, d)
        if any(self.shift_size):
            y = torch.roll(y, shifts=(-self.shift_size[0], -self.shift_size[1]), dims=(1, 2))
        y = self.attn(window_partition(y, self.window_size), self.attn_mask)
        y = window_reverse(y, self.window_size, self.grid_size)
        if any(self.shift_size):
            y = torch.roll(y, shifts=self.shift_size, dims=(1, 2))
        x = x + y.reshape(b, n, d)
        return x + self.mlp(self.norm2(x))


# ------------------------------------------------------------------------------------- models


class AudioViTEncoder(nn.Module):
    """Audio-MAE's ViT encoder over spectrogram patches (official names: ``patch_embed.proj``,
    ``cls_token``, ``pos_embed`` (fixed 2-D sin-cos over the time × frequency grid), ``blocks``, ``norm``).

    Args:
        input_size: ``(frames, mel_bins)`` of the input spectrograms (AudioSet: 1024 × 128).
        patch_size: patch side (16).
        in_chans: input channels (1).
        embed_dim: encoder width (ViT-B: 768).
        depth: encoder blocks (12).
        num_heads: encoder attention heads (12).
        mlp_ratio: MLP hidden width over the token width (4).
    """

    def __init__(self, input_size: tuple[int, int] = (1024, 128), patch_size: int = 16, in_chans: int = 1,
                 embed_dim: int = 768, depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0) -> None:  # fmt: skip
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        self.patch_size, self.in_chans = patch_size, in_chans
        # (frames, bins) input, square patches: grid (T/p, F/p) in time-major order; xavier-initialised like a
        # linear layer by init_vit_weights (models_mae.py initialize_weights)
        self.patch_embed = PatchEmbed(_pair(input_size), patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.patch_embed.num_patches, embed_dim), requires_grad=False)
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)

    def _init_encoder(self) -> None:
        init_vit_weights(self)
        with torch.no_grad():
            self.pos_embed.copy_(sincos_pos_embed_2d(self.pos_embed.shape[-1], self.patch_embed.grid_size, cls_token=True)[None])
        nn.init.normal_(self.cls_token, std=0.02)

    @property
    def grid_size(self) -> tuple[int, int]:
        return self.patch_embed.grid_hw

    def transform(self, spec: Tensor, ids_keep: Tensor | None = None) -> Tensor:
        """``(B, 1 + K, D)`` tokens after the blocks, before the final norm (class token first), of the
        patches ``ids_keep`` ``(B, K)`` (all when None)."""
        x = self.patch_embed(spec) + self.pos_embed[:, 1:]
        if ids_keep is not None:
            x = gather_tokens(x, ids_keep)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        for block in self.blocks:
            x = block(x)
        return x

    def encode(self, spec: Tensor, ids_keep: Tensor | None = None) -> Tensor:
        """``(B, 1 + K, D)`` normed tokens (class token first) of the patches ``ids_keep`` ``(B, K)`` (all when None)."""
        return self.norm(self.transform(spec, ids_keep))

    def forward_features(self, spec: Tensor) -> Tensor:
        """``(B, D)``: mean of the normed patch tokens, all patches visible (Audio-MAE's global pooling)."""
        return self.encode(spec)[:, 1:].mean(dim=1)


class AudioMaskedAutoencoderViT(AudioViTEncoder):
    """Audio-MAE: :class:`AudioViTEncoder` + a decoder of local-window (Swin) blocks.

    Args:
        input_size … mlp_ratio: the encoder (:class:`AudioViTEncoder`).
        decoder_embed_dim: decoder width (512).
        decoder_depth: decoder blocks (16 in ``decoder_mode=1``).
        decoder_num_heads: decoder heads (16).
        decoder_window_size: ``(time, freq)`` window in patches ((4, 4)).
        decoder_shift_size: shift of every second decoder block ((2, 0): time only).
        decoder_mode: ``"swin"`` (local windows, the paper's decoder) or ``"global"`` (plain ViT blocks
            with the class token, ``decoder_mode=0``).
        norm_pix_loss: regress per-patch normalised values (True in the AS-2M script).
    """

    def __init__(
        self,
        input_size: tuple[int, int] = (1024, 128),
        patch_size: int = 16,
        in_chans: int = 1,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        decoder_embed_dim: int = 512,
        decoder_depth: int = 16,
        decoder_num_heads: int = 16,
        decoder_window_size: tuple[int, int] = (4, 4),
        decoder_shift_size: tuple[int, int] = (2, 0),
        decoder_mode: str = "swin",
        norm_pix_loss: bool = True,
    ) -> None:
        super().__init__(input_size, patch_size, in_chans, embed_dim, depth, num_heads, mlp_ratio)
        if decoder_depth < 1:
            raise ValueError(f"decoder_depth must be at least 1, got {decoder_depth}")
        if decoder_mode not in ("swin", "global"):
            raise ValueError(f"decoder_mode must be 'swin' or 'global', got {decoder_mode!r}")
        self.decoder_mode, self.norm_pix_loss = decoder_mode, norm_pix_loss
        num_patches = self.patch_embed.num_patches
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, 1 + num_patches, decoder_embed_dim), requires_grad=False)
        if decoder_mode == "swin":
            shifts = [(0, 0) if i % 2 == 0 else _pair(decoder_shift_size) for i in range(decoder_depth)]
            self.decoder_blocks = nn.ModuleList(
                SwinWindowBlock(decoder_embed_dim, decoder_num_heads, self.grid_size, _pair(decoder_window_size), shift, mlp_ratio)
                for shift in shifts
            )
        else:
            self.decoder_blocks = nn.ModuleList(Block(decoder_embed_dim, decoder_num_heads, mlp_ratio) for _ in range(decoder_depth))
        self.decoder_norm = nn.LayerNorm(decoder_embed_dim, eps=1e-6)
        self.decoder_pred = nn.Linear(decoder_embed_dim, patch_size**2 * in_chans)
        self._init_encoder()
        with torch.no_grad():
            self.decoder_pos_embed.copy_(sincos_pos_embed_2d(decoder_embed_dim, self.grid_size, cls_token=True)[None])
        nn.init.normal_(self.mask_token, std=0.02)

    def patchify(self, spec: Tensor) -> Tensor:
        return patchify(spec, self.patch_size)

    def unpatchify(self, patches: Tensor) -> Tensor:
        return unpatchify(patches, self.patch_size, self.in_chans, self.grid_size)

    def forward_encoder(self, spec: Tensor, mask_ratio: float, noise: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """``(latent (B, 1 + K, D), mask (B, L) with 1 = removed, ids_restore (B, L))``."""
        token_mask = random_token_mask(spec.shape[0], self.patch_embed.num_patches, mask_ratio, noise=noise, device=spec.device)
        latent = self.encode(spec, token_mask.ids_keep)
        return latent, token_mask.mae_mask(latent.dtype), token_mask.ids_restore

    def forward_decoder(self, latent: Tensor, ids_restore: Tensor) -> Tensor:
        """``(B, 1 + K, D)`` latents → ``(B, L, p²·C)`` predictions for every patch."""
        x = self.decoder_embed(latent)
        patches = restore_tokens(x[:, 1:], self.mask_token, ids_restore)
        x = torch.cat([x[:, :1], patches], dim=1) + self.decoder_pos_embed
        if self.decoder_mode == "swin":
            x = x[:, 1:]  # the window blocks work on the patch grid only (official decoder_mode=1)
        for block in self.decoder_blocks:
            x = block(x)
        x = self.decoder_pred(self.decoder_norm(x))
        return x if self.decoder_mode == "swin" else x[:, 1:]

    def target(self, spec: Tensor) -> Tensor:
        patches = self.patchify(spec)
        return normalized_pixel_target(patches) if self.norm_pix_loss else patches

    def forward_loss(self, spec: Tensor, pred: Tensor, mask: Tensor) -> Tensor:
        """Mean over removed patches of the per-patch mean squared error."""
        per_patch = (pred - self.target(spec)).pow(2).mean(dim=-1)
        return (per_patch * mask).sum() / mask.sum()

    def forward(self, spec: Tensor, mask_ratio: float = 0.8, noise: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """``(loss, pred (B, L, p²·C), mask (B, L), 1 = removed)``."""
        latent, mask, ids_restore = self.forward_encoder(spec, mask_ratio, noise)
        pred = self.forward_decoder(latent, ids_restore)
        return self.forward_loss(spec, pred, mask), pred, mask


def time_frequency_keep(batch: int, grid: tuple[int, int], mask_t_prob: float, mask_f_prob: float,
                        device: torch.device | str | None = None) -> Tensor:  # fmt: skip
    """Audio-MAE's fine-tuning 2-D masking: ``(B, K)`` indices of the kept patches (grid order) when
    ``int(T·(1−pt))`` random time rows and ``int(F·(1−pf))`` random frequency columns are kept per example."""
    t, f = grid
    keep_t = torch.rand(batch, t, device=device).argsort(dim=1)[:, : max(1, int(t * (1 - mask_t_prob)))].sort(dim=1).values
    keep_f = torch.rand(batch, f, device=device).argsort(dim=1)[:, : max(1, int(f * (1 - mask_f_prob)))].sort(dim=1).values
    return (keep_t[:, :, None] * f + keep_f[:, None, :]).flatten(1)


class AudioViTClassifier(AudioViTEncoder):
    """Fine-tuning model (AudioMAE ``models_vit.py``, ``global_pool=True``): the blocks' patch tokens,
    averaged → ``fc_norm`` → ``head``. As the official model there is no final ``norm`` (an identity:
    ``fc_norm`` replaces it), so the keys are those of the released fine-tuned checkpoints. During
    training, patches may be dropped by :func:`time_frequency_keep`. The head starts near zero
    (truncated normal, std 2e-5, as ``main_finetune_as.py`` re-initialises it)."""

    def __init__(self, num_classes: int, input_size: tuple[int, int] = (1024, 128), patch_size: int = 16, in_chans: int = 1,
                 embed_dim: int = 768, depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0) -> None:  # fmt: skip
        super().__init__(input_size, patch_size, in_chans, embed_dim, depth, num_heads, mlp_ratio)
        self.norm = nn.Identity()  # official models_vit.py (global pool) has no final norm: fc_norm after the mean instead
        self.fc_norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Linear(embed_dim, num_classes)
        self._init_encoder()
        nn.init.trunc_normal_(self.head.weight, std=2e-5)

    def forward_features(self, spec: Tensor, ids_keep: Tensor | None = None) -> Tensor:
        """``(B, D)``: ``fc_norm`` of the mean patch token (before the head)."""
        return self.fc_norm(self.transform(spec, ids_keep)[:, 1:].mean(dim=1))

    def forward(self, spec: Tensor, ids_keep: Tensor | None = None) -> Tensor:
        return self.head(self.forward_features(spec, ids_keep))


# ------------------------------------------------------------------------ official checkpoints


def convert_official_audio_mae_state_dict(state_dict: dict[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """Official AudioMAE weights (``models_mae.py`` pretrained or ``models_vit.py`` fine-tuned, already
    unwrapped from ``{"model": ...}``) → ``(our state dict, dropped keys)``.

    Our modules use the official (timm ViT) names, so encoder (``patch_embed.proj``, ``cls_token``,
    ``pos_embed``, ``blocks.*``, ``norm``), decoder embedding / norm / prediction (``decoder_embed``,
    ``mask_token``, ``decoder_pos_embed``, ``decoder_norm``, ``decoder_pred``) and fine-tuned heads
    (``fc_norm``, ``head``) keep their keys. The blocks of the official local-window decoder
    (``decoder_mode=1``, recognised by their ``attn.tau`` / ``attn.meta_mlp`` parameters) are Swin-V2-CR
    blocks that compute something else than ours (see the module docstring): all ``decoder_blocks.*``
    keys are dropped and returned, even those whose names match ours, because loading them would be
    silently wrong. Global decoder blocks (``decoder_mode=0``, timm ``Block``) are kept.

    Raises:
        LitzooError: not an AudioMAE / timm ViT state dict (no ``patch_embed.proj.weight``).
    """
    if "patch_embed.proj.weight" not in state_dict:
        raise LitzooError("official audio_mae state dict: no 'patch_embed.proj.weight', so not an AudioMAE / timm ViT checkpoint")
    swin_decoder = any(k.startswith("decoder_blocks.") and (".attn.tau" in k or ".attn.meta_mlp." in k) for k in state_dict)
    converted, dropped = {}, []
    for key, value in state_dict.items():
        if swin_decoder and key.startswith("decoder_blocks."):
            dropped.append(key)
        else:
            converted[key] = value
    return converted, dropped


@register_official_key_map("audio_mae")
def official_audio_mae_key_map(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """facebookresearch/AudioMAE weights -> ours (timm ViT names): a ``{'model': ...}`` wrapper and ``module.``
    prefixes are removed, the Swin-V2-CR blocks of the official local-window decoder dropped with a warning
    (see :func:`convert_official_audio_mae_state_dict`)."""
    if isinstance(state.get("model"), Mapping) or all(k.startswith("module.") for k in state):
        state = unwrap_state_dict(state)
    converted, dropped = convert_official_audio_mae_state_dict(dict(state))
    if dropped:
        rank_zero_warn(f"official audio_mae state dict: {len(dropped)} local-window decoder weights dropped (Swin-V2-CR blocks, "
                       f"not litzoo's decoder): {', '.join(dropped[:4])}{', ...' if len(dropped) > 4 else ''}")  # fmt: skip
    return converted


def _official_or_lightning_state(path: str) -> tuple[dict[str, Tensor], list[str], bool]:
    """``(state dict in our model's names, dropped official keys, is_official)`` of a checkpoint file:
    a Lightning checkpoint of :class:`AudioMAEModule` / :class:`AudioMAEClassifier` (``state_dict`` with
    ``model.`` keys) or an official AudioMAE release (``{"model": ...}`` or a bare state dict)."""
    checkpoint = load_checkpoint(path)
    state = checkpoint.get("state_dict")
    if isinstance(state, dict) and any(k.startswith("model.") for k in state):
        return {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}, [], False
    converted, dropped = convert_official_audio_mae_state_dict(unwrap_state_dict(checkpoint, path))
    return converted, dropped, True


def load_audio_mae_weights(model: nn.Module, path: str) -> nn.Module:
    """Load an official AudioMAE checkpoint, or one of ours, into ``model`` (an :class:`AudioViTEncoder`
    subclass) with ``weights_only=True``.

    Every encoder weight must be there with the right shape (else a one-line :class:`LitzooError`
    naming the file and the keys). What the file lacks or has beyond the model is reported, not fatal:
    a classifier head of another shape or missing (fresh fine-tuning head) keeps its initialisation;
    decoder weights missing from the file or not loadable (the official Swin-V2-CR decoder blocks) keep
    theirs, with a warning listing them; the pretrained encoder's final ``norm`` and decoder are ignored
    by a classifier (``models_vit.py`` has neither, ``main_finetune_as.py`` loads with ``strict=False``).
    """
    state, dropped, official = _official_or_lightning_state(path)
    target = model.state_dict()
    head_keys = ("fc_norm.", "head.")
    decoder_keys = ("decoder_", "mask_token")
    not_encoder = [f"{prefix}*" for prefix in head_keys + decoder_keys]
    fit = check_state_dict(state, target, may_miss=not_encoder, may_reshape=not_encoder, may_ignore=["*"])
    bad = [*fit.missing, *fit.wrong_shape]
    if bad:
        raise LitzooError(f"checkpoint '{path}' does not fit this Audio-MAE encoder: missing or mis-shaped {', '.join(bad[:4])}"
                          + (f" (+{len(bad) - 4} more)" if len(bad) > 4 else ""))  # fmt: skip
    unused = fit.tolerated_unexpected
    keep_fresh = [*fit.tolerated_missing, *fit.tolerated_shape]
    load = {k: v for k, v in state.items() if k in target and k not in fit.tolerated_shape}
    model.load_state_dict(load, strict=False)
    has_decoder = any(k.startswith(decoder_keys) for k in target)  # a classifier has none: nothing to report
    not_loaded_decoder = sorted({k for k in keep_fresh if k.startswith(decoder_keys)} | (set(dropped) if has_decoder else set()))
    if not_loaded_decoder:
        rank_zero_warn(f"{path}: {len(not_loaded_decoder)} decoder weights were not loaded and keep their initialisation "
                       f"(the official decoder's Swin-V2-CR blocks differ from ours): {', '.join(not_loaded_decoder)}")  # fmt: skip
    heads = [k for k in keep_fresh if k.startswith(head_keys)]
    if heads:
        rank_zero_info(f"{path}: classifier weights {', '.join(heads)} not in the file or of another shape; they keep their initialisation")
    ignored = [k for k in unused if not (k.startswith(decoder_keys) or k.startswith("norm."))]
    if ignored:
        rank_zero_warn(f"{path}: weights this model does not use were ignored: {', '.join(ignored[:8])}")
    rank_zero_info(f"{path}: loaded {len(load)} tensors ({'official AudioMAE' if official else 'litzoo'} checkpoint)")
    return model


# --------------------------------------------------------------------------- LightningModules


def adamw_audio_mae(params: Any, lr: float = 2e-4, betas: tuple[float, float] = (0.9, 0.95), weight_decay: float = 1e-4) -> AdamW:
    """AdamW with Audio-MAE's AS-2M pretraining settings (β (0.9, 0.95), wd 1e-4); ``lr`` is replaced by
    ``blr · effective_batch / 256`` when the module's ``blr`` is set."""
    return AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay)


class AudioMAEModule(MaskedModellingModule):
    """Audio-MAE pretraining on ``{"audio": (B, 1, T, F)}`` batches.

    The Lightning side is :class:`litzoo.framework.masked_modelling.MaskedModellingModule`: logs ``train/loss``,
    ``val/loss`` (fixed masks: noise of batch ``i`` from seed ``val_seed + i``) and ``val/mean_baseline_loss``
    (the best constant prediction of the removed patches); a TensorBoard image ``val/reconstruction`` (rows:
    spectrograms, masked input, reconstruction; time runs down). :meth:`forward_features` gives mean-pooled
    encoder tokens of the unmasked spectrogram (for probes).

    Args:
        mask_ratio: fraction of patches removed (0.8).
        blr: base lr (2e-4); lr = blr · effective_batch / 256. ``None`` keeps the optimizer's lr.
        warmup_epochs: linear warm-up (3), then cosine to 0, per step.
        val_seed: seed of the validation masks.
        num_images: spectrograms in the reconstruction image.
        optimizer: called with parameter groups; default AdamW(β (0.9, 0.95), wd 1e-4).
        lr_scheduler: called with the optimizer; ``None`` = warm-up then cosine.
        **net_kwargs: the :class:`AudioMaskedAutoencoderViT`'s arguments, ``input_size`` … ``norm_pix_loss``
            (defaults: ViT-B/16 on 1024 × 128, 16 Swin decoder blocks 512-d × 16 heads, window (4, 4), shift (2, 0)).
    """

    input_key = "audio"

    def __init__(
        self,
        mask_ratio: float = 0.8,
        blr: float | None = 2e-4,
        warmup_epochs: float = 3.0,
        val_seed: int = 0,
        num_images: int = 4,
        optimizer: OptimizerCallable = adamw_audio_mae,
        lr_scheduler: LRSchedulerCallable | None = None,
        **net_kwargs: Any,
    ) -> None:
        check_network_kwargs(AudioMaskedAutoencoderViT, net_kwargs, type(self).__name__)
        net = AudioMaskedAutoencoderViT(**net_kwargs)
        super().__init__(net, mask_ratio, blr, warmup_epochs, val_seed, num_images, optimizer, lr_scheduler)
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        self.example_input_array = torch.zeros(2, net.in_chans, *net.patch_embed.input_hw)

    @classmethod
    def from_official_checkpoint(cls, path: str, **kwargs: Any) -> AudioMAEModule:
        """A module (``kwargs``: its constructor arguments, default ViT-B/16 on 1024 × 128) with the weights
        of an official AudioMAE pretrained checkpoint (``{"model": ...}``, ``models_mae.py`` names), loaded
        with ``weights_only=True`` by :func:`load_audio_mae_weights`: the encoder exactly, the decoder's
        Swin-V2-CR blocks not (warned)."""
        module = cls(**kwargs)
        load_audio_mae_weights(module.model, path)
        return module

    def grid_image(self, rows: list[Tensor]) -> Tensor:
        """The rows side by side in one strip, each spectrogram ``(1, T, F)`` with time running down, scaled
        by the min / max of its original."""
        low = rows[0].flatten(1).min(dim=1).values[:, None, None, None]
        high = rows[0].flatten(1).max(dim=1).values[:, None, None, None]
        strips = [torch.cat(list(((specs - low) / (high - low).clamp(min=1e-8)).clamp(0, 1)), dim=2) for specs in rows]  # (1, T, K·F)
        return torch.cat(strips, dim=2).expand(3, -1, -1)


class AudioMAEClassifier(BlrWarmupCosine, L.LightningModule):
    """Audio-MAE fine-tuning: :class:`AudioViTClassifier` on ``{"audio", "label"}`` batches, 2-D
    time/frequency patch masking as training augmentation.

    * ``multilabel=False``: integer labels ``(B,)``, cross-entropy, ``val/acc`` / ``test/acc`` (ESC-50,
      SpeechCommands-style single-label sets).
    * ``multilabel=True``: float multi-hot labels ``(B, C)`` (soft when the data mixes clips),
      BCE-with-logits (``main_finetune_as.py``: ``nn.BCEWithLogitsLoss``), macro mean average precision
      over classes ``val/mAP`` / ``test/mAP`` (``engine_finetune_as.py``: mean of per-class AP; torchmetrics
      ``MultilabelAveragePrecision(average="macro")``, which gathers all predictions of the epoch, as the
      official evaluation); the checkpoint monitor becomes ``val/mAP``. Evaluation targets are binarised
      (``> 0.5``) for the metric.

    Args:
        num_classes: classes (AudioSet: 527).
        pretrained: a checkpoint whose encoder initialises this one: an :class:`AudioMAEModule` ``.ckpt``
            or an official AudioMAE release (pretrained or fine-tuned ``.pth``), see
            :func:`load_audio_mae_weights`; ``None`` trains from scratch.
        multilabel: BCE + mAP instead of cross-entropy + accuracy.
        mask_t_prob: fraction of time rows of patches dropped in training (AS-20K fine-tuning: 0.2).
        mask_f_prob: fraction of frequency columns of patches dropped in training (AS-20K fine-tuning: 0.2).
        blr: base lr, lr = blr · effective_batch / 256 (fine-tuning: 1e-3). ``None`` keeps the optimizer's lr.
        warmup_epochs: linear warm-up, then cosine to 0, per step.
        optimizer: called with parameter groups; default AdamW(β (0.9, 0.95), wd 1e-4).
        lr_scheduler: called with the optimizer; ``None`` = warm-up then cosine.
        **net_kwargs: the :class:`AudioViTClassifier`'s encoder arguments, ``input_size`` … ``mlp_ratio``
            (must match the pretrained encoder; default ViT-B/16 on 1024 × 128).
    """

    monitor = "val/acc"
    monitor_mode = "max"

    def __init__(
        self,
        num_classes: int,
        pretrained: str | None = None,
        multilabel: bool = False,
        mask_t_prob: float = 0.2,
        mask_f_prob: float = 0.2,
        blr: float | None = 1e-3,
        warmup_epochs: float = 4.0,
        optimizer: OptimizerCallable = adamw_audio_mae,
        lr_scheduler: LRSchedulerCallable | None = None,
        **net_kwargs: Any,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        if not (0 <= mask_t_prob < 1 and 0 <= mask_f_prob < 1):
            raise ValueError(f"mask_t_prob and mask_f_prob must be in [0, 1), got {mask_t_prob} and {mask_f_prob}")
        check_network_kwargs(AudioViTClassifier, net_kwargs, type(self).__name__)
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        self.model = AudioViTClassifier(num_classes=num_classes, **net_kwargs)
        if pretrained is not None:
            self.load_pretrained(pretrained)
        self.optimizer, self.lr_scheduler = optimizer, lr_scheduler
        self.blr, self.warmup_epochs = blr, warmup_epochs
        self.multilabel = multilabel
        if multilabel:
            self.monitor = "val/mAP"
            self.val_map = MultilabelAveragePrecision(num_classes, average="macro")
            self.test_map = MultilabelAveragePrecision(num_classes, average="macro")
        else:
            self.val_acc = MulticlassAccuracy(num_classes)
            self.test_acc = MulticlassAccuracy(num_classes)

    def load_pretrained(self, path: str) -> None:
        """Encoder weights from an :class:`AudioMAEModule` checkpoint or an official AudioMAE release
        (:func:`load_audio_mae_weights`); a one-line :class:`LitzooError` when encoder keys are missing."""
        load_audio_mae_weights(self.model, path)

    def loss(self, logits: Tensor, label: Tensor) -> Tensor:
        if self.multilabel:
            if label.shape != logits.shape:
                raise ValueError(f"multilabel=True expects (B, {logits.shape[1]}) float multi-hot labels, got shape {tuple(label.shape)}")
            return F.binary_cross_entropy_with_logits(logits, label.to(logits.dtype))
        return F.cross_entropy(logits, label)

    def forward(self, spec: Tensor) -> Tensor:
        return self.model(spec)

    def forward_features(self, spec: Tensor) -> Tensor:
        return self.model.forward_features(spec)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        spec = batch["audio"]
        ids = None
        if self.hparams.mask_t_prob > 0 or self.hparams.mask_f_prob > 0:
            ids = time_frequency_keep(len(spec), self.model.grid_size, self.hparams.mask_t_prob, self.hparams.mask_f_prob, spec.device)
        loss = self.loss(self.model(spec, ids), batch["label"])
        self.log("train/loss", loss, prog_bar=True, batch_size=len(spec))
        return loss

    def _evaluate(self, batch: dict[str, Tensor], stage: str) -> None:
        logits, label = self(batch["audio"]), batch["label"]
        self.log(f"{stage}/loss", self.loss(logits, label), sync_dist=True, batch_size=len(logits))
        if self.multilabel:
            metric = self.val_map if stage == "val" else self.test_map
            metric(logits, (label > 0.5).long())  # AP needs binary targets; evaluation data is not mixed
            self.log(f"{stage}/mAP", metric, prog_bar=stage == "val", batch_size=len(logits))
        else:
            metric = self.val_acc if stage == "val" else self.test_acc
            metric(logits, label)
            self.log(f"{stage}/acc", metric, prog_bar=stage == "val", batch_size=len(logits))

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test")
