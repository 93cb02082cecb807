"""The always-on local record: `metrics.jsonl` and `tables/<name>.json` in the run directory."""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path
from typing import Any, Mapping

from ..io import append_jsonl, write_json
from ..record import METRICS
from .base import PathLike, Tracker, check_status, plain

log = logging.getLogger(__name__)

_SAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]+")


def safe_name(name: str) -> str:
    """`name` reduced to characters safe in a file or artifact name."""
    cleaned = _SAFE_NAME.sub("_", str(name)).strip("._")
    return cleaned or "unnamed"


class LocalTracker(Tracker):
    """Appends one JSON line per `log` call to `<run_dir>/metrics.jsonl`; tables go to
    `<run_dir>/tables/<name>.json`. Images and artifacts are files the task already wrote into the
    run directory: their names are kept in `images` / `artifacts` for the task's summary."""

    def __init__(self, run_dir: PathLike) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.run_dir / METRICS
        self.images: dict[str, str] = {}
        self.artifacts: dict[str, dict[str, Any]] = {}
        self.tables: dict[str, str] = {}
        self.summary: dict[str, Any] = {}
        self.status: str | None = None
        self._next_step = 0

    def _relative(self, path: PathLike) -> str:
        """`path` relative to the run directory where it lies inside it, else absolute."""
        p = Path(path).resolve()
        try:
            return p.relative_to(self.run_dir.resolve()).as_posix()
        except ValueError:
            return os.fspath(p)

    def log(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        if step is None:
            step = self._next_step
        self._next_step = max(self._next_step, int(step) + 1)
        record = {"step": int(step), "time": round(time.time(), 3)}
        record.update(plain(dict(metrics)))
        append_jsonl(self.metrics_path, record)

    def log_images(self, images: Mapping[str, PathLike]) -> None:
        for key, path in images.items():
            if not Path(path).is_file():
                log.warning("image %s (%s) does not exist; not recorded", key, path)
                continue
            self.images[key] = self._relative(path)

    def log_artifact(self, path: PathLike, name: str, type: str, metadata: Mapping[str, Any] | None = None) -> None:
        if not Path(path).is_file():
            log.warning("artifact %s (%s) does not exist; not recorded", name, path)
            return
        self.artifacts[name] = {"path": self._relative(path), "type": type, "metadata": plain(dict(metadata or {}))}

    def log_table(self, name: str, rows: list[Mapping[str, Any]]) -> None:
        target = self.run_dir / "tables" / f"{safe_name(name)}.json"
        write_json(target, [plain(dict(r)) for r in rows])
        self.tables[name] = self._relative(target)

    def set_summary(self, metrics: Mapping[str, Any]) -> None:
        self.summary.update(plain(dict(metrics)))

    def finish(self, status: str = "completed") -> None:
        self.status = check_status(status)

    def files(self) -> dict[str, Any]:
        """What this run recorded besides metrics: images, artifacts and tables by name."""
        return {"images": dict(self.images), "artifacts": dict(self.artifacts), "tables": dict(self.tables)}
