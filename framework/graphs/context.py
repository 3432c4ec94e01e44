"""Relational context (sampled neighbour edges, hop by hop) and cached relation-path tables of knowledge-graph triples.

PathCon (Wang, Ren, Leskovec, KDD 2021; official code hwwang55/PathCon ``src/data_loader.py:build_kg``,
``src/model.py:_get_neighbors_and_masks``). Verified against that code: every training triple is an *edge* (its id is
its row in ``train``), attached to both of its entities; each entity keeps ``neighbor_samples`` of its edges, drawn once,
without replacement when it has enough and with replacement otherwise; an entity without edges gets the *null edge*
(id ``N``) whose two endpoints are the *null entity* (id ``E``) and whose relation is the *null relation* (id ``R``).
Hop 1 of a pair ``(h, t)`` is the ``2 * S`` sampled edges of h then t; hop ``j + 1`` the sampled edges of both endpoints
of every hop-``j`` edge, so hop ``j`` holds ``(2 S)^j`` edge ids in the order (edge, endpoint, sample) that the
aggregators reshape. Chosen: the draw uses a seeded ``torch.Generator`` (PathCon's ``np.random`` is unseeded).

:func:`cached_relation_paths` runs :func:`litzoo.framework.graphs.relation_paths` once per data set and keeps the result
in a ``.pt`` file (tensors only, loads with ``weights_only=True``) named by a hash of the data files and the options,
written to a temporary file and renamed; PathCon caches ``cache/<split>_paths_<L>.pkl`` keyed by the length alone, which
goes stale when the files change.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from litzoo.framework.data.staging import write_files_atomically
from litzoo.framework.errors import LitzooError
from litzoo.framework.graphs.paths import relation_paths

CACHE_VERSION = 1


def sample_entity_edges(
    graph: Tensor, num_entities: int, num_relations: int, neighbor_samples: int, generator: torch.Generator | None = None
):
    """PathCon's ``entity2edges``, ``edge2entities``, ``edge2relation`` of the ``(N, 3)`` training edges.

    Returns:
        ``entity2edges`` ``(E + 1, S)`` sampled edge ids per entity (the null entity last), ``edge2entities`` ``(N + 1, 2)``
        and ``edge2relation`` ``(N + 1,)`` (the null edge last, between null entities, of the null relation ``R``).
    """
    if neighbor_samples < 1:
        raise ValueError(f"neighbor_samples must be >= 1, got {neighbor_samples}")
    n = len(graph)
    incident: list[list[int]] = [[] for _ in range(num_entities + 1)]
    for edge, (head, _, tail) in enumerate(graph.tolist()):
        incident[head].append(edge)
        if tail != head:  # PathCon keeps edge sets: a self-loop is one incident edge
            incident[tail].append(edge)
    rows = []
    for edges in incident:
        pool = torch.tensor(edges or [n], dtype=torch.long)
        if len(pool) >= neighbor_samples:
            pick = torch.randperm(len(pool), generator=generator)[:neighbor_samples]
        else:
            pick = torch.randint(len(pool), (neighbor_samples,), generator=generator)
        rows.append(pool[pick])
    edge2entities = torch.cat([graph[:, [0, 2]], torch.tensor([[num_entities, num_entities]])]).long()
    edge2relation = torch.cat([graph[:, 1], torch.tensor([num_relations])]).long()
    return torch.stack(rows), edge2entities, edge2relation


def context_edges(pairs: Tensor, entity2edges: Tensor, edge2entities: Tensor, hops: int) -> list[Tensor]:
    """The sampled edge ids of hops ``1..hops`` around each ``(B, 2)`` entity pair: ``(B, (2 S)^j)`` for hop ``j``."""
    out = []
    entities = pairs
    for _ in range(hops):
        edges = entity2edges[entities].reshape(len(pairs), -1)
        out.append(edges)
        entities = edge2entities[edges].reshape(len(pairs), -1)
    return out


def triple_keys(triples: Tensor, num_entities: int, num_relations: int) -> Tensor:
    """One int64 per ``(h, r, t)``: ``(h * R + r) * E + t`` (sortable, for look-ups with ``searchsorted``)."""
    return (triples[:, 0] * num_relations + triples[:, 1]) * num_entities + triples[:, 2]


def files_digest(paths: Sequence[str | Path], options: dict) -> str:
    """sha256 of the files' bytes (missing files count as absent) and of the options, 16 hex digits."""
    digest = hashlib.sha256(repr((CACHE_VERSION, sorted(options.items()))).encode())
    for path in paths:
        path = Path(path)
        digest.update(path.name.encode())
        if path.is_file():
            digest.update(path.read_bytes())
        else:
            digest.update(b"<absent>")
    return digest.hexdigest()[:16]


