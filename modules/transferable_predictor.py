"""A General-Purpose Transferable Predictor for Neural Architecture Search (Han, Mills, Chudak, Riahi,
Salameh, Zhang, Lu, Jui, Niu; SDM 2023, arXiv 2302.10835).

Every CNN is written as a Computation Graph (CG) of primitive operators
(:mod:`litzoo.framework.graph.computation`), so one graph encoder reads networks of any family. The CG encoder is
pretrained with contrastive learning on architectures of several families — a *semi-supervised* procedure
that uses "both labelled accuracies and unlabeled information of architectures from multiple families" —
then a regressor on the CG embeddings predicts accuracy; the predictor is judged on a family it was not
trained on, zero-shot or "after fine-tuning on a small amount of data" of the new family.

This file is that method as a configuration of the shared CG encoder and head
(:class:`litzoo.framework.nn.cg.CGEncoder`, :class:`litzoo.framework.nn.cg.PredictorHead`) and of the phase machinery,
metrics and :meth:`finetune` of :class:`litzoo.framework.nas.CGPredictorModule` (its default head: one regressor);
only the pretraining objective differs.

What was verified, and from where:

- [abstract, arXiv v1 and the SDM version, via paperswithcode / arXiv listings] CG of primitive operators;
  contrastive-learning graph representation learning on architectures of multiple families, using labelled
  accuracies and unlabelled architectures ("semi-supervised"); a performance predictor on the CG
  embeddings; evaluation by SRCC on NAS-Bench-101/201/301 with the predictor pretrained on the other
  families and fine-tuned on a small amount of target-family data; zero-cost proxies (Synflow, Jacov) as
  baselines.
- [code: Ascend-Research/GENNAPE, same group, same CG API] the k-GNN encoder (GraphConv ×6, hidden 32, tanh,
  mean pooling), the post-projection head, Adam lr 1e-4, batch 32, 100 fine-tuning epochs: all through
  the shared classes. Neither Ascend-Research/GENNAPE nor Ascend-Research/AIO-P contains contrastive code.

CHOSEN here (the paper body — how positives and negatives are formed, the loss, the temperature, the
epochs — could not be read; each choice is an argument):

- CHOICE: the loss is SupCon (Khosla et al. 2020; :class:`litzoo.framework.losses.supcon.SupConLoss`) over the
  projected embeddings of two views of every graph in the batch, the views being independent per-node sign
  flips of the Laplacian-eigenvector encodings (as in our GENNAPE), temperature ``temperature`` = 0.1.
- CHOICE: positives of a *labelled* graph are its other view and the views of labelled graphs of the *same
  family* whose standardised accuracy falls in the same bin of width ``positive_margin`` (0.5 std);
  everything else is a negative. Positives of an *unlabelled* graph are only its other view (SimCLR).
  ``positive_margin = 0`` ignores labels: plain NT-Xent on views (the unsupervised ablation).
- CHOICE: the unlabelled graphs are the held-out families' graphs (the datamodule's test split; labels
  never read), ``unlabelled_graphs`` of them drawn at random into each pretraining batch — the transfer
  setting where the new family's structures, not its accuracies, are known. 0 = labelled graphs only.
- CHOICE: after ``contrastive_epochs`` of pretraining the encoder is frozen and one regressor
  (:class:`PredictorHead`) trains with MSE on the standardised accuracy; :meth:`finetune` then adapts the
  regressor on a few labelled graphs of the new family (GENNAPE's protocol and defaults).
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor

from litzoo.framework.losses.supcon import SupConLoss
from litzoo.framework.nas import FAMILIES, CGPredictorModule, adam_cg_predictor

_BIN_OFFSET = 1 << 20  # accuracy-bin ids are shifted to be non-negative; unlabelled ids are negative


def contrastive_groups(y: Tensor, family_ids: Tensor, labelled: Tensor, positive_margin: float) -> Tensor:
    """``(G,)`` SupCon group ids of a batch of graphs (both views of a graph get its id).

    A labelled graph's id is ``(family, floor(y / positive_margin))``: labelled graphs of one family whose
    standardised targets share a bin are positives of each other. Each unlabelled graph (and every graph
    when ``positive_margin == 0``) gets an id of its own, so only its two views are positives."""
    if positive_margin < 0:
        raise ValueError(f"positive_margin must be >= 0, got {positive_margin}")
    g = y.shape[0]
    own = -1 - torch.arange(g, device=y.device)  # unique negative ids
    if positive_margin == 0:
        return own
    bins = torch.floor(y.detach().double() / positive_margin).long() + _BIN_OFFSET
    grouped = family_ids.long() * (2 * _BIN_OFFSET) + bins
    return torch.where(labelled, grouped, own)


def family_ids(batch: Any) -> Tensor:
    """Index in :data:`litzoo.framework.nas.FAMILIES` of each graph's ``family`` (0 when absent)."""
    families = getattr(batch, "family", None)
    if families is None:
        return torch.zeros(batch.num_graphs, dtype=torch.long, device=batch.x.device)
    if isinstance(families, str):
        families = [families]
    index = {f: i for i, f in enumerate(FAMILIES)}
    return torch.tensor([index.get(f, len(FAMILIES)) for f in families], dtype=torch.long, device=batch.x.device)


