"""A linear-chain conditional random field over per-token emission scores: the flat BIO-CRF tagger head.

Lafferty, McCallum & Pereira, "Conditional Random Fields", ICML 2001; as a neural tagger head, Lample et al.,
"Neural Architectures for Named Entity Recognition", NAACL 2016 (a BiLSTM gives emissions, the CRF adds tag-to-tag
transitions). Written once in the core as the flat baseline of Mulco (Yang et al., CIKM 2023, arXiv 2211.10854), which
compares its multi-scope nested tagger against a BIO-CRF that cannot emit overlapping spans.

Parameterisation as in pytorch-crf (kmkurn/pytorch-crf ``torchcrf/__init__.py``, read at 623e340) and AllenNLP's
``ConditionalRandomField``: ``transitions[i, j]`` scores tag ``i`` followed by tag ``j``, ``start_transitions[j]`` a
sequence starting with ``j``, ``end_transitions[i]`` one ending with ``i``; all three initialised uniform in
``[-0.1, 0.1]`` (pytorch-crf). The score of tags ``y`` over a sequence of length ``n`` is
``start[y_0] + sum_t emissions[t, y_t] + sum_{t>0} transitions[y_{t-1}, y_t] + end[y_{n-1}]``, and
``log Z = logsumexp`` of that over every tag sequence of length ``n`` (forward algorithm in log space).
Verified in ``tests/framework/test_crf.py`` against brute-force enumeration of every tag sequence (partition function,
gold-path probability, Viterbi argmax, with padding and under BIO constraints).

Choices where the references differ or are silent:
- Batch-first ``(B, L, T)`` emissions and ``(B, L)`` masks, left-aligned (padding at the end); every sequence has at
  least one token (``ValueError`` otherwise, as pytorch-crf requires ``mask[:, 0]`` on).
- Allowed-transition constraints (e.g. BIO: ``I-X`` only after ``B-X`` / ``I-X``, never first) are applied in the
  partition function *and* in Viterbi by setting forbidden scores to ``-inf``: the model is then a distribution over
  valid sequences only, so the likelihood is exact against brute force over valid sequences. AllenNLP applies its
  constraint mask only when decoding (and with ``-10000`` rather than ``-inf``); we normalise over what can be emitted.
  A gold path that the constraints forbid would have probability 0 (an infinite loss), so :meth:`nll` refuses it.
- The recursions run in float32 at least (emissions in half precision under autocast are upcast) because a
  ``logsumexp`` accumulated over a sequence loses too much in 16 bits.
- ``nll`` reductions as pytorch-crf's (``none`` / ``sum`` / ``mean`` over sequences / ``token_mean``), returning the
  *negative* log-likelihood so that it is a loss; ``forward`` is ``nll`` with ``reduction="mean"``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["LinearChainCRF", "bio_allowed_transitions"]

_REDUCTIONS = ("none", "sum", "mean", "token_mean")


def _parse_bio(name: str) -> tuple[str, str | None]:
    """``"O"`` -> ``("O", None)``; ``"B-PER"`` -> ``("B", "PER")``; anything else is a ``ValueError``."""
    if name == "O":
        return "O", None
    prefix, sep, entity_type = name.partition("-")
    if not sep or prefix not in ("B", "I") or not entity_type:
        raise ValueError(f"tag name {name!r} is not 'O', 'B-<type>' or 'I-<type>'")
    return prefix, entity_type


def bio_allowed_transitions(tag_names: Sequence[str]) -> tuple[Tensor, Tensor, Tensor]:
    """The BIO constraints over ``tag_names`` (``"O"``, ``"B-X"``, ``"I-X"``) as boolean masks.

    Returns ``(transitions (T, T), start (T,), end (T,))``: ``transitions[i, j]`` is True when tag ``j`` may follow
    tag ``i``. ``I-X`` may only follow ``B-X`` or ``I-X`` and never start a sequence; every other transition, and
    ending on any tag, is allowed (as AllenNLP's ``allowed_transitions(constraint_type="BIO")``).
    """
    parsed = [_parse_bio(name) for name in tag_names]
    if len(set(tag_names)) != len(tag_names):
        raise ValueError(f"tag names must be unique, got {list(tag_names)}")
    num_tags = len(parsed)
    transitions = torch.ones(num_tags, num_tags, dtype=torch.bool)
    start = torch.ones(num_tags, dtype=torch.bool)
    for j, (prefix_j, type_j) in enumerate(parsed):
        if prefix_j != "I":
            continue
        start[j] = False
        for i, (prefix_i, type_i) in enumerate(parsed):
            transitions[i, j] = prefix_i in ("B", "I") and type_i == type_j
    return transitions, start, torch.ones(num_tags, dtype=torch.bool)


class LinearChainCRF(nn.Module):
    """Linear-chain CRF with learned transition, start and end scores; optional allowed-transition constraints.

    Args:
        num_tags: number of tags ``T`` (>= 1).
        allowed_transitions: optional ``(T, T)`` boolean mask, True where tag ``j`` may follow tag ``i``.
        allowed_start: optional ``(T,)`` boolean mask of the tags a sequence may start with (all when omitted).
        allowed_end: optional ``(T,)`` boolean mask of the tags a sequence may end with (all when omitted).
            The three masks together must admit a tag sequence of every length (``ValueError`` otherwise).

    Use :meth:`from_bio` to build a constrained CRF from BIO tag names.
    """

    def __init__(
        self,
        num_tags: int,
        allowed_transitions: Tensor | None = None,
        allowed_start: Tensor | None = None,
        allowed_end: Tensor | None = None,
    ) -> None:
        super().__init__()
        if int(num_tags) < 1:
            raise ValueError(f"num_tags must be >= 1, got {num_tags}")
        self.num_tags = int(num_tags)
        self.transitions = nn.Parameter(torch.empty(self.num_tags, self.num_tags))
        self.start_transitions = nn.Parameter(torch.empty(self.num_tags))
        self.end_transitions = nn.Parameter(torch.empty(self.num_tags))
        self.constrained = any(m is not None for m in (allowed_transitions, allowed_start, allowed_end))
        masks = {
            "allowed_transitions": (allowed_transitions, (self.num_tags, self.num_tags)),
            "allowed_start": (allowed_start, (self.num_tags,)),
            "allowed_end": (allowed_end, (self.num_tags,)),
        }
        for name, (mask, shape) in masks.items():
            if mask is None:
                mask = torch.ones(shape, dtype=torch.bool)
            mask = torch.as_tensor(mask)
            if tuple(mask.shape) != shape or mask.dtype != torch.bool:
                raise ValueError(f"{name} must be a bool tensor of shape {shape}, got {mask.dtype} {tuple(mask.shape)}")
            # buffers, so the constraints move with .to(device) and are saved in checkpoints
            self.register_buffer(name, mask.clone())
        self._check_every_length_possible()
        self.reset_parameters()

    @classmethod
    def from_bio(cls, tag_names: Sequence[str]) -> LinearChainCRF:
        """A CRF over ``tag_names`` constrained to valid BIO sequences (see :func:`bio_allowed_transitions`)."""
        transitions, start, end = bio_allowed_transitions(tag_names)
        return cls(len(tag_names), allowed_transitions=transitions, allowed_start=start, allowed_end=end)

    def reset_parameters(self) -> None:
        """Uniform in ``[-0.1, 0.1]`` (pytorch-crf's initialisation)."""
        for parameter in (self.transitions, self.start_transitions, self.end_transitions):
            nn.init.uniform_(parameter, -0.1, 0.1)

    def extra_repr(self) -> str:
        return f"num_tags={self.num_tags}, constrained={self.constrained}"

    def _check_every_length_possible(self) -> None:
        # The set of tags reachable at position t evolves deterministically, so it is eventually periodic: follow it
        # until a set repeats. A length whose reachable set meets no allowed end tag would give log Z = -inf (NaN loss).
        succ = self.allowed_transitions
        reachable = self.allowed_start.clone()
        seen: set[bytes] = set()
        length = 1
        while True:
            if not (reachable & self.allowed_end).any():
                raise ValueError(f"the allowed transitions admit no tag sequence of length {length}")
            key = bytes(reachable.to(torch.uint8).tolist())
            if key in seen:
                return
            seen.add(key)
            reachable = (reachable[:, None] & succ).any(0)
            length += 1

    # ---------------------------------------------------------------------------------------------------------------
    def _scores(self, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
        """Transition, start and end scores with forbidden entries at ``-inf``."""
        transitions, start, end = (p.to(dtype) for p in (self.transitions, self.start_transitions, self.end_transitions))
        if self.constrained:
            transitions = transitions.masked_fill(~self.allowed_transitions, float("-inf"))
            start = start.masked_fill(~self.allowed_start, float("-inf"))
            end = end.masked_fill(~self.allowed_end, float("-inf"))
        return transitions, start, end

    def _check(self, emissions: Tensor, mask: Tensor | None, tags: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if emissions.dim() != 3 or emissions.shape[2] != self.num_tags:
            raise ValueError(f"emissions must be (B, L, {self.num_tags}), got {tuple(emissions.shape)}")
        batch, length = emissions.shape[:2]
        if batch == 0 or length == 0:
            raise ValueError(f"emissions must hold at least one sequence of at least one token, got {tuple(emissions.shape)}")
        if mask is None:
            mask = torch.ones(batch, length, dtype=torch.bool, device=emissions.device)
        if tuple(mask.shape) != (batch, length):
            raise ValueError(f"mask must be {(batch, length)}, got {tuple(mask.shape)}")
        mask = mask.to(torch.bool)
        if not mask[:, 0].all():
            raise ValueError("every sequence must have at least one token (mask[:, 0] must be all True)")
        if length > 1 and (mask[:, 1:] & ~mask[:, :-1]).any():
            raise ValueError("masks must be left-aligned: padding only at the end of a sequence")
        # Upcast: half-precision logsumexp over a sequence is too coarse (see the module docstring).
        dtype = torch.promote_types(emissions.dtype, torch.float32)
        emissions = emissions.to(dtype)
        if tags is not None:
            if tuple(tags.shape) != (batch, length):
                raise ValueError(f"tags must be {(batch, length)}, got {tuple(tags.shape)}")
            valid = tags[mask]
            if valid.numel() and (valid.min() < 0 or valid.max() >= self.num_tags):
                raise ValueError(f"tags must lie in [0, {self.num_tags}) on unmasked positions")
        return emissions, mask

    def log_partition(self, emissions: Tensor, mask: Tensor | None = None) -> Tensor:
        """``log Z`` per sequence ``(B,)`` by the forward algorithm; ``emissions (B, L, T)``, ``mask (B, L)`` bool."""
        emissions, mask = self._check(emissions, mask)
        transitions, start, end = self._scores(emissions.dtype)
        # alpha[b, j]: log-sum of the scores of every prefix ending in tag j at the current position
        alpha = start + emissions[:, 0]
        for t in range(1, emissions.shape[1]):
            step = torch.logsumexp(alpha[:, :, None] + transitions[None], dim=1) + emissions[:, t]
            # a finished (padded) sequence keeps its alpha, so the end scores apply at its own last token
            alpha = torch.where(mask[:, t, None], step, alpha)
        return torch.logsumexp(alpha + end, dim=1)

    def score(self, emissions: Tensor, tags: Tensor, mask: Tensor | None = None) -> Tensor:
        """Unnormalised log-score of ``tags (B, L)`` per sequence ``(B,)`` (``-inf`` for a forbidden path)."""
        emissions, mask = self._check(emissions, mask, tags)
        transitions, start, end = self._scores(emissions.dtype)
        tags = tags.long().masked_fill(~mask, 0)  # padded positions index a valid tag; their terms are masked out
        emitted = emissions.gather(2, tags[:, :, None]).squeeze(2)
        total = start[tags[:, 0]] + emitted[:, 0]
        if emissions.shape[1] > 1:
            steps = transitions[tags[:, :-1], tags[:, 1:]] + emitted[:, 1:]
            # where() rather than a product: -inf * 0 would be NaN on a padded forbidden pair
            total = total + torch.where(mask[:, 1:], steps, torch.zeros_like(steps)).sum(1)
        last = mask.long().sum(1) - 1
        return total + end[tags.gather(1, last[:, None]).squeeze(1)]

    def nll(self, emissions: Tensor, tags: Tensor, mask: Tensor | None = None, reduction: str = "mean") -> Tensor:
        """Negative log-likelihood ``log Z - score(tags)``.

        Args:
            emissions: ``(B, L, T)`` emission scores.
            tags: ``(B, L)`` gold tag ids (ignored where ``mask`` is False).
            mask: ``(B, L)`` bool, left-aligned; all True when omitted.
            reduction: ``"none"`` (``(B,)``), ``"sum"``, ``"mean"`` (over sequences) or ``"token_mean"`` (over tokens).
        """
        if reduction not in _REDUCTIONS:
            raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
        gold = self.score(emissions, tags, mask)
        if self.constrained and torch.isinf(gold).any():
            raise ValueError("a gold tag sequence violates the allowed transitions (its probability is 0)")
        losses = self.log_partition(emissions, mask) - gold
        if not torch.isfinite(losses).all():
            raise ValueError("the CRF negative log-likelihood is not finite (non-finite emissions or transition scores)")
        if reduction == "none":
            return losses
        if reduction == "sum":
            return losses.sum()
        if reduction == "mean":
            return losses.mean()
        num_tokens = losses.new_tensor(float(emissions.shape[0] * emissions.shape[1])) if mask is None else mask.sum()
        return losses.sum() / num_tokens

    def forward(self, emissions: Tensor, tags: Tensor, mask: Tensor | None = None) -> Tensor:
        """The mean negative log-likelihood over sequences (the training loss)."""
        return self.nll(emissions, tags, mask, reduction="mean")

    @torch.no_grad()
    def viterbi(self, emissions: Tensor, mask: Tensor | None = None) -> list[list[int]]:
        """The highest-scoring tag sequence of each row, as lists of tag ids of each sequence's own length."""
        emissions, mask = self._check(emissions, mask)
        transitions, start, end = self._scores(emissions.dtype)
        best = start + emissions[:, 0]
        backpointers = []
        for t in range(1, emissions.shape[1]):
            candidates = best[:, :, None] + transitions[None]
            step, previous = candidates.max(dim=1)
            best = torch.where(mask[:, t, None], step + emissions[:, t], best)
            backpointers.append(previous)
        last_tags = (best + end).argmax(dim=1).tolist()
        lengths = mask.long().sum(1).tolist()
        history = torch.stack(backpointers, dim=1).tolist() if backpointers else []  # (B, L-1, T)
        paths = []
        for b, (length, tag) in enumerate(zip(lengths, last_tags, strict=True)):
            path = [tag]
            # backpointers[t-1][j] is the best previous tag of tag j at position t; follow them from the last real token
            for t in range(length - 1, 0, -1):
                tag = history[b][t - 1][tag]
                path.append(tag)
            paths.append(path[::-1])
        return paths
