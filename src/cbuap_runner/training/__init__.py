"""Defences: one training loop with a pluggable adversary per `training=` option."""

from __future__ import annotations

import torch

from ..errors import UserError
from ..schema import TrainingConfig
from .adversary import Adversary, Natural
from .cb_uat import CBUAT
from .pgd_at import PGDAT, SharedAT
from .uat import CWUAT, UAT, FastUAT

DEFENCES: dict[str, type[Adversary]] = {
    "natural": Natural, "pgd_at": PGDAT, "uat": UAT, "fast_uat": FastUAT, "sat": SharedAT, "cw_uat": CWUAT,
    "cb_uat": CBUAT,
}


def make_adversary(name: str, cfg: TrainingConfig, num_classes: int, input_shape: tuple[int, int, int],
                   device: torch.device, seed: int = 0) -> Adversary:
    """The adversary of defence `name`; `seed` (the run's) seeds whatever randomness it owns (CB-UAT's refreshes)."""
    if name not in DEFENCES:
        raise UserError(f"training={name}: not available; choose one of {', '.join(DEFENCES)}")
    return DEFENCES[name](cfg, num_classes, input_shape, device, seed=seed)
