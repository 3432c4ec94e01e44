"""ResRep: prune any CNN's channels while it trains, then cut them out for a smaller plain model.

Ding et al., "ResRep: Lossless CNN Pruning via Decoupling Remembering and Forgetting", ICCV 2021.
Reference implementation: DingXiaoH/ResRep (``rr/resrep_train.py`` for gradient resetting,
``rr/resrep_util.py`` for the mask update, ``rr/resrep_convert.py`` for the conversion).

The method, as this callback runs it:

1. *Re-parameterize.* Every prunable conv-BN (see :mod:`litzoo.framework.pruning.channel_groups`:
   convs whose output channels are not tied to other convs by residual additions) gets a
   compactor, a ``C x C`` pointwise conv initialised to the identity, after its BatchNorm.
2. *Gradient resetting*, every optimizer step: each compactor row (an output channel) gets the
   group-lasso gradient ``lasso_strength * Q_row / ||Q_row||``; rows selected for removal get
   *only* that (their objective gradient is zeroed), so they decay to zero while the objective
   keeps the others useful. Compactors train with momentum SGD (``compactor_momentum`` 0.99, no
   weight decay), as in the official ``sgd_optimizer``; this callback updates them itself, so the
   user's optimizer and its weight decay never touch them.
3. *Mask update*, every ``mask_interval`` steps after ``warmup_epochs``: all rows of all compactors
   are ranked globally by their L2 norm and the lowest are selected, in order, until the FLOPs of
   the model without them reach ``flops_target`` times the original's, keeping at least
   ``min_channels`` per layer. While the target is not met, an update stops once it has gone
   through ``granularity`` more candidates than the previous update masked; as in the official
   ``resrep_mask_model``, a candidate skipped because its layer is at ``min_channels`` counts
   toward that limit too (so an update can mask fewer than ``granularity`` new channels).
4. *Conversion*, when fit ends: the selected rows are set to zero, each compactor (with its BN)
   folds into its conv, and the channels are physically removed with everything coupled to them.
   The removal is exact (checked on a real batch); setting the rows to zero is the only change,
   and its effect is reported (``mask_zeroing_error``).

Beyond the paper, ``prune_residual=True`` also prunes what the paper leaves alone, so that the
pruned model is faster on any CNN (the residual-tied channels of a ResNet hold a large part of its
latency; EfficientNet's squeeze-excitation, RegNet's grouped convs and DPN's dual paths leave too few
free channels for half the FLOPs otherwise). Torch-Pruning's dependency graph gives the coupled sets:

* convs whose outputs meet in a residual addition or a squeeze-excitation product are one group:
  each keeps its own compactor (so each folds into its own conv), the group shares one mask, and a
  group lasso acts on a channel's rows in all of them together (DepGraph's group-level sparsity, Fang
  et al. 2023, with ResRep's gradient resetting). A unit of ``n`` rows is penalised by
  ``lasso_strength * sqrt(n) * ||unit||`` (Yuan and Lin's weighting of a group by its size), so each row
  gets ``lasso_strength * Q_row / rms`` with ``rms = ||unit|| / sqrt(n)``, the root mean square of its
  rows' norms, which is also its importance in the global ranking: for one row both are ResRep's, and
  a tied channel is not ranked last only because it has more rows;
* a grouped conv must lose the same channels in each of its groups: the channels are removed in units
  (channel ``j`` of every group), and a grouped conv's own compactor is block-diagonal (a grouped 1x1
  conv), so that it folds into the grouped conv;
* the removal stays exact and is checked as for the paper's groups.

Differences from the official code, on purpose: the FLOPs of a selection are counted by
``torch.utils.flop_counter`` (once per layer, then scaled; exact for convs and linears) rather
than a hand-written formula per architecture; coupled channels come from a traced dependency
graph rather than hand-written ``succeeding_strategy`` dictionaries; every update recomputes
all masks (the official ``set_model_masks`` leaves a layer's old mask in place when the new
selection has none of its channels); and masked rows are set exactly to zero at the end instead of
dropping rows whose norm fell below 1e-5, so the FLOPs target holds however long the run was.

Accuracy dips while channels are masked and recovers as the schedule goes on (the released
ResNet-50 log drops from 76.1% to 63.6% in the first epochs and recovers only late): give the run
enough epochs after the target is first met.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from typing_extensions import override

from litzoo.callbacks.base import EvaluateDeployModel, example_inputs
from litzoo.framework.data.batches import reference_batch
from litzoo.framework.deploy import deploy_marker, save_deploy_checkpoint
from litzoo.framework.errors import LitzooError
from litzoo.framework.profiling import count_flops, count_parameters, eval_mode, format_count
from litzoo.framework.pruning import (
    ChannelFlops,
    ChannelGroup,
    GroupReport,
    compacted_layers,
    compactors_in,
    find_channel_groups,
    fold_compactors,
    insert_compactors,
    remove_channels,
    zero_masked_rows,
)
from litzoo.framework.reparam import fuse_model
from litzoo.framework.reparam.verify import detached_copy


class ResRepPruning(EvaluateDeployModel):
    """Channel pruning by ResRep on any LightningModule with conv-BN layers.

    Args:
        flops_target: FLOPs of the pruned model as a fraction of the original's (paper:
            0.455 for ResNet-50, 0.471 for ResNet-56).
        lasso_strength: the group-lasso coefficient on compactor rows (paper 1e-4).
        mask_interval: optimizer steps between mask updates (paper 200).
        warmup_epochs: epochs before the first mask update (paper 5).
        granularity: at most this many more channels are masked per update while above the
            target (paper 4).
        min_channels: channels every pruned layer keeps (paper 1).
        compactor_momentum: momentum of the compactors' SGD (paper 0.99).
        compactor_lr: their learning rate; ``None`` follows the current learning rate of the
            optimizer's first parameter group (the paper uses the base schedule).
        exclude: ``fnmatch`` patterns of conv names to leave unpruned.
        prune_at_end: convert and remove the channels when fit ends.
        prune_residual: also prune channels tied across convs (residual additions, squeeze-excitation
            products) and channels of grouped convs, each tied set as one group (see above); off by
            default, as in the paper.
        round_to: every pruned layer keeps a multiple of this many channels (``None``: any number, the
            paper's rule). Runtimes' fast conv kernels work on channel blocks (onnxruntime's NCHWc
            kernels take multiples of 8 with AVX2 and 16 with AVX-512, oneDNN's blocked formats alike):
            a pruned layer with 37 channels can be slower than the dense one with 64. The mask update
            then removes a layer's channels a block at a time (its lowest-ranked ones; the first block
            takes what is above the last multiple), so every kept count is a multiple of ``round_to``
            (and of the layer's unit).
        tolerance: the pruned model must reproduce the masked one on a real batch to
            ``tolerance * max(1, max|y|)``.
        deploy_filename: the pruned model's checkpoint, written next to the other checkpoints
            (its layer shapes are recorded in it; ``None`` = do not write one). The checkpoints
            written during fit hold the compactor model and resume training.
    """

    def __init__(
        self,
        flops_target: float = 0.5,
        lasso_strength: float = 1e-4,
        mask_interval: int = 200,
        warmup_epochs: float = 5.0,
        granularity: int = 4,
        min_channels: int = 1,
        compactor_momentum: float = 0.99,
        compactor_lr: float | None = None,
        exclude: list[str] | None = None,
        prune_at_end: bool = True,
        prune_residual: bool = False,
        round_to: int | None = None,
        tolerance: float = 1e-5,
        deploy_filename: str | None = "pruned.ckpt",
    ) -> None:
        if not 0 < flops_target < 1:
            raise ValueError(f"flops_target must be in (0, 1), got {flops_target}")
        if lasso_strength < 0:
            raise ValueError(f"lasso_strength must be >= 0, got {lasso_strength}")
        if mask_interval < 1:
            raise ValueError(f"mask_interval must be >= 1 optimizer step, got {mask_interval}")
        if warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs}")
        if round_to is not None and round_to < 1:
            raise ValueError(f"round_to must be a positive number of channels (or None), got {round_to}")
        if granularity < 1:
            raise ValueError(f"granularity must be >= 1 channel, got {granularity}")
        if min_channels < 1:
            raise ValueError(f"min_channels must be >= 1, got {min_channels}")
        if not 0 <= compactor_momentum < 1:
            raise ValueError(f"compactor_momentum must be in [0, 1), got {compactor_momentum}")
        if compactor_lr is not None and compactor_lr <= 0:
            raise ValueError(f"compactor_lr must be positive (or None to follow the optimizer), got {compactor_lr}")
        if tolerance <= 0:
            raise ValueError(f"tolerance must be positive, got {tolerance}")
        self.flops_target = flops_target
        self.lasso_strength = lasso_strength
        self.mask_interval = mask_interval
        self.warmup_epochs = warmup_epochs
        self.granularity = granularity
        self.min_channels = min_channels
        self.compactor_momentum = compactor_momentum
        self.compactor_lr = compactor_lr
        self.exclude = list(exclude or [])
        self.prune_at_end = prune_at_end
        self.prune_residual = prune_residual
        self.round_to = round_to
        self.tolerance = tolerance
        self.deploy_filename = deploy_filename

        self.plan = GroupReport()
        self.flops: ChannelFlops | None = None
        self.momentum: dict[str, Tensor] = {}
        self.mask_updates = 0
        self.pruned = False
        self.report: dict[str, Any] = {}
        self.deploy_path: Path | None = None
        self._warmup_steps = 0
        self._fit_compactors: dict[str, nn.Module] = {}  # every compactor, by placement
        self._unit_index: list[tuple[Tensor, list[Tensor]]] = []  # per tied group: unit of each channel, each producer's rows
        self._flops_ratio = 1.0
        self._load_hook: Any = None

    @property
    def run_tag(self) -> str:
        """Appended to the run folder's method name by ``litzoo fit`` (``runs/resnet-resrep/...``)."""
        return "resrep"

    @property
    def groups(self) -> list[ChannelGroup]:
        return self.plan.groups

    # ---------------------------------------------------------------- re-parameterize
    def attach(self, module: nn.Module, inputs: Tensor) -> GroupReport:
        """Find the prunable layers of ``module`` and insert their compactors (usable without a Trainer).

        Every check runs before anything changes: a refused model is left exactly as it was.
        """
        if compacted_layers(module):
            raise LitzooError("ResRepPruning: the model already has compactors")
        try:
            plan = find_channel_groups(module, inputs, self.exclude, self.prune_residual)
        except LitzooError as error:
            raise LitzooError(f"ResRepPruning: {error}") from None
        if not plan.groups:
            rank_zero_info(f"ResRepPruning: {plan.summary()}")
            first = next(iter(plan.skipped.items()), ("-", "no conv layer at all"))
            raise LitzooError(
                f"ResRepPruning: no conv layer of {type(module).__name__} can be pruned exactly "
                f"({len(plan.skipped)} left alone, e.g. {first[0]}: {first[1]}; the full report is logged above)"
            )
        flops = ChannelFlops(module, inputs, plan.groups)
        reachable = flops.ratio([_fewest_kept(g, self.min_channels, self.round_to) for g in plan.groups])
        rank_zero_info(f"ResRepPruning: {plan.summary()}\n  FLOPs/sample {format_count(flops.total)}; with every prunable layer at its fewest channels "
                       f"(min_channels={self.min_channels}, whole units, round_to={self.round_to}): {reachable:.3f} of it")
        if reachable > self.flops_target:
            raise LitzooError(
                f"ResRepPruning: flops_target={self.flops_target} cannot be reached: the layers that can be pruned "
                f"hold too little of the FLOPs (at most down to {reachable:.3f}); raise the target or make more layers prunable"
            )
        self.plan, self.flops = plan, flops
        insert_compactors(module, {p.placement: (g.channels, p.groups) for g in self.groups for p in g.producers})
        return self.plan

    def compactors(self, module: nn.Module) -> dict[str, nn.Module]:
        """``{placement: compactor}`` of each group's leader, in the order of :attr:`groups`."""
        layers = compacted_layers(module)
        return {g.placement: layers[g.placement].compactor for g in self.groups}

    def all_compactors(self, module: nn.Module) -> dict[str, nn.Module]:
        """``{placement: compactor}`` of every conv of every group (the leaders and the convs tied to them)."""
        layers = compacted_layers(module)
        return {p.placement: layers[p.placement].compactor for g in self.groups for p in g.producers}

    def unit_norms(self, module: nn.Module) -> list[Tensor]:
        """Each group's importance per unit (ResRep: the compactor row norms; a unit of a tied group or a
        grouped conv: the root mean square of the norms of all its rows in all the group's compactors)."""
        layers = compacted_layers(module)
        found = []
        for group in self.groups:
            if not group.tied and group.unit_size == 1:
                found.append(layers[group.placement].compactor.row_norms())
                continue
            unit_of, rows = _unit_index(group, torch.device("cpu"))
            weights = [layers[p.placement].compactor.weight.detach().cpu().double() for p in group.producers]
            found.append(_unit_rms(group, weights, unit_of, rows))
        return found

    def set_masks(self, module: nn.Module, removed_units: list[list[int]]) -> None:
        """Mark the units ``removed_units[g]`` of each group ``g`` for removal, in every compactor of the group."""
        layers = compacted_layers(module)
        for group, units in zip(self.groups, removed_units, strict=True):
            channels = group.unit_channels(units)
            for producer in group.producers:
                mask = layers[producer.placement].compactor.mask
                mask.fill_(1.0)
                mask[[producer.rows[c] for c in channels]] = 0.0

    def kept_channels(self, module: nn.Module) -> list[int]:
        return [compactor.num_kept for compactor in self.compactors(module).values()]

    def flops_ratio(self, module: nn.Module) -> float:
        """FLOPs of the model without its masked channels, as a fraction of the original's."""
        return self.flops.ratio(self.kept_channels(module))

    # ---------------------------------------------------------------- the mask update
    def update_masks(self, module: nn.Module) -> None:
        """Re-select the channels to remove from the current compactor row norms (official
        ``resrep_mask_model``)."""
        kept = np.array(self.kept_channels(module), dtype=np.int64)
        channels = np.array([g.channels for g in self.groups], dtype=np.int64)
        unit_size = np.array([g.unit_size for g in self.groups], dtype=np.int64)
        step = np.array([_step(g, self.round_to) for g in self.groups], dtype=np.int64)  # kept counts move by this
        fewest = np.array([_fewest_kept(g, self.min_channels, self.round_to) for g in self.groups], dtype=np.int64)
        budget = self.flops_target * self.flops.total
        limit = int(((channels - kept) // unit_size).sum()) + self.granularity if self.flops(kept) > budget else math.inf
        norms = [n.cpu().double().numpy() for n in self.unit_norms(module)]
        layer_of = np.concatenate([np.full(len(n), i) for i, n in enumerate(norms)])
        unit_of = np.concatenate([np.arange(len(n)) for n in norms])
        order = np.argsort(np.concatenate(norms), kind="stable")
        own_order = [iter(np.argsort(n, kind="stable").tolist()) for n in norms]  # round_to: a block's other units
        attempt = channels.copy()
        selected: list[list[int]] = [[] for _ in self.groups]
        taken: list[set[int]] = [set() for _ in self.groups]
        visited = 0  # candidates gone through, selected or skipped: the official loop's position ``i``
        for position in order:
            if self.flops(attempt) <= budget:
                break
            layer, unit = int(layer_of[position]), int(unit_of[position])
            if unit in taken[layer]:
                continue  # removed already, with the block of a lower-ranked unit
            visited += 1
            block = int(attempt[layer] % step[layer]) or int(step[layer])  # channels down to the next multiple
            if attempt[layer] - block < fewest[layer]:
                continue  # the official loop checks its limit only after a selection
            attempt[layer] -= block
            members = [unit]
            while len(members) * unit_size[layer] < block:  # round_to: the layer's next lowest-ranked units
                other = next(own_order[layer])
                if other != unit and other not in taken[layer]:
                    members.append(other)
            taken[layer].update(members)
            selected[layer].extend(members)
            if visited >= limit:
                break
        self.set_masks(module, selected)
        self.mask_updates += 1

    # ---------------------------------------------------------------- fit
    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)  # a pruned.ckpt gets its layer shapes before its weights
        if stage == TrainerFn.FITTING:
            if not compacted_layers(pl_module):
                self.attach(pl_module, example_inputs(trainer, pl_module, "ResRepPruning (tracing the model in setup)"))
                for logger in trainer.loggers:
                    logger.log_metrics({"resrep/prunable_layers": len(self.groups), "resrep/tied_layers": sum(len(g.tied) for g in self.groups),
                                        "resrep/unpruned_layers": len(self.plan.skipped)}, step=0)  # fmt: skip
            elif self.flops is None:
                raise LitzooError(
                    f"ResRepPruning: {type(pl_module).__name__} already carries ResRep compactors that this callback did not insert "
                    "(an earlier ResRepPruning whose fit ended before pruning); fit with that callback again, or start from a model without them"
                )
        elif not compacted_layers(pl_module):
            # a checkpoint of the compactor model may be loaded next: insert the compactors right
            # before its weights arrive, so that they fit; the channels are removed at evaluation start
            self._load_hook = pl_module.register_load_state_dict_pre_hook(self._insert_before_loading)

    def _insert_before_loading(self, module: nn.Module, state_dict: dict[str, Tensor], prefix: str, *args: Any) -> None:
        if prefix:
            return
        placements = compactors_in(state_dict)
        if placements and not compacted_layers(module):
            insert_compactors(module, placements)

    @override
    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().teardown(trainer, pl_module, stage)
        if self._load_hook is not None:
            self._load_hook.remove()
            self._load_hook = None

    @override
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # The compactors follow the paper's own SGD (momentum 0.99, no weight decay), applied in
        # on_before_optimizer_step; the user's optimizer must not update them a second time.
        # looked up once: the training step uses these, and the model's structure is fixed until fit ends
        self._fit_compactors = self.all_compactors(pl_module)
        self._unit_index = [_unit_index(g, pl_module.device) for g in self.groups]
        self._flops_ratio = self.flops_ratio(pl_module)  # changes only when the masks do
        own = {id(c.weight) for c in self._fit_compactors.values()}
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                group["params"] = [p for p in group["params"] if id(p) not in own]
        self.momentum = {name: buffer.to(pl_module.device) for name, buffer in self.momentum.items()}

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        batches = trainer.num_training_batches
        steps_per_epoch = math.ceil(batches / trainer.accumulate_grad_batches) if math.isfinite(batches) else 1
        self._warmup_steps = round(self.warmup_epochs * steps_per_epoch)

    @override
    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer) -> None:
        if optimizer is not trainer.optimizers[0]:
            return  # once per training step
        step = trainer.global_step  # optimizer steps done before this one
        if step > self._warmup_steps and (step - self._warmup_steps) % self.mask_interval == 0:
            self.update_masks(pl_module)
            self._flops_ratio = self.flops_ratio(pl_module)
            self._log_masks(trainer, pl_module)
        compactors = self._fit_compactors
        grads = [c.weight.grad for c in compactors.values()]
        if any(g is not None and not torch.isfinite(g).all() for g in grads):
            for compactor in compactors.values():
                compactor.weight.grad = None
            return  # an AMP step with overflow: the optimizer skips it, so do the compactors
        lr = self.compactor_lr if self.compactor_lr is not None else optimizer.param_groups[0]["lr"]
        with torch.no_grad():
            group_norms = self._tied_row_norms(compactors)
            for name, compactor in compactors.items():
                weight = compactor.weight
                objective = weight.grad if weight.grad is not None else torch.zeros_like(weight)
                # gradient resetting: masked rows keep only the lasso pull towards zero; a row of a tied
                # group or a grouped unit is pulled by the group lasso of all the rows of its unit
                row_norms = group_norms.get(name)
                if row_norms is None:
                    row_norms = weight.flatten(1).norm(dim=1)
                row_norms = row_norms.clamp_min(1e-12).view(-1, 1, 1, 1)
                grad = objective * compactor.mask.view(-1, 1, 1, 1) + self.lasso_strength * weight / row_norms
                buffer = self.momentum.get(name)
                if buffer is None:
                    buffer = self.momentum[name] = grad.clone()
                else:
                    buffer.mul_(self.compactor_momentum).add_(grad)
                weight.sub_(lr * buffer)
                weight.grad = None  # not in any optimizer: nothing else would clear it
        pl_module.log("flops_ratio", self._flops_ratio, prog_bar=True, on_step=True, on_epoch=False)

    def _tied_row_norms(self, compactors: dict[str, nn.Module]) -> dict[str, Tensor]:
        """``{placement: the rms row norm of each row's unit}`` for the compactors of tied groups and grouped units."""
        found: dict[str, Tensor] = {}
        for group, (unit_of, rows) in zip(self.groups, self._unit_index, strict=True):
            if not group.tied and group.unit_size == 1:
                continue
            weights = [compactors[p.placement].weight for p in group.producers]
            per_channel = _unit_rms(group, weights, unit_of, rows)[unit_of]  # the unit's rms row norm, in the leader's channel order
            for producer, producer_rows in zip(group.producers, rows, strict=True):
                found[producer.placement] = torch.empty_like(per_channel).index_copy_(0, producer_rows, per_channel)
        return found

    def _log_masks(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        kept = self.kept_channels(pl_module)
        metrics = {f"resrep/kept/{g.leader}": float(k) for g, k in zip(self.groups, kept, strict=True)}
        metrics["resrep/masked_channels"] = float(sum(g.channels for g in self.groups) - sum(kept))
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)

    @override
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._fit_compactors = {}  # removed or folded from here on
        if not self.prune_at_end or not compacted_layers(pl_module):
            return
        inputs = reference_batch(trainer, pl_module, "ResRepPruning")
        self.report = self.prune(pl_module, inputs)
        r = self.report
        rank_zero_info(
            f"ResRepPruning: removed {r['removed_channels']} channels; FLOPs/sample {format_count(r['flops_before'])} -> "
            f"{format_count(r['flops_after'])} ({r['flops_ratio']:.3f}, target {self.flops_target}); parameters "
            f"{format_count(r['params_before'])} -> {format_count(r['params_after'])}; max |pruned - masked| = {r['removal_error']:.3g}, "
            f"zeroing the masked rows changed the outputs by {r['mask_zeroing_error']:.3g}"
        )
        for logger in trainer.loggers:
            logger.log_metrics({f"resrep/{k}": float(v) for k, v in r.items()}, step=trainer.global_step)
        if r["flops_ratio"] > self.flops_target + 1e-9 and not trainer.fast_dev_run:
            rank_zero_warn(
                f"ResRepPruning: the masks had not reached flops_target={self.flops_target} when fit ended "
                f"(FLOPs ratio {r['flops_ratio']:.3f}); train longer, or lower mask_interval / warmup_epochs, or raise granularity"
            )
        self._save_pruned_checkpoint(trainer, pl_module)

    def prune(self, module: nn.Module, inputs: Tensor) -> dict[str, Any]:
        """Zero the masked rows, fold the compactors and remove the channels of ``module`` in place;
        returns the report (usable without a Trainer). Raises if the removal is not exact."""
        # new layers are built and the graph is traced: also when called from an evaluation loop
        with torch.inference_mode(False):
            return self._prune(module, inputs.clone())

    def _prune(self, module: nn.Module, inputs: Tensor) -> dict[str, Any]:
        with eval_mode(module), torch.no_grad():
            trained = module(inputs)
            original = _without_compactors(module)  # in its deploy form: what the pruned model is compared with
            flops_before = count_flops(original, inputs[:1])
            params_before = count_parameters(original)
            zero_masked_rows(module)
            masked = module(inputs)
        removed = fold_compactors(module, inputs)
        with eval_mode(module):
            remove_channels(module, removed, inputs)
        with eval_mode(module), torch.no_grad():
            pruned = module(inputs)
        scale = max(1.0, masked.abs().max().item())
        error = (pruned - masked).abs().max().item()
        if error > self.tolerance * scale:
            raise LitzooError(f"ResRepPruning: the pruned model differs from the masked one by {error:.3g} (allowed {self.tolerance * scale:.3g}); the channel removal is not exact")
        self.pruned = True
        flops_after = count_flops(module, inputs[:1])
        return {
            "removed_channels": sum(len(v) for v in removed.values()),
            "flops_before": float(flops_before),
            "flops_after": float(flops_after),
            "flops_ratio": flops_after / flops_before,
            "params_before": float(params_before),
            "params_after": float(count_parameters(module)),
            "removal_error": error,
            "mask_zeroing_error": (masked - trained).abs().max().item(),
        }

    def _save_pruned_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # the pruned model is a deploy model: loaders fuse re-parameterizable blocks, then rebuild the cut layers
        marker = deploy_marker(pl_module, fused=True, pruned=True)
        self.deploy_path = save_deploy_checkpoint(trainer, self.deploy_filename, "ResRepPruning", marker)

    # ---------------------------------------------------------------- evaluation outside fit
    @override
    def _to_deploy_for_evaluation(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.FITTING or not compacted_layers(pl_module):
            return
        inputs = reference_batch(trainer, pl_module, "ResRepPruning", ("test", "predict", "val", "train"))
        self.report = self.prune(pl_module, inputs)
        rank_zero_info(
            f"ResRepPruning: evaluating the pruned model ({self.report['removed_channels']} channels removed, "
            f"FLOPs ratio {self.report['flops_ratio']:.3f}, {format_count(self.report['params_after'])} parameters)"
        )

    # ---------------------------------------------------------------- resuming
    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "flops_target": self.flops_target,
            "prune_residual": self.prune_residual,
            "groups": [g.to_dict() for g in self.groups],
            "momentum": dict(self.momentum),
            "mask_updates": self.mask_updates,
            "pruned": self.pruned,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = [g["leader"] for g in state_dict.get("groups", [])]
        if self.groups and saved != [g.leader for g in self.groups]:
            raise LitzooError(
                f"ResRepPruning: the checkpoint was trained with compactors on {len(saved)} layers ({saved[:3]} ...), "
                f"this run found {len(self.groups)}; use the same model, exclude patterns and prune_residual "
                f"(the checkpoint's: {state_dict.get('prune_residual', False)})"
            )
        saved_target = state_dict.get("flops_target", self.flops_target)
        if saved_target != self.flops_target:
            rank_zero_warn(
                f"ResRepPruning: the checkpoint was trained for flops_target {saved_target:g}, this run uses {self.flops_target:g}; "
                "the next mask updates move the masks to the new target"
            )
        self.momentum = dict(state_dict.get("momentum", {}))
        self.mask_updates = int(state_dict.get("mask_updates", 0))


def _step(group: ChannelGroup, round_to: int | None) -> int:
    """The channels a group's kept count moves by: its unit, or the least multiple of it and ``round_to``."""
    return math.lcm(group.unit_size, round_to or 1)


def _fewest_kept(group: ChannelGroup, min_channels: int, round_to: int | None = None) -> int:
    """The fewest channels a group may keep: ``min_channels``, rounded up to whole steps (at least one)."""
    step = _step(group, round_to)
    return min(group.channels, step * max(1, math.ceil(min_channels / step)))


def _unit_rms(group: ChannelGroup, weights: list[Tensor], unit_of: Tensor, rows: list[Tensor]) -> Tensor:
    """The root mean square of the row norms of each unit of ``group``: all its rows in every producer's
    compactor ``weights`` (``unit_of``, ``rows``: :func:`_unit_index`). The unit's importance, and the
    denominator of its group lasso; for a single row, ResRep's row norm."""
    squares = torch.zeros(group.channels, dtype=weights[0].dtype, device=weights[0].device)
    for weight, producer_rows in zip(weights, rows, strict=True):
        squares += weight.flatten(1).square().sum(dim=1)[producer_rows]
    units = torch.zeros(group.num_units, dtype=squares.dtype, device=squares.device).index_add_(0, unit_of, squares)
    return (units / (group.unit_size * len(group.producers))).sqrt()


def _unit_index(group: ChannelGroup, device: torch.device) -> tuple[Tensor, list[Tensor]]:
    """The unit of each of the leader's channels, and each producer's row of each of them, as index tensors."""
    unit_of = torch.zeros(group.channels, dtype=torch.long)
    for unit, channels in enumerate(group.units or [[c] for c in range(group.channels)]):
        unit_of[channels] = unit
    return unit_of.to(device), [torch.tensor(p.rows, dtype=torch.long, device=device) for p in group.producers]


def _without_compactors(module: nn.Module) -> nn.Module:
    """A copy of ``module`` with every compactor removed, in its deploy form (the original's cost)."""
    copy = detached_copy(module)
    for name, layer in compacted_layers(copy).items():
        copy.set_submodule(name, layer.layer)
    return fuse_model(copy, inplace=True)
