"""Pseudo-words for the SYNTHETIC text generators: 2-3 random consonant-vowel syllables ("bako", "tenusi").

The planted corpora of the language wing (short-text topics, implicit / explicit hate posts, drifting stations) draw
their vocabularies here, so that every planted role (a topic's word, a trigger, a station's context word) is a word that
exists nowhere else and tokenises to one id.
"""

from __future__ import annotations

import numpy as np

__all__ = ["SYLLABLES", "pseudo_words"]

SYLLABLES = tuple(c + v for c in "bdfgklmnprstvz" for v in "aeiou")


def pseudo_words(rng: np.random.Generator, count: int, seen: set[str]) -> list[str]:
    """``count`` new pseudo-words, none in ``seen``; each is added to ``seen``, so successive pools are disjoint."""
    words: list[str] = []
    while len(words) < count:
        word = "".join(SYLLABLES[i] for i in rng.integers(0, len(SYLLABLES), size=int(rng.integers(2, 4))))
        if word not in seen:  # disjoint pools: a word's role is unambiguous
            seen.add(word)
            words.append(word)
    return words
