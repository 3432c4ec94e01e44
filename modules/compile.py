"""CoMPILE: communicative message passing on directed enclosing subgraphs for inductive relation prediction (Mai, Zheng,
Yang, Hu, "Communicative Message Passing for Inductive Relation Reasoning", AAAI 2021; official code
TmacMai/CoMPILE_Inductive_Knowledge_Graph, ``CoMPILE_github/model/dgl/graph_classifier.py:GraphClassifier``, on GraIL).

A triple ``(h, r, t)`` is scored from the ``hops``-hop enclosing subgraph of ``(h, t)``
(:func:`litzoo.framework.graphs.enclosing_subgraph`, GraIL's extraction with its double-radius labels) alone, never
from entity ids, so a model trained on one graph scores triples of a graph with unseen entities. Node features are the
one-hot of the two labels (``2 (hops + 1)`` wide); an edge ``u -r-> v`` starts from ``[x_u ; R_r ; x_v]`` (``R`` the
learned relation embeddings). With ``m`` node states, ``e`` edge states and ``H, T`` the subgraph's roots, per depth:

* attention of each edge to the target: ``a = sigmoid(A2 relu(A1 [m_H + R_target - m_T ; m_u + R_r - m_v]))``;
* node update: ``m_v <- relu(W_node (m_v + sum_{edges u->v} a e))`` (incoming edges only: the subgraph is directed);
* edge update: ``e <- relu(e_0 + W_edge relu(a e + tanh(m_u + R_r - m_v)))``, then dropout;

``depth - 1`` such iterations, then the communicate step ``c_v = W_c [sum_{u->v} a e ; m_v ; m_v^0]``, the bidirectional
BatchGRU over each subgraph's nodes (initial state: the node-wise max of ``c``; inputs ``relu(c + b)``), ``n = relu(W_o
relu(gru))`` and the score ``w2 (W1 tanh(n_H + R_target - n_T))`` (TransE-like; the official computes the mean-pooled
subgraph vector and leaves it out of the score, so it is not computed here). Loss: ``MarginRankingLoss(margin,
reduction="sum")`` between each positive and the mean of its negatives; Adam with ``weight_decay = l2``.

Verified against the official ``graph_classifier.py`` (``gnn``, ``batch_subgraph``, ``BatchGRU``), ``managers/trainer.py``
(the loss, Adam), ``subgraph_extraction/graph_sampler.py:sample_neg`` (negatives: the head or the tail, with probability
1/2 each, replaced by a uniform entity; rejected when ``h == t`` or the triple is in the graph; drawn once in
preprocessing) and ``train.py`` (defaults: hop 3, dim 32, depth 3, dropout 0.5, margin 10, lr 1e-3, l2 5e-4, batch 16, one
negative per positive). Evaluation as ``test_auc.py`` / ``test_ranking.py``: AUC-PR (and ROC-AUC) over each held-out
triple and one corrupted copy; Hits@10 / MRR of the true triple among ``ranking_negatives`` (50) corrupted heads and as
many corrupted tails, on the disjoint-entity ``_ind`` graph in the inductive setting.

Chosen where the code differs or is silent: the target edge is removed from its own subgraph before extraction (the
framework's rule; GraIL / CoMPILE keep a training triple's own edge and add it to every subgraph that lacks it); with
``add_target_edge=True`` (default) the edge ``H -r-> T`` is then appended to every subgraph, positive and negative alike,
as the official ``_prepare_subgraphs`` does, so its presence carries no label. The node labels are clipped at ``hops``
(the official sizes the one-hot by the data set's largest label, which is ``hops`` after GraIL's pruning). The relation
embedding width equals ``dim`` (the official adds the two, so its ``rel_emb_dim`` must equal ``emb_dim``). Ranking
negatives exclude every known true triple of the graph (GraIL's ranking filters the same way) and ties rank
pessimistically; the official BatchGRU's zero padding (no packing) is kept. The official ``clip`` flag is not
implemented. ``max_nodes_per_hop`` (GraIL's per-hop node sampling, off by default in both codes) draws per triple from
``random.Random(derive_seed(negative_seed, h, r, t))`` instead of the global RNG (see ``framework/graphs/subgraphs.py``).
"""

from __future__ import annotations

