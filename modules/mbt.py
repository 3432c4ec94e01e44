"""MBT: attention bottlenecks for audio-visual fusion, with late fusion and full cross-modal attention from the same code.

Nagrani, Yang, Arnab, Jansen, Schmid, Sun, "Attention Bottlenecks for Multimodal Fusion", NeurIPS 2021
(arXiv 2107.00135). Official code: google-research/scenic ``scenic/projects/mbt/model.py`` (``MBT``, ``Encoder``,
``EncoderBlock``) and ``configs/audioset/balanced_audioset_base.py``, read line by line; this is our own PyTorch code.

Verified against ``model.py`` and followed here:

* **Tokens.** RGB: non-overlapping 3-D tubelets, one ``Conv3d`` (``temporal_encoding_config.method = '3d_conv'``,
  ``patches.size = [16, 16, 2]``; :class:`~litzoo.framework.nn.video.TubeletEmbed`, whose
  :meth:`~litzoo.framework.nn.video.TubeletEmbed.load_patch_embedding` is the ``central_frame_initializer``).
  Spectrogram: the ``(time, mel)`` log-mel image cut into 16×16 patches by one ``Conv2d``
  (:class:`~litzoo.framework.nn.vit.PatchEmbed`). Each modality gets its own learned position embedding
  (``posembed_input`` / ``posembed_input_spectrogram``, normal std 0.02), added after the class token (if any) is
  prepended, so the class token has a position too.
* **Encoders.** One pre-norm Transformer block per layer *per modality* (``encoderblock_{l}`` and
  ``encoderblock_{l}_spectrogram``); ``share_encoder=True`` uses one block per layer for both modalities (scenic shares
  at every layer, before and after fusion, although its docstring says "before fusion").
* **Fusion** (``Encoder.__call__``): layers ``l < fusion_layer`` are modality-specific. From ``fusion_layer`` on:

  - ``"bottleneck"`` (``use_bottleneck=True``): ``B`` learned tokens ``bottleneck`` ``(1, B, D)``, normal std 0.02,
    tiled over the batch, are appended *after* each modality's tokens; modality ``m``'s block runs on ``[x_m ; z]``,
    the output is split back into ``x_m`` and ``z_m``, and the next ``z = mean_m z_m``. Cross-modal information flows
    only through ``z``. ``test_with_bottlenecks=False`` evaluates without any fusion (scenic's option).
  - ``"full"`` (``use_bottleneck=False``): with separate encoders, modality ``m``'s block runs on the concatenation of
    all modalities' tokens and keeps its own tokens' outputs (each modality's tokens attend to every token through
    its own weights; the other outputs are discarded, as in scenic); with ``share_encoder`` one block runs on the
    concatenation (joint self-attention).
  - ``"late"``: ``fusion_layer = depth`` in scenic — no layer is fused; the modalities meet only in the head.

* **Head.** One LayerNorm (``encoder_norm``) on the concatenated modality tokens (the bottleneck tokens are not part
  of the output), then ``classifier="gap"`` (the AudioSet config's choice and our default): the mean over *all*
  modality tokens (so a modality weighs by its token count) → one linear layer ``output_projection`` (zero-initialised
  kernel, as scenic); or ``classifier="token"``: a zero-initialised class token per modality, the shared
  ``output_projection`` applied to each modality's class token and the logits averaged (scenic then trains on the
  mean of the per-modality losses, which :class:`MBT` does too; and scenic adds **one extra bottleneck token** in this
  mode, ``n_bottlenecks += 1``, kept here). No ``representation_size`` pre-logits layer (the config sets ``None``).
  With ``late`` both heads are additive over the modalities, which is why late fusion cannot represent an XOR of a
  visual and an audio bit (``f(v) + g(a)`` would need opposite signs for the same sum).
* **Loss.** Multi-label sigmoid cross-entropy (``MBTMultilabelClassificationModel``) with scenic's label smoothing
  ``t (1 − ε) + ε / C``; or softmax cross-entropy for a single-label target (``MBTClassificationModel``).

Chosen / different (ours):

* Blocks are :class:`litzoo.framework.nn.vit.Block` (pre-norm, LayerNorm eps 1e-6 as flax, GELU MLP), initialised as
  timm (Xavier-uniform, zero biases; scenic: Xavier kernels, MLP biases normal(1e-6)). No dropout (the AudioSet config
  sets dropout and attention dropout to 0). Stochastic depth ``drop_path`` grows linearly over the layers as scenic's
  ``stochastic_droplayer_rate`` (config: 0.3; default 0 here), but survivors are rescaled by ``1/(1 − p)`` as timm
  (scenic's ``EncoderBlock`` does not rescale).
* ``MBT.target_class``: the AV DataModules give multi-hot ``(B, C)`` labels; ``target_class`` (a label id such as
  ``/synthetic/xor``, or a column index) turns one column into a binary single-label task (2-way softmax CE, top-1).
  Without it: multi-label BCE and macro mAP (torchmetrics ``MultilabelAveragePrecision``, as AudioSet).
* Not carried over: mixup (α 0.5) and SpecAugment / colour jitter (data augmentation; the DataModules apply none),
  multi-crop testing, ViT-B initialisation from an image checkpoint (none offline).
* Optimizer: scenic's SGD with momentum 0.9, base lr 0.5, no weight decay, linear warm-up (2.5 epochs) then cosine
  decay per step (:func:`sgd_mbt`, :meth:`MBT.configure_optimizers`); gradient clipping 1 is the trainer's
  ``gradient_clip_val``. The CPU config replaces SGD 0.5 (tuned for fine-tuning ViT-B from ImageNet) by AdamW.
* Attention FLOPs (:func:`attention_flops`): ``torch.utils.flop_counter`` counts ``F.scaled_dot_product_attention``
  as **zero** on CPU (its CPU kernel has no FLOP formula), so the count runs under the math SDPA backend, whose two
  batched products (``QKᵀ``, ``AV``) are the attention FLOPs; the linear projections are counted separately. Full
  fusion with separate encoders costs ``M`` joint attentions per fused layer (scenic's computation, reproduced here).
* CPU evidence (``benchmarks/mbt.py``, ``configs/mbt/synthetic_av.yaml``): the SYNTHETIC clips' XOR of a visual and an
  audio bit is trained multi-label together with a label per bit (``bit_labels=True``). On the XOR label alone, a
  4-layer width-64 MBT from scratch stays at chance with every fusion (a balanced XOR gives no first-order gradient
  for either bit), although each tower learns its own bit alone; with the bit labels, bottleneck and full fusion reach
  1.0 on the XOR column and late fusion stays at chance (3 seeds).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn
from torch.optim import SGD, Optimizer
from torch.utils.flop_counter import FlopCounterMode
from torchmetrics.classification import MulticlassAccuracy, MultilabelAveragePrecision

from litzoo.framework.errors import LitzooError
from litzoo.framework.network_args import check_network_kwargs
from litzoo.framework.nn.video import TubeletEmbed
from litzoo.framework.nn.vit import Block, PatchEmbed, init_vit_weights
from litzoo.framework.optim import warmup_cosine_per_step, warmup_epochs_to_steps

__all__ = ["FUSIONS", "MBT", "MBTNet", "attention_flops", "sgd_mbt"]

FUSIONS = ("bottleneck", "late", "full")
CLASSIFIERS = ("gap", "token")
MODALITIES = ("video", "audio")  # the batch keys; the order of the concatenated output tokens


def sgd_mbt(params: Iterable, lr: float = 0.5, momentum: float = 0.9, weight_decay: float = 0.0) -> Optimizer:
    """Scenic's MBT optimizer: SGD with momentum 0.9, base lr 0.5, ``l2_decay_factor`` 0 (balanced_audioset_base.py)."""
    return SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


