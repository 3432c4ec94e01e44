"""Conv2d followed by BatchNorm2d: the unit every re-parameterizable branch is made of."""

from __future__ import annotations

from torch import Tensor, nn

from litzoo.framework.reparam.fusion import conv_with_kernel, fuse_conv_bn


def check_conv_arguments(
    in_channels: int,
    out_channels: int,
    stride: int,
    groups: int,
    kernel_size: int | None = None,
    odd_kernel_reason: str = "",
) -> None:
    """The argument checks every re-parameterizable conv block shares, as clear ``ValueError``s.

    ``kernel_size`` (when given) must be a positive odd int; ``odd_kernel_reason`` says why, in the
    block's terms.
    """
    values = {"in_channels": in_channels, "out_channels": out_channels, "stride": stride, "groups": groups}
    if kernel_size is not None:
        values["kernel_size"] = kernel_size
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"{name} must be an int, got {value!r}")
    if in_channels <= 0 or out_channels <= 0:
        raise ValueError(f"channels must be positive, got in_channels={in_channels}, out_channels={out_channels}")
    if groups < 1:
        raise ValueError(f"groups must be >= 1, got {groups}")
    if in_channels % groups or out_channels % groups:
        raise ValueError(f"in_channels ({in_channels}) and out_channels ({out_channels}) must be divisible by groups ({groups})")
    if kernel_size is not None and (kernel_size < 1 or kernel_size % 2 == 0):
        raise ValueError(f"kernel_size must be a positive odd int ({odd_kernel_reason}), got {kernel_size}")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")


class ConvBN(nn.Module):
    """``BN(conv(x))`` with a bias-free conv; ``fuse()`` returns the equivalent single conv.

    Sub-module names ``conv`` and ``bn`` match the official re-parameterization repositories
    (``conv_bn`` in DingXiaoH/RepVGG), which keeps official checkpoints easy to map.
    ``padding_mode`` is the conv's (any mode fuses exactly: padding does not depend on the kernel);
    ``affine`` is the BN's.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        padding_mode: str = "zeros",
        affine: bool = True,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias=False, padding_mode=padding_mode)
        # affine=False: ACNet's ``use_affine`` option; fuse_conv_bn treats gamma as 1 and beta as 0.
        self.bn = nn.BatchNorm2d(out_channels, affine=affine)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.conv(x))

    def get_equivalent_kernel_bias(self) -> tuple[Tensor, Tensor]:
        return fuse_conv_bn(self.conv.weight, self.bn, self.conv.bias)

    def fuse(self) -> nn.Conv2d:
        kernel, bias = self.get_equivalent_kernel_bias()
        return conv_with_kernel(self.conv, kernel.detach(), bias.detach())