import math
import random

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from litzoo.framework.graphs import KnowledgeGraph, Subgraph, enclosing_subgraph
from litzoo.framework.graphs.negatives import corrupt, link_metrics, link_ranks, margin_loss, ranking_candidates  # noqa: F401 (re-exported)
from litzoo.framework.graphs.subgraphs import neighbourhood

Triple = tuple[int, int, int]


# ---------------------------------------------------------------------------------------------- batching of subgraphs
def batch_subgraphs(subgraphs: list[Subgraph], relations: Tensor, hops: int, add_target_edge: bool = True) -> dict[str, Tensor]:
    """Concatenate subgraphs into one disjoint graph (the official ``batch_subgraph``).

    Returns ``x`` (one-hot labels, ``(n, 2 (hops + 1))``), ``src`` / ``dst`` / ``edge_type`` / ``edge_graph`` per edge,
    ``heads`` / ``tails`` (global root indices per subgraph), ``sizes`` (nodes per subgraph) and ``relation``."""
    width = hops + 1
    xs, src, dst, types, owner, heads, tails, sizes = [], [], [], [], [], [], [], []
    offset = 0
    for g, (subgraph, relation) in enumerate(zip(subgraphs, relations.tolist(), strict=True)):
        n = len(subgraph.nodes)
        labels = subgraph.labels.clamp(max=hops)
        x = torch.zeros(n, 2 * width)
        x[torch.arange(n), labels[:, 0]] = 1.0
        x[torch.arange(n), width + labels[:, 1]] = 1.0
        xs.append(x)
        edges = subgraph.edges
        if add_target_edge:
            edges = torch.cat([edges, torch.tensor([[0, relation, 1]])])
        src.append(edges[:, 0] + offset)
        dst.append(edges[:, 2] + offset)
        types.append(edges[:, 1])
        owner.append(torch.full((len(edges),), g, dtype=torch.long))
        heads.append(offset)  # the extraction puts h at local 0 and t at local 1
        tails.append(offset + 1)
        sizes.append(n)
        offset += n
    return {
        "x": torch.cat(xs),
        "src": torch.cat(src).long(),
        "dst": torch.cat(dst).long(),
        "edge_type": torch.cat(types).long(),
        "edge_graph": torch.cat(owner),
        "heads": torch.tensor(heads),
        "tails": torch.tensor(tails),
        "sizes": torch.tensor(sizes),
        "relation": relations.long(),
    }


