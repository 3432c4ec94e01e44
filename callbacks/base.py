"""What several callbacks share (DESIGN.md: a callback file never imports another callback file).

:class:`EvaluateDeployModel` is the base of the techniques whose deploy model differs from the
training-time one (fused blocks, removed channels, a final sparsity mask): ``validate`` / ``test`` /
``predict`` outside fit evaluate what would be deployed, not the loaded training-time weights, and a
deploy checkpoint they wrote (``deploy.ckpt``, ``pruned.ckpt``) loads back into the user's module.
"""

from __future__ import annotations

import abc
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from typing_extensions import override

from litzoo.framework.deploy import restore_deploy_structure_on_load


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
