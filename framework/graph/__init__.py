"""Computation graphs of any ``nn.Module`` (torch.fx): which layer feeds which."""

from framework.graph.patterns import conv_bn_pairs

__all__ = ["conv_bn_pairs"]
