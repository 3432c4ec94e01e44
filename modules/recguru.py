"""RecGURU: adversarial learning of Generalized User Representations for cross-domain sequential recommendation
(Li, Zhao, Zhang, Yu, Cheng, Shu, Kong, Niu, "RecGURU: Adversarial Learning of Generalized User Representations for
Cross-Domain Recommendation", WSDM 2022, arXiv 2111.10093). Official code: github.com/Chain123/RecGURU, read line by line:
``GURU/AutoEnc4Rec_cross.py`` (the model ``MyAuto4Rec_c``), ``GURU/Transformer/transformer.py`` (layers, Noam schedule),
``GURU/gan_training.py`` (``main_2`` -> ``train_recon_x`` then ``train_gan_all``: the schedule that ``train_gan.py``
runs), ``GURU/tools/utils.py`` (discriminator, ``loss_ae``, ``loss_bpr_func``), ``GURU/tools/lossfunctions.py``,
``GURU/data/data_loader.py`` (``seq_padding``, ``test_seq_gen``, negatives), ``GURU/config_auto4rec.py`` (defaults).

The paper's method, as the official code trains it:

1. **GURU, a sequence auto-encoder.** Each domain has its own item embedding (ids ``1..n``; 0 pads; ``n + 1`` is the
   end-of-sequence token ``[EOS]`` appended to every input) plus a fixed sinusoidal position code; one Transformer
   *encoder*, shared by the domains, reads ``[s_1 .. s_n, EOS]`` (bidirectional) and the state at the ``[EOS]`` slot
   is the user's representation ``u``. A per-domain Transformer *decoder* reconstructs the sequence from ``u``: causal
   self-attention over the items so far and cross-attention onto ``u``; the state after ``s_t`` scores ``s_{t+1}``
   against 30 sampled negatives with a softmax (the official "sampled softmax", ``loss_ae``).
2. **Adversarial domain alignment.** A discriminator (MLP ``d -> 5d -> 10d -> 5d -> 1``, ReLU, dropout 0.2) tells
   the first domain's ``u`` ("real") from the second's ("fake"); WGAN critic loss ``mean D(fake) - mean D(real)`` plus
   the gradient penalty ``lambda * mean((||grad_x D(x)||_2 - 1)^2)`` at random interpolates (``lambda = 0.1``), 5
   critic updates per generator update; the generator (the auto-encoder) minimises the flipped loss
   ``mean D(real) - mean D(fake)`` plus both reconstruction losses and, for users in both domains, the L2 (MSE)
   between their two representations. ``adversarial_loss="bce"`` gives the binary cross-entropy form of the
   official ``train_gan`` (critic: real 1, fake 0; generator: the labels flipped), the form the paper writes.
3. **Recommendation in the target domain.** A per-domain recommender decoder (same layers as the reconstruction
   decoder) reads the items so far with cross-attention onto ``u`` (``u`` detached: the official ``fix_enc``, so the
   encoder learns only from reconstruction and alignment); the state after ``s_t`` scores the next item with the
   official BPR form ``-log sigmoid(s_pos - mean_j s_neg_j)`` over 5 negatives (the *mean negative score*, not the
   mean of pairwise terms: ``lossfunctions.BPRLoss``), trained together with the target domain's reconstruction loss.
   Negatives are uniform, then for the last two thirds of the stage drawn in proportion to training frequency^0.75
   (``train_gan_all`` switches ``rec_loaders[0]`` to ``rec_loaders[1]`` after 0.8 of its 1.2 * N iterations).

Layers (``transformer.py``): post-LayerNorm blocks, ``LN(x + W_o softmax(QK^T / sqrt(d_k)) V)`` with separate
``d_k``/``d_v`` per head, masked scores ``-1e9``, dropout on the attention weights only; feed-forward
``LN(x + drop(W_2 GELU(drop(W_1 x))))`` (dropout *before* the tanh-GELU, as the official), ``LayerNorm(eps=1e-8)``;
every layer's output multiplied by the non-padding mask. Input: ``dropout((E[s] + PE) * mask)``.

Sequences (``seq_padding``): the last ``L - 1`` training items, left-padded, then ``[EOS]`` feed the encoder; the
decoder input is that window shifted right by two and its target shifted by one (``dec_in = [0, 0] + enc[:-2]``,
``dec_out = [0, 0] + enc[1:-1]``): at the slot of ``s_t`` the target is ``s_{t+1}``. Evaluation (``test_seq_gen``):
encoder ``[history[-(L-1):], EOS]``, decoder ``[0] + history[-(L-1):]``; the recommender's last state scores the
held-out item among the DataModule's 100 sampled candidates (the official draws 199) and among all items.

Schedule: three stages in epochs (``pretrain_epochs``, ``adversarial_epochs``, ``finetune_epochs``), the stage a
function of the epoch so a resumed run continues exactly. Optimizers (official): stage 1 Adam(betas (0.9, 0.98),
eps 1e-9) under the Noam schedule ``d^-0.5 min(n^-0.5, n w^-1.5)`` (``ScheduledOptim``, multiplier 1); stage 2 the
generator and the critic each Adam(1e-4, betas (0.5, 0.9)); stage 3 Adam(1e-3, betas (0.9, 0.98)) over the network.
Written with Lightning's manual optimization; in stage 2, batch ``i`` of an epoch is a critic update when
``i % (critic_iterations + 1) < critic_iterations`` and a generator update otherwise (each on a fresh batch, as the
official draws fresh batches for every critic iteration).

Verified (tests/modules/test_recguru.py): the attention layer against ``nn.MultiheadAttention``; one encoder layer
against a hand loop over the non-padding slots (the padding's content irrelevant); the decoders causal; the windows
against the official ``seq_padding`` / ``test_seq_gen`` rules; the gradient penalty against hand-derived gradients on
toy critics (and its gradient in the critic's weights); the sampled softmax and the official BPR by hand; which part
each update moves (pre-training: auto-encoder; critic turns: critic only; generator turns: auto-encoder; fine-tuning:
encoder and target recommender) and the ablation's skipped critic turns; the alignment pairs; the prefix view; the
logged metrics against brute force; 2-process DDP (gloo) ends with identical weights, and plain ``ddp`` is refused in
one line. Negatives never a known item of the user: tests/framework/recsys/test_recsys_negatives.py.

Chosen here, where the official code is silent or this setting needs it (each named, so it can be changed back):

* **Padding masks.** The official encoder passes the ``[EOS]`` id as the attention pad index (so the ``[EOS]`` key is
  masked and padding keys are attended, as zero vectors after the mask multiply) and builds its multiply-mask from the
  decoder's shifted input (so the first item's slot is zeroed). Both read as slips; here padding keys are masked and
  the mask is the encoder input's own.
* **Batches.** The official samples a batch per domain for each update. Here a batch of the DataModule's training
  loader (one row per (user, domain), both domains mixed, shuffled and resumable) is split by domain; the gradient
  penalty pairs the first ``min(n_a, n_b)`` rows of each domain (the official interpolates equal-sized batches); the
  alignment term takes the batch's first-domain rows whose user also has a second-domain history (so each overlapping
  user is aligned once an epoch; the official's overlap batch size is likewise the batch size times the overlap share).
* **Alignment on.** ``main_2`` calls ``train_gan_all(..., overlap=False)``; the paper's method aligns overlapping users,
  so ``align_overlap=True`` here. ``discriminator=False`` is the paper's ablation without the adversarial term (the
  critic batches are then skipped, so the generator gets the same number of updates).
* **What the recommender reads of the user (``user_view``).** In the official training the encoder sees the whole
  training window, so the representation every recommender slot attends to already contains the items the slots are
  trained to predict; at test time it does not contain the held-out item. ``user_view="prefix"`` (not the default)
  gives slot ``t`` the representation of the items up to ``t`` only, one encoder pass per slot.
* **Stage lengths** are epochs; the official counts iterations (200 pre-training steps, then ``training_steps_tune``
  which its config finally sets to 300: 180 adversarial iterations and 180 fine-tuning iterations, at batch 1024 on
  Amazon domains of 4k-47k users). The Noam warm-up is the official rule, 150 epochs of batches (``n_warmup_steps =
  training_steps / 2``, ``training_steps`` = 300 epochs), so pre-training runs at a small, rising learning rate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim import Adam
from torch.optim.lr_scheduler import LambdaLR
from typing_extensions import override

from litzoo.framework.errors import LitzooError
from litzoo.framework.network_args import check_network_kwargs
from litzoo.framework.nn.pos_embed import sincos_pos_embed_1d
from litzoo.framework.recsys.metrics import SplitRankingMetrics, full_ranks, sampled_ranks
from litzoo.framework.recsys.negatives import known_item_keys, sample_negatives_avoiding
from litzoo.framework.recsys.splits import left_pad

MASKED_SCORE = -1e9  # the official masked_fill value (not -inf: a fully masked row stays finite)
STAGES = ("pretrain", "adversarial", "finetune")
# config_auto4rec.py (cross-domain): n_warmup_steps = training_steps / 2, training_steps = 300 epochs of batches
OFFICIAL_WARMUP_EPOCHS = 150


# ---------------------------------------------------------------------------------------------------- building blocks
def interleaved_sinusoid(length: int, dim: int) -> Tensor:
    """``(length, dim)`` Vaswani position code with sines on even and cosines on odd channels (the official layout)."""
    halves = sincos_pos_embed_1d(dim, torch.arange(length))  # sines then cosines
    table = torch.empty(length, dim)
    table[:, 0::2], table[:, 1::2] = halves[:, : dim // 2], halves[:, dim // 2 :]
    return table


class PostNormAttention(nn.Module):
    """Multi-head attention with its residual and LayerNorm: ``LN(query + W_o attention(query, memory))``.

    Args:
        d_model: width of the stream.
        d_k, d_v: per-head query/key and value widths (32 in the official config).
        num_heads: heads (1).
        dropout: dropout on the attention weights (the official applies no other dropout here).
    """

    def __init__(self, d_model: int, d_k: int, d_v: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.d_k, self.d_v, self.num_heads = d_k, d_v, num_heads
        self.query = nn.Linear(d_model, d_k * num_heads)
        self.key = nn.Linear(d_model, d_k * num_heads)
        self.value = nn.Linear(d_model, d_v * num_heads)
        self.out = nn.Linear(d_v * num_heads, d_model)
        self.norm = nn.LayerNorm(d_model, eps=1e-8)
        self.attention_dropout = nn.Dropout(dropout)

    def forward(self, query: Tensor, memory: Tensor, blocked: Tensor) -> Tensor:
        """``(B, Lq, d)`` queries over ``(B, Lk, d)`` memory; ``blocked`` ``(B, Lq, Lk)`` bool, True = not attended."""
        B, Lq, Lk, h = query.shape[0], query.shape[1], memory.shape[1], self.num_heads
        q = self.query(query).view(B, Lq, h, self.d_k).transpose(1, 2)
        k = self.key(memory).view(B, Lk, h, self.d_k).transpose(1, 2)
        v = self.value(memory).view(B, Lk, h, self.d_v).transpose(1, 2)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(self.d_k)
        weights = self.attention_dropout(scores.masked_fill(blocked[:, None], MASKED_SCORE).softmax(-1))
        context = (weights @ v).transpose(1, 2).reshape(B, Lq, h * self.d_v)
        return self.norm(self.out(context) + query)


class PostNormFeedForward(nn.Module):
    """``LN(x + drop(W_2 GELU(drop(W_1 x))))`` with the tanh GELU (the official ``PositionWiseFeedForwardNet``)."""

    def __init__(self, d_model: int, d_ff: int, dropout: float) -> None:
        super().__init__()
        self.inner = nn.Linear(d_model, d_ff)
        self.outer = nn.Linear(d_ff, d_model)
        self.dropout_inner, self.dropout_outer = nn.Dropout(dropout), nn.Dropout(dropout)
        self.norm = nn.LayerNorm(d_model, eps=1e-8)

    def forward(self, x: Tensor) -> Tensor:
        hidden = F.gelu(self.dropout_inner(self.inner(x)), approximate="tanh")
        return self.norm(x + self.dropout_outer(self.outer(hidden)))


class EncoderLayer(nn.Module):
    """Self-attention then feed-forward (bidirectional: padding keys are the only ones blocked)."""

    def __init__(self, d_model: int, d_ff: int, d_k: int, d_v: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.self_attention = PostNormAttention(d_model, d_k, d_v, num_heads, dropout)
        self.feed_forward = PostNormFeedForward(d_model, d_ff, dropout)

    def forward(self, x: Tensor, blocked: Tensor) -> Tensor:
        return self.feed_forward(self.self_attention(x, x, blocked))


class DecoderLayer(nn.Module):
    """Causal self-attention, cross-attention onto the encoder's memory, feed-forward."""

    def __init__(self, d_model: int, d_ff: int, d_k: int, d_v: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.self_attention = PostNormAttention(d_model, d_k, d_v, num_heads, dropout)
        self.cross_attention = PostNormAttention(d_model, d_k, d_v, num_heads, dropout)
        self.feed_forward = PostNormFeedForward(d_model, d_ff, dropout)

    def forward(self, x: Tensor, memory: Tensor, self_blocked: Tensor, cross_blocked: Tensor) -> Tensor:
        return self.feed_forward(self.cross_attention(self.self_attention(x, x, self_blocked), memory, cross_blocked))


class DomainDiscriminator(nn.Sequential):
    """The official critic ``Discriminator(d, 1, 5d)``: ``d -> 5d -> 10d -> 5d -> 1``, ReLU and dropout 0.2 between."""

    def __init__(self, d_model: int, dropout: float = 0.2) -> None:
        hidden = 5 * d_model
        super().__init__(
            nn.Linear(d_model, hidden), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(hidden, 2 * hidden), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(2 * hidden, hidden), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(hidden, 1),
        )  # fmt: skip

    def forward(self, user: Tensor) -> Tensor:
        """``(B, d)`` user representations -> ``(B,)`` critic scores (logits)."""
        return super().forward(user).view(-1)


def gradient_penalty(critic: nn.Module, real: Tensor, fake: Tensor, weight: float = 0.1, alpha: Tensor | None = None) -> Tensor:
    """WGAN-GP (Gulrajani et al. 2017) as the official ``calc_gradient_penalty``: ``weight * mean_i (||grad D(x_i)||_2 - 1)^2``
    at ``x_i = alpha_i real_i + (1 - alpha_i) fake_i``, ``alpha_i ~ U(0, 1)`` per row, differentiable (``create_graph``).

    Args:
        critic: maps ``(B, d)`` to ``(B,)``.
        real, fake: ``(B, d)`` paired rows (detached from the generator).
        weight: lambda (0.1, the official ``LAMBDA``).
        alpha: ``(B,)`` interpolation weights (default: drawn from torch's global generator).
    """
    if real.shape != fake.shape or real.dim() != 2:
        raise ValueError(f"real and fake must be (B, d) of the same shape, got {tuple(real.shape)} and {tuple(fake.shape)}")
    if alpha is None:
        alpha = torch.rand(real.shape[0], device=real.device, dtype=real.dtype)
    interpolates = (alpha[:, None] * real + (1 - alpha[:, None]) * fake).detach().requires_grad_(True)
    scores = critic(interpolates)
    (gradients,) = torch.autograd.grad(scores, interpolates, grad_outputs=torch.ones_like(scores), create_graph=True)
    return weight * ((gradients.norm(2, dim=1) - 1) ** 2).mean()


def sampled_softmax_loss(positive: Tensor, negatives: Tensor, is_target: Tensor) -> Tensor:
    """The official reconstruction loss: cross-entropy of the positive (class 0) among ``[positive, negatives]``,
    averaged over the target slots. ``positive`` ``(B, L)``, ``negatives`` ``(B, L, n)``, ``is_target`` ``(B, L)``."""
    logits = torch.cat([positive[..., None], negatives], -1)
    per_slot = torch.logsumexp(logits, -1) - positive
    weight = is_target.to(per_slot.dtype)
    return (per_slot * weight).sum() / weight.sum().clamp_min(1.0)


def mean_negative_bpr_loss(positive: Tensor, negatives: Tensor, is_target: Tensor) -> Tensor:
    """The official ``BPRLoss``: ``-log sigmoid(s_pos - mean_j s_neg_j)`` per target slot, averaged over the slots
    (the mean is over the negatives' *scores*, before the sigmoid). Shapes as :func:`sampled_softmax_loss`."""
    per_slot = -F.logsigmoid(positive - negatives.mean(-1))
    weight = is_target.to(per_slot.dtype)
    return (per_slot * weight).sum() / weight.sum().clamp_min(1.0)


def encoder_window(items: Tensor, eos: int) -> Tensor:
    """``(B, L)`` left-padded items -> the encoder input ``[items[:, 1:], EOS]`` (the official ``seq_padding`` keeps
    the last ``L - 1`` items and appends the end token)."""
    return torch.cat([items[:, 1:], torch.full_like(items[:, :1], eos)], 1)


def training_windows(items: Tensor, eos: int) -> tuple[Tensor, Tensor, Tensor]:
    """``(enc_in, dec_in, dec_out)`` of the official ``seq_padding`` from ``(B, L)`` left-padded training items:
    ``dec_in = [0, 0] + enc_in[:-2]``, ``dec_out = [0, 0] + enc_in[1:-1]`` (``dec_in[t]`` is followed by ``dec_out[t]``)."""
    enc_in = encoder_window(items, eos)
    zeros = torch.zeros_like(items[:, :2])
    return enc_in, torch.cat([zeros, enc_in[:, :-2]], 1), torch.cat([zeros, enc_in[:, 1:-1]], 1)


def evaluation_windows(history: Tensor, eos: int) -> tuple[Tensor, Tensor]:
    """``(enc_in, dec_in)`` of the official ``test_seq_gen``: ``dec_in = [0] + enc_in[:-1]``, so the decoder's last
    slot holds the newest history item and its state scores the held-out one."""
    enc_in = encoder_window(history, eos)
    return enc_in, torch.cat([torch.zeros_like(history[:, :1]), enc_in[:, :-1]], 1)


# ---------------------------------------------------------------------------------------------------- the model
class RecGURU(nn.Module):
    """GURU's sequence auto-encoder over two (or more) domains, with a recommender decoder per domain.

    Args:
        num_items: items per domain (ids ``1..n``; ``n + 1`` is the domain's ``[EOS]`` token).
        d_model: width (the official ``--d_model`` default 32).
        d_ff: feed-forward width (512).
        d_k, d_v: per-head query/key and value widths (32).
        num_heads: attention heads (``--n_head`` 1).
        num_blocks: layers in the encoder and in each decoder (3 for the Amazon pairs, 6 for the business data).
        dropout: dropout rate (0.5).
        max_positions: longest window the position code covers.
        embedding_std: standard deviation of the item embeddings' normal initialisation (1: ``nn.Embedding``'s, the
            official).
    """

    def __init__(
        self,
        num_items: Sequence[int],
        d_model: int = 32,
        d_ff: int = 512,
        d_k: int = 32,
        d_v: int = 32,
        num_heads: int = 1,
        num_blocks: int = 3,
        dropout: float = 0.5,
        max_positions: int = 512,
        embedding_std: float = 1.0,
    ) -> None:
        super().__init__()
        if len(num_items) < 2 or min(num_items) < 1:
            raise ValueError(f"num_items must give >= 1 items for each of at least two domains, got {list(num_items)}")
        if d_model < 2 or d_model % 2 or min(d_ff, d_k, d_v, num_heads, num_blocks, max_positions) < 1 or not 0 <= dropout < 1:
            raise ValueError("need an even d_model >= 2, positive d_ff, d_k, d_v, num_heads, num_blocks, max_positions and dropout in [0, 1)")
        self.num_items = [int(n) for n in num_items]
        self.d_model, self.max_positions = d_model, max_positions
        if embedding_std <= 0:
            raise ValueError(f"embedding_std must be positive, got {embedding_std}")
        self.item_embeddings = nn.ModuleList(nn.Embedding(n + 2, d_model) for n in self.num_items)
        for table in self.item_embeddings:
            nn.init.normal_(table.weight, std=embedding_std)
        self.register_buffer("positions", interleaved_sinusoid(max_positions, d_model), persistent=False)
        self.input_dropout = nn.Dropout(dropout)
        layer = dict(d_model=d_model, d_ff=d_ff, d_k=d_k, d_v=d_v, num_heads=num_heads, dropout=dropout)
        self.encoder = nn.ModuleList(EncoderLayer(**layer) for _ in range(num_blocks))
        self.decoders = nn.ModuleList(nn.ModuleList(DecoderLayer(**layer) for _ in range(num_blocks)) for _ in self.num_items)
        self.recommenders = nn.ModuleList(nn.ModuleList(DecoderLayer(**layer) for _ in range(num_blocks)) for _ in self.num_items)

    def eos(self, domain: int) -> int:
        return self.num_items[domain] + 1

    def embed(self, ids: Tensor, domain: int) -> tuple[Tensor, Tensor]:
        """``dropout((E[ids] + PE) * mask)`` and the float non-padding mask ``(B, L)``."""
        if ids.shape[1] > self.max_positions:
            raise LitzooError(f"RecGURU: a window of {ids.shape[1]} items exceeds max_positions {self.max_positions}")
        mask = (ids != 0).to(self.positions.dtype)
        x = self.item_embeddings[domain](ids) + self.positions[: ids.shape[1]]
        return self.input_dropout(x * mask[..., None]), mask

    def encode(self, enc_in: Tensor, domain: int) -> Tensor:
        """``(B, L)`` encoder windows (``[..., EOS]``) -> ``(B, d)`` user representations (the state at ``[EOS]``)."""
        x, mask = self.embed(enc_in, domain)
        blocked = (enc_in == 0)[:, None, :].expand(-1, enc_in.shape[1], -1)
        for layer in self.encoder:
            x = layer(x, blocked) * mask[..., None]
        return x[:, -1]

    def decode(self, layers: nn.ModuleList, memory: Tensor, cross_blocked: Tensor, dec_in: Tensor, domain: int) -> Tensor:
        """States ``(B, L, d)`` of a decoder over ``dec_in``: causal self-attention, cross-attention onto ``memory``
        ``(B, Lk, d)`` with ``cross_blocked`` ``(B, L, Lk)``."""
        x, mask = self.embed(dec_in, domain)
        L = dec_in.shape[1]
        causal = torch.ones(L, L, dtype=torch.bool, device=dec_in.device).triu(1)
        self_blocked = causal[None] | (dec_in == 0)[:, None, :]
        for layer in layers:
            x = layer(x, memory, self_blocked, cross_blocked) * mask[..., None]
        return x

    @staticmethod
    def window_memory(user: Tensor, enc_in: Tensor, length: int) -> tuple[Tensor, Tensor]:
        """The official memory: ``user`` repeated over the encoder's slots, its padding slots blocked."""
        return user[:, None, :].expand(-1, enc_in.shape[1], -1), (enc_in == 0)[:, None, :].expand(-1, length, -1)

    def prefix_users(self, dec_in: Tensor, domain: int) -> Tensor:
        """``(B, L, d)``: at each non-padding decoder slot ``t``, the representation of the items up to and including
        ``dec_in[:, t]`` (encoded as ``[prefix[-(L-1):], EOS]``); zero at padding slots."""
        B, L = dec_in.shape
        rows, slots = (dec_in != 0).nonzero(as_tuple=True)
        index = slots[:, None] - (L - 2) + torch.arange(L - 1, device=dec_in.device)[None]  # the prefix ends at window slot L - 2
        window = dec_in[rows[:, None], index.clamp_min(0)].masked_fill(index < 0, 0)
        window = torch.cat([window, torch.full_like(window[:, :1], self.eos(domain))], 1)
        users = torch.zeros(B, L, self.d_model, dtype=self.positions.dtype, device=dec_in.device)
        if len(rows):
            users = users.index_put((rows, slots), self.encode(window, domain))
        return users

    def reconstruct(self, enc_in: Tensor, dec_in: Tensor, domain: int) -> Tensor:
        """The auto-encoder's decoder states ``(B, L, d)`` (``get_dec_out``)."""
        memory, blocked = self.window_memory(self.encode(enc_in, domain), enc_in, dec_in.shape[1])
        return self.decode(self.decoders[domain], memory, blocked, dec_in, domain)

    def recommend(self, enc_in: Tensor, dec_in: Tensor, domain: int, fixed_encoder: bool = True, user_view: str = "window") -> Tensor:
        """The recommender's states ``(B, L, d)`` (``recommend_forward``; ``fixed_encoder`` detaches the user representations).

        ``user_view="window"`` (official): every slot attends to the representation of the whole encoder window.
        ``"prefix"``: slot ``t`` attends only to the representation of the items up to ``dec_in[:, t]``."""
        if user_view == "window":
            memory, blocked = self.window_memory(self.encode(enc_in, domain), enc_in, dec_in.shape[1])
        elif user_view == "prefix":
            memory = self.prefix_users(dec_in, domain)
            L = dec_in.shape[1]
            blocked = ~torch.eye(L, dtype=torch.bool, device=dec_in.device)[None].expand(len(dec_in), -1, -1)
        else:
            raise ValueError(f"user_view must be 'window' or 'prefix', got {user_view!r}")
        return self.decode(self.recommenders[domain], memory.detach() if fixed_encoder else memory, blocked, dec_in, domain)

    def score(self, states: Tensor, items: Tensor, domain: int) -> Tensor:
        """``<state, E[item]>``: ``(B, L, d)`` states with ``(B, L)`` or ``(B, L, n)`` items -> scores of their shape."""
        embedded = self.item_embeddings[domain](items)
        return (states * embedded).sum(-1) if items.dim() == states.dim() - 1 else (states[..., None, :] * embedded).sum(-1)

    def item_table(self, domain: int) -> Tensor:
        """``(n + 1, d)`` embeddings of ids ``0..n`` (padding and items, not ``[EOS]``) for full ranking."""
        return self.item_embeddings[domain].weight[: self.num_items[domain] + 1]


def noam_factor(step: int, d_model: int, warmup_steps: int) -> float:
    """The official ``ScheduledOptim`` scale at optimizer step ``step`` (0-based): ``d^-0.5 min(n^-0.5, n w^-1.5)``, ``n = step + 1``."""
    n = step + 1
    return d_model**-0.5 * min(n**-0.5, n * warmup_steps**-1.5)


# ---------------------------------------------------------------------------------------------------- LightningModule
class RecGURUModule(L.LightningModule):
    """RecGURU on two domains of an :class:`~litzoo.datamodules.interactions.InteractionsDataModule`.

    Args:
        domain_pair: the two domains, "real" (first) and "fake" (second) for the critic (``None``: the DataModule's two).
        target: the domain recommended and evaluated (``None``: the DataModule's first evaluated domain).
        num_items: items of each of ``domain_pair`` (``None``: read at ``setup``; kept so a checkpoint rebuilds the network).
        pretrain_epochs, adversarial_epochs, finetune_epochs: the three stages' lengths.
        critic_iterations: critic updates per generator update (5).
        penalty_weight: the gradient penalty's lambda (0.1).
        adversarial_loss: ``"wgan"`` (the official ``train_gan_all``) or ``"bce"`` (the official ``train_gan``).
        discriminator: False is the ablation without the adversarial term.
        align_overlap: the L2 alignment of users in both domains.
        fixed_encoder: the recommender does not train the encoder (the official ``fix_enc``, default True).
        user_view: what the recommender's slot ``t`` reads of the user: ``"window"`` (official) the representation of the
            whole training window, which contains the items the slots are trained to predict; ``"prefix"`` the
            representation of the items up to slot ``t`` only, as at test time (see the module docstring).
        reconstruction_negatives: sampled-softmax negatives per slot (``n_negs`` 30).
        recommendation_negatives: BPR negatives per slot (``n_bpr_neg`` 5).
        popularity_negatives_share: the last share of the fine-tuning stage draws BPR negatives in proportion to
            training frequency^0.75 (2/3, the official switch); 0 keeps them uniform.
        warmup_steps: the Noam warm-up in optimizer steps (``None``: 150 epochs of batches, the official
            ``training_steps / 2`` with ``training_steps`` 300 epochs; the learning rate then rises linearly through
            the whole pre-training stage, to about 3e-4 after 10 epochs of 10 batches at ``d_model`` 32).
        generator_lr, critic_lr, finetune_lr: the stage optimizers' learning rates (1e-4, 1e-4, 1e-3).
        ks: cut-offs of HR@K and NDCG@K.
        full_ranking: also rank every item of the target domain at evaluation.
        **net_kwargs: :class:`RecGURU`'s architecture (``d_model`` ... ``max_positions``).
    """

    monitor = "val/sampled/ndcg@10"
    monitor_mode = "max"

    def __init__(
        self,
        domain_pair: Sequence[str] | None = None,
        target: str | None = None,
        num_items: Sequence[int] | None = None,
        pretrain_epochs: int = 20,
        adversarial_epochs: int = 20,
        finetune_epochs: int = 40,
        critic_iterations: int = 5,
        penalty_weight: float = 0.1,
        adversarial_loss: Literal["wgan", "bce"] = "wgan",
        discriminator: bool = True,
        align_overlap: bool = True,
        fixed_encoder: bool = True,
        user_view: Literal["window", "prefix"] = "window",
        reconstruction_negatives: int = 30,
        recommendation_negatives: int = 5,
        popularity_negatives_share: float = 2 / 3,
        warmup_steps: int | None = None,
        generator_lr: float = 1e-4,
        critic_lr: float = 1e-4,
        finetune_lr: float = 1e-3,
        ks: Sequence[int] = (10,),
        full_ranking: bool = True,
        **net_kwargs: Any,
    ) -> None:
        super().__init__()
        check_network_kwargs(RecGURU, net_kwargs, type(self).__name__, set_by_owner=("num_items",))
        if domain_pair is not None and (len(domain_pair) != 2 or len(set(domain_pair)) != 2):
            raise ValueError(f"domain_pair must name two different domains, got {domain_pair}")
        if min(pretrain_epochs, adversarial_epochs, finetune_epochs) < 0 or finetune_epochs < 1:
            raise ValueError("stage lengths must be >= 0 epochs, and finetune_epochs >= 1 (the recommender is trained there)")
        if critic_iterations < 1 or penalty_weight < 0 or reconstruction_negatives < 1 or recommendation_negatives < 1:
            raise ValueError("need critic_iterations >= 1, penalty_weight >= 0, reconstruction_negatives >= 1, recommendation_negatives >= 1")
        if user_view not in ("window", "prefix"):
            raise ValueError(f"user_view must be 'window' or 'prefix', got {user_view!r}")
        if adversarial_loss not in ("wgan", "bce"):
            raise ValueError(f"adversarial_loss must be 'wgan' or 'bce', got {adversarial_loss!r}")
        if not 0.0 <= popularity_negatives_share <= 1.0 or (warmup_steps is not None and warmup_steps < 1):
            raise ValueError("popularity_negatives_share must be in [0, 1] and warmup_steps >= 1")
        if min(generator_lr, critic_lr, finetune_lr) <= 0 or not ks or any(int(k) < 1 for k in ks):
            raise ValueError("learning rates must be positive and ks positive cut-offs")
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.net_kwargs = net_kwargs
        self.net: RecGURU | None = None
        self.critic: DomainDiscriminator | None = None
        if num_items is not None:
            self.build(num_items)
        ks = tuple(int(k) for k in ks)
        self.metrics = SplitRankingMetrics(ks, ("sampled", "full") if full_ranking else ("sampled",))
        for name in ("known_keys_real", "known_keys_fake", "other_history", "is_overlapping", "popularity"):
            self.register_buffer(name, torch.zeros(0), persistent=False)
        self.domain_ids: tuple[int, int] = (0, 1)  # the DataModule's ids of (real, fake)
        self.target_index = 1  # 0 or 1: which of the two domains is the target

    def build(self, num_items: Sequence[int]) -> None:
        self.net = RecGURU(list(num_items), **self.net_kwargs)
        if self.hparams.discriminator:
            self.critic = DomainDiscriminator(self.net.d_model)
        self.hparams["num_items"] = [int(n) for n in num_items]

    @property
    def datamodule(self) -> Any:
        return getattr(self.trainer, "datamodule", None) if self._trainer is not None else None

    @override
    def setup(self, stage: str) -> None:
        datamodule = self.datamodule
        if datamodule is None or not hasattr(datamodule, "known_items"):
            if self.net is None:
                raise LitzooError("RecGURUModule: set model.num_items, or train with an InteractionsDataModule")
            return
        names = list(datamodule.domain_names)
        domains = list(self.hparams.domain_pair or names)
        if len(domains) != 2 or any(d not in names for d in domains):
            raise LitzooError(f"RecGURUModule: needs two of the DataModule's domains {names}; got {domains} (set model.domain_pair)")
        evaluated = datamodule.hparams.eval_domains or names
        target = self.hparams.target or next((d for d in evaluated if d in domains), None)
        if target not in domains or target not in evaluated:
            raise LitzooError(f"RecGURUModule: target {target!r} must be one of {domains} and evaluated by the DataModule (eval_domains {evaluated})")
        self.domains, self.target = domains, target
        self.domain_ids = (names.index(domains[0]), names.index(domains[1]))
        self.target_index = domains.index(target)
        num_items = [datamodule.num_items(d) for d in domains]
        if self.net is None:
            self.build(num_items)
        elif self.net.num_items != num_items:
            raise LitzooError(f"RecGURUModule: the network has {self.net.num_items} items, domains {domains} of the DataModule have {num_items}")
        max_len = datamodule.hparams.max_len
        if max_len < 3 or max_len > self.net.max_positions:
            raise LitzooError(f"RecGURUModule: the DataModule's max_len {max_len} must be in 3..{self.net.max_positions} (model.max_positions)")
        self.known_keys_real = known_item_keys(datamodule.known_items(domains[0]), num_items[0])
        self.known_keys_fake = known_item_keys(datamodule.known_items(domains[1]), num_items[1])
        # the second domain's training window of every user (zeros where none): the other half of an alignment pair
        sequences = datamodule.train_sequences(domains[1])
        users = sorted(sequences)
        history = torch.zeros(datamodule.num_users + 1, max_len, dtype=torch.long)
        if users:
            history[users] = left_pad([sequences[u] for u in users], max_len)
        self.other_history = history
        self.is_overlapping = history.ne(0).any(1)
        pairs = datamodule.train_pairs(target)  # every training interaction, repeats included
        counts = torch.bincount(pairs[:, 1], minlength=num_items[self.target_index] + 1).double()
        self.popularity = counts.pow(0.75)  # the official item_fre ** 0.75 (normalising is multinomial's business)
        self.popularity[0] = 0.0

    @override
    def on_fit_start(self) -> None:
        wrapped = self.trainer.strategy.model
        if isinstance(wrapped, DistributedDataParallel) and not wrapped.find_unused_parameters:
            raise LitzooError("RecGURUModule under DDP needs strategy 'ddp_find_unused_parameters_true': each update steps a different "
                              "part (the critic, the auto-encoder, the target's recommender)")  # fmt: skip

    def forward(self, history: Tensor) -> Tensor:
        """``(B, L)`` left-padded target-domain histories -> ``(B, d)`` recommender states for the next item."""
        if self.net is None:
            raise RuntimeError("RecGURUModule has no network yet: pass num_items or run setup() with a DataModule")
        domain = self.target_index
        enc_in, dec_in = evaluation_windows(history, self.net.eos(domain))
        return self.net.recommend(enc_in, dec_in, domain, user_view=self.hparams.user_view)[:, -1]

    # ------------------------------------------------------------------ stages and optimizers
    def stage(self, epoch: int | None = None) -> str:
        """The stage of ``epoch`` (default: the current one): pretrain, adversarial, then finetune to the end."""
        epoch = self.current_epoch if epoch is None else epoch
        hp = self.hparams
        if epoch < hp.pretrain_epochs:
            return "pretrain"
        return "adversarial" if epoch < hp.pretrain_epochs + hp.adversarial_epochs else "finetune"

    def _warmup_steps(self) -> int:
        if self.hparams.warmup_steps is not None:
            return int(self.hparams.warmup_steps)
        batches = self.trainer.num_training_batches if self._trainer is not None else 1
        batches = batches if math.isfinite(batches) and batches > 0 else 1
        return max(1, OFFICIAL_WARMUP_EPOCHS * int(batches))

    @override
    def configure_optimizers(self):
        if self.net is None:
            raise RuntimeError("RecGURUModule has no network yet: pass num_items or run setup() with a DataModule")
        hp, d_model = self.hparams, self.net.d_model
        pretrain = Adam(self.net.parameters(), lr=1.0, betas=(0.9, 0.98), eps=1e-9)
        generator = Adam(self.net.parameters(), lr=hp.generator_lr, betas=(0.5, 0.9))
        finetune = Adam(self.net.parameters(), lr=hp.finetune_lr, betas=(0.9, 0.98))
        optimizers = [pretrain, generator, finetune]
        if self.critic is not None:
            optimizers.append(Adam(self.critic.parameters(), lr=hp.critic_lr, betas=(0.5, 0.9)))
        # the warm-up is read at each step: the number of batches per epoch is known only once the loaders exist
        noam = LambdaLR(pretrain, lambda step: noam_factor(step, d_model, self._warmup_steps()))
        return optimizers, [{"scheduler": noam, "interval": "step"}]

    # ------------------------------------------------------------------ the pieces of a batch
    def _rows(self, batch: dict[str, Tensor], which: int) -> tuple[Tensor, Tensor, int]:
        """``(items, users, rows)`` of the batch's rows of ``domains[which]``; with none, one all-padding row (its
        window is ``[0 .. 0, EOS]`` and it has no target slot), so every DDP rank runs the same graph."""
        keep = batch["domain"] == self.domain_ids[which]
        items, users = batch["items"][keep], batch["user"][keep]
        if not len(items):
            return torch.zeros_like(batch["items"][:1]), torch.zeros_like(batch["user"][:1]), 0
        return items, users, len(items)

    def _keys(self, which: int) -> Tensor:
        return self.known_keys_real if which == 0 else self.known_keys_fake

    def reconstruction_loss(self, items: Tensor, users: Tensor, which: int) -> tuple[Tensor, Tensor]:
        """The sampled-softmax reconstruction loss of ``(B, L)`` training windows of ``domains[which]`` and the users' representations."""
        net, n = self.net, self.hparams.reconstruction_negatives
        enc_in, dec_in, dec_out = training_windows(items, net.eos(which))
        user = net.encode(enc_in, which)
        states = net.decode(net.decoders[which], *net.window_memory(user, enc_in, dec_in.shape[1]), dec_in, which)
        negatives = sample_negatives_avoiding(dec_out[..., None].expand(-1, -1, n), users, self._keys(which), net.num_items[which])
        loss = sampled_softmax_loss(net.score(states, dec_out, which), net.score(states, negatives, which), dec_out != 0)
        return loss, user

    def recommendation_loss(self, items: Tensor, users: Tensor) -> Tensor:
        """The official BPR (mean negative score) of the target domain's recommender over ``(B, L)`` training windows."""
        net, which, n = self.net, self.target_index, self.hparams.recommendation_negatives
        enc_in, dec_in, dec_out = training_windows(items, net.eos(which))
        states = net.recommend(enc_in, dec_in, which, self.hparams.fixed_encoder, self.hparams.user_view)
        weights = self.popularity if self.popularity_negatives() else None
        negatives = sample_negatives_avoiding(dec_out[..., None].expand(-1, -1, n), users, self._keys(which), net.num_items[which], weights=weights)
        return mean_negative_bpr_loss(net.score(states, dec_out, which), net.score(states, negatives, which), dec_out != 0)

    def popularity_negatives(self, epoch: int | None = None) -> bool:
        """Whether ``epoch`` (default: the current one) draws BPR negatives by popularity^0.75 (the fine-tuning stage's last share)."""
        hp, epoch = self.hparams, self.current_epoch if epoch is None else epoch
        start = hp.pretrain_epochs + hp.adversarial_epochs + hp.finetune_epochs * (1.0 - hp.popularity_negatives_share)
        return hp.popularity_negatives_share > 0 and epoch >= math.ceil(start - 1e-9)

    def critic_loss(self, real: Tensor, fake: Tensor) -> tuple[Tensor, Tensor]:
        """The critic's loss on detached representations (with the gradient penalty) and the Wasserstein estimate."""
        d_real, d_fake = self.critic(real), self.critic(fake)
        if self.hparams.adversarial_loss == "wgan":
            loss = d_fake.mean() - d_real.mean()
        else:
            loss = F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake)) + F.binary_cross_entropy_with_logits(d_real, torch.ones_like(d_real))
        pairs = min(len(real), len(fake))
        loss = loss + gradient_penalty(self.critic, real[:pairs], fake[:pairs], self.hparams.penalty_weight)
        return loss, (d_real.mean() - d_fake.mean()).detach()

    def generator_adversarial_loss(self, real: Tensor, fake: Tensor) -> Tensor:
        """The flipped loss the encoder minimises: ``mean D(real) - mean D(fake)`` (WGAN) or the labels swapped (BCE)."""
        d_real, d_fake = self.critic(real), self.critic(fake)
        if self.hparams.adversarial_loss == "wgan":
            return d_real.mean() - d_fake.mean()
        return F.binary_cross_entropy_with_logits(d_fake, torch.ones_like(d_fake)) + F.binary_cross_entropy_with_logits(d_real, torch.zeros_like(d_real))

    def alignment_loss(self, user_real: Tensor, users: Tensor, rows: int) -> Tensor:
        """MSE between the first-domain representations of overlapping users and their second-domain ones."""
        overlapping = self.is_overlapping[users] & (rows > 0)
        if not overlapping.any():
            return user_real.sum() * 0.0  # keeps the graph identical on every rank
        other = self.other_history[users[overlapping]]
        user_fake = self.net.encode(encoder_window(other, self.net.eos(1)), 1)
        return F.mse_loss(user_real[overlapping], user_fake)

    # ------------------------------------------------------------------ training
    def _step(self, optimizer, loss: Tensor) -> None:
        if not torch.isfinite(loss):
            raise LitzooError(f"RecGURUModule: non-finite {self.stage()} loss {loss.item()} at epoch {self.current_epoch}")
        optimizer.zero_grad()
        self.manual_backward(loss)
        optimizer.step()

    @override
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        optimizers = self.optimizers()
        stage, log = self.stage(), {}
        (items_a, users_a, rows_a), (items_b, users_b, rows_b) = self._rows(batch, 0), self._rows(batch, 1)
        if stage == "pretrain":
            loss_a, _ = self.reconstruction_loss(items_a, users_a, 0)
            loss_b, _ = self.reconstruction_loss(items_b, users_b, 1)
            self._step(optimizers[0], loss_a + loss_b)
            self.lr_schedulers().step()
            log = {"reconstruction_real": loss_a, "reconstruction_fake": loss_b}
        elif stage == "adversarial":
            critic_turn = batch_idx % (self.hparams.critic_iterations + 1) < self.hparams.critic_iterations
            if critic_turn and self.critic is None:
                return  # the ablation: no critic, and the generator keeps the full model's number of updates
            if critic_turn:
                with torch.no_grad():
                    real = self.net.encode(encoder_window(items_a, self.net.eos(0)), 0)
                    fake = self.net.encode(encoder_window(items_b, self.net.eos(1)), 1)
                self.toggle_optimizer(optimizers[3])
                loss, wasserstein = self.critic_loss(real, fake)
                self._step(optimizers[3], loss)
                self.untoggle_optimizer(optimizers[3])
                log = {"critic_loss": loss, "wasserstein": wasserstein}
            else:
                self.toggle_optimizer(optimizers[1])
                loss_a, user_a = self.reconstruction_loss(items_a, users_a, 0)
                loss_b, user_b = self.reconstruction_loss(items_b, users_b, 1)
                loss = loss_a + loss_b
                log = {"reconstruction_real": loss_a, "reconstruction_fake": loss_b}
                if self.critic is not None:
                    adversarial = self.generator_adversarial_loss(user_a, user_b)
                    loss, log["generator_adversarial"] = loss + adversarial, adversarial
                if self.hparams.align_overlap:
                    alignment = self.alignment_loss(user_a, users_a, rows_a)
                    loss, log["alignment"] = loss + alignment, alignment
                self._step(optimizers[1], loss)
                self.untoggle_optimizer(optimizers[1])
        else:
            which = self.target_index
            items, users = (items_a, users_a) if which == 0 else (items_b, users_b)
            reconstruction, _ = self.reconstruction_loss(items, users, which)
            recommendation = self.recommendation_loss(items, users)
            self._step(optimizers[2], reconstruction + recommendation)
            log = {"reconstruction_target": reconstruction, "bpr": recommendation}
        size = max(rows_a + rows_b, 1)
        for name, value in log.items():
            self.log(f"train/{name}", value.detach(), batch_size=size, prog_bar=name in ("bpr", "wasserstein"))
        self.log("train/stage", float(STAGES.index(stage)), batch_size=size)

    # ------------------------------------------------------------------ evaluation
    def ranks(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """``{"sampled", "full"?, "sparse"}`` for the batch's target-domain rows (1-based ranks of the held-out items)."""
        keep = batch["domain"] == self.domain_ids[self.target_index]
        seq, target = batch["seq"][keep], batch["target"][keep]
        out = {"sparse": batch["sparse"][keep]}
        if not len(seq):
            return out
        state = self(seq)
        which = self.target_index
        scores = (state[:, None, :] * self.net.item_embeddings[which](batch["candidates"][keep])).sum(-1)
        if not torch.isfinite(scores).all():
            raise LitzooError("RecGURUModule: non-finite candidate scores")
        out["sampled"] = sampled_ranks(scores)
        if self.hparams.full_ranking:
            exclude = self.datamodule.exclusion_mask(self.target, batch["user"][keep].cpu(), target.cpu()).to(self.device)
            out["full"] = full_ranks(state @ self.net.item_table(which).t(), target, exclude)
        return out

    def _eval_step(self, split: str, batch: dict[str, Tensor]) -> None:
        ranks = self.ranks(batch)
        for kind in self.metrics.kinds:
            if kind in ranks:
                self.metrics.update(split, kind, ranks[kind], ranks["sparse"])

    @override
    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._eval_step("val", batch)

    @override
    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._eval_step("test", batch)

    def _log_metrics(self, split: str) -> None:
        for name, value in self.metrics.compute(split).items():  # the same names on every rank (synchronised, NaN left out)
            self.log(name, value, prog_bar=name == f"{split}/sampled/ndcg@10")

    @override
    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")

    @override
    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")


__all__ = [
    "DomainDiscriminator",
    "RecGURU",
    "RecGURUModule",
    "evaluation_windows",
    "gradient_penalty",
    "mean_negative_bpr_loss",
    "noam_factor",
    "sampled_softmax_loss",
    "training_windows",
]
