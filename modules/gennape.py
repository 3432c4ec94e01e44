"""GENNAPE — Towards Generalized Neural Architecture Performance Estimators (Mills et al., AAAI 2023,
arXiv 2211.17226).

A network is a Computation Graph (CG) of atomic operations (:mod:`litzoo.framework.graph.computation`), so one
predictor can read architectures of any family. GENNAPE

1. embeds each CG with a k-GNN graph encoder,
2. pretrains the encoder with **contrastive learning** (NT-Xent) "to encourage network separation by
   topological features",
3. clusters the frozen embeddings of the training networks with **fuzzy c-means** (K clusters), and
4. trains K MLP predictor heads whose outputs are **soft-aggregated by each network's fuzzy membership**:
   ``ŷ(g) = Σ_k u_k(z_g) · head_k(z_g)``.

It is judged on families never seen in training, zero-shot and after fine-tuning on a few labelled
networks of the new family (the official demo: 50).

Reference code: Ascend-Research/GENNAPE (the k-GNN demo; the contrastive and fuzzy parts are not
released). From it: the encoder (``CGNodeEmbedding`` → ``PreEmbeddedGraphEncoder`` with ``GraphConv``,
6 layers, hidden 32, tanh after every layer → mean over nodes), the head (``CGRegressor.post_proj``:
Linear, Linear, ReLU, Linear, Linear, then a Linear regressor), Adam lr 1e-4, batch 32, 40 epochs,
fine-tuning for 100 epochs, and the Laplacian-eigenvector node encodings with random per-node sign
flips (p = 0.25) in training (``eigvec_size``). Our node features are
:meth:`ComputationGraph.node_features` (one-hot op + log-scaled shapes, kernel, stride, groups, bias,
FLOPs, params) through one linear layer, where the official code sums learned embeddings of the same
fields.

Not in the public code, taken from the abstract and the project notes (marked as such): the two
contrastive views of a CG are two independent draws of those sign flips, through a SimCLR-style
projection MLP, NT-Xent at temperature ``temperature``; the encoder is frozen after pretraining; fuzzy
c-means uses fuzzifier ``m = 2``; the K heads are trained jointly through the membership-weighted sum
with MSE on the standardised target.

Ablations (the paper's, by argument): ``contrastive_epochs=0`` trains encoder and one head end to end
(the plain k-GNN regressor of the demo); ``num_clusters=1`` keeps contrastive pretraining but one head.

This file holds what is GENNAPE's own — fuzzy c-means, the membership-weighted heads, and the module that
plugs them into the CG-predictor base it shares with the transferable predictor
(:class:`litzoo.framework.nas.CGPredictorModule`: encoder, contrastive phase, metrics, fine-tuning).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor, nn

from litzoo.framework.nas import CGPredictorModule, adam_cg_predictor
from litzoo.framework.nn.cg import PredictorHead

__all__ = ["FuzzyCMeans", "FuzzyHeadEnsemble", "GENNAPEModule", "adam_gennape", "fcm_objective", "fuzzy_c_means", "fuzzy_memberships"]

# ---------------------------------------------------------------------------------------- blocks: fuzzy c-means
# Fuzzy c-means (Bezdek, "Pattern Recognition with Fuzzy Objective Function Algorithms", 1981), in torch: GENNAPE
# clusters the frozen graph embeddings of the training architectures with it and weights one predictor head per
# cluster by each architecture's membership. With points z_i, centres c_k and fuzzifier m > 1, the memberships are
#
#     u_ik = 1 / Σ_j (‖z_i − c_k‖ / ‖z_i − c_j‖)^{2/(m−1)}          (rows sum to 1)
#
# and the centres the membership-weighted means c_k = Σ_i u_ik^m z_i / Σ_i u_ik^m. The two steps alternate from
# random memberships until the largest membership change is below tol; each step cannot increase the objective
# J = Σ_i Σ_k u_ik^m ‖z_i − c_k‖². (scikit-fuzzy's ``cmeans`` is the reference; it is not a dependency here.)


def fuzzy_memberships(points: Tensor, centers: Tensor, m: float = 2.0, eps: float = 1e-12) -> Tensor:
    """``(N, K)`` memberships of ``points`` ``(N, D)`` in the clusters of ``centers`` ``(K, D)``.

    A point that sits on a centre belongs to it fully (the limit of the formula)."""
    if m <= 1:
        raise ValueError(f"the fuzzifier m must be > 1, got {m}")
    dist = torch.cdist(points, centers)  # (N, K)
    on_center = dist <= eps
    # u_ik = d_ik^(-p) / Σ_j d_ij^(-p) with p = 2/(m−1): the same ratio as the formula, computed stably
    power = 2.0 / (m - 1.0)
    inv = dist.clamp_min(eps).pow(-power)
    u = inv / inv.sum(dim=1, keepdim=True)
    hit = on_center.any(dim=1)
    if hit.any():
        u[hit] = on_center[hit].to(u.dtype) / on_center[hit].sum(dim=1, keepdim=True)
    return u


def fcm_objective(points: Tensor, centers: Tensor, memberships: Tensor, m: float = 2.0) -> Tensor:
    """``J = Σ_i Σ_k u_ik^m ‖z_i − c_k‖²``."""
    return (memberships.pow(m) * torch.cdist(points, centers).pow(2)).sum()


@dataclass
class FuzzyCMeans:
    """The result of :func:`fuzzy_c_means`: ``centers`` ``(K, D)``, training ``memberships`` ``(N, K)``,
    the fuzzifier ``m``, iterations run and the final objective."""

    centers: Tensor
    memberships: Tensor
    m: float
    iterations: int
    objective: float

    def predict(self, points: Tensor) -> Tensor:
        """Memberships of new points in the fitted clusters."""
        return fuzzy_memberships(points, self.centers.to(points), self.m)


def fuzzy_c_means(points: Tensor, num_clusters: int, m: float = 2.0, max_iter: int = 300, tol: float = 1e-5,
                  seed: int = 0) -> FuzzyCMeans:  # fmt: skip
    """Fit ``num_clusters`` fuzzy clusters to ``points`` ``(N, D)`` (float64 internally)."""
    if points.ndim != 2:
        raise ValueError(f"points must be (N, D), got shape {tuple(points.shape)}")
    if not 1 <= num_clusters <= points.shape[0]:
        raise ValueError(f"num_clusters must be in [1, N={points.shape[0]}], got {num_clusters}")
    if m <= 1:
        raise ValueError(f"the fuzzifier m must be > 1, got {m}")
    z = points.detach().double()
    generator = torch.Generator().manual_seed(seed)
    u = torch.rand(z.shape[0], num_clusters, generator=generator, dtype=torch.float64).to(z.device)
    u = u / u.sum(dim=1, keepdim=True)
    iterations = 0
    while iterations < max_iter:
        iterations += 1
        weights = u.pow(m)
        centers = weights.T @ z / weights.sum(dim=0)[:, None]
        new_u = fuzzy_memberships(z, centers, m)
        change = (new_u - u).abs().max().item()
        u = new_u
        if change < tol:
            break
    centers = u.pow(m).T @ z / u.pow(m).sum(dim=0)[:, None]
    u = fuzzy_memberships(z, centers, m)
    return FuzzyCMeans(centers.to(points.dtype), u.to(points.dtype), m, iterations, float(fcm_objective(z, centers, u, m)))


# ---------------------------------------------------------------------------------------- blocks: weighted heads
class FuzzyHeadEnsemble(nn.Module):
    """K heads soft-aggregated by fuzzy c-means memberships of the graph embedding:
    ``ŷ = Σ_k u_k(z) · head_k(z)``; with one head, ``ŷ = head(z)``. ``centers`` are set by :meth:`fit`."""

    def __init__(self, dim: int, num_clusters: int = 1, fuzzifier: float = 2.0) -> None:
        super().__init__()
        if num_clusters < 1:
            raise ValueError(f"num_clusters must be at least 1, got {num_clusters}")
        if fuzzifier <= 1:
            raise ValueError(f"fuzzifier must be > 1, got {fuzzifier}")
        self.fuzzifier = fuzzifier
        self.heads = nn.ModuleList(PredictorHead(dim) for _ in range(num_clusters))
        self.register_buffer("centers", torch.zeros(num_clusters, dim))
        self.register_buffer("fitted", torch.tensor(num_clusters == 1))

    def fit(self, embeddings: Tensor, seed: int = 0) -> Tensor:
        """Fuzzy c-means on ``embeddings`` ``(N, D)``; returns the training memberships ``(N, K)``."""
        result = fuzzy_c_means(embeddings, len(self.heads), m=self.fuzzifier, seed=seed)
        self.centers.copy_(result.centers)
        self.fitted.fill_(True)
        return result.memberships

    def memberships(self, z: Tensor) -> Tensor:
        if len(self.heads) == 1:
            return torch.ones(z.shape[0], 1, device=z.device, dtype=z.dtype)
        if not bool(self.fitted):
            raise RuntimeError("the fuzzy clusters are not fitted yet (call fit on the training embeddings first)")
        return fuzzy_memberships(z, self.centers.to(z.dtype), self.fuzzifier)

    def forward(self, z: Tensor) -> Tensor:
        outputs = torch.cat([head(z) for head in self.heads], dim=1)  # (G, K)
        return (self.memberships(z) * outputs).sum(dim=1)


# ---------------------------------------------------------------------------------------- the module
adam_gennape = adam_cg_predictor  # Adam lr 1e-4, the official demo's


class GENNAPEModule(CGPredictorModule):
    """GENNAPE on batches of computation graphs (``torch_geometric`` batches with ``x``, ``edge_index``, ``batch``
    and a standardised target ``y``; e.g. ``litzoo.datamodules.architectures.ArchitectureDataModule``).

    Epochs ``[0, contrastive_epochs)`` pretrain the k-GNN with NT-Xent on eigenvector sign-flip views; at epoch
    ``contrastive_epochs`` the encoder is frozen, fuzzy c-means is fitted on the embeddings of the training
    graphs (:meth:`on_encoder_frozen`) and the membership-weighted heads (:class:`FuzzyHeadEnsemble`) train for
    the remaining epochs. Phases, metrics and :meth:`finetune` are those of
    :class:`litzoo.framework.nas.CGPredictorModule`.

    Args:
        contrastive_epochs: contrastive pretraining epochs (0: no pretraining; encoder and head train together).
        temperature: NT-Xent τ.
        projection_dim: output of the contrastive projection MLP (used only in pretraining).
        num_clusters: fuzzy clusters = predictor heads (1: a single head).
        fuzzifier: fuzzy c-means ``m``.
        cluster_seed: seed of the fuzzy c-means initialisation.
        optimizer: default Adam lr 1e-4 (official demo).
        **net_kwargs: the :class:`litzoo.framework.nn.cg.CGEncoder`'s arguments ``embed_dim`` … ``flip_prob`` (default
            the official demo's k-GNN: 32, 32, 6 layers, 8 eigenvectors flipped with p = 0.25).
    """

    def __init__(
        self,
        contrastive_epochs: int = 20,
        temperature: float = 0.1,
        projection_dim: int = 32,
        num_clusters: int = 3,
        fuzzifier: float = 2.0,
        cluster_seed: int = 0,
        optimizer: OptimizerCallable = adam_gennape,
        **net_kwargs: Any,
    ) -> None:
        if contrastive_epochs == 0 and num_clusters > 1:
            raise ValueError(
                "fuzzy clusters need a fixed embedding: num_clusters > 1 requires contrastive_epochs > 0 (the encoder is frozen after it)"
            )
        # the base's save_hyperparameters() records num_clusters, fuzzifier and cluster_seed too; build_head reads them
        super().__init__(contrastive_epochs, temperature, projection_dim, optimizer, **net_kwargs)

    def build_head(self) -> nn.Module:
        """``num_clusters`` heads weighted by fuzzy memberships (one head: plain regression)."""
        return FuzzyHeadEnsemble(self.encoder.hidden_dim, self.hparams.num_clusters, self.hparams.fuzzifier)

    def on_encoder_frozen(self) -> None:
        """Fuzzy c-means on the frozen embeddings of every training graph, once (the centres are in the checkpoint)."""
        if not bool(self.heads.fitted):
            self.heads.fit(self.training_embeddings(), seed=self.hparams.cluster_seed)
