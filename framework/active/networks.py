"""The small Bayesian CNN of deep Bayesian active learning, for MC-dropout strategies (BALD) on small images.

Gal, Islam, Ghahramani, "Deep Bayesian Active Learning with Image Data", ICML 2017 (arXiv:1703.02910), §5.1 (the
model of their MNIST experiments, Keras's MNIST CNN): convolution - ReLU - convolution - ReLU - max-pooling -
dropout(0.25) - dense(128) - ReLU - dropout(0.5) - dense - softmax, 32 filters of 4x4 on 28x28 MNIST. Kept: the layer sequence, widths and dropout rates; ``kernel_size`` is an argument because 8x8
digits cannot take two 4x4 valid convolutions and a 2x2 pool (``kernel_size=3`` there). The softmax is left to the loss.
"""

from __future__ import annotations

from torch import Tensor, nn


class MCDropoutCNN(nn.Module):
    """Two valid convolutions, max-pooling and two dropout layers; logits out.

    Args:
        num_classes: classes of the output layer.
        in_channels: image channels.
        image_size: side of the square input images.
        channels: filters of both convolutions (32 in the paper).
        kernel_size: side of both convolution kernels (4 in the paper).
        hidden: width of the dense layer (128).
        conv_dropout: dropout after pooling (0.25).
        dropout: dropout before the output layer (0.5).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 28, channels: int = 32, kernel_size: int = 4,
                 hidden: int = 128, conv_dropout: float = 0.25, dropout: float = 0.5) -> None:  # fmt: skip
        super().__init__()
        for name, value in (("num_classes", num_classes), ("in_channels", in_channels), ("channels", channels), ("kernel_size", kernel_size), ("hidden", hidden)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        for name, rate in (("conv_dropout", conv_dropout), ("dropout", dropout)):
            if not 0.0 <= rate < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {rate}")
        pooled = (image_size - 2 * (kernel_size - 1)) // 2
        if pooled < 1:
            raise ValueError(f"image_size {image_size} is too small for two {kernel_size}x{kernel_size} valid convolutions and a 2x2 pool")
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, channels, kernel_size), nn.ReLU(),
            nn.Conv2d(channels, channels, kernel_size), nn.ReLU(),
            nn.MaxPool2d(2), nn.Dropout(conv_dropout), nn.Flatten(),
            nn.Linear(channels * pooled * pooled, hidden), nn.ReLU(), nn.Dropout(dropout),
        )  # fmt: skip
        self.classifier = nn.Linear(hidden, num_classes)

    def forward(self, images: Tensor) -> Tensor:
        return self.classifier(self.features(images))
