"""The audio-visual Perception Encoder's sequence tower: ResNet-1d embedding, RMSNorm / SwiGLU / 1-D RoPE layers with QK-norm.

PE-AV (Meta FAIR, 2025; notes ``ssl_multimodal.md`` §14). Official code read line by line: facebookresearch/perception_models
``core/audio_visual_encoder/transformer.py`` (``MLP``, ``Attention``, ``DecoderLayer``, ``Embeddings``, ``Transformer``),
``patcher.py`` (``MaskedGroupNorm``, ``ConvBlock1d``, ``ResnetBlock1d``), ``config.py`` (``TransformerConfig``) and the pieces
they import from ``core/transformer.py`` (``RotaryEmbedding``, ``apply_rotary_emb``, ``RMSNorm``). The audio tower, the
visual tower and the audio-visual fusion tower of the release are all this :class:`RopeTransformer`; the modules and
parameters here carry the official names, so a release's tower keys load without renaming.

What the official code does, and is kept:

* **Embedding in front** (``embeddings``): the class token (``embeddings.cls_token``, ``randn`` init) is prepended first,
  then the whole sequence (class token included) goes through a ResNet-1d block over time: ``h = x + block2(block1(x))``,
  each ``ConvBlock1d`` = ``MaskedGroupNorm`` (**one group**, eps 1e-5, affine; with a padding mask its mean and biased
  variance are taken over the valid steps only and its output is zeroed at padded steps) → SiLU → ``Conv1d`` (kernel 3,
  ``padding="same"``, with bias). Without a mask it is ``nn.GroupNorm(1, C)``. There are **no** learned or sin-cos
  positions: order enters through the convolutions and RoPE only.
* **Layers** (``layers.{i}``, ``DecoderLayer``): pre-norm, ``x + self_attn(input_layernorm(x))`` then
  ``x + mlp(post_attention_layernorm(x))``; the norms are RMSNorm with ``rms_norm_eps`` (1e-5 in every released config;
  ``torch.nn.RMSNorm`` computes the same ``x · rsqrt(mean(x²) + eps) · weight``).
* **Attention** (``self_attn``): ``q_proj`` / ``k_proj`` / ``v_proj`` / ``o_proj`` without bias (``attention_bias=False``);
  **QK-norm**: ``q_norm`` / ``k_norm`` are RMSNorms over the *head* width (eps ``rms_norm_eps``) applied per head
  **before** RoPE; scale ``head_dim^-½``; bidirectional (``is_causal=False``); the padding mask is the boolean
  ``(B, 1, 1, T)`` key mask of ``scaled_dot_product_attention`` (True = attend), the class token always valid. The
  official class stores ``num_key_value_heads`` but calls SDPA without repeating keys, so only ``num_kv_heads ==
  num_heads`` runs there; the same is required here.
* **RoPE**: 1-D, over the token index ``0 … T−1`` (the class token is position 0), on the whole head width, pairs of
  **adjacent** channels ``(2i, 2i+1)`` (interleaved, not half-split) rotated ``(a, b) → (a cos − b sin, a sin + b cos)``
  by ``t · θ^(−2i/D)``, in float32, then cast back. ``θ = max(10000, 2 · max_position_embeddings)`` (20000 for the default
  10000) — the config's ``rope_theta`` field is **not** read by the tower. The table is a non-persistent buffer in the
  release (not in its state dict); here it is computed per length (:func:`rope_1d_angles`, applied with
  :func:`litzoo.framework.nn.rope.apply_rope`, whose interleaved rotation is the official one).
* **MLP** (``mlp``): SwiGLU ``down_proj(silu(gate_proj(x)) · up_proj(x))``, no bias, hidden width ``intermediate_size``
  taken **verbatim** from the config (no ``multiple_of`` rounding in this tower; the default 2752 for width 1024 equals the
  Llama rule of ``core/transformer.py``'s ``FeedForward``, :func:`swiglu_hidden_size`, with ``multiple_of`` 32 or 64).
* **Out**: final RMSNorm ``norm`` → bias-free ``output`` Linear (D → D); ``pooled = h[:, 0]`` (the class token),
  ``states = h[:, 1:]``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from litzoo.framework.nn.rope import apply_rope

__all__ = [
    "PE_AV_TRANSFORMER_DEFAULTS",
    "ConvBlock1d",
    "MaskedGroupNorm",
    "ResnetBlock1d",
    "RopeAttention",
    "RopeDecoderLayer",
    "RopeTransformer",
    "SequenceEmbeddings",
    "SwiGLU",
    "pe_av_rope_theta",
    "rope_1d_angles",
    "swiglu_hidden_size",
]

#: ``core/audio_visual_encoder/config.py`` ``TransformerConfig`` defaults (the releases override them per model size).
PE_AV_TRANSFORMER_DEFAULTS = {"dim": 1024, "intermediate_size": 2752, "depth": 16, "num_heads": 8, "max_position_embeddings": 10_000,
                              "eps": 1e-5}  # fmt: skip


def pe_av_rope_theta(max_position_embeddings: int) -> float:
    """The RoPE base of PE-AV's tower: ``max(10000, 2 · max_position_embeddings)`` (``Transformer.__init__``)."""
    return float(max(10_000, 2 * max_position_embeddings))


