"""MoDE — CLIP Data Experts via Clustering (Ma, Huang, Xie, Li, Zettlemoyer, Chang, Yih, Xu; CVPR 2024, arXiv 2404.16030).

The pool's captions are clustered in two steps; one CLIP *data expert* is trained per coarse cluster on that cluster's
pairs (plus a few pairs from outside it); at inference the experts' zero-shot logits are ensembled with weights that
come from the task's metadata alone (the class names' distance to the fine cluster centres), with no training.
Official code: facebookresearch/MetaCLIP ``apps/mode`` — ``prep_feature.py`` (caption embeddings),
``prep_hrchy.py`` (two-step clustering), ``prep_inference.py`` (pair → fine cluster), ``src/training/mode_wds.py``
(an expert's pairs), ``post_report_ensemble.py`` (the ensemble weights) — and the balanced k-means it installs,
kernelmachine/balanced-kmeans ``kmeans_pytorch/__init__.py``. Read line by line; the code here is our own.

Verified against that code (and checked in ``tests/modules/test_mode.py``):

* **Caption embeddings** are L2-normalised before clustering and assignment (``F.normalize`` in ``prep_hrchy`` and
  ``prep_inference``).
* **Fine clustering**: balanced k-means, ``m = 1024`` centres, Euclidean (squared distances, ``pairwise_distance``),
  50 iterations per chunk, stopping early when ``(Σ_k ‖c_k − c_k'‖)² < 1e-3``; centres start at random distinct
  points; each iteration assigns points to centres with the **auction algorithm** (``auction_lap`` on negated
  distances: each centre bids for its ``N // K + 1`` best points, ε = (max − min)/50 clamped at 1e-4, a won point
  costs its winner a retention bid of ε for the first 100 rounds, after 1000 rounds unclaimed points go to centre 0)
  and moves each centre to the mean of its points (an empty one to a random point). The official fits online over
  ~5% of the pool's shards, one ``fit`` of 50 iterations per shard from the current centres: ``chunk_size`` does the
  same over shuffled chunks of the pool (default: the whole pool is one chunk).
* **Coarse clustering** of the fine centres: ``n = 4``, 100 iterations, and — the notes say plain k-means, the code
  says otherwise — *balanced* k-means too (``cluster_coarse(..., balanced=1)``); the fine → coarse map is then each
  fine centre's nearest coarse centre (``predict``, plain argmin). ``coarse_balanced=False`` gives plain k-means.
* **Pair → fine → coarse**: the nearest fine centre (``torch.cdist`` of the normalised embedding), then the map.
* **An expert's pairs** (``IterativeMoDEWebDataset.dataset_filter``): the pairs whose fine centre maps to its coarse
  cluster, plus ``int(n_out · ooc_ratio)`` of the ``n_out`` pairs outside it drawn uniformly without replacement
  (``ooc_ratio = 0.02``, "slightly better than 0.0"), kept in the pool's order. The official draws per shard and
  again each time a shard is read; a manifest written once fixes one draw per shard (here: the manifest is one shard).
* **Ensemble weights** (``post_report_ensemble.py``): each class name is embedded in the task's prompt templates
  (each prompt normalised, the mean normalised: ``build_text_indfeatures``); ``d_j`` = its Euclidean distance to the
  nearest fine centre, ``k_j`` that centre's coarse id. With ``n`` classes, ``a = exp(0.5 − √n)`` if ``n < 10`` else
  0, ``m = 5 · log10(max(10, n − 200))``, ``w_k = Σ_{j: k_j = k} exp((a − d_j) · m)`` (0 for a cluster no class
  falls in) and the weights are ``softmax(w / 8)``. The ensemble's logits are ``Σ_k weight_k · logits_k`` where an
  expert's logits are the cosines of the normalised image and class embeddings (``validate_zeroshot``: no logit
  scale); the official also reports the plain mean of the experts' logits and each expert alone.

Chosen where the paper and code leave it open: the caption embedder. The official one, the SimCSE model
``princeton-nlp/sup-simcse-bert-base-uncased`` (pooler output), cannot be downloaded here; the default is a stand-in
fitted on the pool itself, TF-IDF + truncated SVD (scikit-learn, :class:`TfidfSvdEmbedder`), saved inside the
clustering file so class names are embedded the same way later. Any object with ``fit(texts)``, ``__call__(texts)``
and ``state()`` / ``from_state`` registered with :func:`register_embedder` can replace it. Experts are trained from
scratch on their pairs here (the paper starts them from a partially trained seed CLIP, ``quick_init``: pass
``CLIPModule(init_from=...)`` to do the same).

Usage::

    litzoo mode-cluster --manifest pool.jsonl --output clusters --num_fine 1024 --num_coarse 4
    litzoo fit -c <clip config> --data.init_args.train_manifest clusters/expert_0.jsonl \\
        --data.init_args.tokenizer_path clusters/tokenizer.json     # one run per expert, in any order
    litzoo test --model litzoo.modules.mode.MoDEEnsemble --model.experts '[e0.ckpt, e1.ckpt, e2.ckpt, e3.ckpt]' \\
        --model.clustering clusters/clustering.pt --data ...      # weighted / uniform / each expert
"""

from __future__ import annotations

import inspect
import json
import math
import pickle
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from litzoo.framework.checkpoints import load_checkpoint
from litzoo.framework.data.jsonl import iter_jsonl, rebase_paths
from litzoo.framework.data.staging import write_files_atomically
from litzoo.framework.data.tokenization import TextTokenizer
from litzoo.framework.errors import LitzooError
from litzoo.framework.nn.clip import CLIP, load_clip_weights, zero_shot_weights

__all__ = [
    "BalancedKMeans", "CaptionEmbedder", "MoDE", "MoDEClusteringStep", "MoDEEnsemble", "ModeClustering", "TfidfSvdEmbedder",
    "auction_assignment", "cluster_captions", "ensemble_logits", "expert_pairs", "load_expert", "metadata_weights",
    "register_embedder",
]  # fmt: skip

