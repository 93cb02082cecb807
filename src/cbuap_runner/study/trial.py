"""One trial: one ordinary run of the runner in a process of its own, and the objectives its record holds."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from ..report.pareto import OBJECTIVES  # what a study maximises, as the report of its front reads it
from ..report.records import SUMMARY


@dataclass(frozen=True)
class Outcome:
    values: tuple[float, ...] | None  # the objectives; None when the run failed or one is not a finite number
    error: str | None  # why there are no values


def run_command(overrides: list[str], run_dir: Path) -> list[str]:
    """`python -m cbuap_runner OVERRIDES hydra.run.dir=RUN_DIR`: the same command a user types."""
    return [sys.executable, "-m", "cbuap_runner", *overrides, f"hydra.run.dir={run_dir}"]


def run(overrides: list[str], run_dir: Path) -> Outcome:
    """Run the command and read its record (the process's last stderr line where it left none)."""
    env = {**os.environ}
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.run(run_command(overrides, run_dir), capture_output=True, text=True, env=env, check=False)
    outcome = read_outcome(run_dir)
    if outcome.values is None and proc.returncode != 0 and not (run_dir / SUMMARY).is_file():
        lines = proc.stderr.strip().splitlines()
        return Outcome(None, lines[-1] if lines else f"exit status {proc.returncode}")
    return outcome


def read_outcome(run_dir: Path) -> Outcome:
    """The objectives of a completed run's record, else why there are none."""
    try:
        record = json.loads((run_dir / SUMMARY).read_text())
    except (OSError, ValueError) as err:
        return Outcome(None, f"{run_dir / SUMMARY}: {err}")
    if record.get("status") != "completed":
        return Outcome(None, str(record.get("error") or f"status {record.get('status')}"))
    metrics = record.get("metrics") or {}
    values = tuple(metrics.get(name) for name in OBJECTIVES)
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
        return Outcome(None, f"no finite {' and '.join(OBJECTIVES)} in the record")
    return Outcome(tuple(float(v) for v in values), None)
