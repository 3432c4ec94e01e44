"""Global Sparse Momentum SGD: train any model so that a global magnitude mask costs (almost) nothing.

GSM (Ding, Ding, Zhou, Guo, Liu, Han, NeurIPS 2019, "Global Sparse Momentum SGD for Pruning Very
Deep Neural Networks", arXiv:1909.12778; official code DingXiaoH/GSM-SGD, ``gsm/gsm_train.py``
``train_one_step``) modifies the momentum-SGD update instead of the loss. At every optimizer step
only the ``Q`` weights with the largest first-order Taylor score ``|w * dL/dw|`` over the *whole*
network ("active" weights) receive their objective gradient; every other ("passive") weight
receives only the weight decay ``lambda * w``, through momentum, and so shrinks geometrically
towards zero. Which weights are active is decided again at each step, so a weight can come back.
At the end the ``Q`` largest weights (by magnitude, again globally) are kept and the rest are set
exactly to zero, without fine-tuning. Per-layer sparsity is not a hyper-parameter: it follows from
the global ranking.
"""

from __future__ import annotations

import functools
import math
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from torch.utils._pytree import tree_leaves
from typing_extensions import override

from litzoo.callbacks.base import EvaluateDeployModel
from litzoo.framework.data.batches import reference_batch
from litzoo.framework.deploy import check_deploy_filename, save_deploy_checkpoint
from litzoo.framework.errors import LitzooError
from litzoo.framework.profiling import eval_mode

Targets = list[tuple[str, nn.Parameter]]