def paths_to_tensors(path_sets: list[set[tuple[int, ...]]], max_path_len: int, pad: int) -> dict[str, Tensor]:
    """A path vocabulary and a CSR bag of path ids: ``vocab`` ``(P, L)`` padded with ``pad``, ``lengths`` ``(P,)``,
    ``offsets`` ``(Q + 1,)``, ``ids`` (sorted path ids of query ``q`` at ``ids[offsets[q]:offsets[q + 1]]``).
    Paths are numbered in sorted (length, relations) order, so the vocabulary does not depend on set iteration order."""
    vocabulary = sorted(set().union(*path_sets) if path_sets else set(), key=lambda p: (len(p), p))
    index = {path: i for i, path in enumerate(vocabulary)}
    vocab = torch.full((len(vocabulary), max_path_len), pad, dtype=torch.long)
    for i, path in enumerate(vocabulary):
        vocab[i, : len(path)] = torch.tensor(path, dtype=torch.long)
    lengths = torch.tensor([len(p) for p in vocabulary], dtype=torch.long)
    ids = [sorted(index[p] for p in paths) for paths in path_sets]
    offsets = torch.zeros(len(ids) + 1, dtype=torch.long)
    offsets[1:] = torch.cumsum(torch.tensor([len(i) for i in ids], dtype=torch.long), 0)
    flat = torch.tensor([j for row in ids for j in row], dtype=torch.long)
    return {"vocab": vocab, "lengths": lengths, "offsets": offsets, "ids": flat}


def cached_relation_paths(
    graph: Tensor, queries: Tensor, max_path_len: int, num_relations: int, data_files: Sequence[str | Path], cache_dir: str | Path | None
) -> dict[str, Tensor]:
    """:func:`paths_to_tensors` of :func:`relation_paths` (graph, queries), read from / written to ``cache_dir``.

    The file is ``cache_dir/pathcon_paths_L<L>_<digest>.pt`` with the digest of ``data_files`` and the options; it also
    stores ``queries`` and is only reused when they match. ``cache_dir=None`` computes without a cache.

    Raises:
        LitzooError: a cache file that cannot be read as the expected tensors (naming it; delete it to recompute).
    """
    options = {"max_path_len": max_path_len, "num_relations": num_relations, "queries": len(queries)}
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"pathcon_paths_L{max_path_len}_{files_digest(data_files, options)}.pt"
        if path.is_file():
            try:
                table = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as error:  # a truncated or foreign file: say which
                raise LitzooError(f"{path}: not a readable path cache ({type(error).__name__}: {error}); delete it to recompute") from None
            if not isinstance(table, dict) or set(table) != {"vocab", "lengths", "offsets", "ids", "queries"}:
                raise LitzooError(
                    f"{path}: not a PathCon path cache (expected keys vocab, lengths, offsets, ids, queries); delete it to recompute"
                )
            if torch.equal(table["queries"], queries):
                return table
    table = paths_to_tensors(relation_paths(graph, queries, max_path_len), max_path_len, pad=num_relations)
    table["queries"] = queries.clone()
    if path is not None:
        with write_files_atomically(path) as (staged,):
            torch.save(table, staged)
    return table


__all__ = ["cached_relation_paths", "context_edges", "files_digest", "paths_to_tensors", "sample_entity_edges", "triple_keys"]
