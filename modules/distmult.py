"""DistMult: the diagonal bilinear entity-embedding model (Yang, Yih, He, Gao, Deng, "Embedding Entities and Relations
for Learning and Inference in Knowledge Bases", ICLR 2015, arXiv 1412.6575), the baseline PathCon and CoMPILE are
measured against. The authors released no code; read instead: pykeen ``models/unimodal/distmult.py`` and
``nn/modules.py:DistMultInteraction`` (which record the paper's settings), OpenKE ``models/DistMult.py``.

Every entity ``e`` has a vector ``x_e``, every relation ``r`` a vector ``w_r`` (the diagonal of its bilinear map), and
``score(h, r, t) = <x_h, w_r, x_t> = sum_k x_h[k] w_r[k] x_t[k]``: symmetric in ``h`` and ``t``, so DistMult models
symmetric relations and cannot tell a relation from its reverse. As in the paper (and pykeen's default) entity vectors
have unit L2 norm and the relation vectors carry an L2 penalty ``l2 * ||W||^2 / 2``.

Two tasks, each trained and evaluated exactly like the method it is a baseline for, on the same draws:

* ``task="relation"`` (PathCon's task): the scores of every relation for ``(h, ?, t)`` are ``(x_h * x_t) W^T``; softmax
  cross-entropy over relations; evaluated by :func:`litzoo.framework.graphs.ranking.relation_ranking`, the function
  :mod:`litzoo.modules.pathcon` evaluates with (filtered Hit@1/3/5, MRR, MR, accuracy, cross-entropy). Transductive only.
* ``task="link"`` (CoMPILE's protocol, :mod:`litzoo.framework.graphs.negatives`): ``num_negatives`` corrupted triples
  per positive drawn once by :func:`~litzoo.framework.graphs.negatives.split_negatives` (the draws CoMPILE makes with the
  same seed), the margin ranking loss summed over the batch; AUC-PR and ROC-AUC of the true triples against their
  negatives; on the test split the rank of each true triple among ``ranking_negatives`` corrupted heads and as many
  corrupted tails, re-drawn from ``random.Random(negative_seed)`` at each test batch as CoMPILE does (Hits@1/10, MRR).
  In the inductive setting the test graph's entities were never trained: the module gives each test-graph entity the
  row of the training entity of the same name, and every other one a row of its own, drawn with the trained rows and
  kept in a buffer the optimizer never sees, so its vector *is* its initialisation. That is the point of this baseline:
  an entity-embedding model has nothing to say about entities it has not seen. ``test/unseen_entities`` and
  ``test/unseen_triples`` log how many test-graph entities and test triples that concerns.

Verified: the score (against a hand computation), the relation-task loss (against ``F.cross_entropy``), the symmetry,
the unseen rows unchanged by training, and that the link task draws CoMPILE's negatives and ranking candidates. Chosen
where the paper is silent or this comparison needs it: the unit norm is applied inside the score (``x / ||x||``) instead of
by projecting after each step (pykeen's constrainer), which gives the same scores without an optimizer hook; Adam with
``lr`` (the optimizer of PathCon and CoMPILE, for an equal budget) instead of the paper's AdaGrad; Xavier-uniform
initialisation of both tables (pykeen's); the margin ranking loss of CoMPILE's protocol in the link task (the paper's is
also a margin ranking loss over corrupted triples) and the softmax cross-entropy of PathCon's in the relation task.
Defaults: dimension 100 and L2 weight 1e-4 (the paper, as pykeen records it), margin 1.
"""

from __future__ import annotations

from typing import Literal

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from litzoo.framework.graphs import KnowledgeGraph
from litzoo.framework.graphs.negatives import link_metrics, link_ranks, margin_loss, split_negatives
from litzoo.framework.graphs.ranking import relation_ranking, relation_ranking_metrics, true_answers

TASKS = ("relation", "link")


