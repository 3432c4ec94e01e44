"""Per-sample random token masking (MAE, AudioMAE, Hiera) with explicit keep / drop naming.

One draw: uniform noise ``(B, L)``, ``ids_shuffle = argsort(noise)`` (ascending: small noise is kept),
``ids_keep = ids_shuffle[:, :len_keep]`` with ``len_keep = int(L · (1 − mask_ratio))`` and
``ids_restore = argsort(ids_shuffle)``, its inverse permutation (MAE ``random_masking``).

The two conventions in the literature, both available, never to be confused:

- :attr:`TokenMask.keep` — boolean, **True = kept** (visible to the encoder); Hiera's convention.
- :attr:`TokenMask.drop` — boolean, **True = removed**; :meth:`TokenMask.mae_mask` is the same as
  a float, **1 = removed, 0 = kept**, MAE's / AudioMAE's ``mask`` (the loss weights).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


def num_kept(length: int, mask_ratio: float) -> int:
    """``int(length · (1 − mask_ratio))`` tokens stay visible; at least one must."""
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    kept = int(length * (1 - mask_ratio))
    if kept < 1:
        raise ValueError(f"mask_ratio {mask_ratio} keeps no token of {length}")
    return kept


class TokenMask(NamedTuple):
    """The outcome of one random masking of ``B`` sequences of ``L`` tokens.

    Attributes:
        ids_keep: ``(B, len_keep)`` indices of the kept tokens, in shuffled (noise) order.
        ids_restore: ``(B, L)`` inverse of the shuffle: position of each original token in
            ``cat([kept, removed])``; gathering with it restores the original order.
        keep: ``(B, L)`` bool, True = kept (Hiera's convention).
    """

    ids_keep: Tensor
    ids_restore: Tensor
    keep: Tensor

    @property
    def drop(self) -> Tensor:
        """``(B, L)`` bool, True = removed (hidden from the encoder, reconstructed)."""
        return ~self.keep

    def mae_mask(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """``(B, L)`` MAE's float mask: 1 = removed, 0 = kept."""
        return self.drop.to(dtype)


def random_token_mask(batch: int, length: int, mask_ratio: float, noise: Tensor | None = None, device: torch.device | str | None = None) -> TokenMask:
    """Draw a per-sample random mask; pass ``noise`` ``(B, L)`` to make it reproducible.

    Args:
        batch: ``B``.
        length: ``L`` tokens per sample.
        mask_ratio: fraction removed; ``len_keep = int(L · (1 − mask_ratio))``.
        noise: the uniform noise to argsort (default ``torch.rand(B, L)``); equal noise gives an
            equal mask, whatever the implementation.
        device: where to draw the noise when it is not given.
    """
    len_keep = num_kept(length, mask_ratio)
    if noise is None:
        noise = torch.rand(batch, length, device=device)
    elif noise.shape != (batch, length):
        raise ValueError(f"noise must have shape {(batch, length)}, got {tuple(noise.shape)}")
    ids_shuffle = torch.argsort(noise, dim=1)  # ascending: small noise is kept
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    keep = ids_restore < len_keep  # a token is kept when its place in the shuffle is among the first len_keep
    return TokenMask(ids_shuffle[:, :len_keep], ids_restore, keep)


def gather_tokens(tokens: Tensor, ids: Tensor) -> Tensor:
    """``(B, L, D)`` tokens, ``(B, K)`` indices → ``(B, K, D)`` the chosen tokens, in the order of ``ids``."""
    return torch.gather(tokens, 1, ids[..., None].expand(-1, -1, tokens.shape[-1]))


def restore_tokens(kept: Tensor, fill: Tensor, ids_restore: Tensor) -> Tensor:
    """Put the kept tokens back in place and fill the removed places with ``fill``.

    Args:
        kept: ``(B, len_keep, D)`` tokens in shuffled order (as :func:`gather_tokens` gave them).
        fill: ``(1, 1, D)`` or ``(D,)``, e.g. MAE's learned ``mask_token``.
        ids_restore: ``(B, L)`` from :class:`TokenMask`.

    Returns ``(B, L, D)`` in the original token order.
    """
    batch, len_keep, dim = kept.shape
    removed = fill.reshape(1, 1, dim).to(kept.dtype).expand(batch, ids_restore.shape[1] - len_keep, dim)
    return gather_tokens(torch.cat([kept, removed], dim=1), ids_restore)


__all__ = ["TokenMask", "gather_tokens", "num_kept", "random_token_mask", "restore_tokens"]
