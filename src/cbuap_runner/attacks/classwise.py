"""Class-wise UAP (Benz et al., ICME 2021): K perturbations, sample i receives δ_{y_i}.

Crafted by the shared engine with the SGD-UAP objective; each δ_k gets the mean-reduced gradient over the
samples of class k in the batch.
"""

from __future__ import annotations

from torch import Tensor, nn

from ..schema import AttackConfig
from .engine import CraftResult, run_engine
from .objectives import UAPObjective


def craft_cw_uap(model: nn.Module, x: Tensor, y: Tensor, cfg: AttackConfig, num_classes: int,
                 **kw) -> CraftResult:
    """K class-wise perturbations [K,C,H,W], one per class."""
    objective = UAPObjective(cfg, num_classes, balanced=False)
    return run_engine(model, x, y, cfg, num_classes, objective=objective, num_deltas=num_classes,
                      class_wise=True, **kw)
