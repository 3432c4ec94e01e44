"""Deploy checkpoints: the one module that writes and reads their format.

A deploy model can differ in structure from the model its constructor builds: re-parameterizable
blocks fused (``ReparamFusion``), channels removed (``ResRepPruning``). Its checkpoint is an ordinary
weights-only Lightning checkpoint plus a marker that says how to rebuild that structure::

    checkpoint["litzoo"] == {"fused": True, "pruned_shapes": {layer name: constructor arguments}}

Reading it back into *any* LightningModule: build the module as usual, :func:`restore_deploy_structure`
(fuse, then rebuild the pruned layers with their recorded shapes), then load the weights. Three ways
lead there:

* a module calls :func:`restore_deploy_structure` from its own ``on_load_checkpoint``
  (:class:`litzoo.framework.classification.ImageClassifier` does), which also serves
  ``Module.load_from_checkpoint``;
* the callbacks that write deploy checkpoints register :func:`restore_deploy_structure_on_load` in
  ``setup``, so ``trainer.validate/test/predict(model, ckpt_path=<deploy.ckpt>)`` works for a user's module
  that knows nothing of litzoo;
* :func:`litzoo.framework.export.load_lightning_module` (``litzoo export``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from torch.utils.hooks import RemovableHandle

from litzoo.framework.checkpoints import load_checkpoint
from litzoo.framework.errors import LitzooError
from litzoo.framework.pruning.removal import apply_layer_shapes, layer_shapes
from litzoo.framework.reparam.fuse_model import fuse_model, is_fusable
from litzoo.framework.verification import non_finite_tensors

#: ``checkpoint[DEPLOY_KEY]``: the marker of a deploy checkpoint
DEPLOY_KEY = "litzoo"
#: ``checkpoint[DEPLOY_KEY][FUSED_KEY]``: the weights are those of the fused model (``fuse_model``)
FUSED_KEY = "fused"
#: ``checkpoint[DEPLOY_KEY][PRUNED_SHAPES_KEY]``: ``{layer name: constructor arguments}`` of the pruned
#: layers (:func:`litzoo.framework.pruning.layer_shapes`)
PRUNED_SHAPES_KEY = "pruned_shapes"


# ----------------------------------------------------------------------------------------- writing
def deploy_marker(model: nn.Module | None = None, fused: bool = True, pruned: bool = False) -> dict[str, Any]:
    """The marker of a deploy checkpoint of ``model``.

    Args:
        model: the deploy model (needed when ``pruned``: its layer shapes are recorded).
        fused: its re-parameterizable blocks are fused.
        pruned: its layers have other shapes than its constructor builds (removed channels).
    """
    marker: dict[str, Any] = {FUSED_KEY: bool(fused)}
    if pruned:
        if model is None:
            raise ValueError("deploy_marker(pruned=True) needs the pruned model, whose layer shapes it records")
        marker[PRUNED_SHAPES_KEY] = layer_shapes(model)
    return marker


def check_deploy_filename(filename: str | None, who: str, argument: str = "deploy_filename") -> None:
    """Refuse a deploy file name that would leave the run's checkpoint folder (``None`` passes: nothing is written).

    The name comes from a config (``deploy_filename: ../../x.ckpt`` or ``/etc/x``) and is joined to the
    checkpoint folder; only a plain file name stays inside it. Callbacks call this in ``__init__``
    (the config is refused before training starts), :func:`save_deploy_checkpoint` again before writing.

    Raises:
        ValueError: not a string, empty, ``.`` / ``..``, an absolute path, or a name with a folder part
            (``/`` or ``\\``, a drive like ``C:``).
    """
    if filename is None:
        return
    if not isinstance(filename, str):
        raise ValueError(f"{who}: {argument} must be a file name (a string) or None, got {type(filename).__name__} {filename!r}")
    # both path flavours: a backslash or a drive is a folder part on Windows even where it is not here
    plain = filename not in ("", ".", "..") and PurePosixPath(filename).name == filename and PureWindowsPath(filename).name == filename
    if not plain or "\0" in filename:
        raise ValueError(
            f"{who}: {argument} must be a plain file name inside the run's checkpoint folder (no folder, no '..', not absolute), got {filename!r}"
        )


def save_deploy_checkpoint(trainer: L.Trainer, filename: str | None, who: str, marker: Mapping[str, Any] | None = None) -> Path | None:
    """Write a weights-only checkpoint of the trainer's model next to its other checkpoints.

    Every rank calls it (rank 0 writes). ``marker`` (see :func:`deploy_marker`) goes under
    ``checkpoint["litzoo"]``: what loaders must rebuild first. ``None`` writes an ordinary weights-only
    checkpoint (a deploy model of the same structure, e.g. sparse weights). Callbacks' checkpoint
    hooks do not run for weights-only checkpoints, so the marker is added to the written file.
    Nothing is written under ``fast_dev_run`` or when ``filename`` is ``None``.

    Returns the path written, or ``None``.

    Raises:
        ValueError: ``filename`` is not a plain file name (:func:`check_deploy_filename`).
        LitzooError: a weight of the model is NaN or infinite, or a buffer NaN (a diverged run is not a deploy model).
    """
    check_deploy_filename(filename, who)
    if filename is None or trainer.fast_dev_run:
        return None
    model = trainer.lightning_module
    # buffers may hold -inf (attention masks); NaN anywhere and infinite weights mean a diverged run
    bad = non_finite_tensors(model.named_parameters()) + non_finite_tensors(model.named_buffers(), allow_inf=True)
    if bad:
        raise LitzooError(f"{who}: {len(bad)} tensors of the model are not finite (first: '{bad[0]}'); no deploy checkpoint written")
    directory = getattr(trainer.checkpoint_callback, "dirpath", None) or trainer.default_root_dir
    path = Path(directory) / filename
    trainer.save_checkpoint(path, weights_only=True)
    if trainer.is_global_zero:
        if marker:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
            checkpoint.setdefault(DEPLOY_KEY, {}).update(marker)
            torch.save(checkpoint, path)
        rank_zero_info(f"{who}: deploy checkpoint written to {path}")
    trainer.strategy.barrier(f"{who}.deploy_checkpoint")
    return path


# ----------------------------------------------------------------------------------------- reading
def deploy_marker_of(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """The marker of a loaded checkpoint; ``{}`` for any other checkpoint."""
    marker = checkpoint.get(DEPLOY_KEY)
    return dict(marker) if isinstance(marker, Mapping) else {}


def is_fused_checkpoint(checkpoint: Mapping[str, Any]) -> bool:
    """Whether a loaded checkpoint holds fused (deploy) weights."""
    return bool(deploy_marker_of(checkpoint).get(FUSED_KEY))


def pruned_shapes(checkpoint: Mapping[str, Any]) -> dict[str, dict[str, Any]] | None:
    """The recorded layer shapes of a pruned model's checkpoint, ``None`` for any other checkpoint."""
    return deploy_marker_of(checkpoint).get(PRUNED_SHAPES_KEY)


