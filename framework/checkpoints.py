"""Safe loading of checkpoint files (``weights_only=True``, one-line errors that name the file) and
converters from the official released checkpoints of the re-parameterization papers."""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import nn

from litzoo.framework.errors import LitzooError
from litzoo.framework.reparam.fuse_model import DEPLOY_KEY, fuse_model


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", mmap: bool = False) -> dict[str, Any]:
    """Load a checkpoint (a Lightning ``.ckpt`` or a plain state dict) with ``weights_only=True``.

    ``mmap=True`` maps the tensors instead of reading them (a cheap check of a large file); it
    falls back to a plain read for the legacy, non-zip format, which cannot be mapped.

    Raises:
        LitzooError: the file is missing, is not a torch checkpoint, is truncated or corrupt, holds
            objects other than tensors and plain containers, or is not a dict.
    """
    path = Path(path)
    if not path.is_file():
        raise LitzooError(f"checkpoint '{path}' does not exist" if not path.exists() else f"checkpoint '{path}' is not a file")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap and zipfile.is_zipfile(path))
    except pickle.UnpicklingError as error:
        text = str(error)
        if "Unsupported global" in text:
            raise LitzooError(
                f"checkpoint '{path}' holds Python objects other than tensors and plain containers, "
                "which litzoo does not unpickle (weights_only=True)"
            ) from None
        raise LitzooError(f"checkpoint '{path}' is not a torch checkpoint (it does not unpickle)") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as error:
        text = str(error).strip()
        reason = text.splitlines()[0].split(". ")[0] if text else type(error).__name__
        raise LitzooError(f"checkpoint '{path}' is truncated or not a torch checkpoint ({reason})") from None
    except Exception as error:  # the unpickler meets arbitrary bytes with many error types (KeyError, ...)
        raise LitzooError(f"checkpoint '{path}' is not a torch checkpoint ({type(error).__name__} while unpickling)") from None
    if not isinstance(checkpoint, dict):
        raise LitzooError(f"checkpoint '{path}' holds a {type(checkpoint).__name__}, expected a dict (a state dict or a Lightning checkpoint)")
    return checkpoint


def state_dict_from(checkpoint: dict[str, Any], path: str | Path = "<checkpoint>") -> dict[str, torch.Tensor]:
    """The model weights of a loaded checkpoint: Lightning's ``state_dict`` entry or the dict itself."""
    state = checkpoint.get("state_dict", checkpoint)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise LitzooError(f"checkpoint '{path}' has no state dict of tensors")
    return state


# ------------------------------------------------------------------ official released weights
#
# The authors of the structural re-parameterization papers released their weights with their own
# module names. Each converter renames key *segments* (the dotted parts), so it works wherever the
# block sits in a network: ``layer1.0.conv1.square_conv.weight`` -> ``layer1.0.conv1.branch_square.conv.weight``.
# A ``None`` target drops the segment: the official deploy-time conv inside a block
# (``fused_conv``, ``dbb_reparam``) becomes the module that replaces the block after ``fuse()``.

#: RepVGG (DingXiaoH/RepVGG ``repvgg.py``): ``rbr_dense``/``rbr_1x1`` are conv-BN Sequentials,
#: ``rbr_identity`` a BatchNorm2d, ``rbr_reparam`` the deploy conv; the network names ``stage0`` ...
#: ``stage4`` and ``linear`` are ours too.
_REPVGG_SEGMENTS: dict[str, str | None] = {
    "rbr_dense": "branch_3x3",
    "rbr_1x1": "branch_1x1",
    "rbr_identity": "branch_identity",
    "rbr_reparam": "conv",
}

#: ACNet (DingXiaoH/ACNet ``acnet/acb.py``): flat ``square_conv``/``square_bn`` ... attributes.
_ACB_SEGMENTS: dict[str, str | None] = {
    "square_conv": "branch_square.conv",
    "square_bn": "branch_square.bn",
    "ver_conv": "branch_vertical.conv",
    "ver_bn": "branch_vertical.bn",
    "hor_conv": "branch_horizontal.conv",
    "hor_bn": "branch_horizontal.bn",
    "fused_conv": None,
}