CLUSTERING_FORMAT = "litzoo.mode.clustering/1"

# ---------------------------------------------------------------------------------- caption embedding


class CaptionEmbedder(Protocol):
    """What the clustering needs of a caption embedder: fitted once on the pool, saved with the centres."""

    name: str

    def fit(self, texts: Sequence[str]) -> CaptionEmbedder: ...

    def __call__(self, texts: Sequence[str]) -> Tensor: ...  # (N, D) float32, not yet normalised

    def state(self) -> dict[str, Any]: ...  # tensors, numbers, strings and lists only (loads with weights_only=True)


_EMBEDDERS: dict[str, Callable[[dict[str, Any]], CaptionEmbedder]] = {}


def register_embedder(name: str, from_state: Callable[[dict[str, Any]], CaptionEmbedder]) -> None:
    """Let :meth:`ModeClustering.load` rebuild embedders saved under ``name`` (e.g. a SimCSE wrapper of your own)."""
    _EMBEDDERS[name] = from_state


class TfidfSvdEmbedder:
    """TF-IDF of the caption's words followed by a truncated SVD to ``dim`` dimensions, fitted on the pool (LSA).

    The stand-in for the official SimCSE sentence embedder: captions that share content words land close together.
    scikit-learn's ``TfidfVectorizer`` defaults (lower-cased words of 2+ characters, smooth idf, rows L2-normalised)
    and ``TruncatedSVD(random_state=seed)``; the fitted vocabulary, idf and components are the saved state, and a
    loaded embedder recomputes the same features with them (words unknown to the pool are ignored).

    Args:
        dim: output dimensions (at most the vocabulary size minus one).
        seed: seed of the randomised SVD.
    """

    name = "tfidf_svd"

    def __init__(self, dim: int = 64, seed: int = 0) -> None:
        if dim < 1:
            raise ValueError(f"dim must be positive, got {dim}")
        self.dim, self.seed = dim, seed
        self.vocabulary: list[str] | None = None
        self.idf: Tensor | None = None
        self.components: Tensor | None = None  # (dim, V)

    def fit(self, texts: Sequence[str]) -> TfidfSvdEmbedder:
        from sklearn.decomposition import TruncatedSVD
        from sklearn.feature_extraction.text import TfidfVectorizer

        vectorizer = TfidfVectorizer()
        try:
            matrix = vectorizer.fit_transform(list(texts))
        except ValueError as error:  # "empty vocabulary; perhaps the documents only contain stop words"
            raise ValueError(f"cannot fit the TF-IDF embedder on these captions: {error}") from None
        vocabulary = vectorizer.get_feature_names_out().tolist()
        if len(vocabulary) <= self.dim:
            raise ValueError(f"the captions have {len(vocabulary)} distinct words; TF-IDF + SVD to dim={self.dim} needs more than dim")
        svd = TruncatedSVD(n_components=self.dim, random_state=self.seed).fit(matrix)
        self.vocabulary = vocabulary
        self.idf = torch.as_tensor(vectorizer.idf_, dtype=torch.float64)
        self.components = torch.as_tensor(svd.components_, dtype=torch.float64)
        return self

    def __call__(self, texts: Sequence[str]) -> Tensor:
        from sklearn.feature_extraction.text import CountVectorizer

        if self.vocabulary is None or self.idf is None or self.components is None:
            raise RuntimeError("TfidfSvdEmbedder: call fit(texts) first")
        counts = CountVectorizer(vocabulary=self.vocabulary).transform(list(texts))
        tfidf = torch.as_tensor(counts.toarray(), dtype=torch.float64) * self.idf
        tfidf = F.normalize(tfidf, dim=-1)  # TfidfVectorizer(norm="l2"); a caption of unknown words stays 0
        return (tfidf @ self.components.T).float()

    def state(self) -> dict[str, Any]:
        if self.vocabulary is None:
            raise RuntimeError("TfidfSvdEmbedder: call fit(texts) first")
        return {"dim": self.dim, "seed": self.seed, "vocabulary": list(self.vocabulary), "idf": self.idf, "components": self.components}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> TfidfSvdEmbedder:
        embedder = cls(int(state["dim"]), int(state["seed"]))
        vocabulary, idf, components = state["vocabulary"], state["idf"], state["components"]
        if not (isinstance(vocabulary, list) and all(isinstance(w, str) for w in vocabulary)):
            raise ValueError("'vocabulary' must be a list of words")
        if not (isinstance(idf, Tensor) and isinstance(components, Tensor) and idf.shape == (len(vocabulary),)
                and components.shape == (embedder.dim, len(vocabulary))):  # fmt: skip
            raise ValueError(f"'idf' must be ({len(vocabulary)},) and 'components' ({embedder.dim}, {len(vocabulary)}) tensors")
        embedder.vocabulary, embedder.idf, embedder.components = vocabulary, idf.double(), components.double()
        return embedder


register_embedder(TfidfSvdEmbedder.name, TfidfSvdEmbedder.from_state)

# ------------------------------------------------------------------------- balanced k-means (kmeans_pytorch)


