"""FastClip: clip the spectral norm of every conv / linear layer (or conv+BN composite) of any model, exactly.

FastClip (Boroojeny, Telgarsky, Sundaram, AISTATS 2024, "Spectrum Extraction and Clipping for
Implicitly Linear Layers", PMLR v238 pp. 2971-2979; official code Ali-E/FastClip,
``models/clip_toolbox.py`` ``deflate_model`` / ``deflate_model_multi`` and the ``SpectralNorm``
wrapper of ``models/spectral_normalization_deflate_complex_both_bn.py``). The largest singular
value ``sigma`` of a layer's linear map on its actual input size, and its right singular vector
``v``, come from PowerQR (``litzoo.framework.spectral.power_qr``), which is exact for any padding, stride,
dilation and groups. When ``sigma > c`` the layer's weights take a few gradient steps towards
mapping ``v`` to ``(c / sigma) L(v)``: only the top direction is shrunk, the rest of the spectrum is
left alone (unlike dividing the whole weight by ``sigma``). Repeated every ``clip_every`` steps with
warm-started vectors, the top singular values of every layer are driven to ``<= c``.

BatchNorm (the paper's "composition of convolutional and batch normalization layers"; official
``concat_sv`` / ``CNNBN`` and the ``clipBN_hard`` mode of ``experiments/main_jobsubmit.py``): in
eval mode a BN is the per-channel affine map ``diag(gamma / sqrt(running_var + eps))`` plus a shift,
so a conv whose output goes straight into a BN is the implicitly linear operator
``L(x) = BN(conv(x)) - BN(conv(0)) = diag(gamma / sqrt(var + eps)) M x``, and PowerQR and the
clipping steps apply to it unchanged. Its norm is at most, and usually well below, the product of
the two norms. A BN alone can only be bounded by clamping ``|gamma| <= c sqrt(var + eps)``.
"""

from __future__ import annotations

import math
import weakref
import zlib
from fnmatch import fnmatch
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from typing_extensions import override

from litzoo.framework.errors import LitzooError
from litzoo.framework.profiling import eval_mode
from litzoo.framework.spectral import power_qr

BatchNormMode = Literal["compose", "clamp", "ignore"]
BATCHNORM_MODES = ("compose", "clamp", "ignore")


def clip_loss(output: Tensor, target: Tensor) -> Tensor:
    """The official clipping objective's reduction: squared error summed over dims (1, 2), then the mean.

    For a conv output ``(N, C, H, W)`` this sums over channels and rows and averages over the batch
    and the columns, so the effective step size is divided by the output width (the official step
    0.35 is tuned for it: with a plain ``.sum()`` it diverges). Outputs with fewer dims (a Linear's
    ``(N, out)``) are summed over every non-batch dim.
    """
    err = (output - target).pow(2)
    dims = tuple(range(1, min(3, err.dim())))
    return err.sum(dims).mean() if dims else err.mean()


def clip_layer(
    layer: nn.Module,
    vector: Tensor,
    sigma: float,
    clip: float,
    steps: int = 5,
    step_size: float = 0.35,
    params: list[Tensor] | None = None,
) -> None:
    """One clipping round of FastClip, in place: move ``layer`` so that ``L_W(v) -> (clip / sigma) L_W0(v)``.

    ``vector`` is a right singular vector ``(1, *input_shape)`` of ``layer`` with singular value
    ``sigma``; ``L(x) = f(x) - f(0)``. The official code copies the layer to a frozen ``f0`` and
    evaluates ``f0((c / sigma) v)``; by linearity that is ``(c / sigma) L_W0(v)``, computed once
    here without a copy. ``steps`` plain gradient steps of ``step_size`` on ``params`` (default: the
    layer's trainable parameters; a bias gets a zero gradient since it cancels in ``L``). The
    gradients are taken with ``autograd.grad``: ``.grad`` is never touched, so the optimizer's and
    DDP's gradient state is unaffected. The layer is evaluated in eval mode (BN running stats).
    """
    params = [p for p in layer.parameters() if p.requires_grad] if params is None else list(params)
    with eval_mode(layer):
        with torch.no_grad():
            offset = layer(torch.zeros_like(vector))
            target = (clip / sigma) * (layer(vector) - offset)
        for _ in range(steps):
            with torch.enable_grad():
                loss = clip_loss(layer(vector) - layer(torch.zeros_like(vector)), target)
                grads = torch.autograd.grad(loss, params, allow_unused=True)
            with torch.no_grad():
                for p, g in zip(params, grads, strict=True):
                    if g is not None:
                        p.sub_(g, alpha=step_size)


