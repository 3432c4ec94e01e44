"""What a DataModule that wraps another DataModule (given as a config's nested ``class_path``) needs from the core.

Under LightningCLI every LightningDataModule that jsonargparse builds for the ``data`` key, the wrapped one included, is
built inside Lightning's "given hyper-parameters" context holding the *outer* ``data`` config, so the inner
DataModule's ``save_hyperparameters()`` stores the wrapper's arguments instead of its own (and a DataModule that reads
``self.hparams`` then fails: ``DigitsDataModule`` has no ``test_fraction``). The outer config holds the inner one under
the wrapper's argument name, with every default filled in by jsonargparse, so the inner hparams can be put right.
"""

from __future__ import annotations

from collections.abc import Mapping

import lightning as L


def repair_wrapped_hparams(inner: L.LightningDataModule, argument: str) -> None:
    """Give ``inner`` its own hyper-parameters when LightningCLI gave it its wrapper's.

    The symptom is ``inner.hparams`` naming another class in ``_class_path`` and holding ``argument`` (the wrapper's
    argument that received ``inner``) as a ``{"class_path", "init_args"}`` mapping; the repair replaces them by that
    mapping's ``init_args`` (and ``_class_path``), as LightningCLI stores a top-level DataModule's. Anything else is left
    alone (a DataModule built in Python, or one that saves its hyper-parameters explicitly).
    """
    hparams = inner.hparams
    nested = hparams.get(argument) if isinstance(hparams, Mapping) else None
    if not isinstance(nested, Mapping) or "class_path" not in nested:
        return
    own_path = f"{type(inner).__module__}.{type(inner).__qualname__}"
    if hparams.get("_class_path") == own_path:
        return
    fixed = {"_class_path": nested["class_path"], **dict(nested.get("init_args") or {}), **dict(nested.get("dict_kwargs") or {})}
    hparams.clear()
    hparams.update(fixed)
