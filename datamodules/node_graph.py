"""Node graphs for graph auto-encoders (RWR-GAE, issue 22): the Planetoid pickles, Zachary's karate club and a
SYNTHETIC stochastic block model, all served full-batch with the GAE 85/5/10 edge split.

- :func:`load_planetoid` reads the Planetoid format (Yang et al. 2016; the files RWR-GAE and Kipf's GAE ship):
  ``ind.<name>.{x,tx,allx}`` (scipy sparse feature matrices), ``ind.<name>.{y,ty,ally}`` (one-hot numpy
  arrays), ``ind.<name>.graph`` (a ``dict``/``defaultdict`` node -> neighbour list) and ``ind.<name>.test.index``
  (one test node id per line). As the official ``load_data``: features = ``allx`` stacked on ``tx`` with the
  test rows moved to their ids, the same for labels, and (Citeseer's fix) a gap in the test ids is padded
  with zero rows. Pickles are read with an allow-list (numpy arrays, ``defaultdict``/``list``, and the CSR
  class, rebuilt from its validated arrays rather than by scipy's own unpickling). The adjacency is built
  from the dict's node ids (the official relies on networkx's insertion order, which equals the ids there).
- :func:`karate_club` is networkx's bundled Zachary karate club (real; 34 members, 78 ties, the two factions
  ``club`` as labels), with one-hot identity features (the official ``--features 0`` setting).
- :func:`stochastic_block_model` is SYNTHETIC: ``blocks`` planted communities (``p_in`` / ``p_out`` edge
  probabilities) with noisy node features whose mean depends on the community; the planted block is the label.
- :func:`split_edges` is the official ``mask_test_edges``: of the undirected edges, ⌊E/20⌋ validation and
  ⌊E/10⌋ test (so 85/5/10), and as many sampled non-edges for each (test non-edges avoid every edge, validation
  non-edges avoid every edge too, a slight tightening of the official, which checks train and val edges only).

Chosen: a plain ``LightningDataModule`` (the graph is one full batch, so there is no sampler to resume).
"""

from __future__ import annotations

import collections
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import lightning as L
import networkx as nx
import numpy as np
import scipy.sparse as sp
import torch
from torch.utils.data import DataLoader

from litzoo.framework.data.safe_pickle import NUMPY_ARRAYS, load_pickle
from litzoo.framework.errors import LitzooError

# ------------------------------------------------------------------------------------------------ Planetoid


class _CSRState:
    """Stand-in for ``scipy.sparse.csr_matrix`` while unpickling: it only records the pickled attributes."""

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.state = state


def _reconstructor(cls: type, base: type, state: Any) -> Any:  # Python 2 protocol 0/1 pickles go through copy_reg._reconstructor
    if cls is not _CSRState:
        raise TypeError(f"unexpected class {cls!r}")
    return _CSRState()


PLANETOID_GLOBALS = {
    **NUMPY_ARRAYS,
    ("collections", "defaultdict"): collections.defaultdict,
    ("builtins", "list"): list,
    ("__builtin__", "list"): list,
    ("builtins", "object"): object,
    ("__builtin__", "object"): object,
    ("copy_reg", "_reconstructor"): _reconstructor,
    ("copyreg", "_reconstructor"): _reconstructor,
    ("scipy.sparse.csr", "csr_matrix"): _CSRState,
    ("scipy.sparse._csr", "csr_matrix"): _CSRState,
}


def _features(obj: Any, path: Path) -> sp.csr_matrix:
    """A CSR feature matrix from an unpickled stand-in (or a dense array), its arrays checked."""
    if isinstance(obj, np.ndarray) and obj.ndim == 2:
        return sp.csr_matrix(obj.astype(np.float32))
    if not isinstance(obj, _CSRState):
        raise LitzooError(f"'{path}': expected a scipy CSR matrix or a 2-D array, got {type(obj).__name__}")
    state = obj.state
    try:
        shape = tuple(int(s) for s in state.get("_shape", state.get("shape")))
        matrix = sp.csr_matrix((np.asarray(state["data"], np.float32), np.asarray(state["indices"]), np.asarray(state["indptr"])), shape=shape)
        matrix.check_format(full_check=True)
    except Exception as err:
        raise LitzooError(f"'{path}': not a valid CSR matrix ({' '.join(str(err).split()) or type(err).__name__})") from None
    return matrix


