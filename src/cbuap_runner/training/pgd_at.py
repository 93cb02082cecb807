"""PGD adversarial training (Madry et al. 2018) and shared adversarial training (Mummadi et al. 2019).

PGD-AT — Madry, Makelov, Schmidt, Tsipras, Vladu, "Towards Deep Learning Models Resistant to Adversarial
Attacks", ICLR 2018 (arXiv 1706.06083), Section 2-3: min_θ E[max_{δ∈S} L(θ, x + δ, y)], the inner maximum by
projected gradient descent from a random start in S. Their CIFAR-10 training adversary is ℓ∞, ε = 8/255,
7 steps of 2/255 (= ε/4). What we implement:
- Step: ε/4 (`training.step_size` when set); ℓ∞ steps along sign(∇), ℓ2 along ∇/‖∇‖₂ (`training.adversary.norm`;
  the paper's PGD is a projection onto any set S, so l2 is allowed).
- Steps: `training.pgd.steps` (default 10, a choice: slightly more than the paper's 7).
- Start: uniform in the ε-ball (ℓ2: uniform in the ball), drawn from torch's global generator.
- Loss of the inner maximisation: the mean cross-entropy of the batch; model frozen (eval mode, running
  statistics untouched, no parameter gradients: attacks.engine.frozen), as every evaluation attack sees it.
- Outer loss: Madry et al. train on adversarial examples only (σ = 1); `training.sigma` < 1 mixes in the clean
  loss (adversary.mixed_loss).

SAT — Mummadi, Brox, Metzen, "Defending Against Universal Perturbations With Shared Adversarial Training",
ICCV 2019 (arXiv 1812.03705): the batch is split into heaps of s = `training.sat.heap_size` samples and each heap
shares one perturbation that maximises the heap's loss; s = 1 is PGD-AT, large s approaches a universal
perturbation. The weights are trained on a convex combination of the clean and the shared-adversarial loss,
whose weight the paper varies to trade clean accuracy for robustness (checked only against secondary summaries
of the full text). Here: (1 − σ)·CE(clean) + σ·CE(adv) with σ = `training.sigma`, through the one `mixed_loss`,
default 1 as for every defence. Choices: the heap perturbation uses the PGD-AT settings above (random start,
ε/4, `training.pgd.steps`, mean cross-entropy over the heap), so that SAT and PGD-AT differ only in the heap
size; heaps are consecutive samples of the already shuffled batch (the last heap may be smaller).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks.engine import apply_delta, frozen
from ..attacks.threat import ThreatModel, make_threat
from ..schema import ThreatTrainingConfig, positive
from .adversary import Adversary, mixed_loss
from .loop import unwrap

log = logging.getLogger(__name__)


@dataclass
class PGDConfig:
    steps: int = 10  # PGD steps per batch


@dataclass
class HeapConfig:
    heap_size: int = 16  # samples that share one perturbation


@dataclass
class PGDATConfig(ThreatTrainingConfig):
    pgd: PGDConfig = field(default_factory=PGDConfig)

    def check(self, num_classes: int) -> None:
        super().check(num_classes)
        positive("training.pgd.steps", self.pgd.steps)


@dataclass
class SATConfig(PGDATConfig):
    sat: HeapConfig = field(default_factory=HeapConfig)

    def check(self, num_classes: int) -> None:
        super().check(num_classes)
        positive("training.sat.heap_size", self.sat.heap_size)


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, step: float, steps: int,
        group_size: int = 1) -> torch.Tensor:
    """clamp(x + δ, 0, 1) after `steps` PGD steps from a random start; consecutive groups of `group_size` share a δ."""
    n = x.shape[0]
    owner = torch.arange(n, device=x.device) // group_size  # sample i uses δ[owner[i]]
    delta = threat.random_init((-(-n // group_size), *x.shape[1:]), device=x.device).requires_grad_(True)
    with frozen(model) as net:
        for _ in range(steps):
            loss = F.cross_entropy(net(apply_delta(x, delta, owner)), y)
            (grad,) = torch.autograd.grad(loss, delta)
            with torch.no_grad():
                threat.project_(threat.step_(delta, grad, step))
    return apply_delta(x, delta.detach(), owner)


class PGDAT(Adversary):
    """Per-sample PGD (random start, `steps` steps of ε/4 by default) on the frozen network; σ-mixed loss."""

    def __init__(self, cfg, num_classes, input_shape, device, seed: int = 0):
        super().__init__(cfg, num_classes, input_shape, device, seed)
        self.threat = make_threat(cfg.adversary.norm, cfg.eps)

    @property
    def group_size(self) -> int:
        """Samples that share one perturbation (1: per-sample PGD)."""
        return 1

    @property
    def step_size(self) -> float:
        """The PGD step: ε/4 (Madry et al.'s 2/255 at ε = 8/255) unless `training.step_size` is set."""
        return self.cfg.step_size if self.cfg.step_size is not None else self.cfg.eps / 4

    def loss(self, model, x, y, step):
        x_adv = pgd(unwrap(model), x, y, self.threat, self.step_size, self.cfg.pgd.steps, self.group_size)
        return mixed_loss(model, x, x_adv, y, self.cfg.sigma)


class SharedAT(PGDAT):
    """Shared adversarial training (Mummadi et al. 2019): heaps of `heap_size` samples share one PGD perturbation."""

    @property
    def group_size(self) -> int:
        return self.cfg.sat.heap_size
