"""One training loop for every defence; the defence is the pluggable `Adversary`."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

from ..data import DataBundle, batches, num_batches
from ..errors import UserError
from ..metrics import evaluate_clean
from ..progress import progress_bar
from ..schema import DatasetConfig, TrainingConfig
from .adversary import Adversary
from .checkpoint import load_checkpoint, save_checkpoint, set_rng_states
from .schedule import make_optimizer

log = logging.getLogger(__name__)


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
    """One pass over the training split; returns the mean loss and train accuracy (one host sync)."""
    model.train()
    g = epoch_generator(seed, epoch)
    adversary.on_epoch_start(model, epoch, data.train.x, data.train.y, g)
    model.train()
    steps = num_batches(len(data.train), cfg.batch_size, drop_last=True)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    it = batches(data.train, cfg.batch_size, shuffle=True, generator=g, crop_padding=dcfg.crop_padding,
                 hflip=dcfg.hflip, drop_last=True)
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
    return {"train_loss": loss_sum.item() / max(seen, 1), "train_acc": correct.item() / max(seen, 1)}


def fit(model: nn.Module, adversary: Adversary, data: DataBundle, dcfg: DatasetConfig, cfg: TrainingConfig,
        run_dir: Path, seed: int, device: torch.device, log_metrics: Callable[[dict], None],
        resume: bool = False, eval_batch_size: int = 500, stop_after: Optional[int] = None) -> dict[str, Any]:
    """Train for cfg.epochs with a checkpoint after every epoch; returns the final metrics."""
    steps = num_batches(len(data.train), cfg.batch_size, drop_last=True)
    opt, sched = make_optimizer(model, cfg, steps * cfg.epochs)
    start_epoch, history, elapsed = 0, [], 0.0
    if resume:
        ckpt = load_checkpoint(run_dir)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        adversary.load_state_dict(ckpt["adversary"])
        set_rng_states(ckpt["rng"])
        start_epoch, history, elapsed = int(ckpt["epoch"]), list(ckpt["history"]), float(ckpt["train_seconds"])
        log.info("resuming from epoch %d of %d in %s", start_epoch, cfg.epochs, run_dir)
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        row = train_one_epoch(model, adversary, data, dcfg, cfg, opt, sched, epoch, seed, device, stop_after)
        elapsed += time.perf_counter() - t0
        if not math.isfinite(row["train_loss"]) or not adversary.finite():
            raise NonFiniteError(
                f"training.lr={cfg.lr}: the loss became non-finite in epoch {epoch + 1}; the last good checkpoint "
                f"is kept in {run_dir}; lower training.lr or check the data")
        test = evaluate_clean(model, data.test.x, data.test.y, data.num_classes, eval_batch_size)
        row = {"epoch": epoch + 1, **row, "test_acc": test["clean_acc"], "lr": sched.get_last_lr()[0],
               "epoch_seconds": round(time.perf_counter() - t0, 3)}
        history.append(row)
        save_checkpoint(run_dir, model=model.state_dict(), optimizer=opt.state_dict(), scheduler=sched.state_dict(),
                        adversary=adversary.state_dict(), epoch=epoch + 1, history=history, train_seconds=elapsed)
        log_metrics(row)
        log.info("epoch %d/%d  loss %.4f  train acc %.4f  test acc %.4f  (%.1fs)", epoch + 1, cfg.epochs,
                 row["train_loss"], row["train_acc"], row["test_acc"], row["epoch_seconds"])
    final = evaluate_clean(model, data.test.x, data.test.y, data.num_classes, eval_batch_size)
    return {**final, "train_seconds": round(elapsed, 3), "epochs": cfg.epochs, "history": history}