def swiglu_hidden_size(dim: int, hidden_dim: int | None = None, multiple_of: int = 256, ffn_dim_multiplier: float | None = None) -> int:
    """The SwiGLU hidden width rule of ``core/transformer.py`` ``FeedForward`` (Llama's).

    ``h = int(2 · hidden_dim / 3)``; ``h = int(ffn_dim_multiplier · h)`` when given; then rounded **up** to a multiple of
    ``multiple_of``. ``hidden_dim`` defaults to ``4 · dim``. PE-AV's tower does not apply it (its ``intermediate_size`` is
    given), but its default 2752 for width 1024 is this rule with ``multiple_of`` 32 or 64.
    """
    if dim < 1 or multiple_of < 1 or (hidden_dim is not None and hidden_dim < 1):
        raise ValueError(f"need positive dim, hidden_dim and multiple_of, got {dim}, {hidden_dim}, {multiple_of}")
    hidden = int(2 * (4 * dim if hidden_dim is None else hidden_dim) / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


def rope_1d_angles(head_dim: int, length: int, theta: float, device: torch.device | None = None) -> Tensor:
    """Rotation angles ``(length, head_dim)`` of positions ``0 … length − 1``: entry ``[t, 2i] = [t, 2i+1] = t · θ^(−2i/D)``.

    The layout of :func:`litzoo.framework.nn.rope.apply_rope` (adjacent channel pairs), equal to the official
    ``precompute_freqs_cis`` (``freqs = 1 / θ^(arange(0, D, 2) / D)``, ``outer(t, freqs)``).
    """
    if head_dim < 2 or head_dim % 2 or length < 0 or theta <= 0:
        raise ValueError(f"need an even head_dim ≥ 2, length ≥ 0 and theta > 0, got {head_dim}, {length}, {theta}")
    freqs = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim)
    return torch.outer(torch.arange(length, device=device, dtype=torch.float32), freqs).repeat_interleave(2, dim=-1)


