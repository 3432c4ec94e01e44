"""RepVGG: Making VGG-style ConvNets Great Again (Ding et al., CVPR 2021, arXiv:2101.03697).

A plain stack of 3x3 convs + ReLU at inference, trained as a multi-branch net whose blocks add a
1x1 conv-BN and an identity BN to each 3x3 conv-BN (``litzoo.framework.reparam.RepVGGBlock``). After
training every block fuses into one 3x3 conv (``litzoo.framework.reparam.fuse_model``).
Reference implementation: DingXiaoH/RepVGG ``repvgg.py``.

Architecture (paper Sec. 3.4, Table 2): stage 0 is one block ``in -> min(64, 64a)``; stages 1-4
have ``num_blocks`` blocks of widths ``64a, 128a, 256a, 512b``; each stage's first block has
stride 2; global average pooling and a linear classifier follow. ``-g2/-g4`` variants use grouped
convs on layers 2, 4, ..., 26 (layer index counted from 1 after stage 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from litzoo.framework.checkpoints import load_official_weights
from litzoo.framework.classification import ImageClassifier
from litzoo.framework.network_args import check_network_kwargs
from litzoo.framework.optim import sgd_momentum
from litzoo.framework.reparam import RepVGGBlock, stage_widths

# Layers with groups in the -g2 / -g4 variants (paper Sec. 3.4: "every other layer").
GROUPWISE_LAYERS = tuple(range(2, 27, 2))
G2_MAP = {layer: 2 for layer in GROUPWISE_LAYERS}
G4_MAP = {layer: 4 for layer in GROUPWISE_LAYERS}

_A_BLOCKS, _B_BLOCKS = (2, 4, 14, 1), (4, 6, 16, 1)

#: The paper's variants: blocks per stage 1-4, width multipliers (a, a, a, b), groups map.
VARIANTS: dict[str, dict] = {
    "A0": dict(num_blocks=_A_BLOCKS, width_multiplier=(0.75, 0.75, 0.75, 2.5)),
    "A1": dict(num_blocks=_A_BLOCKS, width_multiplier=(1, 1, 1, 2.5)),
    "A2": dict(num_blocks=_A_BLOCKS, width_multiplier=(1.5, 1.5, 1.5, 2.75)),
    "B0": dict(num_blocks=_B_BLOCKS, width_multiplier=(1, 1, 1, 2.5)),
    "B1": dict(num_blocks=_B_BLOCKS, width_multiplier=(2, 2, 2, 4)),
    "B1g2": dict(num_blocks=_B_BLOCKS, width_multiplier=(2, 2, 2, 4), override_groups_map=G2_MAP),
    "B1g4": dict(num_blocks=_B_BLOCKS, width_multiplier=(2, 2, 2, 4), override_groups_map=G4_MAP),
    "B2": dict(num_blocks=_B_BLOCKS, width_multiplier=(2.5, 2.5, 2.5, 5)),
    "B2g2": dict(num_blocks=_B_BLOCKS, width_multiplier=(2.5, 2.5, 2.5, 5), override_groups_map=G2_MAP),
    "B2g4": dict(num_blocks=_B_BLOCKS, width_multiplier=(2.5, 2.5, 2.5, 5), override_groups_map=G4_MAP),
    "B3": dict(num_blocks=_B_BLOCKS, width_multiplier=(3, 3, 3, 5)),
    "B3g2": dict(num_blocks=_B_BLOCKS, width_multiplier=(3, 3, 3, 5), override_groups_map=G2_MAP),
    "B3g4": dict(num_blocks=_B_BLOCKS, width_multiplier=(3, 3, 3, 5), override_groups_map=G4_MAP),
}


class RepVGG(nn.Module):
    """The RepVGG network (training-time form; ``fuse_model`` gives the plain deploy form).

    The architecture is the paper variant ``variant``; ``num_blocks``, ``width_multiplier`` and
    ``override_groups_map`` given explicitly replace the variant's (tiny networks for small data do this).

    Args:
        variant: paper variant ``A0``-``A2``, ``B0``-``B3``, ``B1g2`` ... ``B3g4`` (``RepVGG-A0`` too).
        num_blocks: blocks in stages 1-4 (stage 0 always has one); ``None`` = the variant's.
        num_classes: classifier outputs.
        width_multiplier: ``(a, a, a, b)``, multiplying widths 64, 128, 256, 512 of stages 1-4;
            ``None`` = the variant's.
        override_groups_map: ``{layer index: groups}`` for grouped 3x3/1x1 convs (index 1 is the
            first block of stage 1; stage 0 cannot be grouped); ``None`` = the variant's (``{}``: none).
        in_channels: image channels (3 in the paper).
        stage_strides: stride of the first block of stages 0-4; the paper uses 2 everywhere, small
            images (digits, CIFAR) keep resolution with 1s in the early stages.
    """

    def __init__(
        self,
        variant: str = "A0",
        num_blocks: Sequence[int] | None = None,
        num_classes: int = 1000,
        width_multiplier: Sequence[float] | None = None,
        override_groups_map: dict[int, int] | None = None,
        in_channels: int = 3,
        stage_strides: Sequence[int] = (2, 2, 2, 2, 2),
    ) -> None:
        super().__init__()
        config = variant_config(variant)
        num_blocks = config["num_blocks"] if num_blocks is None else num_blocks
        width_multiplier = config["width_multiplier"] if width_multiplier is None else width_multiplier
        override_groups_map = config.get("override_groups_map", {}) if override_groups_map is None else override_groups_map
        widths = stage_widths(num_blocks, width_multiplier, stage_strides)
        self.variant = variant
        self.override_groups_map = dict(override_groups_map)
        if 0 in self.override_groups_map:
            raise ValueError("override_groups_map cannot group layer 0 (the stem sees the raw image)")

        self.in_planes = min(64, widths[0])
        self.stage0 = RepVGGBlock(in_channels, self.in_planes, stride=stage_strides[0])
        self.layer_index = 1
        self.stage1 = self._make_stage(widths[0], num_blocks[0], stage_strides[1])
        self.stage2 = self._make_stage(widths[1], num_blocks[1], stage_strides[2])
        self.stage3 = self._make_stage(widths[2], num_blocks[2], stage_strides[3])
        self.stage4 = self._make_stage(widths[3], num_blocks[3], stage_strides[4])
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(widths[3], num_classes)

    def _make_stage(self, planes: int, num_blocks: int, stride: int) -> nn.Sequential:
        blocks = []
        for block_stride in [stride] + [1] * (num_blocks - 1):
            groups = self.override_groups_map.get(self.layer_index, 1)
            blocks.append(RepVGGBlock(self.in_planes, planes, stride=block_stride, groups=groups))
            self.in_planes = planes
            self.layer_index += 1
        return nn.Sequential(*blocks)

    @classmethod
    def from_variant(cls, name: str, **overrides: Any) -> RepVGG:
        """Build a named paper variant (``"A0"`` ... ``"B3g4"``); keyword arguments override its fields."""
        return cls(variant=name, **overrides)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stage4(self.stage3(self.stage2(self.stage1(self.stage0(x)))))
        return self.linear(self.gap(x).flatten(1))


def variant_config(name: str) -> dict:
    """The architecture arguments of a paper variant; ``RepVGG-A0`` and ``A0`` are both accepted."""
    key = name.removeprefix("RepVGG-")
    if key not in VARIANTS:
        raise ValueError(f"unknown RepVGG variant '{name}'; choose from {', '.join(VARIANTS)}")
    return dict(VARIANTS[key])


class RepVGGClassifier(ImageClassifier):
    """RepVGG image classifier: multi-branch training, plain 3x3-conv deploy model (CVPR 2021).

    The network's arguments are :class:`RepVGG`'s, forwarded unchanged (``variant`` and any of
    ``num_blocks``, ``width_multiplier``, ``override_groups_map`` replacing the variant's, ``in_channels``,
    ``stage_strides``): configs keep flat keys. The default optimizer is the paper's: SGD momentum 0.9,
    weight decay 1e-4, lr 0.1 with cosine decay to 0, and no weight decay on biases nor on the 3x3/1x1
    branches' BN weights (the identity branch's BN weight is decayed, as in the official recipe).

    Args:
        variant: paper variant ``A0``-``A2``, ``B0``-``B3``, ``B1g2`` ... ``B3g4`` (recorded in the
            hyper-parameters of every run).
        num_classes: classes.
        optimizer: optimizer factory, called with parameter groups.
        lr_scheduler: scheduler factory; ``None`` = per-step cosine to 0 over the run.
        label_smoothing: cross-entropy label smoothing (0 in the paper's A/B recipe).
        official_checkpoint: a weights file released with the paper (DingXiaoH/RepVGG, e.g.
            ``RepVGG-A0-train.pth`` or a ``-deploy.pth`` converted one) for the same variant; a
            deploy file gives the fused model directly. A head for another ``num_classes`` keeps
            its fresh initialisation (fine-tuning).
        **net_kwargs: :class:`RepVGG`'s other arguments, ``num_blocks`` … ``stage_strides``.
    """

    def __init__(
        self,
        variant: str = "A0",
        num_classes: int = 1000,
        optimizer: OptimizerCallable = sgd_momentum,
        lr_scheduler: LRSchedulerCallable | None = None,
        label_smoothing: float = 0.0,
        official_checkpoint: str | None = None,
        **net_kwargs: Any,
    ) -> None:
        check_network_kwargs(RepVGG, net_kwargs, type(self).__name__)
        net = RepVGG(variant=variant, num_classes=num_classes, **net_kwargs)
        if official_checkpoint is not None:
            net = load_official_weights(net, "repvgg", official_checkpoint, head="linear")
        super().__init__(net, num_classes, optimizer=optimizer, lr_scheduler=lr_scheduler, label_smoothing=label_smoothing)
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])

    def no_weight_decay(self) -> set[str]:
        """Biases and the BN weights of the 3x3 and 1x1 branches (official RepVGG training script)."""
        names = set()
        for name, _ in self.named_parameters():
            if name.endswith(".bias") or name.endswith("branch_3x3.bn.weight") or name.endswith("branch_1x1.bn.weight"):
                names.add(name)
        return names
