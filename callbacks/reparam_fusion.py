"""Fuse re-parameterizable blocks when training ends, verify the deploy model, report what it saves.

Structural re-parameterization (RepVGG, ACNet, DBB, ...) trains a multi-branch model and deploys a
plain one. This callback does the switch for any LightningModule whose blocks implement
``fuse()`` (or the foreign ``reparameterize()`` / ``switch_to_deploy()``), see
``litzoo.framework.reparam.fuse_model``.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils._pytree import tree_leaves
from typing_extensions import override

from litzoo.callbacks.base import EvaluateDeployModel
from litzoo.framework.data.batches import reference_batch
from litzoo.framework.deploy import deploy_marker, save_deploy_checkpoint
from litzoo.framework.errors import LitzooError
from litzoo.framework.profiling import count_flops, count_parameters, eval_mode, format_count, measure_latency
from litzoo.framework.reparam import fuse_model, is_fusable
from litzoo.framework.reparam.verify import fusion_error


class ReparamFusion(EvaluateDeployModel):
    """Fuse every re-parameterizable block at the end of ``fit`` and before ``test``/``predict``.

    At the end of fit it (1) runs one real batch through the model in eval mode, (2) fuses the
    model in place, (3) runs the batch again and raises if the outputs differ by more than
    ``tolerance * max(1, max|y|)``, (4) logs the error and parameters / FLOPs / CPU latency before
    and after, (5) checks the fusion itself on a float64 copy with random BatchNorm statistics
    (:func:`litzoo.framework.reparam.verify.fusion_error`, independent of the trained values), and (6) writes ``deploy.ckpt`` (fused weights, marked so that
    loaders rebuild the fused structure first, :mod:`litzoo.framework.deploy`: ``trainer.test(model,
    ckpt_path=deploy.ckpt)`` with this callback works for any LightningModule). The training-time
    ``last.ckpt`` stays the resumable artefact. When ``validate``/``test``/``predict`` start outside fit, the loaded training-time
    weights are fused first, so evaluation runs on the deploy model.

    Args:
        tolerance: largest allowed output difference, relative to ``max(1, max|y|)``.
        measure_latency: time one forward pass before and after fusion (on the module's device).
        latency_repeats: timed repetitions (median reported).
        deploy_filename: file name of the fused checkpoint, written next to the other checkpoints
            (``None`` = do not write one).
        verify_float64: run the float64 random-BN check (5); it must agree to 1e-8 relative.
    """

    #: float64 agreement required from the random-BN check; round-off there is ~1e-14
    float64_tolerance = 1e-8

    def __init__(
        self,
        tolerance: float = 1e-4,
        measure_latency: bool = True,
        latency_repeats: int = 10,
        deploy_filename: str | None = "deploy.ckpt",
        verify_float64: bool = True,
    ) -> None:
        if tolerance <= 0:
            raise ValueError(f"tolerance must be positive, got {tolerance}")
        if latency_repeats < 1:
            raise ValueError(f"latency_repeats must be >= 1, got {latency_repeats}")
        self.tolerance = tolerance
        self.measure_latency = measure_latency
        self.latency_repeats = latency_repeats
        self.deploy_filename = deploy_filename
        self.verify_float64 = verify_float64
        self.fused = False
        self.report: dict[str, float] = {}
        self.deploy_path: Path | None = None

    # ---------------------------------------------------------------- fit end
    @override
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not any(is_fusable(m) for m in pl_module.modules()):
            rank_zero_warn("ReparamFusion: the model has no block with fuse(), reparameterize() or switch_to_deploy(); nothing to fuse")
            return
        inputs = reference_batch(trainer, pl_module, "ReparamFusion")
        before = self._measure(pl_module, inputs)
        float64_error = fusion_error(pl_module, inputs[:8], relative=True) if self.verify_float64 else None
        with eval_mode(pl_module), torch.no_grad():
            reference = [t.clone() for t in tree_leaves(pl_module(inputs)) if isinstance(t, torch.Tensor)]
        fuse_model(pl_module, inplace=True)
        self.fused = True
        with eval_mode(pl_module), torch.no_grad():
            fused_out = [t for t in tree_leaves(pl_module(inputs)) if isinstance(t, torch.Tensor)]
        error = max((a - b).abs().max().item() for a, b in zip(reference, fused_out, strict=True))
        scale = max(1.0, max(t.abs().max().item() for t in reference))
        after = self._measure(pl_module, inputs)
        self.report = {"max_abs_error": error, **{f"{k}_before": v for k, v in before.items()}, **{f"{k}_after": v for k, v in after.items()}}
        if float64_error is not None:
            self.report["float64_random_bn_error"] = float64_error
        if "latency_ms_before" in self.report:
            self.report["latency_ratio"] = self.report["latency_ms_after"] / self.report["latency_ms_before"]
        self._log(trainer)
        if error > self.tolerance * scale:
            raise LitzooError(
                f"ReparamFusion: fused outputs differ from the training-time model by {error:.3g} "
                f"(allowed {self.tolerance * scale:.3g}); a block's fuse() is not equivalent to its forward in eval mode"
            )
        if float64_error is not None and float64_error > self.float64_tolerance:
            raise LitzooError(
                f"ReparamFusion: in float64 with random BatchNorm statistics the fused model differs by {float64_error:.3g} "
                f"(relative; allowed {self.float64_tolerance:g}): a block's fuse() is not exact"
            )
        self._save_deploy_checkpoint(trainer)

    def _measure(self, pl_module: L.LightningModule, inputs: torch.Tensor) -> dict[str, float]:
        sample = inputs[:1]
        out = {"params": float(count_parameters(pl_module)), "flops": float(count_flops(pl_module, sample))}
        if self.measure_latency:
            out["latency_ms"] = 1e3 * measure_latency(pl_module, inputs, repeats=self.latency_repeats)
        return out

    def _log(self, trainer: L.Trainer) -> None:
        r = self.report
        line = (
            f"ReparamFusion: max |fused - unfused| = {r['max_abs_error']:.3g}; "
            f"params {format_count(r['params_before'])} -> {format_count(r['params_after'])}; "
            f"FLOPs/sample {format_count(r['flops_before'])} -> {format_count(r['flops_after'])}"
        )
        if "latency_ratio" in r:
            line += f"; latency {r['latency_ms_before']:.2f} -> {r['latency_ms_after']:.2f} ms (x{r['latency_ratio']:.2f})"
        rank_zero_info(line)
        for logger in trainer.loggers:
            logger.log_metrics({f"fusion/{k}": v for k, v in r.items()}, step=trainer.global_step)

    def _save_deploy_checkpoint(self, trainer: L.Trainer) -> None:
        # marked so that loaders rebuild the fused structure before loading the weights
        self.deploy_path = save_deploy_checkpoint(trainer, self.deploy_filename, "ReparamFusion", deploy_marker(fused=True))

    # ---------------------------------------------------- evaluation outside fit
    @override
    def _to_deploy_for_evaluation(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.FITTING or not any(is_fusable(m) for m in pl_module.modules()):
            return
        fuse_model(pl_module, inplace=True)
        self.fused = True
        rank_zero_info(f"ReparamFusion: evaluating the fused model ({format_count(count_parameters(pl_module))} params)")