class BatchGRU(nn.Module):
    """The official ``BatchGRU``: a bidirectional GRU over each subgraph's nodes (zero-padded, not packed), inputs
    ``relu(node + b)``, initial state the node-wise max of ``node`` in both directions; returns ``(n, 2 dim)``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gru = nn.GRU(dim, dim, batch_first=True, bidirectional=True)
        self.bias = nn.Parameter(torch.empty(dim).uniform_(-1.0 / math.sqrt(dim), 1.0 / math.sqrt(dim)))

    def forward(self, node: Tensor, sizes: Tensor) -> Tensor:
        message = F.relu(node + self.bias)
        chunks = list(message.split(sizes.tolist()))
        initial = torch.stack([part.max(0).values for part in node.split(sizes.tolist())]).unsqueeze(0).repeat(2, 1, 1)
        padded = nn.utils.rnn.pad_sequence(chunks, batch_first=True)
        out, _ = self.gru(padded, initial.contiguous())
        return torch.cat([out[i, :size] for i, size in enumerate(sizes.tolist())])


class CoMPILE(nn.Module):
    """The CoMPILE scorer of batched subgraphs (:func:`batch_subgraphs`); ``forward(batch) -> (B,)`` scores.

    Args:
        num_relations: relation vocabulary (shared by the training and the inductive test graph).
        hops: subgraph radius (sizes the one-hot node features).
        dim: node, edge and relation embedding width (32).
        depth: message-passing depth; ``depth - 1`` node/edge iterations before the communicate step (3).
        dropout: on edge states and final node states (0.5).
    """

    def __init__(self, num_relations: int, hops: int = 3, dim: int = 32, depth: int = 3, dropout: float = 0.5) -> None:
        super().__init__()
        if num_relations < 1 or hops < 1 or dim < 1 or depth < 1 or not 0 <= dropout < 1:
            raise ValueError("num_relations, hops, dim and depth must be >= 1 and dropout in [0, 1)")
        self.hops, self.dim, self.depth = hops, dim, depth
        node_fdim = 2 * (hops + 1)
        self.relation_embeddings = nn.Parameter(torch.randn(num_relations, dim))
        self.w_i_node = nn.Linear(node_fdim, dim, bias=False)
        self.w_i_edge = nn.Linear(2 * node_fdim + dim, dim, bias=False)
        # attention 0 is the official input_attention{1,2}; attention d + 1 its Attention{1,2}_d
        self.att1 = nn.ModuleList(nn.Linear(2 * dim, dim, bias=False) for _ in range(depth))
        self.att2 = nn.ModuleList(nn.Linear(dim, 1, bias=False) for _ in range(depth))
        self.w_h_node = nn.ModuleList(nn.Linear(dim, dim, bias=False) for _ in range(depth - 1))
        self.w_h_edge = nn.ModuleList(nn.Linear(dim, dim, bias=False) for _ in range(depth - 1))
        self.communicate = nn.Linear(3 * dim, dim, bias=False)
        self.gru = BatchGRU(dim)
        self.w_o = nn.Linear(2 * dim, dim)
        self.linear1 = nn.Linear(dim, 16)
        self.linear2 = nn.Linear(16, 1)
        self.drop = nn.Dropout(dropout)

    def _attention(self, layer: int, m: Tensor, b: dict[str, Tensor], target: Tensor, rel: Tensor) -> Tensor:
        g = b["edge_graph"]
        to_target = m[b["heads"][g]] + target[g] - m[b["tails"][g]]
        along_edge = m[b["src"]] + rel - m[b["dst"]]
        return torch.sigmoid(self.att2[layer](F.relu(self.att1[layer](torch.cat([to_target, along_edge], 1)))))

    def propagate(self, b: dict[str, Tensor], iterations: int | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Node states, edge states and the attention after ``iterations`` (default ``depth - 1``) node/edge updates,
        and the initial node states; what the communicate step reads."""
        iterations = self.depth - 1 if iterations is None else iterations
        x, src, dst = b["x"], b["src"], b["dst"]
        rel = self.relation_embeddings[b["edge_type"]]
        target = self.relation_embeddings[b["relation"]]
        input_node = F.relu(self.w_i_node(x))
        m = input_node
        input_edge = F.relu(self.w_i_edge(torch.cat([x[src], rel, x[dst]], 1)))
        e = input_edge
        attention = self._attention(0, m, b, target, rel)
        for layer in range(iterations):
            e = e * attention
            m = F.relu(self.w_h_node[layer](m + torch.zeros_like(m).index_add_(0, dst, e)))  # incoming edges only
            e = F.relu(e + torch.tanh(m[src] + rel - m[dst]))
            e = self.drop(F.relu(input_edge + self.w_h_edge[layer](e)))
            attention = self._attention(layer + 1, m, b, target, rel)
        return m, e, attention, input_node

    def forward(self, b: dict[str, Tensor]) -> Tensor:
        m, e, attention, input_node = self.propagate(b)
        incoming = torch.zeros_like(m).index_add_(0, b["dst"], e * attention)
        c = self.communicate(torch.cat([incoming, m, input_node], 1))
        n = self.drop(F.relu(self.w_o(F.relu(self.gru(c, b["sizes"])))))
        target = self.relation_embeddings[b["relation"]]
        return self.linear2(self.linear1(torch.tanh(n[b["heads"]] + target - n[b["tails"]]))).squeeze(1)


class SubgraphExtractor:
    """The enclosing subgraphs of one graph, cached in memory by triple. Each query hands
    :func:`enclosing_subgraph` only the edges inside the ``hops``-balls of h and t (what its BFS can reach), which gives
    the same subgraph as the whole graph at a fraction of the cost."""

    def __init__(self, graph: Tensor, hops: int, max_nodes_per_hop: int | None = None, seed: int = 0) -> None:
        self.graph, self.hops, self.max_nodes_per_hop, self.seed = graph, hops, max_nodes_per_hop, seed
        self.adjacency: dict[int, set[int]] = {}
        for h, _, t in graph.tolist():
            self.adjacency.setdefault(h, set()).add(t)
            self.adjacency.setdefault(t, set()).add(h)
        self.incident: dict[int, list[int]] = {}
        for i, (h, _, t) in enumerate(graph.tolist()):
            self.incident.setdefault(h, []).append(i)
            self.incident.setdefault(t, []).append(i)
        self.cache: dict[Triple, Subgraph] = {}

    def __call__(self, triple: Triple) -> Subgraph:
        if triple not in self.cache:
            h, r, t = triple
            ball = {h, t} | neighbourhood(self.adjacency, h, self.hops) | neighbourhood(self.adjacency, t, self.hops)
            rows = sorted({i for v in ball for i in self.incident.get(v, ())})
            local = self.graph[rows] if rows else self.graph[:0]
            # the full balls hold every node a capped BFS can reach, so the restriction stays exact with sampling
            self.cache[triple] = enclosing_subgraph(local.reshape(-1, 3), h, t, self.hops, relation=r, max_nodes_per_hop=self.max_nodes_per_hop, seed=self.seed)
        return self.cache[triple]


