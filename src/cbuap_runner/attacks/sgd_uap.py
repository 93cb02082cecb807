"""SGD-UAP (Shafahi et al., "Universal adversarial training", AAAI 2020, Algorithm 2): minibatch sign-gradient
ascent on the clipped cross-entropy (or the CW margin), untargeted or towards attack.target, from one start or
attack.num_starts independent ones (the best chosen on validation afterwards)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from torch import Tensor, nn

from ..schema import fail, positive
from .ascent import AscentConfig, craft_by_ascent
from .engine import CraftResult
from .objectives import ClippedLoss


@dataclass
class SGDUAPConfig(AscentConfig):
    num_starts: int = 1  # M independent perturbations crafted as one [M,C,H,W] tensor
    target: Optional[int] = None  # targeted attack towards this class

    def check(self, prefix: str, num_classes: int) -> None:
        super().check(prefix, num_classes)
        positive(f"{prefix}.num_starts", self.num_starts)
        if self.num_starts > 1 and self.init == "zero":
            fail(f"{prefix}.num_starts", self.num_starts,
                 f"starts from zero are identical perturbations; set {prefix}.init=uniform")
        if self.num_starts > 1 and self.start is not None:
            fail(f"{prefix}.num_starts", self.num_starts, f"every start would be {prefix}.start; set it to 1")
        if self.target is not None and not (0 <= self.target < num_classes):
            fail(f"{prefix}.target", self.target, f"must be a class index in [0, {num_classes - 1}]")


def craft_sgd_uap(model: nn.Module, x: Tensor, y: Tensor, cfg: SGDUAPConfig, num_classes: int,
                  **kw) -> CraftResult:
    """SGD-UAP: clipped CE (or CW) ascent."""
    objective = ClippedLoss(cfg.loss, cfg.beta, cfg.kappa, cfg.target)
    return craft_by_ascent(model, x, y, cfg, objective, num_deltas=cfg.num_starts, **kw)
