"""RandomWalkRegularizer: RWR-GAE's skip-gram step on random walks (Vaibhav, Huang, Frederking, arXiv 1908.04003;
official code MysteryVaibhav/RWR-GAE) as a callback for any LightningModule that embeds the nodes of a graph.

What the module must give (the whole protocol):

- a method ``node_embeddings(batch) -> Tensor`` returning (num_nodes, dim) embeddings, differentiable with
  respect to the module's parameters (for RWR-GAE, the encoder's ``μ``);
- batches that are dicts holding the graph to walk on as ``batch["edge_index"]`` (2, E), both directions of
  every undirected edge (for link prediction, the *training* edges only).

After each training batch (the module's own optimiser has stepped), the callback draws fresh uniform walks
(``framework/graphs/walks.py``), pairs nodes within ``window``, draws negatives outside each walk, and takes one
step of its *own* Adam optimiser (the official's separate ``optimizer_dw``, lr ``lr``) on the module's parameters
and its context table, against the SGNS loss. Its state (context table, optimiser, walk generator) is in
``state_dict``. Under DDP each rank would draw its own walks; the callback refuses more than one process.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from litzoo.framework.graphs.walks import WalkSkipGram


class RandomWalkRegularizer(Callback):
    """Adds a skip-gram-with-negative-sampling step on random walks to a node-embedding LightningModule.

    Args:
        lr: the skip-gram optimiser's Adam learning rate (official README command 0.01).
        walk_length: nodes per walk (official 5).
        walks_per_node: walks started at every node per step (official 5).
        window: positions either side that pair (official 3).
        num_negatives: negatives per pair (official ``walk_length - 1``).
        seed: seed of the walk generator.
        every_n_steps: regularise after every n-th training batch.
    """

    def __init__(self, lr: float = 0.01, walk_length: int = 5, walks_per_node: int = 5, window: int = 3, num_negatives: int = 4,
                 seed: int = 0, every_n_steps: int = 1) -> None:  # fmt: skip
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        self.lr, self.every_n_steps = lr, every_n_steps
        self.walk_kwargs = {"walk_length": walk_length, "walks_per_node": walks_per_node, "window": window, "num_negatives": num_negatives}
        WalkSkipGram(2, 1, **self.walk_kwargs)  # checks the walk arguments now
        self.generator = torch.Generator().manual_seed(seed)
        self.skipgram: WalkSkipGram | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self._pending: dict[str, Any] | None = None
        self.last_loss: float | None = None

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not callable(getattr(pl_module, "node_embeddings", None)):
            raise TypeError(f"RandomWalkRegularizer needs {type(pl_module).__name__}.node_embeddings(batch) returning (num_nodes, dim) embeddings")
        if trainer.world_size > 1:
            raise ValueError("RandomWalkRegularizer runs on one process only (each rank would draw different walks)")

    def _build(self, pl_module: L.LightningModule, embeddings: torch.Tensor) -> None:
        self.skipgram = WalkSkipGram(embeddings.shape[0], embeddings.shape[1], **self.walk_kwargs).to(embeddings.device)
        self.optimizer = torch.optim.Adam([*pl_module.parameters(), *self.skipgram.parameters()], lr=self.lr)
        if self._pending is not None:
            self.skipgram.load_state_dict(self._pending["skipgram"])
            self.optimizer.load_state_dict(self._pending["optimizer"])
            self._pending = None

    def regularize(self, pl_module: L.LightningModule, batch: dict[str, Any]) -> float:
        """One skip-gram step on ``batch``'s graph; returns the loss before the step."""
        with torch.enable_grad():
            embeddings = pl_module.node_embeddings(batch)
            if self.skipgram is None:
                self._build(pl_module, embeddings)
            loss = self.skipgram(embeddings, batch["edge_index"].to(torch.long).cpu(), self.generator)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite skip-gram loss {float(loss)}")
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)  # the module's own optimiser must not see these gradients
        self.last_loss = float(loss.detach())
        return self.last_loss

    @override
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step % self.every_n_steps == 0:  # global_step already counts this batch's step
            loss = self.regularize(pl_module, batch)
            pl_module.log("train/loss_walk_regularizer", loss, batch_size=1)

    @override
    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"generator": self.generator.get_state()}
        if self.skipgram is not None:
            state.update(skipgram=self.skipgram.state_dict(), optimizer=self.optimizer.state_dict())
        return state

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.generator.set_state(state_dict["generator"])
        if "skipgram" in state_dict:
            if self.skipgram is None:
                self._pending = {"skipgram": state_dict["skipgram"], "optimizer": state_dict["optimizer"]}
            else:
                self.skipgram.load_state_dict(state_dict["skipgram"])
                self.optimizer.load_state_dict(state_dict["optimizer"])
