"""Defences: one training loop with a pluggable adversary per `training=` option.

`DEFENCES` is the only list of defence names: the schema validates `training.name` against it, and each entry's
`schema` (a dataclass extending schema.TrainingConfig) holds the option's keys, so that a key the defence does not
have is refused when the config is composed. A new defence adds an Adversary subclass, its schema, an entry here
and a config node `conf/training/<name>.yaml` starting from `/schema/training/<name>@_here_` (docs/design.md,
Extending).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import UserError
from ..schema import AdversarialConfig, ThreatTrainingConfig, TrainingConfig
from .adversary import Adversary, Natural
from .cb_uat import CBUAT, CBUATConfig
from .pgd_at import PGDAT, PGDATConfig, SATConfig, SharedAT
from .uat import CWUAT, UAT, FastUAT, UATConfig


@dataclass(frozen=True)
class DefenceSpec:
    """A defence: its adversary class, its schema and its properties."""

    adversary: type[Adversary]
    schema: type[TrainingConfig]
    crafts_with_adversary: bool = False  # its perturbations come from the attack training.adversary configures

    @property
    def adversarial(self) -> bool:
        return issubclass(self.schema, AdversarialConfig)


DEFENCES: dict[str, DefenceSpec] = {
    "natural": DefenceSpec(Natural, TrainingConfig),
    "pgd_at": DefenceSpec(PGDAT, PGDATConfig),
    "uat": DefenceSpec(UAT, UATConfig),
    "fast_uat": DefenceSpec(FastUAT, ThreatTrainingConfig),
    "sat": DefenceSpec(SharedAT, SATConfig),
    "cw_uat": DefenceSpec(CWUAT, UATConfig),
    "cb_uat": DefenceSpec(CBUAT, CBUATConfig, crafts_with_adversary=True),
}


def make_adversary(name: str, cfg: TrainingConfig, num_classes: int, input_shape: tuple[int, int, int],
                   device: torch.device, seed: int = 0) -> Adversary:
    """The adversary of defence `name`; `seed` (the run's) seeds whatever randomness it owns (CB-UAT's refreshes)."""
    if name not in DEFENCES:
        raise UserError(f"training={name}: not available; choose one of {', '.join(DEFENCES)}")
    return DEFENCES[name].adversary(cfg, num_classes, input_shape, device, seed=seed)
