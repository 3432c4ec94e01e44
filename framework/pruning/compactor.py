"""The compactor of ResRep: a 1x1 conv after a conv(-BN) that learns which channels to drop.

ResRep (Ding et al., "ResRep: Lossless CNN Pruning via Decoupling Remembering and Forgetting",
ICCV 2021) separates *remembering* (the original conv-BN, trained by the objective only) from
*forgetting* (a ``C x C`` pointwise conv, the compactor, initialised to the identity and pushed
towards zero rows by a group-lasso penalty). Because the compactor is linear and follows a linear
layer, it folds into that layer after training: ``K' = Q K``, ``b' = Q b``. Rows of ``Q`` that are
zero are output channels that can be removed.

Reference implementation: DingXiaoH/ResRep ``rr/compactor.py`` (``CompactorLayer``) and
``rr/resrep_convert.py`` (``fold_conv``).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from litzoo.framework.reparam.fuse_model import FOREIGN_CONVERSIONS


class Compactor(nn.Module):
    """``C x C`` pointwise conv without bias, identity at initialisation, with a channel mask.

    ``mask[c] = 0`` marks output channel ``c`` as selected for removal: ResRep stops giving that
    row the objective's gradient (gradient resetting), so only the lasso penalty acts on it and it
    decays towards zero. The mask is a buffer, so it is checkpointed with the model.

    ``groups > 1`` makes it block-diagonal (a grouped 1x1 conv, ``C x C/groups``): the compactor of a
    grouped conv, which must stay grouped once the compactor is folded into it.
    """

    def __init__(self, channels: int, groups: int = 1) -> None:
        super().__init__()
        if channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        if groups < 1 or channels % groups:
            raise ValueError(f"groups must be a positive divisor of channels={channels}, got {groups}")
        self.channels = channels
        self.groups = groups
        width = channels // groups
        self.weight = nn.Parameter(torch.eye(width).repeat(groups, 1).reshape(channels, width, 1, 1))
        self.register_buffer("mask", torch.ones(channels))

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.conv2d(x, self.weight, groups=self.groups)

    def row_norms(self) -> Tensor:
        """L2 norm of each output row: ResRep's channel importance (``(C,)``)."""
        return self.weight.detach().flatten(1).norm(dim=1)

    @property
    def num_kept(self) -> int:
        return int((self.mask > 0).sum())

    def extra_repr(self) -> str:
        return f"{self.channels}, kept={self.num_kept}" + (f", groups={self.groups}" if self.groups > 1 else "")


class Compacted(nn.Module):
    """A layer and the compactor next to it: where ResRep re-parameterizes a conv-BN (or a block).

    ``before=False``: ``x -> compactor(layer(x))``, ``layer`` being the BatchNorm after the pruned
    conv, or the conv itself when no BatchNorm follows it. ``before=True``: ``x ->
    layer(compactor(x))``, ``layer`` being the nonlinearity that ends a re-parameterizable block
    (a RepVGG block: the compactor must act on the sum of the branches, before the ReLU).
    """

    def __init__(self, layer: nn.Module, channels: int, before: bool = False, groups: int = 1) -> None:
        super().__init__()
        self.layer = layer
        self.compactor = Compactor(channels, groups)
        self.before = before

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(self.compactor(x)) if self.before else self.compactor(self.layer(x))

    def fold_before_fusing(self) -> str:
        """:class:`litzoo.framework.reparam.fuse_model.FoldBeforeFusing`: a block carrying this one (a RepVGG
        block with a compactor before its nonlinearity) must not be fused, its ``fuse()`` would drop the compactor."""
        return "a ResRep compactor: fold it with litzoo.framework.pruning.fold_compactors (ResRepPruning does at the end of fit)"