def is_deploy_checkpoint(checkpoint: Mapping[str, Any]) -> bool:
    """Whether a loaded checkpoint needs a structure other than the constructor's (fused or pruned)."""
    return is_fused_checkpoint(checkpoint) or bool(pruned_shapes(checkpoint))


def restore_deploy_structure(module: nn.Module, checkpoint: Mapping[str, Any], source: str | Path | None = None) -> bool:
    """Give ``module`` (freshly built, training-time) the structure its deploy checkpoint's weights need, in place.

    Fuses the re-parameterizable blocks of a fused checkpoint, then rebuilds each pruned layer with its
    recorded shape. Idempotent: what already has the deploy structure is left alone (a fused model has
    nothing left to fuse; a layer of the recorded shape is not rebuilt). Call it from a LightningModule's
    ``on_load_checkpoint``::

        def on_load_checkpoint(self, checkpoint):
            restore_deploy_structure(self, checkpoint)

    Args:
        module: any ``nn.Module`` (a LightningModule: layer names are those of its state dict).
        checkpoint: the loaded checkpoint (its marker is read; any other checkpoint changes nothing).
        source: the file, for the error message.

    Returns:
        Whether ``module`` was changed.

    Raises:
        LitzooError: a recorded pruned layer does not exist in ``module`` (another architecture).
    """
    changed = False
    if is_fused_checkpoint(checkpoint) and any(is_fusable(m) for m in module.modules()):
        fuse_model(module, inplace=True)
        changed = True
    shapes = pruned_shapes(checkpoint)
    if shapes:
        current = layer_shapes(module)
        differing = {name: spec for name, spec in shapes.items() if current.get(name) != spec}
        if differing:
            try:
                apply_layer_shapes(module, differing)
            except ValueError as error:
                where = f"checkpoint '{source}'" if source is not None else "the deploy checkpoint"
                raise LitzooError(f"{where}: its pruned layer shapes do not fit {type(module).__name__}: {error}") from None
            changed = True
    return changed


def _fits(module: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> bool:
    target = module.state_dict()
    return state_dict.keys() == target.keys() and all(tuple(state_dict[k].shape) == tuple(target[k].shape) for k in target)


def restore_deploy_structure_on_load(trainer: L.Trainer, module: nn.Module) -> RemovableHandle:
    """When ``trainer`` loads a checkpoint into ``module`` (``trainer.test(module, ckpt_path=...)``), restore the
    deploy structure its file records right before the weights arrive.

    A ``load_state_dict`` pre-hook of ``module``: Lightning calls the module's ``load_state_dict`` with
    ``trainer.ckpt_path`` already set to the file being restored (it is not set yet in ``setup``). Only when
    the weights do not fit the module as it is, the file's marker is read (memory-mapped) and
    :func:`restore_deploy_structure` applied. Remove the returned handle in ``teardown``.
    """

    def hook(target: nn.Module, state_dict: dict[str, torch.Tensor], prefix: str, *args: Any) -> None:
        if prefix or _fits(target, state_dict):  # the root module only: children load after it
            return
        path = trainer.ckpt_path
        if path is None or not Path(path).is_file():  # a remote file: the module's own on_load_checkpoint may know
            return
        checkpoint = load_checkpoint(path, mmap=True)
        if restore_deploy_structure(target, checkpoint, path):
            rank_zero_info(f"{type(target).__name__}: restored the deploy structure recorded in {path} before loading its weights")

    return module.register_load_state_dict_pre_hook(hook)


__all__ = [
    "DEPLOY_KEY",
    "FUSED_KEY",
    "PRUNED_SHAPES_KEY",
    "check_deploy_filename",
    "deploy_marker",
    "deploy_marker_of",
    "is_deploy_checkpoint",
    "is_fused_checkpoint",
    "pruned_shapes",
    "restore_deploy_structure",
    "restore_deploy_structure_on_load",
    "save_deploy_checkpoint",
]
