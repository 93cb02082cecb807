"""Per-epoch training checkpoints: everything needed to resume to the same final weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

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


def resume_label(resume: bool | str) -> str:
    """The resume mode as written on the command line: auto, true or false."""
    return str(resume).lower()


def start_afresh_hint(resume: bool | str) -> str:
    """What to do instead of resuming from a checkpoint that cannot be continued."""
    if resume == "auto":
        return "write to another hydra.run.dir / hydra.sweep.dir, or pass resume=false to train afresh over it"
    return "start a new run"


def load_checkpoint(run_dir: Path, resume: bool | str = True) -> Optional[dict[str, Any]]:
    """The run's checkpoint.pt (plain data only), or None when the run never finished an epoch."""
    path = run_dir / CHECKPOINT
    if not path.exists():
        return None
    blob = safe_torch_load(path, "resume")
    required = ("model", "optimizer", "scheduler", "adversary", "rng", "epoch", "history", "train_seconds")
    if not isinstance(blob, dict) or any(k not in blob for k in required):
        raise UserError(f"resume={resume_label(resume)}: {path} is not a training checkpoint of this tool; "
                        f"resume in the interrupted run's own directory, or {start_afresh_hint(resume)}")
    return blob


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in _flatten(sub, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): tree}


def check_same_config(stored: Optional[dict[str, Any]], current: dict[str, Any], path: Path,
                      resume: bool | str = True) -> None:
    """Refuse to resume under settings that differ from those the checkpoint was trained with."""
    if stored is None:  # a checkpoint from before configs were recorded
        return
    old, new = _flatten(stored), _flatten(current)
    for key in sorted(old.keys() | new.keys()):
        if old.get(key) != new.get(key):
            raise UserError(f"{key}={new.get(key)!r}: {path} was trained with {key}={old.get(key)!r}; resume="
                            f"{resume_label(resume)} continues it only under the same settings: keep them, or "
                            f"{start_afresh_hint(resume)}")
