"""A study's spec: a YAML file (conf/study/<name>.yaml, or any path) with command-line `key=value` overrides; a
spec may name another (`extends: <name or path>`) whose keys it inherits and overrides."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ..errors import UserError

STUDY_CONF = "study"  # the folder of conf/ that holds the studies


@dataclass
class StudySpec:
    name: str = "???"  # the study's name in its journal and its folder under `dir`
    dir: str = "outputs/studies"  # the study lives in <dir>/<name>/
    trials: int = 100  # the finished trials (completed or failed) the study should hold; a relaunch runs the rest
    seed: int = 0  # NSGA-II's seed (a relaunch offsets it by the trials already finished)
    population: int = 20  # NSGA-II's population size
    until_stable: bool = False  # stop before `trials` once the front meets the manifest's stopping rule
    base: list[str] = field(default_factory=list)  # overrides of every run: the setting, the budget, the model
    trial: list[str] = field(default_factory=list)  # overrides every trial adds (attack=cb_uap)
    reference: list[str] = field(default_factory=list)  # overrides of the reference run (attack=sgd_uap)
    space: dict[str, Any] = field(default_factory=dict)  # override key -> its range (space.py)


def spec_path(name_or_path: str) -> Path:
    """A spec file: a path as given, else conf/study/<name>.yaml."""
    from ..__main__ import CONF_DIR

    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise UserError(f"{path}: no such study spec")
        return path
    found = Path(CONF_DIR) / STUDY_CONF / f"{name_or_path}.yaml"
    if not found.is_file():
        known = sorted(p.stem for p in found.parent.glob("*.yaml"))
        raise UserError(f"study {name_or_path!r}: no such spec; choose one of {', '.join(known)} or give a .yaml path")
    return found


def _spec_yaml(path: Path, seen: tuple[Path, ...] = ()) -> Any:
    """The file's YAML over that of the spec it `extends` (a study on another setting keeps its search space); an
    extending spec names its own study, so that it never continues its parent's journal."""
    if path in seen:
        raise UserError(f"{path}: extends itself through {' -> '.join(str(p) for p in seen)}")
    text = OmegaConf.load(path)
    if not isinstance(text, DictConfig):
        raise UserError(f"{path}: a study spec is a mapping of keys (name, dir, trials, ...), not a list")
    parent = text.pop("extends", None)
    if parent is None:
        return text
    if "name" not in text:
        raise UserError(f"{path}: extends={parent}: give the study its own name (else it would continue {parent}'s)")
    relative = path.parent / str(parent)
    try:
        base = spec_path(str(relative) if relative.suffix in (".yaml", ".yml") else str(parent))
    except UserError as err:
        raise UserError(f"{path}: extends={parent}: {err}") from None
    return OmegaConf.merge(_spec_yaml(base, (*seen, path)), text)


def load_spec(name_or_path: str, overrides: list[str] = ()) -> StudySpec:
    """The spec with `key=value` overrides applied; one line naming a bad key or value."""
    path = spec_path(name_or_path)
    try:
        merged = OmegaConf.merge(OmegaConf.structured(StudySpec), _spec_yaml(path),
                                 OmegaConf.from_dotlist(list(overrides)))
        spec = OmegaConf.to_object(merged)
    except OmegaConfBaseException as ex:
        key = getattr(ex, "full_key", None) or ""
        raise UserError(f"{path}: {key + ': ' if key else ''}{str(ex).splitlines()[0]}") from None
    _check(spec, path)
    return spec


def _check(spec: StudySpec, path: Path) -> None:
    if not spec.name or "/" in spec.name:
        raise UserError(f"{path}: name={spec.name!r}: give the study a name (no '/')")
    if spec.trials < 1:
        raise UserError(f"{path}: trials={spec.trials}: must be at least 1")
    if spec.population < 2:
        raise UserError(f"{path}: population={spec.population}: NSGA-II needs at least 2")
    if not spec.space:
        raise UserError(f"{path}: space: empty; give at least one attack.* key and its range")
