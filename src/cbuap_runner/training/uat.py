"""Universal adversarial training: UAT and FastUAT (Shafahi et al. 2020) and class-wise UAT (Benz et al. 2021).

UAT — Shafahi, Najibi, Xu, Dickerson, Davis, Goldstein, "Universal Adversarial Training", AAAI 2020
(arXiv 1811.11304), Algorithm 3 ("alternating stochastic gradient method"). Per minibatch B the paper
  1. updates w by momentum SGD on E_B[∇w l(w, x + δ)],
  2. then updates δ by one FGSM step on the same minibatch at the new weights: δ ← δ + ε·sign(E_B[∇δ l(w, x + δ)]),
  3. and projects δ onto the ℓp ball of radius ε.
What we implement, and the choices where the paper is silent:
- Loss of the δ step: the plain cross-entropy l, as Algorithm 3 writes it (the β-clipped l̂ belongs to the
  paper's attack, Algorithm 2, not to training). Of `training.adversary` these defences have only `norm`
  (their schema has no other key, so any other is refused).
- Step: ε·sign(mean gradient over the batch); `training.step_size` replaces ε when set (null = the paper's ε).
- Order: exactly steps 1-3. The loop's only hook after the weight update is the next batch, so the δ step of
  batch t runs at the start of batch t + 1, on batch t, at the weights batch t produced — the paper's sequence.
  The pending batch is part of the checkpoint, so a resumed run repeats it (under torchrun rank 0's copy).
- Norm: `training.adversary.norm`; Algorithm 3 projects onto an ℓp ball, so l2 is allowed: the step is then
  ε·g/‖g‖₂ (steepest ascent in ℓ2) and the projection rescales a δ outside the ball back onto it (attacks.threat: into the ball).
- Start: δ = 0 (the paper does not say how δ is initialised).
- Model during the δ step: eval mode, running statistics untouched, no parameter gradients (attacks.engine.frozen),
  i.e. the model exactly as every evaluation attack sees it; the weight step trains in train mode as usual.
  `training.delta_model_mode=train` takes the δ step in train mode instead (batch statistics normalise part of a
  batch-shared δ away, and the running statistics are updated by the δ forward too): kept to measure the effect.
- Clean/adversarial mix: the paper trains on x + δ only (σ = 1); `training.sigma` < 1 adds the clean term
  (adversary.mixed_loss). The δ gradient of the mixed loss is σ·∇δ CE(adv), so σ does not change the δ step.
- Under torchrun ∇δ is averaged over the ranks before the sign, so every rank keeps the same δ.

FastUAT — the same paper, Algorithm 4 ("simultaneous stochastic gradient method"): one backward pass at (w, δ)
gives d_w and d_δ; w takes its SGD step and δ ← δ + ε·sign(d_δ), then the projection. Implemented as written
(step ε, or `training.step_size`). Its δ gradient necessarily comes from the training forward, i.e. from the
model in train mode with batch statistics: this is the documented alternative to the eval-mode δ step of the
other defences (an eval-mode δ gradient would need a second forward, which is UAT).

CW-UAT — Benz, Zhang, Karjauv, Kweon, "Universal adversarial training with class-wise perturbations", ICME 2021
(arXiv 2104.03000): UAT with K perturbations δ_k, sample i trained on x_i + δ_{y_i}. We run UAT's update (above)
on every δ_k with the gradient of the batch's samples of class k (a class absent from the batch keeps its δ_k);
step ε·sign per class (L2: per-class unit gradient), each δ_k projected onto its own ε-ball, eval-mode δ step.
Only the abstract of this paper could be consulted here: its step size, update order and loss are taken to be
UAT's, which it extends (a choice, to be checked against the paper's Algorithm 1).
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .. import dist
from ..attacks.engine import apply_delta, frozen
from ..attacks.threat import make_threat
from ..schema import ModelMode, ThreatTrainingConfig
from .adversary import Adversary, mixed_loss
from .loop import unwrap

log = logging.getLogger(__name__)


@dataclass
class UATConfig(ThreatTrainingConfig):
    """uat and cw_uat (fast_uat has no δ step of its own: ThreatTrainingConfig)."""

    # the model's mode during the δ step. eval = as every evaluation attack sees it (running statistics untouched);
    # train = batch statistics and updated running statistics, kept only to measure the difference
    delta_model_mode: ModelMode = ModelMode.eval


class UAT(Adversary):
    """One persistent universal δ; per batch a weight step on x + δ, then one FGSM step of δ (Algorithm 3)."""

    def __init__(self, cfg, num_classes, input_shape, device, seed: int = 0):
        super().__init__(cfg, num_classes, input_shape, device, seed)
        self.threat = make_threat(cfg.adversary.norm, cfg.eps)
        self.delta = torch.zeros(self._shape(), device=device)
        self._pending: Optional[tuple[torch.Tensor, torch.Tensor]] = None  # the batch whose δ step is due

    def _shape(self) -> tuple[int, ...]:
        return tuple(self.input_shape)

    def _owner(self, y: torch.Tensor) -> Optional[torch.Tensor]:
        """Which row of δ each sample gets (None: the one universal δ)."""
        return None

    @property
    def step_size(self) -> float:
        """The δ step: ε (Shafahi et al., Algorithms 3-4) unless `training.step_size` is set."""
        return self.cfg.step_size if self.cfg.step_size is not None else self.cfg.eps

    def perturbed(self, x: torch.Tensor, y: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """clamp(x + δ, 0, 1) with each sample's row of δ."""
        return apply_delta(x, delta, self._owner(y))

    def delta_grad(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """∇δ of the mean cross-entropy on (x, y), the network frozen (eval mode, statistics untouched); with
        `training.delta_model_mode=train`, in train mode instead (batch statistics, running statistics updated)."""
        delta = self.delta.clone().requires_grad_(True)
        mode = frozen(unwrap(model)) if self.cfg.delta_model_mode == "eval" else nullcontext(unwrap(model))
        with mode as net:
            loss = F.cross_entropy(net(self.perturbed(x, y, delta)), y)
            (grad,) = torch.autograd.grad(loss, delta)
        return grad

    def ascend(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
        """One δ step on the batch (x, y) against the current weights."""
        self.step_delta(self.delta_grad(model, x, y))

    def step_delta(self, grad: torch.Tensor) -> None:
        """δ ← Π_ε(δ + step·sign(g)) (L2: step·g/‖g‖), with g averaged over the ranks so that every rank agrees."""
        dist.all_reduce_mean_(grad)
        with torch.no_grad():
            self.threat.step_(self.delta, grad, self.step_size)
            self.threat.project_(self.delta)

    def loss(self, model, x, y, step):
        if self._pending is not None:  # the δ step of the previous batch, at the weights it produced
            self.ascend(model, *self._pending)
        self._pending = (x, y)
        return mixed_loss(model, x, self.perturbed(x, y, self.delta), y, self.cfg.sigma)

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"delta": self.delta.detach().cpu()}
        if self._pending is not None:
            state["pending"] = {"x": self._pending[0].detach().cpu(), "y": self._pending[1].detach().cpu()}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.delta.copy_(state["delta"].to(self.device))
        pending = state.get("pending")
        self._pending = None if pending is None else (pending["x"].to(self.device), pending["y"].to(self.device))

    def finite(self) -> bool:
        return bool(torch.isfinite(self.delta).all())


class FastUAT(UAT):
    """FastUAT (Algorithm 4): the training backward gives ∇w and ∇δ; δ's gradient comes from the train-mode forward."""

    _live: Optional[torch.Tensor] = None

    def loss(self, model, x, y, step):
        self._live = self.delta.clone().requires_grad_(True)
        return mixed_loss(model, x, self.perturbed(x, y, self._live), y, self.cfg.sigma)

    def after_backward(self) -> None:
        grad, self._live = self._live.grad, None
        if grad is not None:  # None only when σ = 0 (no adversarial term)
            self.step_delta(grad)


class CWUAT(UAT):
    """Class-wise UAT (Benz et al. 2021): K perturbations δ_k, sample i trained against δ_{y_i}."""

    def _shape(self) -> tuple[int, ...]:
        return (self.num_classes, *self.input_shape)

    def _owner(self, y: torch.Tensor) -> Optional[torch.Tensor]:
        return y
