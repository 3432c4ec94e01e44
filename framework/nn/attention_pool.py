"""Attention pooling: learned probe(s) attend over all tokens, then a residual MLP (the Perception Encoder's head).

Bolya et al., "Perception Encoder", 2025 (arXiv 2504.13181); official code facebookresearch/perception_models
``core/vision_encoder/pe.py`` ``AttentionPooling``, verified line by line:

``q = probe`` (``(1, P, D)``, drawn from N(0, 1), repeated over the batch) → ``x = MHA(q, tokens, tokens)``
(``nn.MultiheadAttention``, fused ``in_proj`` with bias, ``out_proj``; no residual from the probe) →
``x = x + MLP(LayerNorm(x))`` (``c_fc`` → GELU → ``c_proj``, hidden ``mlp_ratio · D``). PE-Core uses one probe
and 8 heads; its vision tower squeezes the probe axis and projects. The MLP here is the core's
:class:`~litzoo.framework.nn.vit.Mlp` (``fc1`` / ``fc2``: PE's ``c_fc`` / ``c_proj``), the norm is ``norm``
(PE's ``layernorm``); ``eps`` is PE's 1e-5.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from litzoo.framework.nn.vit import Mlp


class AttentionPool(nn.Module):
    """``(B, N, D)`` tokens → ``(B, P, D)`` pooled features (``(B, D)`` with ``squeeze=True`` and one probe).

    Args:
        dim: token width.
        num_heads: attention heads (PE-Core: 8); ``dim`` must be a multiple.
        num_probes: learned queries ``P`` (PE: 1).
        mlp_ratio: hidden width of the MLP over ``dim`` (PE: 4).
        norm_eps: LayerNorm epsilon (PE: 1e-5).
    """

    def __init__(self, dim: int, num_heads: int = 8, num_probes: int = 1, mlp_ratio: float = 4.0, norm_eps: float = 1e-5) -> None:
        super().__init__()
        if dim <= 0 or num_heads <= 0 or dim % num_heads:
            raise ValueError(f"dim ({dim}) must be a positive multiple of num_heads ({num_heads})")
        if num_probes < 1 or mlp_ratio <= 0:
            raise ValueError(f"num_probes must be >= 1 and mlp_ratio positive, got {num_probes} and {mlp_ratio}")
        self.probe = nn.Parameter(torch.randn(1, num_probes, dim))  # PE: torch.randn, no scaling
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, tokens: Tensor, squeeze: bool = True) -> Tensor:
        # repeat, not expand (as the official): a no-grad view of a parameter has requires_grad but no grad_fn, which
        # torch's module tracker (FLOP counting) refuses
        query = self.probe.repeat(tokens.shape[0], 1, 1).to(tokens.dtype)
        x = self.attn(query, tokens, tokens, need_weights=False)[0]  # (B, P, D)
        x = x + self.mlp(self.norm(x))
        return x.squeeze(1) if squeeze and x.shape[1] == 1 else x


def check_vision_pooling(embed_dim: int, pool_type: str, class_token: bool) -> None:
    """The ``ValueError`` checks of a vision tower's output: ``embed_dim`` positive, ``pool_type`` ``token`` (the class
    token) or ``attn`` (:class:`AttentionPool`), and a class token present for ``token`` (CLIP's and PE-Core's towers)."""
    if embed_dim <= 0:
        raise ValueError(f"embed_dim must be positive, got {embed_dim}")
    if pool_type not in ("token", "attn"):
        raise ValueError(f"pool_type must be 'token' or 'attn', got {pool_type!r}")
    if pool_type == "token" and not class_token:
        raise ValueError("pool_type='token' needs a class token (vision_class_token=True); use pool_type='attn' without one")