def _labels(obj: Any, path: Path) -> np.ndarray:
    if not isinstance(obj, np.ndarray) or obj.ndim != 2:
        raise LitzooError(f"'{path}': expected a 2-D one-hot label array, got {type(obj).__name__}")
    return obj


def load_planetoid(root: str | Path, name: str) -> dict[str, Any]:
    """``{"x": (N, F) float32, "y": (N,) int64 (-1 for rows without a label), "edge_index": (2, E)}`` of the
    Planetoid data set ``name`` in ``root`` (files ``ind.<name>.*``).

    Raises:
        LitzooError: one line naming the file: missing or unreadable, a refused global, a wrong object, a bad
            ``test.index`` line, or a node id out of range.
    """
    root = Path(root)
    paths = {key: root / f"ind.{name}.{key}" for key in ("x", "y", "tx", "ty", "allx", "ally", "graph", "test.index")}
    objects = {key: load_pickle(path, PLANETOID_GLOBALS) for key, path in paths.items() if key != "test.index"}
    tx, allx = _features(objects["tx"], paths["tx"]), _features(objects["allx"], paths["allx"])
    ty, ally = _labels(objects["ty"], paths["ty"]), _labels(objects["ally"], paths["ally"])
    test_index = []
    try:
        lines = paths["test.index"].read_text().splitlines()
    except OSError as err:
        raise LitzooError(f"cannot read '{paths['test.index']}': {err.strerror or err}") from None
    for number, line in enumerate(lines, 1):
        try:
            test_index.append(int(line.strip()))
        except ValueError:
            raise LitzooError(f"'{paths['test.index']}' line {number}: expected a node id, got {line.strip()!r}") from None
    if len(test_index) != tx.shape[0] or ty.shape[0] != tx.shape[0] or ally.shape[0] != allx.shape[0]:
        raise LitzooError(f"'{paths['test.index']}': {len(test_index)} test ids for {tx.shape[0]} rows of tx and {ty.shape[0]} of ty "
                          f"({allx.shape[0]} rows of allx, {ally.shape[0]} of ally)")  # fmt: skip
    test_range = np.sort(test_index)
    full = np.arange(test_range.min(), test_range.max() + 1) if test_index else test_range
    if full.size > len(test_index):  # Citeseer: isolated test nodes without rows; pad zero rows at their ids
        tx_ext = sp.lil_matrix((full.size, tx.shape[1]), dtype=np.float32)
        tx_ext[test_range - full[0], :] = tx
        tx = tx_ext.tocsr()
        ty_ext = np.zeros((full.size, ty.shape[1]), dtype=ty.dtype)
        ty_ext[test_range - full[0], :] = ty
        ty = ty_ext
    features = sp.vstack((allx, tx)).tolil()
    features[test_index, :] = features[test_range, :]
    labels = np.vstack((ally, ty))
    labels[test_index, :] = labels[test_range, :]
    num_nodes = features.shape[0]
    y = np.where(labels.sum(1) > 0, labels.argmax(1), -1)
    graph = objects["graph"]
    if not isinstance(graph, dict):
        raise LitzooError(f"'{paths['graph']}': expected a dict of neighbour lists, got {type(graph).__name__}")
    src, dst = [], []
    for node, neighbours in graph.items():
        for other in neighbours:
            if not (isinstance(node, int | np.integer) and isinstance(other, int | np.integer) and 0 <= node < num_nodes and 0 <= other < num_nodes):
                raise LitzooError(f"'{paths['graph']}': node {node!r} -> {other!r} is not a node id in [0, {num_nodes})")
            src.append(int(node))
            dst.append(int(other))
    return {"x": torch.from_numpy(features.toarray().astype(np.float32)), "y": torch.from_numpy(y.astype(np.int64)),
            "edge_index": undirected_edges(torch.tensor([src, dst], dtype=torch.long).reshape(2, -1))}  # fmt: skip