#: Diverse Branch Block (DingXiaoH/DiverseBranchBlock ``diversebranchblock.py``); names inside the
#: branches (``conv``, ``bn``, ``avg``, ``avgbn``, ``idconv1``, ``conv1``, ``bn1``, ``conv2``, ``bn2``)
#: are the official ones.
_DBB_SEGMENTS: dict[str, str | None] = {
    "dbb_origin": "branch_kxk",
    "dbb_1x1": "branch_1x1",
    "dbb_avg": "branch_avg",
    "dbb_1x1_kxk": "branch_1x1_kxk",
    "dbb_reparam": None,
}

_BN_LEAVES = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")

OFFICIAL_METHODS = ("repvgg", "acb", "dbb", "repmlp", "mae", "hiera", "audio_mae")


def _rename_segments(key: str, table: dict[str, str | None]) -> str:
    parts = []
    for segment in key.split("."):
        if segment in table:
            if table[segment] is not None:
                parts.append(table[segment])
        else:
            parts.append(segment)
    return ".".join(parts)


def _dbb_key(key: str) -> str:
    key = _rename_segments(key, _DBB_SEGMENTS)
    # Before DBB PR#10, BNAndPadLayer subclassed BatchNorm2d, so its statistics sat one level up
    # (``dbb_avg.bn.weight``); ours wraps a BatchNorm2d (``branch_avg.bn.bn.weight``).
    parts = key.split(".")
    if len(parts) >= 3 and parts[-1] in _BN_LEAVES and (parts[-3], parts[-2]) in (("branch_avg", "bn"), ("branch_1x1_kxk", "bn1")):
        parts.insert(len(parts) - 1, "bn")
    return ".".join(parts)