class SwiGLU(nn.Module):
    """``down_proj(silu(gate_proj(x)) · up_proj(x))``, all bias-free (the official ``MLP``)."""

    def __init__(self, dim: int, intermediate_size: int) -> None:
        super().__init__()
        if dim < 1 or intermediate_size < 1:
            raise ValueError(f"need positive dim and intermediate_size, got {dim}, {intermediate_size}")
        self.gate_proj = nn.Linear(dim, intermediate_size, bias=False)
        self.up_proj = nn.Linear(dim, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class RopeAttention(nn.Module):
    """Bidirectional multi-head attention with per-head RMSNorm on q and k (QK-norm) and 1-D RoPE (the official ``Attention``).

    Args:
        dim: model width.
        num_heads: attention heads (must divide ``dim``; the head width must be even for RoPE).
        eps: the RMSNorm epsilon of ``q_norm`` / ``k_norm`` (PE-AV: 1e-5).
        bias: biases on the four projections (PE-AV: ``attention_bias=False``).
        dropout: attention dropout while training (PE-AV: 0).
    """

    def __init__(self, dim: int, num_heads: int, eps: float = 1e-5, bias: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        if dim < 1 or num_heads < 1 or dim % num_heads or (dim // num_heads) % 2:
            raise ValueError(f"dim {dim} must split into {num_heads} heads of an even width")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.num_heads, self.head_dim, self.dropout = num_heads, dim // num_heads, dropout
        self.q_proj = nn.Linear(dim, dim, bias=bias)
        self.k_proj = nn.Linear(dim, dim, bias=bias)
        self.v_proj = nn.Linear(dim, dim, bias=bias)
        self.o_proj = nn.Linear(dim, dim, bias=bias)
        self.q_norm = nn.RMSNorm(self.head_dim, eps=eps)
        self.k_norm = nn.RMSNorm(self.head_dim, eps=eps)

    def forward(self, x: Tensor, angles: Tensor, mask: Tensor | None = None) -> Tensor:
        """``x (B, T, D)``, RoPE ``angles (T, head_dim)``, ``mask (B, T)`` bool (True = a real step) or None."""
        b, t, _ = x.shape
        q = self.q_norm(self.q_proj(x).view(b, t, self.num_heads, self.head_dim)).transpose(1, 2)
        k = self.k_norm(self.k_proj(x).view(b, t, self.num_heads, self.head_dim)).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, angles), apply_rope(k, angles)
        attn_mask = None if mask is None else mask.bool()[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))


class RopeDecoderLayer(nn.Module):
    """Pre-norm layer: ``x + self_attn(input_layernorm(x))``, then ``x + mlp(post_attention_layernorm(x))`` (``DecoderLayer``)."""

    def __init__(self, dim: int, num_heads: int, intermediate_size: int, eps: float = 1e-5, dropout: float = 0.0) -> None:
        super().__init__()
        self.self_attn = RopeAttention(dim, num_heads, eps, dropout=dropout)
        self.mlp = SwiGLU(dim, intermediate_size)
        self.input_layernorm = nn.RMSNorm(dim, eps=eps)
        self.post_attention_layernorm = nn.RMSNorm(dim, eps=eps)

    def forward(self, x: Tensor, angles: Tensor, mask: Tensor | None = None) -> Tensor:
        x = x + self.self_attn(self.input_layernorm(x), angles, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class MaskedGroupNorm(nn.GroupNorm):
    """``GroupNorm`` over ``(B, C, L)`` whose statistics skip padded steps; ``mask (B, C, L)`` or ``(B, L)`` (True = real).

    With a mask: mean and biased variance per sample and group over the real steps only, affine, then the padded steps set
    to 0 (the official ``MaskedGroupNorm``); without one, plain ``GroupNorm``.
    """

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:  # type: ignore[override]
        if mask is None:
            return super().forward(x)
        b, c, length = x.shape
        g = self.num_groups
        mask = (mask[:, None, :] if mask.dim() == 2 else mask).expand(b, c, length).to(x.dtype)
        xg, mg = x.reshape(b, g, c // g, length), mask.reshape(b, g, c // g, length)
        count = mg.sum(dim=(2, 3), keepdim=True).clamp_min(1.0)
        mean = (xg * mg).sum(dim=(2, 3), keepdim=True) / count
        var = (((xg - mean) * mg) ** 2).sum(dim=(2, 3), keepdim=True) / count
        out = ((xg - mean) / torch.sqrt(var + self.eps)).reshape(b, c, length)
        if self.affine:
            out = out * self.weight.view(1, -1, 1) + self.bias.view(1, -1, 1)
        return out * mask


class ConvBlock1d(nn.Module):
    """``groupnorm`` (one group, masked) → SiLU → ``project`` (``Conv1d`` kernel 3, ``padding="same"``)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.groupnorm = MaskedGroupNorm(num_groups=1, num_channels=dim)
        self.activation = nn.SiLU()
        self.project = nn.Conv1d(dim, dim, kernel_size=3, padding="same")

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.project(self.activation(self.groupnorm(x, mask)))


class ResnetBlock1d(nn.Module):
    """``x + block2(block1(x))`` over ``(B, C, L)`` (the official ``ResnetBlock1d``)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.block1 = ConvBlock1d(dim)
        self.block2 = ConvBlock1d(dim)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        return x + self.block2(self.block1(x, mask), mask)


class SequenceEmbeddings(nn.Module):
    """The tower's front (official ``Embeddings``): prepend ``cls_token``, then ``resnet_block`` over time (class token included).

    ``forward(x (B, T, D), mask (B, T) or None)`` → ``(B, 1 + T, D)`` and the mask with the class token's ``True`` prepended.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.resnet_block = ResnetBlock1d(dim)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))

    def forward(self, x: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        if mask is not None:
            mask = F.pad(mask.bool(), (1, 0), value=True)
        return self.resnet_block(x.transpose(1, 2), mask).transpose(1, 2), mask


class RopeTransformer(nn.Module):
    """PE-AV's sequence tower (official ``Transformer``): ``embeddings`` → ``layers`` → ``norm`` → ``output``.

    ``forward(x (B, T, D), mask (B, T) bool or None)`` → ``(states (B, T, D), pooled (B, D))``: the class token's final state
    is ``pooled`` (``pooler_output``), the other states ``states`` (``last_hidden_state``). Padded steps (mask False) do not
    change the real steps' outputs (right padding: positions are token indices).

    Args:
        dim: width (``hidden_size``; release default 1024).
        depth: layers (``num_hidden_layers``; default 16).
        num_heads: heads (``num_attention_heads``; default 8).
        intermediate_size: SwiGLU hidden width, used as given (default 2752).
        max_position_embeddings: the longest sequence, class token included (default 10000); sets RoPE's base
            ``max(10000, 2 · max_position_embeddings)``.
        eps: every RMSNorm's epsilon (``rms_norm_eps``, 1e-5).
        dropout: attention dropout while training (``attention_dropout``, 0).
    """

    def __init__(self, dim: int = 1024, depth: int = 16, num_heads: int = 8, intermediate_size: int = 2752, max_position_embeddings: int = 10_000,
                 eps: float = 1e-5, dropout: float = 0.0) -> None:  # fmt: skip
        super().__init__()
        if depth < 1 or max_position_embeddings < 2 or not (eps > 0 and math.isfinite(eps)):
            raise ValueError(f"need depth ≥ 1, max_position_embeddings ≥ 2 and eps > 0, got {depth}, {max_position_embeddings}, {eps}")
        self.max_position_embeddings, self.theta = max_position_embeddings, pe_av_rope_theta(max_position_embeddings)
        self.embeddings = SequenceEmbeddings(dim)
        self.layers = nn.ModuleList(RopeDecoderLayer(dim, num_heads, intermediate_size, eps, dropout) for _ in range(depth))
        self.norm = nn.RMSNorm(dim, eps=eps)
        self.output = nn.Linear(dim, dim, bias=False)
        self.head_dim = dim // num_heads

    def forward(self, x: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if x.dim() != 3 or x.shape[1] + 1 > self.max_position_embeddings:
            raise ValueError(f"expected (B, T, D) inputs with 1 + T ≤ {self.max_position_embeddings}, got {tuple(x.shape)}")
        if mask is not None and tuple(mask.shape) != tuple(x.shape[:2]):
            raise ValueError(f"mask {tuple(mask.shape)} does not match the inputs' (B, T) {tuple(x.shape[:2])}")
        h, mask = self.embeddings(x, mask)
        angles = rope_1d_angles(self.head_dim, h.shape[1], self.theta, h.device)
        for layer in self.layers:
            h = layer(h, angles, mask)
        h = self.output(self.norm(h))
        return h[:, 1:], h[:, 0]
