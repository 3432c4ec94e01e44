"""Class-based TF-IDF and disjoint group keywords: a hand computation, and a planted toy corpus whose topic words
must come back (negative control: shuffled labels lose them)."""

from __future__ import annotations

import math

import pytest
import torch

from litzoo.framework.text.keywords import class_tfidf, group_keywords, group_word_counts


def test_counts_skip_specials_padding_and_unlabelled_rows():
    tokens = torch.tensor([[3, 3, 4, 0], [2, 5, 5, 0], [6, 6, 6, 6]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    counts = group_word_counts(tokens, mask, torch.tensor([0, 1, -1]), 2, 7, first_word_id=3)
    expected = torch.zeros(2, 7, dtype=torch.float64)
    expected[0, 3], expected[0, 4], expected[1, 5] = 2, 1, 2  # id 2 ([MASK]) and the unlabelled row are not counted
    assert torch.equal(counts, expected)
    with pytest.raises(ValueError):
        group_word_counts(tokens, mask, torch.tensor([0, 2, -1]), 2, 7)


def test_class_tfidf_by_hand():
    counts = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 3.0]])
    a = 7 / 2  # average words per group
    expected = torch.tensor([[2 / 3 * math.log(1 + a / 2), 1 / 3 * math.log(1 + a / 2), 0.0], [0.0, 1 / 4 * math.log(1 + a / 2), 3 / 4 * math.log(1 + a / 3)]])
    assert torch.allclose(class_tfidf(counts), expected.double(), atol=1e-12)


def test_keywords_are_disjoint_ranked_and_padded():
    weights = torch.tensor([[0.9, 0.5, 0.5, 0.0, 0.2], [0.1, 0.6, 0.4, 0.0, 0.2]], dtype=torch.float64)
    # word 1 goes to group 1 (0.6 > 0.5); word 4 ties and goes to group 0; word 3 has no weight anywhere
    assert group_keywords(weights, 3).tolist() == [[0, 2, 4], [1, -1, -1]]
    assert group_keywords(weights, 9).shape == (2, 9)


def test_planted_topic_words_come_back_and_shuffled_labels_lose_them():
    generator = torch.Generator().manual_seed(0)
    topics = [list(range(3, 8)), list(range(8, 13)), list(range(13, 18))]  # 5 planted words per topic
    shared = list(range(18, 22))  # function words every topic uses
    rows, labels = [], []
    for topic, words in enumerate(topics):
        for _ in range(30):
            content = [words[int(i)] for i in torch.randint(0, 2, (4,), generator=generator)]  # the topic's two top words
            content += [words[int(i)] for i in torch.randint(2, 5, (1,), generator=generator)]
            rows.append(content + [shared[int(i)] for i in torch.randint(0, 4, (3,), generator=generator)])
            labels.append(topic)
    tokens, mask, labels = torch.tensor(rows), torch.ones(len(rows), 8, dtype=torch.bool), torch.tensor(labels)
    keywords = group_keywords(class_tfidf(group_word_counts(tokens, mask, labels, 3, 22, first_word_id=3)), 2)
    for topic, words in enumerate(topics):
        assert sorted(keywords[topic].tolist()) == words[:2]
    shuffled = labels[torch.randperm(len(labels), generator=generator)]
    lost = group_keywords(class_tfidf(group_word_counts(tokens, mask, shuffled, 3, 22, first_word_id=3)), 2)
    assert any(sorted(lost[t].tolist()) != topics[t][:2] for t in range(3))
