"""SGD with momentum and a per-iteration learning-rate schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..schema import TrainingConfig


def lr_factor(cfg: TrainingConfig, step: int, total_steps: int) -> float:
    """Multiplier of the base learning rate after `step` of `total_steps` iterations."""
    progress = min(step / max(total_steps, 1), 1.0)
    if cfg.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    if cfg.schedule == "step":
        return cfg.gamma ** sum(progress >= m for m in cfg.milestones)
    return 1.0


def make_optimizer(model: nn.Module, cfg: TrainingConfig, total_steps: int):
    """The optimiser and its LambdaLR scheduler (stepped once per iteration)."""
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                          nesterov=cfg.nesterov and cfg.momentum > 0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(cfg, step, total_steps))
    return opt, sched
