"""Wide ResNet (Zagoruyko & Komodakis 2016); WRN-28-10 by default."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .resnet import PreActBlock


class WideResNet(nn.Module):
    def __init__(self, num_classes: int, channels: int = 3, depth: int = 28, widen: int = 10):
        super().__init__()
        n = (depth - 4) // 6
        widths = (16, 16 * widen, 32 * widen, 64 * widen)
        self.stem = nn.Conv2d(channels, widths[0], 3, 1, 1, bias=False)
        layers, cin = [], widths[0]
        for cout, stride in zip(widths[1:], (1, 2, 2)):
            for i in range(n):
                layers.append(PreActBlock(cin, cout, stride if i == 0 else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.final = nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(inplace=True))
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.final(self.layers(self.stem(x)))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))