class DistMult(nn.Module):
    """``score(h, r, t) = <x_h, w_r, x_t>`` over an entity table and a relation table (plain PyTorch).

    Args:
        num_entities: trained entity rows.
        num_relations: relation rows.
        dim: embedding width (100, the paper's).
        normalize_entities: unit L2 norm of the entity vectors inside the score (the paper's constraint).
        num_unseen: extra entity rows that are never trained (a buffer, not a parameter): the entities of an inductive
            test graph. They are drawn with the trained rows, from one Xavier-uniform ``(num_entities + num_unseen, dim)``
            table, so they have the distribution every trained row started from.
    """

    def __init__(self, num_entities: int, num_relations: int, dim: int = 100, normalize_entities: bool = True, num_unseen: int = 0) -> None:
        super().__init__()
        if num_entities < 1 or num_relations < 1 or dim < 1 or num_unseen < 0:
            raise ValueError("num_entities, num_relations and dim must be >= 1 and num_unseen >= 0")
        self.normalize_entities = normalize_entities
        table = nn.init.xavier_uniform_(torch.empty(num_entities + num_unseen, dim))
        self.entity = nn.Parameter(table[:num_entities].clone())
        self.register_buffer("unseen", table[num_entities:].clone())  # persistent: a checkpoint keeps the drawn rows
        self.relation = nn.Parameter(nn.init.xavier_uniform_(torch.empty(num_relations, dim)))

    def entity_vectors(self, entities: Tensor) -> Tensor:
        """``(..., dim)`` vectors of entity rows (the unseen rows follow the trained ones)."""
        table = torch.cat([self.entity, self.unseen]) if len(self.unseen) else self.entity
        vectors = F.embedding(entities, table)
        return F.normalize(vectors, dim=-1) if self.normalize_entities else vectors

    def forward(self, heads: Tensor, relations: Tensor, tails: Tensor) -> Tensor:
        """``(B,)`` scores of the triples ``(heads[i], relations[i], tails[i])``."""
        return (self.entity_vectors(heads) * F.embedding(relations, self.relation) * self.entity_vectors(tails)).sum(-1)

    def relation_scores(self, heads: Tensor, tails: Tensor) -> Tensor:
        """``(B, R)``: the score of every relation between ``heads[i]`` and ``tails[i]``."""
        return (self.entity_vectors(heads) * self.entity_vectors(tails)) @ self.relation.t()

    def l2_penalty(self) -> Tensor:
        """``||W||^2 / 2`` of the relation table (the entity vectors are normalised, the relation vectors penalised)."""
        return self.relation.pow(2).sum() / 2


