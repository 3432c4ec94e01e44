"""Computation-graph (CG) encoders for NAS performance predictors: the k-GNN of GENNAPE (Mills et al.,
AAAI 2023), the transferable predictor (Han et al., SDM 2023) and AIO-P (Mills et al., AAAI 2023), which
share it. Reference: Ascend-Research/GENNAPE ``model_src/model_components.py``
(``PreEmbeddedGraphEncoder``) and ``model_src/comp_graph/tf_comp_graph_models.py`` (``CGRegressor``).

Graphs come from :func:`litzoo.framework.graph.computation_graph` as torch_geometric batches (``x`` node
features, ``edge_index`` dataflow edges, ``batch`` graph ids).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from litzoo.framework.graph.computation import NUM_NODE_FEATURES


def laplacian_eigenvectors(edge_index: Tensor, num_nodes: int, k: int) -> Tensor:
    """``(num_nodes, k)``: eigenvectors of the symmetric normalised Laplacian ``I − D^-½ A D^-½`` of the
    undirected graph, by increasing eigenvalue, without the first (trivial) one; zero columns where the
    graph has fewer than ``k + 1`` nodes. Signs are arbitrary (hence the sign-flip augmentation)."""
    adjacency = torch.zeros(num_nodes, num_nodes, dtype=torch.float64)
    if edge_index.numel():
        adjacency[edge_index[0], edge_index[1]] = 1.0
        adjacency[edge_index[1], edge_index[0]] = 1.0
    adjacency.fill_diagonal_(0.0)
    degree = adjacency.sum(dim=1)
    inv_sqrt = torch.where(degree > 0, degree.clamp_min(1e-12).rsqrt(), torch.zeros_like(degree))
    laplacian = torch.eye(num_nodes, dtype=torch.float64) - inv_sqrt[:, None] * adjacency * inv_sqrt[None, :]
    _, vectors = torch.linalg.eigh(laplacian)  # ascending eigenvalues
    out = torch.zeros(num_nodes, k, dtype=torch.float32)
    take = min(k, num_nodes - 1)
    if take > 0:
        out[:, :take] = vectors[:, 1 : 1 + take].float()
    return out


def batch_laplacian_eigenvectors(edge_index: Tensor, batch: Tensor, k: int) -> Tensor:
    """:func:`laplacian_eigenvectors` of every graph of a torch_geometric batch, stacked ``(N_total, k)``."""
    counts = torch.bincount(batch).tolist()
    out, start = [], 0
    for count in counts:
        in_graph = (edge_index[0] >= start) & (edge_index[0] < start + count)
        out.append(laplacian_eigenvectors(edge_index[:, in_graph] - start, count, k))
        start += count
    return torch.cat(out).to(edge_index.device)


class CGEncoder(nn.Module):
    """k-GNN encoder of computation graphs: node features → linear embedding (+ Laplacian-eigenvector
    encoding) → ``num_layers`` × (``GraphConv`` → tanh) → mean over each graph's nodes → ``(G, hidden_dim)``.

    Args:
        num_node_features: columns of :meth:`ComputationGraph.node_features`.
        embed_dim: node embedding width (official ``in_channels`` 32).
        hidden_dim: GNN width and graph embedding size (official 32).
        num_layers: GraphConv layers (official 6).
        eigvec_size: Laplacian eigenvectors added to the node embedding through a linear layer (0 = none).
        flip_prob: in training, each node's eigenvector row is negated with this probability (official 0.25).
    """

    def __init__(self, num_node_features: int = NUM_NODE_FEATURES, embed_dim: int = 32, hidden_dim: int = 32, num_layers: int = 6,
                 eigvec_size: int = 8, flip_prob: float = 0.25) -> None:  # fmt: skip
        super().__init__()
        from torch_geometric.nn import GraphConv

        if min(num_node_features, embed_dim, hidden_dim, num_layers) < 1 or eigvec_size < 0:
            raise ValueError("num_node_features, embed_dim, hidden_dim and num_layers must be positive and eigvec_size >= 0")
        if not 0.0 <= flip_prob < 1.0:
            raise ValueError(f"flip_prob must be in [0, 1), got {flip_prob}")
        self.eigvec_size, self.flip_prob, self.hidden_dim = eigvec_size, flip_prob, hidden_dim
        self.node_embed = nn.Linear(num_node_features, embed_dim)
        self.eig_embed = nn.Linear(eigvec_size, embed_dim) if eigvec_size else None
        self.convs = nn.ModuleList(GraphConv(embed_dim if i == 0 else hidden_dim, hidden_dim) for i in range(num_layers))

    def forward_layers(self, x: Tensor, edge_index: Tensor, batch: Tensor, eigvecs: Tensor | None = None) -> list[Tensor]:
        """Node states ``[h0 (node embedding), h1, …, h_L]``, each ``(N_total, ·)``, before pooling
        (AIO-P's adapters read every layer of the frozen base)."""
        h = self.node_embed(x)
        if self.eig_embed is not None:
            if eigvecs is None:
                eigvecs = batch_laplacian_eigenvectors(edge_index, batch, self.eigvec_size)
            if self.training and self.flip_prob > 0:
                flips = torch.rand(eigvecs.shape[0], 1, device=eigvecs.device) < self.flip_prob
                eigvecs = torch.where(flips, -eigvecs, eigvecs)
            h = h + self.eig_embed(eigvecs)
        states = [h]
        for conv in self.convs:
            states.append(torch.tanh(conv(states[-1], edge_index)))
        return states

    def forward(self, x: Tensor, edge_index: Tensor, batch: Tensor, eigvecs: Tensor | None = None) -> Tensor:
        from torch_geometric.nn import global_mean_pool

        return global_mean_pool(self.forward_layers(x, edge_index, batch, eigvecs)[-1], batch)


class PredictorHead(nn.Sequential):
    """The official regressor after pooling: ``post_proj`` (Linear, Linear, ReLU, Linear, Linear) then Linear → 1."""

    def __init__(self, dim: int) -> None:
        super().__init__(nn.Linear(dim, dim), nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, 1))
