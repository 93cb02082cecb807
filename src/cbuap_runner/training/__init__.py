"""Defences: one training loop with a pluggable adversary per `training=` option."""

from __future__ import annotations

from ..errors import UserError
from .adversary import Adversary, Natural
from .cb_uat import CBUAT
from .pgd_at import PGDAT, SharedAT
from .uat import CWUAT, UAT, FastUAT

DEFENCES: dict[str, type[Adversary]] = {
    "natural": Natural, "pgd_at": PGDAT, "uat": UAT, "fast_uat": FastUAT, "sat": SharedAT, "cw_uat": CWUAT,
    "cb_uat": CBUAT,
}


def make_adversary(name: str, *args, **kwargs) -> Adversary:
    """The adversary of defence `name`."""
    if name not in DEFENCES:
        raise UserError(f"training={name}: not available; choose one of {', '.join(DEFENCES)}")
    return DEFENCES[name](*args, **kwargs)
