"""Structured pruning shared by the pruning callbacks: channel groups, compactors, FLOPs, removal."""

from litzoo.framework.pruning.channel_groups import ChannelGroup, GroupReport, find_channel_groups
from litzoo.framework.pruning.compactor import Compacted, Compactor, fold_compactor, insert_compactors
from litzoo.framework.pruning.flops import ChannelFlops
from litzoo.framework.pruning.removal import (
    apply_layer_shapes,
    compacted_layers,
    compactors_in,
    fold_compactors,
    layer_shapes,
    prune_compacted,
    remove_channels,
    zero_masked_rows,
)

__all__ = [
    "ChannelFlops",
    "ChannelGroup",
    "Compacted",
    "Compactor",
    "GroupReport",
    "apply_layer_shapes",
    "compacted_layers",
    "compactors_in",
    "find_channel_groups",
    "fold_compactor",
    "fold_compactors",
    "insert_compactors",
    "layer_shapes",
    "prune_compacted",
    "remove_channels",
    "zero_masked_rows",
]
