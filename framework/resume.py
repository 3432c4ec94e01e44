"""Exact resume: what Lightning's checkpoints leave out so that a fit stopped mid-epoch continues as if never stopped.

What Lightning 2.x restores on ``fit(ckpt_path=...)``: the weights, optimizers, schedulers, callback states and
the loops' progress; a restart mid-epoch skips the batches already done by *count* (its loader iterator
starts the epoch again) unless the training loader has ``state_dict`` / ``load_state_dict``, which it then
saves with the loops and loads back — but only if the loader is built after the loops are restored, which
is not so when ``configure_optimizers`` reads ``trainer.estimated_stepping_batches`` (it builds the loader
early; every per-step schedule of litzoo does). It saves no random state.

:class:`ExactResume` saves the two missing pieces in every checkpoint and puts them back in
``on_train_start``, before a resumed fit fetches its first batch:

* the global random states (torch, CUDA, NumPy, Python; :mod:`litzoo.framework.random_state`), from which
  dropout, random masks and main-process augmentations are drawn;
* the position of each training loader that has ``state_dict`` / ``load_state_dict`` (litzoo's
  :class:`~litzoo.framework.data.loaders.ResumableLoader`), whenever Lightning built it.

Together with a resumable loader (every litzoo DataModule's), a fit killed mid-epoch and resumed ends with
the weights of the uninterrupted fit (``tests/test_resume.py``). ``litzoo fit`` adds the callback by default;
from Python, pass it to the Trainer, after the callbacks whose ``on_train_start`` draws random numbers.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_warn
from typing_extensions import override

from litzoo.framework.random_state import collect_rng_states, restore_rng_states


def _stateful_loaders(loaders: Any) -> list[Any]:
    """The loaders among Lightning's training iterables (one, or a list / dict of them) that have a state to save."""
    if isinstance(loaders, dict):
        loaders = list(loaders.values())
    elif not isinstance(loaders, (list, tuple)):
        loaders = [loaders]
    return [loader for loader in loaders if callable(getattr(loader, "state_dict", None)) and callable(getattr(loader, "load_state_dict", None))]


class ExactResume(L.Callback):
    """Saves the global random states and the training loaders' positions in every checkpoint; restores them on resume.

    The states are taken when a checkpoint is written and put back in ``on_train_start``, the last hook
    before a resumed fit fetches its first batch; what runs before it on a resume (``setup``,
    ``on_fit_start``, the sanity check, the ``on_train_start`` of callbacks listed before this one) may draw
    freely. Under DDP every rank restores the random states of rank 0, which wrote the checkpoint (ranks
    seeded alike by ``seed_everything`` and drawing alike hold the same states anyway); each rank's loader
    position is its own shard's, the same count on every rank. Stored as tensors and numbers only, so
    checkpoints still load with ``weights_only=True``.
    """

    def __init__(self) -> None:
        super().__init__()
        self._trainer: L.Trainer | None = None
        self._pending: dict[str, Any] | None = None

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._trainer = trainer

    @override
    def state_dict(self) -> dict[str, Any]:
        loaders = _stateful_loaders(self._trainer.train_dataloader) if self._trainer is not None else []
        return {"rng": collect_rng_states(), "train_loaders": [loader.state_dict() for loader in loaders]}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._pending is None:
            return
        state, self._pending = self._pending, None
        loaders = _stateful_loaders(trainer.train_dataloader)
        saved = state.get("train_loaders", [])
        if len(saved) == len(loaders):
            for loader, loader_state in zip(loaders, saved, strict=True):
                loader.load_state_dict(loader_state)
        else:
            rank_zero_warn(f"ExactResume: the checkpoint holds the positions of {len(saved)} training loader(s), this fit has {len(loaders)} resumable ones; they start from the beginning of the epoch")
        restore_rng_states(state["rng"])


__all__ = ["ExactResume"]
