"""Universal perturbation attacks: one registry (registry.py), one entry point (`craft`)."""

from .engine import CraftResult, apply_delta
from .registry import ATTACKS, AttackSpec, attack_config, attack_for, craft, register_attack
from .threat import L2Threat, LinfThreat, ThreatModel, make_threat

__all__ = ["ATTACKS", "AttackSpec", "CraftResult", "apply_delta", "attack_config", "attack_for",
           "craft", "register_attack", "L2Threat", "LinfThreat", "ThreatModel", "make_threat"]