def unwrap_state_dict(checkpoint: Mapping[str, Any], path: str | Path = "<checkpoint>") -> dict[str, torch.Tensor]:
    """The weights of a released checkpoint: a bare state dict, or one under ``state_dict`` / ``model``.

    A ``module.`` prefix (saved from ``DataParallel`` / DDP) is removed.
    """
    state: Any = checkpoint
    for wrapper in ("state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
            break
    if not isinstance(state, Mapping) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise LitzooError(f"checkpoint '{path}' has no state dict of tensors (looked at the top level, 'state_dict' and 'model')")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return dict(state)


def convert_official_audio_mae_state_dict(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Official AudioMAE weights (``models_mae.py`` pretrained or ``models_vit.py`` fine-tuned, already
    unwrapped from ``{"model": ...}``) → ``(our state dict, dropped keys)``.

    Our modules use the official (timm ViT) names, so encoder (``patch_embed.proj``, ``cls_token``,
    ``pos_embed``, ``blocks.*``, ``norm``), decoder embedding / norm / prediction (``decoder_embed``,
    ``mask_token``, ``decoder_pos_embed``, ``decoder_norm``, ``decoder_pred``) and fine-tuned heads
    (``fc_norm``, ``head``) keep their keys. The blocks of the official local-window decoder
    (``decoder_mode=1``, recognised by their ``attn.tau`` / ``attn.meta_mlp`` parameters) are Swin-V2-CR
    blocks that compute something else than ours (see the module docstring): all ``decoder_blocks.*``
    keys are dropped and returned, even those whose names match ours, because loading them would be
    silently wrong. Global decoder blocks (``decoder_mode=0``, timm ``Block``) are kept.

    Raises:
        LitzooError: not an AudioMAE / timm ViT state dict (no ``patch_embed.proj.weight``).
    """
    if "patch_embed.proj.weight" not in state_dict:
        raise LitzooError("official audio_mae state dict: no 'patch_embed.proj.weight', so not an AudioMAE / timm ViT checkpoint")
    swin_decoder = any(k.startswith("decoder_blocks.") and (".attn.tau" in k or ".attn.meta_mlp." in k) for k in state_dict)
    converted, dropped = {}, []
    for key, value in state_dict.items():
        if swin_decoder and key.startswith("decoder_blocks."):
            dropped.append(key)
        else:
            converted[key] = value
    return converted, dropped


def convert_official_state_dict(method: str, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the keys of an official released state dict to litzoo's module names.

    Train-time and deploy-time checkpoints are both mapped; deploy keys come out as the keys of
    the model after :func:`litzoo.framework.reparam.fuse_model`.

    Args:
        method: ``"repvgg"`` (DingXiaoH/RepVGG), ``"acb"`` (DingXiaoH/ACNet), ``"dbb"``
            (DingXiaoH/DiverseBranchBlock), ``"repmlp"`` (DingXiaoH/RepMLP; litzoo's RepMLPNet uses
            the official names, so only wrappers and prefixes change) or ``"mae"`` (facebookresearch/mae:
            timm ViT names, which litzoo's ``MaskedAutoencoderViT`` uses; a ``{'model': ...}`` wrapper is
            also removed here; encoder-only files such as ``mae_pretrain_vit_base.pth`` give encoder
            keys only, and ``MaskedAutoencoderViT.from_official_checkpoint`` reports the missing decoder) or
            ``"hiera"`` (facebookresearch/hiera: litzoo's ``Hiera`` / ``MaskedAutoencoderHiera`` use the
            official names; the released files' ``{'model_state': ...}`` wrapper is removed here) or
            ``"audio_mae"`` (facebookresearch/AudioMAE: timm ViT names; the Swin-V2-CR blocks of the
            official local-window decoder are dropped with a warning, see
            :func:`convert_official_audio_mae_state_dict`).
        state_dict: the official weights (already unwrapped, see :func:`unwrap_state_dict`).
    """
    if method not in OFFICIAL_METHODS:
        raise ValueError(f"unknown method '{method}' for official checkpoints; choose from {', '.join(OFFICIAL_METHODS)}")
    if method == "repvgg":
        if any(".se." in f".{k}" for k in state_dict):
            raise LitzooError("RepVGG checkpoints with squeeze-excitation blocks (RepVGG-D2se, RepVGGplus) are not supported by litzoo's RepVGG")
        rename = lambda key: _rename_segments(key, _REPVGG_SEGMENTS)  # noqa: E731
    elif method == "acb":
        rename = lambda key: _rename_segments(key, _ACB_SEGMENTS)  # noqa: E731
    elif method == "dbb":
        rename = _dbb_key
    elif method == "mae":
        if isinstance(state_dict.get("model"), Mapping) or all(k.startswith("module.") for k in state_dict):
            state_dict = unwrap_state_dict(state_dict)
        if "patch_embed.proj.weight" not in state_dict:
            raise LitzooError("official mae state dict: no 'patch_embed.proj.weight', so not an MAE / timm ViT checkpoint")
        rename = lambda key: key  # noqa: E731
    elif method == "hiera":
        if isinstance(state_dict.get("model_state"), Mapping):
            state_dict = state_dict["model_state"]
        state_dict = unwrap_state_dict(state_dict)
        if "patch_embed.proj.weight" not in state_dict:
            raise LitzooError("official hiera state dict: no 'patch_embed.proj.weight', so not a Hiera checkpoint")
        rename = lambda key: key  # noqa: E731
    elif method == "audio_mae":
        if isinstance(state_dict.get("model"), Mapping) or all(k.startswith("module.") for k in state_dict):
            state_dict = unwrap_state_dict(state_dict)
        state_dict, dropped = convert_official_audio_mae_state_dict(dict(state_dict))
        if dropped:
            rank_zero_warn(f"official audio_mae state dict: {len(dropped)} local-window decoder weights dropped (Swin-V2-CR blocks, "
                           f"not litzoo's decoder): {', '.join(dropped[:4])}{', ...' if len(dropped) > 4 else ''}")  # fmt: skip
        rename = lambda key: key  # noqa: E731
    else:
        rename = lambda key: key  # noqa: E731
    converted: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        new_key = rename(key)
        if new_key in converted:
            raise LitzooError(f"official {method} state dict: keys '{key}' and another one both map to '{new_key}'")
        converted[new_key] = value
    return converted


def _mismatch(state: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]) -> tuple[list[str], list[str], list[str]]:
    """Missing, unexpected and mis-shaped keys; old checkpoints lack BN's ``num_batches_tracked``."""
    missing = sorted(k for k in target if k not in state and not k.endswith("num_batches_tracked"))
    unexpected = sorted(k for k in state if k not in target)
    shapes = sorted(k for k in state if k in target and state[k].shape != target[k].shape)
    return missing, unexpected, shapes


def _one_level_down(key: str, target: Mapping[str, torch.Tensor]) -> str:
    prefix, _, leaf = key.rpartition(".")
    nested = f"{prefix}.conv.{leaf}" if prefix else f"conv.{leaf}"
    return nested if key not in target and nested in target else key


def load_official_weights(model: nn.Module, method: str, path: str | Path, head: str | None = None) -> nn.Module:
    """Load an official released checkpoint into a litzoo model, train-time or deploy-time.

    The file is loaded with ``weights_only=True``; its keys are converted with
    :func:`convert_official_state_dict`. When they describe the deploy (fused) structure, ``model``
    is fused in place with :func:`litzoo.framework.reparam.fuse_model` first. A classifier head whose
    shape differs (fine-tuning on other classes) keeps its fresh initialisation, with a warning.

    Args:
        model: the training-time litzoo model of the same architecture.
        method: see :func:`convert_official_state_dict`.
        path: the released ``.pth`` / ``.pt`` file.
        head: name of the classifier sub-module (``"linear"`` for RepVGG, ``"head"`` for RepMLPNet).

    Returns:
        ``model`` itself or, for a deploy-time checkpoint, its fused form.

    Raises:
        LitzooError: the file is unreadable, or its weights do not fit the model (names the file,
            and the first missing / unexpected / mis-shaped keys).
    """
    state = convert_official_state_dict(method, unwrap_state_dict(load_checkpoint(path), path))
    head_keys = {k for k in state if head is not None and k.startswith(f"{head}.")}
    candidates = [("train-time", model)]
    if any(k not in model.state_dict() for k in state):
        candidates.append(("deploy-time", fuse_model(model, inplace=False)))
    reports = []
    for form, candidate in candidates:
        target = candidate.state_dict()
        if form == "deploy-time":
            # A block with a nonlinearity fuses to Sequential(conv, nonlinear): its conv is one level down.
            state = {_one_level_down(k, target): v for k, v in state.items()}
        missing, unexpected, shapes = _mismatch(state, target)
        wrong_shapes = [k for k in shapes if k not in head_keys]
        if not missing and not unexpected and not wrong_shapes:
            if shapes:  # only the head differs: fine-tuning on other classes
                rank_zero_warn(f"{path}: the classifier head '{head}' has other shapes than the model's; it keeps its fresh initialisation")
                state = {k: v for k, v in state.items() if k not in head_keys}
            candidate.load_state_dict(state, strict=False)
            return candidate
        problems = len(missing) + len(unexpected) + len(wrong_shapes)
        reports.append((problems, f"as {form} weights: missing {missing[:3]}, unexpected {unexpected[:3]}, wrong shape {wrong_shapes[:3]}"))
    raise LitzooError(f"checkpoint '{path}' does not fit this {method} model ({min(reports)[1]})")


def save_deploy_checkpoint(trainer: Any, filename: str | None, who: str, marker: Mapping[str, Any] | None = None) -> Path | None:
    """Write a weights-only checkpoint of the trainer's model next to its other checkpoints.

    Every rank calls it (rank 0 writes). ``marker`` entries go under ``checkpoint["litzoo"]``
    (what loaders must rebuild first: fused blocks, pruned shapes); callbacks' checkpoint hooks do
    not run for weights-only checkpoints, so they are added to the written file. Nothing is
    written under ``fast_dev_run`` or when ``filename`` is ``None``.

    Returns the path written, or ``None``.
    """
    if filename is None or trainer.fast_dev_run:
        return None
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
