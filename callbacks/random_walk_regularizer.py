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
and its context table, against the SGNS loss.

Randomness and resuming: the walks of the n-th regularisation step come from a generator seeded with
``derive_seed(seed, n)`` and the context table from ``derive_seed(seed, -1)``, never from the global RNG, so the
whole state is ``(seed, n, context table, optimiser)``, all in ``state_dict``: a run killed mid-epoch and resumed
draws the walks the uninterrupted run drew.

DDP (the official is single-process; chosen here): the extra backward runs outside DDP's forward, so DDP's
gradient all-reduce never sees it, and ranks given different batches would drift apart. So every rank draws the
same whole walk corpus (same seed, same step) and keeps the pairs of every ``world_size``-th walk
(``WalkSkipGram(..., rank, world_size)``); the gradients (module and context table) are then summed over the ranks
with ``trainer.strategy.reduce`` before the step. Each rank thus computes ``1 / world_size`` of the SGNS loss, the
summed gradient is the one a single process would take on the same graph, and the parameters stay identical on
every rank. The logged loss is the summed (whole-corpus) loss.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from litzoo.framework.graphs.walks import WalkSkipGram
from litzoo.framework.random_state import derive_seed


class RandomWalkRegularizer(Callback):
    """Adds a skip-gram-with-negative-sampling step on random walks to a node-embedding LightningModule.

    Args:
        lr: the skip-gram optimiser's Adam learning rate (official README command 0.01).
        walk_length: nodes per walk (official 5).
        walks_per_node: walks started at every node per step (official 5).
        window: positions either side that pair (official 3).
        num_negatives: negatives per pair (official ``walk_length - 1``).
        seed: seed of the walks and of the context table (a resumed run keeps the seed of the run it continues).
        every_n_steps: regularise after every n-th training batch.
    """

    def __init__(self, lr: float = 0.01, walk_length: int = 5, walks_per_node: int = 5, window: int = 3, num_negatives: int = 4,
                 seed: int = 0, every_n_steps: int = 1) -> None:  # fmt: skip
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        self.lr, self.every_n_steps, self.seed = lr, every_n_steps, int(seed)
        self.walk_kwargs = {"walk_length": walk_length, "walks_per_node": walks_per_node, "window": window, "num_negatives": num_negatives}
        WalkSkipGram(2, 1, **self.walk_kwargs)  # checks the walk arguments now
        self.steps = 0  # regularisation steps taken: with the seed, it names the next step's walks
        self.skipgram: WalkSkipGram | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self._pending: dict[str, Any] | None = None
        self.last_loss: float | None = None

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not callable(getattr(pl_module, "node_embeddings", None)):
            raise TypeError(f"RandomWalkRegularizer needs {type(pl_module).__name__}.node_embeddings(batch) returning (num_nodes, dim) embeddings")

    def _build(self, pl_module: L.LightningModule, embeddings: torch.Tensor) -> None:
        table_generator = torch.Generator().manual_seed(derive_seed(self.seed, -1))  # the same table on every rank
        self.skipgram = WalkSkipGram(embeddings.shape[0], embeddings.shape[1], **self.walk_kwargs, generator=table_generator).to(embeddings.device)
        self.optimizer = torch.optim.Adam([*pl_module.parameters(), *self.skipgram.parameters()], lr=self.lr)
        if self._pending is not None:
            self.skipgram.load_state_dict(self._pending["skipgram"])
            self.optimizer.load_state_dict(self._pending["optimizer"])
            self._pending = None

    def _sum_over_ranks(self, trainer: L.Trainer) -> None:
        """Sum the gradients of the optimiser's parameters over the ranks, in one flat all-reduce."""
        params = [p for group in self.optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not params:
            return
        flat = trainer.strategy.reduce(torch.cat([p.grad.reshape(-1) for p in params]), reduce_op="sum")
        for p, grad in zip(params, flat.split([p.numel() for p in params]), strict=True):
            p.grad.copy_(grad.view_as(p.grad))

    def regularize(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: dict[str, Any]) -> float:
        """One skip-gram step on ``batch``'s graph (this rank's share of the walks); returns the whole-corpus loss
        before the step."""
        generator = torch.Generator().manual_seed(derive_seed(self.seed, self.steps))
        with torch.enable_grad():
            embeddings = pl_module.node_embeddings(batch)
            if self.skipgram is None:
                self._build(pl_module, embeddings)
            edge_index = batch["edge_index"].to(torch.long).cpu()
            loss = self.skipgram(embeddings, edge_index, generator, rank=trainer.global_rank, world_size=trainer.world_size)
            self.optimizer.zero_grad()
            loss.backward()
            if trainer.world_size > 1:
                self._sum_over_ranks(trainer)  # the backward ran outside DDP: its all-reduce did not happen
                loss = trainer.strategy.reduce(loss.detach(), reduce_op="sum")
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite skip-gram loss {float(loss)}")
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)  # the module's own optimiser must not see these gradients
        self.steps += 1
        self.last_loss = float(loss.detach())
        return self.last_loss

    @override
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step % self.every_n_steps == 0:  # global_step already counts this batch's step
            loss = self.regularize(trainer, pl_module, batch)
            pl_module.log("train/loss_walk_regularizer", loss, batch_size=1)

    @override
    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"seed": self.seed, "steps": self.steps}
        if self.skipgram is not None:
            state.update(skipgram=self.skipgram.state_dict(), optimizer=self.optimizer.state_dict())
        return state

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.seed, self.steps = int(state_dict["seed"]), int(state_dict["steps"])
        if "skipgram" in state_dict:
            if self.skipgram is None:
                self._pending = {"skipgram": state_dict["skipgram"], "optimizer": state_dict["optimizer"]}
            else:
                self.skipgram.load_state_dict(state_dict["skipgram"])
                self.optimizer.load_state_dict(state_dict["optimizer"])
