"""Experiment tracking: the local record is always written; W&B is added when `logger=wandb`.

    tracker = make_tracker(cfg.logger, run_dir, config=plain_cfg, run_name=default_run_name(),
                           group=default_group())
    try:
        tracker.log({"loss": 0.3}, step=epoch)
        ...
        tracker.set_summary(metrics)
    except BaseException:
        tracker.finish("failed")
        raise
    else:
        tracker.finish("completed")
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

from ..errors import UserError
from .base import MultiTracker, NullTracker, PathLike, Tracker, field_of, plain
from .local import LocalTracker

__all__ = [
    "Tracker",
    "LocalTracker",
    "MultiTracker",
    "NullTracker",
    "make_tracker",
    "default_group",
    "default_run_name",
    "plain",
]

_TIMESTAMP = re.compile(r"^[0-9_:.-]+$")


def _hydra_cfg(hydra_cfg: Any) -> Any:
    """The given Hydra config, or the current job's; None outside a Hydra app."""
    if hydra_cfg is not None:
        return hydra_cfg
    try:
        from hydra.core.hydra_config import HydraConfig

        return HydraConfig.get()
    except (ImportError, ValueError):
        return None


def _is_multirun(hydra_cfg: Any) -> bool:
    mode = field_of(hydra_cfg, "mode")
    return mode is not None and getattr(mode, "name", str(mode)).upper().endswith("MULTIRUN")


def default_group(hydra_cfg: Any = None) -> str | None:
    """W&B group for this job: the sweep directory's name in a multirun, None in a single run.

    `hydra_cfg` is `HydraConfig.get()` (the default) or any object with `mode` and `sweep.dir`.
    A name that is only a time stamp (Hydra's default `.../2024-05-01/12-30-00`) is prefixed
    with its parent's name so that sweeps on different days do not share a group.
    """
    hydra_cfg = _hydra_cfg(hydra_cfg)
    if hydra_cfg is None or not _is_multirun(hydra_cfg):
        return None
    sweep_dir = field_of(field_of(hydra_cfg, "sweep"), "dir")
    if not sweep_dir:
        return None
    path = Path(str(sweep_dir))
    name = path.name
    if _TIMESTAMP.match(name) and path.parent.name:
        name = f"{path.parent.name}_{name}"
    return name


def default_run_name(hydra_cfg: Any = None, fallback: str | None = None) -> str | None:
    """W&B run name: the job's override string (`attack=cb_uap,seed=1`), prefixed by the job
    number in a multirun; `fallback` (else the job name) when there are no overrides."""
    hydra_cfg = _hydra_cfg(hydra_cfg)
    if hydra_cfg is None:
        return fallback
    job = field_of(hydra_cfg, "job")
    name = field_of(job, "override_dirname") or fallback or field_of(job, "name")
    if _is_multirun(hydra_cfg) and field_of(job, "num") is not None:
        name = f"{field_of(job, 'num')}:{name}" if name else str(field_of(job, "num"))
    return str(name)[:128] if name else None


def make_tracker(
    logger_cfg: Any,
    run_dir: PathLike,
    config: Mapping[str, Any] | None = None,
    run_name: str | None = None,
    group: str | None = None,
    rank: int = 0,
) -> Tracker:
    """A `MultiTracker` over the local record (always) and W&B (when `logger_cfg.name == "wandb"`).

    `logger_cfg` is a `LoggerConfig`, a DictConfig or a dict; `config` the resolved run config
    (converted to plain data here); `group` the W&B group used when `logger.group` is unset
    (pass `default_group()` so each multirun's jobs share one). Ranks other than 0 get a
    `NullTracker`: only rank 0 writes. The caller must call `finish(status)` in a `finally`.
    """
    if rank != 0:
        return NullTracker()
    name = field_of(logger_cfg, "name", "local") or "local"
    if name not in ("local", "wandb"):
        raise UserError(f"logger.name={name!r}: must be one of local, wandb")
    trackers: list[Tracker] = [LocalTracker(run_dir)]
    if name == "wandb":
        from .wandb_tracker import WandbTracker

        trackers.append(WandbTracker(logger_cfg, run_dir, config=config, run_name=run_name, group_default=group))
    return MultiTracker(trackers)