class GlobalSparseMomentum(EvaluateDeployModel):
    """Global Sparse Momentum SGD (Ding et al., NeurIPS 2019): unstructured global pruning by gradient selection.

    Targets are all parameters of dimension 2 or 4 that require grad (linear / embedding and conv
    weights, depthwise included; biases, norms and 1-d / 3-d / 5-d tensors are left dense), minus
    the ``exclude`` patterns. With ``N`` target weights, ``Q = round((1 - sparsity) * N)`` are kept.

    Every optimizer step, in ``on_before_optimizer_step`` (after DDP's all-reduce, after AMP's
    unscale, once per step under gradient accumulation):

    1. ``T = |w * g|`` for every target weight (``g``: the objective gradient only);
    2. ``threshold`` = the ``Q``-th largest ``T`` over all targets (global, not per layer);
    3. ``g <- g * 1[T >= threshold]``; every target also receives the decay ``lambda * w``: the
       optimizer's own weight decay (``weight_decay=None``) or added here (a float);
    4. the ordinary momentum-SGD step of the optimizer.

    When fit ends the ``Q`` largest ``|w|`` over all targets are kept and the rest set exactly to
    zero (ties broken by parameter order, then position), the change of the outputs on one real
    batch is measured, per-layer densities are printed and logged, and ``deploy.ckpt`` (weights
    only) is written. Validation *during* fit runs on the masked weights (the dense ones are put
    back right after), so ``val/*`` metrics and ModelCheckpoint's ``best`` follow the model that
    will be deployed, while checkpoints keep the dense, resumable weights.
    ``validate``/``test``/``predict`` outside fit apply the same mask to the loaded weights first,
    so a training checkpoint is evaluated as the sparse model.

    **The decay budget.** A passive weight under momentum SGD follows
    ``w_T ~ w_0 * exp(-B)``, ``B = sum_t lr_t * lambda / (1 - momentum)``: after a run it has
    shrunk by ``exp(-B)``. The final mask only costs nothing if the weights it removes are already
    near zero, i.e. ``B >~ 8`` (``exp(-8) = 3e-4``). The paper's ``lambda = 1e-4`` reaches that on
    CIFAR with 600 epochs (``B ~ 8`` for the official ResNet-56 schedule); on a small data set the
    same value does nothing and GSM degrades to one-shot magnitude pruning. Choose

        lambda = B * (1 - momentum) / (steps * mean_lr),   B ~ 10

    (``mean_lr = lr / 2`` for a cosine schedule to 0). The estimate is printed at the start of
    training (a warning if below 8) and the realised ``B`` is logged as ``gsm/decay_budget``.
    Reach ``B`` with many small steps rather than a few large ones: the rule assumes a small
    per-step rate ``lr * lambda / (1 - momentum)``, and the active weights feel the same decay.
    In a network where every conv feeds a BatchNorm, shrinking a whole filter changes nothing, so
    the decay first shrinks all weights together (raising the effective lr) and the passive ones
    fall behind the active ones only once the norms have settled: a ResNet-18 trained from
    scratch on digits needed ~2400 steps for ``B = 10`` (``configs/gsm/digits.yaml``); the same
    ``B`` in 240 or 600 steps left < 1% of the weights negligible and the mask cost 40-80 points.
    Watch ``gsm/sparsity`` (the share already negligible): the closer it ends to ``sparsity``, the
    cheaper the final mask (0.74 of 0.9 in that config, at no accuracy cost). The paper uses
    momentum 0.98 for the GSM stage (and starts from a trained dense model).

    Logged every ``log_every_n_steps``: ``gsm/threshold`` (the Taylor-score threshold of the step),
    ``gsm/decay_budget`` (realised ``B``; the smallest over the optimizer's target groups) and
    ``gsm/sparsity``: the fraction of target weights already negligible, ``|w| < 1e-3 * w_Q``
    with ``w_Q`` the ``Q``-th largest magnitude (the weakest weight the final mask would keep).
    It rises to ``sparsity`` when the final mask has nothing left to remove.

    Requirements (checked when fit starts, with a one-line error): one optimizer, a
    ``torch.optim.SGD`` with momentum > 0 on every target's group (an adaptive optimizer rescales
    the tiny passive updates and breaks the geometric decay); with ``weight_decay=None`` a
    positive optimizer weight decay on every target's group; with a float ``weight_decay`` an
    optimizer weight decay of 0 there (never both: that would decay twice). Gradient clipping runs
    after the surgery and clips the selected gradients (plus ``lambda * w`` when added here).
    A target without a gradient at a step (unused in the forward) gets a zero objective gradient,
    so it decays like any passive weight.

    Args:
        sparsity: fraction of the target weights that end exactly zero, in (0, 1) (0.9 = the paper's 10x).
        weight_decay: ``None`` = use the optimizer's weight decay as ``lambda``; a float = add
            ``lambda * w`` to the target gradients here (the optimizer's must then be 0 on them).
        exclude: ``fnmatch`` patterns of parameter names (as in ``pl_module.named_parameters()``,
            e.g. ``"net.fc.*"``) kept dense and out of the budget.
        deploy_filename: file name of the sparse weights-only checkpoint, written next to the other
            checkpoints (``None`` = do not write one); a plain file name, no folder.
    """

    #: the decay budget below which passive weights are not driven to ~0 (exp(-8) = 3.4e-4)
    min_decay_budget = 8.0
    #: ``gsm/sparsity`` counts weights below this fraction of the weakest kept magnitude
    negligible = 1e-3

    def __init__(
        self,
        sparsity: float = 0.9,
        weight_decay: float | None = None,
        exclude: list[str] | None = None,
        deploy_filename: str | None = "deploy.ckpt",
    ) -> None:
        if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0.0 < sparsity < 1.0:
            raise ValueError(f"sparsity must be a fraction in (0, 1) (0.9 = keep 10% of the weights), got {sparsity!r}")
        if weight_decay is not None and (not math.isfinite(weight_decay) or weight_decay <= 0):
            raise ValueError(
                f"weight_decay must be positive (GSM drives unselected weights to zero by decay alone), got {weight_decay!r}; "
                "use None to take the optimizer's weight decay"
            )
        check_deploy_filename(deploy_filename, "GlobalSparseMomentum")
        self.sparsity = float(sparsity)
        self.weight_decay = None if weight_decay is None else float(weight_decay)
        self.exclude = list(exclude or [])
        self.deploy_filename = deploy_filename
        # state saved in checkpoints
        self.steps = 0  # optimizer steps with the surgery applied
        self.skipped_steps = 0  # steps with non-finite gradients (left alone; AMP skips them)
        self.decay_budget_by_group: dict[int, float] = {}  # optimizer group index -> realised sum lr*lambda*(1-d)/(1-m)
        self.mask_applied = False  # the final magnitude mask has been applied to the current weights
        # run-time
        self.report: dict[str, Any] = {}
        self.deploy_path: Path | None = None
        self._targets: Targets = []
        self._groups: dict[int, list[str]] = {}  # optimizer group index -> target names in it
        self._dense_weights: list[Tensor] | None = None  # the weights under the mask while validating during fit

    @property
    def run_tag(self) -> str:
        """Appended to the run folder's method name by ``litzoo fit`` (``runs/resnet-gsm/...``)."""
        return "gsm"

    @property
    def decay_budget(self) -> float:
        """Realised ``sum_t lr_t * lambda / (1 - momentum)`` so far: the smallest over the target groups."""
        return min(self.decay_budget_by_group.values()) if self.decay_budget_by_group else 0.0

    # ---------------------------------------------------------------- pieces usable without a Trainer
    def targets(self, module: nn.Module) -> Targets:
        """The pruned parameters of ``module``: dim 2 or 4, requiring grad, not excluded (by name)."""
        found = [
            (name, p)
            for name, p in module.named_parameters()
            if p.dim() in (2, 4) and p.requires_grad and not any(fnmatch(name, pattern) for pattern in self.exclude)
        ]
        if not found:
            raise LitzooError(
                f"GlobalSparseMomentum: {type(module).__name__} has no parameter to prune (dim 2 or 4, requires grad, "
                f"not matching exclude={self.exclude})"
            )
        return found

    def num_kept(self, total: int) -> int:
        """``Q``: how many of ``total`` target weights stay non-zero."""
        kept = round((1.0 - self.sparsity) * total)
        if kept < 1:
            raise LitzooError(f"GlobalSparseMomentum: sparsity {self.sparsity:g} of {total} weights keeps none; use a lower sparsity")
        return kept

    @torch.no_grad()
    def mask_gradients(self, targets: Targets) -> Tensor | None:
        """The gradient surgery of one step, in place: keep the objective gradient of the global top-``Q``
        ``|w * g|`` weights, zero it elsewhere, add ``weight_decay * w`` to all (if a float was given).

        Returns the threshold on ``|w * g|``, or ``None`` (gradients left alone) when a gradient is
        not finite: the step is then skipped by AMP's scaler, and masking NaNs would hide them.
        """
        for _, p in targets:
            if p.grad is None:  # unused this step: a zero objective gradient, so the decay still applies
                p.grad = torch.zeros_like(p)
        # the score in float32 at least: |w * g| of half-precision tensors under/overflows
        dtype = functools.reduce(torch.promote_types, (p.dtype for _, p in targets), torch.float32)
        scores = [(p.detach().to(dtype) * p.grad.to(dtype)).abs().flatten() for _, p in targets]
        flat = torch.cat(scores)
        if not bool(torch.isfinite(flat).all()):
            return None
        kept = self.num_kept(flat.numel())
        # the Q-th largest score is the (N - Q + 1)-th smallest; kthvalue is O(N), unlike a full sort
        threshold = torch.kthvalue(flat, flat.numel() - kept + 1).values
        for (_, p), score in zip(targets, scores, strict=True):
            p.grad.mul_((score >= threshold).view_as(p).to(p.grad.dtype))
            if self.weight_decay is not None:  # after the mask: passive weights get exactly lambda * w
                p.grad.add_(p.detach(), alpha=self.weight_decay)
        return threshold

    @torch.no_grad()
    def final_mask(self, targets: Targets) -> dict[str, float]:
        """Keep the global top-``Q`` ``|w|``, set the rest exactly to zero, in place; returns the
        density (fraction non-zero) per parameter name. Idempotent.

        Ties are broken deterministically (stable sort: earlier parameter, then earlier position,
        wins), so exactly ``Q`` weights are kept and every DDP rank keeps the same ones.
        """
        magnitude = torch.cat([p.detach().abs().flatten() for _, p in targets])
        kept = self.num_kept(magnitude.numel())
        order = torch.sort(magnitude, descending=True, stable=True).indices
        keep = torch.zeros_like(magnitude, dtype=torch.bool)
        keep[order[:kept]] = True
        density = {}
        for (name, p), mask in zip(targets, keep.split([p.numel() for _, p in targets]), strict=True):
            p.masked_fill_(~mask.view_as(p), 0.0)
            density[name] = (p != 0).sum().item() / p.numel()
        return density

    @torch.no_grad()
    def negligible_fraction(self, targets: Targets) -> float:
        """``gsm/sparsity``: fraction of targets with ``|w| < 1e-3 * w_Q`` (``w_Q`` the Q-th largest ``|w|``)."""
        magnitude = torch.cat([p.detach().abs().flatten().float() for _, p in targets])
        weakest_kept = torch.kthvalue(magnitude, magnitude.numel() - self.num_kept(magnitude.numel()) + 1).values
        return (magnitude < self.negligible * weakest_kept).float().mean().item()

    # ---------------------------------------------------------------- fit: checks
    @override
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._targets = self.targets(pl_module)
        self._groups = self._check_optimizer(trainer.optimizers)
        total = sum(p.numel() for _, p in self._targets)
        rank_zero_info(
            f"GlobalSparseMomentum: {len(self._targets)} tensors, {total:,} weights; keeping {self.num_kept(total):,} "
            f"({1 - self.sparsity:.1%}), the rest trained by decay alone and zeroed at the end"
        )
        if self.mask_applied:
            rank_zero_info("GlobalSparseMomentum: the checkpoint's weights were already masked; training continues from the sparse weights")

    def _check_optimizer(self, optimizers: list[torch.optim.Optimizer]) -> dict[int, list[str]]:
        """Refuse what would train something other than GSM; map target group index -> target names."""
        if len(optimizers) != 1:
            raise LitzooError(f"GlobalSparseMomentum needs exactly one optimizer (the global ranking spans all weights), got {len(optimizers)}")
        optimizer = optimizers[0]
        if not isinstance(optimizer, torch.optim.SGD):
            raise LitzooError(
                f"GlobalSparseMomentum needs torch.optim.SGD with momentum, got {type(optimizer).__name__}: an adaptive optimizer "
                "rescales the tiny decay-only updates of the unselected weights, so they never reach zero"
            )
        group_of = {id(p): i for i, group in enumerate(optimizer.param_groups) for p in group["params"]}
        groups: dict[int, list[str]] = {}
        for name, p in self._targets:
            if id(p) not in group_of:
                raise LitzooError(f"GlobalSparseMomentum: parameter '{name}' is not in the optimizer; give it to the optimizer or exclude it")
            groups.setdefault(group_of[id(p)], []).append(name)
        for index, names in groups.items():
            group = optimizer.param_groups[index]
            where = f"optimizer param group {index} ('{names[0]}'" + (f" and {len(names) - 1} more)" if len(names) > 1 else ")")
            if group.get("momentum", 0.0) <= 0:
                raise LitzooError(f"GlobalSparseMomentum: {where} has momentum 0; GSM is momentum SGD, set momentum (the paper uses 0.98)")
            if group.get("dampening", 0.0) >= 1:
                raise LitzooError(f"GlobalSparseMomentum: {where} has dampening {group['dampening']}, which cancels every update; use 0")
            decay = float(group.get("weight_decay", 0.0))
            if self.weight_decay is None and decay <= 0:
                raise LitzooError(
                    f"GlobalSparseMomentum: {where} has weight_decay 0, but GSM zeroes the unselected weights by weight decay alone; "
                    "set the optimizer's weight_decay or GlobalSparseMomentum(weight_decay=...)"
                )
            if self.weight_decay is not None and decay != 0:
                raise LitzooError(
                    f"GlobalSparseMomentum(weight_decay={self.weight_decay:g}) adds the decay itself, but {where} also has weight_decay "
                    f"{decay:g} (it would decay twice); set that group's weight_decay to 0 or use GlobalSparseMomentum(weight_decay=None)"
                )
        return groups

    def _decay_rates(self, optimizer: torch.optim.Optimizer) -> dict[int, float]:
        """Per target group, the decay budget of one step at the current lr: ``lr * lambda * (1 - d) / (1 - m)``."""
        rates = {}
        for index in self._groups:
            group = optimizer.param_groups[index]
            decay = self.weight_decay if self.weight_decay is not None else float(group["weight_decay"])
            rates[index] = float(group["lr"]) * decay * (1.0 - group.get("dampening", 0.0)) / (1.0 - group["momentum"])
        return rates

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        steps = trainer.estimated_stepping_batches
        if trainer.fast_dev_run or not math.isfinite(steps):
            return
        remaining = max(0, int(steps) - trainer.global_step)
        # an upper bound for a non-increasing schedule (cosine, steps): the current lr for every remaining step
        rates = self._decay_rates(trainer.optimizers[0])
        estimate = min(self.decay_budget_by_group.get(i, 0.0) + rate * remaining for i, rate in rates.items())
        message = (
            f"GlobalSparseMomentum: decay budget sum(lr * weight_decay / (1 - momentum)) over this run is at most {estimate:.3g} "
            f"({remaining} steps at the current lr)"
        )
        if estimate < self.min_decay_budget:
            rank_zero_warn(
                f"{message}, below {self.min_decay_budget:g}: the unselected weights shrink only by exp(-{estimate:.3g}) = "
                f"{math.exp(-estimate):.2g}, not to ~0, so the final mask will cost accuracy (GSM degrades to one-shot magnitude "
                "pruning). Raise weight_decay, the lr or the epochs so that the budget is ~10 (see the GlobalSparseMomentum docstring)"
            )
        else:
            rank_zero_info(message)

    # ---------------------------------------------------------------- fit: every optimizer step
    @override
    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer) -> None:
        if not self._targets:  # on_fit_start not run (a manual call path): find them now
            self._targets = self.targets(pl_module)
            self._groups = self._check_optimizer([optimizer])
        threshold = self.mask_gradients(self._targets)
        if threshold is None:
            self.skipped_steps += 1
            return
        self.steps += 1
        self.mask_applied = False
        # lr of this very step: schedulers step after optimizer.step
        for index, rate in self._decay_rates(optimizer).items():
            self.decay_budget_by_group[index] = self.decay_budget_by_group.get(index, 0.0) + rate
        if trainer.loggers and trainer.global_step % max(1, trainer.log_every_n_steps) == 0:
            metrics = {
                "gsm/threshold": threshold.item(),
                "gsm/decay_budget": self.decay_budget,
                "gsm/sparsity": self.negligible_fraction(self._targets),
            }
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)

    # ---------------------------------------------------------------- fit end: the final mask
    @override
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        targets = self._targets or self.targets(pl_module)
        inputs = reference_batch(trainer, pl_module, "GlobalSparseMomentum")
        with eval_mode(pl_module), torch.no_grad():
            reference = [t.clone() for t in tree_leaves(pl_module(inputs)) if isinstance(t, torch.Tensor)]
        negligible = self.negligible_fraction(targets)
        density = self.final_mask(targets)
        self.mask_applied = True
        with eval_mode(pl_module), torch.no_grad():
            masked = [t for t in tree_leaves(pl_module(inputs)) if isinstance(t, torch.Tensor)]
        change = max((a - b).abs().max().item() for a, b in zip(reference, masked, strict=True))
        total = sum(p.numel() for _, p in targets)
        zeros = sum((p == 0).sum().item() for _, p in targets)
        self.report = {
            "sparsity": zeros / total,
            "target_weights": total,
            "kept": self.num_kept(total),
            "negligible_before_mask": negligible,
            "max_abs_output_change": change,
            "max_abs_output": max(t.abs().max().item() for t in reference),
            "decay_budget": self.decay_budget,
            "steps": self.steps,
            "density": density,
        }
        self._log_report(trainer)
        self._save_deploy_checkpoint(trainer)

    def _log_report(self, trainer: L.Trainer) -> None:
        r = self.report
        width = max(len(name) for name in r["density"])
        layers = "\n".join(f"  {name:<{width}}  {d:7.2%}" for name, d in r["density"].items())
        rank_zero_info(
            f"GlobalSparseMomentum: final mask keeps {r['kept']:,} of {r['target_weights']:,} weights (sparsity {r['sparsity']:.2%}); "
            f"{r['negligible_before_mask']:.2%} were already negligible; max |output change| on one batch {r['max_abs_output_change']:.3g} "
            f"(max |output| {r['max_abs_output']:.3g}); decay budget {r['decay_budget']:.3g} over {r['steps']} steps\n"
            f"  density per layer (fraction kept):\n{layers}"
        )
        metrics = {f"gsm/final_{k}": float(v) for k, v in r.items() if k != "density"}
        metrics.update({f"gsm/density/{name}": d for name, d in r["density"].items()})
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)

    def _save_deploy_checkpoint(self, trainer: L.Trainer) -> None:
        # same architecture, sparse weights: an ordinary weights-only checkpoint, no marker needed
        self.deploy_path = save_deploy_checkpoint(trainer, self.deploy_filename, "GlobalSparseMomentum")

    # ---------------------------------------------------------------- validation during fit: the sparse model
    @override
    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn != TrainerFn.FITTING:
            self._to_deploy_for_evaluation(trainer, pl_module)
            return
        # validate what would be deployed: the final mask applied to the current weights. The dense
        # weights come back in on_validation_end, before ModelCheckpoint (always the last callback)
        # saves, so checkpoints stay resumable while `best` is chosen on the sparse model's metrics.
        targets = self._targets or self.targets(pl_module)
        self._dense_weights = [p.detach().clone() for _, p in targets]
        self.final_mask(targets)

    @override
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._dense_weights is None:
            return
        targets = self._targets or self.targets(pl_module)
        with torch.no_grad():
            for (_, p), dense in zip(targets, self._dense_weights, strict=True):
                p.copy_(dense)
        self._dense_weights = None

    # ---------------------------------------------------------------- evaluation outside fit
    @override
    def _to_deploy_for_evaluation(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.FITTING:
            return
        targets = self.targets(pl_module)
        before = sum((p == 0).sum().item() for _, p in targets)
        self.final_mask(targets)
        self.mask_applied = True
        zeros = sum((p == 0).sum().item() for _, p in targets)
        if zeros != before:
            total = sum(p.numel() for _, p in targets)
            rank_zero_info(f"GlobalSparseMomentum: evaluating the sparse model ({zeros:,} of {total:,} target weights zero, {zeros / total:.2%})")

    # ---------------------------------------------------------------- resuming
    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "sparsity": self.sparsity,
            "steps": self.steps,
            "skipped_steps": self.skipped_steps,
            "decay_budget_by_group": dict(self.decay_budget_by_group),
            "mask_applied": self.mask_applied,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("sparsity", self.sparsity) != self.sparsity:
            rank_zero_warn(
                f"GlobalSparseMomentum: the checkpoint was trained for sparsity {state_dict['sparsity']:g}, "
                f"this run uses {self.sparsity:g}; the selection switches to the new budget from here"
            )
        self.steps = int(state_dict.get("steps", 0))
        self.skipped_steps = int(state_dict.get("skipped_steps", 0))
        self.decay_budget_by_group = {int(k): float(v) for k, v in state_dict.get("decay_budget_by_group", {}).items()}
        self.mask_applied = bool(state_dict.get("mask_applied", False))
