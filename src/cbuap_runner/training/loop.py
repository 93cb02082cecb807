"""One training loop for every defence; the defence is the pluggable `Adversary`."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

from .. import dist
from ..data import DataBundle, batches, num_batches
from ..errors import UserError
from ..metrics import evaluate_clean
from ..progress import progress_bar
from ..record import CHECKPOINT, RunRecord, set_rng_states
from ..schema import DatasetConfig, TrainingConfig
from .adversary import Adversary
from .branch import branch_state
from .schedule import make_optimizer

log = logging.getLogger(__name__)

class NonFiniteError(UserError):
    """The loss or the adversary's state became NaN or infinite."""


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """Shuffling and augmentation randomness of one epoch, independent of what ran before (exact resume)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def _autocast(device: torch.device, enabled: bool):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled and device.type == "cuda")


@dataclass(frozen=True)
class TrainingRun:
    """Where a training run keeps its record and how it goes besides its settings: the run's record (checkpoint.pt,
    metrics.jsonl), the seed, the device, where each epoch's row goes, the weights key a checkpoint is continued
    under (provenance.weights_key: the settings and the data fingerprint), the evaluation batch size and the
    checkpoint of another run's schedule to branch from (training/branch.py)."""

    record: RunRecord
    seed: int
    device: torch.device
    log_metrics: Callable[[dict], None]
    key: dict[str, Any]
    eval_batch_size: int = 500
    branch_from: Optional[str] = None  # another run's checkpoint.pt to start from (branch.py) when there is no own