class CoMPILEModule(L.LightningModule):
    """CoMPILE on a :class:`litzoo.datamodules.knowledge_graph.KnowledgeGraphDataModule` (inductive or transductive).

    ``setup`` draws the negatives once (seeded) and extracts every subgraph once per split (cached in memory): training
    and validation triples over the training graph, test triples over ``datamodule.test_graph``'s ``train`` split (the
    disjoint-entity ``_ind`` graph when inductive). Logs ``train/loss``, ``{val,test}/{loss,auc_pr,auc}`` and
    ``test/{hits@1,hits@10,mrr}`` (ranking against ``ranking_negatives`` corrupted heads and tails).

    Args:
        hops: subgraph radius (3).
        dim: embedding width (32).
        depth: message-passing depth (3).
        dropout: dropout (0.5).
        margin: margin of the ranking loss (10).
        lr: Adam learning rate (1e-3).
        l2: Adam weight decay (5e-4).
        num_negatives: negatives per positive in training and AUC evaluation (1).
        ranking_negatives: corrupted heads (and as many tails) per test triple for Hits@k (50; 0 skips ranking).
        add_target_edge: append ``H -r-> T`` to every subgraph as the official does.
        negative_seed: seed of the negative sampling (and of the per-hop node sampling).
        max_nodes_per_hop: at most this many new nodes per BFS hop from each root (GraIL's option; None: no cap).
    """

    def __init__(
        self,
        hops: int = 3,
        dim: int = 32,
        depth: int = 3,
        dropout: float = 0.5,
        margin: float = 10.0,
        lr: float = 1e-3,
        l2: float = 5e-4,
        num_negatives: int = 1,
        ranking_negatives: int = 50,
        add_target_edge: bool = True,
        negative_seed: int = 0,
        max_nodes_per_hop: int | None = None,
    ) -> None:
        super().__init__()
        if min(hops, dim, depth, num_negatives) < 1 or ranking_negatives < 0 or margin <= 0 or lr <= 0 or l2 < 0 or not 0 <= dropout < 1:
            raise ValueError("hops, dim, depth, num_negatives must be >= 1, ranking_negatives >= 0, margin and lr > 0, l2 >= 0, dropout in [0, 1)")
        if max_nodes_per_hop is not None and max_nodes_per_hop < 1:
            raise ValueError(f"max_nodes_per_hop must be >= 1 or None, got {max_nodes_per_hop}")
        self.save_hyperparameters()
        self.net: CoMPILE | None = None
        self.extractors: dict[str, SubgraphExtractor] = {}
        self.negatives: dict[str, dict[Triple, Tensor]] = {}
        self.known: dict[str, set[Triple]] = {}
        self._outputs: dict[str, list[tuple[Tensor, ...]]] = {"val": [], "test": []}

    # ------------------------------------------------------------------ tables
    def setup(self, stage: str | None = None) -> None:
        if self.net is not None:
            return
        datamodule = self.trainer.datamodule
        datamodule.load()
        self.build(datamodule.graph, datamodule.test_graph)

    def build(self, graph: KnowledgeGraph, test_graph: KnowledgeGraph | None = None) -> None:
        """Negatives and subgraphs of every split, then the model."""
        test_graph = graph if test_graph is None else test_graph
        hp = self.hparams
        if test_graph.relations != graph.relations:
            raise ValueError("the test graph must share the training graph's relation vocabulary")
        rng = random.Random(hp.negative_seed)
        self.graphs = {"train": graph, "val": graph, "test": test_graph}
        for split, source, name in (("train", graph, "train"), ("val", graph, "valid"), ("test", test_graph, "test")):
            key = "train_graph" if source is graph else "test_graph"
            if key not in self.extractors:
                self.extractors[key] = SubgraphExtractor(source.splits["train"], hp.hops, hp.max_nodes_per_hop, hp.negative_seed)
                self.known[key] = {tuple(row) for part in source.splits.values() for row in part.tolist()}
            triples = source.splits.get(name)
            if triples is None or len(triples) == 0:
                continue
            negatives = corrupt(triples, source.num_entities, self.known[key], rng, hp.num_negatives).reshape(len(triples), hp.num_negatives, 3)
            self.negatives[split] = {tuple(row): negs for row, negs in zip(triples.tolist(), negatives, strict=True)}
            for row, negs in self.negatives[split].items():  # precompute once: the CPU cost of the method
                self.extractors[key](row)
                for neg in negs.tolist():
                    self.extractors[key](tuple(neg))
        self.net = CoMPILE(graph.num_relations, hp.hops, hp.dim, hp.depth, hp.dropout)

    def _extractor(self, split: str) -> SubgraphExtractor:
        return self.extractors["train_graph" if self.graphs[split] is self.graphs["train"] else "test_graph"]

    def score(self, triples: Tensor, split: str) -> Tensor:
        """Scores of ``(N, 3)`` triples, their subgraphs taken from ``split``'s graph."""
        extractor = self._extractor(split)
        subgraphs = [extractor(tuple(row)) for row in triples.tolist()]
        batch = batch_subgraphs(subgraphs, triples[:, 1].cpu(), self.hparams.hops, self.hparams.add_target_edge)
        return self.net({k: v.to(self.device) for k, v in batch.items()})

    def _pairs(self, batch: dict[str, Tensor], split: str) -> tuple[Tensor, Tensor, Tensor]:
        positives = torch.stack([batch["head"], batch["relation"], batch["tail"]], 1).cpu()
        negatives = torch.cat([self.negatives[split][tuple(row)] for row in positives.tolist()])
        return positives, self.score(positives, split), self.score(negatives, split).reshape(len(positives), -1)

    # ------------------------------------------------------------------ steps
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        _, positive, negative = self._pairs(batch, "train")
        loss = margin_loss(positive, negative, self.hparams.margin)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite CoMPILE loss at step {self.global_step}")
        self.log("train/loss", loss, prog_bar=True, batch_size=len(positive))
        return loss

    def _evaluate(self, batch: dict[str, Tensor], split: str) -> None:
        positives, positive, negative = self._pairs(batch, split)
        loss = margin_loss(positive, negative, self.hparams.margin).detach() / len(positive)
        ranks = torch.empty(0)
        if split == "test" and self.hparams.ranking_negatives > 0:
            known = self.known_for(self._extractor(split))
            ranks = link_ranks(lambda t: self.score(t, split), positives, self.graphs[split].num_entities, known, self.hparams.ranking_negatives, self.hparams.negative_seed)
        scores = torch.cat([positive.detach().float().cpu(), negative.detach().float().cpu().flatten()])
        labels = torch.cat([torch.ones(len(positive)), torch.zeros(negative.numel())])
        self._outputs[split].append((scores, labels, loss.cpu().reshape(1), ranks))

    def known_for(self, extractor: SubgraphExtractor) -> set[Triple]:
        return self.known["train_graph" if extractor is self.extractors["train_graph"] else "test_graph"]

    def _summarise(self, split: str) -> None:
        outputs = self._outputs[split]
        if not outputs:
            return
        self._outputs[split] = []
        self.log_dict({f"{split}/{k}": v for k, v in link_metrics(outputs, ks=(1, 10)).items()}, prog_bar=split == "val")

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def on_validation_epoch_end(self) -> None:
        self._summarise("val")

    def on_test_epoch_end(self) -> None:
        self._summarise("test")

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        """Scores of the batch's triples over the test graph."""
        return self.score(torch.stack([batch["head"], batch["relation"], batch["tail"]], 1).cpu(), "test")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.net.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.l2)


__all__ = ["BatchGRU", "CoMPILE", "CoMPILEModule", "SubgraphExtractor", "batch_subgraphs", "corrupt", "margin_loss", "ranking_candidates"]