# ----------------------------------------------------------------------------------------- karate club, SBM


def undirected_edges(edge_index: torch.Tensor) -> torch.Tensor:
    """Both directions of every edge, self-loops and duplicates dropped, sorted."""
    src, dst = edge_index
    keep = src != dst
    both = torch.cat([torch.stack([src[keep], dst[keep]]), torch.stack([dst[keep], src[keep]])], 1)
    return torch.unique(both, dim=1)


def karate_club() -> dict[str, Any]:
    """Zachary's karate club (networkx's bundled copy): identity features, the two factions as labels."""
    graph = nx.karate_club_graph()
    n = graph.number_of_nodes()
    y = torch.tensor([0 if graph.nodes[i]["club"] == "Mr. Hi" else 1 for i in range(n)])
    edges = torch.tensor(list(graph.edges()), dtype=torch.long).t()
    return {"x": torch.eye(n), "y": y, "edge_index": undirected_edges(edges)}


def stochastic_block_model(blocks: int = 5, block_size: int = 60, p_in: float = 0.2, p_out: float = 0.01, feature_dim: int = 16,
                           feature_noise: float = 2.0, seed: int = 0) -> dict[str, Any]:  # fmt: skip
    """SYNTHETIC planted communities: ``blocks`` blocks of ``block_size`` nodes, edges with probability ``p_in``
    inside a block and ``p_out`` across; features = the block's random unit-variance mean + N(0, feature_noise²).
    The planted block id is ``y``."""
    if blocks < 2 or block_size < 2 or not 0 <= p_out < p_in <= 1 or feature_dim < 1 or feature_noise < 0:
        raise ValueError(f"need blocks >= 2, block_size >= 2, 0 <= p_out < p_in <= 1, feature_dim >= 1, feature_noise >= 0; got "
                         f"{blocks}, {block_size}, {p_out}, {p_in}, {feature_dim}, {feature_noise}")  # fmt: skip
    probs = np.full((blocks, blocks), p_out)
    np.fill_diagonal(probs, p_in)
    graph = nx.stochastic_block_model([block_size] * blocks, probs.tolist(), seed=seed)
    y = torch.arange(blocks).repeat_interleave(block_size)
    gen = torch.Generator().manual_seed(seed)
    means = torch.randn(blocks, feature_dim, generator=gen)
    x = means[y] + feature_noise * torch.randn(y.numel(), feature_dim, generator=gen)
    edges = torch.tensor(list(graph.edges()), dtype=torch.long).t().reshape(2, -1)
    return {"x": x, "y": y, "edge_index": undirected_edges(edges)}


# --------------------------------------------------------------------------------------------- the edge split


def split_edges(edge_index: torch.Tensor, num_nodes: int, seed: int = 0, val_fraction: float = 0.05,
                test_fraction: float = 0.10) -> dict[str, torch.Tensor]:  # fmt: skip
    """GAE's split (official ``mask_test_edges``): ⌊E·val⌋ validation and ⌊E·test⌋ test edges out of the E undirected
    edges, as many non-edges each (distinct, unordered, no self-loop, not an edge of the graph, val and test
    non-edges disjoint); ``edge_index`` of the rest, both directions."""
    upper = edge_index[:, edge_index[0] < edge_index[1]]
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(upper.shape[1], generator=gen)
    num_val, num_test = int(np.floor(upper.shape[1] * val_fraction)), int(np.floor(upper.shape[1] * test_fraction))
    val, test, train = upper[:, perm[:num_val]], upper[:, perm[num_val:num_val + num_test]], upper[:, perm[num_val + num_test:]]
    taken = set(map(tuple, upper.t().tolist()))
    negatives: list[list[tuple[int, int]]] = [[], []]
    if num_nodes * (num_nodes - 1) // 2 - len(taken) < num_val + num_test:
        raise ValueError("the graph is too dense to sample as many non-edges as held-out edges")
    for out, count in zip(negatives, (num_val, num_test), strict=True):
        while len(out) < count:
            i, j = torch.randint(num_nodes, (2,), generator=gen).tolist()
            pair = (min(i, j), max(i, j))
            if i == j or pair in taken:
                continue
            taken.add(pair)
            out.append(pair)
    as_index = lambda pairs: torch.tensor(pairs, dtype=torch.long).reshape(-1, 2).t()  # noqa: E731
    return {"edge_index": undirected_edges(train), "val_pos": val, "val_neg": as_index(negatives[0]), "test_pos": test,
            "test_neg": as_index(negatives[1])}  # fmt: skip


