"""Weights & Biases back end; wandb is imported only when `logger=wandb` asks for it."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Mapping

from ..errors import UserError
from .base import PathLike, Tracker, check_status, field_of, plain
from .local import safe_name

log = logging.getLogger(__name__)

MODES = ("online", "offline", "disabled")


def _import_wandb():
    try:
        import wandb
    except ImportError as err:
        raise UserError(
            f"logger=wandb needs the wandb package ({err}): pip install wandb, or use logger=local"
        ) from err
    return wandb


def _cell(value: Any) -> Any:
    """A table cell W&B accepts: scalars stay, lists and dicts become JSON text."""
    value = plain(value)
    return json.dumps(value) if isinstance(value, (list, dict)) else value


class WandbTracker(Tracker):
    """One W&B run per job, started with mode and dir passed explicitly (wandb reads its
    environment once per process, so a later multirun job would otherwise inherit the first's).

    `online` without credentials or network falls back to `offline` with a warning: a run never
    needs an API key. `disabled` does not even import wandb: it writes nothing and starts nothing.
    """

    def __init__(
        self,
        cfg: Any,
        run_dir: PathLike,
        config: Mapping[str, Any] | None = None,
        run_name: str | None = None,
        group_default: str | None = None,
    ) -> None:
        self.mode = str(field_of(cfg, "mode", "offline"))
        if self.mode not in MODES:
            raise UserError(f"logger.mode={self.mode!r}: must be one of {', '.join(MODES)}")
        self.dir = Path(field_of(cfg, "dir") or run_dir)
        config_plain = plain(config or {})
        self.init_kwargs = dict(
            project=field_of(cfg, "project") or "cbuap-runner",
            entity=field_of(cfg, "entity"),
            group=field_of(cfg, "group") or group_default,
            job_type=field_of(cfg, "job_type") or (config_plain.get("task") if isinstance(config_plain, dict) else None),
            tags=[str(t) for t in (field_of(cfg, "tags") or [])],
            config=config_plain,
            name=run_name,
            reinit="finish_previous",  # a job never logs into the previous job's run
        )
        self._last_step = -1
        self._finished = False
        self.wandb = None if self.mode == "disabled" else _import_wandb()
        self.run = None if self.mode == "disabled" else self._init(self.mode)

    def _init(self, mode: str):
        self.dir.mkdir(parents=True, exist_ok=True)
        try:
            return self.wandb.init(mode=mode, dir=str(self.dir), **self.init_kwargs)
        except Exception as err:  # noqa: BLE001 - wandb raises several types for auth and network
            if mode != "online":
                raise
            log.warning("W&B online init failed (%s); logging offline to %s instead (sync later with `wandb sync`)",
                        str(err).splitlines()[0] if str(err) else type(err).__name__, self.dir)
            self.mode = "offline"
            return self.wandb.init(mode="offline", dir=str(self.dir), **self.init_kwargs)

    @property
    def active(self) -> bool:
        """True while the run is open and records something (not disabled)."""
        return not self._finished and self.mode != "disabled"

    def log(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        if not self.active:
            return
        data = plain(dict(metrics))
        if step is not None and int(step) >= self._last_step:
            self._last_step = int(step)
            self.run.log(data, step=int(step))
        else:  # W&B steps must not go back: keep the caller's step as a metric instead
            if step is not None:
                data["step"] = int(step)
            self.run.log(data)

    def log_images(self, images: Mapping[str, PathLike]) -> None:
        if not self.active:
            return
        found = {k: self.wandb.Image(str(p)) for k, p in images.items() if Path(p).is_file()}
        if found:
            self.run.log(found)

    def log_artifact(self, path: PathLike, name: str, type: str, metadata: Mapping[str, Any] | None = None) -> None:
        if not self.active:
            return
        if not Path(path).is_file():
            log.warning("artifact %s (%s) does not exist; not logged to W&B", name, path)
            return
        artifact = self.wandb.Artifact(name=safe_name(name), type=safe_name(type), metadata=plain(dict(metadata or {})))
        artifact.add_file(str(path))
        self.run.log_artifact(artifact)

    def log_table(self, name: str, rows: list[Mapping[str, Any]]) -> None:
        if not self.active:
            return
        columns: list[str] = []
        for row in rows:
            columns += [str(k) for k in row if str(k) not in columns]
        data = [[_cell(row.get(c)) for c in columns] for row in ({str(k): v for k, v in r.items()} for r in rows)]
        self.run.log({name: self.wandb.Table(columns=columns, data=data, allow_mixed_types=True)})

    def set_summary(self, metrics: Mapping[str, Any]) -> None:
        if not self.active:
            return
        self.run.summary.update(plain(dict(metrics)))

    def finish(self, status: str = "completed") -> None:
        check_status(status)
        if self._finished:
            return
        self._finished = True
        if self.run is not None:
            self.run.finish(exit_code=0 if status == "completed" else 1)
