"""Structural re-parameterization: fusion math, training-time blocks and the deploy walker."""

from framework.reparam.conv_bn import ConvBN
from framework.reparam.fuse_model import DEPLOY_KEY, fuse_model, is_fusable, is_fused_checkpoint
from framework.reparam.fusion import add_branches, conv_with_kernel, fuse_conv_bn, identity_kernel, pad_kernel
from framework.reparam.repvgg_block import RepVGGBlock
from framework.reparam.verify import randomize_batchnorm

__all__ = [
    "ConvBN",
    "DEPLOY_KEY",
    "RepVGGBlock",
    "add_branches",
    "conv_with_kernel",
    "fuse_conv_bn",
    "fuse_model",
    "identity_kernel",
    "is_fusable",
    "is_fused_checkpoint",
    "pad_kernel",
    "randomize_batchnorm",
]
