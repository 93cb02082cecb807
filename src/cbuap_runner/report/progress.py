"""Where a sweep stands (`--kind progress`): per run, its status, the epochs and crafting passes it has done, and the
time its training has left.

For a sweep that runs for hours or days, resumed across sessions or preemptions: it reads each run's record (status,
config, wall time) and its metrics.jsonl (one row per finished epoch with its seconds, one per crafting pass). A
training's time left is its epochs left times the median seconds of its last RECENT epochs, so it is the pace of
the machine as it was loaded while they ran, not a benchmark. A run whose record says `running` has started and not
finished: it may be running now, or stopped and waiting for the same command to continue it. Crafting gets no
estimate: its passes differ too much in cost (a relaunch, DeepFool's inner iterations).
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..io import write_text
from .formats import fmt_duration
from .records import epoch_rows, flatten, log_rows, metric

RECENT = 5  # the epochs whose median seconds set a training's pace
TABLE = "progress.md"


@dataclass(frozen=True)
class RunProgress:
    """One run's state."""

    run: str  # its directory under the sweep
    task: str
    status: str
    epochs_done: int | None  # None: the run trains nothing
    epochs: int | None
    epoch_seconds: float | None  # the median of the last RECENT epochs
    passes_done: int
    passes: int | None
    wall_seconds: float | None

    @property
    def training_left(self) -> float | None:
        """Seconds of training left at the recent pace (0 when it has trained every epoch)."""
        if self.epochs_done is None or self.epochs is None or self.epoch_seconds is None:
            return None
        return max(self.epochs - self.epochs_done, 0) * self.epoch_seconds


def run_progress(record: Mapping[str, Any]) -> RunProgress:
    """The state of the run behind `record` (its metrics.jsonl read beside it)."""
    config = flatten(record.get("config") or {})
    epochs = epoch_rows(record)
    seconds = [float(r["epoch_seconds"]) for r in epochs[-RECENT:] if isinstance(r.get("epoch_seconds"), (int, float))]
    passes = config.get("attack.passes")
    return RunProgress(
        run=str(record.get("_dir")), task=str(record.get("task") or config.get("task") or "?"),
        status=str(record.get("status") or "unknown"),
        epochs_done=int(epochs[-1]["epoch"]) if epochs else None,
        epochs=config.get("training.epochs") if epochs else None,
        epoch_seconds=statistics.median(seconds) if seconds else None,
        passes_done=len(log_rows(record, "pass")), passes=passes if isinstance(passes, int) else None,
        wall_seconds=metric(record, "wall_seconds"))


def _duration(seconds: float | None) -> str:
    return "–" if seconds is None else fmt_duration(seconds)


def _line(p: RunProgress) -> str:
    training = "–" if p.epochs_done is None else f"{p.epochs_done}/{p.epochs}"
    pace = "–" if p.epoch_seconds is None else f"{p.epoch_seconds:.0f} s"
    crafting = "–" if not p.passes_done else f"{p.passes_done}" + (f" ({p.passes} per crafting)" if p.passes else "")
    wall = _duration(p.wall_seconds) if p.status == "completed" else "–"
    return f"| {p.run} | {p.task} | {p.status} | {training} | {pace} | {_duration(p.training_left)} | {crafting} | {wall} |"


def progress_text(runs: Sequence[RunProgress]) -> str:
    """The table, one row per run, and what is left in all."""
    lines = ["| run | task | status | epochs | s/epoch (recent) | training left | crafting passes | wall time |",
             "|---|---|---|---|---|---|---|---|", *(_line(p) for p in runs), ""]
    done = sum(p.status == "completed" for p in runs)
    left = [p.training_left for p in runs if p.training_left]
    lines.append(f"{done} of {len(runs)} runs completed.")
    if left:
        lines.append(f"Training left: {_duration(sum(left))} summed over {len(left)} run{'s' * (len(left) != 1)}, "
                     f"{_duration(max(left))} for the longest, at each run's pace over its last {RECENT} epochs "
                     "(not a benchmark: the pace of the machine as it was loaded then).")
    return "\n".join(lines) + "\n"


def write_progress(records: Sequence[Mapping[str, Any]], root: Path, out: Path) -> list[Path]:
    """`out/progress.md` for the records read under `root`; returns its path."""
    runs = [run_progress({**r, "_path": str(root / r["_dir"])}) for r in records]
    path = out / TABLE
    write_text(path, progress_text(sorted(runs, key=lambda p: p.run)))
    return [path]
