"""FLOPs of a model as a function of how many channels each prunable group keeps.

ResRep's mask update asks "what would the FLOPs be if these channels were gone?" once per channel
it considers, thousands of times per update, so the pruned models cannot be built and counted
each time. A conv's FLOPs are proportional to its output channels times its input channels per
group; with ``r_g`` the fraction of group ``g``'s channels kept, a layer whose outputs belong to
group ``o`` and inputs to group ``i`` costs ``F * r_o * r_i`` (a depthwise conv scales with its one
group only). The per-layer ``F`` are measured once with ``torch.utils.flop_counter``, so the model
agrees with counting the physically pruned model (checked by the tests).
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
        in_group: dict[str, int] = {}
        for index, group in enumerate(groups):
            out_group[group.leader] = index
            for name in group.followers:
                if _is_depthwise(copy.get_submodule(name)):
                    out_group[name] = index  # in and out channels together: counted once
            for name in group.consumers:
                in_group[name] = index
        flops, outs, ins = [], [], []
        for name in sorted(set(out_group) | set(in_group)):
            flops.append(float(per_module.get(f"{root}.{name}", 0)))
            outs.append(out_group.get(name, -1))  # -1: the appended ratio 1.0
            ins.append(in_group.get(name, -1))
        self._flops = np.array(flops)
        self._out = np.array(outs, dtype=np.int64)
        self._in = np.array(ins, dtype=np.int64)
        self.fixed = self.total - float(self._flops.sum())

    def __call__(self, kept: Sequence[float] | np.ndarray) -> float:
        ratios = np.append(np.asarray(kept, dtype=np.float64) / self.channels, 1.0)
        return self.fixed + float((self._flops * ratios[self._out] * ratios[self._in]).sum())

    def ratio(self, kept: Sequence[float] | np.ndarray) -> float:
        """``flops(kept) / flops(unpruned)``."""
        return self(kept) / self.total
