"""What every task needs, in one object: the validated config, the run record, the device, the tracker and the
provenance the record will hold."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .data import DataBundle, load_data
from .models.sources import SOURCES, ModelSource
from .record import RunRecord
from .runinfo import git_commit
from .schema import Config


@dataclass
class Context:
    """What every task needs: the validated config, where to write, the device and the tracker."""

    cfg: Config
    record: RunRecord
    device: torch.device
    tracker: Any
    provenance: dict[str, Any] = field(default_factory=dict)  # what decided the results (run_summary.json)
    bad_files: Any = None  # data.BadFiles of image folders: what could not be read, for the record

    @property
    def run_dir(self) -> Path:
        return self.record.run_dir

    @property
    def source(self) -> ModelSource | None:
        """The model option's source when the network comes from elsewhere (models/sources.py), else None."""
        return SOURCES.get(self.cfg.model.name)

    def data(self) -> DataBundle:
        declared = None if self.source is None else self.source.preprocessing(self.cfg.model)
        data = load_data(self.cfg.dataset, self.cfg.cache_dir, self.cfg.seed, self.device, declared)
        streamed = [name for name, split in (("train", data.train), ("test", data.test)) if split.streamed]
        self.provenance.update(code=git_commit(), data={"fingerprint": data.fingerprint, "streamed": streamed})
        self.bad_files = data.bad_files  # image folders only
        return data

    def provenance_record(self) -> dict[str, Any]:
        """What decided the results, with the image files that could not be read (refused, or skipped and counted)."""
        if self.bad_files is not None:
            self.provenance["data"]["bad_files"] = self.bad_files.record()
        return self.provenance


def scalars(metrics: dict[str, Any]) -> dict[str, Any]:
    """The metrics that are single values (what a tracker's summary and artifact metadata take)."""
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float, bool, str)) or v is None}