class DistMultModule(L.LightningModule):
    """DistMult on a :class:`litzoo.datamodules.knowledge_graph.KnowledgeGraphDataModule`, as PathCon's baseline
    (``task="relation"``) or CoMPILE's (``task="link"``, inductive or transductive).

    Args:
        task: ``"relation"`` (rank every relation for ``(h, ?, t)``) or ``"link"`` (score triples against corrupted ones).
        dim: embedding width (100).
        normalize_entities: unit-norm entity vectors (the paper's constraint).
        lr: Adam learning rate (5e-3, PathCon's).
        l2: weight of ``||W_relation||^2 / 2`` added to the loss (1e-4).
        margin: margin of the link task's ranking loss (1).
        num_negatives: negatives per positive in the link task's training and AUC evaluation (1, CoMPILE's).
        ranking_negatives: corrupted heads (and as many tails) per test triple for the link task's Hits@k (50; 0 skips).
        negative_seed: seed of the link task's negatives and ranking candidates (CoMPILE's ``negative_seed``).
    """

    def __init__(
        self,
        task: Literal["relation", "link"] = "relation",
        dim: int = 100,
        normalize_entities: bool = True,
        lr: float = 5e-3,
        l2: float = 1e-4,
        margin: float = 1.0,
        num_negatives: int = 1,
        ranking_negatives: int = 50,
        negative_seed: int = 0,
    ) -> None:
        super().__init__()
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        if dim < 1 or num_negatives < 1 or ranking_negatives < 0 or lr <= 0 or l2 < 0 or margin <= 0:
            raise ValueError("dim and num_negatives must be >= 1, ranking_negatives >= 0, lr and margin > 0, l2 >= 0")
        self.save_hyperparameters()
        self.net: DistMult | None = None
        self._outputs: dict[str, list[tuple[Tensor, ...]]] = {"val": [], "test": []}

    # ------------------------------------------------------------------ tables
    def setup(self, stage: str | None = None) -> None:
        if self.net is not None:
            return
        datamodule = self.trainer.datamodule
        datamodule.load()
        self.build(datamodule.graph, datamodule.test_graph)

    def build(self, graph: KnowledgeGraph, test_graph: KnowledgeGraph | None = None) -> None:
        """The entity rows of the test graph, the negatives (link) or the filter answers (relation), then the model."""
        hp = self.hparams
        test_graph = graph if test_graph is None else test_graph
        if test_graph.relations != graph.relations:
            raise ValueError("the test graph must share the training graph's relation vocabulary")
        if hp.task == "relation" and test_graph is not graph:
            raise ValueError("task='relation' is transductive (the datamodule is inductive); use task='link' for unseen entities")
        self.graphs = {"train": graph, "val": graph, "test": test_graph}
        # test-graph entity id -> row: the training entity of the same name, else a new, never-trained row
        rows = {name: i for i, name in enumerate(graph.entities)}
        unseen = 0
        test_rows = []
        for name in test_graph.entities:
            if name not in rows:
                rows[name] = graph.num_entities + unseen
                unseen += 1
            test_rows.append(rows[name])
        self.register_buffer("test_rows", torch.tensor(test_rows, dtype=torch.long), persistent=False)
        self.unseen_entities = unseen
        test_triples = test_graph.splits.get("test", torch.zeros(0, 3, dtype=torch.long))
        is_unseen = torch.tensor(test_rows, dtype=torch.long) >= graph.num_entities if test_rows else torch.zeros(0, dtype=torch.bool)
        self.unseen_triples = int((is_unseen[test_triples[:, 0]] | is_unseen[test_triples[:, 2]]).sum()) if len(test_triples) else 0
        if test_graph is not graph:
            rank_zero_info(
                f"DistMult: {unseen} of the test graph's {test_graph.num_entities} entities were never trained (their vectors stay at "
                f"their initialisation); {self.unseen_triples} of its {len(test_triples)} test triples involve one"
            )
        parts = [graph.splits[s] for s in ("train", "valid", "test") if s in graph.splits]
        if hp.task == "relation":
            self.answers = true_answers(parts, "relation")
        else:
            self.negatives, self.known = split_negatives(graph, test_graph, hp.num_negatives, hp.negative_seed)
        self.net = DistMult(graph.num_entities, graph.num_relations, hp.dim, hp.normalize_entities, num_unseen=unseen)

    def score(self, triples: Tensor, split: str) -> Tensor:
        """``(N,)`` scores of ``(N, 3)`` triples whose entity ids are those of ``split``'s graph."""
        triples = triples.to(self.device)
        heads, tails = triples[:, 0], triples[:, 2]
        if self.graphs[split] is not self.graphs["train"]:
            heads, tails = self.test_rows[heads], self.test_rows[tails]
        return self.net(heads, triples[:, 1], tails)

    @staticmethod
    def triples(batch: dict[str, Tensor]) -> Tensor:
        return torch.stack([batch["head"], batch["relation"], batch["tail"]], 1)

    def _negatives(self, positives: Tensor, split: str) -> Tensor:
        return torch.cat([self.negatives[split][tuple(row)] for row in positives.tolist()])

    # ------------------------------------------------------------------ steps
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        positives = self.triples(batch)
        if self.hparams.task == "relation":
            logits = self.net.relation_scores(positives[:, 0], positives[:, 2])
            data_loss = F.cross_entropy(logits, positives[:, 1])
        else:
            positive = self.score(positives, "train")
            negative = self.score(self._negatives(positives.cpu(), "train"), "train").reshape(len(positives), -1)
            data_loss = margin_loss(positive, negative, self.hparams.margin)
        loss = data_loss + self.hparams.l2 * self.net.l2_penalty()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite DistMult loss at step {self.global_step}")
        self.log("train/loss", loss, prog_bar=True, batch_size=len(positives))
        return loss

    def _evaluate(self, batch: dict[str, Tensor], split: str) -> None:
        positives = self.triples(batch)
        if self.hparams.task == "relation":
            logits = self.net.relation_scores(positives[:, 0], positives[:, 2])
            self._outputs[split].append(relation_ranking(logits, positives, self.answers))
            return
        positives = positives.cpu()
        positive = self.score(positives, split).detach().float().cpu()
        negative = self.score(self._negatives(positives, split), split).detach().float().cpu().reshape(len(positives), -1)
        loss = margin_loss(positive, negative, self.hparams.margin) / len(positives)
        ranks = torch.empty(0)
        if split == "test" and self.hparams.ranking_negatives > 0:
            graph = self.graphs[split]
            known = self.known["test_graph" if graph is not self.graphs["train"] else "train_graph"]
            # re-seeded at each test batch, as CoMPILE's evaluation: the same candidates for the same batches
            ranks = link_ranks(lambda t: self.score(t, split), positives, graph.num_entities, known, self.hparams.ranking_negatives, self.hparams.negative_seed)
        scores = torch.cat([positive, negative.flatten()])
        labels = torch.cat([torch.ones(len(positive)), torch.zeros(negative.numel())])
        self._outputs[split].append((scores, labels, loss.reshape(1), ranks))

    def _summarise(self, split: str) -> None:
        outputs = self._outputs[split]
        if not outputs:
            return
        self._outputs[split] = []
        metrics = relation_ranking_metrics(outputs, ks=(1, 3, 5)) if self.hparams.task == "relation" else link_metrics(outputs, ks=(1, 10))
        if split == "test":
            metrics.update(unseen_entities=float(self.unseen_entities), unseen_triples=float(self.unseen_triples))
        self.log_dict({f"{split}/{k}": v for k, v in metrics.items()}, prog_bar=split == "val")

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def on_validation_epoch_end(self) -> None:
        self._summarise("val")

    def on_test_epoch_end(self) -> None:
        self._summarise("test")

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        """``relation``: the softmax over relations of each pair; ``link``: the scores of the triples over the test graph."""
        triples = self.triples(batch)
        if self.hparams.task == "relation":
            return self.net.relation_scores(triples[:, 0], triples[:, 2]).softmax(-1)
        return self.score(triples, "test")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.net.parameters(), lr=self.hparams.lr)


__all__ = ["DistMult", "DistMultModule"]
