"""One walker that turns any training-time model into its deploy form."""

from __future__ import annotations

import copy

from torch import nn

#: Method names of the in-place conversion conventions used outside litzoo: timm, MobileOne and
#: FastViT use ``reparameterize()``; the official DingXiaoH repositories and mmpretrain use
#: ``switch_to_deploy()``.
FOREIGN_CONVERSIONS = ("reparameterize", "switch_to_deploy")


#: Checkpoint key marking fused (deploy) weights: ``checkpoint[DEPLOY_KEY] == {"fused": True}``.
#: Loaders build the training-time model, fuse it, then load such a state dict.
DEPLOY_KEY = "litzoo"


def is_fused_checkpoint(checkpoint: dict) -> bool:
    """Whether a loaded checkpoint holds fused (deploy) weights."""
    return bool(checkpoint.get(DEPLOY_KEY, {}).get("fused"))


def is_fusable(module: nn.Module) -> bool:
    """Whether ``fuse_model`` would change ``module`` itself (not counting its children)."""
    return callable(getattr(module, "fuse", None)) or any(callable(getattr(module, n, None)) for n in FOREIGN_CONVERSIONS)


def fuse_model(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Return the deploy model: every block with ``fuse()`` replaced by what it returns.

    Blocks following the foreign conventions ``reparameterize()`` / ``switch_to_deploy()`` are
    converted in place. The walk is top-down, so a block's own ``fuse()`` wins over those of its
    branches. Fusion reads BatchNorm running statistics: the deploy model equals ``model.eval()``.

    Args:
        model: any ``nn.Module`` (a LightningModule too).
        inplace: modify ``model`` instead of a deep copy.
    """
    if not inplace:
        model = copy.deepcopy(model)
    fused = _convert(model)
    return _walk(fused)


def _convert(module: nn.Module) -> nn.Module:
    fuse = getattr(module, "fuse", None)
    if callable(fuse):
        if getattr(getattr(module, "nonlinearity", None), "compactor", None) is not None:
            # fuse() would build a fresh nonlinearity and silently drop ResRep's compactor
            raise ValueError(
                f"{type(module).__name__} carries a ResRep compactor: fold it with litzoo.framework.pruning.fold_compactors "
                "(ResRepPruning does at the end of fit) before fusing the model"
            )
        replacement = fuse()
        if not isinstance(replacement, nn.Module):
            raise TypeError(f"{type(module).__name__}.fuse() must return an nn.Module, got {type(replacement).__name__}")
        replacement.train(module.training)
        return replacement
    for name in FOREIGN_CONVERSIONS:
        convert = getattr(module, name, None)
        if callable(convert):
            convert()
            break
    return module


def _walk(module: nn.Module) -> nn.Module:
    for name, child in list(module.named_children()):
        converted = _convert(child)
        if converted is not child:
            setattr(module, name, converted)
        _walk(converted)
    return module
