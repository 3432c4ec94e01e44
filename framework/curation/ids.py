"""Hashes of sample ids: the randomness of curation that depends on nothing but an id.

A curated set must not depend on how the pool is sharded, on the number of workers or on the order the shards are
read in, so a decision drawn "at random" for a sample (MetaCLIP's balancing coins, text-quality's tie-break) is a
hash of the sample's id under a key derived from the seed, the same on every platform and in every process.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np


def id_hashes(ids: Sequence[str], key: bytes, what: str = "sample") -> np.ndarray:
    """A uint64 per id: the first 8 bytes (little-endian) of BLAKE2b of the id's UTF-8, keyed by ``key`` (≤ 64 bytes).

    Raises:
        ValueError: ``ids`` is one string rather than a sequence of them, or an id is not a string (``what`` names them).
    """
    if isinstance(ids, str):
        raise ValueError(f"{what} ids must be a sequence of strings, not one string")
    bad = next((i for i in ids if not isinstance(i, str)), None)
    if bad is not None:
        raise ValueError(f"{what} ids must be strings, got {type(bad).__name__} {bad!r}")
    digests = b"".join(hashlib.blake2b(i.encode("utf-8", "surrogatepass"), digest_size=8, key=key).digest() for i in ids)
    return np.frombuffer(digests, dtype="<u8").astype(np.uint64)
