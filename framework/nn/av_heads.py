"""PE-AV's modality alignment and per-pairing contrastive heads, and the pairwise objectives between joint embeddings.

From the audio-visual Perception Encoder (PE-AV; facebookresearch/perception_models ``core/audio_visual_encoder/``:
``aligner.py`` ``AlignModalities``, ``pe.py`` ``ContrastiveHead`` / ``AVTransformer`` / ``PEAudioVisual`` /
``PEAudioFrame``). The release has no training code. Read line by line and verified:

* :class:`AlignModalities` ``(in_channels, out_channels, normalize=True, btc=True)`` with the official parameter names
  ``conv`` (a ``Conv1d`` of kernel 1, with bias) and ``layer_norm`` (``nn.LayerNorm(out_channels)``, eps 1e-5).
  ``forward(src, src_mask, tgt, tgt_mask)`` takes ``(B, T, C)`` sequences; the **target** (the video frames, in
  ``AVTransformer``) is projected by the 1×1 conv **first**, then resampled along time to the **source's** length (the
  audio frames): each row's first ``tgt_size`` (= ``tgt_mask.sum()``, or all) frames are interpolated with
  ``F.interpolate(mode="nearest")`` to ``src_size`` steps and written into a zero tensor of the longest source length
  (so padded steps stay zero); when every row's sizes already agree, nothing is resampled. LayerNorm comes last (on the
  padded zeros too). It returns ``(aligned (B, T_src, out_channels), src_mask)``: the fused sequence keeps the audio's
  mask. PyTorch's ``nearest`` picks input frame ``min(⌊i · T_tgt / T_src⌋, T_tgt − 1)`` for output step ``i``.
* :class:`ContrastiveHead` ``(in_dim, out_dim)``: ``layer_norm`` (eps **1e-6**) then ``proj`` (``Linear`` **without
  bias**). Its output is not normalised inside the model (the retrieval scores of the release take cosine or dot
  products of these embeddings; here :func:`clip_pair_loss` and :func:`sigmoid_pair_loss` L2-normalise them).
* The eight PE-AV heads and what each embeds (``PEAudioVisual.forward``): ``audio_head`` (the audio tower's pooled
  output), ``visual_head`` (the video tower's), ``audio_visual_head`` (the fusion tower's), ``audio_text_head``,
  ``visual_text_head`` and ``audio_visual_text_head`` (all three on the same pooled text state: one text tower, one
  head per media side it is compared with), ``audio_plus_text_head`` (``[audio pooled; text pooled]``) and
  ``visual_plus_text_head`` (``[video pooled; text pooled]``). :data:`PE_AV_HEADS` lists them.

Chosen (the release has no loss): which embeddings each objective contrasts (:data:`PE_AV_PAIRINGS`: each text head
against its media side, audio against video, and the media + text embeddings against the other medium — "retrieve the
sound that goes with this video and this description"), and the objective per pair: CLIP's symmetric InfoNCE
(:func:`clip_pair_loss`, through :class:`~litzoo.framework.losses.contrastive.ClipLoss`, gathered under DDP) or
SigLIP's pairwise sigmoid (:func:`sigmoid_pair_loss`, Zhai et al., ICCV 2023: ``−(1/B) Σ_ij log σ(z_ij (t·x_i·y_j +
b))``, ``z = +1`` on the diagonal and ``−1`` off it; ``PEAudioFrame`` carries the ``logit_scale`` / ``logit_bias``
pair of this form, initialised at 0 in the release — here SigLIP's ``t = 10``, ``b = −10``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from litzoo.framework.losses.contrastive import ClipLoss

#: The PE-AV heads (``pe.py`` ``PEAudioVisual.__init__``) and the pooled states each one embeds.
PE_AV_HEADS: dict[str, tuple[str, ...]] = {
    "audio_visual_text_head": ("text",),
    "audio_text_head": ("text",),
    "visual_text_head": ("text",),
    "audio_visual_head": ("audio_visual",),
    "audio_head": ("audio",),
    "visual_head": ("visual",),
    "visual_plus_text_head": ("visual", "text"),
    "audio_plus_text_head": ("audio", "text"),
}

#: The pairwise objectives (ours; the release has no training code): ``name -> (embedding x, embedding y)``, each
#: embedding named by the head that makes it (without ``_head``).
PE_AV_PAIRINGS: dict[str, tuple[str, str]] = {
    "audio_text": ("audio", "audio_text"),
    "visual_text": ("visual", "visual_text"),
    "audio_visual_text": ("audio_visual", "audio_visual_text"),
    "audio_visual": ("audio", "visual"),
    "visual_plus_text_audio": ("visual_plus_text", "audio"),
    "audio_plus_text_visual": ("audio_plus_text", "visual"),
}

OBJECTIVES = ("clip", "sigmoid")


class AlignModalities(nn.Module):
    """1×1 conv on the target sequence, nearest resampling to the source's length, LayerNorm (see the module docstring).

    Args:
        in_channels: channels of the target sequence.
        out_channels: channels after the 1×1 conv.
        normalize: LayerNorm the aligned sequence (PE-AV: yes).
        btc: sequences are ``(B, T, C)`` (PE-AV: yes); ``False`` takes and returns ``(B, C, T)``.
    """

    def __init__(self, in_channels: int, out_channels: int, normalize: bool = True, btc: bool = True) -> None:
        super().__init__()
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"in_channels and out_channels must be positive, got {in_channels} and {out_channels}")
        self.in_channels, self.out_channels, self.normalize, self.btc = in_channels, out_channels, normalize, btc
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size=1)
        self.layer_norm = nn.LayerNorm(out_channels) if normalize else None

    @staticmethod
    def sizes(seq: Tensor, mask: Tensor | None) -> Tensor:
        """``(B,)`` valid lengths of a ``(B, C, T)`` sequence: the mask's row sums (True = a real step), else ``T``."""
        if mask is None:
            return torch.full((seq.shape[0],), seq.shape[-1], device=seq.device, dtype=torch.long)
        if tuple(mask.shape) != (seq.shape[0], seq.shape[-1]):
            raise ValueError(f"mask must be (B, T) = {(seq.shape[0], seq.shape[-1])}, got {tuple(mask.shape)}")
        return mask.long().sum(-1)

    def forward(self, src: Tensor, src_mask: Tensor | None, tgt: Tensor, tgt_mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """``src`` ``(B, T_src, ·)`` sets the length; ``tgt`` ``(B, T_tgt, in_channels)`` is projected and resampled to it.

        Returns:
            ``(aligned, src_mask)``: ``aligned`` is ``(B, max src size, out_channels)`` (``(B, C, T)`` when not ``btc``).
        """
        if self.btc:
            src, tgt = src.transpose(1, 2), tgt.transpose(1, 2)  # (B, C, T)
        if tgt.dim() != 3 or src.dim() != 3 or tgt.shape[0] != src.shape[0] or tgt.shape[1] != self.in_channels:
            raise ValueError(f"expected src (B, T, ·) and tgt (B, T, {self.in_channels}) with one batch size, got {tuple(src.shape)} "
                             f"and {tuple(tgt.shape)} (btc={self.btc})")  # fmt: skip
        tgt = self.conv(tgt)  # the conv runs on the target's own frame rate, before resampling
        src_sizes, tgt_sizes = self.sizes(src, src_mask), self.sizes(tgt, tgt_mask)
        if bool((tgt_sizes < 1).any()):
            raise ValueError("every target row needs at least one valid step")
        if bool((src_sizes == tgt_sizes).all()):
            aligned = tgt
        elif bool((src_sizes == src_sizes[0]).all()) and bool((tgt_sizes == tgt.shape[-1]).all()):
            # one call for the whole batch when nothing is padded (the usual case): the same as the per-row loop
            aligned = F.interpolate(tgt, size=int(src_sizes[0]), mode="nearest")
        else:
            aligned = tgt.new_zeros(tgt.shape[0], tgt.shape[1], int(src_sizes.max()))
            for row, (tgt_size, src_size) in enumerate(zip(tgt_sizes.tolist(), src_sizes.tolist(), strict=True)):
                aligned[row, :, :src_size] = F.interpolate(tgt[row : row + 1, :, :tgt_size], size=src_size, mode="nearest")[0]
        aligned = aligned.transpose(1, 2)  # (B, T, C)
        if self.layer_norm is not None:
            aligned = self.layer_norm(aligned)
        return (aligned if self.btc else aligned.transpose(1, 2)), src_mask


class ContrastiveHead(nn.Module):
    """PE-AV's projection into the joint space: ``proj(layer_norm(x))``, LayerNorm eps 1e-6, a bias-free Linear.

    Args:
        in_dim: width of the pooled state(s) it embeds.
        out_dim: width of the joint space (PE-AV: 1024).
    """

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        if in_dim < 1 or out_dim < 1:
            raise ValueError(f"in_dim and out_dim must be positive, got {in_dim} and {out_dim}")
        self.layer_norm = nn.LayerNorm(in_dim, eps=1e-6)
        self.proj = nn.Linear(in_dim, out_dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(self.layer_norm(x))


def _check_pair(x: Tensor, y: Tensor) -> None:
    if x.dim() != 2 or x.shape != y.shape or x.shape[0] == 0:
        raise ValueError(f"expected two non-empty (B, E) embeddings of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")


def clip_pair_loss(x: Tensor, y: Tensor, logit_scale: Tensor, loss: ClipLoss | None = None) -> Tensor:
    """CLIP's symmetric InfoNCE between row-aligned embeddings ``x`` and ``y`` ``(B, E)``, L2-normalised here.

    ``logit_scale`` is the *log* inverse temperature (CLIP's parameter); the logits are ``exp(logit_scale)·x̂·ŷᵀ``.
    """
    _check_pair(x, y)
    return (loss or ClipLoss())(F.normalize(x, dim=-1), F.normalize(y, dim=-1), logit_scale.exp())


def sigmoid_pair_loss(x: Tensor, y: Tensor, logit_scale: Tensor, logit_bias: Tensor) -> Tensor:
    """SigLIP's pairwise sigmoid loss ``−(1/B) Σ_ij log σ(z_ij (exp(logit_scale)·x̂_i·ŷ_j + logit_bias))`` (single process).

    ``z_ij = +1`` when ``i = j`` (a matching pair), ``−1`` otherwise; ``x̂``, ``ŷ`` are L2-normalised.
    """
    _check_pair(x, y)
    logits = logit_scale.exp() * F.normalize(x, dim=-1) @ F.normalize(y, dim=-1).T + logit_bias
    signs = 2 * torch.eye(x.shape[0], device=x.device, dtype=logits.dtype) - 1
    return -F.logsigmoid(signs * logits).sum() / x.shape[0]


__all__ = [
    "OBJECTIVES",
    "PE_AV_HEADS",
    "PE_AV_PAIRINGS",
    "AlignModalities",
    "ContrastiveHead",
    "clip_pair_loss",
    "sigmoid_pair_loss",
]