def train_one_epoch(model: nn.Module, adversary: Adversary, data: DataBundle, dataset: DatasetConfig,
                    cfg: TrainingConfig, optim: tuple[Any, Any], epoch: int, run: TrainingRun) -> dict[str, float]:
    """One pass over the training split with `optim` (optimiser, scheduler); returns the mean loss and train
    accuracy (one host sync). Under torchrun `model` is the DDP wrapper: each rank trains on its share of every
    global batch."""
    opt, sched = optim
    model.train()
    g = epoch_generator(run.seed, epoch)
    adversary.on_epoch_start(unwrap(model), epoch, data.train, g)
    model.train()
    steps = num_batches(len(data.train), cfg.batch_size, drop_last=True)
    loss_sum = torch.zeros((), device=run.device)
    correct = torch.zeros((), device=run.device, dtype=torch.long)
    seen = 0
    it = batches(data.train, cfg.batch_size, shuffle=True, generator=g, crop_padding=dataset.crop_padding,
                 hflip=dataset.hflip, drop_last=True, rank=dist.rank(), world=dist.world_size())
    for i, (x, y) in enumerate(progress_bar(it, desc=f"epoch {epoch + 1}/{cfg.epochs}", total=steps)):
        opt.zero_grad(set_to_none=True)
        with _autocast(run.device, cfg.amp):
            loss, logits = adversary.loss(model, x, y, epoch * steps + i)
        loss.backward()
        adversary.after_backward()
        opt.step()
        sched.step()
        loss_sum += loss.detach().float() * y.shape[0]
        correct += (logits.detach().argmax(1) == y).sum()
        seen += y.shape[0]
    totals = dist.all_reduce_mean_(torch.stack([loss_sum, correct.float(), torch.tensor(float(seen), device=run.device)]))
    loss_total, correct_total, seen_total = totals.tolist()
    return {"train_loss": loss_total / max(seen_total, 1), "train_acc": correct_total / max(seen_total, 1)}


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside a DistributedDataParallel wrapper (inner attacks run on it, not through DDP)."""
    return getattr(model, "module", model)


def distribute(model: nn.Module, device: torch.device) -> nn.Module:
    """Wrap in DistributedDataParallel under torchrun; the model itself otherwise."""
    if dist.world_size() == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def fit(model: nn.Module, adversary: Adversary, data: DataBundle, dataset: DatasetConfig, cfg: TrainingConfig,
        run: TrainingRun) -> dict[str, Any]:
    """Train for cfg.epochs with a checkpoint after every epoch; returns the final metrics. A checkpoint in the run's
    record is continued (record.RunRecord.training_checkpoint: per its resume mode, under the same weights key);
    without one, run.branch_from's (branch.py), where it names one."""
    steps = num_batches(len(data.train), cfg.batch_size, drop_last=True)
    opt, sched = make_optimizer(model, cfg, steps * cfg.epochs)
    start_epoch, history, elapsed = 0, [], 0.0
    record = run.record
    ckpt, branched = record.training_checkpoint(run.key), False
    if ckpt is None and run.branch_from:
        ckpt, branched = branch_state(run.branch_from, run.key, cfg, steps), True
        record.branched(ckpt["branch"])
    if ckpt is not None:
        try:
            model.load_state_dict(ckpt["model"])
        except RuntimeError as ex:
            origin = (f"branch_from={run.branch_from}: it" if branched else
                      f"resume={record.label}: {record.run_dir / CHECKPOINT}")
            raise UserError(f"{origin} holds the weights of another model; use the same model=, or "
                            f"{record.afresh_hint}") from ex
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        adversary.load_state_dict(ckpt["adversary"])
        set_rng_states(ckpt["rng"])
        start_epoch, history, elapsed = int(ckpt["epoch"]), list(ckpt["history"]), float(ckpt["train_seconds"])
        if not branched:  # (branch_state logs a branch)
            log.info("resuming from epoch %d of %d in %s", start_epoch, cfg.epochs, record.run_dir)
    if dist.is_main():  # a fresh start (epoch 0) drops the rows of an earlier attempt in this directory too
        logged = record.rewind_metrics(start_epoch)
        for row in history:  # killed between the checkpoint and its metrics row
            if row["epoch"] not in logged:
                run.log_metrics(row)
    trained = distribute(model, run.device)
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        row = train_one_epoch(trained, adversary, data, dataset, cfg, (opt, sched), epoch, run)
        elapsed += time.perf_counter() - t0
        dist.broadcast_buffers_(model)  # each rank's BatchNorm statistics saw only its own shard
        _check_finite(row["train_loss"], adversary, cfg, epoch, record.run_dir)
        val = evaluate_clean(model, data.val.x, data.val.y, data.num_classes, run.eval_batch_size)
        row = {"epoch": epoch + 1, **row, "val_acc": val["clean_acc"], "lr": sched.get_last_lr()[0],
               "epoch_seconds": round(time.perf_counter() - t0, 3)}
        history.append(row)
        if dist.is_main():
            record.save_training(model=model.state_dict(), optimizer=opt.state_dict(), scheduler=sched.state_dict(),
                                 adversary=adversary.state_dict(), epoch=epoch + 1, history=history,
                                 train_seconds=elapsed, config=run.key)
            run.log_metrics(row)
        log.info("epoch %d/%d  loss %.4f  train acc %.4f  val acc %.4f  (%.1fs)", epoch + 1, cfg.epochs,
                 row["train_loss"], row["train_acc"], row["val_acc"], row["epoch_seconds"])
    test = data.test.shard(run.eval_batch_size, dist.rank(), dist.world_size())  # each rank its share, counts summed
    final = evaluate_clean(model, test, None, data.num_classes, run.eval_batch_size, over_ranks=dist.world_size() > 1)
    return {**final, "train_seconds": round(elapsed, 3), "epochs": cfg.epochs, "history": history}


def _check_finite(loss: float, adversary: Adversary, cfg: TrainingConfig, epoch: int, run_dir: Path) -> None:
    """Stop with one line when the loss or the defence's perturbation went NaN/inf (checkpoint.pt is untouched)."""
    kept = (f"{run_dir / CHECKPOINT} keeps epoch {epoch}" if epoch else "no epoch finished, so no checkpoint was kept")
    if not math.isfinite(loss):
        raise NonFiniteError(f"training.lr={cfg.lr}: the training loss became non-finite in epoch {epoch + 1} "
                             f"({kept}); start a new run with a lower training.lr, or check the data")
    if not adversary.finite():
        key, value = _step_key(cfg)
        raise NonFiniteError(f"{key}={value}: training={cfg.name}'s perturbation became non-finite in epoch "
                             f"{epoch + 1} ({kept}); start a new run with a smaller step size or training.lr")


def _step_key(cfg: TrainingConfig) -> tuple[str, object]:
    """The key that sets the defence's perturbation step (its own, or its attack's), else training.lr."""
    for key, node in (("training.step_size", cfg), ("training.adversary.step_size", getattr(cfg, "adversary", None))):
        if hasattr(node, "step_size"):
            return key, node.step_size
    return "training.lr", cfg.lr
