"""What several callbacks share (DESIGN.md: a callback file never imports another callback file).

:class:`EvaluateDeployModel` is the base of the techniques whose deploy model differs from the
training-time one (fused blocks, removed channels, a final sparsity mask): ``validate`` / ``test`` /
``predict`` outside fit evaluate what would be deployed, not the loaded training-time weights, and a
deploy checkpoint they wrote (``deploy.ckpt``, ``pruned.ckpt``) loads back into the user's module.

:func:`check_stacking` is the one table of which litzoo callbacks can share a ``Trainer``: a pair
that cannot work (in either order, or in the order given) is refused in ``setup``, in one line,
before anything is trained, instead of failing after the whole fit. :func:`example_inputs` is the
input batch the callbacks that trace a model in ``setup`` use.
"""

from __future__ import annotations

import abc
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor
from typing_extensions import override

from litzoo.framework.data.batches import batch_inputs, setup_loader
from litzoo.framework.deploy import restore_deploy_structure_on_load
from litzoo.framework.errors import LitzooError


def example_inputs(trainer: L.Trainer, pl_module: L.LightningModule, who: str, stage: str = "fit") -> Tensor:
    """A batch with the model's input shape: ``example_input_array``, else the first batch of ``stage``.

    The loaders are not built yet when ``setup`` runs: the DataModule's or the module's own
    (:func:`litzoo.framework.data.batches.setup_loader`, whose error names what to pass instead).
    """
    example = getattr(pl_module, "example_input_array", None)
    if isinstance(example, Tensor):
        return example
    return batch_inputs(next(iter(setup_loader(trainer, stage, who))))


#: Pairs of litzoo callbacks that cannot share a Trainer, by class name, with the reason (either order).
INCOMPATIBLE: dict[frozenset[str], str] = {
    frozenset({"ResRepPruning", "StructuralReparam"}): (
        "both rebuild the model's conv-BN pairs during fit (compactors after the BatchNorms, branch blocks in place of the convs); "
        "train with StructuralReparam first, then prune its deploy checkpoint with ResRepPruning"
    ),
    frozenset({"GlobalSparseMomentum", "StructuralReparam"}): (
        "GSM's sparsity mask is on the training-time branch weights, and the kernels fused from sparse branches are not sparse; "
        "train with StructuralReparam first, then sparsify its deploy checkpoint with GlobalSparseMomentum"
    ),
    frozenset({"GlobalSparseMomentum", "ReparamFusion"}): (
        "GSM's sparsity mask is on the training-time weights, and the kernels fused from sparse branches are not sparse; "
        "fuse first (ReparamFusion alone), then sparsify the deploy checkpoint with GlobalSparseMomentum"
    ),
    frozenset({"GlobalSparseMomentum", "ResRepPruning"}): (
        "ResRep trains its compactors outside the optimizer that GSM's selection steers, and removes the channels of a mask GSM "
        "did not see; use one of them per run"
    ),
}

#: Pairs that work in one order only: ``(first, second)`` must stand in ``Trainer(callbacks=[...])`` in that order
#: (Lightning calls ``on_fit_end`` in list order).
ORDER: dict[tuple[str, str], str] = {
    ("ResRepPruning", "ReparamFusion"): (
        "when fit ends ResRep folds its compactors into the re-parameterizable blocks they sit in, which fusing the blocks "
        "first would drop (the pruned model comes out fused)"
    ),
    ("GlobalSparseMomentum", "Quantization"): (
        "GSM applies its final sparsity mask when fit ends, and quantizing before it would quantize the dense training-time weights"
    ),
}


def _stacking_name(callback: Callback) -> str:
    """The litzoo class a callback is (a user's subclass of ``ResRepPruning`` is ``ResRepPruning`` here)."""
    known = {name for pair in INCOMPATIBLE for name in pair} | {name for pair in ORDER for name in pair}
    return next((cls.__name__ for cls in type(callback).__mro__ if cls.__name__ in known), type(callback).__name__)


def check_stacking(trainer: L.Trainer, callback: Callback) -> None:
    """Refuse, in one line, a litzoo callback ``trainer`` holds together with ``callback`` that cannot work with it.

    Called by the callbacks' ``setup`` (``EvaluateDeployModel.setup`` for the deploy-changing ones), so
    the refusal comes before anything is trained and whichever of the two sets up first.

    Raises:
        LitzooError: the pair is in :data:`INCOMPATIBLE`, or in :data:`ORDER` and stands the other way round.
    """
    mine = _stacking_name(callback)
    names = [_stacking_name(c) for c in trainer.callbacks]
    for other in dict.fromkeys(names):
        if other == mine:
            continue
        reason = INCOMPATIBLE.get(frozenset({mine, other}))
        if reason is not None:
            raise LitzooError(f"{mine} and {other} cannot share a Trainer: {reason}")
        for first, second in ((mine, other), (other, mine)):
            reason = ORDER.get((first, second))
            if reason is not None and names.index(first) > names.index(second):
                raise LitzooError(f"{first} must come before {second} in Trainer(callbacks=[...]): {reason}")


class EvaluateDeployModel(Callback, abc.ABC):
    """``validate``/``test``/``predict`` outside fit run on the deploy model: the loaded training-time
    weights are turned into it first (fused, pruned, masked) by the subclass's :meth:`_to_deploy_for_evaluation`.

    Outside fit, a deploy checkpoint (``trainer.test(model, ckpt_path="deploy.ckpt")``) gets its recorded
    structure restored on the freshly built module right before its weights load
    (:func:`litzoo.framework.deploy.restore_deploy_structure_on_load`), so any LightningModule loads the
    fused or pruned weights without code of its own. Subclasses that override ``setup`` / ``teardown``
    call ``super()``.
    """

    _deploy_load_hook: Any = None

    @abc.abstractmethod
    def _to_deploy_for_evaluation(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Turn ``pl_module`` into its deploy form in place, unless fitting or already done."""

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._remove_deploy_load_hook()  # one left by a run that failed before its teardown
        check_stacking(trainer, self)
        if stage != TrainerFn.FITTING:
            self._deploy_load_hook = restore_deploy_structure_on_load(trainer, pl_module)

    @override
    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._remove_deploy_load_hook()

    def _remove_deploy_load_hook(self) -> None:
        if self._deploy_load_hook is not None:
            self._deploy_load_hook.remove()
            self._deploy_load_hook = None

    @override
    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._to_deploy_for_evaluation(trainer, pl_module)

    @override
    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._to_deploy_for_evaluation(trainer, pl_module)

    @override
    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._to_deploy_for_evaluation(trainer, pl_module)
