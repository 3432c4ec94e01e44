"""Safe loading of checkpoint files (``weights_only=True``, one-line errors that name the file), the one
check of "does this state dict fit the model", and the registry of official key maps.

* :func:`load_checkpoint` / :func:`state_dict_from` / :func:`unwrap_state_dict`: reading files.
* :func:`check_state_dict` / :func:`load_state_dict_checked`: missing, unexpected and mis-shaped keys,
  with what a caller tolerates (a decoder an encoder-only file lacks, BN counters of old files, a head of
  another shape when fine-tuning) said as ``fnmatch`` patterns; one :class:`LitzooError` otherwise.
* :func:`register_official_key_map` / :func:`convert_official_state_dict` / :func:`load_official_weights`:
  authors release weights under their own module names; each method's key map lives next to its model
  and registers itself here when its file is imported (timm's ``checkpoint_filter_fn`` idea), so the core
  knows no method by name.

The format of deploy checkpoints (fused, pruned) is :mod:`litzoo.framework.deploy`'s.
"""

from __future__ import annotations

import fnmatch
import importlib
import pickle
import re
import sys
import zipfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from litzoo.framework.errors import LitzooError


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


# ------------------------------------------------------------------ does a state dict fit a model

#: BatchNorm's step counter, absent from checkpoints written before PyTorch 0.4.1 (and from some
#: released files); a model missing only these loses nothing (they matter only with ``momentum=None``).
BN_COUNTERS = "*num_batches_tracked"


def _matches(key: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(key, pattern) for pattern in patterns)


def _listing(keys: Iterable[str], limit: int) -> str:
    keys = list(keys)
    return ", ".join(keys[:limit]) + (" ..." if len(keys) > limit else "")


@dataclass(frozen=True)
class StateDictFit:
    """How a state dict fits a model's: each list sorted; the ``tolerated_*`` ones are not problems.

    Attributes:
        missing: model keys the file lacks.
        unexpected: file keys the model does not have.
        wrong_shape: keys in both with other shapes.
        tolerated_missing: model keys the file may lack; they keep their initialisation.
        tolerated_unexpected: file keys the caller ignores.
        tolerated_shape: keys whose other shape the caller accepts; the model's keep their initialisation.
    """

    missing: tuple[str, ...] = ()
    unexpected: tuple[str, ...] = ()
    wrong_shape: tuple[str, ...] = ()
    tolerated_missing: tuple[str, ...] = ()
    tolerated_unexpected: tuple[str, ...] = ()
    tolerated_shape: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.wrong_shape)

    @property
    def problems(self) -> int:
        return len(self.missing) + len(self.unexpected) + len(self.wrong_shape)

    def summary(self, limit: int = 4) -> str:
        """``"missing: a, b ...; unexpected: c; other shapes: d"`` with the first ``limit`` keys of each kind."""
        kinds = (("missing", self.missing), ("unexpected", self.unexpected), ("other shapes", self.wrong_shape))
        return "; ".join(f"{kind}: {_listing(keys, limit)}" for kind, keys in kinds if keys)


