"""The RepVGG block and RepVGG's stage layout (Ding et al., "RepVGG: Making VGG-style ConvNets Great Again", CVPR 2021).

Training time: ``ReLU(BN(conv3x3(x)) + BN(conv1x1(x)) + BN(x))``, the identity branch present only
when ``in_channels == out_channels`` and ``stride == 1``. Deploy time: ``ReLU(conv3x3(x) + b)``.
Reference implementation: DingXiaoH/RepVGG ``repvgg.py`` (``RepVGGBlock``). The layout
(:func:`stage_widths`) is shared by RepVGG and RepOpt-VGG, which trains the same plain stack with
RepOptimizer's gradient rule instead of branches.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence

from torch import Tensor, nn

from litzoo.framework.checkpoints import register_official_key_map, rename_keys, rename_segments
from litzoo.framework.errors import LitzooError
from litzoo.framework.reparam.conv_bn import ConvBN, check_conv_arguments
from litzoo.framework.reparam.fusion import add_branches, conv_with_kernel, fuse_conv_bn, identity_kernel, pad_kernel


class RepVGGBlock(nn.Module):
    """3x3 conv-BN + 1x1 conv-BN + identity BN, summed, then ReLU; ``fuse()`` gives one 3x3 conv + ReLU.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        stride: stride of both convs (1 or 2 in the paper); the identity branch needs stride 1.
        groups: groups of both convs (RepVGG-g2/g4 use 2 or 4 on every other layer).
        use_nonlinearity: end with the ReLU (the paper's block). ``False`` gives the linear
            three-branch conv that :class:`litzoo.callbacks.structural_reparam.StructuralReparam` puts in
            place of a user's 3x3 conv-BN; it fuses to a bare ``nn.Conv2d``.
    """

    kernel_size = 3
    padding = 1

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, groups: int = 1, use_nonlinearity: bool = True) -> None:
        super().__init__()
        check_conv_arguments(in_channels, out_channels, stride, groups)
        self.in_channels, self.out_channels, self.stride, self.groups = in_channels, out_channels, stride, groups
        self.branch_3x3 = ConvBN(in_channels, out_channels, 3, stride, padding=1, groups=groups)
        # The 1x1 branch samples the centre of each 3x3 window: its padding is 1 - 3 // 2 = 0.
        self.branch_1x1 = ConvBN(in_channels, out_channels, 1, stride, padding=0, groups=groups)
        self.branch_identity = nn.BatchNorm2d(in_channels) if in_channels == out_channels and stride == 1 else None
        self.use_nonlinearity = use_nonlinearity
        self.nonlinearity = nn.ReLU() if use_nonlinearity else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = self.branch_3x3(x) + self.branch_1x1(x)
        if self.branch_identity is not None:
            out = out + self.branch_identity(x)
        return self.nonlinearity(out)

    def get_equivalent_kernel_bias(self) -> tuple[Tensor, Tensor]:
        """The deploy conv's ``(kernel, bias)``, differentiable w.r.t. the training-time parameters."""
        kernel_1x1, bias_1x1 = self.branch_1x1.get_equivalent_kernel_bias()
        branches = [self.branch_3x3.get_equivalent_kernel_bias(), (pad_kernel(kernel_1x1, 3), bias_1x1)]
        if self.branch_identity is not None:
            weight = self.branch_3x3.conv.weight
            eye = identity_kernel(self.in_channels, self.groups, 3, dtype=weight.dtype, device=weight.device)
            branches.append(fuse_conv_bn(eye, self.branch_identity))
        return add_branches(*branches)

    def fuse(self) -> nn.Module:
        """The deploy module: ``Sequential(conv=Conv2d(3x3, bias=True), nonlinearity=ReLU)``, or the
        bare conv when ``use_nonlinearity=False``."""
        kernel, bias = self.get_equivalent_kernel_bias()
        conv = conv_with_kernel(self.branch_3x3.conv, kernel.detach(), bias.detach())
        if not self.use_nonlinearity:
            return conv
        return nn.Sequential(OrderedDict(conv=conv, nonlinearity=nn.ReLU()))

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, stride={self.stride}, groups={self.groups}"


def stage_widths(num_blocks: Sequence[int], width_multiplier: Sequence[float], stage_strides: Sequence[int]) -> list[int]:
    """Check RepVGG's layout arguments and return the widths of stages 1-4 (``64/128/256/512 x multiplier``)."""
    if len(num_blocks) != 4 or any(n < 1 for n in num_blocks):
        raise ValueError(f"num_blocks must be 4 positive integers (stages 1-4), got {list(num_blocks)}")
    if len(width_multiplier) != 4 or any(w <= 0 for w in width_multiplier):
        raise ValueError(f"width_multiplier must be 4 positive numbers, got {list(width_multiplier)}")
    if len(stage_strides) != 5 or any(s not in (1, 2) for s in stage_strides):
        raise ValueError(f"stage_strides must be 5 values in {{1, 2}} (stages 0-4), got {list(stage_strides)}")
    widths = [int(base * w) for base, w in zip((64, 128, 256, 512), width_multiplier, strict=True)]
    if any(w < 1 for w in widths):
        raise ValueError(f"width_multiplier {list(width_multiplier)} gives an empty stage: widths {widths}")
    return widths


# ------------------------------------------------------------------ official released weights

#: RepVGG (DingXiaoH/RepVGG ``repvgg.py``): ``rbr_dense``/``rbr_1x1`` are conv-BN Sequentials,
#: ``rbr_identity`` a BatchNorm2d, ``rbr_reparam`` the deploy conv; the network names ``stage0`` ...
#: ``stage4`` and ``linear`` are ours too.
OFFICIAL_SEGMENTS: dict[str, str | None] = {
    "rbr_dense": "branch_3x3",
    "rbr_1x1": "branch_1x1",
    "rbr_identity": "branch_identity",
    "rbr_reparam": "conv",
}


@register_official_key_map("repvgg")
def official_repvgg_key_map(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Official RepVGG weights (train-time or deploy-time) -> :class:`RepVGGBlock` names, segment by segment.

    Raises:
        LitzooError: the blocks have squeeze-excitation (RepVGG-D2se, RepVGGplus), which ours do not.
    """
    if any(".se." in f".{k}" for k in state):
        raise LitzooError("RepVGG checkpoints with squeeze-excitation blocks (RepVGG-D2se, RepVGGplus) are not supported by litzoo's RepVGG")
    return rename_keys(state, lambda key: rename_segments(key, OFFICIAL_SEGMENTS), "repvgg")
