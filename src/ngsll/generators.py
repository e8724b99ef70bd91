"""Weight generator networks (WGN): read the original input, emit dense weights.

The image WGN follows the paper's MNIST setting (section 4.1): three blocks of convolution -> ReLU ->
max pooling, then L fully connected layers of U units (ReLU) and a linear output layer. The DNN baseline
uses the same network with a different output size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ngsll.errors import ConfigError


def mlp_head(in_features: int, hidden_layers: int, hidden_units: int, out_features: int) -> nn.Sequential:
    """L fully connected ReLU layers of U units followed by a linear layer to ``out_features``."""
    layers: list[nn.Module] = []
    width = in_features
    for _ in range(hidden_layers):
        layers += [nn.Linear(width, hidden_units), nn.ReLU()]
        width = hidden_units
    layers.append(nn.Linear(width, out_features))
    return nn.Sequential(*layers)


class ImageWeightGenerator(nn.Module):
    """Three conv blocks and an MLP head: (B, C_in, H, H) images -> (B, out_features).

    Args:
        in_channels: image channels (1 for MNIST).
        image_size: side H of the square input (28 for MNIST).
        conv_channels: output channels of the three conv blocks (3x3 kernels, padding 1, 2x2 pooling).
        hidden_layers: L, number of hidden fully connected layers.
        hidden_units: U, their width.
        out_features: d * C for NGSLL, C for the DNN baseline.
    """

    def __init__(
        self,
        in_channels: int,
        image_size: int,
        conv_channels: Sequence[int],
        hidden_layers: int,
        hidden_units: int,
        out_features: int,
    ) -> None:
        super().__init__()
        if len(conv_channels) != 3:
            raise ConfigError(f"conv_channels must list 3 channel counts (one per block), got {list(conv_channels)}")
        blocks: list[nn.Module] = []
        channels, side = in_channels, image_size
        for out_channels in conv_channels:
            blocks += [nn.Conv2d(channels, out_channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            channels, side = out_channels, side // 2
        if side < 1:
            raise ConfigError(f"image_size {image_size} is too small for three 2x2 poolings")
        self.features = nn.Sequential(*blocks, nn.Flatten())
        self.head = mlp_head(channels * side * side, hidden_layers, hidden_units, out_features)

    @classmethod
    def for_model(cls, args: Any, out_features: int) -> ImageWeightGenerator:
        """The generator described by a model's :class:`ngsll.model.ModelArgs`, with ``out_features`` outputs."""
        return cls(
            in_channels=args.in_channels,
            image_size=args.image_size,
            conv_channels=args.conv_channels,
            hidden_layers=args.hidden_layers,
            hidden_units=args.hidden_units,
            out_features=out_features,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # (B, out_features)
