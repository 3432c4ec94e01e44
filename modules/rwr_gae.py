"""RWR-GAE: the Random Walk Regularized Graph Auto-Encoder (Vaibhav, Huang, Frederking, arXiv 1908.04003).

Official code: MysteryVaibhav/RWR-GAE (``gae/{model,layers,optimizer,train,utils}.py``,
``deepWalk/{graph,skipGram}.py``), itself built on Kipf & Welling's GAE/VGAE (arXiv 1611.07308).

Verified against the official code, line by line:

- encoder: GCN ``hidden1=32`` (ReLU) then ``hidden2=16`` (linear), no bias, Glorot weights, dropout on each
  layer's input (``dropout=0``); the VGAE has a second linear GCN head for ``log σ`` (the official calls it
  ``logvar`` but uses ``exp(logvar)`` as the standard deviation, which is PyG's ``logstd``). GCN
  propagation is ``D^-1/2 (A + I) D^-1/2`` (``preprocess_graph``) = PyG's ``GCNConv`` defaults;
- decoder: inner product ``z zᵀ`` (logits); loss ``norm · BCE_with_logits(z zᵀ, A_train + I, pos_weight)``
  with ``pos_weight = (N² - ΣA)/ΣA`` and ``norm = N² / (2 (N² - ΣA))`` (``ΣA`` over the training adjacency
  without self-loops); VGAE adds ``KL / N`` with ``KL = -½ mean_i Σ_d (1 + 2 log σ - μ² - σ²)`` (= PyG's
  ``VGAE.kl_loss`` divided by N); the embedding evaluated is ``μ``; Adam lr 0.01, 200 epochs, full batch;
- the skip-gram regulariser: uniform random walks (length 5, 5 per node, window 3), negatives drawn uniformly
  outside the walk, a *separate* Adam optimiser (``lr_dw``; the README's command uses 0.01) and a context
  embedding table (``framework/graphs/walks.py``);
- evaluation: 85/5/10 edge split with as many sampled non-edges (``mask_test_edges``, done by the DataModule),
  AUC/AP of ``σ(z_i·z_j)``; k-means on ``μ`` scored by ACC (Hungarian matching), NMI and ARI.

Chosen where the official code is silent or differs from the paper (each said so in the report):

- **The regulariser reaches the encoder.** In the final official ``train.py`` the ``SkipGram`` module owns
  *both* its word and context tables and ``optimizer_dw`` steps only them, so the skip-gram loss never
  touches the GAE (``retain_graph=True`` is a left-over of the earlier version, commit dc4ca69, which used
  the GAE's ``z``). The paper regularises the encoder's embeddings, so here the encoder's ``μ`` is the
  word table: the skip-gram step updates the encoder's weights and the context table.
- Order: the GAE step, then one skip-gram step on the new ``μ`` (the official interleaves per walk, before
  the GAE's backward); one batched step over all walks of the epoch with the mean loss, instead of one step
  per walk; pairs from a window of 3 (the official default ``--context 0`` pairs walk[0] with the rest).
- Walks use the training edges only (the official walks the full graph, held-out test edges included).
- DDP (the official is single-process): every rank holds the same graph and draws the same walks (the same
  ``walk_seed`` generator); each computes the loss of every ``world_size``-th walk only, scaled by
  ``world_size``, so DDP's averaged gradient is the single-process one. The two optimisers step different
  parameters (the context table is not in the GAE loss, the VGAE's ``log σ`` head not in the walk loss), so DDP
  must be told to find unused parameters (``strategy: ddp_find_unused_parameters_true``); plain ``ddp`` is refused
  at ``fit`` start with that message (the alternative, DDP's opaque unused-parameter error one step later).
"""

from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch_geometric.nn import GAE, VGAE, GCNConv
from torchmetrics.functional.classification import binary_auroc, binary_average_precision

from litzoo.framework.graphs.walks import WalkSkipGram

# ------------------------------------------------------------------------------------------- losses and metrics


