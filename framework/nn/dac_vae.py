"""The DAC-VAE audio encoder in front of PE-AV's audio tower: Snake residual units, strided convolutions, a VAE mean.

PE-AV (Meta FAIR, 2025; notes ``ssl_multimodal.md`` §14). Official code read line by line: facebookresearch/perception_models
``core/audio_visual_encoder/audio_codec.py`` (``DacEncoderVAE``, ``VAEBottleneck``) and ``config.py`` (``DFLT_DACVAE_CONFIG``),
which build the encoder of Hugging Face ``transformers`` ``models/dac/modeling_dac.py`` (``DacEncoder``, ``DacEncoderBlock``,
``DacResidualUnit``, ``Snake1d``; ``configuration_dac.py`` ``DacConfig``) — the Descript Audio Codec encoder (Kumar et al.,
"High-Fidelity Audio Compression with Improved RVQGAN", NeurIPS 2023) with its quantizer replaced by a VAE bottleneck whose
**mean** is the feature. Module and parameter names are the official ones, so the release's
``audio_visual_model.audio_model.dac_vae_encoder.*`` keys load as they are.

Kept from the official code:

* ``Snake1d``: ``x + sin²(α x) / (α + 1e-9)`` with one ``alpha`` per channel (``(1, C, 1)``, init 1).
* ``DacResidualUnit(C, dilation)``: ``x + conv2(snake2(conv1(snake1(x))))``, ``conv1`` kernel 7 with ``dilation`` and
  padding ``3 · dilation`` (length kept), ``conv2`` kernel 1; both with bias.
* ``DacEncoderBlock`` (stride ``s``, output width ``C``): residual units at width ``C/2`` with dilations 1, 3, 9 →
  ``snake1`` → ``conv1`` ``Conv1d(C/2, C, kernel 2s, stride s, padding ⌈s/2⌉)``.
* ``DacEncoder``: ``conv1`` ``Conv1d(1, encoder_hidden_size, 7, padding 3)`` → one block per downsampling ratio, block ``i``
  (from 1) of width ``encoder_hidden_size · 2^i`` → ``snake1`` → ``conv2`` ``Conv1d(d, d, 3, padding 1)`` with
  ``d = encoder_hidden_size · 2^len(ratios)`` (``DacConfig.hidden_size``).
* ``bottleneck`` (``VAEBottleneck``): ``in_proj`` ``Conv1d(d, 2 · codebook_dim, 1)``; the features are its **first**
  ``codebook_dim`` channels (the mean; the log-scale half is dropped); ``out_proj`` ``Conv1d(codebook_dim, d, 1)`` is
  held (it is in the release's state dict) but unused. The official constructor passes ``codebook_size`` as the input width;
  it equals ``d`` in the release (1024 = 64 · 2⁴), so here it is ``d``.
* the waveform is **reflect**-padded on the right to a multiple of the hop ``∏ ratios`` (1920 at the release's
  2 · 8 · 10 · 12 = 25 Hz at 48 kHz), so ``T = ⌈N / hop⌉`` frames; a padding mask at the sample rate becomes
  ``mask[:, ::hop]`` (official ``AudioEncoder``).
* the encoder is **frozen** in PE-AV (``torch.no_grad()`` in its forward): ``frozen=True`` does the same.
* no weight normalisation: ``transformers``' ``DacEncoder`` builds plain ``Conv1d`` layers and ``DacEncoderVAE`` never calls
  ``apply_weight_norm``, so the release stores plain ``weight`` / ``bias`` tensors.

Release configuration (``DFLT_DACVAE_CONFIG``): ``encoder_hidden_size`` 64, ``downsampling_ratios`` (2, 8, 10, 12),
``codebook_dim`` 128, 48 kHz; :data:`DAC_VAE_RELEASE`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DAC_VAE_RELEASE", "DacEncoder", "DacEncoderBlock", "DacEncoderVAE", "DacResidualUnit", "Snake1d", "VAEBottleneck"]

#: PE-AV's ``DFLT_DACVAE_CONFIG`` (the parts the encoder uses).
DAC_VAE_RELEASE = {"encoder_hidden_size": 64, "downsampling_ratios": (2, 8, 10, 12), "codebook_dim": 128, "sampling_rate": 48_000}


class Snake1d(nn.Module):
    """Snake activation ``x + sin²(α x) / (α + 1e-9)``, one learned ``alpha`` per channel of ``(B, C, L)``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        x = x.reshape(shape[0], shape[1], -1)
        return (x + (self.alpha + 1e-9).reciprocal() * torch.sin(self.alpha * x).pow(2)).reshape(shape)


