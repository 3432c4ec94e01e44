"""AV-SUPERB's (S3PRL's) ``Featurizer``: a learnable softmax-weighted sum over a frozen encoder's hidden states.

Reference: Tseng et al., "AV-SUPERB: A Multi-Task Evaluation Benchmark for Audio-Visual Representation Models"
(ICASSP 2024), official code github.com/roger-tseng/av-superb ``interfaces.py`` (``Featurizer._weighted_sum``),
itself from S3PRL's ``s3prl/upstream/interfaces.py``. An upstream returns, per feature type (``audio_feats``,
``video_feats``, ``fusion_feats``), a list of hidden states ``(B, T, D)`` (the embedding output and the output of
every block, e.g. ``upstream_models/mavil/expert.py``); the downstream probe sees one ``(B, T, D)`` tensor:

    h = Σ_l softmax(w)_l · LN(h_l)

Verified against the official code, line by line:

* the weights ``w`` are one scalar per layer, initialised to **zeros**, so the initial mixture is uniform
  (``nn.Parameter(torch.zeros(self.layer_num))``);
* the optional normalisation (``normalize``, off by default) is ``F.layer_norm`` over the last dimension **without**
  affine parameters, applied to every layer separately **before** weighting;
* a feature type with a single hidden state is used as it is (no weight); ``layer_selection`` picks one layer
  instead of the sum (here: :func:`select_layer`, for the single-layer baselines).

The pooling of utterance-level tasks (a mean over time before a linear head, ``downstream_tasks/*/model.py``) is
:func:`mean_pool`; since the weighted sum is linear it commutes with the mean, so probes may pool each layer first
and cache ``(L, N, D)`` vectors, as AV-SUPERB's ``--pooled_features_path`` does (there, and here, the layer norm then
acts on the pooled vectors).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from litzoo.framework.nn.text_encoder import masked_mean


class Featurizer(nn.Module):
    """Softmax-weighted sum of ``num_layers`` hidden states of width ``dim`` (AV-SUPERB / S3PRL ``Featurizer``).

    Args:
        num_layers: how many hidden states the upstream returns for the chosen feature type (at least 1; with 1
            the state passes through unweighted, as in the official code).
        dim: their width ``D`` (the last dimension); the output has the same width.
        layer_norm: normalise every hidden state over its last dimension (no affine parameters) before weighting
            (the official ``normalize`` flag, default off).

    ``forward`` takes a sequence of ``num_layers`` tensors of one shape ``(..., D)`` or one stacked tensor
    ``(num_layers, ..., D)`` and returns ``(..., D)``. :attr:`weights` are the raw logits (a parameter, zeros at
    initialisation); :meth:`layer_weights` is their softmax.
    """

    def __init__(self, num_layers: int, dim: int, layer_norm: bool = False) -> None:
        super().__init__()
        if not isinstance(num_layers, int) or num_layers < 1:
            raise ValueError(f"num_layers must be a positive integer, got {num_layers!r}")
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        self.num_layers, self.dim, self.layer_norm = num_layers, dim, bool(layer_norm)
        # zeros → uniform softmax: every layer starts with weight 1 / num_layers, as in the official code
        self.weights = nn.Parameter(torch.zeros(num_layers))

    def layer_weights(self) -> Tensor:
        """``softmax(weights)``, detached: the learned share of each layer (sums to 1)."""
        return F.softmax(self.weights.detach(), dim=-1)

    def forward(self, hidden_states: Sequence[Tensor] | Tensor) -> Tensor:
        stacked = hidden_states if isinstance(hidden_states, Tensor) else torch.stack(list(hidden_states), dim=0)
        if stacked.dim() < 2 or stacked.shape[0] != self.num_layers or stacked.shape[-1] != self.dim:
            raise ValueError(f"Featurizer expects {self.num_layers} hidden states of width {self.dim}, stacked as "
                             f"({self.num_layers}, ..., {self.dim}); got shape {tuple(stacked.shape)}")  # fmt: skip
        if self.layer_norm:
            stacked = F.layer_norm(stacked, (self.dim,))  # per layer and position: the last dimension only
        if self.num_layers == 1:
            return stacked[0]
        weights = F.softmax(self.weights, dim=-1).to(stacked.dtype)
        return torch.tensordot(weights, stacked, dims=([0], [0]))

    def extra_repr(self) -> str:
        return f"num_layers={self.num_layers}, dim={self.dim}, layer_norm={self.layer_norm}"


def select_layer(hidden_states: Sequence[Tensor] | Tensor, layer: int, layer_norm: bool = False) -> Tensor:
    """One hidden state (``layer`` indexes the list, negative from the end), normalised as :class:`Featurizer` would:
    the official ``layer_selection`` and the single-layer baselines."""
    state = hidden_states[layer]
    return F.layer_norm(state, (state.shape[-1],)) if layer_norm else state


def mean_pool(states: Tensor, mask: Tensor | None = None) -> Tensor:
    """Utterance-level pooling of AV-SUPERB's probes: the mean over time of ``(B, T, D)`` → ``(B, D)``; with a
    ``(B, T)`` boolean ``mask`` the mean over the true positions (an all-false row gives zeros). ``(B, D)`` inputs
    (already pooled) pass through."""
    if states.dim() == 2:
        return states
    if states.dim() != 3:
        raise ValueError(f"mean_pool expects (B, T, D) or (B, D) states, got shape {tuple(states.shape)}")
    if mask is None:
        return states.mean(dim=1)
    if mask.shape != states.shape[:2]:
        raise ValueError(f"mean_pool: mask of shape {tuple(mask.shape)} does not match states {tuple(states.shape[:2])}")
    return masked_mean(states, mask)


def synthetic_planted_layers(num_samples: int, num_layers: int, dim: int, num_classes: int, informative_layer: int,
                             time_steps: int = 4, strength: float = 0.3, last_layer_strength: float = 0.0,
                             seed: int = 0) -> tuple[Tensor, Tensor]:  # fmt: skip
    """SYNTHETIC hidden states with a planted ground truth: only ``informative_layer`` carries the label.

    Returns ``states`` ``(N, num_layers, time_steps, dim)`` and ``labels`` ``(N,)``. Every layer is standard Gaussian
    noise; ``informative_layer`` adds ``strength · μ_y`` at every time step, ``μ_c ~ N(0, I)`` one mean per class;
    the last layer adds ``last_layer_strength · μ_y`` (a weaker copy, as deep layers of real encoders keep part of
    what earlier ones found; 0: pure noise). All layers have the same scale, so no layer wins by its norm alone.
    Draw the training and the evaluation samples in one call and slice them, so that both share the class means.
    """
    if not 0 <= informative_layer < num_layers:
        raise ValueError(f"informative_layer must be in [0, {num_layers}), got {informative_layer}")
    generator = torch.Generator().manual_seed(seed)
    means = torch.randn(num_classes, dim, generator=generator)
    labels = torch.randint(num_classes, (num_samples,), generator=generator)
    states = torch.randn(num_samples, num_layers, time_steps, dim, generator=generator)
    states[:, informative_layer] += strength * means[labels].unsqueeze(1)
    if last_layer_strength:
        states[:, -1] += last_layer_strength * means[labels].unsqueeze(1)
    return states, labels