def bn_gain(bn: _BatchNorm, running_var: Tensor | None = None) -> Tensor:
    """Per-channel gain ``gamma / sqrt(running_var + eps)`` of an eval-mode BN (``gamma = 1`` without affine).

    The BN's linear part is ``diag(gain)``; its spectral norm is ``gain.abs().max()``.
    """
    var = bn.running_var if running_var is None else running_var
    if var is None:
        raise LitzooError(f"{type(bn).__name__} has no running statistics (track_running_stats=False): not a fixed linear map")
    scale = torch.rsqrt(var.detach() + bn.eps)
    return scale * bn.weight.detach() if bn.weight is not None else scale


@torch.no_grad()
def clamp_batchnorm(bn: _BatchNorm, clip: float, running_var: Tensor | None = None) -> float:
    """The official BN clamp (``bn_hard``): ``|gamma| <= clip * sqrt(running_var + eps)``, in place.

    Each channel's gain ``|gamma| / sqrt(var + eps)`` (the eval-mode BN's singular values) becomes at
    most ``clip``; channels already below are untouched and signs are kept. Returns the BN's spectral
    norm measured *before* the clamp. Without ``affine`` there is no ``gamma`` to clamp (returned as is).
    """
    sigma = float(bn_gain(bn, running_var).abs().max())
    if bn.weight is not None and sigma > clip:
        var = bn.running_var if running_var is None else running_var
        bound = clip * torch.sqrt(var.to(bn.weight.dtype) + bn.eps)
        bn.weight.copy_(torch.maximum(torch.minimum(bn.weight, bound), -bound))
    return sigma


class ConvBN(nn.Module):
    """The eval-mode composite ``BN(layer(x))`` of a conv (or linear) and the BN its output goes into.

    Shares the parameters of ``layer`` and ``bn`` (nothing is copied); the BN is applied with its
    running statistics, or with ``running_mean`` / ``running_var`` when given (FastClip passes rank
    0's under DDP, where each rank's statistics drift apart between forwards). Matches
    ``nn.Sequential(layer, bn).eval()`` exactly.
    """

    def __init__(self, layer: nn.Module, bn: _BatchNorm, running_mean: Tensor | None = None, running_var: Tensor | None = None) -> None:
        super().__init__()
        if bn.running_var is None and running_var is None:
            raise LitzooError(f"{type(bn).__name__} has no running statistics (track_running_stats=False): BN o conv is not linear")
        self.layer = layer
        self.bn = bn
        self._mean = running_mean
        self._var = running_var

    def forward(self, x: Tensor) -> Tensor:
        bn = self.bn
        mean = bn.running_mean if self._mean is None else self._mean
        var = bn.running_var if self._var is None else self._var
        return F.batch_norm(self.layer(x), mean, var, bn.weight, bn.bias, False, 0.0, bn.eps)

    def clip_params(self) -> list[Tensor]:
        """The parameters the clipping steps move: the layer's weight and BN's ``gamma`` (official: every ``*.weight``)."""
        return [p for p in (self.layer.weight, self.bn.weight) if p is not None and p.requires_grad]


def composable(layer: nn.Module, bn: nn.Module) -> bool:
    """Whether ``bn(layer(x))`` is one implicitly linear operator FastClip can clip: a conv / linear whose
    weight's first dim is its output channels, into a BN with running statistics over those channels."""
    return (
        isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))
        and isinstance(bn, _BatchNorm)
        and bn.track_running_stats
        and bn.running_var is not None
        and bn.num_features == layer.weight.shape[0]
    )


class _Call:
    """One training-forward call of a target layer: its output (weakly held) and the BNs that took it as input."""

    __slots__ = ("name", "ref", "version", "consumers")

    def __init__(self, name: str, output: Tensor) -> None:
        self.name = name
        self.ref = weakref.ref(output)
        self.version = output._version
        self.consumers: set[str] = set()


