"""What several callbacks share (DESIGN.md: a callback file never imports another callback file).

:class:`EvaluateDeployModel` is the base of the techniques whose deploy model differs from the
training-time one (fused blocks, removed channels, a final sparsity mask): ``validate`` / ``test`` /
``predict`` outside fit evaluate what would be deployed, not the loaded training-time weights.
"""

from __future__ import annotations

import abc

import lightning as L
from lightning.pytorch.callbacks import Callback
from typing_extensions import override


class EvaluateDeployModel(Callback, abc.ABC):
    """``validate``/``test``/``predict`` outside fit run on the deploy model: the loaded training-time
    weights are turned into it first (fused, pruned, masked) by the subclass's :meth:`_to_deploy_for_evaluation`."""

    @abc.abstractmethod
    def _to_deploy_for_evaluation(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Turn ``pl_module`` into its deploy form in place, unless fitting or already done."""

    @override
    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._to_deploy_for_evaluation(trainer, pl_module)

    @override
    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._to_deploy_for_evaluation(trainer, pl_module)

    @override
    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._to_deploy_for_evaluation(trainer, pl_module)
