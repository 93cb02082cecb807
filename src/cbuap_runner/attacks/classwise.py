"""Class-wise UAP (Benz et al., ICME 2021): K perturbations, sample i receives δ_{y_i}.

Crafted by the shared engine with the SGD-UAP objective (or the CB-UAP one when any balance weight is
set); each δ_k gets the mean-reduced gradient over the samples of class k in the batch.
"""

from __future__ import annotations

import logging

from torch import Tensor, nn

from ..schema import AttackConfig
from .engine import ATTACKS, CraftResult, run_engine
from .objectives import UAPObjective

log = logging.getLogger(__name__)


def craft_cw_uap(model: nn.Module, x: Tensor, y: Tensor, cfg: AttackConfig, num_classes: int,
                 **kw) -> CraftResult:
    """K class-wise perturbations [K,C,H,W] (num_starts is ignored: one δ per class)."""
    if cfg.num_starts > 1:
        log.warning("attack=cw_uap crafts one perturbation per class; num_starts=%d is ignored", cfg.num_starts)
    objective = UAPObjective(cfg, num_classes, balanced=True)
    return run_engine(model, x, y, cfg, num_classes, objective=objective, num_deltas=num_classes,
                      class_wise=True, **kw)


ATTACKS["cw_uap"] = craft_cw_uap
