"""The search space: each entry an override key and its range; a trial's parameters as override strings.

An entry is `{type: float, low, high, log}`, `{type: int, low, high}` or `{type: choice, choices: [...]}`, plus
optionally `off_value: <value>` (a switch: a second, boolean parameter `<key>:on`; when it is off the key takes <value>,
e.g. 0.0 for a weight or null for an optional setting) and `after: <key>` (the value is added to that earlier key's,
e.g. balance.stop = balance.start + k). Every parameter is drawn in every trial, so the space is the same for all
trials and NSGA-II's crossover acts on all of them (a parameter left unused by a switch is simply not applied).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import UserError

TYPES = ("float", "int", "choice")
_NO_OFF = object()


@dataclass(frozen=True)
class Param:
    key: str
    type: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple = ()
    off: Any = _NO_OFF
    after: str | None = None


def parse_space(raw: Mapping[str, Any]) -> list[Param]:
    """The entries in their order; one line naming a bad one."""
    params: list[Param] = []
    for key, entry in raw.items():
        where = f"space.{key}"
        if not isinstance(entry, Mapping) or entry.get("type") not in TYPES:
            raise UserError(f"{where}: give a mapping with type one of {', '.join(TYPES)}")
        unknown = set(entry) - {"type", "low", "high", "log", "choices", "off_value", "after"}
        if unknown:
            raise UserError(f"{where}: unknown field(s) {', '.join(sorted(map(str, unknown)))}")
        param = Param(key, entry["type"], entry.get("low"), entry.get("high"), bool(entry.get("log", False)),
                      tuple(entry.get("choices") or ()), entry.get("off_value", _NO_OFF), entry.get("after"))
        _check(param, where, {p.key for p in params})
        params.append(param)
    return params


def _check(p: Param, where: str, earlier: set[str]) -> None:
    if p.type == "choice" and not p.choices:
        raise UserError(f"{where}: a choice needs choices: [...]")
    if p.type != "choice" and not (isinstance(p.low, (int, float)) and isinstance(p.high, (int, float))
                                   and p.low < p.high):
        raise UserError(f"{where}: low={p.low!r}, high={p.high!r}: give numbers with low < high")
    if p.log and (p.type == "choice" or p.low <= 0):
        raise UserError(f"{where}: log scale needs a numeric range above 0")
    if p.after is not None and (p.after not in earlier or p.type == "choice"):
        raise UserError(f"{where}: after={p.after!r}: must name an earlier numeric entry")


def _draw(trial: Any, p: Param) -> Any:
    if p.type == "float":
        return trial.suggest_float(p.key, p.low, p.high, log=p.log)
    if p.type == "int":
        return trial.suggest_int(p.key, int(p.low), int(p.high), log=p.log)
    return trial.suggest_categorical(p.key, list(p.choices))


def suggest(trial: Any, params: list[Param]) -> dict[str, Any]:
    """The trial's value of every key (an Optuna trial's suggest_* calls)."""
    values: dict[str, Any] = {}
    for p in params:
        value = _draw(trial, p)
        if p.after is not None:
            value = (values[p.after] or 0) + value
        if p.off is not _NO_OFF and not trial.suggest_categorical(f"{p.key}:on", [True, False]):
            value = p.off
        values[p.key] = value
    return values


def override_text(value: Any) -> str:
    """A value as Hydra's override grammar reads it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


def as_overrides(values: Mapping[str, Any]) -> list[str]:
    return [f"{key}={override_text(value)}" for key, value in values.items()]
