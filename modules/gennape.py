"""GENNAPE — Towards Generalized Neural Architecture Performance Estimators (Mills et al., AAAI 2023,
arXiv 2211.17226).

A network is a Computation Graph (CG) of atomic operations (:mod:`litzoo.framework.graph.computation`), so one
predictor can read architectures of any family. GENNAPE

1. embeds each CG with a k-GNN graph encoder,
2. pretrains the encoder with **contrastive learning** (NT-Xent) "to encourage network separation by
   topological features",
3. clusters the frozen embeddings of the training networks with **fuzzy c-means** (K clusters), and
4. trains K MLP predictor heads whose outputs are **soft-aggregated by each network's fuzzy membership**:
   ``ŷ(g) = Σ_k u_k(z_g) · head_k(z_g)``.

It is judged on families never seen in training, zero-shot and after fine-tuning on a few labelled
networks of the new family (the official demo: 50).

Reference code: Ascend-Research/GENNAPE (the k-GNN demo; the contrastive and fuzzy parts are not
released). From it: the encoder (``CGNodeEmbedding`` → ``PreEmbeddedGraphEncoder`` with ``GraphConv``,
6 layers, hidden 32, tanh after every layer → mean over nodes), the head (``CGRegressor.post_proj``:
Linear, Linear, ReLU, Linear, Linear, then a Linear regressor), Adam lr 1e-4, batch 32, 40 epochs,
fine-tuning for 100 epochs, and the Laplacian-eigenvector node encodings with random per-node sign
flips (p = 0.25) in training (``eigvec_size``). Our node features are
:meth:`ComputationGraph.node_features` (one-hot op + log-scaled shapes, kernel, stride, groups, bias,
FLOPs, params) through one linear layer, where the official code sums learned embeddings of the same
fields.

Not in the public code, taken from the abstract and the project notes (marked as such): the two
contrastive views of a CG are two independent draws of those sign flips, through a SimCLR-style
projection MLP, NT-Xent at temperature ``temperature``; the encoder is frozen after pretraining; fuzzy
c-means uses fuzzifier ``m = 2``; the K heads are trained jointly through the membership-weighted sum
with MSE on the standardised target.

Ablations (the paper's, by argument): ``contrastive_epochs=0`` trains encoder and one head end to end
(the plain k-GNN regressor of the demo); ``num_clusters=1`` keeps contrastive pretraining but one head.
"""

from __future__ import annotations

from litzoo.framework.cg_predictor import CGPredictorModule, FuzzyHeadEnsemble, adam_cg_predictor

__all__ = ["GENNAPEModule", "FuzzyHeadEnsemble", "adam_gennape"]

adam_gennape = adam_cg_predictor  # Adam lr 1e-4, the official demo's


class GENNAPEModule(CGPredictorModule):
    """GENNAPE: :class:`litzoo.framework.cg_predictor.CGPredictorModule` with its defaults — NT-Xent pretraining of the
    k-GNN on eigenvector sign-flip views for ``contrastive_epochs`` (20), then a frozen encoder, fuzzy
    c-means (``num_clusters`` 3, ``fuzzifier`` 2) and membership-weighted heads. Arguments as the base class."""
