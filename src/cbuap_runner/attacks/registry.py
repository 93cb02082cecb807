"""The attacks: one entry per `attack=` option, with what the rest of the code asks about it.

`ATTACKS` is the only list of attack names: the schema validates `attack.name` against it and refuses a key the
chosen attack does not read (`reads`). A new attack adds an entry here (or, from outside the package, through
`register_attack`) and a config node `conf/attack/<name>.yaml`; docs/design.md, Extending.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from torch import Tensor, nn

from ..schema import AttackConfig
from .classwise import craft_cw_uap
from .deepfool_uap import craft_deepfool_uap
from .engine import CraftFn, CraftResult, craft_cb_uap, craft_sgd_uap

# the budget and stopping rule every attack reads (and its identity)
SHARED_KEYS = frozenset({"name", "eps", "norm", "passes", "crafting_images", "batch_size", "patience", "tol",
                         "fooling_target"})
# minibatch gradient ascent on δ (the engine)
ASCENT_KEYS = frozenset({"optimizer", "step_size", "step_decay", "adam_lr", "init", "num_starts", "loss", "beta",
                         "kappa"})


@dataclass(frozen=True)
class AttackSpec:
    """An attack: its crafting function and its properties."""

    craft: CraftFn
    reads: frozenset[str]  # attack.* keys and sections it reads beyond SHARED_KEYS
    class_wise: bool = False  # one δ per class [K,C,H,W]; sample i receives δ[y_i]
    splits_over_ranks: bool = True  # under torchrun each rank crafts on its shard and ∇δ is averaged

    @property
    def targeted(self) -> bool:
        """Whether attack.target (a targeted attack) is defined for it."""
        return "target" in self.reads

    @property
    def multi_start(self) -> bool:
        """Whether it crafts attack.num_starts perturbations at once (chosen on validation afterwards)."""
        return "num_starts" in self.reads


ATTACKS: dict[str, AttackSpec] = {
    "sgd_uap": AttackSpec(craft_sgd_uap, ASCENT_KEYS | {"target"}),
    "cb_uap": AttackSpec(craft_cb_uap, ASCENT_KEYS | {"target", "balance"}),
    "cw_uap": AttackSpec(craft_cw_uap, ASCENT_KEYS - {"num_starts"}, class_wise=True),
    "uap": AttackSpec(craft_deepfool_uap, frozenset({"init", "deepfool"}), splits_over_ranks=False),
}


def register_attack(name: str, spec: AttackSpec) -> None:
    """Add an attack from outside the package (a plugin or a test); refuses to replace an existing one."""
    if name in ATTACKS:
        raise ValueError(f"attack {name!r} is already registered")
    ATTACKS[name] = spec


def attack_for(base: AttackConfig, name: str) -> AttackConfig:
    """Attack `name` under `base`'s shared budget and with `base`'s values of every key `name` reads; the keys it
    does not read keep their defaults (how task=pipeline derives its attacks from one attack config)."""
    reads = SHARED_KEYS | ATTACKS[name].reads
    values = {f.name: getattr(base, f.name) for f in dataclasses.fields(AttackConfig) if f.name in reads}
    return AttackConfig(**{**values, "name": name})


def craft(model: nn.Module, x: Tensor, y: Tensor, cfg: AttackConfig, num_classes: int, **kw) -> CraftResult:
    """Craft the perturbation named by `cfg.name` on the crafting set (x in [0,1], y int64); keywords: generator,
    progress, init (warm start), max_steps (a fixed number of minibatch steps), val (validation images and labels
    for the stopping rule)."""
    if cfg.name not in ATTACKS:
        raise KeyError(f"attack.name={cfg.name!r}: unknown attack; one of {', '.join(ATTACKS)}")
    return ATTACKS[cfg.name].craft(model, x, y, cfg, num_classes, **kw)
