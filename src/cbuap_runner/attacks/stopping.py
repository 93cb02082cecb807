"""The stopping rule every attack shares: measured on validation images after each pass.

An attack runs `attack.passes` passes over its crafting images. Two optional rules end it earlier, both
judged on the validation split (never on test images) so that every attack in a table stops by the same
rule: `attack.patience` (stop when the validation fooling rate has not improved by more than `attack.tol`
for that many passes; the perturbation with the best validation fooling rate is returned) and
`attack.fooling_target` (stop once the validation fooling rate reaches it; the 1 − δ rule of DeepFool UAP).
With neither set, no validation pass is made and the last perturbation is returned.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from ..metrics import fooling_rates, predict

if TYPE_CHECKING:
    from .engine import Budget

VAL_BATCH = 512


class PassMonitor:
    """End-of-pass bookkeeping: validation fooling rate of δ, the stop decision, the best δ so far.

    δ may be one perturbation [C,H,W], M starts [M,C,H,W] (the best start counts) or, with `class_wise`,
    K class-wise perturbations [K,C,H,W] (sample i gets δ[y_i]). Call inside `frozen(model)`.
    """

    def __init__(self, model: nn.Module, budget: "Budget", val: tuple[Tensor, Tensor] | None, *,
                 class_wise: bool = False) -> None:
        self.patience, self.tol, self.target = budget.patience, budget.tol, budget.fooling_target
        self.active = self.patience is not None or self.target is not None
        if self.active and val is None:
            raise ValueError("attack.patience / attack.fooling_target need validation images (val=)")
        self.model, self.class_wise = model, class_wise
        self.stop = self.converged = False
        self.best_rate, self.stale = -math.inf, 0
        self.best_delta: Tensor | None = None
        if self.active:
            self.x, self.y = val
            self.clean = predict(model, self.x, VAL_BATCH)

    def rates(self, delta: Tensor) -> list[float]:
        """Validation fooling rate of each perturbation group (one value unless δ is a stack of starts)."""
        return fooling_rates(self.model, self.x, delta, VAL_BATCH, y=self.y if self.class_wise else None,
                             clean=self.clean)

    def end_pass(self, delta: Tensor) -> dict:
        """Judge the pass that produced `delta`; returns what to add to the pass record."""
        if not self.active:
            return {}
        rates = self.rates(delta)
        rate = max(rates)
        if rate > self.best_rate:
            self.best_delta = delta.detach().clone()
        if rate > self.best_rate + self.tol:
            self.stale = 0
        else:
            self.stale += 1
        self.best_rate = max(self.best_rate, rate)
        if (self.target is not None and rate >= self.target) or (self.patience is not None and self.stale >= self.patience):
            self.stop = self.converged = True
        record = {"val_fooling_rate": rate}
        if len(rates) > 1:
            record["val_fooling_rates"] = rates
        return record

    def state_dict(self) -> dict:
        """The rule's history: the best rate and δ so far, the passes without improvement, the decision."""
        return {"best_rate": self.best_rate, "stale": self.stale, "best_delta": self.best_delta, "stop": self.stop,
                "converged": self.converged}

    def load_state_dict(self, state: dict, device: torch.device) -> None:
        self.best_rate, self.stale, self.stop, self.converged = (state[k] for k in ("best_rate", "stale", "stop",
                                                                                    "converged"))
        best = state["best_delta"]
        self.best_delta = None if best is None else best.to(device)

    def result(self, delta: Tensor) -> Tensor:
        """What the attack returns: the best validated δ under `patience`, else the last one."""
        if self.patience is not None and self.best_delta is not None:
            return self.best_delta
        return delta