def auction_assignment(scores: Tensor) -> Tensor:
    """``(N,)`` centre of each point from ``(N, K)`` scores (higher is better) by balanced-kmeans' ``auction_lap``.

    Each round every centre bids for its ``N // K`` most valuable points the value gap to its ``(N // K + 1)``-th plus
    ε; a point goes to its highest bidder and its price rises by that bid; for 100 rounds a centre also keeps a
    bid of ε on the points it holds (so it keeps them unless outbid), whose value for it stays the undiscounted
    score; it stops when every point has a bidder. The result is ε-optimal and close to ``N / K`` points per centre.
    """
    if scores.ndim != 2 or scores.shape[1] > scores.shape[0]:
        raise ValueError(f"scores must be (N points, K centres) with N >= K, got {tuple(scores.shape)}")
    if not torch.isfinite(scores).all():
        raise ValueError("auction_assignment: the scores hold non-finite values")
    num_points, num_centres = scores.shape
    if num_centres == 1:
        return torch.zeros(num_points, dtype=torch.long)
    eps = ((scores.max() - scores.min()) / 50).clamp_min(1e-4)
    worth = scores.detach().T.contiguous()  # (K, N): what each point is worth to each centre
    per_centre = num_points // num_centres
    value = worth.clone()
    bids = torch.zeros_like(worth)
    price = torch.zeros((1, num_points), dtype=worth.dtype)
    held: Tensor | None = None  # flat (centre, point) indices won in the last round
    unclaimed = torch.zeros(0, dtype=torch.long)
    rounds = 0
    while True:
        top_values, top_points = value.topk(per_centre + 1, dim=1)
        increments = top_values[:, :-1] - top_values[:, -1:] + eps
        bids.zero_()
        bids.scatter_(1, top_points[:, :-1], increments)
        if rounds < 100 and held is not None:
            bids.view(-1)[held] = eps  # keep what was won, unless someone else bids
        if rounds > 1000:
            # the official writes ε at the flat index of each unclaimed point, i.e. centre 0's bid for it
            bids.view(-1)[unclaimed] = eps
        claimed = (bids > 0).any(0).nonzero().squeeze(1)
        unclaimed = (bids == 0).all(0).nonzero().squeeze(1)
        high_bids, winners = bids[:, claimed].max(dim=0)
        if winners.numel() == num_points:
            return winners
        price[:, claimed] += high_bids
        value = worth - price
        held = winners * num_points + claimed
        value.view(-1)[held] = worth.view(-1)[held]  # a centre sees its own points at their full worth
        rounds += 1


def pairwise_distances(points: Tensor, centres: Tensor, distance: str) -> Tensor:
    """``(N, K)``: squared Euclidean distances (kmeans_pytorch ``pairwise_distance``) or ``1 − cos``."""
    if distance == "euclidean":
        return (points[:, None, :] - centres[None, :, :]).pow(2).sum(-1)
    if distance == "cosine":
        return 1 - F.normalize(points, dim=-1) @ F.normalize(centres, dim=-1).T
    raise ValueError(f"distance must be 'euclidean' or 'cosine', got {distance!r}")


class BalancedKMeans:
    """kernelmachine/balanced-kmeans' ``KMeans``: Lloyd iterations whose assignment step is the auction algorithm
    (``balanced=True``) or the nearest centre (``balanced=False``).

    Args:
        num_clusters: K.
        balanced: assign by :func:`auction_assignment` instead of argmin.
        distance: ``"euclidean"`` (squared) or ``"cosine"`` (1 − cos).
        iter_limit: iterations per :meth:`fit` call (MoDE: 50 fine, 100 coarse); 0 = until converged.
        tol: stop when the squared sum of the centres' shifts falls below it (the official 1e-3).
        seed: seed of the initial centres and of the refill of an empty cluster.
    """

    def __init__(self, num_clusters: int, balanced: bool = True, distance: str = "euclidean", iter_limit: int = 50, tol: float = 1e-3,
                 seed: int = 0) -> None:  # fmt: skip
        if num_clusters < 1:
            raise ValueError(f"num_clusters must be positive, got {num_clusters}")
        if distance not in ("euclidean", "cosine"):
            raise ValueError(f"distance must be 'euclidean' or 'cosine', got {distance!r}")
        if iter_limit < 0 or tol < 0:
            raise ValueError(f"iter_limit and tol must be >= 0, got {iter_limit} and {tol}")
        self.num_clusters, self.balanced, self.distance, self.iter_limit, self.tol = num_clusters, balanced, distance, iter_limit, tol
        self.generator = torch.Generator().manual_seed(seed)
        self.centres: Tensor | None = None
        self.iterations = 0  # of the last fit

    def fit(self, points: Tensor, online: bool = False) -> Tensor:
        """Iterate on ``points``; returns the last assignment. ``online=True`` continues from the current centres
        (the official's ``online=True, iter_k > 0``: one call per chunk of the pool)."""
        points = points.float()
        if len(points) < self.num_clusters:
            raise ValueError(f"k-means with {self.num_clusters} clusters needs at least as many points, got {len(points)}")
        if not online or self.centres is None:
            self.centres = points[torch.randperm(len(points), generator=self.generator)[: self.num_clusters]].clone()
        centres = self.centres
        self.iterations = 0
        while True:
            distances = pairwise_distances(points, centres, self.distance)
            assignment = auction_assignment(-distances) if self.balanced else distances.argmin(dim=1)
            previous = centres.clone()
            for k in range(self.num_clusters):
                members = points[assignment == k]
                if len(members) == 0:  # kmeans_pytorch issue 16: an empty cluster restarts at a random point
                    members = points[torch.randint(len(points), (1,), generator=self.generator)]
                centres[k] = members.mean(dim=0)
            shift = (centres - previous).pow(2).sum(dim=1).sqrt().sum()
            self.iterations += 1
            if shift**2 < self.tol or (self.iter_limit and self.iterations >= self.iter_limit):
                return assignment

    def predict(self, points: Tensor) -> Tensor:
        """The nearest centre of each point (the official ``predict``, unbalanced)."""
        if self.centres is None:
            raise RuntimeError("BalancedKMeans: call fit first")
        return pairwise_distances(points.float(), self.centres, self.distance).argmin(dim=1)


# ------------------------------------------------------------------------------------- the clustering


