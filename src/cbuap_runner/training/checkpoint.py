"""Per-epoch training checkpoints: everything needed to resume to the same final weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..errors import UserError
from ..io import safe_torch_load, torch_save

CHECKPOINT = "checkpoint.pt"


def rng_states() -> dict[str, Any]:
    states = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_checkpoint(run_dir: Path, **state: Any) -> None:
    """Write checkpoint.pt atomically (model, optimiser, scheduler, adversary, epoch, RNG, history)."""
    torch_save({**state, "rng": rng_states()}, run_dir / CHECKPOINT)


def load_checkpoint(run_dir: Path) -> dict[str, Any]:
    path = run_dir / CHECKPOINT
    if not path.is_file():
        raise UserError(f"resume=true: no {CHECKPOINT} in {run_dir}; pass hydra.run.dir=<the interrupted run's directory>")
    blob = safe_torch_load(path, "resume")
    if not isinstance(blob, dict) or "model" not in blob or "epoch" not in blob:
        raise UserError(f"resume=true: {path} is not a training checkpoint")
    return blob
