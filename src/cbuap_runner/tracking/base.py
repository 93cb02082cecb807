"""The tracker interface every back end implements, and the fan-out that combines them."""

from __future__ import annotations

import logging
import math
import os
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any

log = logging.getLogger(__name__)

STATUSES = ("completed", "failed")
PathLike = str | os.PathLike


def check_status(status: str) -> str:
    """Return `status` if it is a known final status, else raise ValueError."""
    if status not in STATUSES:
        raise ValueError(f"tracker status must be one of {', '.join(STATUSES)}, got {status!r}")
    return status


def field_of(cfg: Any, key: str, default: Any = None) -> Any:
    """`cfg.key` of a dataclass or DictConfig, `cfg[key]` of a dict; `default` where absent or cfg is None."""
    if cfg is None:
        return default
    if isinstance(cfg, Mapping):
        return cfg.get(key, default)
    return getattr(cfg, key, default)


def plain(value: Any) -> Any:
    """`value` as JSON-ready Python data: tensors/arrays to numbers or lists, OmegaConf to dicts."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Mapping) or type(value).__name__ in ("DictConfig", "ListConfig"):
        if type(value).__name__ in ("DictConfig", "ListConfig"):
            from omegaconf import OmegaConf

            return plain(OmegaConf.to_container(value, resolve=True, enum_to_str=True))
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "tolist"):  # torch.Tensor, numpy arrays and numpy scalars
        return plain(value.tolist())
    return str(value)


class Tracker(ABC):
    """Where a run reports its metrics, images, artifacts and tables.

    Use as a context manager, or call `finish` in a `finally`: the status decides whether a
    W&B run is marked finished or failed.
    """

    @abstractmethod
    def log(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Record one step's (or epoch's) metrics."""

    @abstractmethod
    def log_images(self, images: Mapping[str, PathLike]) -> None:
        """Record image files (already written into the run directory) under the given keys."""

    @abstractmethod
    def log_artifact(self, path: PathLike, name: str, type: str, metadata: Mapping[str, Any] | None = None) -> None:
        """Record a file (e.g. `perturbation.pt`, `model.pt`) as a versioned artifact."""

    @abstractmethod
    def log_table(self, name: str, rows: list[Mapping[str, Any]]) -> None:
        """Record a table given as a list of row dicts (columns = union of their keys)."""

    @abstractmethod
    def set_summary(self, metrics: Mapping[str, Any]) -> None:
        """Record the run's final metrics."""

    @abstractmethod
    def finish(self, status: str = "completed") -> None:
        """Close the run as "completed" or "failed"; calling it twice is harmless."""

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.finish("failed" if exc_type is not None else "completed")


class NullTracker(Tracker):
    """Records nothing (e.g. on non-zero ranks of a distributed run)."""

    def log(self, metrics, step=None) -> None:
        pass

    def log_images(self, images) -> None:
        pass

    def log_artifact(self, path, name, type, metadata=None) -> None:
        pass

    def log_table(self, name, rows) -> None:
        pass

    def set_summary(self, metrics) -> None:
        pass

    def finish(self, status: str = "completed") -> None:
        check_status(status)


class MultiTracker(Tracker):
    """Forwards every call to several trackers, the first of which is the local record."""

    def __init__(self, trackers: list[Tracker]) -> None:
        self.trackers = list(trackers)

    def __getitem__(self, index: int) -> Tracker:
        return self.trackers[index]

    def log(self, metrics, step=None) -> None:
        for t in self.trackers:
            t.log(metrics, step)

    def log_images(self, images) -> None:
        for t in self.trackers:
            t.log_images(images)

    def log_artifact(self, path, name, type, metadata=None) -> None:
        for t in self.trackers:
            t.log_artifact(path, name, type, metadata)

    def log_table(self, name, rows) -> None:
        for t in self.trackers:
            t.log_table(name, rows)

    def set_summary(self, metrics) -> None:
        for t in self.trackers:
            t.set_summary(metrics)

    def finish(self, status: str = "completed") -> None:
        """Finish every tracker even if one fails; re-raise the first error only for a completed run
        (for a failed run the caller's own exception is the one that matters)."""
        check_status(status)
        first: BaseException | None = None
        for t in self.trackers:
            try:
                t.finish(status)
            except Exception as err:  # noqa: BLE001 - every back end must get its finish call
                log.warning("%s.finish(%r) failed: %s", type(t).__name__, status, err)
                first = first or err
        if first is not None and status == "completed":
            raise first
