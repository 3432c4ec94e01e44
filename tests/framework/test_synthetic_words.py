import numpy as np

from litzoo.framework.text.synthetic_words import SYLLABLES, pseudo_words


def test_pseudo_words_are_new_disjoint_and_seeded():
    seen = {"the", "of"}
    rng = np.random.default_rng(0)
    first = pseudo_words(rng, 50, seen)
    second = pseudo_words(rng, 50, seen)
    assert len(set(first)) == 50 and not set(first) & set(second)  # successive pools are disjoint
    assert {"the", "of"} | set(first) | set(second) == seen
    for word in first + second:
        assert len(word) in (4, 6) and all(word[i : i + 2] in SYLLABLES for i in range(0, len(word), 2))
    assert pseudo_words(np.random.default_rng(0), 50, {"the", "of"}) == first
