"""The Asymmetric Convolution Block (Ding et al., "ACNet: Strengthening the Kernel Skeletons for Powerful
CNN via Asymmetric Convolution Blocks", ICCV 2019).

Training time: ``BN(conv_kxk(x)) + BN(conv_kx1(x)) + BN(conv_1xk(x))``, no nonlinearity and no BN
after the sum. Deploy time: one kxk conv with bias, the k x 1 and 1 x k kernels (BN folded) added
to the centre column and centre row of the square one (the "skeleton").
Reference implementation: DingXiaoH/ACNet ``acnet/acb.py`` (``ACBlock``).
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

from litzoo.framework.checkpoints import register_official_key_map, rename_keys, rename_segments
from litzoo.framework.reparam.conv_bn import ConvBN, check_conv_arguments
from litzoo.framework.reparam.fusion import add_branches, conv_with_kernel, pad_kernel

__all__ = ["ACBlock", "official_acb_key_map"]


class ACBlock(nn.Module):
    """kxk, kx1 and 1xk conv-BN branches summed; ``fuse()`` gives one kxk conv with the square branch's geometry.

    Alignment (ACNet Fig. 2): the kx1 kernel must slide over the centre column of every kxk window
    and the 1xk kernel over its centre row. With ``r = dilation * (kernel_size // 2)`` (the distance
    from a window's centre to its edge):

    * ``padding >= r``: the kx1 conv pads ``(padding, padding - r)`` (rows, columns), the 1xk conv
      ``(padding - r, padding)``.
    * ``padding < r``: the column offset ``padding - r`` would be a negative padding, which
      ``nn.Conv2d`` cannot express; as in the official ``crop``, the kx1 branch instead drops
      ``crop = r - padding`` columns on each side of its input (and pads rows by ``padding``), the
      1xk branch drops ``crop`` rows. Cropping by ``c`` is padding by ``-c``.

    For odd ``kernel_size`` both rules give the three branches the same output size, which is why
    even sizes are rejected (an even kernel has no centre column). Any ``padding_mode`` fuses
    exactly: a non-zero padding is a per-index map of the input, so the thinner padding of the
    asymmetric branches reads a subset of the square branch's padded input. Dilation is handled
    exactly too (the official code pads with ``kernel_size // 2`` whatever the dilation, which
    misaligns the branches for ``dilation > 1``).

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, padding_mode:
            those of the square conv (and of the deploy conv); ``kernel_size`` is an odd int.
        use_affine: whether the three BNs have affine parameters.
        reduce_gamma: initialise every BN gamma to 1/3 (ACNet README tip), so the initial sum has
            the scale of one branch.
        gamma_init: initialise every BN gamma to this value (excludes ``reduce_gamma``).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        groups: int = 1,
        padding_mode: str = "zeros",
        use_affine: bool = True,
        reduce_gamma: bool = False,
        gamma_init: float | None = None,
    ) -> None:
        super().__init__()
        check_conv_arguments(in_channels, out_channels, stride, groups, kernel_size, "the kx1 and 1xk kernels need a centre")
        if not isinstance(dilation, int) or isinstance(dilation, bool):
            raise ValueError(f"dilation must be an int, got {dilation!r}")
        if not isinstance(padding, int) or isinstance(padding, bool) or padding < 0:
            raise ValueError(f"padding must be an int >= 0, got {padding!r}")
        if dilation < 1:
            raise ValueError(f"dilation must be >= 1, got {dilation}")
        if reduce_gamma and gamma_init is not None:
            raise ValueError("reduce_gamma and gamma_init are exclusive: reduce_gamma means gamma_init=1/3")
        if (reduce_gamma or gamma_init is not None) and not use_affine:
            raise ValueError("reduce_gamma / gamma_init need use_affine=True: BNs without affine parameters have no gamma")

        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        reach = dilation * (kernel_size // 2)
        if padding >= reach:
            self.crop = 0
            vertical_padding, horizontal_padding = (padding, padding - reach), (padding - reach, padding)
        else:
            self.crop = reach - padding
            vertical_padding, horizontal_padding = (padding, 0), (0, padding)
        common = {"stride": stride, "dilation": dilation, "groups": groups, "padding_mode": padding_mode, "affine": use_affine}
        self.branch_square = ConvBN(in_channels, out_channels, kernel_size, padding=padding, **common)
        self.branch_vertical = ConvBN(in_channels, out_channels, (kernel_size, 1), padding=vertical_padding, **common)
        self.branch_horizontal = ConvBN(in_channels, out_channels, (1, kernel_size), padding=horizontal_padding, **common)

        if reduce_gamma:
            self.init_gamma(1.0 / 3)
        elif gamma_init is not None:
            self.init_gamma(gamma_init)

    def forward(self, x: Tensor) -> Tensor:
        vertical_input = horizontal_input = x
        if self.crop > 0:
            c = self.crop
            vertical_input = x[:, :, :, c:-c]  # (N, C, H, W - 2c): columns outside every window's centre column
            horizontal_input = x[:, :, c:-c, :]  # (N, C, H - 2c, W)
        return self.branch_square(x) + self.branch_vertical(vertical_input) + self.branch_horizontal(horizontal_input)

    def get_equivalent_kernel_bias(self) -> tuple[Tensor, Tensor]:
        """The deploy conv's ``(kernel, bias)``: kernel ``(out, in / groups, k, k)``, bias ``(out,)``.

        Differentiable and out of place (the branch parameters are never written to).
        """
        size = (self.kernel_size, self.kernel_size)
        square = self.branch_square.get_equivalent_kernel_bias()
        vertical_kernel, vertical_bias = self.branch_vertical.get_equivalent_kernel_bias()  # (out, in/g, k, 1)
        horizontal_kernel, horizontal_bias = self.branch_horizontal.get_equivalent_kernel_bias()  # (out, in/g, 1, k)
        return add_branches(
            square,
            (pad_kernel(vertical_kernel, size), vertical_bias),  # into the centre column
            (pad_kernel(horizontal_kernel, size), horizontal_bias),  # into the centre row
        )

    def fuse(self) -> nn.Conv2d:
        """The deploy conv (``bias=True``), with the square conv's stride, padding, dilation, groups and padding mode."""
        kernel, bias = self.get_equivalent_kernel_bias()
        return conv_with_kernel(self.branch_square.conv, kernel.detach(), bias.detach())

    def _bns(self) -> tuple[nn.BatchNorm2d, nn.BatchNorm2d, nn.BatchNorm2d]:
        bns = (self.branch_square.bn, self.branch_vertical.bn, self.branch_horizontal.bn)
        if not bns[0].affine:
            raise ValueError("this ACBlock was built with use_affine=False: its BNs have no gamma to initialise")
        return bns

    def init_gamma(self, value: float) -> None:
        """Set the gamma of all three BNs to ``value``."""
        for bn in self._bns():
            nn.init.constant_(bn.weight, value)

    def single_init(self) -> None:
        """Square gamma 1, the others 0: at initialisation the block equals its square branch (the betas start at 0)."""
        square, vertical, horizontal = self._bns()
        nn.init.constant_(square.weight, 1.0)
        nn.init.constant_(vertical.weight, 0.0)
        nn.init.constant_(horizontal.weight, 0.0)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, crop={self.crop}"
        )


# ------------------------------------------------------------------ official released weights

#: ACNet (DingXiaoH/ACNet ``acnet/acb.py``): flat ``square_conv``/``square_bn`` ... attributes; the
#: deploy-time ``fused_conv`` is the conv that replaces the block after ``fuse()``.
OFFICIAL_SEGMENTS: dict[str, str | None] = {
    "square_conv": "branch_square.conv",
    "square_bn": "branch_square.bn",
    "ver_conv": "branch_vertical.conv",
    "ver_bn": "branch_vertical.bn",
    "hor_conv": "branch_horizontal.conv",
    "hor_bn": "branch_horizontal.bn",
    "fused_conv": None,
}


@register_official_key_map("acb")
def official_acb_key_map(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Official ACNet weights (train-time or deploy-time) -> :class:`ACBlock` names, segment by segment
    (``layer1.0.conv1.square_conv.weight`` -> ``layer1.0.conv1.branch_square.conv.weight``)."""
    return rename_keys(state, lambda key: rename_segments(key, OFFICIAL_SEGMENTS), "acb")