def fold_compactor(kernel: Tensor, bias: Tensor, compactor_weight: Tensor, groups: int = 1) -> tuple[Tensor, Tensor]:
    """Merge a compactor into the conv before it: ``Q (K * x + b) = (Q K) * x + Q b``.

    Args:
        kernel: the conv's kernel with any BatchNorm already folded in, ``(C, in/groups, kh, kw)``.
        bias: its bias, ``(C,)``.
        compactor_weight: ``(C', C, 1, 1)`` (all rows, or only the kept ones); ``(C, C/groups, 1, 1)``
            for a block-diagonal compactor with ``groups`` blocks, which folds into a conv with the same
            groups, block by block (``Q_g K_g``: output group ``g`` still reads input group ``g`` only).

    Returns:
        ``(kernel, bias)`` with ``C'`` output channels.
    """
    q = compactor_weight.flatten(1)  # (C', C / groups)
    if groups == 1:
        if q.shape[1] != kernel.shape[0]:
            raise ValueError(f"compactor has {q.shape[1]} input channels but the conv has {kernel.shape[0]} outputs")
        return torch.einsum("pc,cikl->pikl", q, kernel), q @ bias
    channels, width = kernel.shape[0], kernel.shape[0] // groups
    if q.shape != (channels, width):
        raise ValueError(f"a compactor with {groups} groups must be {channels} x {width} for a conv with {channels} outputs, got {tuple(q.shape)}")
    blocks = q.reshape(groups, width, width)
    folded = torch.einsum("gpc,gcikl->gpikl", blocks, kernel.reshape(groups, width, *kernel.shape[1:]))
    return folded.reshape(kernel.shape), torch.einsum("gpc,gc->gp", blocks, bias.reshape(groups, width)).reshape(channels)


def block_producer_problem(module: nn.Module) -> str | None:
    """Why ``module`` is not a re-parameterizable block whose output a compactor can take over
    (``None``: it is). Such a block has an equivalent kernel and bias (``get_equivalent_kernel_bias()``),
    a conversion to its deploy form (litzoo's ``fuse()``, or another repository's
    ``switch_to_deploy()`` / ``reparameterize()``), and its own ``nonlinearity`` submodule, before
    which the compactor acts on the sum of the branches (the RepVGG block, litzoo's or the official one)."""
    if not callable(getattr(module, "get_equivalent_kernel_bias", None)):
        return "has no get_equivalent_kernel_bias()"
    if not any(callable(getattr(module, name, None)) for name in ("fuse", *FOREIGN_CONVERSIONS)):
        return f"has no fuse() or {' / '.join(f'{n}()' for n in FOREIGN_CONVERSIONS)}"
    if not isinstance(getattr(module, "nonlinearity", None), nn.Module):
        return "has no nonlinearity submodule of its own (a linear branch block, e.g. StructuralReparam's)"
    return None


def is_block_producer(module: nn.Module | None) -> bool:
    """Whether a compactor can take over ``module``'s output, before its nonlinearity (:func:`block_producer_problem`)."""
    return module is not None and block_producer_problem(module) is None


def compactor_goes_before(model: nn.Module, name: str) -> bool:
    """Whether the compactor at ``name`` acts on the layer's input: the nonlinearity of a block."""
    parent, _, child = name.rpartition(".")
    return child == "nonlinearity" and is_block_producer(model.get_submodule(parent) if parent else model)


def insert_compactors(model: nn.Module, placements: Mapping[str, int | tuple[int, int]]) -> None:
    """Wrap each ``{module name: channels}`` (or ``(channels, groups)``) of ``model`` in :class:`Compacted`, in place.

    A block's ``nonlinearity`` gets its compactor before it; any other layer after it.
    """
    for name, spec in placements.items():
        channels, groups = spec if isinstance(spec, tuple | list) else (spec, 1)
        layer = model.get_submodule(name)
        if isinstance(layer, Compacted):
            raise ValueError(f"'{name}' already has a compactor")
        reference = next(iter(layer.state_dict().values()), None)
        if reference is None:  # a parameter-free layer (a block's ReLU): the model's device and dtype
            reference = next(iter(model.parameters()), None)
        wrapped = Compacted(layer, channels, before=compactor_goes_before(model, name), groups=groups)
        if reference is not None:
            wrapped.compactor.to(device=reference.device, dtype=reference.dtype)
        wrapped.train(layer.training)
        model.set_submodule(name, wrapped)