class FastClip(L.Callback):
    """FastClip (Boroojeny et al., AISTATS 2024): keep the spectral norm of each layer at most ``clip``.

    Targets: every submodule whose class (or a base class) is named in ``include`` (default conv and
    linear layers), found by type on any LightningModule, minus the ``exclude`` ``fnmatch`` patterns
    of module names (as in ``pl_module.named_modules()``). Each target's input shape (without the
    batch dimension) is recorded from the training forward passes: the spectral norm of a conv
    depends on it.

    BatchNorm (``batchnorm``):

    * ``"compose"`` (default; the paper's composition, official ``concat_sv``): a target whose output
      goes *straight* into a BN (``nn.BatchNorm1d/2d/3d``, ``SyncBatchNorm``, with running stats) is
      clipped as the single operator ``BN o conv`` in eval mode, ``diag(gamma / sqrt(var + eps)) M``,
      logged as ``fastclip/sigma/<conv>+<bn>``. The pairs are found on any model during the training
      forward: a forward hook on each target keeps a weak reference to its output, and a pre-hook on
      each BN checks that its input *is* that tensor (object identity, and an unchanged version
      counter, so an in-place op in between breaks the pair). A target whose output reaches the BN
      through anything else (a ReLU, an add), or goes into two BNs, or a BN fed by several sources,
      is not paired. Only module consumers are seen: a conv output that goes into its BN *and* into a
      functional op elsewhere is still paired (that other path then sees the conv unclipped). The clipping steps move the conv's weight *and* BN's ``gamma`` (the official
      code steps every parameter named ``weight`` of the composite; biases and ``beta`` cancel in
      ``L``), with the step size divided by ``max(1, max gain^2)``: the composite's curvature grows
      with the BN gain squared (unscaled, 0.35 diverged to NaN at gains ~6; the official composite
      branch instead hard-codes 0.01, which barely moves a gain-1 composite: 1.23 -> 1.06 in 12
      events, against 1.23 -> 1.00 here). BNs that follow no target (e.g. fed by an add) are
      clamped as in ``"clamp"``, the only bound a lone BN has (the official networks have none).
    * ``"clamp"`` (official ``clipBN_hard``, ``bn_hard=True``): targets are clipped alone and every BN
      is clamped, ``|gamma| <= clip * sqrt(running_var + eps)`` per channel (``clamp_batchnorm``),
      logged as ``fastclip/sigma/<bn>`` (its norm before the clamp). The pair's Lipschitz bound is
      then the product, ``<= clip^2``.
    * ``"ignore"`` (official ``wBN``): targets are clipped alone and BN is left as it is, so the
      network's Lipschitz bound still depends on BN's scale.

    Not reproduced from the official code: its composite clipping runs on copies of conv and BN left
    in *train* mode (BN then normalises the probe by its own statistics and the copy's updated running
    statistics are loaded back); here the composite is the eval-mode operator throughout. The official
    ``concat_sv`` networks also clip each inner conv alone (to a separate ``convsn``) besides the
    composite (to ``catsn``); here a paired conv is clipped only through its composite.

    What training does to it: in train mode BN divides each channel by its batch statistics, so any
    per-channel rescaling of the conv (all that clipping the conv alone amounts to there) is undone
    within a few steps as the running variance follows; a composite is held down only through
    ``gamma`` and the direction of the conv's weights, against an optimizer (and weight decay) that
    push the BN gain back up. Its top singular values are also many and nearly equal (a conv on a
    32x32 input: 24 of them within 2% of the top), and each round shrinks one direction. On the
    digits CNN of ``benchmarks/gradient_reparam.py`` (10 epochs, an event every 10 steps) the largest
    composite norm ended at 6.2 (conv alone clipped: 7.9, plain: 10.8): far above ``c`` at that budget.

    Every ``clip_every`` optimizer steps once ``warmup_steps`` have passed (the official
    ``clip_steps = 50`` training forwards and ``init_delay = 500``), in ``on_train_batch_end`` (after
    the optimizer step; once per step under gradient accumulation), for each target or composite:

    1. PowerQR on ``L(x) = f(x) - f(0)`` in eval mode: ``power_iterations`` (100) from a random start
       the first time, then ``warm_iterations`` (``clip_every``) warm-started from the stored vector;
    2. if ``sigma > clip`` (or, with ``exact=True``, ``sigma < clip - 0.05``): ``clip_opt_iter``
       gradient steps of ``clip_step_size`` on the weights minimising
       ``|| L_W(v) - (clip / sigma) L_W0(v) ||^2`` (reduction: sum over dims (1, 2), mean over the
       rest, as the official code; see ``clip_loss``);
    3. ``deflate_iter - 1`` more such rounds (official ``deflate_model_multi``), each after a
       warm-started PowerQR re-estimate, stopping once no clipping is needed.

    One round shrinks ``sigma`` only part of the way (the notes measured
    1.47 -> 1.23 -> 1.16 -> 1.10 -> 1.07 -> 1.05 -> 1.03): it converges over several events (or
    rounds), while training keeps pushing back. The official wrapper sets ``exact_flag=True`` (also
    *raises* a layer whose ``sigma`` fell below ``clip - 0.05``, so ``sigma ~ clip``); the paper's
    clipping is ``sigma <= clip``, which is the default here (``exact=False``): a layer already below
    ``clip`` is never touched. ``exact`` applies to composites too; the BN clamp only ever lowers.

    DDP: every rank does the same computation on the same (synchronised) weights with the same
    vectors, so the ranks stay identical without communication, except for BN running statistics,
    which each rank updates from its own batches: the composites and clamps use rank 0's (broadcast
    at each event, without writing them into the model; DDP's ``broadcast_buffers`` gives every rank
    rank 0's at the next forward anyway). The random starts come from a CPU generator seeded by
    ``seed`` and the module *name* (not its position), the same on every rank. The vectors, the last
    ``sigma``, the input shapes and the conv -> BN pairs are saved in ``state_dict``, keyed by module
    name (``<conv>+<bn>`` for a composite), so resuming continues exactly. The clipping edits weights
    outside the optimizer: its momentum still points the old way (as in the official code).

    Logged at every clip event: ``fastclip/sigma/<layer>``, ``fastclip/sigma/<conv>+<bn>`` and
    ``fastclip/sigma/<bn>`` (each ``sigma`` measured before clipping) and ``fastclip/sigma_max``.

    Args:
        clip: the target spectral norm ``c`` (> 0).
        clip_every: optimizer steps between clip events (official ``clip_steps`` 50).
        warmup_steps: no clipping before this many steps (official ``init_delay`` 500).
        clip_opt_iter: gradient steps per clipping round (official 5).
        clip_step_size: their step size (official 0.35, tuned for the ``clip_loss`` reduction).
        deflate_iter: clipping rounds per event, PowerQR re-estimated between them (official 1).
        power_iterations: PowerQR iterations from a random start (official ``init_pqr_iter`` 100).
        warm_iterations: PowerQR iterations per event from the stored vector (default ``clip_every``:
            the official budget of one iteration per training forward, spent at the event on the
            current weights). One per event is too few: after a clip the top direction moves to
            another vector and the estimate lags (measured 1.11 reported for a true 1.26).
        exact: also clip upwards when ``sigma < clip - 0.05`` (the official ``exact_flag``).
        batchnorm: ``"compose"``, ``"clamp"`` or ``"ignore"`` (above).
        include: class names of the target layers (matched against the class and its bases).
        exclude: ``fnmatch`` patterns of module names left alone (targets and BNs).
        seed: of the random starts (combined with each module's name).
    """

    #: the official exact_flag raises sigma only below clip - this margin
    exact_margin = 0.05

    def __init__(
        self,
        clip: float = 1.0,
        clip_every: int = 50,
        warmup_steps: int = 500,
        clip_opt_iter: int = 5,
        clip_step_size: float = 0.35,
        deflate_iter: int = 1,
        power_iterations: int = 100,
        warm_iterations: int | None = None,
        exact: bool = False,
        batchnorm: BatchNormMode = "compose",
        include: list[str] | None = None,
        exclude: list[str] | None = None,
        seed: int = 0,
    ) -> None:
        if isinstance(clip, bool) or not isinstance(clip, (int, float)) or not math.isfinite(clip) or clip <= 0:
            raise ValueError(f"clip must be a positive spectral norm, got {clip!r}")
        for name, value, low in (
            ("clip_every", clip_every, 1),
            ("warmup_steps", warmup_steps, 0),
            ("clip_opt_iter", clip_opt_iter, 1),
            ("deflate_iter", deflate_iter, 1),
            ("power_iterations", power_iterations, 1),
            ("warm_iterations", clip_every if warm_iterations is None else warm_iterations, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        if isinstance(clip_step_size, bool) or not isinstance(clip_step_size, (int, float)) or not clip_step_size > 0:
            raise ValueError(f"clip_step_size must be positive, got {clip_step_size!r}")
        if batchnorm not in BATCHNORM_MODES:
            raise ValueError(f"batchnorm must be one of {BATCHNORM_MODES}, got {batchnorm!r}")
        self.clip = float(clip)
        self.clip_every = clip_every
        self.warmup_steps = warmup_steps
        self.clip_opt_iter = clip_opt_iter
        self.clip_step_size = float(clip_step_size)
        self.deflate_iter = deflate_iter
        self.power_iterations = power_iterations
        # the official wrapper runs one warm iteration per training forward: clip_every of them per event
        self.warm_iterations = clip_every if warm_iterations is None else warm_iterations
        self.exact = bool(exact)
        self.batchnorm = batchnorm
        self.include = list(include if include is not None else ["Conv2d", "Linear"])
        if not self.include:
            raise ValueError("include must name at least one layer class (e.g. ['Conv2d', 'Linear'])")
        self.exclude = list(exclude or [])
        self.seed = int(seed)
        # state saved in checkpoints, keyed by module name ("<conv>+<bn>" for a composite)
        self.vectors: dict[str, Tensor] = {}  # top right singular vector, (1, *input_shape)
        self.sigmas: dict[str, float] = {}  # sigma measured at the last event (before clipping)
        self.input_shapes: dict[str, tuple[int, ...]] = {}
        self.pairs: dict[str, str] = {}  # target name -> name of the BN its output goes straight into
        self.events = 0
        self.last_step = -1  # global step of the last event (acts once per optimizer step)
        # run-time
        self._module: nn.Module | None = None
        self._targets: dict[str, nn.Module] = {}
        self._batchnorms: dict[str, _BatchNorm] = {}
        self._hooks: list[Any] = []
        self._tracing = False
        self._calls: dict[int, _Call] = {}  # id(output) -> call, for the current training batch
        self._call_log: list[_Call] = []
        self._bn_sources: dict[str, set[str | None]] = {}

    @property
    def run_tag(self) -> str:
        """Appended to the run folder's method name by ``litzoo fit``."""
        return "fastclip"

    # ---------------------------------------------------------------- pieces usable without a Trainer
    def _excluded(self, name: str) -> bool:
        return any(fnmatch(name, pattern) for pattern in self.exclude)

    def targets(self, module: nn.Module) -> dict[str, nn.Module]:
        """The clipped layers of ``module``, by name: class (or a base) named in ``include``, not excluded."""
        found = {
            name: m
            for name, m in module.named_modules()
            if name and any(cls.__name__ in self.include for cls in type(m).__mro__) and not self._excluded(name)
        }
        if not found:
            raise LitzooError(f"FastClip: {type(module).__name__} has no layer of the types {self.include} (exclude={self.exclude})")
        return found

    def batchnorms(self, module: nn.Module) -> dict[str, _BatchNorm]:
        """The BatchNorm layers of ``module`` (``_BatchNorm`` subclasses), by name, not excluded."""
        return {name: m for name, m in module.named_modules() if name and isinstance(m, _BatchNorm) and not self._excluded(name)}

    def _generator(self, name: str) -> torch.Generator:
        # seeded by the name, not by enumeration order: the same start on every rank and after model edits
        return torch.Generator().manual_seed(self.seed * 1_000_003 + zlib.crc32(name.encode()))

    def _needs_clip(self, sigma: float) -> bool:
        return sigma > self.clip or (self.exact and 0 < sigma < self.clip - self.exact_margin)

    def _estimate(self, name: str, operator: nn.Module, input_shape: tuple[int, ...], init: Tensor | None) -> tuple[float, Tensor]:
        first = next(operator.parameters())
        with eval_mode(operator):
            sigmas, vectors = power_qr(
                operator,
                input_shape,
                k=1,
                iterations=self.power_iterations if init is None else self.warm_iterations,
                init=None if init is None else init.to(device=first.device, dtype=first.dtype),
                generator=self._generator(name),
                dtype=first.dtype,
                device=first.device,
            )
        return float(sigmas[0]), vectors

    @torch.no_grad()
    def clip_step(
        self, name: str, layer: nn.Module, input_shape: tuple[int, ...], params: list[Tensor] | None = None, step_size: float | None = None
    ) -> float:
        """One clip event for one layer (or ``ConvBN`` composite): estimate ``sigma`` (warm-started),
        clip if needed, up to ``deflate_iter`` rounds; returns the ``sigma`` measured first.

        ``params`` / ``step_size``: what the gradient steps move and how far (default: every trainable
        parameter, ``clip_step_size``); ``clip_composite`` passes the composite's.
        """
        init = self.vectors.get(name)
        if init is not None and tuple(init.shape[1:]) != tuple(input_shape):
            init = None  # the input size changed: the old vector does not apply
        sigma, vectors = self._estimate(name, layer, input_shape, init)
        self.vectors[name] = vectors
        self.sigmas[name] = sigma
        current = sigma
        for round_ in range(self.deflate_iter):
            if round_ > 0:  # official deflate_model_multi: re-estimate between rounds
                current, vectors = self._estimate(name, layer, input_shape, vectors)
                self.vectors[name] = vectors
            if not self._needs_clip(current):
                break
            clip_layer(layer, vectors, current, self.clip, self.clip_opt_iter, self.clip_step_size if step_size is None else step_size, params)
        return sigma

    def clip_composite(
        self,
        layer_name: str,
        layer: nn.Module,
        bn_name: str,
        bn: _BatchNorm,
        input_shape: tuple[int, ...],
        running_mean: Tensor | None = None,
        running_var: Tensor | None = None,
    ) -> float:
        """One clip event for ``BN o layer`` (eval mode), keyed ``<layer>+<bn>``; returns its ``sigma`` before clipping.

        The steps move the layer's weight and ``gamma``, of size ``clip_step_size / max(1, max gain^2)``.
        """
        composite = ConvBN(layer, bn, running_mean, running_var)
        gain = float(bn_gain(bn, running_var).abs().max())
        step = self.clip_step_size / max(1.0, gain * gain)
        return self.clip_step(f"{layer_name}+{bn_name}", composite, input_shape, params=composite.clip_params(), step_size=step)

    def clamp_step(self, name: str, bn: _BatchNorm, running_var: Tensor | None = None) -> float | None:
        """The BN clamp for one BN (``clamp_batchnorm``); returns its norm before, None without running stats."""
        if bn.running_var is None and running_var is None:
            return None
        sigma = clamp_batchnorm(bn, self.clip, running_var)
        self.sigmas[name] = sigma
        return sigma

    def clip_module(
        self,
        module: nn.Module,
        input_shapes: dict[str, tuple[int, ...]] | None = None,
        pairs: dict[str, str] | None = None,
        running_stats: dict[str, tuple[Tensor, Tensor]] | None = None,
    ) -> dict[str, float]:
        """One clip event over ``module``: every target whose input shape is known (alone, or with its BN
        as a composite under ``batchnorm="compose"``), then the BN clamps; returns sigma per name.

        ``input_shapes`` and ``pairs`` default to those recorded (``trace`` or the training forwards);
        ``running_stats`` overrides BN running (mean, var) by BN name (rank 0's under DDP).
        """
        shapes = self.input_shapes if input_shapes is None else input_shapes
        pairs = self.pairs if pairs is None else pairs
        running_stats = running_stats or {}
        cached = module is self._module and bool(self._targets)
        targets = self._targets if cached else self.targets(module)
        bns = {} if self.batchnorm == "ignore" else self._batchnorms if cached else self.batchnorms(module)
        sigmas: dict[str, float] = {}
        composed: set[str] = set()
        for name, layer in targets.items():
            if name not in shapes:
                continue
            bn_name = pairs.get(name) if self.batchnorm == "compose" else None
            bn = bns.get(bn_name) if bn_name is not None else None
            if bn is not None and composable(layer, bn):
                mean, var = running_stats.get(bn_name, (None, None))
                sigmas[f"{name}+{bn_name}"] = self.clip_composite(name, layer, bn_name, bn, shapes[name], mean, var)
                composed.add(bn_name)
            else:
                sigmas[name] = self.clip_step(name, layer, shapes[name])
        if self.batchnorm != "ignore":
            for name, bn in bns.items():
                if name not in composed:
                    sigma = self.clamp_step(name, bn, running_stats.get(name, (None, None))[1])
                    if sigma is not None:
                        sigmas[name] = sigma
        return sigmas

    @torch.no_grad()
    def trace(self, module: nn.Module, *args: Any, **kwargs: Any) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
        """Record the targets' input shapes and the conv -> BN pairs from one forward of ``module(*args, **kwargs)``.

        Runs in eval mode without gradients (BN statistics do not move); for using ``clip_module``
        or the measurements outside a ``Trainer``. Returns (and stores) ``(input_shapes, pairs)``.
        """
        hooks = self._install_hooks(module)
        self._reset_batch()
        self._tracing = True
        try:
            with eval_mode(module):
                module(*args, **kwargs)
            self._finish_batch()
        finally:
            self._tracing = False
            for hook in hooks:
                hook.remove()
        return dict(self.input_shapes), dict(self.pairs)

    # ---------------------------------------------------------------- conv -> BN detection
    def _install_hooks(self, module: nn.Module) -> list[Any]:
        hooks = []
        for name, layer in self.targets(module).items():
            hooks.append(layer.register_forward_pre_hook(self._shape_recorder(name)))
            hooks.append(layer.register_forward_hook(self._output_recorder(name)))
        for name, bn in self.batchnorms(module).items():
            hooks.append(bn.register_forward_pre_hook(self._bn_recorder(name)))
        return hooks

    def _recording(self, module: nn.Module) -> bool:
        return module.training or self._tracing

    def _shape_recorder(self, name: str):
        def record(module: nn.Module, args: tuple[Any, ...]) -> None:
            if self._recording(module) and args and isinstance(args[0], Tensor):
                self.input_shapes[name] = tuple(args[0].shape[1:])

        return record

    def _output_recorder(self, name: str):
        def record(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            if self._recording(module) and isinstance(output, Tensor):
                call = _Call(name, output)
                self._calls[id(output)] = call
                self._call_log.append(call)

        return record

    def _bn_recorder(self, name: str):
        def record(module: nn.Module, args: tuple[Any, ...]) -> None:
            if not (self._recording(module) and args and isinstance(args[0], Tensor)):
                return
            x = args[0]
            call = self._calls.get(id(x))
            # the very tensor the target returned (a dead weakref cannot match a reused id), not edited in place since
            if call is not None and call.ref() is x and x._version == call.version:
                call.consumers.add(name)
                self._bn_sources.setdefault(name, set()).add(call.name)
            else:
                self._bn_sources.setdefault(name, set()).add(None)

        return record

    def _reset_batch(self) -> None:
        self._calls, self._call_log, self._bn_sources = {}, [], {}

    def _finish_batch(self) -> None:
        """Update ``pairs`` from the forwards since the last reset: a target is paired with a BN when every
        call of it fed exactly that BN and that BN was fed by nothing else."""
        consumers: dict[str, set[str | None]] = {}
        for call in self._call_log:
            seen = consumers.setdefault(call.name, set())
            seen.update(call.consumers if call.consumers else {None})
            if len(call.consumers) > 1:
                seen.add(None)  # one output into two BNs: not a single composite
        for name, seen in consumers.items():
            bn = next(iter(seen)) if len(seen) == 1 else None
            if bn is not None and self._bn_sources.get(bn) == {name}:
                self.pairs[name] = bn
            else:
                self.pairs.pop(name, None)
        for name, bn in list(self.pairs.items()):  # a BN seen with other sources since: unpair
            if bn in self._bn_sources and self._bn_sources[bn] != {name}:
                del self.pairs[name]
        self._reset_batch()

    # ---------------------------------------------------------------- fit
    @override
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._module = pl_module
        self._targets = self.targets(pl_module)
        self._batchnorms = self.batchnorms(pl_module)
        self._hooks += self._install_hooks(pl_module)
        rank_zero_info(
            f"FastClip: clipping {len(self._targets)} layers to spectral norm <= {self.clip:g} every {self.clip_every} steps "
            f"after {self.warmup_steps} (batchnorm={self.batchnorm!r}, {len(self._batchnorms)} BN layers)"
        )

    def first_event_step(self, after: int = 0) -> int:
        """The first optimizer step after step ``after`` at which a clip event happens."""
        first = max(1, self.warmup_steps, after + 1)
        return math.ceil(first / self.clip_every) * self.clip_every

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        total = trainer.estimated_stepping_batches
        if trainer.fast_dev_run or not math.isfinite(total):
            return
        first = self.first_event_step(trainer.global_step)
        if first > total:
            # a silent no-op otherwise: the run would end with every layer unclipped
            rank_zero_warn(
                f"FastClip: this run has {int(total)} optimizer steps and the first clip event comes at step {first} "
                f"(warmup_steps={self.warmup_steps}, clip_every={self.clip_every}): no layer will be clipped; "
                "lower warmup_steps and clip_every, or train longer"
            )

    @override
    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        self._reset_batch()

    def _rank0_running_stats(self, trainer: L.Trainer) -> dict[str, tuple[Tensor, Tensor]]:
        """BN running (mean, var) as on rank 0 (each rank updates its own from its batches); {} on one process.

        The mean cancels in ``L`` but not bitwise: both are broadcast so that the ranks stay identical.
        """
        if self.batchnorm == "ignore" or trainer.world_size <= 1 or not torch.distributed.is_available() or not torch.distributed.is_initialized():
            return {}
        bns = {n: bn for n, bn in self._batchnorms.items() if bn.running_var is not None and bn.running_mean is not None}
        if not bns:
            return {}
        flat = torch.cat([t.detach().flatten() for bn in bns.values() for t in (bn.running_mean, bn.running_var)]).clone()
        torch.distributed.broadcast(flat, src=0)
        out, offset = {}, 0
        for n, bn in bns.items():
            stats = []
            for t in (bn.running_mean, bn.running_var):
                stats.append(flat[offset : offset + t.numel()].view_as(t))
                offset += t.numel()
            out[n] = (stats[0], stats[1])
        return out

    @override
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._finish_batch()
        step = trainer.global_step
        # global_step counts optimizer steps: under accumulation (or a skipped AMP step) it does not move
        if step == self.last_step or step < max(1, self.warmup_steps) or step % self.clip_every != 0:
            return
        self.last_step = step
        sigmas = self.clip_module(pl_module, running_stats=self._rank0_running_stats(trainer))
        self.events += 1
        if sigmas and trainer.loggers:
            metrics = {f"fastclip/sigma/{name}": s for name, s in sigmas.items()}
            metrics["fastclip/sigma_max"] = max(sigmas.values())
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=step)

    @override
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._remove_hooks()
        if self.events == 0 and not trainer.fast_dev_run:
            rank_zero_warn(
                f"FastClip: fit ended after {trainer.global_step} optimizer steps without a clip event "
                f"(warmup_steps={self.warmup_steps}, clip_every={self.clip_every}): no layer was clipped"
            )

    @override
    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._remove_hooks()

    def _remove_hooks(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        self._reset_batch()

    # ---------------------------------------------------------------- checkpoints
    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "clip": self.clip,
            "batchnorm": self.batchnorm,
            "vectors": {name: v.detach().cpu() for name, v in self.vectors.items()},
            "sigmas": dict(self.sigmas),
            "input_shapes": {name: list(s) for name, s in self.input_shapes.items()},
            "pairs": dict(self.pairs),
            "events": self.events,
            "last_step": self.last_step,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.vectors = {name: v.clone() for name, v in state_dict.get("vectors", {}).items()}
        self.sigmas = {name: float(s) for name, s in state_dict.get("sigmas", {}).items()}
        self.input_shapes = {name: tuple(int(d) for d in s) for name, s in state_dict.get("input_shapes", {}).items()}
        self.pairs = {str(k): str(v) for k, v in state_dict.get("pairs", {}).items()}
        self.events = int(state_dict.get("events", 0))
        self.last_step = int(state_dict.get("last_step", -1))
