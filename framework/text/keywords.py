"""Keywords of groups of texts: class-based TF-IDF over token ids, and disjoint top-word lists per group.

Class-based TF-IDF (c-TF-IDF) is BERTopic's topic-word weight (Grootendorst, "BERTopic: Neural topic modeling with a
class-based TF-IDF procedure", arXiv 2203.05794, eq. 1; ``bertopic/vectorizers/_ctfidf.py``): all texts of a group are
joined into one document, and word ``w`` of group ``c`` weighs

    W(w, c) = tf(w, c) · log(1 + A / f(w)),

``tf(w, c)`` the count of ``w`` in group ``c`` divided by the group's word count (L1-normalised rows, BERTopic's
default), ``f(w)`` the count of ``w`` over all groups and ``A`` the average word count per group. Used by CEIL
(``modules/ceil.py``) to pick the label words of each cluster for its verbalizer; any method naming topics or clusters
can use it.

:func:`group_keywords` gives each word to **one** group only (the group where its weight is highest; a tie goes to the
lower group id), then takes each group's highest-weighted words (ties: the lower word id), so that the lists are
disjoint — a verbalizer whose label words are shared between classes could not separate them. Special tokens (ids
below ``first_word_id``) and rows labelled ``-1`` (unlabelled / filtered out) are ignored.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["class_tfidf", "group_keywords", "group_word_counts"]


def group_word_counts(tokens: Tensor, mask: Tensor, labels: Tensor, num_groups: int, vocab_size: int, first_word_id: int = 0) -> Tensor:
    """``(num_groups, vocab_size)`` float64 counts of each word id in the real tokens of each group's rows.

    Rows with label ``-1`` are skipped; ids below ``first_word_id`` (special tokens) are never counted.
    """
    if tokens.dim() != 2 or tuple(mask.shape) != tuple(tokens.shape) or tuple(labels.shape) != (tokens.shape[0],):
        raise ValueError(f"need tokens (N, L), mask (N, L), labels (N,), got {tuple(tokens.shape)}, {tuple(mask.shape)}, {tuple(labels.shape)}")
    if num_groups < 1 or not 0 <= first_word_id < vocab_size:
        raise ValueError(f"need num_groups >= 1 and 0 <= first_word_id < vocab_size, got {num_groups}, {first_word_id}, {vocab_size}")
    if labels.numel() and (int(labels.min()) < -1 or int(labels.max()) >= num_groups):
        raise ValueError(f"labels must be in [-1, {num_groups}), got values in [{int(labels.min())}, {int(labels.max())}]")
    if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= vocab_size):
        raise ValueError(f"token ids must be in [0, {vocab_size})")
    counted = mask.bool() & (tokens >= first_word_id) & (labels[:, None] >= 0)
    flat = labels[:, None].expand_as(tokens)[counted] * vocab_size + tokens[counted]
    return torch.bincount(flat.long(), minlength=num_groups * vocab_size).reshape(num_groups, vocab_size).double()


def class_tfidf(counts: Tensor) -> Tensor:
    """BERTopic's c-TF-IDF of ``(G, V)`` per-group word counts → ``(G, V)`` float64 weights (0 for unseen words).

    A group without any word gets a row of zeros.
    """
    if counts.dim() != 2 or (counts < 0).any():
        raise ValueError("counts must be a (G, V) tensor of non-negative counts")
    counts = counts.double()
    group_totals = counts.sum(1, keepdim=True)
    tf = counts / group_totals.clamp_min(1.0)
    word_totals = counts.sum(0)
    average_words = group_totals.sum() / counts.shape[0]  # A: average word count per group
    idf = torch.where(word_totals > 0, torch.log1p(average_words / word_totals.clamp_min(1.0)), torch.zeros_like(word_totals))
    return tf * idf


def group_keywords(weights: Tensor, words_per_group: int) -> Tensor:
    """``(G, words_per_group)`` long ids: each group's top words by ``weights`` ``(G, V)``, disjoint across groups.

    A word goes to the group where its weight is highest (a tie to the lower group id); only words of positive weight
    count; a group with fewer such words is padded with ``-1``.
    """
    if weights.dim() != 2:
        raise ValueError(f"weights must be (G, V), got {tuple(weights.shape)}")
    if words_per_group < 1:
        raise ValueError(f"words_per_group must be positive, got {words_per_group}")
    groups, vocab = weights.shape
    owner = weights.argmax(0)  # first maximum: the lower group id on ties
    owned = (owner[None, :] == torch.arange(groups)[:, None]) & (weights > 0)
    scores = torch.where(owned, weights.double(), torch.full_like(weights, -1.0, dtype=torch.float64))
    # stable sort of the negated scores: equal weights keep increasing word ids
    order = torch.sort(-scores, dim=1, stable=True).indices[:, :words_per_group]
    chosen = torch.gather(scores, 1, order) > 0
    keywords = torch.where(chosen, order, torch.full_like(order, -1))
    if keywords.shape[1] < words_per_group:  # fewer words in the vocabulary than asked
        keywords = torch.cat([keywords, torch.full((groups, words_per_group - vocab), -1, dtype=torch.long)], dim=1)
    return keywords
