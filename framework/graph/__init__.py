"""Computation graphs of any ``nn.Module`` (torch.fx): which layer feeds which, and the primitive-op
computation graphs (CGs) of NAS performance predictors (GENNAPE, AIO-P; see ``computation.py``)."""

from litzoo.framework.graph.computation import (
    NUM_NODE_FEATURES,
    NUMERIC_FEATURES,
    OP_TYPES,
    CGNode,
    CGTracer,
    ComputationGraph,
    FeatureExtractor,
    computation_graph,
    load_graphs_jsonl,
    save_graphs_jsonl,
)
from litzoo.framework.graph.patterns import ConvBNPairs, conv_bn_pairs, find_conv_bn_pairs

__all__ = [
    "CGNode", "CGTracer", "ComputationGraph", "FeatureExtractor", "NUMERIC_FEATURES", "NUM_NODE_FEATURES", "OP_TYPES",
    "ConvBNPairs", "computation_graph", "conv_bn_pairs", "find_conv_bn_pairs", "load_graphs_jsonl", "save_graphs_jsonl",
]  # fmt: skip