class ModeClustering:
    """The two-level clustering of a caption pool and the embedder it was made with.

    Args:
        fine_centres: ``(m, D)`` balanced k-means centres of the normalised caption embeddings.
        coarse_centres: ``(n, D)`` k-means centres of the fine centres.
        fine_to_coarse: ``(m,)`` coarse cluster of each fine centre (= data expert).
        embedder: the fitted caption embedder.
        distance: the clustering's distance, ``"euclidean"`` (MoDE) or ``"cosine"``.
        info: plain facts saved with it (settings, pool size, pairs per expert).
    """

    def __init__(self, fine_centres: Tensor, coarse_centres: Tensor, fine_to_coarse: Tensor, embedder: CaptionEmbedder,
                 distance: str = "euclidean", info: dict[str, Any] | None = None) -> None:  # fmt: skip
        if fine_centres.ndim != 2 or coarse_centres.ndim != 2 or fine_centres.shape[1] != coarse_centres.shape[1]:
            raise ValueError(f"centres must be (m, D) and (n, D), got {tuple(fine_centres.shape)} and {tuple(coarse_centres.shape)}")
        if fine_to_coarse.shape != (len(fine_centres),) or fine_to_coarse.dtype != torch.long:
            raise ValueError(
                f"fine_to_coarse must be a ({len(fine_centres)},) long tensor, got {tuple(fine_to_coarse.shape)} {fine_to_coarse.dtype}"
            )
        if len(fine_to_coarse) and not bool(((fine_to_coarse >= 0) & (fine_to_coarse < len(coarse_centres))).all()):
            raise ValueError(f"fine_to_coarse must hold coarse ids in 0..{len(coarse_centres) - 1}")
        if not (torch.isfinite(fine_centres).all() and torch.isfinite(coarse_centres).all()):
            raise ValueError("the cluster centres hold non-finite values")
        if distance not in ("euclidean", "cosine"):
            raise ValueError(f"distance must be 'euclidean' or 'cosine', got {distance!r}")
        self.fine_centres, self.coarse_centres, self.fine_to_coarse = fine_centres.float(), coarse_centres.float(), fine_to_coarse
        self.embedder, self.distance, self.info = embedder, distance, dict(info or {})

    @property
    def num_fine(self) -> int:
        return len(self.fine_centres)

    @property
    def num_coarse(self) -> int:
        return len(self.coarse_centres)

    def embed(self, texts: Sequence[str]) -> Tensor:
        """``(N, D)`` L2-normalised caption embeddings (the official normalises the SimCSE pooler output)."""
        features = self.embedder(list(texts))
        if not torch.isfinite(features).all():
            raise ValueError("the caption embedder returned non-finite values")
        return F.normalize(features.float(), dim=-1)

    def nearest_fine(self, embeddings: Tensor) -> tuple[Tensor, Tensor]:
        """``(distance, fine id)`` of each normalised embedding's nearest fine centre: Euclidean distance
        (``torch.cdist``, ``prep_inference`` and ``post_report_ensemble``), or ``1 − cos`` for a cosine clustering."""
        if self.distance == "euclidean":
            return torch.cdist(embeddings[None], self.fine_centres[None])[0].min(dim=-1)
        return (1 - embeddings @ F.normalize(self.fine_centres, dim=-1).T).min(dim=-1)

    def assign(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """``(fine ids, coarse ids)`` of captions: nearest fine centre, then the fine → coarse map."""
        _, fine = self.nearest_fine(self.embed(texts))
        return fine, self.fine_to_coarse[fine]

    def class_distances(self, class_names: Sequence[str], templates: Sequence[str] = ("{}",)) -> tuple[Tensor, Tensor]:
        """``(d, fine id)`` per class: its prompts embedded, each normalised, the mean normalised
        (``build_text_indfeatures``), then the nearest fine centre."""
        rows = [F.normalize(self.embed([template.format(name) for template in templates]).mean(dim=0), dim=-1) for name in class_names]
        return self.nearest_fine(torch.stack(rows))

    # ---------------------------------------------------------------------------------- the file
    def state(self) -> dict[str, Any]:
        return {
            "format": CLUSTERING_FORMAT, "fine_centres": self.fine_centres, "coarse_centres": self.coarse_centres,
            "fine_to_coarse": self.fine_to_coarse, "distance": self.distance, "embedder": self.embedder.name,
            "embedder_state": self.embedder.state(), "info": json.dumps(self.info),
        }  # fmt: skip

    def save(self, path: str | Path) -> Path:
        """Written to a temporary sibling and renamed; loads with ``torch.load(weights_only=True)``."""
        path = Path(path).expanduser()
        with write_files_atomically(path) as (staged,):
            torch.save(self.state(), staged)
        return path

    @classmethod
    def load(cls, path: str | Path) -> ModeClustering:
        """Reads a clustering file written by :meth:`save` (``litzoo mode-cluster``), with ``weights_only=True``.

        Raises:
            LitzooError: one line naming the file: missing, not a torch file, not a MoDE clustering, a missing or
                malformed entry (shapes, ids, non-finite centres), an embedder that is not registered.
        """
        path = Path(path).expanduser()
        what = f"MoDE clustering file '{path}'"
        if not path.is_file():
            raise LitzooError(f"{what} {'is not a file' if path.exists() else 'does not exist'} (written by `litzoo mode-cluster`)")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:
            if "Unsupported global" in str(error):
                raise LitzooError(
                    f"{what} holds Python objects other than tensors and plain containers (refused: weights_only=True)"
                ) from None
            raise LitzooError(f"{what} is not a torch file (it does not unpickle)") from None
        except Exception as error:  # zip / EOF errors of a truncated or corrupt file
            reason = (str(error).strip().splitlines() or [type(error).__name__])[0].split(". ")[0]
            raise LitzooError(f"{what} cannot be read: {reason}") from None
        if not isinstance(state, dict) or state.get("format") != CLUSTERING_FORMAT:
            found = state.get("format") if isinstance(state, dict) else type(state).__name__
            raise LitzooError(f"{what} is not a MoDE clustering (format {found!r}, expected {CLUSTERING_FORMAT!r})")
        missing = [
            key
            for key in ("fine_centres", "coarse_centres", "fine_to_coarse", "distance", "embedder", "embedder_state")
            if key not in state
        ]
        if missing:
            raise LitzooError(f"{what} lacks {', '.join(repr(k) for k in missing)}")
        for key in ("fine_centres", "coarse_centres", "fine_to_coarse"):
            if not isinstance(state[key], Tensor):
                raise LitzooError(f"{what}: {key!r} is a {type(state[key]).__name__}, not a tensor")
        builder = _EMBEDDERS.get(state["embedder"])
        if builder is None:
            raise LitzooError(
                f"{what}: caption embedder {state['embedder']!r} is not registered (known: {sorted(_EMBEDDERS)}; see register_embedder)"
            )
        try:
            embedder = builder(state["embedder_state"])
            info = json.loads(state.get("info", "{}"))
            return cls(state["fine_centres"], state["coarse_centres"], state["fine_to_coarse"], embedder, state["distance"], info)
        except (ValueError, KeyError, TypeError) as error:
            raise LitzooError(f"{what}: {error}") from None


def cluster_captions(
    texts: Sequence[str], num_fine: int = 1024, num_coarse: int = 4, embedder: CaptionEmbedder | None = None, distance: str = "euclidean",
    fine_iters: int = 50, coarse_iters: int = 100, coarse_balanced: bool = True, chunk_size: int | None = None, seed: int = 0,
) -> ModeClustering:  # fmt: skip
    """MoDE's two-step clustering (``prep_hrchy.py``) of a pool's captions.

    Args:
        texts: the pool's captions.
        num_fine: fine centres ``m`` (paper 1024).
        num_coarse: coarse clusters = data experts ``n`` (paper 4).
        embedder: an unfitted caption embedder, fitted here on ``texts``; default :class:`TfidfSvdEmbedder`.
        distance: ``"euclidean"`` (MoDE) or ``"cosine"``.
        fine_iters: balanced k-means iterations per chunk (50).
        coarse_iters: iterations of the coarse k-means (100).
        coarse_balanced: the coarse k-means balanced as in the official code (True) or plain.
        chunk_size: fit the fine centres online over shuffled chunks of this many captions (the official's shards);
            ``None`` = one chunk.
        seed: seed of the embedder, the chunk order and both k-means.
    """
    if not 2 <= num_coarse <= num_fine:
        raise ValueError(f"need 2 <= num_coarse <= num_fine, got num_coarse={num_coarse}, num_fine={num_fine}")
    if chunk_size is not None and chunk_size < num_fine:
        raise ValueError(f"chunk_size must be at least num_fine={num_fine}, got {chunk_size}")
    if len(texts) < num_fine:
        raise ValueError(f"{num_fine} fine clusters need at least as many captions, got {len(texts)}")
    embedder = TfidfSvdEmbedder(seed=seed) if embedder is None else embedder
    embedder.fit(list(texts))
    features = F.normalize(embedder(list(texts)).float(), dim=-1)
    fine = BalancedKMeans(num_fine, balanced=True, distance=distance, iter_limit=fine_iters, seed=seed)
    if chunk_size is None:
        fine.fit(features)
    else:
        order = torch.randperm(len(features), generator=torch.Generator().manual_seed(seed))
        chunks = [order[i : i + chunk_size] for i in range(0, len(order), chunk_size)]
        if len(chunks) > 1 and len(chunks[-1]) < num_fine:  # too few for the auction: fold into the previous chunk
            chunks[-2:] = [torch.cat(chunks[-2:])]
        for number, chunk in enumerate(chunks):
            fine.fit(features[chunk], online=number > 0)
    centres = fine.centres
    coarse_input = centres if distance == "euclidean" else F.normalize(centres, dim=-1)
    coarse = BalancedKMeans(num_coarse, balanced=coarse_balanced, distance=distance, iter_limit=coarse_iters, seed=seed + 1)
    coarse.fit(coarse_input)
    fine_to_coarse = coarse.predict(coarse_input)
    info = {"num_captions": len(texts), "num_fine": num_fine, "num_coarse": num_coarse, "fine_iters": fine_iters, "coarse_iters": coarse_iters,
            "coarse_balanced": coarse_balanced, "chunk_size": chunk_size, "seed": seed}  # fmt: skip
    return ModeClustering(centres, coarse.centres, fine_to_coarse, embedder, distance, info)


def expert_pairs(coarse_ids: Tensor, expert: int, ooc_ratio: float = 0.02, generator: torch.Generator | None = None) -> Tensor:
    """Indices (ascending) of the pairs expert ``expert`` trains on: its cluster's pairs and ``int(n_out · ooc_ratio)``
    of the ``n_out`` others, drawn uniformly without replacement (``mode_wds.py``'s ``dataset_filter``, one shard)."""
    if not 0.0 <= ooc_ratio <= 1.0:
        raise ValueError(f"ooc_ratio must be in [0, 1], got {ooc_ratio}")
    inside = coarse_ids == expert
    chosen = inside.nonzero().squeeze(1)
    outside = (~inside).nonzero().squeeze(1)
    if ooc_ratio > 0:
        draw = torch.randperm(len(outside), generator=generator)[: int(len(outside) * ooc_ratio)]
        chosen = torch.cat([chosen, outside[draw]])
    return chosen.sort().values


# ---------------------------------------------------------------------------------------- the ensemble


def metadata_weights(distances: Tensor, coarse_ids: Tensor, num_experts: int, smooth: float = 5.0, temperature: float = 8.0,
                     too_many_classes: int = 200) -> Tensor:  # fmt: skip
    """``(num_experts,)`` ensemble weights of a task from its classes' distances ``d_j`` to their nearest fine centre
    and that centre's coarse id ``k_j`` (``post_report_ensemble.py``)::

        a = exp(0.5 − √n) if n < 10 else 0;   m = smooth · log10(max(10, n − too_many_classes))
        w_k = Σ_{j: k_j = k} exp((a − d_j) · m)   (0 for a cluster holding no class);   weights = softmax(w / temperature)
    """
    n = len(distances)
    if n == 0 or coarse_ids.shape != distances.shape:
        raise ValueError(f"need one distance and one coarse id per class, got {tuple(distances.shape)} and {tuple(coarse_ids.shape)}")
    if not torch.isfinite(distances).all():
        raise ValueError("the class distances hold non-finite values")
    sharpen_add = math.exp(0.5 - math.sqrt(n)) if n < 10 else 0.0
    sharpen_mul = smooth * math.log10(max(10, n - too_many_classes))
    w = torch.zeros(num_experts, dtype=torch.float64).index_add_(
        0, coarse_ids.long(), torch.exp((sharpen_add - distances.double()) * sharpen_mul)
    )
    return torch.softmax(w / temperature, dim=0).float()


def ensemble_logits(expert_logits: Tensor, weights: Tensor) -> Tensor:
    """``Σ_k weights_k · logits_k`` of ``(E, B, C)`` expert logits."""
    return (expert_logits * weights.to(expert_logits)[:, None, None]).sum(dim=0)


def load_expert(path: str | Path) -> CLIP:
    """A data expert: the :class:`CLIP` of a ``CLIPModule`` checkpoint, rebuilt from its saved architecture arguments."""
    checkpoint = load_checkpoint(path)
    hparams = checkpoint.get("hyper_parameters")
    if not isinstance(hparams, dict):
        raise LitzooError(f"expert checkpoint '{path}' has no hyper_parameters (the CLIP's architecture): give a CLIPModule .ckpt")
    names = [name for name in inspect.signature(CLIP.__init__).parameters if name != "self"]
    model = CLIP(**{name: hparams[name] for name in names if name in hparams})
    load_clip_weights(model, str(path))
    return model.eval()


class MoDE(nn.Module):
    """The data experts and their clustering: per task, each expert's zero-shot logits and the metadata weights.

    Expert ``i`` is the CLIP trained on coarse cluster ``expert_clusters[i]`` (default: cluster ``i``). Experts train
    asynchronously and can be added later, so an ensemble may hold only some clusters' experts: the weights are then
    the official ``softmax(w / temperature)`` over the clusters present (the official script always has all of them;
    restricting the softmax is the same as renormalising its weights over the present experts). Plain PyTorch;
    :class:`MoDEEnsemble` evaluates it.

    Args:
        experts: CLIPs, one per coarse cluster present.
        clustering: the clustering the experts' pairs came from.
        expert_clusters: the coarse cluster of each expert (distinct); default ``0 … num_coarse − 1``, all present.
        smooth: ``m``'s factor (the official ``smooth_weight[0]`` = 5.0).
        temperature: the softmax temperature (``smooth_weight[1]`` = 8.0).
        too_many_classes: ``m``'s class offset (``too_many_class`` = 200).
    """

    def __init__(self, experts: Sequence[CLIP], clustering: ModeClustering, smooth: float = 5.0, temperature: float = 8.0,
                 too_many_classes: int = 200, expert_clusters: Sequence[int] | None = None) -> None:  # fmt: skip
        super().__init__()
        if expert_clusters is None:
            if len(experts) != clustering.num_coarse:
                raise ValueError(
                    f"the clustering has {clustering.num_coarse} coarse clusters, so it needs {clustering.num_coarse} experts "
                    f"(or expert_clusters naming the cluster of each), got {len(experts)}"
                )
            expert_clusters = range(clustering.num_coarse)
        clusters = [int(k) for k in expert_clusters]
        if len(clusters) != len(experts) or len(set(clusters)) != len(clusters) or not all(0 <= k < clustering.num_coarse for k in clusters):
            raise ValueError(
                f"expert_clusters must give each of the {len(experts)} experts a distinct coarse cluster in 0..{clustering.num_coarse - 1}, "
                f"got {clusters}"
            )
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.experts = nn.ModuleList(experts)
        self.expert_clusters = clusters
        self.clustering = clustering
        self.smooth, self.temperature, self.too_many_classes = smooth, temperature, too_many_classes

    def task_weights(self, class_names: Sequence[str], templates: Sequence[str]) -> tuple[Tensor, Tensor, Tensor]:
        """``(weights (E,), d (C,), coarse id (C,))`` of a task from its class names alone: the weights of the experts
        present, in their order (over every coarse cluster when all are present)."""
        distances, fine = self.clustering.class_distances(class_names, templates)
        coarse = self.clustering.fine_to_coarse[fine]
        all_weights = metadata_weights(distances, coarse, self.clustering.num_coarse, self.smooth, self.temperature, self.too_many_classes)
        present = all_weights[self.expert_clusters].double()
        return (present / present.sum()).float(), distances, coarse

    @torch.no_grad()
    def class_embeddings(self, tokenizer: Any, class_names: Sequence[str], templates: Sequence[str]) -> list[Tensor]:
        """Each expert's ``(E_k, C)`` zero-shot class weights (prompt ensembles, normalised)."""
        return [zero_shot_weights(expert, tokenizer, class_names, templates) for expert in self.experts]

    def forward(self, images: Tensor, class_embeddings: Sequence[Tensor]) -> Tensor:
        """``(E, B, C)``: each expert's cosine between its normalised image embedding and its class weights."""
        return torch.stack([expert.encode_image(images) @ weights for expert, weights in zip(self.experts, class_embeddings, strict=True)])


# -------------------------------------------------------------------------------- the LightningModule


class MoDEEnsemble(L.LightningModule):
    """Zero-shot evaluation of MoDE's data experts (``litzoo validate`` / ``litzoo test``; nothing to train).

    On each validation / test epoch: the class names (``class_names`` or the DataModule's) give the metadata weights,
    each expert its class embeddings (the DataModule's tokenizer: the one the experts were trained with); per batch,
    zero-shot accuracy of the weighted ensemble, of the uniform average and of each expert is logged as
    ``<stage>/zero_shot_acc/{weighted,uniform,expert_<k>}``, and the weights as ``<stage>/weight/expert_<k>`` (``k``: the expert's coarse cluster); the
    classes' nearest clusters and distances go to TensorBoard as text.

    Args:
        experts: ``CLIPModule`` checkpoints, expert ``i`` trained on coarse cluster ``i`` (any order of training), or on
            cluster ``expert_clusters[i]``.
        clustering: the clustering file of ``litzoo mode-cluster`` the experts' pairs came from.
        expert_clusters: the coarse cluster of each checkpoint, when only some clusters have an expert yet (experts can
            be added later); the weights are renormalised over the clusters present.
        class_names: the task's class names; default the DataModule's ``class_names``.
        zero_shot_templates: prompt templates with one ``{}``, for the experts and for the metadata embedding.
        smooth: ``m``'s factor (official 5.0).
        temperature: the weights' softmax temperature (official 8.0).
        too_many_classes: ``m``'s class offset (official 200).
    """

    def __init__(
        self, experts: list[str], clustering: str, class_names: list[str] | None = None, zero_shot_templates: list[str] | None = None,
        smooth: float = 5.0, temperature: float = 8.0, too_many_classes: int = 200, expert_clusters: list[int] | None = None,
    ) -> None:  # fmt: skip
        super().__init__()
        templates = ["{}"] if zero_shot_templates is None else list(zero_shot_templates)
        if not templates or any(t.count("{}") != 1 for t in templates):
            raise ValueError(f"zero_shot_templates must be non-empty, each with exactly one '{{}}', got {templates}")
        if not experts:
            raise ValueError("experts must name at least one CLIPModule checkpoint")
        self.save_hyperparameters()
        models = [load_expert(path) for path in experts]
        shapes = {(m.image_size, m.in_chans) for m in models}
        if len(shapes) > 1:
            raise LitzooError(f"the experts {experts} take different images (image_size, in_chans): {sorted(shapes)}")
        try:
            self.model = MoDE(models, ModeClustering.load(clustering), smooth, temperature, too_many_classes, expert_clusters)
        except ValueError as error:
            raise LitzooError(f"MoDE clustering '{clustering}' and experts {experts}: {error}") from None
        self.templates, self.class_names = templates, class_names
        self._names: list[str] | None = None
        self._class_embeddings: list[Tensor] | None = None
        self.weights: Tensor | None = None
        self.accuracy = nn.ModuleDict()

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        names = self.class_names if self.class_names is not None else getattr(datamodule, "class_names", None)
        if not names:
            raise LitzooError("MoDEEnsemble needs class names: pass --model.init_args.class_names or a DataModule with class_names")
        self._names = list(names)
        arms = ["weighted", "uniform", *(f"expert_{k}" for k in self.model.expert_clusters)]
        self.accuracy = nn.ModuleDict({arm: MulticlassAccuracy(len(self._names), average="micro") for arm in arms}).to(self.device)

    def _start(self, stage: str) -> None:
        tokenizer = getattr(getattr(self.trainer, "datamodule", None), "tokenizer", None)
        if not isinstance(tokenizer, TextTokenizer) and not callable(tokenizer):
            raise LitzooError("MoDEEnsemble needs the experts' tokenizer: use a DataModule with a `tokenizer` (ImageTextDataModule)")
        assert self._names is not None
        self._class_embeddings = self.model.class_embeddings(tokenizer, self._names, self.templates)
        weights, distances, coarse = self.model.task_weights(self._names, self.templates)
        self.weights = weights.to(self.device)
        for metric in self.accuracy.values():
            metric.reset()
        lines = [f"{name}: cluster {int(k)}, distance {float(d):.4f}" for name, d, k in zip(self._names, distances, coarse, strict=True)]
        lines.append("weights: " + ", ".join(f"expert_{k} {float(w):.4f}" for k, w in zip(self.model.expert_clusters, weights, strict=True)))
        for logger in self.loggers:
            if isinstance(logger, TensorBoardLogger) and not self.trainer.sanity_checking:
                logger.experiment.add_text(f"{stage}/mode_weights", "  \n".join(lines), self.global_step)

    def _step(self, batch: dict[str, Tensor], stage: str) -> None:
        assert self._class_embeddings is not None and self.weights is not None
        logits = self.model(batch["image"], self._class_embeddings)  # (E, B, C)
        arms = {"weighted": ensemble_logits(logits, self.weights), "uniform": logits.mean(dim=0)}
        arms.update({f"expert_{k}": logits[i] for i, k in enumerate(self.model.expert_clusters)})
        for arm, arm_logits in arms.items():
            metric = self.accuracy[arm]
            metric(arm_logits, batch["label"])
            self.log(f"{stage}/zero_shot_acc/{arm}", metric, prog_bar=arm == "weighted", batch_size=len(batch["label"]))
        for k, weight in zip(self.model.expert_clusters, self.weights, strict=True):
            self.log(f"{stage}/weight/expert_{k}", weight, batch_size=len(batch["label"]))

    def on_validation_epoch_start(self) -> None:
        self._start("val")

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def on_test_epoch_start(self) -> None:
        self._start("test")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._step(batch, "test")


# --------------------------------------------------------------------- the clustering step, as one object


class MoDEClusteringStep:
    """Cluster a pool manifest and write one training manifest per data expert (``litzoo mode-cluster``; also the
    ``clustering`` of ``TwoDomainCaptionsDataModule``, which runs it when its output is missing).

    Writes into ``output`` (each file through a temporary sibling, renamed into place): ``clustering.pt``
    (:class:`ModeClustering`), ``expert_<k>.jsonl`` (the pool's lines of expert ``k`` — image paths made relative to
    ``output`` — plus ``"mode_fine"``, ``"mode_coarse"``), ``tokenizer.json`` (a BPE of ``vocab_size`` tokens trained on
    every caption of the pool, so that all experts share one tokenizer) and ``summary.json``.

    Args:
        num_fine: fine centres (paper 1024).
        num_coarse: data experts (paper 4).
        ooc_ratio: share of the out-of-cluster pairs added to each expert (0.02).
        embed_dim: dimensions of the default TF-IDF + SVD caption embedder.
        distance: ``"euclidean"`` (MoDE) or ``"cosine"``.
        fine_iters: balanced k-means iterations per chunk (50).
        coarse_iters: coarse k-means iterations (100).
        coarse_balanced: the coarse k-means balanced, as the official code (True).
        chunk_size: online fine clustering over chunks of this many captions (None: one chunk).
        vocab_size: tokens of the shared BPE tokenizer written beside the manifests.
        text_key: the caption field of the manifest.
        image_key: the image path field (rebased to the output folder).
        seed: seed of the embedder, the clustering and the out-of-cluster draws.
    """

    def __init__(self, num_fine: int = 1024, num_coarse: int = 4, ooc_ratio: float = 0.02, embed_dim: int = 64, distance: str = "euclidean",
                 fine_iters: int = 50, coarse_iters: int = 100, coarse_balanced: bool = True, chunk_size: int | None = None,
                 vocab_size: int = 49408, text_key: str = "text", image_key: str = "image", seed: int = 0) -> None:  # fmt: skip
        if not 2 <= num_coarse <= num_fine:
            raise ValueError(f"need 2 <= num_coarse <= num_fine, got num_coarse={num_coarse}, num_fine={num_fine}")
        if not 0.0 <= ooc_ratio <= 1.0:
            raise ValueError(f"ooc_ratio must be in [0, 1], got {ooc_ratio}")
        if embed_dim < 1 or fine_iters < 0 or coarse_iters < 0 or vocab_size <= 4:
            raise ValueError(
                f"embed_dim must be positive, iterations >= 0 and vocab_size > 4, got {embed_dim}, {fine_iters}, {coarse_iters}, {vocab_size}"
            )
        if distance not in ("euclidean", "cosine"):
            raise ValueError(f"distance must be 'euclidean' or 'cosine', got {distance!r}")
        self.num_fine, self.num_coarse, self.ooc_ratio, self.embed_dim, self.distance = num_fine, num_coarse, ooc_ratio, embed_dim, distance
        self.fine_iters, self.coarse_iters, self.coarse_balanced, self.chunk_size = fine_iters, coarse_iters, coarse_balanced, chunk_size
        self.vocab_size, self.text_key, self.image_key, self.seed = vocab_size, text_key, image_key, seed

    @property
    def name(self) -> str:
        """A folder name that differs when the settings do."""
        parts = [f"F{self.num_fine}", f"C{self.num_coarse}", f"ooc{self.ooc_ratio:g}", f"d{self.embed_dim}", self.distance[:3],
                 f"it{self.fine_iters}-{self.coarse_iters}", "cb" if self.coarse_balanced else "ck", f"chunk{self.chunk_size}",
                 f"v{self.vocab_size}", f"seed{self.seed}"]  # fmt: skip
        return "mode-" + "-".join(parts)

    def write_experts(self, manifest: str | Path, output: str | Path) -> list[Path]:
        """Cluster ``manifest``'s captions and write the files above into ``output``; returns the expert manifests.

        Raises:
            LitzooError: the manifest is missing, malformed (file and line named) or holds too few captions.
        """
        manifest, output = Path(manifest).expanduser(), Path(output).expanduser()
        records = [record for _, record in iter_jsonl(manifest, [self.text_key])]
        texts = [record[self.text_key] for record in records]
        try:
            clustering = cluster_captions(
                texts, self.num_fine, self.num_coarse, TfidfSvdEmbedder(self.embed_dim, self.seed), self.distance, self.fine_iters,
                self.coarse_iters, self.coarse_balanced, self.chunk_size, self.seed,
            )  # fmt: skip
        except ValueError as error:
            raise LitzooError(f"manifest '{manifest}': {error}") from None
        fine, coarse = clustering.assign(texts)
        generator = torch.Generator().manual_seed(self.seed)
        experts = [expert_pairs(coarse, k, self.ooc_ratio, generator) for k in range(self.num_coarse)]
        sizes = np.bincount(coarse.numpy(), minlength=self.num_coarse).tolist()
        clustering.info.update(
            manifest=str(manifest), ooc_ratio=self.ooc_ratio, cluster_pairs=sizes, expert_pairs=[len(e) for e in experts]
        )
        paths = [output / f"expert_{k}.jsonl" for k in range(self.num_coarse)]
        tokenizer = TextTokenizer.train(texts, vocab_size=self.vocab_size)
        with write_files_atomically(*paths, output / "clustering.pt", output / "tokenizer.json", output / "summary.json") as staged:
            for path, indices in zip(staged, experts, strict=False):
                with path.open("w", encoding="utf-8") as handle:
                    for i in indices.tolist():
                        record = rebase_paths(records[i], [self.image_key], manifest.parent, output)
                        handle.write(json.dumps({**record, "mode_fine": int(fine[i]), "mode_coarse": int(coarse[i])}) + "\n")
            torch.save(clustering.state(), staged[-3])
            tokenizer.save(staged[-2])
            staged[-1].write_text(json.dumps(clustering.info, indent=1) + "\n", encoding="utf-8")
        return paths
