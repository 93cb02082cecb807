"""Class-wise UAP (Benz et al., "Universal adversarial training with class-wise perturbations", ICME 2021):
K perturbations, sample i receives δ_{y_i}.

Crafted by minibatch ascent with SGD-UAP's clipped loss (untargeted); each δ_k gets the mean-reduced gradient over
the samples of class k in the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from .ascent import AscentConfig, craft_by_ascent
from .engine import CraftResult
from .objectives import ClippedLoss


@dataclass
class CWUAPConfig(AscentConfig):
    """The ascent keys alone: one start per class, untargeted."""


def craft_cw_uap(model: nn.Module, x: Tensor, y: Tensor, cfg: CWUAPConfig, num_classes: int,
                 **kw) -> CraftResult:
    """K class-wise perturbations [K,C,H,W], one per class."""
    objective = ClippedLoss(cfg.loss, cfg.beta, cfg.kappa)
    return craft_by_ascent(model, x, y, cfg, objective, num_deltas=num_classes, class_wise=True, **kw)
