"""Structural re-parameterization: fusion math, training-time blocks, converters and the deploy walker."""

from litzoo.framework.reparam.acb import ACBlock
from litzoo.framework.reparam.conv_bn import ConvBN
from litzoo.framework.reparam.csla import GradientMultipliers, csla_grad_multiplier, csla_initialization, optimizer_rule
from litzoo.framework.reparam.dbb import BNAndPad, DiverseBranchBlock, IdentityBasedConv1x1
from litzoo.framework.reparam.fuse_model import FoldBeforeFusing, fuse_model, is_fusable
from litzoo.framework.reparam.fusion import (
    add_branches,
    avgpool_kernel,
    concat_branches,
    conv_with_kernel,
    fuse_conv_bn,
    identity_kernel,
    merge_1x1_kxk,
    pad_kernel,
)
from litzoo.framework.reparam.repmlp_block import RepMLPBlock, RepMLPBlockDeploy, conv_to_fc
from litzoo.framework.reparam.repvgg_block import RepVGGBlock, stage_widths
from litzoo.framework.reparam.verify import fusion_error, randomize_batchnorm

__all__ = [
    "ACBlock",
    "BNAndPad",
    "ConvBN",
    "DiverseBranchBlock",
    "FoldBeforeFusing",
    "GradientMultipliers",
    "IdentityBasedConv1x1",
    "RepMLPBlock",
    "RepMLPBlockDeploy",
    "RepVGGBlock",
    "add_branches",
    "avgpool_kernel",
    "concat_branches",
    "conv_to_fc",
    "conv_with_kernel",
    "csla_grad_multiplier",
    "csla_initialization",
    "fuse_conv_bn",
    "fuse_model",
    "fusion_error",
    "identity_kernel",
    "is_fusable",
    "merge_1x1_kxk",
    "optimizer_rule",
    "pad_kernel",
    "randomize_batchnorm",
    "stage_widths",
]
