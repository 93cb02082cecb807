"""PGD-AT (Madry et al. 2018): train on per-sample L-inf PGD examples."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .adversary import Adversary, mixed_loss
from .loop import unwrap


def pgd_linf(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, step: float, steps: int,
             group_size: int = 1) -> torch.Tensor:
    """L-inf PGD with random start; samples in consecutive groups of `group_size` share one perturbation."""
    n = x.shape[0]
    groups = -(-n // group_size)
    owner = torch.arange(n, device=x.device) // group_size
    delta = torch.empty((groups, *x.shape[1:]), device=x.device).uniform_(-eps, eps).requires_grad_(True)
    was_training = model.training
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        for _ in range(steps):
            loss = F.cross_entropy(model((x + delta[owner]).clamp(0, 1)), y)
            (grad,) = torch.autograd.grad(loss, delta)
            with torch.no_grad():
                delta.add_(step * grad.sign()).clamp_(-eps, eps)
    finally:
        for p in model.parameters():
            p.requires_grad_(True)
        model.train(was_training)
    return (x + delta.detach()[owner]).clamp(0, 1)


class PGDAT(Adversary):
    """Per-sample PGD (ε, step ε/4 by default, `steps` iterations), loss mixed by σ."""

    group_size = 1

    def loss(self, model, x, y, step):
        cfg = self.cfg
        x_adv = pgd_linf(unwrap(model), x, y, cfg.eps, cfg.step_size or cfg.eps / 4, cfg.steps, self.group_size)
        logits_adv = model(x_adv)
        logits_clean = model(x) if cfg.sigma < 1 else None
        return mixed_loss(logits_clean, logits_adv, y, cfg.sigma), logits_adv


class SharedAT(PGDAT):
    """Shared adversarial training (Mummadi et al. 2019): heaps of `heap_size` samples share one PGD perturbation."""

    @property
    def group_size(self) -> int:  # type: ignore[override]
        return self.cfg.heap_size
