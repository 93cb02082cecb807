"""A small CNN for 28x28 and 32x32 inputs with 1 or 3 channels."""

from __future__ import annotations

import torch
from torch import nn


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.MaxPool2d(2))


class SmallCNN(nn.Module):
    """Three conv-BN-ReLU-pool blocks and a two-layer head (default widths 16-32-64, 128 hidden)."""

    def __init__(self, num_classes: int, channels: int = 1, image_size: int = 28,
                 widths: tuple[int, int, int] = (16, 32, 64), hidden: int = 128):
        super().__init__()
        w1, w2, w3 = widths
        self.features = nn.Sequential(_block(channels, w1), _block(w1, w2), _block(w2, w3))
        side = image_size // 8
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(w3 * side * side, hidden), nn.ReLU(inplace=True),
                                  nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