# ------------------------------------------------------------------------------------------- the DataModules


class NodeGraphDataModule(L.LightningDataModule, ABC):
    """One graph as one full batch: ``x``, ``y``, ``edge_index`` (training edges) and ``{val,test}_{pos,neg}``.

    Subclasses give :meth:`load_graph`. ``split_seed`` draws the 85/5/10 split.
    """

    def __init__(self, split_seed: int = 0) -> None:
        super().__init__()
        self.split_seed = split_seed
        self.graph: dict[str, Any] | None = None

    @abstractmethod
    def load_graph(self) -> dict[str, Any]:
        """The graph: ``{"x", "edge_index", "y", ...}`` tensors."""

    def setup(self, stage: str | None = None) -> None:
        if self.graph is None:
            graph = self.load_graph()
            if not torch.isfinite(graph["x"]).all():
                raise ValueError("node features are not finite")
            self.graph = {"x": graph["x"], "y": graph["y"], **split_edges(graph["edge_index"], graph["x"].shape[0], self.split_seed)}

    @property
    def num_nodes(self) -> int:
        self.setup()
        return int(self.graph["x"].shape[0])

    @property
    def num_features(self) -> int:
        self.setup()
        return int(self.graph["x"].shape[1])

    def _loader(self) -> DataLoader:
        self.setup()
        return DataLoader([self.graph], batch_size=None)

    def train_dataloader(self) -> DataLoader:
        return self._loader()

    def val_dataloader(self) -> DataLoader:
        return self._loader()

    def test_dataloader(self) -> DataLoader:
        return self._loader()


class PlanetoidDataModule(NodeGraphDataModule):
    """A Planetoid data set (``ind.<name>.*`` files in ``root``; nothing is downloaded)."""

    def __init__(self, root: str, name: str = "cora", split_seed: int = 0) -> None:
        super().__init__(split_seed)
        self.save_hyperparameters()
        self.root, self.name = root, name

    def load_graph(self) -> dict[str, Any]:
        return load_planetoid(self.root, self.name)


class KarateClubDataModule(NodeGraphDataModule):
    """Zachary's karate club (real, bundled with networkx)."""

    def __init__(self, split_seed: int = 0) -> None:
        super().__init__(split_seed)
        self.save_hyperparameters()

    def load_graph(self) -> dict[str, Any]:
        return karate_club()


class SBMDataModule(NodeGraphDataModule):
    """SYNTHETIC stochastic block model with planted communities (see :func:`stochastic_block_model`)."""

    def __init__(self, blocks: int = 5, block_size: int = 60, p_in: float = 0.2, p_out: float = 0.01, feature_dim: int = 16,
                 feature_noise: float = 2.0, seed: int = 0, split_seed: int = 0) -> None:  # fmt: skip
        super().__init__(split_seed)
        self.save_hyperparameters()
        self.sbm_kwargs = {"blocks": blocks, "block_size": block_size, "p_in": p_in, "p_out": p_out, "feature_dim": feature_dim,
                           "feature_noise": feature_noise, "seed": seed}  # fmt: skip
        stochastic_block_model(**{**self.sbm_kwargs, "block_size": 2, "blocks": 2})  # checks the arguments now

    def load_graph(self) -> dict[str, Any]:
        return stochastic_block_model(**self.sbm_kwargs)