def dense_adjacency(edge_index: Tensor, num_nodes: int) -> Tensor:
    """The 0/1 adjacency of ``edge_index`` without self-loops (both directions must be in ``edge_index``)."""
    adj = torch.zeros(num_nodes, num_nodes)
    adj[edge_index[0], edge_index[1]] = 1.0
    adj.fill_diagonal_(0.0)
    return adj


def reconstruction_loss(z: Tensor, edge_index: Tensor, num_nodes: int) -> Tensor:
    """GAE's weighted BCE of the inner-product logits against ``A + I`` (official ``loss_function``)."""
    adj = dense_adjacency(edge_index, num_nodes).to(z)
    total = float(num_nodes * num_nodes)
    edges = float(adj.sum())
    if edges == 0:
        raise ValueError("the training graph has no edge")
    pos_weight = (total - edges) / edges
    norm = total / ((total - edges) * 2)
    labels = adj + torch.eye(num_nodes, dtype=z.dtype)
    return norm * F.binary_cross_entropy_with_logits(z @ z.t(), labels, pos_weight=torch.tensor(pos_weight, dtype=z.dtype))


def link_scores(z: Tensor, pairs: Tensor) -> Tensor:
    """``σ(z_i · z_j)`` for each column ``(i, j)`` of ``pairs`` (2, P)."""
    return torch.sigmoid((z[pairs[0]] * z[pairs[1]]).sum(-1))


def link_prediction_metrics(z: Tensor, positive: Tensor, negative: Tensor) -> dict[str, float]:
    """AUC and AP of held-out edges against sampled non-edges (official ``get_roc_score``)."""
    scores = torch.cat([link_scores(z, positive), link_scores(z, negative)])
    target = torch.cat([torch.ones(positive.shape[1]), torch.zeros(negative.shape[1])]).long()
    return {"auc": float(binary_auroc(scores, target)), "ap": float(binary_average_precision(scores, target))}


def clustering_accuracy(labels: np.ndarray, clusters: np.ndarray) -> float:
    """Accuracy under the best one-to-one map of clusters to classes (Hungarian, as the official Munkres)."""
    classes, cluster_ids = np.unique(labels), np.unique(clusters)
    counts = np.zeros((cluster_ids.size, classes.size), dtype=np.int64)
    np.add.at(counts, (np.searchsorted(cluster_ids, clusters), np.searchsorted(classes, labels)), 1)
    rows, cols = linear_sum_assignment(-counts)
    return float(counts[rows, cols].sum() / labels.size)


def clustering_metrics(embeddings: np.ndarray, labels: np.ndarray, num_clusters: int, seed: int = 0) -> dict[str, float]:
    """k-means (``random_state=seed``, as the official ``random_state=0``) on ``embeddings`` scored by ACC, NMI, ARI."""
    if not np.isfinite(embeddings).all():
        raise FloatingPointError("node embeddings are not finite")
    clusters = KMeans(n_clusters=num_clusters, random_state=seed, n_init=10).fit_predict(embeddings)
    return {"acc": clustering_accuracy(labels, clusters), "nmi": float(normalized_mutual_info_score(labels, clusters)),
            "ari": float(adjusted_rand_score(labels, clusters))}  # fmt: skip


# ------------------------------------------------------------------------------------------------ the network


