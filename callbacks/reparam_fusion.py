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
from typing_extensions import override

from litzoo.callbacks.base import EvaluateDeployModel
from litzoo.framework.data.batches import reference_batch
from litzoo.framework.deploy import check_deploy_filename, deploy_marker, save_deploy_checkpoint
from litzoo.framework.errors import LitzooError
from litzoo.framework.profiling import compare_latency, count_flops, count_parameters, eval_mode, format_count
from litzoo.framework.reparam import fuse_model, is_fusable
from litzoo.framework.reparam.verify import detached_copy, fusion_error
from litzoo.framework.verification import check_finite, max_abs_difference, output_scale, output_tensors


class ReparamFusion(EvaluateDeployModel):
    """Fuse every re-parameterizable block at the end of ``fit`` and before ``test``/``predict``.

    At the end of fit it (1) runs one real batch through the model in eval mode (non-finite outputs,
    a diverged run, stop it here: nothing is fused or written), (2) fuses the model in place, (3) runs
    the batch again and raises if the outputs differ by more than ``tolerance * max(1, max|y|)`` or
    are not finite, (4) logs the error and parameters / FLOPs / latency before and after (the two models
    timed in alternating rounds, on one CPU thread: :func:`litzoo.framework.profiling.compare_latency`), (5) checks the fusion itself on a float64 copy with random BatchNorm statistics
    (:func:`litzoo.framework.reparam.verify.fusion_error`, independent of the trained values), and (6) writes ``deploy.ckpt`` (fused weights, marked so that
    loaders rebuild the fused structure first, :mod:`litzoo.framework.deploy`: ``trainer.test(model,
    ckpt_path=deploy.ckpt)`` with this callback works for any LightningModule). The training-time
    ``last.ckpt`` stays the resumable artefact. When ``validate``/``test``/``predict`` start outside fit, the loaded training-time
    weights are fused first, so evaluation runs on the deploy model.

    Args:
        tolerance: largest allowed output difference, relative to ``max(1, max|y|)``.
        measure_latency: time one forward pass before and after fusion (on the module's device; a
            copy of the training-time model is kept until both are timed).
        latency_repeats: timed rounds per model (the medians' ratio is logged as ``fusion/latency_ratio``).
        deploy_filename: file name of the fused checkpoint, written next to the other checkpoints
            (``None`` = do not write one); a plain file name, no folder.
        verify_float64: run the float64 random-BN check (5); it must agree to 1e-8 relative.
    """

    #: float64 agreement required from the random-BN check; round-off there is ~1e-14
    float64_tolerance = 1e-8
    #: a timed latency sample lasts at least this long (several forwards of a small model)
    latency_sample_seconds = 5e-3

    def __init__(
        self,
        tolerance: float = 1e-4,
        measure_latency: bool = True,
        latency_repeats: int = 15,
        deploy_filename: str | None = "deploy.ckpt",
        verify_float64: bool = True,
    ) -> None:
        if tolerance <= 0:
            raise ValueError(f"tolerance must be positive, got {tolerance}")
        if latency_repeats < 1:
            raise ValueError(f"latency_repeats must be >= 1, got {latency_repeats}")
        check_deploy_filename(deploy_filename, "ReparamFusion")
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
        before = self._counts(pl_module, inputs)
        with eval_mode(pl_module), torch.no_grad():
            reference = [t.clone() for t in output_tensors(pl_module(inputs))]
        # a diverged model (NaN weights) must not pass as "fused exactly" nor be written as a deploy model
        check_finite(reference, "ReparamFusion: the trained model's outputs on a real batch", "training diverged; nothing fused, no deploy checkpoint written")
        float64_error = fusion_error(pl_module, inputs[:8], relative=True) if self.verify_float64 else None
        # the training-time model is kept until both are timed together (see compare_latency)
        unfused = detached_copy(pl_module) if self.measure_latency else None
        fuse_model(pl_module, inplace=True)
        self.fused = True
        with eval_mode(pl_module), torch.no_grad():
            fused_out = output_tensors(pl_module(inputs))
        check_finite(fused_out, "ReparamFusion: the fused model's outputs on a real batch", "a block's fuse() produced non-finite weights; no deploy checkpoint written")
        error = max_abs_difference(reference, fused_out)
        scale = output_scale(reference)
        after = self._counts(pl_module, inputs)
        self.report = {"max_abs_error": error, **{f"{k}_before": v for k, v in before.items()}, **{f"{k}_after": v for k, v in after.items()}}
        if unfused is not None:
            seconds_before, seconds_after = compare_latency(
                [unfused, pl_module], inputs, rounds=self.latency_repeats, min_sample_seconds=self.latency_sample_seconds
            )
            del unfused
            self.report.update(
                {"latency_ms_before": 1e3 * seconds_before, "latency_ms_after": 1e3 * seconds_after, "latency_ratio": seconds_after / seconds_before}
            )
        if float64_error is not None:
            self.report["float64_random_bn_error"] = float64_error
        self._log(trainer)
        if not error <= self.tolerance * scale:
            raise LitzooError(
                f"ReparamFusion: fused outputs differ from the training-time model by {error:.3g} "
                f"(allowed {self.tolerance * scale:.3g}); a block's fuse() is not equivalent to its forward in eval mode"
            )
        if float64_error is not None and not float64_error <= self.float64_tolerance:
            raise LitzooError(
                f"ReparamFusion: in float64 with random BatchNorm statistics the fused model differs by {float64_error:.3g} "
                f"(relative; allowed {self.float64_tolerance:g}): a block's fuse() is not exact"
            )
        self._save_deploy_checkpoint(trainer)

    def _counts(self, pl_module: L.LightningModule, inputs: torch.Tensor) -> dict[str, float]:
        return {"params": float(count_parameters(pl_module)), "flops": float(count_flops(pl_module, inputs[:1]))}

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
