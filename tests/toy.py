"""A toy 4-class task for attack tests: classes differ by a faint dense pattern under strong pixel noise, so a
tiny MLP (trained in about a second) has universal directions that random noise of the same norm does not find."""

from __future__ import annotations

import torch
from torch import nn

K = 4
SHAPE = (1, 16, 16)


def make_toy(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n images in [0,1] of SHAPE with labels 0..K-1 in turn; `seed` draws the noise."""
    y = torch.arange(n) % K
    signs = torch.randint(0, 2, (K, *SHAPE), generator=torch.Generator().manual_seed(1)) * 2 - 1
    x = 0.5 + 0.03 * signs[y] + 0.1 * torch.randn(n, *SHAPE, generator=torch.Generator().manual_seed(seed))
    return x.clamp(0, 1), y


def train_toy_model(dtype: torch.dtype = torch.float32):
    """(model in eval mode, train x, train y, test x, test y), the model above 95 % test accuracy."""
    torch.manual_seed(0)
    x, y = make_toy(512, 2)
    xt, yt = make_toy(256, 3)
    model = nn.Sequential(nn.Flatten(), nn.Linear(256, 32), nn.ReLU(), nn.Linear(32, K))
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(100):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval().to(dtype)
    x, xt = x.to(dtype), xt.to(dtype)
    assert (model(xt).argmax(1) == yt).float().mean() > 0.95
    return model, x, y, xt, yt