class GCNEncoder(nn.Module):
    """Two GCN layers (official ``GCNModelAE``/``GCNModelVAE`` encoder): ReLU layer then linear head(s)."""

    def __init__(self, in_channels: int, hidden1: int = 32, hidden2: int = 16, variational: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        if min(in_channels, hidden1, hidden2) < 1:
            raise ValueError(f"in_channels, hidden1, hidden2 must be >= 1, got {in_channels}, {hidden1}, {hidden2}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.dropout, self.variational = dropout, variational
        self.conv1 = GCNConv(in_channels, hidden1, bias=False)
        self.conv_mu = GCNConv(hidden1, hidden2, bias=False)
        self.conv_logstd = GCNConv(hidden1, hidden2, bias=False) if variational else None

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        h = F.relu(self.conv1(F.dropout(x, self.dropout, self.training), edge_index))
        h = F.dropout(h, self.dropout, self.training)
        mu = self.conv_mu(h, edge_index)
        return (mu, self.conv_logstd(h, edge_index)) if self.conv_logstd is not None else mu


class GraphAutoEncoder(nn.Module):
    """GAE or VGAE (PyG's wrappers around :class:`GCNEncoder`) with the official loss; usable without Lightning."""

    def __init__(self, in_channels: int, hidden1: int = 32, hidden2: int = 16, variational: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        encoder = GCNEncoder(in_channels, hidden1, hidden2, variational, dropout)
        self.variational = variational
        self.gae = VGAE(encoder) if variational else GAE(encoder)

    def embed(self, x: Tensor, edge_index: Tensor) -> Tensor:
        """The evaluated node embedding ``μ`` (no sampling)."""
        out = self.gae.encoder(x, edge_index)
        return out[0] if self.variational else out

    def loss(self, x: Tensor, edge_index: Tensor) -> Tensor:
        """Reconstruction (+ KL / N for the VGAE) on the training graph ``edge_index``."""
        z = self.gae.encode(x, edge_index)  # VGAE: μ + ε σ in training, μ in eval (PyG's reparametrize)
        num_nodes = x.shape[0]
        loss = reconstruction_loss(z, edge_index, num_nodes)
        if self.variational:
            loss = loss + self.gae.kl_loss() / num_nodes
        return loss


# ----------------------------------------------------------------------------------------- the LightningModule


class RWRGAE(L.LightningModule):
    """GAE/VGAE trained full-batch, with RWR-GAE's skip-gram step on random walks after each GAE step.

    Batches (from ``litzoo.datamodules.node_graph``) hold the whole graph: ``x`` (N, F), ``edge_index``
    (training edges, both directions), ``y`` (N,) community labels (-1 where unknown), and
    ``{val,test}_{pos,neg}`` (2, P) held-out edges and sampled non-edges.

    Args:
        in_channels: node feature width.
        hidden1, hidden2: GCN widths (official 32, 16).
        variational: VGAE instead of GAE.
        dropout: dropout on each GCN layer's input (official 0).
        lr: the GAE's Adam learning rate (official 0.01).
        walk_regularization: run the skip-gram step (``False`` gives the plain GAE/VGAE baseline).
        lr_walk: the skip-gram optimiser's Adam learning rate (official README command 0.01).
        walk_length, walks_per_node, window, num_negatives: the walk corpus (official 5, 5, 3, walk_length - 1).
        walk_seed: seed of the walk generator (its state is checkpointed).
        num_clusters: k-means clusters for the clustering metrics (0: the number of labelled classes).
    """

    def __init__(self, in_channels: int, hidden1: int = 32, hidden2: int = 16, variational: bool = False, dropout: float = 0.0,
                 lr: float = 0.01, walk_regularization: bool = True, lr_walk: float = 0.01, walk_length: int = 5, walks_per_node: int = 5,
                 window: int = 3, num_negatives: int = 4, walk_seed: int = 0, num_clusters: int = 0, num_nodes: int | None = None) -> None:  # fmt: skip
        super().__init__()
        if lr <= 0 or lr_walk <= 0:
            raise ValueError(f"lr and lr_walk must be > 0, got {lr}, {lr_walk}")
        if num_clusters < 0:
            raise ValueError(f"num_clusters must be >= 0, got {num_clusters}")
        self.save_hyperparameters()
        self.automatic_optimization = False  # two optimisers stepped in turn, as the official's optimizer / optimizer_dw
        self.net = GraphAutoEncoder(in_channels, hidden1, hidden2, variational, dropout)
        self.walk_kwargs = {"walk_length": walk_length, "walks_per_node": walks_per_node, "window": window, "num_negatives": num_negatives}
        WalkSkipGram(2, 1, **self.walk_kwargs)  # checks the walk arguments now rather than at the first step
        # the context table needs the node count; it is built now when given, else at the first batch (before the optimisers matter)
        self.skipgram: WalkSkipGram | None = WalkSkipGram(num_nodes, hidden2, **self.walk_kwargs) if num_nodes and walk_regularization else None
        self.walk_generator = torch.Generator().manual_seed(walk_seed)

    def node_embeddings(self, batch: dict[str, Any]) -> Tensor:
        """``μ`` for every node of the batch's graph (the protocol ``RandomWalkRegularizer`` uses)."""
        return self.net.embed(batch["x"], batch["edge_index"])

    def setup(self, stage: str) -> None:
        if self.hparams.walk_regularization and self.skipgram is None:
            dm = self.trainer.datamodule if self.trainer is not None else None
            num_nodes = getattr(dm, "num_nodes", None)
            if num_nodes is None:
                raise ValueError("walk_regularization needs num_nodes (give it, or use a DataModule with a num_nodes attribute)")
            self.skipgram = WalkSkipGram(int(num_nodes), self.hparams.hidden2, **self.walk_kwargs)

    def on_fit_start(self) -> None:
        wrapped = self.trainer.strategy.model
        if self.skipgram is not None and isinstance(wrapped, DistributedDataParallel) and not wrapped.find_unused_parameters:
            raise ValueError("RWRGAE with walk_regularization under DDP needs strategy 'ddp_find_unused_parameters_true': its two optimisers "
                             "step different parameters (the context table is not in the GAE loss)")  # fmt: skip

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        optimizers = [torch.optim.Adam(self.net.parameters(), lr=self.hparams.lr)]
        if self.skipgram is not None:
            optimizers.append(torch.optim.Adam([*self.net.parameters(), *self.skipgram.parameters()], lr=self.hparams.lr_walk))
        return optimizers

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        optimizers = self.optimizers()
        optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
        loss = self.net.loss(batch["x"], batch["edge_index"])
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite GAE loss {float(loss)}")
        optimizers[0].zero_grad()
        self.manual_backward(loss)
        optimizers[0].step()
        self.log("train/loss_gae", loss, prog_bar=True, batch_size=1)
        if self.skipgram is not None:
            world = self.trainer.world_size
            # this rank's share of the walks, times world_size: DDP averages the gradients into the whole corpus's mean
            walk_loss = world * self.skipgram(self.node_embeddings(batch), batch["edge_index"], self.walk_generator, self.global_rank, world)
            if not torch.isfinite(walk_loss):
                raise FloatingPointError(f"non-finite skip-gram loss {float(walk_loss)}")
            optimizers[1].zero_grad()
            self.manual_backward(walk_loss)
            optimizers[1].step()
            self.log("train/loss_walk", walk_loss, batch_size=1, sync_dist=world > 1)
        return loss

    def evaluate(self, batch: dict[str, Any], split: str) -> dict[str, float]:
        """Link prediction on ``split``'s held-out edges and, where labels exist, k-means clustering of ``μ``."""
        z = self.node_embeddings(batch)
        if not torch.isfinite(z).all():
            raise FloatingPointError("node embeddings are not finite")
        results = {f"link_{k}": v for k, v in link_prediction_metrics(z, batch[f"{split}_pos"], batch[f"{split}_neg"]).items()}
        labels = batch["y"].cpu().numpy()
        if (labels >= 0).all():
            k = self.hparams.num_clusters or int(np.unique(labels).size)
            results.update(clustering_metrics(z.detach().cpu().double().numpy(), labels, k))
        return results

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        for name, value in self.evaluate(batch, "val").items():
            self.log(f"val/{name}", value, batch_size=1)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        for name, value in self.evaluate(batch, "test").items():
            self.log(f"test/{name}", value, batch_size=1)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["walk_generator"] = self.walk_generator.get_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "walk_generator" in checkpoint:
            self.walk_generator.set_state(checkpoint["walk_generator"])
