"""A user's node-embedding LightningModule (not RWR-GAE) and a shuffling DataModule of node mini-batches over one
SYNTHETIC graph (two planted communities), for the RandomWalkRegularizer's resume and DDP tests: more than one batch
per epoch, so a run can be killed mid-epoch, and under DDP each rank reads other batches."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, default_collate

from litzoo.framework.data.loaders import make_loader
from litzoo.framework.data.splits import SplitsDataModule


def two_communities(n: int = 40, p_in: float = 0.3, p_out: float = 0.02, feature_dim: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    """SYNTHETIC: nodes ``0..n/2-1`` and ``n/2..n-1`` form two planted communities (the label ``y``); noisy features."""
    g = torch.Generator().manual_seed(seed)
    y = (torch.arange(n) >= n // 2).long()
    probability = torch.where(y[:, None] == y[None, :], p_in, p_out)
    upper = torch.triu(torch.rand(n, n, generator=g) < probability, diagonal=1)
    src, dst = upper.nonzero().t()
    x = torch.randn(2, feature_dim, generator=g)[y] + torch.randn(n, feature_dim, generator=g)
    return {"x": x, "y": y, "edge_index": torch.cat([torch.stack([src, dst]), torch.stack([dst, src])], 1)}


class NodeIds(torch.utils.data.Dataset):
    def __init__(self, labels: torch.Tensor) -> None:
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"node": i, "label": self.labels[i]}


class WithGraph:
    """Collation: the default one, plus the whole graph's ``edge_index`` in every batch (the callback's protocol)."""

    def __init__(self, edge_index: torch.Tensor) -> None:
        self.edge_index = edge_index

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        return {**default_collate(items), "edge_index": self.edge_index}


class NodeBatches(SplitsDataModule):
    """Shuffled mini-batches of node ids (with labels) of :func:`two_communities`, on the core's resumable loader."""

    splits = ("train",)

    def __init__(self, n: int = 40, batch_size: int = 8, num_workers: int = 0) -> None:
        super().__init__(batch_size, num_workers)
        self.graph = two_communities(n)

    def build_dataset(self, split: str) -> NodeIds:
        return NodeIds(self.graph["y"])

    def make_dataloader(self, dataset, batch_size: int, shuffle: bool) -> DataLoader:
        return make_loader(dataset, batch_size, shuffle, self.num_workers, seed=self.shuffle_seed, collate_fn=WithGraph(self.graph["edge_index"]))


class NodeClassifier(L.LightningModule):
    """An MLP encoder of node features (with dropout, which draws from the global RNG) and a linear classifier
    trained on the batch's nodes; ``node_embeddings`` embeds every node."""

    def __init__(self, x: torch.Tensor, classes: int = 2, dim: int = 8, lr: float = 0.05) -> None:
        super().__init__()
        self.register_buffer("x", x)
        self.encoder = nn.Sequential(nn.Linear(x.shape[1], 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, dim))
        self.head = nn.Linear(dim, classes)
        self.lr = lr

    def node_embeddings(self, batch: dict[str, Any]) -> torch.Tensor:
        return self.encoder(self.x)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return F.cross_entropy(self.head(self.node_embeddings(batch)[batch["node"]]), batch["label"])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)
