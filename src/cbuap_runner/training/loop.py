"""One training loop for every defence; the defence is the pluggable `Adversary`."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

from .. import dist
from ..data import DataBundle, batches, num_batches
from ..errors import UserError
from ..io import atomic_path
from ..metrics import evaluate_clean
from ..progress import progress_bar
from ..schema import DatasetConfig, TrainingConfig
from .adversary import Adversary
from .checkpoint import CHECKPOINT, check_same_config, load_checkpoint, resume_label, save_checkpoint, set_rng_states, start_afresh_hint
from .schedule import make_optimizer

log = logging.getLogger(__name__)

METRICS = "metrics.jsonl"  # the local tracker's record in the run directory (docs/design.md, Run directory)


class NonFiniteError(UserError):
    """The loss or the adversary's state became NaN or infinite."""


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """Shuffling and augmentation randomness of one epoch, independent of what ran before (exact resume)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def _autocast(device: torch.device, enabled: bool):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled and device.type == "cuda")


def train_one_epoch(model: nn.Module, adversary: Adversary, data: DataBundle, dcfg: DatasetConfig,
                    cfg: TrainingConfig, opt, sched, epoch: int, seed: int, device: torch.device,
                    stop_after: Optional[int] = None) -> dict[str, float]:
    """One pass over the training split; returns the mean loss and train accuracy (one host sync).

    Under torchrun `model` is the DDP wrapper: each rank trains on its share of every global batch.
    """
    model.train()
    g = epoch_generator(seed, epoch)
    adversary.on_epoch_start(unwrap(model), epoch, data.train.x, data.train.y, g)
    model.train()
    steps = num_batches(len(data.train), cfg.batch_size, drop_last=True)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    it = batches(data.train, cfg.batch_size, shuffle=True, generator=g, crop_padding=dcfg.crop_padding,
                 hflip=dcfg.hflip, drop_last=True, rank=dist.rank(), world=dist.world_size())
    for i, (x, y) in enumerate(progress_bar(it, desc=f"epoch {epoch + 1}/{cfg.epochs}", total=steps)):
        if stop_after is not None and i >= stop_after:
            raise KeyboardInterrupt(f"stopped after {stop_after} iterations (test hook)")
        opt.zero_grad(set_to_none=True)
        with _autocast(device, cfg.amp):
            loss, logits = adversary.loss(model, x, y, epoch * steps + i)
        loss.backward()
        adversary.after_backward()
        opt.step()
        sched.step()
        loss_sum += loss.detach().float() * y.shape[0]
        correct += (logits.detach().argmax(1) == y).sum()
        seen += y.shape[0]
    totals = dist.all_reduce_mean_(torch.stack([loss_sum, correct.float(), torch.tensor(float(seen), device=device)]))
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


def rewind_metrics(path: Path, epoch: int) -> set[int]:
    """Cut metrics.jsonl back to what checkpoint `epoch` covers; returns the epochs whose rows remain.

    A run killed after appending rows the checkpoint does not cover (a later epoch, the attack that
    followed training, a half-written line) would otherwise repeat them when it resumes.
    """
    if not path.is_file():
        return set()
    kept, epochs, end = [], set(), 0
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            break  # a line cut short by the kill: nothing after it is trusted
        is_epoch_row = isinstance(row, dict) and "epoch" in row and "train_loss" in row
        if is_epoch_row and (row["epoch"] > epoch or row["epoch"] in epochs):
            break
        kept.append(line)
        if is_epoch_row:
            epochs.add(row["epoch"])
            end = len(kept)
    kept = kept[:end]
    with atomic_path(path) as tmp:
        tmp.write_text("".join(f"{line}\n" for line in kept))
    return epochs


def checkpoint_to_resume(run_dir: Path, resume: bool | str, config: dict[str, Any]) -> Optional[dict[str, Any]]:
    """The checkpoint to continue from: none for resume=false; for true and auto the run directory's, if any.

    resume=auto (the default, and what makes a requeued SLURM job continue) refuses with one line a checkpoint
    written under other settings instead of training afresh over it: a sweep rerun with changed settings into
    the same directory would otherwise overwrite the earlier run's checkpoint and model with only a warning in
    a log nobody reads. resume=false is the explicit way to train afresh over it.
    """
    if resume is False:
        return None
    ckpt = load_checkpoint(run_dir, resume)
    if ckpt is None:
        if resume is True:
            log.warning("resume=true: no %s in %s (interrupted before the first epoch ended); starting from epoch 1",
                        CHECKPOINT, run_dir)
        return None
    check_same_config(ckpt.get("config"), config, run_dir / CHECKPOINT, resume)
    return ckpt


def fit(model: nn.Module, adversary: Adversary, data: DataBundle, dcfg: DatasetConfig, cfg: TrainingConfig,
        run_dir: Path, seed: int, device: torch.device, log_metrics: Callable[[dict], None],
        resume: bool | str = False, eval_batch_size: int = 500, stop_after: Optional[int] = None, *,
        key: dict[str, Any]) -> dict[str, Any]:
    """Train for cfg.epochs with a checkpoint after every epoch; returns the final metrics.

    `resume` is auto, True or False (see `checkpoint_to_resume`); a checkpoint is continued only under the same
    weights `key` (provenance.weights_key: the settings and the data fingerprint). `stop_after` (a test hook) raises
    KeyboardInterrupt after that many iterations of this call, as a Ctrl-C in the middle of an epoch would.
    """
    steps = num_batches(len(data.train), cfg.batch_size, drop_last=True)
    opt, sched = make_optimizer(model, cfg, steps * cfg.epochs)
    start_epoch, history, elapsed = 0, [], 0.0
    ckpt = checkpoint_to_resume(run_dir, resume, key)
    if ckpt is not None:
        try:
            model.load_state_dict(ckpt["model"])
        except RuntimeError as ex:
            raise UserError(f"resume={resume_label(resume)}: {run_dir / CHECKPOINT} holds the weights of another "
                            f"model; resume with the same model=, or {start_afresh_hint(resume)}") from ex
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        adversary.load_state_dict(ckpt["adversary"])
        set_rng_states(ckpt["rng"])
        start_epoch, history, elapsed = int(ckpt["epoch"]), list(ckpt["history"]), float(ckpt["train_seconds"])
        log.info("resuming from epoch %d of %d in %s", start_epoch, cfg.epochs, run_dir)
    if dist.is_main():  # a fresh start (epoch 0) drops the rows of an earlier attempt in this directory too
        logged = rewind_metrics(run_dir / METRICS, start_epoch)
        for row in history:  # killed between the checkpoint and its metrics row
            if row["epoch"] not in logged:
                log_metrics(row)
    trained = distribute(model, device)
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        budget = None if stop_after is None else stop_after - (epoch - start_epoch) * steps
        row = train_one_epoch(trained, adversary, data, dcfg, cfg, opt, sched, epoch, seed, device, budget)
        elapsed += time.perf_counter() - t0
        dist.broadcast_buffers_(model)  # each rank's BatchNorm statistics saw only its own shard
        _check_finite(row["train_loss"], adversary, cfg, epoch, run_dir)
        val = evaluate_clean(model, data.val.x, data.val.y, data.num_classes, eval_batch_size)
        row = {"epoch": epoch + 1, **row, "val_acc": val["clean_acc"], "lr": sched.get_last_lr()[0],
               "epoch_seconds": round(time.perf_counter() - t0, 3)}
        history.append(row)
        if dist.is_main():
            save_checkpoint(run_dir, model=model.state_dict(), optimizer=opt.state_dict(),
                            scheduler=sched.state_dict(), adversary=adversary.state_dict(), epoch=epoch + 1,
                            history=history, train_seconds=elapsed, config=key)
            log_metrics(row)
        log.info("epoch %d/%d  loss %.4f  train acc %.4f  val acc %.4f  (%.1fs)", epoch + 1, cfg.epochs,
                 row["train_loss"], row["train_acc"], row["val_acc"], row["epoch_seconds"])
    final = evaluate_clean(model, data.test.x, data.test.y, data.num_classes, eval_batch_size)
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