def check_state_dict(
    state: Mapping[str, torch.Tensor],
    target: Mapping[str, torch.Tensor],
    may_miss: Iterable[str] = (),
    may_reshape: Iterable[str] = (),
    may_ignore: Iterable[str] = (),
) -> StateDictFit:
    """Compare a state dict with a model's (``model.state_dict()``); nothing is loaded.

    Args:
        state: the weights read from a file.
        target: the model's state dict.
        may_miss: ``fnmatch`` patterns of model keys the file may lack (``"decoder_*"``, :data:`BN_COUNTERS`).
        may_reshape: patterns of keys whose shape may differ (a classifier head for other classes).
        may_ignore: patterns of file keys the model may lack (weights this model does not use).
    """
    may_miss, may_reshape, may_ignore = tuple(may_miss), tuple(may_reshape), tuple(may_ignore)
    missing = sorted(k for k in target if k not in state)
    unexpected = sorted(k for k in state if k not in target)
    shapes = sorted(k for k in state if k in target and tuple(state[k].shape) != tuple(target[k].shape))

    def split(keys: list[str], patterns: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
        tolerated = tuple(k for k in keys if _matches(k, patterns))
        return tuple(k for k in keys if k not in tolerated), tolerated

    missing_, tolerated_missing = split(missing, may_miss)
    unexpected_, tolerated_unexpected = split(unexpected, may_ignore)
    shapes_, tolerated_shape = split(shapes, may_reshape)
    return StateDictFit(missing_, unexpected_, shapes_, tolerated_missing, tolerated_unexpected, tolerated_shape)


def load_state_dict_checked(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    path: str | Path,
    what: str | None = None,
    may_miss: Iterable[str] = (),
    may_reshape: Iterable[str] = (),
    may_ignore: Iterable[str] = (),
) -> StateDictFit:
    """Load ``state`` into ``model`` if it fits (see :func:`check_state_dict` for what may differ).

    Tolerated keys are left out: the model's own values stay where the file has none or another shape.

    Args:
        model: the module to load into.
        state: the weights read from ``path``.
        path: the file, named in the error.
        what: how the error calls the model, after "this" (default: its class name).

    Returns:
        The fit, so that the caller can report what it tolerated.

    Raises:
        LitzooError: ``checkpoint '<path>' does not fit this <what> (missing: ...; unexpected: ...;
            other shapes: ...)``, the first keys of each kind.
    """
    fit = check_state_dict(state, model.state_dict(), may_miss, may_reshape, may_ignore)
    if not fit.ok:
        raise LitzooError(f"checkpoint '{path}' does not fit this {what or type(model).__name__} ({fit.summary()})")
    _load_fitting(model, state, fit)
    return fit


def _load_fitting(model: nn.Module, state: Mapping[str, torch.Tensor], fit: StateDictFit) -> None:
    skip = set(fit.tolerated_unexpected) | set(fit.tolerated_shape)
    model.load_state_dict({k: v for k, v in state.items() if k not in skip}, strict=not (fit.tolerated_missing or fit.tolerated_shape))


# ------------------------------------------------------------------ official released weights
#
# A key map takes an official state dict (already unwrapped, see unwrap_state_dict) and returns it in
# litzoo's names; it may unwrap a method's own wrapper ({'model_state': ...}), refuse a file that is
# not of its method, and drop keys it cannot load (with a warning). The reparameterization papers'
# maps rename key *segments* (:func:`rename_segments`), so they work wherever the block sits in a network.

#: ``state dict -> state dict in litzoo's names``
OfficialKeyMap = Callable[[Mapping[str, torch.Tensor]], dict[str, torch.Tensor]]

_OFFICIAL_KEY_MAPS: dict[str, OfficialKeyMap] = {}


def register_official_key_map(name: str, key_map: OfficialKeyMap | None = None) -> Any:
    """Register the key map of a method's released weights under ``name``; also a decorator::

        @register_official_key_map("mae")
        def official_mae_key_map(state): ...

    The map lives next to its model and is registered when that file is imported. Registering
    another function under a taken name raises ``ValueError`` (the same function again, e.g. from a
    reloaded module, replaces it).
    """

    def register(fn: OfficialKeyMap) -> OfficialKeyMap:
        old = _OFFICIAL_KEY_MAPS.get(name)
        if old is not None and (old.__module__, old.__qualname__) != (fn.__module__, fn.__qualname__):
            raise ValueError(f"an official key map is already registered as '{name}' ({old.__module__}.{old.__qualname__})")
        _OFFICIAL_KEY_MAPS[name] = fn
        return fn

    return register if key_map is None else register(key_map)


def official_key_maps() -> tuple[str, ...]:
    """The names with a registered key map (those whose module has been imported)."""
    return tuple(sorted(_OFFICIAL_KEY_MAPS))


def official_key_map(name: str) -> OfficialKeyMap:
    """The registered key map of ``name``.

    Raises:
        ValueError: nothing is registered under ``name``; the message says which module registers it.
    """
    if name not in _OFFICIAL_KEY_MAPS:
        raise ValueError(
            f"unknown method '{name}' for official checkpoints: no key map is registered under that name "
            f"(registered: {', '.join(official_key_maps()) or 'none'}); a method registers its map when its module is "
            f"imported: import litzoo.modules.{name} (or litzoo.framework.reparam for the acb / dbb / repvgg blocks) first"
        )
    return _OFFICIAL_KEY_MAPS[name]


def rename_segments(key: str, table: Mapping[str, str | None]) -> str:
    """Rename the dotted segments of ``key`` found in ``table``; a ``None`` target drops the segment (the
    official deploy-time conv inside a block becomes the module that replaces the block after ``fuse()``)."""
    parts = []
    for segment in key.split("."):
        if segment in table:
            if table[segment] is not None:
                parts.append(table[segment])
        else:
            parts.append(segment)
    return ".".join(parts)


def rename_keys(state: Mapping[str, torch.Tensor], rename: Callable[[str], str], method: str) -> dict[str, torch.Tensor]:
    """``{rename(key): value}``, refusing two keys that map to one.

    Raises:
        LitzooError: two official keys map to the same litzoo key.
    """
    converted: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        new_key = rename(key)
        if new_key in converted:
            raise LitzooError(f"official {method} state dict: keys '{key}' and another one both map to '{new_key}'")
        converted[new_key] = value
    return converted


def convert_official_state_dict(method: str, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the keys of an official released state dict to litzoo's module names, with the key map
    registered under ``method`` (see :func:`register_official_key_map`).

    Train-time and deploy-time checkpoints are both mapped; deploy keys come out as the keys of
    the model after :func:`litzoo.framework.reparam.fuse_model`.

    Args:
        method: a registered name: ``"repvgg"``, ``"acb"``, ``"dbb"`` (registered by
            ``litzoo.framework.reparam``), ``"repmlp"``, ``"mae"``, ``"hiera"``, ``"audio_mae"`` (registered by
            ``litzoo.modules.<method>``), or a user's own.
        state_dict: the official weights (already unwrapped, see :func:`unwrap_state_dict`).

    Raises:
        ValueError: no key map is registered under ``method``.
    """
    return official_key_map(method)(state_dict)


def _one_level_down(key: str, target: Mapping[str, torch.Tensor]) -> str:
    prefix, _, leaf = key.rpartition(".")
    nested = f"{prefix}.conv.{leaf}" if prefix else f"conv.{leaf}"
    return nested if key not in target and nested in target else key


def load_official_weights(model: nn.Module, method: str, path: str | Path, head: str | None = None) -> nn.Module:
    """Load an official released checkpoint into a litzoo model, train-time or deploy-time.

    The file is loaded with ``weights_only=True``; its keys are converted with
    :func:`convert_official_state_dict`. When they describe the deploy (fused) structure, ``model``
    is fused in place with :func:`litzoo.framework.reparam.fuse_model` first. A classifier head whose
    shape differs (fine-tuning on other classes) keeps its fresh initialisation, with a warning;
    BatchNorm counters missing from old files are not needed.

    Args:
        model: the training-time litzoo model of the same architecture.
        method: see :func:`convert_official_state_dict`.
        path: the released ``.pth`` / ``.pt`` file.
        head: name of the classifier sub-module (``"linear"`` for RepVGG, ``"head"`` for RepMLPNet).

    Returns:
        ``model`` itself or, for a deploy-time checkpoint, its fused form.

    Raises:
        LitzooError: the file is unreadable, or its weights do not fit the model (names the file,
            the closer of the two forms, and its first missing / unexpected / mis-shaped keys).
    """
    # imported here: the reparameterization blocks register their key maps with this module at import
    from litzoo.framework.reparam.fuse_model import fuse_model

    state = convert_official_state_dict(method, unwrap_state_dict(load_checkpoint(path), path))
    heads = (f"{head}.*",) if head is not None else ()
    candidates = [("train-time", model)]
    if any(k not in model.state_dict() for k in state):
        candidates.append(("deploy-time", fuse_model(model, inplace=False)))
    reports = []
    for form, candidate in candidates:
        target = candidate.state_dict()
        if form == "deploy-time":
            # A block with a nonlinearity fuses to Sequential(conv, nonlinear): its conv is one level down.
            state = {_one_level_down(k, target): v for k, v in state.items()}
        fit = check_state_dict(state, target, may_miss=(BN_COUNTERS,), may_reshape=heads)
        if fit.ok:
            if fit.tolerated_shape:  # only the head differs: fine-tuning on other classes
                rank_zero_warn(f"{path}: the classifier head '{head}' has other shapes than the model's; it keeps its fresh initialisation")
            _load_fitting(candidate, state, fit)
            return candidate
        # which form the file is closer to tells the user more than the other form's mismatch
        missing, unexpected, wrong = list(fit.missing[:3]), list(fit.unexpected[:3]), list(fit.wrong_shape[:3])
        reports.append((fit.problems, f"as {form} weights: missing {missing}, unexpected {unexpected}, wrong shape {wrong}"))
    raise LitzooError(f"checkpoint '{path}' does not fit this {method} model ({min(reports)[1]})")


__all__ = [
    "BN_COUNTERS",
    "OfficialKeyMap",
    "StateDictFit",
    "check_state_dict",
    "convert_official_state_dict",
    "load_checkpoint",
    "load_official_weights",
    "load_state_dict_checked",
    "official_key_map",
    "official_key_maps",
    "register_official_key_map",
    "rename_keys",
    "rename_segments",
    "state_dict_from",
    "unwrap_state_dict",
]


# ------------------------------------------------------------------ which classes a checkpoint may name
#
# A Lightning checkpoint written by LightningCLI names its module's class (``hyper_parameters["_class_path"]``).
# Rebuilding calls that class with the file's values, and importing a module runs its code: so a class path
# read from a file is first looked up among the modules already imported (the config's own class, litzoo's
# classes), and only litzoo's own packages or classes registered here are imported or called.

def qualified_name(cls: type) -> str:
    """``litzoo.modules.repvgg.RepVGGClassifier``: where ``cls`` is defined."""
    return f"{cls.__module__}.{cls.__qualname__}"


def loaded_class(class_path: str) -> type | None:
    """The class at ``class_path`` when its module is already imported, else ``None`` (nothing is imported)."""
    module, _, name = class_path.rpartition(".")
    found = getattr(sys.modules.get(module), name, None) if module else None
    return found if isinstance(found, type) else None


def checkpoint_class_path(checkpoint: Mapping[str, Any]) -> str | None:
    """The class path LightningCLI recorded in a checkpoint's hyper-parameters, or ``None`` (a checkpoint
    written by a plain ``Trainer`` records no class)."""
    hparams = checkpoint.get("hyper_parameters")
    value = hparams.get("_class_path") if isinstance(hparams, Mapping) else None
    return value if isinstance(value, str) else None


def _contents(checkpoint: Mapping[str, Any]) -> str:
    """A few words on what a dict that is not a Lightning checkpoint holds."""
    tensors = sum(isinstance(value, torch.Tensor) for value in checkpoint.values())
    if tensors == len(checkpoint) and tensors:
        return f"a plain state dict of {tensors} tensors"
    keys = ", ".join(repr(k) for k in list(checkpoint)[:4]) + (", ..." if len(checkpoint) > 4 else "")
    return f"a dict with keys {keys}" if checkpoint else "an empty dict"


def check_checkpoint_class(path: str | Path, checkpoint: Mapping[str, Any], expected: type, what: str = "the config asks for") -> None:
    """Refuse ``checkpoint`` (loaded from ``path``) unless it is a Lightning checkpoint of ``expected`` (or a subclass).

    A checkpoint that records no class (written by a plain ``Trainer``) passes: Lightning's strict loading of its
    weights then checks it.

    Raises:
        LitzooError: one line naming ``path``, what it holds and ``expected``: the file has no
            ``pytorch-lightning_version`` / ``state_dict`` (a plain state dict), or it holds another class.
    """
    wanted = f"{expected.__name__} ({qualified_name(expected)})"
    if "pytorch-lightning_version" not in checkpoint or not isinstance(checkpoint.get("state_dict"), Mapping):
        raise LitzooError(
            f"checkpoint '{path}' is not a Lightning checkpoint (no 'pytorch-lightning_version' and 'state_dict'; it holds "
            f"{_contents(checkpoint)}), but {what} a {wanted}"
        )
    held = checkpoint_class_path(checkpoint)
    if held is None or held == qualified_name(expected):
        return
    cls = loaded_class(held)
    if cls is not None and issubclass(cls, expected):
        return
    raise LitzooError(f"checkpoint '{path}' holds a {held.rpartition('.')[2]} ({held}), but {what} a {wanted}")


#: packages whose LightningModule / LightningDataModule classes a checkpoint may name (imported on demand)
TRUSTED_PACKAGES = ("litzoo.modules.", "litzoo.datamodules.")
_CLASS_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+")
_registered: dict[str, type] = {}


def register_checkpoint_class(cls: type) -> type:
    """Let :func:`litzoo.framework.export.load_lightning_module` (``litzoo export``) rebuild checkpoints of ``cls``, a LightningModule or
    LightningDataModule of your own; usable as a class decorator.

    A checkpoint names the class to rebuild (``hyper_parameters["_class_path"]``), and rebuilding calls it
    with the checkpoint's values: only classes that litzoo was told to trust are called. Trusted without
    registration: litzoo's own (``litzoo.modules.*``, ``litzoo.datamodules.*``) and, as in Lightning's
    ``load_from_checkpoint``, a subclass of the expected Lightning class that is already imported.
    """
    if not (isinstance(cls, type) and issubclass(cls, (L.LightningModule, L.LightningDataModule))):
        raise TypeError(f"register_checkpoint_class takes a LightningModule or LightningDataModule subclass, got {cls!r}")
    _registered[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return cls


def trusted_class(class_path: Any, base: type, path: Path, what: str) -> type:
    """The class ``class_path`` names, when it is a ``base`` subclass litzoo may call; a one-line refusal otherwise.

    Nothing is imported for a class path outside litzoo's packages: importing a module runs its code,
    so the decision is made on the string, the registry and ``sys.modules`` first (Lightning's rule
    for checkpoints: resolve only what is already imported, :func:`loaded_class`), and the class is checked after.
    """
    if not isinstance(class_path, str) or not _CLASS_PATH.fullmatch(class_path):
        raise LitzooError(f"checkpoint '{path}' names {what} class {class_path!r}, which is not a class path; refused")
    module_name, _, name = class_path.rpartition(".")
    cls = _registered.get(class_path) or loaded_class(class_path)
    if not (isinstance(cls, type) and issubclass(cls, base)):
        if not class_path.startswith(TRUSTED_PACKAGES):
            raise LitzooError(
                f"checkpoint '{path}' names {what} class '{class_path}', which litzoo does not import or call: only {base.__name__} "
                f"classes of {' / '.join(p.rstrip('.') for p in TRUSTED_PACKAGES)}, already imported ones and those registered with "
                "litzoo.framework.checkpoints.register_checkpoint_class are rebuilt"
            )
        try:
            cls = getattr(importlib.import_module(module_name), name)
        except (ImportError, AttributeError):
            raise LitzooError(f"checkpoint '{path}' names {what} class '{class_path}', which cannot be imported") from None
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise LitzooError(f"checkpoint '{path}' names {what} class '{class_path}', which is not a {base.__name__}; refused")
    return cls
