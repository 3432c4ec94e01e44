"""Spatial Gradient Scaling: the effect of a multi-branch re-parameterization without the branches.

SGS (Detkov, Salameh, Qharabagh, Zhang, Lui, Niu, Lu, ICLR 2023, "Reparameterization through
Spatial Gradient Scaling", arXiv:2303.02733; official code Ascend-Research/Reparameterization,
``dependence.py`` ``feature_map_nmik`` / ``NMIK`` / ``dependence_to_spatial_gradient_scaling`` and
``tools/train.py``) multiplies the gradient of every K x K convolution kernel, position by
position, by a fixed K x K matrix ``S`` before the optimizer step. Training a conv whose kernel is
a sum of scaled, zero-padded branches ``W = sum_b a_b * P_b(V_b)`` with SGD is the same as training
the plain conv with ``grad *= S``, ``S = sum_b a_b**2 * [support of b]`` (and ``W = sqrt(S) * V``
gives any ``S``), so ``S`` *is* a re-parameterization, learnt instead of designed. The paper sets
``S`` from the data: the more the pixels at a kernel offset depend on the centre pixel (normalised
mutual information of the conv's input feature map), the larger the scaling of that offset.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from typing_extensions import override

from litzoo.framework.data.batches import batch_inputs, sample_training_batches
from litzoo.framework.errors import LitzooError
from litzoo.framework.profiling import eval_mode

#: optimizers whose per-element normalisation (almost) cancels a fixed per-position gradient scale
ADAPTIVE_OPTIMIZERS = (
    torch.optim.Adam, torch.optim.AdamW, torch.optim.Adamax, torch.optim.NAdam, torch.optim.RAdam,
    torch.optim.Adagrad, torch.optim.RMSprop, torch.optim.Adadelta,
)  # fmt: skip


# ---------------------------------------------------------------------------- the statistics
def _entropy(p: Tensor) -> Tensor:
    """Shannon entropy in bits along the last dim of probabilities ``p`` (0 log 0 = 0)."""
    return -torch.where(p > 0, p * torch.log2(p.clamp_min(1e-300)), torch.zeros_like(p)).sum(-1)


def normalized_mutual_information(x: Tensor, y: Tensor, k: float = 5.0, diagonal_removal: bool = False) -> Tensor:
    """``NMI_k`` of paired samples, one value per row: ``x``, ``y`` of shape (C, n) -> (C,).

    The official ``NMIK`` for all channels at once: a 2-D histogram with ``bins = 1 + ceil(log2(n))``
    equal-width bins over ``[min, max + 1e-12]`` of each variable (per row), ``NMI = MI / H(X, Y)``
    with ``MI = H(X) + H(Y) - H(X, Y)`` (bits), then ``NMI_k = k * NMI / ((k - 1) * NMI + 1)``,
    which lifts small dependences (``k = 5`` in the paper; ``k = 1`` gives ``NMI``). ``NMI_k`` is 1
    for ``y = x`` and ~0 for independent ``x``, ``y``. A constant row (``H(X, Y) = 0``) gives NaN.

    ``diagonal_removal`` (the official ``sgs_diagonal_removal``, on in its ImageNet config): post-ReLU
    maps are mostly zeros, whose (0, 0) pairs swamp the histogram. Only pairs with both values
    non-zero are kept (``n``, the bins and the ranges are then per row, over those pairs), the
    histogram's diagonal cells (same bin for x and y) are dropped, and a row with nothing left, or
    an undefined value, gives 0 instead of NaN.
    """
    if x.shape != y.shape or x.dim() != 2:
        raise ValueError(f"x and y must be paired (C, n) samples, got shapes {tuple(x.shape)} and {tuple(y.shape)}")
    channels = x.shape[0]
    x, y = x.double(), y.double()
    keep = (x != 0) & (y != 0) if diagonal_removal else torch.ones_like(x, dtype=torch.bool)
    n = keep.sum(1)  # (C,) pairs per row
    bins = 1 + torch.ceil(torch.log2(n.clamp_min(1).double())).long()  # (C,) 1 bin for n = 1, as log2(1) = 0
    most = int(bins.max())

    def bin_index(v: Tensor) -> Tensor:
        lo = torch.where(keep, v, torch.inf).amin(1, keepdim=True)
        hi = torch.where(keep, v, -torch.inf).amax(1, keepdim=True) + 1e-12  # the official range: the max is in the last bin
        width = (hi - lo) / bins[:, None]
        return ((v - lo) / width).floor().nan_to_num(0).long().clamp_(min=0).minimum(bins[:, None] - 1)

    bx, by = bin_index(x), bin_index(y)
    counted = keep & (bx != by) if diagonal_removal else keep
    # one bincount over (row, x bin, y bin): the histograms of all rows without a Python loop
    cell = (bx * most + by + torch.arange(channels, device=x.device)[:, None] * (most * most)).clamp_(min=0)
    joint = torch.bincount(cell.flatten(), weights=counted.flatten().double(), minlength=channels * most * most).view(channels, most, most)
    joint = joint / joint.sum((1, 2), keepdim=True)
    h_xy = _entropy(joint.flatten(1))
    mi = _entropy(joint.sum(2)) + _entropy(joint.sum(1)) - h_xy
    nmi = mi / h_xy
    nmi_k = k * nmi / ((k - 1) * nmi + 1)
    return nmi_k.nan_to_num(0.0, posinf=0.0, neginf=0.0) if diagonal_removal else nmi_k


def feature_map_dependence(
    feature_maps: Iterable[Tensor],
    kernel_size: tuple[int, int],
    dilation: tuple[int, int] = (1, 1),
    k: float = 5.0,
    diagonal_removal: bool = False,
) -> Tensor:
    """The K x K dependence matrix of a conv's (padded) input feature maps, centre = 1, not normalised.

    For every kernel offset ``(dy, dx)`` (times the dilation: the pixel that tap actually reads)
    the pairs (pixel, pixel at the offset) of every channel are collected over all maps (several
    batches, or several calls of a shared conv), ``NMI_k`` is computed per channel and averaged
    over the channels that are not constant. Offset and opposite offset see the same pairs, so the
    matrix is symmetric through the centre (computed once, as the official code does).
    ``diagonal_removal``: see :func:`normalized_mutual_information`.
    """
    maps = list(feature_maps)
    kh, kw = kernel_size
    if kh % 2 == 0 or kw % 2 == 0:
        raise ValueError(f"the dependence matrix needs an odd kernel size (it has a centre), got {kernel_size}")
    ch, cw = kh // 2, kw // 2
    dependence = torch.full((kh, kw), float("nan"), dtype=torch.float64)
    dependence[ch, cw] = 1.0
    for a in range(kh):
        for b in range(kw):
            if not math.isnan(dependence[a, b].item()):  # the centre or an already filled mirror
                continue
            dy, dx = (a - ch) * dilation[0], (b - cw) * dilation[1]
            centres, neighbours = [], []
            for fm in maps:
                height, width = fm.shape[-2:]
                if abs(dy) >= height or abs(dx) >= width:
                    continue
                rows_c, rows_n = slice(max(0, -dy), height - max(0, dy)), slice(max(0, dy), height - max(0, -dy))
                cols_c, cols_n = slice(max(0, -dx), width - max(0, dx)), slice(max(0, dx), width - max(0, -dx))
                channels = fm.shape[1]
                centres.append(fm[:, :, rows_c, cols_c].transpose(0, 1).reshape(channels, -1))
                neighbours.append(fm[:, :, rows_n, cols_n].transpose(0, 1).reshape(channels, -1))
            if centres:
                value = normalized_mutual_information(torch.cat(centres, 1), torch.cat(neighbours, 1), k, diagonal_removal).nanmean()
                dependence[a, b] = dependence[2 * ch - a, 2 * cw - b] = value
    return dependence


# ---------------------------------------------------------------------------- the callback
class SpatialGradientScaling(Callback):
    """Spatial Gradient Scaling (Detkov et al., ICLR 2023): ``conv.weight.grad *= S`` for every K x K conv.

    Targets: every ``nn.Conv2d`` with a kernel larger than 1 in both dimensions whose weight
    requires grad (depthwise and grouped convs included, as in the official code; 1x1, 1xK, Kx1
    convs are left alone). One K x K matrix ``S`` per conv, shared by all its input/output
    channels, keyed by the conv's module name (the official code matches scalings to convs by
    enumeration order, which misaligns them when modules are reordered, shared or unused).

    Every optimizer step, in ``on_before_optimizer_step`` (after DDP's all-reduce and AMP's
    unscale, once per step under gradient accumulation): ``W.grad *= S``. The optimizer's own
    weight decay is then added to the scaled gradient inside ``optimizer.step()``, which is
    exactly the re-parameterization ``W = sqrt(S) * V`` trained by SGD with L2 decay on ``V``
    (momentum, nesterov and that decay are linear and commute with the fixed ``S``). An L2 term in
    the loss instead is scaled too, i.e. a decay of ``S * wd`` on ``W``: a different training.

    ``scalings="mutual_information"`` (the paper's rule, ``dependence.py``): ``S = ones`` for the
    first ``warmup_epochs`` epochs, then at the start of every ``update_every_epochs``-th epoch
    (the official ``sgs_epochs = 5``) the model runs in eval mode (modes restored afterwards, so
    BatchNorm statistics do not move) on ``num_batches`` training batches (official 2), the
    zero-padded input of every target conv is recorded, and ``S[offset]`` = mean over channels of
    ``NMI_k`` (``k``, official 5) between each pixel and the pixel at that kernel offset, centre
    1, then ``S /= mean(S)``. A layer whose statistics are undefined (every channel constant) keeps
    its previous ``S``. The batches are drawn from the training set with their own generator
    (seeded by ``seed`` and the epoch) and under a forked RNG, so the training batches, dropout and
    augmentations of the run are those of a run without SGS, and a resumed run draws the same
    statistics batches. Under DDP rank 0 computes ``S`` from its batches and broadcasts it, so
    every rank scales identically (the official code all-gathers the feature maps first; one
    rank's ``num_batches`` batches are the same statistics at a fraction of the memory).
    Differences from the official code, on purpose: padding is applied per side in the right
    order (the official hook swaps height and width padding), non-zero padding modes pad as the
    conv does, and dilated kernels pair pixels at the dilated offsets.

    ``scalings={conv name: K x K tensor}``: fixed scalings (a designed re-parameterization, e.g.
    ``1 + a**2`` at the centre for a 3x3 + scaled 1x1 block); only the named convs are scaled.

    Logged at every update, per conv: ``sgs/<name>/centre_ratio`` (centre of ``S`` over the mean
    of the other entries: > 1 when neighbours depend less on a pixel than the pixel itself).

    Requirements: the LightningModule's ``forward`` takes the batch's input tensor (the
    ``image`` entry of a dict batch, else its first tensor) for ``"mutual_information"``. Warns when
    gradient clipping is set (it then clips the scaled gradients; the official loop clips before
    scaling) and when the optimizer is adaptive (Adam-type per-element normalisation almost
    cancels a fixed per-position scale; the paper trains with SGD).

    Args:
        scalings: ``"mutual_information"`` or a dict of fixed K x K scalings by conv module name.
        warmup_epochs: epochs with ``S = ones`` before the first mutual-information update.
        update_every_epochs: epochs between two updates of ``S`` (official 5).
        num_batches: training batches whose feature maps give the statistics (official 2).
        k: the ``NMI_k`` exponent-like sharpening (official 5; 1 = plain NMI).
        diagonal_removal: drop zero pairs and the histogram's diagonal (the official
            ``sgs_diagonal_removal``: off in its CIFAR config, on in its ImageNet config).
        seed: seeds the generator that draws the statistics batches (plus the epoch).
    """

    def __init__(
        self,
        scalings: str | dict[str, Tensor] = "mutual_information",
        warmup_epochs: int = 0,
        update_every_epochs: int = 5,
        num_batches: int = 2,
        k: float = 5.0,
        diagonal_removal: bool = False,
        seed: int = 0,
    ) -> None:
        if isinstance(scalings, str):
            if scalings != "mutual_information":
                raise ValueError(f"scalings must be 'mutual_information' or a dict of K x K tensors by conv name, got {scalings!r}")
            self.static = False
            self.scalings: dict[str, Tensor] = {}
        elif isinstance(scalings, dict):
            if not scalings:
                raise ValueError("scalings is an empty dict: name at least one conv to scale")
            for name, s in scalings.items():
                s = torch.as_tensor(s)
                if s.dim() != 2 or not bool(torch.isfinite(s).all()) or bool((s < 0).any()):
                    raise ValueError(f"scalings['{name}'] must be a finite, non-negative K x K matrix, got {s!r}")
            self.static = True
            self.scalings = {name: torch.as_tensor(s).detach().clone() for name, s in scalings.items()}
        else:
            raise ValueError(f"scalings must be 'mutual_information' or a dict, got {type(scalings).__name__}")
        for arg, value, low in (
            ("warmup_epochs", warmup_epochs, 0),
            ("update_every_epochs", update_every_epochs, 1),
            ("num_batches", num_batches, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{arg} must be an integer >= {low}, got {value!r}")
        if isinstance(k, bool) or not isinstance(k, (int, float)) or not math.isfinite(k) or k <= 0:
            raise ValueError(f"k must be a positive number (the paper uses 5), got {k!r}")
        self.warmup_epochs = warmup_epochs
        self.update_every_epochs = update_every_epochs
        self.num_batches = num_batches
        self.k = float(k)
        self.diagonal_removal = bool(diagonal_removal)
        self.seed = int(seed)
        # state saved in checkpoints (with self.scalings)
        self.last_update_epoch: int | None = None  # the epoch whose start computed the current S
        self.updates = 0
        # run-time
        self._targets: dict[str, nn.Conv2d] = {}
        self._on_device: dict[str, Tensor] = {}  # S in the dtype / device of each weight's gradient

    @property
    def run_tag(self) -> str:
        """Appended to the run folder's method name by ``litzoo fit`` (``runs/resnet-sgs/...``)."""
        return "sgs"

    # ---------------------------------------------------------------- pieces usable without a Trainer
    @staticmethod
    def targets(module: nn.Module) -> dict[str, nn.Conv2d]:
        """Every ``nn.Conv2d`` of ``module`` with a kernel > 1 in both dims and a trainable weight, by name."""
        return {
            name: m
            for name, m in module.named_modules()
            if isinstance(m, nn.Conv2d) and m.kernel_size[0] > 1 and m.kernel_size[1] > 1 and m.weight.requires_grad
        }

    def resolve(self, module: nn.Module) -> dict[str, nn.Conv2d]:
        """The convs this callback scales (checked against fixed scalings), remembered for the steps."""
        targets = self.targets(module)
        if self.static:
            unknown = sorted(set(self.scalings) - set(targets))
            if unknown:
                raise LitzooError(
                    f"SpatialGradientScaling: scalings name {unknown}, which are not K x K convs of {type(module).__name__} "
                    f"(its K x K convs: {sorted(targets)[:10]}{' ...' if len(targets) > 10 else ''})"
                )
            for name, s in self.scalings.items():
                if tuple(s.shape) != tuple(targets[name].kernel_size):
                    raise LitzooError(
                        f"SpatialGradientScaling: scalings['{name}'] has shape {tuple(s.shape)}, the conv's kernel is {targets[name].kernel_size}"
                    )
            targets = {name: targets[name] for name in self.scalings}
        elif not targets:
            raise LitzooError(f"SpatialGradientScaling: {type(module).__name__} has no trainable nn.Conv2d with a kernel > 1 in both dims")
        self._targets = targets
        self._on_device = {}
        return targets

    @torch.no_grad()
    def scale_gradients(self) -> None:
        """``W.grad *= S`` for every conv with a scaling (convs without a gradient this step are skipped)."""
        for name, conv in self._targets.items():
            grad = conv.weight.grad
            s = self.scalings.get(name)
            if grad is None or s is None:
                continue
            cached = self._on_device.get(name)
            if cached is None or cached.device != grad.device or cached.dtype != grad.dtype:
                cached = self._on_device[name] = s.to(device=grad.device, dtype=grad.dtype)
            grad.mul_(cached)  # (K, K) broadcasts over (out, in / groups, K, K)

    @torch.no_grad()
    def compute_scalings(self, module: nn.Module, inputs: Iterable[Tensor]) -> dict[str, Tensor]:
        """Mutual-information scalings of the target convs from forwards of ``module`` on ``inputs`` (eval mode)."""
        targets = self._targets or self.resolve(module)
        maps: dict[str, list[Tensor]] = {name: [] for name in targets}

        def recorder(name: str):
            def hook(conv: nn.Conv2d, args: tuple[Tensor, ...], _output: Tensor) -> None:
                # the conv's own padding, in F.pad's (left, right, top, bottom) order, works for 'same' and tuples
                mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
                maps[name].append(F.pad(args[0].detach().float(), conv._reversed_padding_repeated_twice, mode=mode))

            return hook

        handles = [conv.register_forward_hook(recorder(name)) for name, conv in targets.items()]
        try:
            with eval_mode(module):
                for x in inputs:
                    module(x)
        finally:
            for handle in handles:
                handle.remove()
        result = {}
        for name, conv in targets.items():
            if not maps[name] or conv.kernel_size[0] % 2 == 0 or conv.kernel_size[1] % 2 == 0:
                continue  # not run in the forward, or no centre pixel: keeps its previous scaling
            dependence = feature_map_dependence(maps[name], conv.kernel_size, conv.dilation, self.k, self.diagonal_removal)
            if bool(torch.isnan(dependence).any()):
                continue
            result[name] = (dependence / dependence.mean()).float()
        return result

    @staticmethod
    def centre_ratio(s: Tensor) -> float:
        """Centre of ``s`` over the mean of the other entries."""
        kh, kw = s.shape
        centre = s[kh // 2, kw // 2]
        return (centre / ((s.sum() - centre) / (s.numel() - 1))).item()

    # ---------------------------------------------------------------- fit
    @override
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        targets = self.resolve(pl_module)
        if trainer.gradient_clip_val:
            rank_zero_warn(
                f"SpatialGradientScaling: gradient_clip_val={trainer.gradient_clip_val} clips the *scaled* gradients, which is not the "
                "re-parameterized training SGS stands for (clipping is not linear) and not the official loop either (it clips before "
                "scaling); remove gradient clipping for the exact method"
            )
        adaptive = [type(o).__name__ for o in trainer.optimizers if isinstance(o, ADAPTIVE_OPTIMIZERS)]
        if adaptive:
            rank_zero_warn(
                f"SpatialGradientScaling with {adaptive[0]}: its per-element normalisation (almost) cancels a fixed per-position "
                "gradient scale, so SGS changes little; the paper trains with SGD"
            )
        rank_zero_info(
            f"SpatialGradientScaling: {len(targets)} convs scaled"
            + (
                " (fixed scalings)"
                if self.static
                else f"; S = ones for {self.warmup_epochs} epochs, then mutual information every {self.update_every_epochs}"
            )
        )

    def is_update_epoch(self, epoch: int) -> bool:
        """Whether the start of ``epoch`` recomputes ``S`` (never with fixed scalings)."""
        return not self.static and epoch >= self.warmup_epochs and (epoch - self.warmup_epochs) % self.update_every_epochs == 0

    @override
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch
        # a run resumed mid-epoch starts this epoch again: its S was already computed (and restored)
        if not self.is_update_epoch(epoch) or self.last_update_epoch == epoch:
            return
        scalings = None
        if trainer.is_global_zero:
            scalings = self.compute_scalings(pl_module, self._statistics_inputs(trainer, pl_module))
        # every rank scales with rank 0's matrices: identical updates without gathering feature maps
        scalings = trainer.strategy.broadcast(scalings, src=0)
        self.scalings.update({name: s.cpu() for name, s in scalings.items()})
        self._on_device = {}
        self.last_update_epoch = epoch
        self.updates += 1
        self._log(trainer)

    def _statistics_inputs(self, trainer: L.Trainer, pl_module: L.LightningModule) -> list[Tensor]:
        """``num_batches`` input tensors drawn from the training set, without touching the run's RNG streams."""
        # seeded by the epoch too: each update sees other samples, a resumed run the same ones
        seed = self.seed * 100003 + trainer.current_epoch
        batches = sample_training_batches(trainer, self.num_batches, seed, "SpatialGradientScaling")
        return [batch_inputs(batch).to(pl_module.device) for batch in batches]

    def _log(self, trainer: L.Trainer) -> None:
        ratios = {name: self.centre_ratio(s) for name, s in self.scalings.items()}
        if not ratios:
            return
        width = max(len(name) for name in ratios)
        rank_zero_info(
            f"SpatialGradientScaling: epoch {trainer.current_epoch}, S updated (centre / mean of the rest):\n"
            + "\n".join(f"  {name:<{width}}  {r:.3f}" for name, r in ratios.items())
        )
        metrics = {f"sgs/{name}/centre_ratio": r for name, r in ratios.items()}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)

    @override
    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer) -> None:
        if not self._targets:  # on_fit_start not run (a manual call path)
            self.resolve(pl_module)
        self.scale_gradients()

    # ---------------------------------------------------------------- resuming
    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "scalings": {name: s.clone() for name, s in self.scalings.items()},
            "static": self.static,
            "last_update_epoch": self.last_update_epoch,
            "updates": self.updates,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not self.static:  # fixed scalings given to this run win over the checkpoint's
            self.scalings = {name: s.clone() for name, s in state_dict.get("scalings", {}).items()}
        self.last_update_epoch = state_dict.get("last_update_epoch")
        self.updates = int(state_dict.get("updates", 0))
        self._on_device = {}