class DacResidualUnit(nn.Module):
    """``x + conv2(snake2(conv1(snake1(x))))`` with a dilated kernel-7 ``conv1`` and a kernel-1 ``conv2``."""

    def __init__(self, channels: int, dilation: int = 1) -> None:
        super().__init__()
        self.snake1 = Snake1d(channels)
        self.conv1 = nn.Conv1d(channels, channels, kernel_size=7, dilation=dilation, padding=3 * dilation)
        self.snake2 = Snake1d(channels)
        self.conv2 = nn.Conv1d(channels, channels, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(self.snake2(self.conv1(self.snake1(x))))


class DacEncoderBlock(nn.Module):
    """Three residual units (dilations 1, 3, 9) at ``channels / 2``, Snake, then a stride-``s`` conv to ``channels``."""

    def __init__(self, channels: int, stride: int) -> None:
        super().__init__()
        if channels < 2 or channels % 2 or stride < 1:
            raise ValueError(f"need an even channels ≥ 2 and stride ≥ 1, got {channels}, {stride}")
        half = channels // 2
        self.res_unit1 = DacResidualUnit(half, dilation=1)
        self.res_unit2 = DacResidualUnit(half, dilation=3)
        self.res_unit3 = DacResidualUnit(half, dilation=9)
        self.snake1 = Snake1d(half)
        self.conv1 = nn.Conv1d(half, channels, kernel_size=2 * stride, stride=stride, padding=math.ceil(stride / 2))

    def forward(self, x: Tensor) -> Tensor:
        return self.conv1(self.snake1(self.res_unit3(self.res_unit2(self.res_unit1(x)))))


class DacEncoder(nn.Module):
    """Waveform ``(B, 1, N)`` → ``(B, encoder_hidden_size · 2^len(ratios), N / ∏ ratios)`` (``transformers`` ``DacEncoder``)."""

    def __init__(self, encoder_hidden_size: int = 64, downsampling_ratios: Sequence[int] = (2, 8, 10, 12)) -> None:
        super().__init__()
        if encoder_hidden_size < 1 or not downsampling_ratios or any(int(s) < 1 for s in downsampling_ratios):
            raise ValueError(f"need encoder_hidden_size ≥ 1 and positive downsampling_ratios, got {encoder_hidden_size}, {downsampling_ratios}")
        self.conv1 = nn.Conv1d(1, encoder_hidden_size, kernel_size=7, padding=3)
        self.block = nn.ModuleList(DacEncoderBlock(encoder_hidden_size * 2**i, int(s)) for i, s in enumerate(downsampling_ratios, start=1))
        self.hidden_size = encoder_hidden_size * 2 ** len(downsampling_ratios)
        self.snake1 = Snake1d(self.hidden_size)
        self.conv2 = nn.Conv1d(self.hidden_size, self.hidden_size, kernel_size=3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        for block in self.block:
            x = block(x)
        return self.conv2(self.snake1(x))


class VAEBottleneck(nn.Module):
    """``in_proj`` (1×1 conv to ``2 · bottleneck_dim``) whose first half, the mean, is returned; ``out_proj`` held unused."""

    def __init__(self, input_dim: int, bottleneck_dim: int) -> None:
        super().__init__()
        self.in_proj = nn.Conv1d(input_dim, 2 * bottleneck_dim, kernel_size=1)
        self.out_proj = nn.Conv1d(bottleneck_dim, input_dim, kernel_size=1)

    def forward(self, z: Tensor) -> Tensor:
        return self.in_proj(z).chunk(2, dim=1)[0]


class DacEncoderVAE(nn.Module):
    """PE-AV's audio features: waveform ``(B, 1, N)`` or ``(B, N)`` → ``(B, codebook_dim, ⌈N / hop⌉)`` (official ``DacEncoderVAE``).

    Args:
        encoder_hidden_size: width after the first conv (release: 64).
        downsampling_ratios: the blocks' strides (release: 2, 8, 10, 12; hop 1920).
        codebook_dim: feature width, the VAE mean (release: 128).
        sampling_rate: the waveform's rate in Hz (release: 48000; recorded, not used by the encoder).
        frozen: run without gradients, as PE-AV does.
    """

    def __init__(self, encoder_hidden_size: int = 64, downsampling_ratios: Sequence[int] = (2, 8, 10, 12), codebook_dim: int = 128,
                 sampling_rate: int = 48_000, frozen: bool = True) -> None:  # fmt: skip
        super().__init__()
        if codebook_dim < 1:
            raise ValueError(f"codebook_dim must be positive, got {codebook_dim}")
        self.encoder = DacEncoder(encoder_hidden_size, downsampling_ratios)
        self.bottleneck = VAEBottleneck(self.encoder.hidden_size, codebook_dim)
        self.hop_length = math.prod(int(s) for s in downsampling_ratios)
        self.sampling_rate, self.frozen, self.codebook_dim = sampling_rate, frozen, codebook_dim

    def pad(self, waveform: Tensor) -> Tensor:
        """Reflect-pad the last axis on the right to a multiple of ``hop_length``."""
        rest = waveform.shape[-1] % self.hop_length
        return F.pad(waveform, (0, self.hop_length - rest), mode="reflect") if rest else waveform

    def feature_mask(self, mask: Tensor) -> Tensor:
        """A sample-rate padding mask ``(B, N)`` → the frame mask ``(B, ⌈N / hop⌉)`` (every ``hop``-th sample, official)."""
        return mask[:, :: self.hop_length]

    def forward(self, waveform: Tensor) -> Tensor:
        if waveform.dim() == 2:
            waveform = waveform[:, None]
        if waveform.dim() != 3 or waveform.shape[1] != 1:
            raise ValueError(f"expected a mono waveform (B, 1, N) or (B, N), got {tuple(waveform.shape)}")
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            return self.bottleneck(self.encoder(self.pad(waveform)))
