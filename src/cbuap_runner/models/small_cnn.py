"""A small CNN for 28x28 and 32x32 inputs with 1 or 3 channels."""

from __future__ import annotations

import torch
from torch import nn


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.MaxPool2d(2))


class SmallCNN(nn.Module):
    """Three conv-BN-ReLU-pool blocks (32, 64, 128 channels) and a two-layer head."""

    def __init__(self, num_classes: int, channels: int = 1, image_size: int = 28):
        super().__init__()
        self.features = nn.Sequential(_block(channels, 32), _block(32, 64), _block(64, 128))
        side = image_size // 8
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(128 * side * side, 256), nn.ReLU(inplace=True),
                                  nn.Linear(256, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
