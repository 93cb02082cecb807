"""A small synthetic classification set for tests: each class is a fixed pattern plus noise."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..schema import DatasetConfig, positive


@dataclass
class SyntheticConfig(DatasetConfig):
    """dataset=synthetic: generated in memory from the seed; no root is read."""

    root: str = "unused"
    synthetic_size: int = 512  # training images drawn (the test split gets a quarter, at least one per class)

    def check(self) -> None:
        super().check()
        positive("dataset.synthetic_size", self.synthetic_size)


def make_synthetic(n: int, num_classes: int, channels: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images [n,C,H,W] whose class is learnable from a per-class template."""
    g = torch.Generator().manual_seed(1234)  # templates are fixed; the seed only changes the draw
    templates = torch.rand((num_classes, channels, size, size), generator=g)
    g.manual_seed(seed)
    y = torch.arange(n) % num_classes
    y = y[torch.randperm(n, generator=g)]
    noise = torch.rand((n, channels, size, size), generator=g)
    x = 0.6 * templates[y] + 0.4 * noise
    return (x * 255).round().to(torch.uint8), y.long()