# ---------------------------------------------------------------------------------------------------- the network
class MBTNet(nn.Module):
    """Two-modality (video, audio) ViT with ``fusion`` = bottleneck / late / full from ``fusion_layer`` on.

    ``forward(video (B, T, C, H, W), audio (B, 1, T_a, F)) -> logits (B, num_classes)``.

    Args:
        num_classes: output logits.
        num_frames: frames per clip (T).
        image_size: frame side (int) or ``(H, W)``.
        spec_size: ``(time frames, mel bins)`` of the spectrogram.
        fusion: ``"bottleneck"``, ``"late"`` or ``"full"`` (see the module docstring).
        fusion_layer: the first fused layer, ``0 <= fusion_layer <= depth`` (MBT: 8 of 12; ignored by ``late``).
        num_bottlenecks: bottleneck tokens B (MBT: 4).
        dim: token width (ViT-B: 768).
        depth: layers (12).
        num_heads: attention heads (12).
        mlp_ratio: MLP hidden width over ``dim`` (3072 / 768 = 4).
        tubelet: video tubelet ``(t, p, p)`` (MBT: 2×16×16).
        spec_patch: spectrogram patch side (16).
        in_chans: colour channels of a frame.
        classifier: ``"gap"`` (mean of all modality tokens) or ``"token"`` (per-modality class tokens, logits averaged).
        share_encoder: one block per layer for both modalities.
        test_with_bottlenecks: in eval mode, keep the bottleneck fusion (False: evaluate without any fusion).
        drop_path: stochastic depth of the last layer (linear from 0 at the first).

    Raises:
        ValueError: an unknown ``fusion`` / ``classifier``, ``fusion_layer`` outside ``[0, depth]``, non-positive sizes,
        ``dim`` not divisible by ``num_heads``, input sizes that are not multiples of the patches.
    """

    def __init__(
        self,
        num_classes: int,
        num_frames: int,
        image_size: int | tuple[int, int],
        spec_size: tuple[int, int],
        fusion: str = "bottleneck",
        fusion_layer: int = 8,
        num_bottlenecks: int = 4,
        dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        tubelet: tuple[int, int, int] = (2, 16, 16),
        spec_patch: int = 16,
        in_chans: int = 3,
        classifier: str = "gap",
        share_encoder: bool = False,
        test_with_bottlenecks: bool = True,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
        if classifier not in CLASSIFIERS:
            raise ValueError(f"classifier must be one of {CLASSIFIERS}, got {classifier!r}")
        for name, value in (("num_classes", num_classes), ("depth", depth), ("dim", dim), ("num_heads", num_heads), ("spec_patch", spec_patch)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"MBTNet: {name} must be a positive integer, got {value!r}")
        if not 0 <= fusion_layer <= depth:
            raise ValueError(f"fusion_layer must be in [0, depth={depth}], got {fusion_layer}")
        if fusion == "bottleneck" and num_bottlenecks < 1:
            raise ValueError(f"bottleneck fusion needs num_bottlenecks >= 1, got {num_bottlenecks}")
        if dim % num_heads:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        if not 0.0 <= drop_path < 1.0:
            raise ValueError(f"drop_path must be in [0, 1), got {drop_path}")
        self.fusion, self.classifier, self.share_encoder = fusion, classifier, share_encoder
        self.depth, self.dim, self.test_with_bottlenecks = depth, dim, test_with_bottlenecks
        # late fusion is scenic's fusion_layer = num_layers: no fused layer at all
        self.fusion_layer = depth if fusion == "late" else fusion_layer
        self.embed = nn.ModuleDict({
            "video": TubeletEmbed(num_frames, image_size, tuple(tubelet), in_chans, dim),  # type: ignore[arg-type]
            "audio": PatchEmbed(tuple(spec_size), spec_patch, 1, dim),  # type: ignore[arg-type]
        })  # fmt: skip
        prefix = int(classifier == "token")
        self.num_tokens = {m: self.embed[m].num_patches + prefix for m in MODALITIES}  # per modality, class token included
        self.pos_embed = nn.ParameterDict({m: nn.Parameter(torch.zeros(1, self.num_tokens[m], dim)) for m in MODALITIES})
        self.cls_token = nn.ParameterDict({m: nn.Parameter(torch.zeros(1, 1, dim)) for m in MODALITIES}) if prefix else None
        rates = [layer / max(depth - 1, 1) * drop_path for layer in range(depth)]
        self.blocks = nn.ModuleDict({
            m: nn.ModuleList(Block(dim, num_heads, mlp_ratio, drop_path=rate) for rate in rates)
            for m in (MODALITIES[:1] if share_encoder else MODALITIES)
        })  # fmt: skip
        # scenic adds one bottleneck token when classifying from class tokens (model.py, MBT.__call__)
        self.num_bottlenecks = (num_bottlenecks + prefix) if fusion == "bottleneck" else 0
        self.bottleneck = nn.Parameter(torch.zeros(1, self.num_bottlenecks, dim)) if fusion == "bottleneck" else None
        self.norm = nn.LayerNorm(dim, eps=1e-6)  # scenic's encoder_norm, on the concatenated tokens
        self.head = nn.Linear(dim, num_classes)  # scenic's output_projection
        init_vit_weights(self)
        for embed in self.embed.values():  # the patch projections like linear layers (init_vit_weights misses Conv3d)
            nn.init.xavier_uniform_(embed.proj.weight.view(embed.proj.weight.shape[0], -1))
            nn.init.zeros_(embed.proj.bias)
        for param in self.pos_embed.values():
            nn.init.normal_(param, std=0.02)  # AddPositionEmbs(posemb_init=normal(0.02)), "from BERT"
        if self.bottleneck is not None:
            nn.init.normal_(self.bottleneck, std=0.02)
        nn.init.zeros_(self.head.weight)  # kernel_init=zeros
        nn.init.zeros_(self.head.bias)

    def block(self, modality: str, layer: int) -> Block:
        """The block of ``modality`` at ``layer`` (the video one for both when ``share_encoder``)."""
        return self.blocks[MODALITIES[0] if self.share_encoder else modality][layer]

    def tokenize(self, video: Tensor, audio: Tensor) -> dict[str, Tensor]:
        """``{"video": (B, N_v, D), "audio": (B, N_a, D)}``: patch tokens, class token (``token`` classifier), positions."""
        x = {"video": self.embed["video"](video), "audio": self.embed["audio"](audio)}
        for m in MODALITIES:
            if self.cls_token is not None:
                x[m] = torch.cat([self.cls_token[m].expand(len(x[m]), -1, -1), x[m]], dim=1)
            x[m] = x[m] + self.pos_embed[m]
        return x

    def fuse_bottlenecks(self, updates: Sequence[Tensor]) -> Tensor:
        """The next bottleneck: the mean of the modalities' updated copies (``jnp.mean(jnp.stack(bottle, -1), -1)``)."""
        return torch.stack(list(updates), dim=0).mean(dim=0)

    def encode(self, x: dict[str, Tensor], return_layers: bool = False) -> tuple[dict[str, Tensor], list[dict[str, Tensor]]]:
        """The layers on ``tokenize``'s tokens: ``(tokens after the last layer, before the norm; each layer's output)``.

        Each layer's entry holds ``"video"``, ``"audio"`` and, at fused bottleneck layers, ``"bottleneck"`` (the averaged
        ``z`` after it); empty unless ``return_layers``.
        """
        x = dict(x)
        layers: list[dict[str, Tensor]] = []
        fused = self.fusion != "late" and not (self.fusion == "bottleneck" and not self.training and not self.test_with_bottlenecks)
        z = None if self.bottleneck is None else self.bottleneck.expand(len(x["video"]), -1, -1)
        joint = None  # full fusion with a shared encoder: the concatenation, carried to the end (scenic's x_combined)
        for layer in range(self.depth):
            record: dict[str, Tensor] = {}
            if not fused or layer < self.fusion_layer:
                x = {m: self.block(m, layer)(x[m]) for m in MODALITIES}
            elif self.fusion == "bottleneck":
                assert z is not None
                updates = []
                for m in MODALITIES:
                    out = self.block(m, layer)(torch.cat([x[m], z], dim=1))
                    x[m], update = out[:, : x[m].shape[1]], out[:, x[m].shape[1] :]
                    updates.append(update)
                z = self.fuse_bottlenecks(updates)
                record["bottleneck"] = z
            elif self.share_encoder:
                joint = self.block("video", layer)(torch.cat([x[m] for m in MODALITIES], dim=1) if joint is None else joint)
                x = dict(zip(MODALITIES, joint.split([self.num_tokens[m] for m in MODALITIES], dim=1), strict=True))
            else:
                everything = torch.cat([x[m] for m in MODALITIES], dim=1)
                start = {"video": 0, "audio": self.num_tokens["video"]}
                x = {m: self.block(m, layer)(everything)[:, start[m] : start[m] + self.num_tokens[m]] for m in MODALITIES}
            if return_layers:
                layers.append({**x, **record})
        return x, layers

    def modality_logits(self, video: Tensor, audio: Tensor) -> dict[str, Tensor]:
        """``classifier="token"``: the logits of each modality's class token (their mean is :meth:`forward`)."""
        if self.cls_token is None:
            raise ValueError("modality_logits needs classifier='token'")
        x, _ = self.encode(self.tokenize(video, audio))
        return {m: self.head(self.norm(x[m][:, 0])) for m in MODALITIES}

    def features(self, video: Tensor, audio: Tensor) -> Tensor:
        """``(B, D)`` pooled features for ``gap`` (the mean of all normed modality tokens)."""
        if self.classifier != "gap":
            raise ValueError("features are defined for classifier='gap'; use modality_logits for 'token'")
        x, _ = self.encode(self.tokenize(video, audio))
        return self.norm(torch.cat([x[m] for m in MODALITIES], dim=1)).mean(dim=1)

    def forward(self, video: Tensor, audio: Tensor) -> Tensor:
        if self.classifier == "token":
            return torch.stack(list(self.modality_logits(video, audio).values())).mean(dim=0)
        return self.head(self.features(video, audio))


def attention_flops(net: nn.Module, video: Tensor, audio: Tensor) -> dict[str, int]:
    """FLOPs of one forward pass of ``net(video, audio)`` counted by ``torch.utils.flop_counter``.

    Returns ``{"attention": the QKᵀ and AV products, "attention_projections": the q/k/v and output projections of the
    attention layers, "total": everything}``. Counted under the math SDPA backend (see the module docstring: the CPU
    kernel of ``scaled_dot_product_attention`` counts as zero), in ``torch.no_grad``.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        net(video, audio)
    counts = counter.get_flop_counts()
    attention = projections = 0
    for name, ops in counts.items():
        if name.endswith(".attn"):  # an Attention module: its own matmuls (bmm) and its linear layers (addmm)
            for op, flops in ops.items():
                if "bmm" in str(op) or "matmul" in str(op) or "baddbmm" in str(op):
                    attention += int(flops)
                else:
                    projections += int(flops)
    return {"attention": attention, "attention_projections": projections, "total": int(sum(counts.get("Global", {}).values()))}


# ---------------------------------------------------------------------------------------------------- Lightning
class MBT(L.LightningModule):
    """MBT on audio-visual batches ``{"video": (B, T, C, H, W), "audio": (B, 1, T_a, F), "label": (B, C) multi-hot}``
    (:mod:`litzoo.datamodules.audio_video`).

    Task: without ``target_class``, multi-label over the DataModule's classes (sigmoid BCE, ``val/mAP`` macro average
    precision, the checkpoint monitor); with it, the one label column as a binary single-label task (2-way softmax CE,
    ``val/acc`` top-1). The network's input sizes and class count are read from the DataModule's first training item
    (and ``classes``) at setup unless given, and saved in the hyper-parameters, so a checkpoint rebuilds the network.
    Attention FLOPs of one clip (:func:`attention_flops`) are logged as ``flops/attention`` and ``flops/total`` at the
    start of training and kept in :attr:`flops`.

    Args:
        num_classes: label columns (``None``: the DataModule's ``num_classes``); the network has 2 outputs with ``target_class``.
        target_class: a label id (e.g. ``/synthetic/xor``, looked up in the DataModule's ``classes``) or a column index;
            ``None`` = multi-label. A label id is stored as its column index once resolved.
        video_frames, video_size, spec_size: the clips' frames, frame side and ``(fbank frames, mel bins)`` (``None``: from
            the DataModule's first training item); named apart from the DataModule's ``num_frames`` / ``image_size`` so
            that Lightning's merged hyper-parameters never clash.
        label_smoothing: scenic's ``t (1 − ε) + ε / C`` (the AudioSet config: 0.3; default 0).
        warmup_epochs: linear warm-up then cosine decay per step (scenic: 2.5 epochs) when ``lr_scheduler`` is ``None``.
        optimizer: the optimizer factory (default :func:`sgd_mbt`, scenic's SGD 0.5 momentum 0.9).
        lr_scheduler: replaces the warm-up + cosine schedule.
        **net_kwargs: :class:`MBTNet`'s architecture arguments (``fusion``, ``fusion_layer``, ``num_bottlenecks``, ``dim``, ...).

    Raises:
        ValueError: bad arguments (including a misspelt network argument).
    """

    monitor = "val/mAP"
    monitor_mode = "max"

    def __init__(
        self,
        num_classes: int | None = None,
        target_class: str | int | None = None,
        video_frames: int | None = None,
        video_size: int | None = None,
        spec_size: tuple[int, int] | None = None,
        label_smoothing: float = 0.0,
        warmup_epochs: float = 2.5,
        optimizer: OptimizerCallable = sgd_mbt,
        lr_scheduler: LRSchedulerCallable | None = None,
        **net_kwargs: Any,
    ) -> None:
        super().__init__()
        check_network_kwargs(MBTNet, net_kwargs, type(self).__name__, set_by_owner=("num_classes", "num_frames", "image_size", "spec_size"))
        for name, value in (("num_classes", num_classes), ("video_frames", video_frames), ("video_size", video_size)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"MBT: {name} must be a positive integer or None, got {value!r}")
        if spec_size is not None and (len(spec_size) != 2 or min(spec_size) < 1):
            raise ValueError(f"MBT: spec_size must be (frames, mel_bins), got {spec_size!r}")
        if isinstance(target_class, int) and target_class < 0:
            raise ValueError(f"MBT: target_class must be a label id or a non-negative column index, got {target_class}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"MBT: label_smoothing must be in [0, 1), got {label_smoothing}")
        if warmup_epochs < 0:
            raise ValueError(f"MBT: warmup_epochs must be non-negative, got {warmup_epochs}")
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        self.optimizer, self.lr_scheduler = optimizer, lr_scheduler
        self.net_kwargs = net_kwargs
        self.multilabel = target_class is None
        if not self.multilabel:
            self.monitor = "val/acc"
        self.net: MBTNet | None = None
        self.flops: dict[str, int] = {}
        if num_classes is not None and video_frames is not None and video_size is not None and spec_size is not None:
            if isinstance(target_class, int) and target_class >= num_classes:
                raise ValueError(f"MBT: target_class {target_class} is not a column of {num_classes} labels")
            self.build()

    def build(self) -> None:
        hp = self.hparams
        outputs = hp.num_classes if self.multilabel else 2
        self.net = MBTNet(outputs, hp.video_frames, hp.video_size, tuple(hp.spec_size), **self.net_kwargs)
        self.metrics = nn.ModuleDict({
            stage: MultilabelAveragePrecision(outputs, average="macro") if self.multilabel else MulticlassAccuracy(2, average="micro")
            for stage in ("val", "test")
        })  # fmt: skip

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if isinstance(self.hparams.target_class, str):
            classes = list(getattr(datamodule, "classes", None) or [])
            if self.hparams.target_class not in classes:
                raise LitzooError(f"MBT: target_class {self.hparams.target_class!r} is not a label of the DataModule "
                                  f"({', '.join(classes[:8]) or 'it lists no classes'})")  # fmt: skip
            self.hparams["target_class"] = classes.index(self.hparams.target_class)
        if self.net is not None:
            return
        if datamodule is None or not hasattr(datamodule, "dataset"):
            raise LitzooError("MBT: give num_classes, video_frames, video_size and spec_size, or train with an audio-video DataModule")
        item = datamodule.dataset(datamodule.stage_splits(stage)[0] if stage != "fit" else "train")[0]
        video, audio = item["video"], item["audio"]
        if video.dim() != 4 or audio.dim() != 3 or video.shape[-1] != video.shape[-2]:
            raise LitzooError(f"MBT: expected square (T, C, H, W) frames and (1, T, F) spectrograms, got {tuple(video.shape)} and {tuple(audio.shape)}")
        self.hparams["num_classes"] = self.hparams.num_classes or int(getattr(datamodule, "num_classes", item["label"].shape[-1]))
        self.hparams["video_frames"] = self.hparams.video_frames or int(video.shape[0])
        self.hparams["video_size"] = self.hparams.video_size or int(video.shape[-1])
        self.hparams["spec_size"] = tuple(self.hparams.spec_size or (int(audio.shape[-2]), int(audio.shape[-1])))
        if not self.multilabel and self.hparams.target_class >= self.hparams.num_classes:
            raise LitzooError(f"MBT: target_class {self.hparams.target_class} is not a column of the DataModule's {self.hparams.num_classes} labels")
        self.build()

    def _net(self) -> MBTNet:
        if self.net is None:
            raise RuntimeError("MBT has no network yet: give num_classes, video_frames, video_size and spec_size, or run setup() with a DataModule")
        return self.net

    def forward(self, video: Tensor, audio: Tensor) -> Tensor:
        return self._net()(video, audio)

    def target(self, label: Tensor) -> Tensor:
        """The multi-hot labels, or the chosen column as class indices 0 / 1."""
        if label.dim() != 2:
            raise LitzooError(f"MBT expects (B, C) multi-hot labels, got shape {tuple(label.shape)}")
        return label.float() if self.multilabel else (label[:, self.hparams.target_class] > 0.5).long()

    def loss(self, logits: Tensor, target: Tensor) -> Tensor:
        smoothing = self.hparams.label_smoothing
        if self.multilabel:
            return F.binary_cross_entropy_with_logits(logits, target * (1 - smoothing) + smoothing / logits.shape[-1])
        return F.cross_entropy(logits, target, label_smoothing=smoothing)  # the same (1 − ε) t + ε / C on the one-hot

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        net, target = self._net(), self.target(batch["label"])
        if net.classifier == "token":  # scenic: the mean of the per-modality losses
            loss = torch.stack([self.loss(logits, target) for logits in net.modality_logits(batch["video"], batch["audio"]).values()]).mean()
        else:
            loss = self.loss(net(batch["video"], batch["audio"]), target)
        if not torch.isfinite(loss):
            raise LitzooError(f"MBT: non-finite training loss {loss.item()} at step {self.global_step}")
        self.log("train/loss", loss, prog_bar=True, batch_size=len(target))
        return loss

    def _evaluate(self, stage: str, batch: dict[str, Tensor]) -> None:
        logits, target = self(batch["video"], batch["audio"]), self.target(batch["label"])
        if not torch.isfinite(logits).all():
            raise LitzooError(f"MBT: non-finite logits in {stage}")
        size = len(target)
        self.log(f"{stage}/loss", self.loss(logits, target), batch_size=size)
        metric = self.metrics[stage]
        metric.update(logits, target.long())
        self.log(f"{stage}/{'mAP' if self.multilabel else 'acc'}", metric, prog_bar=stage == "val", batch_size=size)

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate("val", batch)

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate("test", batch)

    def on_train_start(self) -> None:
        net, hp = self._net(), self.hparams
        size = (hp.video_size, hp.video_size)
        video = torch.zeros(1, hp.video_frames, net.embed["video"].in_chans, *size, device=self.device)
        audio = torch.zeros(1, 1, *hp.spec_size, device=self.device)
        was_training = net.training
        net.eval()  # the eval graph (stochastic depth off); with test_with_bottlenecks=False count in train mode instead
        if net.fusion == "bottleneck" and not net.test_with_bottlenecks:
            net.train()
        self.flops = attention_flops(net, video, audio)
        net.train(was_training)
        rank_zero_info(f"MBT ({net.fusion} fusion): {self.flops['attention']:,} attention FLOPs and {self.flops['total']:,} in all per clip")
        if self.logger is not None:
            self.logger.log_metrics({f"flops/{key}": float(value) for key, value in self.flops.items()}, step=0)

    def configure_optimizers(self) -> Any:
        net = self._net()
        # no weight decay on biases, norms, positions, class and bottleneck tokens (scenic's l2 is 0 anyway)
        decay = [p for n, p in net.named_parameters() if p.ndim >= 2 and "pos_embed" not in n and "cls_token" not in n and n != "bottleneck"]
        chosen = {id(p) for p in decay}
        rest = [p for p in net.parameters() if id(p) not in chosen]
        optimizer = self.optimizer([{"params": decay}, {"params": rest, "weight_decay": 0.0}])
        if self.lr_scheduler is not None:
            return {"optimizer": optimizer, "lr_scheduler": self.lr_scheduler(optimizer)}
        total = int(self.trainer.estimated_stepping_batches)
        return {"optimizer": optimizer, "lr_scheduler": warmup_cosine_per_step(optimizer, total, warmup_epochs_to_steps(self.trainer, self.hparams.warmup_epochs))}
