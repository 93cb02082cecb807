"""Minibatch gradient ascent on δ, the crafting of SGD-UAP, CB-UAP and the class-wise UAP: the keys they share
(`AscentConfig`), the update of δ (`AscentStep`: a threat-model sign step decayed per pass, or Adam, then the
projection) and the wiring from an attack's config to the crafting loop (engine.ascend)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn

from ..schema import AttackConfig, Loss, Optimizer, fraction, positive
from .engine import Budget, Checkpoint, CraftingSet, CraftResult, Objective, RunOptions, ascend, init_delta
from .threat import ThreatModel, make_threat


@dataclass
class AscentConfig(AttackConfig):
    """The optimiser of δ and the clipped attack loss (objectives.py)."""

    optimizer: Optimizer = Optimizer.sign
    step_size: Optional[float] = None  # sign step; null = eps / 4 (L2: eps / 4 along the unit gradient)
    step_decay: float = 0.8  # multiplies the step after every pass
    adam_lr: float = 5e-3
    loss: Loss = Loss.ce
    beta: float = 12.0  # clip of the cross-entropy
    kappa: float = 10.0  # clip of the CW margin

    def check(self, prefix: str, num_classes: int) -> None:
        super().check(prefix, num_classes)
        if self.step_size is not None:
            positive(f"{prefix}.step_size", self.step_size)
        for key in ("adam_lr", "beta", "kappa"):
            positive(f"{prefix}.{key}", getattr(self, key))
        fraction(f"{prefix}.step_decay", self.step_decay, "")


class AscentStep:
    """The update of δ: a threat-model step of size α (decayed each pass) or Adam, then the projection."""

    def __init__(self, delta: Tensor, threat: ThreatModel, cfg: AscentConfig) -> None:
        self.delta, self.threat, self.decay = delta, threat, cfg.step_decay
        self.alpha = cfg.step_size if cfg.step_size is not None else cfg.eps / 4
        self.opt = torch.optim.Adam([delta], lr=cfg.adam_lr, maximize=True) if cfg.optimizer == "adam" else None

    @property
    def current_step_size(self) -> float:
        """The sign-step size α, or Adam's learning rate."""
        return self.alpha if self.opt is None else self.opt.param_groups[0]["lr"]

    @torch.no_grad()
    def step(self, grad: Tensor) -> None:
        """Ascend along `grad` in place and project δ back onto the threat ball."""
        if self.opt is None:
            self.threat.step_(self.delta.data, grad, self.alpha)
        else:
            self.delta.grad = grad
            self.opt.step()
            self.delta.grad = None
        self.threat.project_(self.delta.data)

    def state_dict(self) -> dict:
        return {"alpha": self.alpha, "adam": None if self.opt is None else self.opt.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.alpha = state["alpha"]
        if self.opt is not None:
            self.opt.load_state_dict(state["adam"])

    def end_pass(self) -> None:
        """Decay the step size (and Adam's learning rate) by `step_decay`."""
        self.alpha *= self.decay
        if self.opt is not None:
            self.opt.param_groups[0]["lr"] *= self.decay


def craft_by_ascent(model: nn.Module, x: Tensor, y: Tensor, cfg: AscentConfig, objective: Objective, *,
                    num_deltas: int, class_wise: bool = False, generator: torch.Generator | None = None,
                    progress: bool = False, init: Tensor | None = None, max_steps: int | None = None,
                    val: tuple[Tensor, Tensor] | None = None, checkpoint: Checkpoint | None = None) -> CraftResult:
    """Maximise `objective` over δ [num_deltas,C,H,W] from attack.init (or the warm start `init`) within the
    config's budget (or exactly `max_steps` minibatch steps), stopping by the shared rule on `val`; continues the
    state `checkpoint` holds and keeps it there."""
    threat = make_threat(cfg.norm, cfg.eps)
    delta = init_delta(threat, (num_deltas, *x.shape[1:]), cfg, device=x.device, generator=generator, init=init)
    delta.requires_grad_(True)
    run = RunOptions(cfg.name, generator, progress, class_wise, checkpoint)
    return ascend(model, CraftingSet(x, y, val), delta, objective, AscentStep(delta, threat, cfg),
                  Budget.of(cfg, max_steps), run)
