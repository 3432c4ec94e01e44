"""PathCon: relation prediction from relational context and relational paths (Wang, Ren, Leskovec, "Relational Message
Passing for Knowledge Graph Completion", KDD 2021; official code hwwang55/PathCon, TensorFlow).

For a query ``(h, ?, t)`` the model scores every relation as the sum of two logit vectors:

* **context** -- messages passed over *edges*: each edge starts from its relation's one-hot feature (``feature_type=id``;
  the null relation's is zero); ``context_hops`` layers each turn an edge state into a new one from its own state and the
  mean of the ``neighbor_samples`` sampled edge states around each of its two endpoints, by the **mean**
  (``W (self + (a + b) / 2)``), **concat** (``W [self, a, b]``) or **cross** (``W [self, vec(a b^T)]``) aggregator, ReLU
  between layers; the last layer aggregates the pair ``(h, t)`` itself, without a self state, straight to ``R`` logits.
  During training the query's own edge is masked out of every hop (its sampled copies count as zero in the mean, which
  still divides by ``neighbor_samples``, as the official ``reduce_mean(neighbor_vectors * masks)``); evaluation masks
  nothing.
* **paths** -- the relation paths of at most ``max_path_len`` hops from h to t (the query edge excluded;
  :func:`litzoo.framework.graphs.relation_paths`): ``path_type="embedding"`` sums one learned ``R``-vector per path id
  present (PathCon's sparse multi-hot times ``W`` plus ``b``); ``path_type="rnn"`` runs an LSTM over ``path_samples``
  paths drawn once per triple and aggregates their ``R`` logits by the mean or by attention against the context logits
  (``path_agg="att"``, which needs ``use_context``).

Loss: softmax cross-entropy over relations plus ``l2 * sum(||w||^2 / 2)`` over every non-bias weight (TF's ``l2_loss``);
Adam. Evaluation: accuracy and the filtered rank of the true relation (the other true relations of ``(h, t)`` from all
splits removed, :mod:`litzoo.framework.graphs.ranking`): MRR, MR, Hit@1/3/5 and the cross-entropy, logged as ``val/...`` and ``test/...``.

Verified against the official ``src/model.py``, ``src/aggregators.py``, ``src/data_loader.py``, ``src/train.py``,
``src/utils.py``: the aggregators and their sizes, the self state used except in the last layer, the hop layout and the
edge mask, the null entity / edge / relation, the path exclusion rule, the loss and the defaults (``src/main.py``'s
argparse defaults, its FB15k block: dim 64, lr 5e-3, l2 1e-7, batch 128, 20 epochs, 2 hops, 32 samples, concat, paths of
length <= 2, embedding; WN18RR: 3 hops, 8 samples, cross, length 4). Chosen where the code is silent or differs: float32
(the official runs float64); the layers are built in ``setup`` once the data set's path vocabulary is known; the path
vocabulary is numbered in sorted order; every sampling is seeded; the hop-0 state of the query edge, which the official
fills with the *label's* feature at inner layers and then discards, is not computed; the last partial batch is kept
(the official drops it, also at evaluation). Relation features from bag-of-words / BERT files are not implemented.
Only the transductive setting is supported (the inductive test graph would need its own context and path tables).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from litzoo.framework.graphs.context import cached_relation_paths, context_edges, sample_entity_edges, triple_keys
from litzoo.framework.graphs.ranking import relation_ranking, relation_ranking_metrics, true_answers

AGGREGATORS = ("mean", "concat", "cross")


class EdgeAggregator(nn.Module):
    """One PathCon layer: new edge states from the edge's own state and the masked mean of its endpoints' neighbour edges.

    ``forward(self_vectors (B, n, d), neighbor_vectors (B, n, 2, S, d), masks (B, n, 2, S, 1)) -> (B, n, out)``."""

    def __init__(self, kind: str, input_dim: int, output_dim: int, self_included: bool = True, activation: bool = False) -> None:
        super().__init__()
        if kind not in AGGREGATORS:
            raise ValueError(f"neighbor_agg must be one of {AGGREGATORS}, got {kind!r}")
        self.kind, self.input_dim, self.self_included, self.activation = kind, input_dim, self_included, activation
        width = {"mean": input_dim, "concat": 2 * input_dim, "cross": input_dim * input_dim}[kind]
        if self_included and kind != "mean":
            width += input_dim
        self.linear = nn.Linear(width, output_dim)
        nn.init.xavier_uniform_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, self_vectors: Tensor | None, neighbor_vectors: Tensor, masks: Tensor) -> Tensor:
        entity = (neighbor_vectors * masks).mean(dim=-2)  # (B, n, 2, d): masked entries count in the denominator
        a, b = entity[..., 0, :], entity[..., 1, :]
        if self.kind == "mean":
            out = (a + b) / 2
            if self.self_included:
                out = out + self_vectors
        elif self.kind == "concat":
            out = torch.cat([a, b], dim=-1)
        else:
            out = (a.unsqueeze(-1) * b.unsqueeze(-2)).flatten(-2)  # row-major vec(a b^T), as tf.reshape
        if self.self_included and self.kind != "mean":
            out = torch.cat([self_vectors, out], dim=-1)
        out = self.linear(out)
        return F.relu(out) if self.activation else out


class PathCon(nn.Module):
    """The PathCon scorer over fixed tables of one training graph (plain PyTorch).

    Args:
        num_relations: ``R``.
        entity2edges, edge2entities, edge2relation: :func:`litzoo.framework.graphs.context.sample_entity_edges` output
            (needed when ``use_context``).
        num_paths: size of the path vocabulary (``embedding``); path_vocab / path_lengths: ``(P, L)`` / ``(P,)`` (``rnn``).
        use_context, use_path, context_hops, neighbor_agg, path_type, path_agg, dim: as :class:`PathConModule`.
    """

    def __init__(
        self,
        num_relations: int,
        entity2edges: Tensor | None = None,
        edge2entities: Tensor | None = None,
        edge2relation: Tensor | None = None,
        num_paths: int = 0,
        path_vocab: Tensor | None = None,
        path_lengths: Tensor | None = None,
        use_context: bool = True,
        use_path: bool = True,
        context_hops: int = 2,
        neighbor_agg: str = "concat",
        path_type: str = "embedding",
        path_agg: str = "att",
        dim: int = 64,
    ) -> None:
        super().__init__()
        self.num_relations, self.use_context, self.use_path = num_relations, use_context, use_path
        self.context_hops, self.path_type, self.path_agg = context_hops, path_type, path_agg
        # one-hot relation features plus the zero feature of the null relation (id R)
        self.register_buffer("relation_features", torch.cat([torch.eye(num_relations), torch.zeros(1, num_relations)]), persistent=False)
        if use_context:
            self.register_buffer("entity2edges", entity2edges, persistent=False)
            self.register_buffer("edge2entities", edge2entities, persistent=False)
            self.register_buffer("edge2relation", edge2relation, persistent=False)
            self.neighbor_samples = entity2edges.shape[1]
            d = num_relations
            if context_hops == 1:
                layers = [EdgeAggregator(neighbor_agg, d, num_relations, self_included=False)]
            else:
                layers = [EdgeAggregator(neighbor_agg, d, dim, activation=True)]
                layers += [EdgeAggregator(neighbor_agg, dim, dim, activation=True) for _ in range(context_hops - 2)]
                layers.append(EdgeAggregator(neighbor_agg, dim, num_relations, self_included=False))
            self.aggregators = nn.ModuleList(layers)
        if use_path:
            if path_type == "embedding":
                self.path_weight = nn.Parameter(nn.init.xavier_uniform_(torch.empty(max(num_paths, 1), num_relations)))
            else:
                self.register_buffer("path_vocab", path_vocab, persistent=False)
                self.register_buffer("path_lengths", path_lengths, persistent=False)
                self.lstm = nn.LSTM(num_relations, dim, batch_first=True)
                self.path_weight = nn.Parameter(nn.init.xavier_uniform_(torch.empty(dim, num_relations)))
            self.path_bias = nn.Parameter(torch.zeros(num_relations))

    def context_scores(self, pairs: Tensor, train_edges: Tensor | None = None) -> Tensor:
        """``(B, R)`` context logits of the ``(B, 2)`` pairs; ``train_edges`` ``(B,)`` are masked out of every hop."""
        edges = context_edges(pairs, self.entity2edges, self.edge2entities, self.context_hops)
        if train_edges is None:
            masks = [torch.ones_like(e, dtype=self.relation_features.dtype) for e in edges]
        else:
            masks = [(e != train_edges[:, None]).to(self.relation_features.dtype) for e in edges]
        vectors: list[Tensor | None] = [None] + [self.relation_features[self.edge2relation[e]] for e in edges]
        batch, samples = len(pairs), self.neighbor_samples
        for i, aggregator in enumerate(self.aggregators):
            last = i == len(self.aggregators) - 1
            hops = [0] if last else range(1, self.context_hops - i)  # inner layers' hop-0 output is never read
            new: list[Tensor | None] = [None] * (self.context_hops - i)
            for hop in hops:
                neighbours = vectors[hop + 1].reshape(batch, -1, 2, samples, vectors[hop + 1].shape[-1])
                mask = masks[hop].reshape(batch, -1, 2, samples, 1)
                new[hop] = aggregator(vectors[hop], neighbours, mask)
            vectors = new
        return vectors[0].reshape(batch, self.num_relations)

    def path_scores(self, path_ids: Tensor, path_offsets: Tensor, context: Tensor | None = None) -> Tensor:
        """``(B, R)`` path logits. ``embedding``: bags ``path_ids[path_offsets[b]:path_offsets[b+1]]``; ``rnn``:
        ``path_ids`` is ``(B, path_samples)`` (``path_offsets`` unused) and ``context`` the logits attention reads."""
        if self.path_type == "embedding":
            batch = len(path_offsets) - 1
            bag = torch.repeat_interleave(torch.arange(batch, device=path_ids.device), path_offsets.diff())
            out = torch.zeros(batch, self.num_relations, device=path_ids.device, dtype=self.path_weight.dtype)
            return out.index_add(0, bag, self.path_weight[path_ids]) + self.path_bias
        batch, samples = path_ids.shape
        relations = self.path_vocab[path_ids.flatten()]  # (B * S, L), padded with the null relation
        lengths = self.path_lengths[path_ids.flatten()]
        hidden, _ = self.lstm(self.relation_features[relations])
        # the last state at each path's length; an empty path keeps the zero initial state
        last = hidden.gather(1, (lengths - 1).clamp(min=0)[:, None, None].expand(-1, 1, hidden.shape[-1])).squeeze(1)
        last = last * (lengths > 0)[:, None]
        logits = (last @ self.path_weight + self.path_bias).reshape(batch, samples, self.num_relations)
        if self.path_agg == "mean":
            return logits.mean(1)
        weights = torch.softmax((context[:, None, :] * logits).sum(-1), dim=-1)
        return (weights[..., None] * logits).sum(1)

    def forward(
        self, pairs: Tensor, path_ids: Tensor | None = None, path_offsets: Tensor | None = None, train_edges: Tensor | None = None
    ) -> Tensor:
        """``(B, R)`` relation logits (context + paths)."""
        scores = torch.zeros(len(pairs), self.num_relations, device=pairs.device)
        context = None
        if self.use_context:
            context = self.context_scores(pairs, train_edges)
            scores = scores + context
        if self.use_path:
            scores = scores + self.path_scores(path_ids, path_offsets, context)
        return scores

    def l2_penalty(self) -> Tensor:
        """``sum(||w||^2) / 2`` over every parameter whose name does not contain ``bias`` (the official L2 term)."""
        return sum(p.pow(2).sum() / 2 for name, p in self.named_parameters() if "bias" not in name)


class PathConModule(L.LightningModule):
    """PathCon on a :class:`litzoo.datamodules.knowledge_graph.KnowledgeGraphDataModule` (transductive).

    ``setup`` builds, once per data set, the sampled neighbour edges of every entity and the relation paths of every
    distinct train / valid / test triple (cached in ``<datamodule.cache_folder>/pathcon_cache/``, next to the data unless
    the DataModule says otherwise), then the model.

    Args:
        use_context: use the relational context (the paper's ablation switches this or ``use_path`` off).
        use_path: use the relational paths.
        context_hops: message-passing layers (2; WN18RR 3).
        neighbor_samples: sampled edges per entity (32; WN18RR 8).
        neighbor_agg: ``"mean"``, ``"concat"`` (default) or ``"cross"``.
        max_path_len: longest path in hops (2; WN18RR 4).
        path_type: ``"embedding"`` (bag of path ids, default) or ``"rnn"`` (LSTM over sampled paths).
        path_samples: paths drawn per triple for ``rnn`` (8).
        path_agg: ``"mean"`` or ``"att"`` (default; needs ``use_context``) for ``rnn``.
        dim: hidden size of the inner layers and the LSTM (64).
        lr: Adam learning rate (5e-3).
        l2: weight of the L2 term (1e-7).
        sample_seed: seed of the neighbour and path sampling.
        cache_paths: keep the enumerated paths in a file next to the data.
    """

    def __init__(
        self,
        use_context: bool = True,
        use_path: bool = True,
        context_hops: int = 2,
        neighbor_samples: int = 32,
        neighbor_agg: str = "concat",
        max_path_len: int = 2,
        path_type: str = "embedding",
        path_samples: int = 8,
        path_agg: str = "att",
        dim: int = 64,
        lr: float = 5e-3,
        l2: float = 1e-7,
        sample_seed: int = 0,
        cache_paths: bool = True,
    ) -> None:
        super().__init__()
        if not (use_context or use_path):
            raise ValueError("at least one of use_context and use_path must be true")
        if neighbor_agg not in AGGREGATORS:
            raise ValueError(f"neighbor_agg must be one of {AGGREGATORS}, got {neighbor_agg!r}")
        if path_type not in ("embedding", "rnn") or path_agg not in ("mean", "att"):
            raise ValueError(f"path_type must be 'embedding' or 'rnn' and path_agg 'mean' or 'att', got {path_type!r}, {path_agg!r}")
        if use_path and path_type == "rnn" and path_agg == "att" and not use_context:
            raise ValueError("path_agg='att' attends with the context logits: it needs use_context=True")
        if min(context_hops, neighbor_samples, max_path_len, path_samples, dim) < 1 or lr <= 0 or l2 < 0:
            raise ValueError("context_hops, neighbor_samples, max_path_len, path_samples and dim must be >= 1, lr > 0 and l2 >= 0")
        self.save_hyperparameters()
        self.net: PathCon | None = None
        self._outputs: dict[str, list[tuple[Tensor, Tensor, Tensor]]] = {"val": [], "test": []}

    # ------------------------------------------------------------------ tables
    def setup(self, stage: str | None = None) -> None:
        if self.net is not None:
            return
        datamodule = self.trainer.datamodule
        datamodule.load()
        if datamodule.test_graph is not datamodule.graph:
            raise ValueError("PathConModule supports the transductive setting only (the datamodule is inductive)")
        # the DataModule says where derived tables may be written (next to the data; nowhere for a read-only copy)
        self.build(datamodule.graph, getattr(datamodule, "cache_folder", datamodule.graph.folder))

    def build(self, graph, cache_folder: str | Path | None = None) -> None:
        """Precompute the tables of a :class:`litzoo.framework.graphs.KnowledgeGraph` and build the model; the path
        table is cached in ``<cache_folder>/pathcon_cache/`` (``None``: not cached)."""
        hp = self.hparams
        E, R = graph.num_entities, graph.num_relations
        train = graph.splits["train"]
        parts = [graph.splits[s] for s in ("train", "valid", "test") if s in graph.splits]
        generator = torch.Generator().manual_seed(hp.sample_seed)
        keys = triple_keys(torch.cat(parts), E, R)
        unique_keys, first = torch.unique(keys, return_inverse=True)
        queries = torch.zeros(len(unique_keys), 3, dtype=torch.long)
        queries[first] = torch.cat(parts)
        train_keys = triple_keys(train, E, R)
        order = torch.argsort(train_keys, stable=True)
        self.register_buffer("query_keys", unique_keys, persistent=False)
        self.register_buffer("train_keys", train_keys[order], persistent=False)
        self.register_buffer("train_order", order, persistent=False)
        self.num_entities, self.num_relations = E, R
        self.queries = queries  # the distinct triples of all splits, in key order (rows of the path bags)
        self.answers = true_answers(parts, "relation")
        tables: dict[str, Any] = {}
        if hp.use_context:
            e2e, edge2entities, edge2relation = sample_entity_edges(train, E, R, hp.neighbor_samples, generator)
            tables.update(entity2edges=e2e, edge2entities=edge2entities, edge2relation=edge2relation)
        if hp.use_path:
            folder = Path(graph.folder) if graph.folder is not None else None
            files = [folder / f for f in ("train.txt", "valid.txt", "test.txt", "entities.dict", "relations.dict")] if folder else []
            cache = Path(cache_folder) / "pathcon_cache" if (cache_folder is not None and hp.cache_paths) else None
            paths = cached_relation_paths(train, queries, hp.max_path_len, R, files, cache)
            self.register_buffer("path_offsets", paths["offsets"], persistent=False)
            self.register_buffer("path_ids", paths["ids"], persistent=False)
            vocab, lengths = paths["vocab"], paths["lengths"]
            if hp.path_type == "rnn":
                # PathCon gives a triple without paths the empty path (length 0), then draws path_samples ids once
                empty = len(vocab)
                vocab = torch.cat([vocab, torch.full((1, hp.max_path_len), R, dtype=torch.long)])
                lengths = torch.cat([lengths, torch.zeros(1, dtype=torch.long)])
                samples = []
                for q in range(len(queries)):
                    bag = paths["ids"][paths["offsets"][q] : paths["offsets"][q + 1]]
                    bag = bag if len(bag) else torch.tensor([empty])
                    if len(bag) >= hp.path_samples:
                        samples.append(bag[torch.randperm(len(bag), generator=generator)[: hp.path_samples]])
                    else:
                        samples.append(bag[torch.randint(len(bag), (hp.path_samples,), generator=generator)])
                self.register_buffer("path_sample_ids", torch.stack(samples), persistent=False)
            tables.update(num_paths=len(vocab), path_vocab=vocab, path_lengths=lengths)
        self.net = PathCon(
            R,
            **tables,
            use_context=hp.use_context,
            use_path=hp.use_path,
            context_hops=hp.context_hops,
            neighbor_agg=hp.neighbor_agg,
            path_type=hp.path_type,
            path_agg=hp.path_agg,
            dim=hp.dim,
        )

    def lookup(self, triples: Tensor) -> Tensor:
        """Row of each ``(B, 3)`` triple among the precomputed queries (an error for a triple of no split)."""
        keys = triple_keys(triples, self.num_entities, self.num_relations)
        rows = torch.searchsorted(self.query_keys, keys).clamp(max=len(self.query_keys) - 1)
        if not torch.equal(self.query_keys[rows], keys):
            raise ValueError("a batch holds a triple that is in no split of the data set the paths were precomputed for")
        return rows

    def training_edges(self, triples: Tensor) -> Tensor:
        """The training-edge id of each triple (-1 where it is not a training triple)."""
        keys = triple_keys(triples, self.num_entities, self.num_relations)
        pos = torch.searchsorted(self.train_keys, keys).clamp(max=len(self.train_keys) - 1)
        found = self.train_keys[pos] == keys
        return torch.where(found, self.train_order[pos], torch.full_like(pos, -1))

    def scores(self, batch: dict[str, Tensor], mask_own_edge: bool) -> Tensor:
        """``(B, R)`` logits of a ``{"head", "relation", "tail"}`` batch; the relation is only used to find the triple's
        paths (the query edge's exclusion) and, when ``mask_own_edge``, its training edge."""
        triples = torch.stack([batch["head"], batch["relation"], batch["tail"]], 1)
        pairs = triples[:, [0, 2]]
        path_ids = offsets = None
        if self.hparams.use_path:
            rows = self.lookup(triples)
            if self.hparams.path_type == "rnn":
                path_ids = self.path_sample_ids[rows]
            else:
                starts, counts = self.path_offsets[rows], self.path_offsets[rows + 1] - self.path_offsets[rows]
                offsets = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
                within = torch.arange(int(offsets[-1]), device=counts.device) - torch.repeat_interleave(offsets[:-1], counts)
                path_ids = self.path_ids[torch.repeat_interleave(starts, counts) + within]
        train_edges = self.training_edges(triples) if (mask_own_edge and self.hparams.use_context) else None
        return self.net(pairs, path_ids, offsets, train_edges)

    # ------------------------------------------------------------------ steps
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        logits = self.scores(batch, mask_own_edge=True)
        ce = F.cross_entropy(logits, batch["relation"])
        loss = ce + self.hparams.l2 * self.net.l2_penalty()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite PathCon loss at step {self.global_step}")
        self.log("train/loss", loss, prog_bar=True, batch_size=len(logits))
        self.log("train/acc", (logits.argmax(1) == batch["relation"]).float().mean(), batch_size=len(logits))
        return loss

    def _evaluate(self, batch: dict[str, Tensor], split: str) -> None:
        logits = self.scores(batch, mask_own_edge=False)
        triples = torch.stack([batch["head"], batch["relation"], batch["tail"]], 1)
        self._outputs[split].append(relation_ranking(logits, triples, self.answers))

    def _summarise(self, split: str) -> None:
        outputs = self._outputs[split]
        if not outputs:
            return
        metrics = relation_ranking_metrics(outputs, ks=(1, 3, 5))
        self.log_dict({f"{split}/{k}": v for k, v in metrics.items()}, prog_bar=split == "val")
        self._outputs[split] = []

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def on_validation_epoch_end(self) -> None:
        self._summarise("val")

    def on_test_epoch_end(self) -> None:
        self._summarise("test")

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        """Softmax over relations of each triple's pair."""
        return self.scores(batch, mask_own_edge=False).softmax(-1)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.net.parameters(), lr=self.hparams.lr)


__all__ = ["EdgeAggregator", "PathCon", "PathConModule"]
