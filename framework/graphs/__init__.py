"""The knowledge-graph wing: triples in the official on-disk format, filtered ranking, relation paths, enclosing subgraphs, the
relation paths of a story query (R5)."""

from litzoo.framework.graphs.paths import relation_paths
from litzoo.framework.graphs.query_paths import PathQuery, query_relation_paths
from litzoo.framework.graphs.ranking import filter_mask, filtered_ranks, ranking_metrics, true_answers
from litzoo.framework.graphs.subgraphs import Subgraph, enclosing_subgraph
from litzoo.framework.graphs.triples import KnowledgeGraph, inductive_folder, read_dict, read_inductive, read_triples_folder

__all__ = [
    "KnowledgeGraph",
    "PathQuery",
    "Subgraph",
    "enclosing_subgraph",
    "filter_mask",
    "filtered_ranks",
    "inductive_folder",
    "query_relation_paths",
    "ranking_metrics",
    "read_dict",
    "read_inductive",
    "read_triples_folder",
    "relation_paths",
    "true_answers",
]
