"""The attacks: one entry per `attack=` option, with its schema, its crafting function and what the rest of the
code asks about it.

`ATTACKS` is the only list of attack names: the schema validates `attack.name` against it, and each entry's
`schema` (a dataclass extending schema.AttackConfig) holds the option's keys, so that a key the option does not
have is refused when the config is composed. A new attack adds an entry here (or, from outside the package,
through `register_attack`) and a config node `conf/attack/<name>.yaml` that starts from its schema
(`/schema/attack/<name>@_here_`); docs/design.md, Extending.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from ..errors import UserError, unknown_key_line
from ..schema import AttackConfig
from .cb_uap import CBUAPConfig, craft_cb_uap
from .classwise import CWUAPConfig, craft_cw_uap
from .deepfool_uap import DeepFoolUAPConfig, craft_deepfool_uap
from .engine import CraftFn, CraftResult
from .sgd_uap import SGDUAPConfig, craft_sgd_uap


@dataclass(frozen=True)
class AttackSpec:
    """An attack: its schema, its crafting function and its properties."""

    craft: CraftFn
    schema: type[AttackConfig]
    class_wise: bool = False  # one δ per class [K,C,H,W]; sample i receives δ[y_i]
    splits_over_ranks: bool = True  # under torchrun each rank crafts on its shard and ∇δ is averaged
    resumable: bool = False  # its crafting function takes checkpoint= (engine.Checkpoint) and continues from it

    def has(self, key: str) -> bool:
        """Whether the attack's schema has attack.<key>."""
        return key in {f.name for f in dataclasses.fields(self.schema)}

    @property
    def targeted(self) -> bool:
        """Whether attack.target (a targeted attack) is defined for it."""
        return self.has("target")

    @property
    def multi_start(self) -> bool:
        """Whether it crafts attack.num_starts perturbations at once (chosen on validation afterwards)."""
        return self.has("num_starts")


ATTACKS: dict[str, AttackSpec] = {
    "sgd_uap": AttackSpec(craft_sgd_uap, SGDUAPConfig, resumable=True),
    "cb_uap": AttackSpec(craft_cb_uap, CBUAPConfig, resumable=True),
    "cw_uap": AttackSpec(craft_cw_uap, CWUAPConfig, class_wise=True, resumable=True),
    "uap": AttackSpec(craft_deepfool_uap, DeepFoolUAPConfig, splits_over_ranks=False, resumable=True),
}


def register_attack(name: str, spec: AttackSpec) -> None:
    """Add an attack from outside the package (a plugin or a test); refuses to replace an existing one."""
    if name in ATTACKS:
        raise ValueError(f"attack {name!r} is already registered")
    if not (isinstance(spec.schema, type) and issubclass(spec.schema, AttackConfig)):
        raise TypeError(f"attack {name!r}: its schema must be a dataclass extending schema.AttackConfig")
    ATTACKS[name] = spec


def attack_config(name: str, **values: Any) -> AttackConfig:
    """Attack `name`'s config: its schema's defaults, then `values` (keys of its schema; eps has no default)."""
    if name not in ATTACKS:
        raise UserError(f"attack={name}: no such attack; choose one of {', '.join(ATTACKS)}")
    schema = ATTACKS[name].schema
    unknown = sorted(set(values) - {f.name for f in dataclasses.fields(schema)})
    if unknown:
        raise UserError(unknown_key_line(f"attack.{unknown[0]}", name))
    return schema(name=name, **values)


def attack_for(base: AttackConfig, name: str) -> AttackConfig:
    """Attack `name` under `base`'s shared budget and with `base`'s values of every key the two schemas share; the
    others keep `name`'s defaults (how task=pipeline derives its attacks from one attack config)."""
    own = {f.name for f in dataclasses.fields(ATTACKS[name].schema)}
    values = {f.name: getattr(base, f.name) for f in dataclasses.fields(base) if f.name in own and f.name != "name"}
    return attack_config(name, **values)


def craft(model: nn.Module, x: Tensor, y: Tensor, cfg: AttackConfig, num_classes: int, **kw) -> CraftResult:
    """Craft the perturbation named by `cfg.name` on the crafting set (x in [0,1], y int64); keywords: generator,
    progress, init (warm start), max_steps (a fixed number of minibatch steps), val (validation images and labels
    for the stopping rule)."""
    if cfg.name not in ATTACKS:
        raise KeyError(f"attack.name={cfg.name!r}: unknown attack; one of {', '.join(ATTACKS)}")
    return ATTACKS[cfg.name].craft(model, x, y, cfg, num_classes, **kw)
