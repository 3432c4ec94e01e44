"""Safe loading of checkpoint files: ``weights_only=True`` and one-line errors that name the file."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from framework.errors import LitzooError


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
