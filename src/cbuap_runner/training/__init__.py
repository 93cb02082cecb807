"""Defences: one training loop with a pluggable adversary per `training=` option.

`DEFENCES` is the only list of defence names: the schema validates `training.name` against it and refuses a
`training.*` key the chosen defence does not read (`reads`). A new defence adds an Adversary subclass, an entry
here and a config node `conf/training/<name>.yaml` (docs/design.md, Extending).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import UserError
from ..schema import TrainingConfig
from .adversary import Adversary, Natural
from .cb_uat import CBUAT
from .pgd_at import PGDAT, SharedAT
from .uat import CWUAT, UAT, FastUAT

# the optimisation every defence reads (and its identity)
SHARED_KEYS = frozenset({"name", "epochs", "batch_size", "lr", "momentum", "weight_decay", "nesterov", "schedule",
                         "milestones", "gamma", "amp", "init_checkpoint"})
# the threat model and loss mix of every adversarial defence (of training.adversary only its norm, unless
# `crafts_with_adversary`)
ADVERSARIAL_KEYS = frozenset({"eps", "sigma", "adversary"})


@dataclass(frozen=True)
class DefenceSpec:
    """A defence: its adversary class and its properties."""

    adversary: type[Adversary]
    reads: frozenset[str]  # training.* keys and sections it reads beyond SHARED_KEYS
    crafts_with_adversary: bool = False  # its perturbations come from the attack training.adversary configures

    @property
    def adversarial(self) -> bool:
        return "adversary" in self.reads


DEFENCES: dict[str, DefenceSpec] = {
    "natural": DefenceSpec(Natural, frozenset()),
    "pgd_at": DefenceSpec(PGDAT, ADVERSARIAL_KEYS | {"step_size", "pgd"}),
    "uat": DefenceSpec(UAT, ADVERSARIAL_KEYS | {"step_size", "delta_model_mode"}),
    "fast_uat": DefenceSpec(FastUAT, ADVERSARIAL_KEYS | {"step_size"}),
    "sat": DefenceSpec(SharedAT, ADVERSARIAL_KEYS | {"step_size", "pgd", "sat"}),
    "cw_uat": DefenceSpec(CWUAT, ADVERSARIAL_KEYS | {"step_size", "delta_model_mode"}),
    "cb_uat": DefenceSpec(CBUAT, ADVERSARIAL_KEYS | {"pool"}, crafts_with_adversary=True),
}


def read_settings(cfg: dict) -> dict:
    """The part of a plain training config (`to_plain(cfg.training)`) that its defence reads: what of the training
    decides the model it trains (provenance.weights_key), unchanged when another defence's keys are added."""
    spec = DEFENCES[cfg["name"]]
    out = {k: v for k, v in cfg.items() if k in SHARED_KEYS or k in spec.reads}
    if spec.adversarial and not spec.crafts_with_adversary:
        out["adversary"] = {"norm": cfg["adversary"]["norm"]}
    return out


def make_adversary(name: str, cfg: TrainingConfig, num_classes: int, input_shape: tuple[int, int, int],
                   device: torch.device, seed: int = 0) -> Adversary:
    """The adversary of defence `name`; `seed` (the run's) seeds whatever randomness it owns (CB-UAT's refreshes)."""
    if name not in DEFENCES:
        raise UserError(f"training={name}: not available; choose one of {', '.join(DEFENCES)}")
    return DEFENCES[name].adversary(cfg, num_classes, input_shape, device, seed=seed)
