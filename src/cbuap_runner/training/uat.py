"""Universal adversarial training (Shafahi et al. 2020), its fast variant, and class-wise UAT (Benz et al. 2021)."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from .. import dist
from ..attacks.objectives import attack_loss
from .adversary import Adversary, mixed_loss
from .loop import unwrap


class UAT(Adversary):
    """One persistent δ; per batch one FGSM-style ascent step on the clipped CE, then a θ step on x + δ."""

    def __init__(self, cfg, num_classes, input_shape, device):
        super().__init__(cfg, num_classes, input_shape, device)
        self.delta = torch.zeros(self._shape(), device=device)
        self.attack_cfg = dataclasses.replace(cfg.adversary, target=None)

    def _shape(self) -> tuple[int, ...]:
        return tuple(self.input_shape)

    @property
    def step(self) -> float:
        return self.cfg.step_size or self.cfg.eps / 10

    def _perturbed(self, x: torch.Tensor, y: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        return (x + delta).clamp(0, 1)

    def _ascend(self, grad: torch.Tensor) -> None:
        """One signed step with the gradient averaged over the ranks, so that every rank keeps the same δ."""
        dist.all_reduce_mean_(grad)
        with torch.no_grad():
            self.delta.add_(self.step * grad.sign()).clamp_(-self.cfg.eps, self.cfg.eps)

    def _delta_grad(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        delta = self.delta.clone().requires_grad_(True)
        logits = unwrap(model)(self._perturbed(x, y, delta))
        loss = attack_loss(logits.unsqueeze(0), y, self.attack_cfg).mean()
        (grad,) = torch.autograd.grad(loss, delta)
        return grad

    def loss(self, model, x, y, step):
        self._ascend(self._delta_grad(model, x, y))
        logits_adv = model(self._perturbed(x, y, self.delta))
        logits_clean = model(x) if self.cfg.sigma < 1 else None
        return mixed_loss(logits_clean, logits_adv, y, self.cfg.sigma), logits_adv

    def state_dict(self) -> dict[str, Any]:
        return {"delta": self.delta.detach().cpu()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.delta.copy_(state["delta"].to(self.device))

    def finite(self) -> bool:
        return bool(torch.isfinite(self.delta).all())


class FastUAT(UAT):
    """FastUAT: the same backward pass yields ∇θ (the optimiser's step) and ∇δ (the ascent step)."""

    def loss(self, model, x, y, step):
        self._live = self.delta.clone().requires_grad_(True)
        logits_adv = model(self._perturbed(x, y, self._live))
        logits_clean = model(x) if self.cfg.sigma < 1 else None
        return mixed_loss(logits_clean, logits_adv, y, self.cfg.sigma), logits_adv

    def after_backward(self) -> None:
        self._ascend(self._live.grad)
        self._live = None


class CWUAT(UAT):
    """Class-wise UAT: K perturbations δ_k, sample i is attacked with δ_{y_i}."""

    def _shape(self) -> tuple[int, ...]:
        return (self.num_classes, *self.input_shape)

    def _perturbed(self, x, y, delta):
        return (x + delta[y]).clamp(0, 1)