def without_one_head_ensemble(net_kwargs: dict[str, Any]) -> dict[str, Any]:
    """``net_kwargs`` without the one-head ensemble settings of checkpoints written before the CG-predictor base
    took its head from ``build_head``: their hyper-parameters hold that base's ``num_clusters`` (1 here: the one
    regressor), ``fuzzifier`` and ``cluster_seed`` (unused by one head), which ``load_from_checkpoint`` passes on
    as keywords. Without ``num_clusters=1`` nothing is dropped: the encoder refuses what it does not take."""
    if net_kwargs.get("num_clusters") != 1:
        return net_kwargs
    return {name: value for name, value in net_kwargs.items() if name not in ("num_clusters", "fuzzifier", "cluster_seed")}


class TransferablePredictorModule(CGPredictorModule):
    """The transferable CG predictor on batches of computation graphs (``torch_geometric`` batches with
    ``x``, ``edge_index``, ``batch``, a standardised target ``y`` and ``family``;
    :class:`litzoo.datamodules.architectures.ArchitectureDataModule`).

    Epochs ``[0, contrastive_epochs)`` pretrain the encoder with the semi-supervised SupCon objective
    (module docstring); then the encoder is frozen and the regressor trains. Validation / test log
    ``srcc``, ``kendall``, ``mae`` (standardised units) and ``top10``; the test split is the held-out
    family, so ``test/srcc`` is zero-shot transfer; :meth:`finetune` adapts to a few labelled graphs of it.

    Args:
        contrastive_epochs: pretraining epochs (0: no pretraining; encoder and regressor train together).
        temperature: SupCon τ.
        projection_dim: output of the projection MLP used only in pretraining.
        positive_margin: width, in standardised-accuracy units, of the accuracy bins that make labelled
            graphs of one family positives (0: labels unused, NT-Xent on views).
        unlabelled_graphs: held-out-family graphs (test split, labels never read) added to each
            pretraining batch as unlabelled graphs (0: none).
        optimizer: default Adam lr 1e-4 (the group's official k-GNN demo).
        **net_kwargs: the :class:`litzoo.framework.nn.cg.CGEncoder`'s arguments ``embed_dim`` … ``flip_prob`` (default
            the official k-GNN: 32, 32, 6 layers, 8 eigenvectors flipped with p = 0.25).
    """

    def __init__(
        self,
        contrastive_epochs: int = 20,
        temperature: float = 0.1,
        projection_dim: int = 32,
        positive_margin: float = 0.5,
        unlabelled_graphs: int = 32,
        optimizer: OptimizerCallable = adam_cg_predictor,
        **net_kwargs: Any,
    ) -> None:
        if positive_margin < 0:
            raise ValueError(f"positive_margin must be >= 0, got {positive_margin}")
        if unlabelled_graphs < 0:
            raise ValueError(f"unlabelled_graphs must be >= 0, got {unlabelled_graphs}")
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        net_kwargs = without_one_head_ensemble(net_kwargs)
        super().__init__(contrastive_epochs, temperature, projection_dim, optimizer, **net_kwargs)
        # the parent's save_hyperparameters() recorded this class's arguments too (Lightning collects the
        # arguments of every __init__ in the chain)
        self.contrastive_loss = SupConLoss(temperature)
        self._unlabelled: list | None = None

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # checkpoints written before the CG-predictor base took its head from build_head hold the regressor as a
        # one-head fuzzy ensemble (heads.heads.0.*, heads.centers, heads.fitted): read them into the one regressor
        state = checkpoint.get("state_dict", {})
        if any(key.startswith("heads.heads.0.") for key in state):
            for key in [key for key in state if key.startswith("heads.")]:
                value = state.pop(key)
                if key.startswith("heads.heads.0."):
                    state["heads." + key.removeprefix("heads.heads.0.")] = value

    # ---- unlabelled graphs ----------------------------------------------------------------------
    def on_fit_start(self) -> None:
        self._unlabelled = None  # a new fit may bring another datamodule

    def unlabelled_pool(self) -> list:
        """The held-out families' graphs without their labels (``y``, ``y_raw`` removed)."""
        if self._unlabelled is None:
            datamodule = self.trainer.datamodule if self._trainer is not None else None
            if datamodule is None or not hasattr(datamodule, "test_dataloader"):
                raise RuntimeError("unlabelled_graphs > 0 needs a datamodule with a test_dataloader (the held-out families)")
            pool = []
            for data in datamodule.test_dataloader().dataset:
                data = data.clone()
                for key in ("y", "y_raw"):
                    if key in data:
                        del data[key]
                pool.append(data)
            self._unlabelled = pool
        return self._unlabelled

    def contrastive_batch(self, batch: Any) -> tuple[Any, Tensor]:
        """The labelled batch plus ``unlabelled_graphs`` random unlabelled graphs; the SupCon group ids."""
        from torch_geometric.data import Batch

        size = batch.num_graphs
        labelled = torch.ones(size, dtype=torch.bool, device=batch.x.device)
        y = batch.y.view(-1)
        families = family_ids(batch)
        if self.hparams.unlabelled_graphs > 0:
            pool = self.unlabelled_pool()
            if pool:
                picks = torch.randint(len(pool), (self.hparams.unlabelled_graphs,)).tolist()
                extra = [pool[i] for i in picks]
                keep = [d for d in batch.to_data_list()]
                for d in keep:  # the two lists must hold the same attributes to be collated
                    for key in ("y", "y_raw"):
                        if key in d:
                            del d[key]
                batch = Batch.from_data_list(keep + extra).to(self.device)
                n = len(extra)
                labelled = torch.cat([labelled, torch.zeros(n, dtype=torch.bool, device=labelled.device)])
                y = torch.cat([y, torch.zeros(n, device=y.device)])
                families = torch.cat([families, family_ids(Batch.from_data_list(extra)).to(families.device)])
        return batch, contrastive_groups(y, families, labelled, self.hparams.positive_margin)

    # ---- the objective -----------------------------------------------------------------------------
    def contrastive_loss_of(self, batch: Any) -> Tensor:
        """SupCon over two views (independent eigenvector sign flips) of the labelled batch and the drawn
        unlabelled graphs, grouped by :func:`contrastive_groups`."""
        graphs, groups = self.contrastive_batch(batch)
        z0 = self.projection(self.embed(graphs))
        z1 = self.projection(self.embed(graphs))
        return self.contrastive_loss(torch.cat([z0, z1]), torch.cat([groups, groups]))
