"""One walker that turns any training-time model into its deploy form."""

from __future__ import annotations

import copy
from typing import Protocol, runtime_checkable

from torch import nn

#: Method names of the in-place conversion conventions used outside litzoo: timm, MobileOne and
#: FastViT use ``reparameterize()``; the official DingXiaoH repositories and mmpretrain use
#: ``switch_to_deploy()``.
FOREIGN_CONVERSIONS = ("reparameterize", "switch_to_deploy")


@runtime_checkable
class FoldBeforeFusing(Protocol):
    """A module that a block can carry and that the block's ``fuse()`` would silently drop, because
    ``fuse()`` builds the deploy module from the block's own branches: ResRep's compactor before a
    RepVGG block's nonlinearity (:class:`litzoo.framework.pruning.Compacted` implements it).

    :func:`fuse_model` refuses to fuse a block that carries one, with the module's own instructions.
    The protocol is declared here, with the walker that asks it, so that the pruning code above
    implements it without the walker knowing pruning.
    """

    def fold_before_fusing(self) -> str:
        """What it is and how to fold it into its block first, for the error message
        (``"a ResRep compactor: fold it with ..."``)."""
        ...


def carried_fold_first(block: nn.Module) -> FoldBeforeFusing | None:
    """The first module inside ``block`` (not ``block`` itself) that must be folded before ``block`` fuses."""
    return next((m for m in block.modules() if m is not block and isinstance(m, FoldBeforeFusing)), None)


def is_fusable(module: nn.Module) -> bool:
    """Whether ``fuse_model`` would change ``module`` itself (not counting its children)."""
    return callable(getattr(module, "fuse", None)) or any(callable(getattr(module, n, None)) for n in FOREIGN_CONVERSIONS)


def fuse_model(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Return the deploy model: every block with ``fuse()`` replaced by what it returns.

    Blocks following the foreign conventions ``reparameterize()`` / ``switch_to_deploy()`` are
    converted in place. Fusion reads BatchNorm running statistics: the deploy model equals ``model.eval()``.

    The order: a block with ``fuse()`` owns its subtree (litzoo's blocks read their own branches),
    so it fuses before anything inside it, and what it returns is walked next. A block with a
    foreign in-place conversion is converted bottom-up, after everything inside it: its code reads
    its branches as the plain layers it was written for, and a layer that litzoo replaced there
    (``StructuralReparam`` turning ``rbr_dense.conv`` into an ACB block) must be back to a conv and a
    BatchNorm first (``'ACBlock' object has no attribute 'weight'`` otherwise).

    Args:
        model: any ``nn.Module`` (a LightningModule too).
        inplace: modify ``model`` instead of a deep copy.

    Raises:
        ValueError: a block carries a module that its ``fuse()`` would drop (:class:`FoldBeforeFusing`).
    """
    if not inplace:
        model = copy.deepcopy(model)
    return _fuse(model)


def _fuse(module: nn.Module) -> nn.Module:
    """The deploy form of ``module`` (the module itself when converted in place)."""
    fuse = getattr(module, "fuse", None)
    if callable(fuse):
        carried = carried_fold_first(module)
        if carried is not None:
            raise ValueError(f"{type(module).__name__} carries {carried.fold_before_fusing()} before fusing the model")
        replacement = fuse()
        if not isinstance(replacement, nn.Module):
            raise TypeError(f"{type(module).__name__}.fuse() must return an nn.Module, got {type(replacement).__name__}")
        replacement.train(module.training)
        return _fuse_children(replacement)  # what fuse() returns may hold blocks of its own
    _fuse_children(module)  # bottom-up: a foreign conversion reads its children as plain layers
    for name in FOREIGN_CONVERSIONS:
        convert = getattr(module, name, None)
        if callable(convert):
            convert()
            break
    return module


def _fuse_children(module: nn.Module) -> nn.Module:
    for name, child in list(module.named_children()):
        converted = _fuse(child)
        if converted is not child:
            setattr(module, name, converted)
    return module
