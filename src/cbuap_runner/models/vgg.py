"""VGG-16 with batch normalisation, sized for 28-32 pixel inputs."""

from __future__ import annotations

import torch
from torch import nn

_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class VGG16(nn.Module):
    def __init__(self, num_classes: int, channels: int = 3):
        super().__init__()
        layers: list[nn.Module] = []
        cin = channels
        for v in _VGG16:
            if v == "M":
                layers.append(nn.MaxPool2d(2, ceil_mode=True))  # ceil keeps 28x28 inputs at >= 1x1
            else:
                layers += [nn.Conv2d(cin, v, 3, padding=1, bias=False), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                cin = v
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))
