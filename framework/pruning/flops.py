"""FLOPs of a model as a function of how many channels each prunable group keeps.

ResRep's mask update asks "what would the FLOPs be if these channels were gone?" once per channel
it considers, thousands of times per update, so the pruned models cannot be built and counted
each time. A conv's FLOPs are proportional to its output channels times its input channels per
group. With ``r_g`` the fraction of group ``g``'s channels kept, a layer whose outputs belong to
group ``o`` costs ``F * r_o * in(r)``, where ``in(r) = (C_in - sum_g n_g + sum_g n_g r_g) / C_in``
and ``n_g`` is the number of its ``C_in`` input channels that belong to group ``g``: one group for a
plain chain, several for a conv reading a concatenation (DenseNet), none for the rest. A depthwise
conv scales with the channels it carries in the same way (its input and output channels are one).
The per-layer ``F`` are measured once with ``torch.utils.flop_counter``, so the model equals
counting the physically pruned model (checked by the tests, on concatenations too).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from litzoo.framework.pruning.channel_groups import ChannelGroup, _is_depthwise
from litzoo.framework.reparam.fuse_model import fuse_model
from litzoo.framework.reparam.verify import detached_copy


class ChannelFlops:
    """``flops(kept)``: FLOPs per sample when group ``g`` keeps ``kept[g]`` of its channels.

    Args:
        model: the unpruned model, without compactors (its deploy form is measured, on a copy).
        example_inputs: a batch with the model's input shape; FLOPs are per sample.
        groups: the prunable groups (from :func:`find_channel_groups`).
    """

    def __init__(self, model: nn.Module, example_inputs: Tensor, groups: Sequence[ChannelGroup]) -> None:
        copy = fuse_model(detached_copy(model).eval().cpu(), inplace=True)  # the deploy form, as the groups are named
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            copy(example_inputs[:1].detach().cpu())
        per_module = {key: sum(counts.values()) for key, counts in counter.get_flop_counts().items()}
        root = type(copy).__name__
        self.total = float(counter.get_total_flops())
        self.channels = np.array([g.channels for g in groups], dtype=np.float64)
        out_group: dict[str, int] = {}
        carried: dict[str, dict[int, int]] = {}  # depthwise convs: channels of each group they carry
        read: dict[str, dict[int, int]] = {}  # consumers: input channels of each group they read
        for index, group in enumerate(groups):
            for producer in group.producers:  # the leader and the convs tied to it lose the same channels
                out_group[producer.conv] = index
            for name in group.followers:
                if _is_depthwise(copy.get_submodule(name)):
                    carried.setdefault(name, {})[index] = group.counts.get(name, group.channels)
            for name in group.consumers:
                read.setdefault(name, {})[index] = group.counts.get(name, group.channels)
        layers = sorted(set(out_group) | set(carried) | set(read))
        # per layer: factor_out = base_out + A_out @ r, factor_in = base_in + A_in @ r (r: kept fractions)
        self._flops = np.array([float(per_module.get(f"{root}.{name}", 0)) for name in layers])
        self._a_out = np.zeros((len(layers), len(groups)))
        self._a_in = np.zeros((len(layers), len(groups)))
        self._base_out = np.ones(len(layers))
        self._base_in = np.ones(len(layers))
        for row, name in enumerate(layers):
            module = copy.get_submodule(name)
            if name in out_group:
                self._a_out[row, out_group[name]], self._base_out[row] = 1.0, 0.0
            elif name in carried:
                self._fill(self._a_out, self._base_out, row, carried[name], module.out_channels)
            if name in read:
                width = module.in_channels if isinstance(module, nn.Conv2d) else module.in_features
                self._fill(self._a_in, self._base_in, row, read[name], width)
        self.fixed = self.total - float(self._flops.sum())

    @staticmethod
    def _fill(matrix: np.ndarray, base: np.ndarray, row: int, counts: dict[int, int], width: int) -> None:
        for index, count in counts.items():
            matrix[row, index] = count / width
        base[row] = 1.0 - sum(counts.values()) / width

    def __call__(self, kept: Sequence[float] | np.ndarray) -> float:
        ratios = np.asarray(kept, dtype=np.float64) / self.channels
        factor_out = self._base_out + self._a_out @ ratios
        factor_in = self._base_in + self._a_in @ ratios
        return self.fixed + float((self._flops * factor_out * factor_in).sum())

    def ratio(self, kept: Sequence[float] | np.ndarray) -> float:
        """``flops(kept) / flops(unpruned)``."""
        return self(kept) / self.total
