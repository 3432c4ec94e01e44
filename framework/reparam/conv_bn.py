"""Conv2d followed by BatchNorm2d: the unit every re-parameterizable branch is made of."""

from __future__ import annotations

from torch import Tensor, nn

from framework.reparam.fusion import conv_with_kernel, fuse_conv_bn


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
