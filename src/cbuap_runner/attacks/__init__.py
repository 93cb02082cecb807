"""Universal perturbation attacks: one registry (registry.py), one entry point (`craft`)."""

from .engine import CraftResult, apply_delta
from .registry import ASCENT_KEYS, ATTACKS, SHARED_KEYS, AttackSpec, attack_for, craft, register_attack
from .threat import L2Threat, LinfThreat, ThreatModel, make_threat

__all__ = ["ASCENT_KEYS", "ATTACKS", "SHARED_KEYS", "AttackSpec", "CraftResult", "apply_delta", "attack_for", "craft",
           "register_attack", "L2Threat", "LinfThreat", "ThreatModel", "make_threat"]
