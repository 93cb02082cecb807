"""Universal perturbation attacks: one registry, one entry point (`craft`)."""

from . import classwise, deepfool_uap  # noqa: F401  (register cw_uap and uap)
from .engine import ATTACKS, CraftResult, apply_delta, craft
from .threat import L2Threat, LinfThreat, ThreatModel, make_threat

__all__ = ["ATTACKS", "CraftResult", "apply_delta", "craft", "L2Threat", "LinfThreat", "ThreatModel",
           "make_threat"]
