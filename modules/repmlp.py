"""RepMLPNet: Hierarchical Vision MLP with Re-parameterized Locality (Ding et al., CVPR 2022, arXiv:2112.11081).

An MLP whose token mixer is the RepMLP block (``litzoo.framework.reparam.repmlp_block.RepMLPBlock``): a
fully-connected layer over each ``h x w`` partition of the feature map, trained together with
parallel conv-BN branches (the "Local Perceptron") that are merged into the FC after training
("Locality Injection", ``litzoo.framework.reparam.fuse_model``). The deploy model has no conv inside
its RepMLP blocks.
Reference implementation: DingXiaoH/RepMLP ``repmlpnet.py``.

Architecture (the paper's hierarchical RepMLPNet, as built by ``repmlpnet.py``):

* patch embedding: conv ``p x p`` stride ``p`` + BN + ReLU (``p = 4``): ``(B, 3, H, W) -> (B, C1, H/4, W/4)``;
* four stages; stage ``i`` has ``num_blocks[i]`` RepMLPNet units at width ``channels[i]``, with
  partitions ``hs[i] x ws[i]`` and ``sharesets_nums[i]`` sharesets. A unit is two pre-BN residual
  blocks, ``y = x + RepMLPBlock(BN(x))`` then ``z = y + FFN(BN(y))``, the FFN being
  1x1 conv-BN -> GELU -> 1x1 conv-BN with expansion 4;
* between stages an embedding conv ``2 x 2`` stride 2 + BN + ReLU halves the resolution;
* head: BN, global average pooling, linear.

The partitions of the paper's variants cover the whole feature map at the training resolution
(``hs = (56, 28, 14, 7)`` at 224, ``(64, 32, 16, 8)`` at 256), hence the separate 224 and 256
models: the input resolution is fixed by ``hs``/``ws`` (every stage's size must be a multiple of
its partition size).

State-dict keys: module names are those of ``repmlpnet.py`` (``conv_embedding``, ``stages.i.j``
with ``repmlp_block``, ``ffn_block.ffn_fc1/ffn_fc2``, ``prebn1``, ``prebn2``; ``embeds.i``,
``head_norm``, ``head``; inside conv-BN units ``conv``, ``bn``), and ``fuse_model`` changes only the
RepMLP blocks, exactly as the official ``locality_injection()`` does. The keys of a training-time
``RepMLPNet`` and of its fused form therefore equal the official ones, and the authors' released
weights load unchanged (``RepMLPNetClassifier(official_checkpoint=...)``). The embeddings and
FFNs keep their conv-BN pairs after fusion for this reason (plain ``nn.Sequential``, not the
fusable ``litzoo.framework.reparam.ConvBN``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from litzoo.framework.checkpoints import load_official_weights, register_official_key_map
from litzoo.framework.classification import ImageClassifier
from litzoo.framework.network_args import check_network_kwargs
from litzoo.framework.reparam.fuse_model import fuse_model
from litzoo.framework.reparam.repmlp_block import RepMLPBlock, RepMLPBlockDeploy

#: The paper's variants (``create_RepMLPNet_*`` in ``repmlpnet.py``; README table: T224 38.3M
#: parameters, B224 68.2M, T256 58.7M, B256 96.5M, D256 86.9M, L256 117.7M). Every variant uses
#: patch size 4, Local Perceptron kernels (1, 3), Global Perceptron reduction 4 and FFN expansion 4.
VARIANTS: dict[str, dict] = {
    "T224": dict(image_size=224, channels=(64, 128, 256, 512), hs=(56, 28, 14, 7), ws=(56, 28, 14, 7), num_blocks=(2, 2, 6, 2), sharesets_nums=(1, 4, 16, 128)),
    "B224": dict(image_size=224, channels=(96, 192, 384, 768), hs=(56, 28, 14, 7), ws=(56, 28, 14, 7), num_blocks=(2, 2, 12, 2), sharesets_nums=(1, 4, 32, 128)),
    "T256": dict(image_size=256, channels=(64, 128, 256, 512), hs=(64, 32, 16, 8), ws=(64, 32, 16, 8), num_blocks=(2, 2, 6, 2), sharesets_nums=(1, 4, 16, 128)),
    "B256": dict(image_size=256, channels=(96, 192, 384, 768), hs=(64, 32, 16, 8), ws=(64, 32, 16, 8), num_blocks=(2, 2, 12, 2), sharesets_nums=(1, 4, 32, 128)),
    "D256": dict(image_size=256, channels=(80, 160, 320, 640), hs=(64, 32, 16, 8), ws=(64, 32, 16, 8), num_blocks=(2, 2, 18, 2), sharesets_nums=(1, 4, 16, 128)),
    "L256": dict(image_size=256, channels=(96, 192, 384, 768), hs=(64, 32, 16, 8), ws=(64, 32, 16, 8), num_blocks=(2, 2, 18, 2), sharesets_nums=(1, 4, 32, 256)),
}


def variant_config(name: str) -> dict:
    """The architecture arguments of a paper variant; ``RepMLPNet-T224`` and ``T224`` are both accepted."""
    key = name.removeprefix("RepMLPNet-")
    if key not in VARIANTS:
        raise ValueError(f"unknown RepMLPNet variant '{name}'; choose from {', '.join(VARIANTS)}")
    return dict(VARIANTS[key])


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    return (int(value), int(value)) if isinstance(value, int) else (int(value[0]), int(value[1]))


def conv_bn(in_channels: int, out_channels: int, kernel_size: int | Sequence[int], stride: int | Sequence[int], relu: bool = False) -> nn.Sequential:
    """``Sequential(conv=Conv2d(bias=False), bn=BatchNorm2d[, relu=ReLU])``, padding 0.

    Deliberately a plain ``Sequential``: it has no ``fuse()``, so ``fuse_model`` leaves it as the
    official ``locality_injection()`` does, and the deploy keys stay the official ones.
    """
    layers: OrderedDict[str, nn.Module] = OrderedDict(
        conv=nn.Conv2d(in_channels, out_channels, _pair(kernel_size), _pair(stride), padding=0, bias=False),
        bn=nn.BatchNorm2d(out_channels),
    )
    if relu:
        layers["relu"] = nn.ReLU()
    return nn.Sequential(layers)


class FFNBlock(nn.Module):
    """The Transformer/MLP feed-forward block on feature maps: 1x1 conv-BN -> GELU -> 1x1 conv-BN."""

    def __init__(self, in_channels: int, hidden_channels: int | None = None, out_channels: int | None = None) -> None:
        super().__init__()
        hidden_channels = hidden_channels or in_channels
        out_channels = out_channels or in_channels
        self.ffn_fc1 = conv_bn(in_channels, hidden_channels, 1, 1)
        self.ffn_fc2 = conv_bn(hidden_channels, out_channels, 1, 1)
        self.act = nn.GELU()

    def forward(self, x: Tensor) -> Tensor:
        return self.ffn_fc2(self.act(self.ffn_fc1(x)))


class RepMLPNetUnit(nn.Module):
    """``y = x + RepMLPBlock(BN(x))``, ``z = y + FFN(BN(y))``: pre-norm residuals, as in the official code."""

    def __init__(
        self,
        channels: int,
        h: int,
        w: int,
        reparam_conv_k: Sequence[int] | None,
        globalperceptron_reduce: int,
        ffn_expand: int = 4,
        num_sharesets: int = 1,
        deploy: bool = False,
    ) -> None:
        super().__init__()
        if deploy:  # the official RepMLPBlock(..., deploy=True)
            self.repmlp_block: nn.Module = RepMLPBlockDeploy(channels, channels, h, w, globalperceptron_reduce, num_sharesets)
        else:
            self.repmlp_block = RepMLPBlock(channels, channels, h, w, reparam_conv_k, globalperceptron_reduce, num_sharesets)
        self.ffn_block = FFNBlock(channels, channels * ffn_expand)
        self.prebn1 = nn.BatchNorm2d(channels)
        self.prebn2 = nn.BatchNorm2d(channels)

    def forward(self, x: Tensor) -> Tensor:
        y = x + self.repmlp_block(self.prebn1(x))
        return y + self.ffn_block(self.prebn2(y))


class RepMLPNet(nn.Module):
    """The hierarchical RepMLPNet (training-time form; ``fuse_model`` injects the locality).

    The architecture is the paper variant ``variant`` (default RepMLPNet-T224); ``num_blocks``,
    ``channels``, ``hs``, ``ws``, ``sharesets_nums`` and ``image_size`` given explicitly replace the
    variant's (tiny networks for small data do this). Module names follow the official code (see the
    module docstring): the state-dict keys equal those of ``repmlpnet.py``, training-time and deploy-time.

    Args:
        variant: paper variant ``T224``, ``B224``, ``T256``, ``B256``, ``D256``, ``L256`` (``RepMLPNet-T224`` too).
        in_channels: image channels (3 in the paper).
        num_classes: classifier outputs.
        patch_size: side (or ``(h, w)``) of the non-overlapping patch embedding.
        num_blocks: RepMLPNet units per stage (``None`` = the variant's, as for the next five).
        channels: width of each stage.
        hs: partition height of each stage.
        ws: partition width of each stage.
        sharesets_nums: sharesets ``S`` of each stage (each stage's width must be divisible by it).
        reparam_conv_k: odd kernel sizes of the Local Perceptron (``None`` or ``[]`` = none).
        globalperceptron_reduce: hidden-layer reduction of the Global Perceptron.
        ffn_expand: hidden width of the FFN, as a multiple of the stage width.
        image_size: the input resolution (int or ``(H, W)``; the variant's 224 / 256 by default), checked
            at construction against ``patch_size`` and every stage's partition.
        use_checkpoint: gradient checkpointing of units and embeddings (saves memory, costs time).
        deploy: build the deploy form directly (``RepMLPBlockDeploy`` blocks, to load fused weights).
    """

    def __init__(
        self,
        variant: str = "T224",
        in_channels: int = 3,
        num_classes: int = 1000,
        patch_size: int | Sequence[int] = 4,
        num_blocks: Sequence[int] | None = None,
        channels: Sequence[int] | None = None,
        hs: Sequence[int] | None = None,
        ws: Sequence[int] | None = None,
        sharesets_nums: Sequence[int] | None = None,
        reparam_conv_k: Sequence[int] | None = (1, 3),
        globalperceptron_reduce: int = 4,
        ffn_expand: int = 4,
        image_size: int | Sequence[int] | None = None,
        use_checkpoint: bool = False,
        deploy: bool = False,
    ) -> None:
        super().__init__()
        config = variant_config(variant)
        given = dict(num_blocks=num_blocks, channels=channels, hs=hs, ws=ws, sharesets_nums=sharesets_nums, image_size=image_size)
        config.update({key: value for key, value in given.items() if value is not None})
        num_blocks, channels, hs, ws = config["num_blocks"], config["channels"], config["hs"], config["ws"]
        sharesets_nums, image_size = config["sharesets_nums"], config["image_size"]
        self.variant = variant
        num_stages = len(num_blocks)
        if num_stages < 1 or any(n < 1 for n in num_blocks):
            raise ValueError(f"num_blocks must be one positive integer per stage, got {list(num_blocks)}")
        for name, values in (("channels", channels), ("hs", hs), ("ws", ws), ("sharesets_nums", sharesets_nums)):
            if len(values) != num_stages:
                raise ValueError(f"{name} must have one value per stage ({num_stages}, from num_blocks), got {list(values)}")
        if any(c < 1 for c in channels):
            raise ValueError(f"channels must be positive, got {list(channels)}")
        if ffn_expand < 1:
            raise ValueError(f"ffn_expand must be >= 1, got {ffn_expand}")
        patch = _pair(patch_size)
        if min(patch) < 1:
            raise ValueError(f"patch_size must be positive, got {patch_size}")
        if image_size is not None:
            _check_resolution(_pair(image_size), patch, hs, ws)
        self.num_classes, self.use_checkpoint = num_classes, use_checkpoint

        # (B, in, H, W) -> (B, C1, H/p, W/p)
        self.conv_embedding = conv_bn(in_channels, channels[0], patch, patch, relu=True)
        self.stages = nn.ModuleList(
            nn.ModuleList(
                RepMLPNetUnit(channels[i], hs[i], ws[i], reparam_conv_k, globalperceptron_reduce, ffn_expand, sharesets_nums[i], deploy)
                for _ in range(num_blocks[i])
            )
            for i in range(num_stages)
        )
        # (B, C_i, R, R) -> (B, C_{i+1}, R/2, R/2)
        self.embeds = nn.ModuleList(conv_bn(channels[i], channels[i + 1], 2, 2, relu=True) for i in range(num_stages - 1))
        self.head_norm = nn.BatchNorm2d(channels[-1])
        self.head = nn.Linear(channels[-1], num_classes)

    @classmethod
    def from_variant(cls, name: str, **overrides: Any) -> RepMLPNet:
        """Build a paper variant (``"T224"`` ... ``"L256"``); keyword arguments override its fields."""
        return cls(variant=name, **overrides)

    def _run(self, module: nn.Module, x: Tensor) -> Tensor:
        if self.use_checkpoint and torch.is_grad_enabled() and x.requires_grad:
            return checkpoint(module, x, use_reentrant=False)
        return module(x)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv_embedding(x)  # (B, C1, H/p, W/p)
        for i, stage in enumerate(self.stages):
            for unit in stage:
                x = self._run(unit, x)  # (B, C_i, R_i, R_i)
            if i < len(self.embeds):
                x = self._run(self.embeds[i], x)  # (B, C_{i+1}, R_i/2, R_i/2)
        x = self.head_norm(x).mean(dim=(2, 3))  # (B, C_last)
        return self.head(x)  # (B, num_classes)

    def locality_injection(self) -> RepMLPNet:
        """Fuse every RepMLP block in place (the official method's name); returns ``self``."""
        fuse_model(self, inplace=True)
        return self


def _check_resolution(image_size: tuple[int, int], patch: tuple[int, int], hs: Sequence[int], ws: Sequence[int]) -> None:
    height, width = image_size
    if height % patch[0] or width % patch[1]:
        raise ValueError(f"image_size {height}x{width} is not divisible by patch_size {patch[0]}x{patch[1]}")
    height, width = height // patch[0], width // patch[1]
    for stage, (h, w) in enumerate(zip(hs, ws, strict=True)):
        if stage:
            height, width = height // 2, width // 2
        if height < h or width < w or height % h or width % w:
            raise ValueError(
                f"stage {stage} sees {height}x{width} feature maps (image_size {image_size[0]}x{image_size[1]}, patch {patch[0]}x{patch[1]}, "
                f"halved per stage), not divisible by its partition hs x ws = {h}x{w}"
            )


def repmlp_adamw(params: Iterable, lr: float = 1e-3, weight_decay: float = 0.1) -> torch.optim.AdamW:
    """AdamW with lr 1e-3 and weight decay 0.1: the official RepMLPNet recipe (README, batch 256).

    The official script also warms up for 10 of 100 epochs and clips gradients at norm 5; pass an
    ``lr_scheduler`` and ``--trainer.gradient_clip_val 5`` for those.
    """
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


class RepMLPNetClassifier(ImageClassifier):
    """RepMLPNet image classifier: FC + local conv branches in training, FC-only deploy model (CVPR 2022).

    The network's arguments are :class:`RepMLPNet`'s, forwarded unchanged (``variant`` and any of
    ``image_size``, ``channels``, ``hs``, ``ws``, ``num_blocks``, ``sharesets_nums`` replacing the
    variant's, ``in_channels``, ``patch_size``, ``reparam_conv_k`` ...): configs keep flat keys. Defaults
    follow the official recipe: AdamW (lr 1e-3, weight decay 0.1; none on biases and 1-D parameters),
    label smoothing 0.1.

    Args:
        variant: paper variant ``T224``, ``B224``, ``T256``, ``B256``, ``D256``, ``L256`` (recorded in the
            hyper-parameters of every run).
        num_classes: classes.
        official_checkpoint: path of an official released RepMLPNet ``.pth`` (train-time or deploy-time,
            e.g. ``RepMLPNet-D256-train-acc80.828.pth``) to start from; a head of another class count is
            left freshly initialised (fine-tuning). A deploy-time file gives a fused network.
        optimizer: optimizer factory, called with parameter groups.
        lr_scheduler: scheduler factory; ``None`` = per-step cosine to 0 over the run.
        label_smoothing: cross-entropy label smoothing (official: 0.1).
        **net_kwargs: :class:`RepMLPNet`'s other arguments, ``in_channels`` … ``deploy``.
    """

    def __init__(
        self,
        variant: str = "T224",
        num_classes: int = 1000,
        official_checkpoint: str | None = None,
        optimizer: OptimizerCallable = repmlp_adamw,
        lr_scheduler: LRSchedulerCallable | None = None,
        label_smoothing: float = 0.1,
        **net_kwargs: Any,
    ) -> None:
        check_network_kwargs(RepMLPNet, net_kwargs, type(self).__name__)
        net = RepMLPNet(variant=variant, num_classes=num_classes, **net_kwargs)
        super().__init__(net, num_classes, optimizer=optimizer, lr_scheduler=lr_scheduler, label_smoothing=label_smoothing)
        if official_checkpoint is not None:
            self.net = load_official_weights(self.net, "repmlp", official_checkpoint, head="head")
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])

    def no_weight_decay(self) -> set[str]:
        """Biases and every 1-D parameter (BN weights): the official ``set_weight_decay``."""
        return {name for name, p in self.named_parameters() if p.ndim <= 1 or name.endswith(".bias")}


@register_official_key_map("repmlp")
def official_repmlp_key_map(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """DingXiaoH/RepMLP weights -> :class:`RepMLPNet`: the names are the official ones (train-time and
    deploy-time, see the module docstring), so the keys stay as they are once unwrapped."""
    return dict(state)
