"""CAT-ART: multi-target cross-domain recommendation by learning and transferring user embeddings (Li, Xie, Yu, Hu, Li,
Shu, Qie, Niu, "One for All, All for One: Learning and Transferring User Embeddings for Cross-Domain Recommendation",
WSDM 2023, arXiv 2211.11964; official code Chain123/CAT-ART: ``models.py`` ``PureMF`` and ``MultiRecommendBase4``,
``main_single_mf.py``, ``main_cross_pre.py``, ``run_functions.py`` ``train_single_step`` / ``train_single_step_pre``,
``loss_functions.py`` ``Similarity`` / ``contrastive_loss_sample_N``, ``utils/data.py`` ``SingleEmbedRec``,
``bert/model/attention/{multi_head,single}.py``).

The official pipeline, read line by line, and what this file does with each stage (one run, stages as phases of the
epoch counter, so a resumed run is in the phase the epoch says):

1. **Per-domain BPR-MF** (``PureMF``; epochs ``[0, mf_epochs)``). One user table and one item table per domain,
   ``score = <p_u, q_i>``, loss ``mean softplus(s- - s+)`` (:func:`~litzoo.framework.losses.bpr.bpr_loss`) plus
   ``decay`` x the L2 of the batch's embeddings (:func:`~litzoo.framework.losses.bpr.embedding_l2`; Adam without
   weight decay), one negative per training interaction drawn uniformly among the domain's items the user has no
   *training* interaction with (``SingleEmbedRec``'s rejection loop). Latent 64, Adam 1e-3, decay 1e-4, init N(0, 1)
   (``nn.Embedding``'s). Official schedule: ``main_single_mf.py`` one run per domain, up to ``--epoch`` passes (README:
   20) with early stopping on the validation BPR loss (patience 3).
2. **CAT**, the Contrastive AuToencoder (``MultiRecommendBase4.GeneralForward``; epochs ``[mf_epochs, mf_epochs +
   cat_epochs)``). Each user's D pretrained domain embeddings (frozen: ``user_embedding_list_fix`` under ``no_grad``)
   are stacked ``(B, D, d)``. Masking (``SingleEmbedRec.__getitem__`` with ``mask="rand"``, the default of
   ``main_cross_pre.py``): **exactly one domain per user per pass, drawn uniformly among all D domains** (the target
   included; any other ``mask`` string draws among the non-target domains, which has no meaning when one CAT serves
   every target, so it is not offered). The masked domain's row is replaced by a learned pad vector
   (``pad_embedding = nn.Embedding(1, d)``, N(0, 1)). The encoder is an MLP, not a Transformer (CAT is the
   "Contrastive AuToencoder"): ``Flatten, Linear(D d, 5 d), PReLU, Linear(5 d, 3 d), PReLU, Linear(3 d, d)``, the
   decoder its mirror ending in ``D d`` (the widths 5 d and 3 d are constants of the official code, written for its 5
   domains). Loss ``0.2 * contrastive + 0.4 * rec + 0.4 * rec_masked`` (``train_single_step_pre``, ``l == 'full'``):
   ``contrastive`` = ``contrastive_loss_sample_N`` between the encodings of the full and the masked views with
   ``Similarity(temp=0.1)`` (cosine / 0.1): ``CE(sim(full_i, masked_j), i)`` and ``CE(sim(masked_i, full_j), i)``
   averaged per row, then averaged over the rows that have a masked domain (0 when none has);
   ``rec`` / ``rec_masked`` = ``nn.MSELoss`` (mean over all ``B * D * d`` entries) between the decoding of each view and
   the full stacked input. Official schedule: 50 passes over the users with early stopping (patience 2), once, shared by
   every target (``pre_<run>/pre_model.pt`` does not depend on ``--domain``). Ablation ``mask=False``: the
   auto-encoder without domain masking, i.e. the official ``--encoder_loss rec`` (loss ``rec`` only, the paper's
   "+Autoencoder" row): without masked views there is nothing to contrast.
3. **ART**, Attention-based Representation Transfer (``MultiRecommendBase4.getUserEmbed``; epochs from
   ``mf_epochs + cat_epochs`` to the trainer's ``max_epochs``). For a target domain t the model starts from the
   pretrained tables (``user_embedding_list``: every domain's user table, trainable; ``embedding_item``: t's items,
   trainable): ``target = P_t[u]``; ``sources = [A_s(P_s[u]) for s != t]`` with one ``Linear(d, d)`` adapter per
   source; ``specific = Attn(q=target, k=sources, v=sources)``, single-head attention (``MultiHeadedAttention(h=1)``:
   q, k, v and output ``Linear(d, d)``, softmax of ``q k^T / sqrt(d)``, dropout 0.1 on the attention weights);
   ``global = G(Enc(stacked frozen embeddings))`` with the CAT encoder frozen (``no_grad``) and a trainable
   ``Linear(d, d)`` ``G``; the user vector is ``target + specific + global`` (``--knowledge both``; ``d_sp`` drops
   ``global``, ``d_in`` drops ``specific``: the paper's ablations), scored by dot product with t's items. Loss BPR
   only: ``run_functions.train_single_step(cross=True)`` computes the L2 term but does not add it. Official schedule:
   one run per target, up to 50 passes over t's interactions, early stopping (patience 2).
   **Multi-target**: here one ART head per domain, each holding its *own copies* of the pretrained tables (as each
   official per-target run loads its own), all trained in the same steps: their parameters are disjoint and Adam is
   per-parameter, so the summed loss gives each head exactly the updates of its own run on the same batches.

Evaluation (every validation / test row of the DataModule's ``eval_domains``, each scored in its own domain): sampled
(the held-out item among the DataModule's 100 ``candidates``) and full ranking (all of the domain's items but the user's
other known items, as the official ``test_single_step``), HR@K / NDCG@K / MRR with
:class:`~litzoo.framework.recsys.metrics.RankingMetrics`, overall and for sparse users (<= 3 training interactions),
logged as ``{val,test}/{sampled,full}/[sparse/]{hr@10,ndcg@10,mrr}`` pooled over the evaluated domains and
``{val,test}/<domain>/{sampled,full}/...`` per domain. Before ART starts the scores are the pretrained BPR-MF tables'
(the validation curve of phase 1 is single-domain BPR-MF's).

Verified (tests/modules/test_cat_art.py): the masking rule by hand and its uniform distribution, the pad vector in the
masked position only; the contrastive loss against a hand computation at temperature 0.1 (and against CLIP's symmetric
InfoNCE, which it equals when every row is masked); the reconstruction terms and the 0.2 / 0.4 / 0.4 weighting; ART's
attention and residual against a hand computation; BPR in the target; the logged metrics against a brute-force
recomputation; a short fit on SYNTHETIC data beating the untrained model; exact mid-epoch resume across the phases.

Chosen where the official code is silent or does not apply:

* **A domain the user has no data in.** In the official data (``part-*_0.pickle``, dense users) every user is in every
  domain. For others the executed code stacks the user's row of that domain's MF table, which MF never touched (no
  interaction, and the L2 is on batch rows only): its random initialisation. ``getOrgEmbed(users, mask)`` carries the
  intended alternative, "for sparse user case": the pad vector in that position. ``missing="pad"`` (default) does that,
  for CAT's input, CAT's reconstruction target and ART's source embeddings; ``missing="init"`` keeps the executed path.
* **Fixed epoch counts** instead of early stopping (exact resume needs the phase to be a function of the epoch).
* **Batches**: the DataModule yields rows per (user, domain) in a seeded, resumable order; MF and ART expand a row into
  all the user's training interactions of that domain (an epoch still visits every interaction once, as the official
  per-interaction epoch), CAT takes each user once per epoch (its row of its first domain with training data).
* **Randomness**: a user's negatives and masked domain in an epoch come from a generator seeded by
  ``(seed, phase, domain, epoch, user)``, independent of batches, ranks and the global RNG; attention dropout draws from
  the global RNG, which :class:`~litzoo.framework.resume.ExactResume` saves.
* **Frozen sources** (``train_sources=False``) is offered for large data: one shared frozen copy of the source tables
  instead of D x (D - 1) trainable ones (the official code has the ``no_grad`` for it commented out, marked as still to do).
* DDP: the phases leave parameters unused, so DDP needs ``strategy: ddp_find_unused_parameters_true``; a batch with no
  row for the phase (possible for CAT only, with tiny batches) skips its step, which under DDP would need every rank to
  skip: not tested under DDP.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torch.optim import Optimizer
from typing_extensions import override

from litzoo.framework.errors import LitzooError
from litzoo.framework.losses.bpr import bpr_loss, embedding_l2
from litzoo.framework.optim import cat_art_adam
from litzoo.framework.random_state import derive_seed
from litzoo.framework.recsys.metrics import SplitRankingMetrics, full_ranks, sampled_ranks
from litzoo.framework.recsys.negatives import uniform_negatives

PHASES = ("mf", "cat", "art")
_PHASE_CODE = {"mf": 1, "cat": 2, "art": 3}  # part of the seed of each phase's draws
KNOWLEDGE = ("both", "d_sp", "d_in")
MISSING = ("pad", "init")


def random_domain_mask(users: Sequence[int], num_domains: int, seed: int, epoch: int) -> Tensor:
    """``(B, D)`` float 0/1: ``mask="rand"`` of ``SingleEmbedRec``, one domain per user drawn uniformly among all D,
    from the generator of ``(seed, "cat", epoch, user)``."""
    mask = torch.zeros(len(users), num_domains)
    for row, user in enumerate(users):
        mask[row, int(np.random.default_rng(derive_seed(seed, _PHASE_CODE["cat"], epoch, int(user))).integers(0, num_domains))] = 1.0
    return mask


def apply_domain_mask(stacked: Tensor, mask: Tensor, pad: Tensor) -> Tensor:
    """``stacked`` ``(B, D, d)`` with the rows where ``mask`` ``(B, D)`` is 1 replaced by ``pad`` ``(d,)``
    (``embeds_mask[mask_index] = pad_embedding(0)``), out of place so the full view stays."""
    return torch.where(mask.bool()[..., None], pad.expand_as(stacked), stacked)


def view_contrastive_loss(full: Tensor, masked: Tensor, mask: Tensor, temperature: float = 0.1) -> Tensor:
    """``contrastive_loss_sample_N``: row i of the two ``(B, h)`` views is the positive pair, the other rows of the other
    view its negatives, similarity ``cos / temperature``; both directions averaged per row, then the mean over the rows
    with at least one masked domain in ``mask`` ``(B, D)`` (or ``(B,)``), 0 when no row is masked."""
    logits = F.cosine_similarity(full[:, None], masked[None], dim=-1) / temperature  # (B, B): full_i vs masked_j
    labels = torch.arange(len(full), device=full.device)
    per_row = (F.cross_entropy(logits, labels, reduction="none") + F.cross_entropy(logits.t(), labels, reduction="none")) / 2
    weight = (mask.reshape(len(full), -1).sum(1) > 0).to(per_row.dtype)
    if weight.sum() == 0:
        return per_row.sum() * 0.0  # the official returns 0 when no row is masked
    return (per_row * weight).sum() / weight.sum()


class SingleHeadAttention(nn.Module):
    """``MultiHeadedAttention(h=1, d_model=dim)`` of the official ``bert`` package: q, k, v projections, scaled dot
    product, dropout on the attention weights, output projection."""

    def __init__(self, dim: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.query, self.key, self.value, self.out = (nn.Linear(dim, dim) for _ in range(4))
        self.dropout = nn.Dropout(dropout)

    def forward(self, query: Tensor, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        """``query`` ``(B, 1, d)``, ``keys`` / ``values`` ``(B, S, d)`` -> ``(B, 1, d)`` and the weights ``(B, 1, S)``."""
        q, k, v = self.query(query), self.key(keys), self.value(values)
        weights = torch.softmax(q @ k.transpose(1, 2) / q.shape[-1] ** 0.5, dim=-1)
        return self.out(self.dropout(weights) @ v), weights


class ContrastiveAutoEncoder(nn.Module):
    """CAT: the MLP encoder / decoder over the flattened ``(B, D, d)`` stack and the learned pad vector."""

    def __init__(self, num_domains: int, dim: int) -> None:
        super().__init__()
        self.pad = nn.Embedding(1, dim)  # nn.Embedding's N(0, 1), as the official pad_embedding
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(num_domains * dim, 5 * dim), nn.PReLU(), nn.Linear(5 * dim, 3 * dim), nn.PReLU(),
                                     nn.Linear(3 * dim, dim))  # fmt: skip
        self.decoder = nn.Sequential(nn.Linear(dim, 3 * dim), nn.PReLU(), nn.Linear(3 * dim, 5 * dim), nn.PReLU(), nn.Linear(5 * dim, num_domains * dim))

    def losses(self, stacked: Tensor, mask: Tensor | None, temperature: float) -> dict[str, Tensor]:
        """``{"rec"}`` and, with a ``mask``, ``{"contrastive", "rec_masked"}`` for the stack ``(B, D, d)``."""
        target = stacked.detach().flatten(1)  # the reconstruction target is the input, never a path for gradients
        hidden = self.encoder(stacked)
        out = {"rec": F.mse_loss(self.decoder(hidden), target)}
        if mask is not None:
            hidden_masked = self.encoder(apply_domain_mask(stacked, mask, self.pad.weight[0]))
            out["contrastive"] = view_contrastive_loss(hidden, hidden_masked, mask, temperature)
            out["rec_masked"] = F.mse_loss(self.decoder(hidden_masked), target)
        return out


class ARTHead(nn.Module):
    """ART for one target domain: its own copies of the pretrained tables, the source adapters, the attention and the
    adapter of the global embedding."""

    def __init__(self, num_users: int, num_items: int, dim: int, sources: Sequence[int], train_sources: bool, dropout: float) -> None:
        super().__init__()
        self.sources = list(sources)
        self.user = nn.Embedding(num_users + 1, dim)
        self.item = nn.Embedding(num_items + 1, dim)
        self.source_users = nn.ModuleDict({str(s): nn.Embedding(num_users + 1, dim) for s in self.sources}) if train_sources else None
        self.adapters = nn.ModuleDict({str(s): nn.Linear(dim, dim) for s in self.sources})
        self.attention = SingleHeadAttention(dim, dropout)
        self.global_adapter = nn.Linear(dim, dim)


class CATARTNet(nn.Module):
    """Per-domain BPR-MF tables, the CAT auto-encoder and one ART head per domain (plain PyTorch).

    Args:
        num_users: user ids ``1..num_users`` in every domain (0 is padding).
        num_items: items of each domain (ids ``1..num_items[d]``).
        dim: latent width (64).
        init_std: normal initialisation of the MF tables (1, ``nn.Embedding``'s, the official).
        knowledge: the ART user vector: ``"both"`` (target + specific + global, CAT-ART), ``"d_sp"`` (target +
            specific: ART only) or ``"d_in"`` (target + global: CAT only).
        missing: a domain without training data for the user: ``"pad"`` (the pad vector) or ``"init"`` (its MF row).
        train_sources: each head trains its own copies of the source tables (official) or reads the frozen MF tables.
        fix_target_user: the heads' target user tables stay at their pretrained values (official ``--fix_user``).
        attention_dropout: dropout on ART's attention weights (0.1).
    """

    def __init__(self, num_users: int, num_items: Sequence[int], dim: int = 64, init_std: float = 1.0, knowledge: str = "both", missing: str = "pad",
                 train_sources: bool = True, fix_target_user: bool = False, attention_dropout: float = 0.1) -> None:  # fmt: skip
        super().__init__()
        num_items = [int(n) for n in num_items]
        if num_users < 1 or not num_items or min(num_items) < 1 or dim < 1 or init_std <= 0 or not 0 <= attention_dropout < 1:
            raise ValueError(f"need num_users, num_items, dim >= 1, init_std > 0, 0 <= attention_dropout < 1; got {num_users}, {num_items}, {dim}, "
                             f"{init_std}, {attention_dropout}")  # fmt: skip
        if knowledge not in KNOWLEDGE or missing not in MISSING:
            raise ValueError(f"knowledge must be one of {KNOWLEDGE} and missing one of {MISSING}; got {knowledge!r}, {missing!r}")
        if knowledge != "d_in" and len(num_items) < 2:
            raise ValueError(f"knowledge={knowledge!r} transfers from other domains: it needs at least 2 domains")
        self.num_domains, self.knowledge, self.missing, self.fix_target_user = len(num_items), knowledge, missing, fix_target_user
        self.mf_users = nn.ModuleList(nn.Embedding(num_users + 1, dim) for _ in num_items)
        self.mf_items = nn.ModuleList(nn.Embedding(n + 1, dim) for n in num_items)
        for table in (*self.mf_users, *self.mf_items):
            nn.init.normal_(table.weight, std=init_std)
        self.cat = ContrastiveAutoEncoder(self.num_domains, dim)
        domains = range(self.num_domains)
        self.heads = nn.ModuleList(ARTHead(num_users, n, dim, [s for s in domains if s != t], train_sources, attention_dropout) for t, n in enumerate(num_items))
        # which (user, domain) has training data (the DataModule fills it), and whether ART has taken its copies
        self.register_buffer("has_data", torch.ones(num_users + 1, self.num_domains, dtype=torch.bool))
        self.register_buffer("transfer_started", torch.zeros((), dtype=torch.bool))

    @property
    def sizes(self) -> tuple[int, list[int], int]:
        return self.mf_users[0].num_embeddings - 1, [t.num_embeddings - 1 for t in self.mf_items], self.mf_users[0].embedding_dim

    # ------------------------------------------------------------------ stage 1: BPR-MF
    def mf_scores(self, domain: int, users: Tensor, items: Tensor) -> Tensor:
        """``(B,)`` or ``(B, n)`` pretrained-MF scores of ``items`` for ``users`` in ``domain``."""
        user = self.mf_users[domain](users)
        return (user[:, None] * self.mf_items[domain](items)).sum(-1) if items.dim() == 2 else (user * self.mf_items[domain](items)).sum(-1)

    # ------------------------------------------------------------------ stage 2: CAT
    def with_missing(self, rows: Tensor, users: Tensor, domain: int) -> Tensor:
        """``rows`` ``(B, d)`` of ``domain``, with the pad vector (no gradient) for users without data there if ``missing="pad"``."""
        if self.missing == "init":
            return rows
        return torch.where(self.has_data[users, domain][:, None], rows, self.cat.pad.weight[0].detach().expand_as(rows))

    def stacked(self, users: Tensor) -> Tensor:
        """``(B, D, d)``: the users' frozen pretrained embeddings of every domain (``getOrgEmbed``)."""
        with torch.no_grad():
            stacked = torch.stack([self.mf_users[d](users) for d in range(self.num_domains)], 1)
        if self.missing == "pad":  # the pad enters CAT's input with its gradient, as in the masked view
            absent = ~self.has_data[users]
            stacked = torch.where(absent[..., None], self.cat.pad.weight[0].expand_as(stacked), stacked)
        return stacked

    # ------------------------------------------------------------------ stage 3: ART
    @torch.no_grad()
    def start_transfer(self) -> None:
        """Give every ART head its copies of the pretrained tables (``MultiRecommendBase.__init__`` loading them)."""
        for t, head in enumerate(self.heads):
            head.user.weight.copy_(self.mf_users[t].weight)
            head.item.weight.copy_(self.mf_items[t].weight)
            if head.source_users is not None:
                for s in head.sources:
                    head.source_users[str(s)].weight.copy_(self.mf_users[s].weight)
        self.transfer_started.fill_(True)

    def global_embedding(self, users: Tensor) -> Tensor:
        """``(B, d)`` CAT's encoding of the frozen stack, through the frozen encoder (``no_grad``)."""
        with torch.no_grad():
            return self.cat.encoder(self.stacked(users))

    def user_vector(self, target: int, users: Tensor) -> Tensor:
        """``(B, d)`` ART's user vector in ``target``: its embedding + the attended sources + the adapted global one."""
        head = self.heads[target]
        own = head.user(users)
        if self.fix_target_user:
            own = own.detach()
        vector = own
        if self.knowledge != "d_in":
            sources = []
            for s in head.sources:
                rows = head.source_users[str(s)](users) if head.source_users is not None else self.mf_users[s](users).detach()
                sources.append(head.adapters[str(s)](self.with_missing(rows, users, s)))
            specific, _ = head.attention(own[:, None], torch.stack(sources, 1), torch.stack(sources, 1))
            vector = vector + specific[:, 0]
        if self.knowledge != "d_sp":
            vector = vector + head.global_adapter(self.global_embedding(users))
        return vector

    def scores(self, domain: int, users: Tensor, items: Tensor) -> Tensor:
        """Scores of ``items`` ``(B,)`` or ``(B, n)`` in ``domain``: ART's once the transfer started, else pretrained MF."""
        if not bool(self.transfer_started):
            return self.mf_scores(domain, users, items)
        user, item = self.user_vector(domain, users), self.heads[domain].item(items)
        return (user[:, None] * item).sum(-1) if items.dim() == 2 else (user * item).sum(-1)

    def score_all(self, domain: int, users: Tensor) -> Tensor:
        """``(B, num_items + 1)`` scores of every item id of ``domain`` (column 0, padding, is never ranked)."""
        if not bool(self.transfer_started):
            return self.mf_users[domain](users) @ self.mf_items[domain].weight.t()
        return self.user_vector(domain, users) @ self.heads[domain].item.weight.t()


class CATART(L.LightningModule):
    """CAT-ART on every domain of an :class:`~litzoo.datamodules.interactions.InteractionsDataModule`, in one run:
    BPR-MF pretraining, CAT, then ART for every domain (see the module docstring).

    Args:
        mf_epochs: epochs of per-domain BPR-MF pretraining (the official runs up to 20, early-stopped).
        cat_epochs: epochs of CAT (the official: up to 50, early-stopped). ART trains for the remaining epochs of the
            trainer's ``max_epochs`` (the official: up to 50, early-stopped).
        dim: latent width (64).
        decay: weight of the batch-embedding L2 of BPR-MF (1e-4); ART adds none, as the official.
        train_negatives: negatives per training interaction, MF and ART (1).
        init_std: normal initialisation of the MF tables (1, the official ``nn.Embedding``'s).
        mask: CAT with domain masking and the contrastive term (True); False is the auto-encoder ablation (``rec`` only).
        temperature: of the contrastive similarity (0.1).
        contrastive_weight, reconstruction_weight, masked_reconstruction_weight: CAT's loss weights (0.2, 0.4, 0.4).
        knowledge, missing, train_sources, fix_target_user, attention_dropout: see :class:`CATARTNet`.
        seed: seed of the training negatives and of the masks.
        ks: HR / NDCG cut-offs.
        optimizer: the optimizer (Adam 1e-3, no weight decay).
    """

    monitor = "val/full/ndcg@10"
    monitor_mode = "max"

    def __init__(
        self,
        mf_epochs: int = 20,
        cat_epochs: int = 50,
        dim: int = 64,
        decay: float = 1e-4,
        train_negatives: int = 1,
        init_std: float = 1.0,
        mask: bool = True,
        temperature: float = 0.1,
        contrastive_weight: float = 0.2,
        reconstruction_weight: float = 0.4,
        masked_reconstruction_weight: float = 0.4,
        knowledge: Literal["both", "d_sp", "d_in"] = "both",
        missing: Literal["pad", "init"] = "pad",
        train_sources: bool = True,
        fix_target_user: bool = False,
        attention_dropout: float = 0.1,
        seed: int = 0,
        ks: Sequence[int] = (10,),
        optimizer: OptimizerCallable = cat_art_adam,
    ) -> None:
        super().__init__()
        if mf_epochs < 0 or cat_epochs < 0 or dim < 1 or decay < 0 or train_negatives < 1 or init_std <= 0 or temperature <= 0:
            raise ValueError(f"need mf_epochs, cat_epochs >= 0, dim, train_negatives >= 1, decay >= 0, init_std, temperature > 0; got {mf_epochs}, "
                             f"{cat_epochs}, {dim}, {train_negatives}, {decay}, {init_std}, {temperature}")  # fmt: skip
        if min(contrastive_weight, reconstruction_weight, masked_reconstruction_weight) < 0:
            raise ValueError("CAT's loss weights must be >= 0")
        if knowledge not in KNOWLEDGE or missing not in MISSING or not 0 <= attention_dropout < 1:
            raise ValueError(f"knowledge must be one of {KNOWLEDGE}, missing one of {MISSING}, 0 <= attention_dropout < 1; got {knowledge!r}, {missing!r}, "
                             f"{attention_dropout}")  # fmt: skip
        if not ks or any(int(k) < 1 for k in ks):
            raise ValueError(f"ks must be positive cut-offs, got {ks}")
        self.save_hyperparameters(ignore=["optimizer"])
        self.optimizer = optimizer
        self.net: CATARTNet | None = None
        self.domains: list[str] = []
        self._train: list[dict[int, np.ndarray]] = []
        self._home: dict[int, int] = {}
        self.metrics = nn.ModuleDict()

    # ------------------------------------------------------------------ building
    def phase(self, epoch: int) -> str:
        """``"mf"``, ``"cat"`` or ``"art"``: the stage of ``epoch`` (a function of the epoch only, so resuming is exact)."""
        hp = self.hparams
        return "mf" if epoch < hp.mf_epochs else "cat" if epoch < hp.mf_epochs + hp.cat_epochs else "art"

    def build(self, domains: Sequence[str], num_users: int, num_items: Sequence[int]) -> CATARTNet:
        """Create the network and the metrics (once): ``setup`` calls it with the DataModule's sizes."""
        hp = self.hparams
        if self.net is None:
            self.net = CATARTNet(num_users, num_items, hp.dim, hp.init_std, hp.knowledge, hp.missing, hp.train_sources, hp.fix_target_user,
                                 hp.attention_dropout)  # fmt: skip
            self.domains = list(domains)
            ks = tuple(int(k) for k in hp.ks)
            self.metrics = SplitRankingMetrics(ks, groups=self.domains)
        elif (self.domains, self.net.sizes[:2]) != (list(domains), (num_users, list(num_items))):
            raise LitzooError(f"CATART: the network was built for domains {self.domains} with sizes {self.net.sizes[:2]}, the data has {list(domains)} "
                              f"with {(num_users, list(num_items))}")  # fmt: skip
        return self.net

    @override
    def setup(self, stage: str) -> None:
        datamodule = self.trainer.datamodule
        if datamodule is None or not hasattr(datamodule, "train_sequences"):
            raise LitzooError("CATART trains on an InteractionsDataModule (per-domain interactions); got none")
        datamodule.load()
        domains = list(datamodule.domain_names)
        self.build(domains, datamodule.num_users, [datamodule.num_items(d) for d in domains])
        self._train = [{u: np.asarray(items, dtype=np.int64) for u, items in datamodule.train_sequences(d).items()} for d in domains]
        has_data = torch.zeros_like(self.net.has_data)
        for d, train in enumerate(self._train):
            has_data[list(train), d] = True
        self.net.has_data.copy_(has_data)
        self._home = {}
        for d, train in reversed(list(enumerate(self._train))):
            self._home.update(dict.fromkeys(train, d))  # each user's first domain with training data: its CAT row
        self._exclusion_mask = datamodule.exclusion_mask
        if stage == "fit" and self.trainer.max_epochs is not None and 0 <= self.trainer.max_epochs <= self.hparams.mf_epochs + self.hparams.cat_epochs:
            rank_zero_warn(f"CATART: max_epochs {self.trainer.max_epochs} <= mf_epochs + cat_epochs = {self.hparams.mf_epochs + self.hparams.cat_epochs}: "
                           "ART never trains")  # fmt: skip

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        num_users, num_items, _ = self.net.sizes
        checkpoint["cat_art_sizes"] = {"domains": self.domains, "num_users": num_users, "num_items": num_items}

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        sizes = checkpoint["cat_art_sizes"]  # load_from_checkpoint without a DataModule: the sizes from the file
        self.build(sizes["domains"], sizes["num_users"], sizes["num_items"])

    # ------------------------------------------------------------------ training
    def interaction_pairs(self, domain: int, users: Sequence[int], epoch: int, phase: str) -> tuple[Tensor, Tensor, Tensor]:
        """``(users (P,), positives (P,), negatives (P, n))``: every training interaction of ``users`` in ``domain``, each
        with ``train_negatives`` negatives from the generator of ``(seed, phase, domain, epoch, user)``."""
        num_items, n = self.net.sizes[1][domain], self.hparams.train_negatives
        rows, positives, negatives = [], [], []
        for user in users:
            items = self._train[domain][user]
            rng = np.random.default_rng(derive_seed(self.hparams.seed, _PHASE_CODE[phase], domain, epoch, user))
            rows.append(np.full(len(items), user, dtype=np.int64))
            positives.append(items)
            negatives.append(uniform_negatives(num_items, items, len(items) * n, rng).reshape(len(items), n))
        as_tensor = lambda parts: torch.from_numpy(np.concatenate(parts)).to(self.device)  # noqa: E731
        return as_tensor(rows), as_tensor(positives), as_tensor(negatives)

    def _domain_users(self, batch: dict[str, Tensor], domain: int) -> list[int]:
        return batch["user"][batch["domain"] == domain].tolist()

    def mf_loss(self, batch: dict[str, Tensor], epoch: int) -> dict[str, Tensor]:
        """Per domain ``BPR + decay * L2(batch embeddings)``, summed over domains (disjoint tables: separate runs)."""
        net, total, ranking = self.net, self._zero(), self._zero()
        for d in range(net.num_domains):
            users = self._domain_users(batch, d)
            if not users:
                continue
            u, i, j = self.interaction_pairs(d, users, epoch, "mf")
            user, positive, negative = net.mf_users[d](u), net.mf_items[d](i), net.mf_items[d](j)
            bpr = bpr_loss((user * positive).sum(-1), (user[:, None] * negative).sum(-1))
            total = total + bpr + self.hparams.decay * embedding_l2(user, positive, negative, batch_size=len(u))
            ranking = ranking + bpr.detach()
        return {"loss": total, "mf/bpr": ranking}

    def cat_loss(self, batch: dict[str, Tensor], epoch: int) -> dict[str, Tensor]:
        """CAT on the batch's users (each user once per epoch: its row of its first domain)."""
        hp = self.hparams
        users = [u for u, d in zip(batch["user"].tolist(), batch["domain"].tolist(), strict=True) if self._home.get(u) == d]
        if not users:
            return {"loss": None}
        stacked = self.net.stacked(torch.tensor(users, device=self.device))
        mask = random_domain_mask(users, self.net.num_domains, hp.seed, epoch).to(self.device) if hp.mask else None
        parts = self.net.cat.losses(stacked, mask, hp.temperature)
        if hp.mask:
            loss = hp.contrastive_weight * parts["contrastive"] + hp.reconstruction_weight * parts["rec"] + hp.masked_reconstruction_weight * parts["rec_masked"]
        else:
            loss = parts["rec"]  # the official encoder_loss="rec": the auto-encoder alone
        return {"loss": loss, **{f"cat/{k}": v.detach() for k, v in parts.items()}}

    def art_loss(self, batch: dict[str, Tensor], epoch: int) -> dict[str, Tensor]:
        """BPR of every target domain's ART head on its rows of the batch, summed (disjoint heads: separate runs)."""
        total = self._zero()
        for t in range(self.net.num_domains):
            users = self._domain_users(batch, t)
            if not users:
                continue
            u, i, j = self.interaction_pairs(t, users, epoch, "art")
            user = self.net.user_vector(t, u)  # per interaction, as the official (uid, pos, neg) samples: own dropout draw
            item = self.net.heads[t].item
            total = total + bpr_loss((user * item(i)).sum(-1), (user[:, None] * item(j)).sum(-1))
        return {"loss": total, "art/bpr": total.detach()}

    def _zero(self) -> Tensor:
        return torch.zeros((), device=self.device)

    @override
    def on_train_epoch_start(self) -> None:
        if self.phase(self.current_epoch) == "art" and not bool(self.net.transfer_started):
            self.net.start_transfer()

    @override
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor | None:
        phase = self.phase(self.current_epoch)
        if phase == "art" and not bool(self.net.transfer_started):
            self.net.start_transfer()  # (a loop that skipped on_train_epoch_start)
        parts = {"mf": self.mf_loss, "cat": self.cat_loss, "art": self.art_loss}[phase](batch, self.current_epoch)
        loss = parts.pop("loss")
        if loss is None or not loss.requires_grad:
            # no row of this phase in the batch: skip the step (a zero-gradient step would still move Adam's momentum)
            return None
        if not torch.isfinite(loss):
            raise LitzooError(f"CATART: non-finite {phase} loss {loss.item()} at epoch {self.current_epoch}, batch {batch_idx}")
        self.log_dict({"train/loss": loss.detach(), **{f"train/{k}": v for k, v in parts.items()}}, batch_size=len(batch["user"]))
        return loss

    # ------------------------------------------------------------------ evaluation
    def ranks(self, batch: dict[str, Tensor], domain: int) -> tuple[Tensor, Tensor, Tensor] | None:
        """``(sampled ranks, full ranks, sparse)`` of the batch's rows of ``domain`` (None when it has none)."""
        rows = batch["domain"] == domain
        if not rows.any():
            return None
        users, targets = batch["user"][rows], batch["target"][rows]
        sampled = sampled_ranks(self.net.scores(domain, users, batch["candidates"][rows]))
        exclude = self._exclusion_mask(self.domains[domain], users.cpu(), targets.cpu()).to(self.device)
        return sampled, full_ranks(self.net.score_all(domain, users), targets, exclude), batch["sparse"][rows]

    def _evaluation_step(self, stage: str, batch: dict[str, Tensor]) -> None:
        for d in range(len(self.domains)):
            ranked = self.ranks(batch, d)
            if ranked is None:
                continue
            sampled, full, sparse = ranked
            self.metrics.update(stage, "sampled", sampled, sparse, group=d)
            self.metrics.update(stage, "full", full, sparse, group=d)

    def _log_metrics(self, stage: str) -> None:
        if self.metrics.count(stage) == 0:
            if not self.trainer.sanity_checking:
                rank_zero_warn(f"CATART: no {stage} row was evaluated; does the DataModule have {stage} interactions in its eval_domains?")
            return
        self.log_dict(self.metrics.compute(stage))  # pooled and per domain; a group without rows is left out

    @override
    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluation_step("val", batch)

    @override
    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")

    @override
    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluation_step("test", batch)

    @override
    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")

    @override
    def configure_optimizers(self) -> Optimizer:
        # one Adam over everything: a parameter gets Adam state at its first gradient (grads are set to None between
        # steps), and each one trains in one phase only, so this equals the official fresh Adam per stage
        return self.optimizer(self.parameters())


__all__ = ["CATART", "CATARTNet", "ARTHead", "ContrastiveAutoEncoder", "SingleHeadAttention", "apply_domain_mask", "random_domain_mask",
           "view_contrastive_loss"]  # fmt: skip
