"""A longer (or shorter) schedule continued from another run's training checkpoint, where the two agree.

Two runs whose settings differ only in `training.epochs` take the same steps for as long as their learning rates
agree: a step schedule decays at fractions of the run, so a run twice as long keeps the first decay's rate for
twice as many epochs. `branch_from=<checkpoint.pt>` starts a run from such a checkpoint instead of from epoch 1,
where (a) the checkpoint's weights key equals this run's but for `training.epochs`, and (b) every step the
checkpoint has taken had the learning rate this run's schedule gives that step. The optimiser then takes this
run's rate for the next step (the checkpoint's own schedule may decay right there), and the inherited history rows
say this run's rates, so the run ends, bit for bit on CPU, as one trained from epoch 1 (`tests/test_branch.py`).
Its record names the checkpoint (path, sha256, epoch, its run's length and training seconds, the code that wrote
it, and the checkpoint that run branched from, if any): `train_branched_from`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

from ..errors import UserError
from ..io import safe_torch_load
from ..provenance import file_sha256
from ..record import TRAINING_STATE, differing_keys
from ..schema import TrainingConfig
from .schedule import lr_factor

log = logging.getLogger(__name__)


def branch_state(path: str, key: dict[str, Any], cfg: TrainingConfig, steps: int) -> dict[str, Any]:
    """The training state in `path`, checked and set for this run's schedule (`steps` iterations per epoch), with
    its `branch` provenance; refused in one line naming `branch_from` when it cannot be continued."""
    file = Path(path).expanduser().resolve()
    blob = safe_torch_load(file, "branch_from")
    epochs = ((blob.get("config") or {}).get("training") or {}).get("epochs") if isinstance(blob, dict) else None
    if not isinstance(epochs, int) or any(k not in blob for k in TRAINING_STATE):
        raise UserError(f"branch_from={path}: not a training checkpoint of this tool that records its settings; give "
                        "the checkpoint.pt of a training run, or drop branch_from to train from epoch 1")
    _check_same_but_epochs(path, blob["config"], key, epochs)
    epoch = int(blob["epoch"])
    if epoch > cfg.epochs:
        raise UserError(f"branch_from={path}: it holds epoch {epoch}, past this run's training.epochs={cfg.epochs}; "
                        f"branch from a checkpoint of epoch {cfg.epochs} or earlier")
    _check_rates(path, cfg, steps, epochs, epoch)
    _reschedule(blob, cfg, steps)
    earlier = {"branched_from": blob["branch"]} if blob.get("branch") else {}  # the source was a branch itself
    blob["branch"] = {"path": str(file), "sha256": file_sha256(file), "epoch": epoch, "epochs": epochs,
                      "train_seconds": float(blob["train_seconds"]), "code": blob.get("code"), **earlier}
    log.info("branching from epoch %d of a %d-epoch run (%s): their learning rates agree up to there", epoch,
             epochs, file)
    return blob


def _check_rates(path: str, cfg: TrainingConfig, steps: int, source_epochs: int, epoch: int) -> None:
    parted = first_other_rate(cfg, steps, source_epochs, epoch)
    if parted is None:
        return
    what = (f"branch from a checkpoint of epoch {parted // steps} or earlier" if parted >= steps else
            "no checkpoint of theirs is shared: drop branch_from and train from epoch 1")
    raise UserError(f"branch_from={path}: its schedule ({source_epochs} epochs) and this run's (training.epochs="
                    f"{cfg.epochs}) give other learning rates from epoch {parted // steps + 1} (step {parted}), before "
                    f"its epoch {epoch} ended; {what}")

def first_other_rate(cfg: TrainingConfig, steps: int, source_epochs: int, epoch: int) -> Optional[int]:
    """The first of the `epoch` epochs' steps whose learning rate differs between a run of `source_epochs` and
    this run's cfg.epochs, else None."""
    source, total = steps * source_epochs, steps * cfg.epochs
    return next((s for s in range(steps * epoch) if lr_factor(cfg, s, source) != lr_factor(cfg, s, total)), None)


def _check_same_but_epochs(path: str, stored: dict[str, Any], key: dict[str, Any], source_epochs: int) -> None:
    mine = {**key, "training": {**key["training"], "epochs": source_epochs}}
    for name, old, new in differing_keys(stored, mine)[:1]:
        raise UserError(f"branch_from={path}: it was trained with {name}={old!r}, this run has {name}={new!r}; "
                        "a branch differs from its source only in training.epochs")


def _reschedule(blob: dict[str, Any], cfg: TrainingConfig, steps: int) -> None:
    """Set the optimiser's next rate and the history rows' rates to this run's schedule."""
    total = steps * cfg.epochs
    step = int(blob["scheduler"]["last_epoch"])
    rate = cfg.lr * lr_factor(cfg, step, total)
    for group in blob["optimizer"]["param_groups"]:
        group["lr"] = rate
    blob["scheduler"]["_last_lr"] = [rate for _ in blob["optimizer"]["param_groups"]]
    blob["history"] = [{**row, "lr": cfg.lr * lr_factor(cfg, steps * row["epoch"], total)} for row in blob["history"]]
