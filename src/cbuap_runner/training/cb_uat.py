"""Two-stage CB-UAT: stage 1 refreshes a pool of M CB-UAPs against the frozen model; stage 2 trains on them."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import torch
import torch.nn.functional as F

from ..attacks import craft
from ..data import balanced_subset
from .adversary import Adversary

log = logging.getLogger(__name__)


class CBUAT(Adversary):
    """Pool [M,C,H,W] of class-balanced UAPs, warm-started at every refresh; σ-mixed loss."""

    def __init__(self, cfg, num_classes, input_shape, device):
        super().__init__(cfg, num_classes, input_shape, device)
        # init="uniform": the first refresh starts every member from its own random point in the ε-ball. The
        # pool used to start as M zeros and be warm-started from itself, and since all members see the same
        # batches, M identical zeros gave M identical CB-UAPs forever (the pool collapsed to one δ).
        self.attack_cfg = dataclasses.replace(cfg.adversary, name="cb_uap", num_starts=cfg.pool_size, init="uniform")
        self.pool = torch.zeros((cfg.pool_size, *input_shape), device=device)
        self.refreshes = 0
        self._train = None
        self._generator = None

    def on_epoch_start(self, model, epoch, train_x, train_y, generator):
        self._train, self._generator = (train_x, train_y), generator
        if self.cfg.refresh_unit == "epoch" and epoch % self.cfg.refresh_every == 0:
            self.refresh(model, epoch)

    def refresh(self, model, seed: int) -> None:
        """Stage 1: S minibatch steps of CB-UAP on every pool member, the model frozen."""
        x, y = self._train
        n = min(len(y), self.cfg.refresh_steps * self.attack_cfg.batch_size)
        idx = balanced_subset(y, n, seed=seed * 7919 + self.refreshes)
        g = torch.Generator().manual_seed(seed * 104729 + self.refreshes)
        init = self.pool if self.refreshes > 0 else None  # None: independent uniform starts (see __init__)
        result = craft(model, x[idx].float().div_(255), y[idx], self.attack_cfg, self.num_classes, generator=g,
                       init=init, max_steps=self.cfg.refresh_steps)
        self.pool.copy_(result.delta.detach().view_as(self.pool))
        self.refreshes += 1
        model.train()

    def loss(self, model, x, y, step):
        if self.cfg.refresh_unit == "iter" and step % self.cfg.refresh_every == 0:
            self.refresh(model, step)
        n = x.shape[0]
        member = torch.randint(0, self.cfg.pool_size, (n,), generator=self._generator).to(x.device)
        # σ-mixing in expectation: each sample is perturbed with probability σ, so one forward pass
        # estimates (1 - σ)·CE(clean) + σ·CE(adv) without bias at the cost of natural training.
        attacked = (torch.rand((n,), generator=self._generator) < self.cfg.sigma).to(x.device)
        delta = self.pool[member] * attacked[:, None, None, None]
        logits = model((x + delta).clamp(0, 1))
        return F.cross_entropy(logits, y), logits

    def state_dict(self) -> dict[str, Any]:
        return {"pool": self.pool.detach().cpu(), "refreshes": self.refreshes}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pool.copy_(state["pool"].to(self.device))
        self.refreshes = int(state["refreshes"])

    def finite(self) -> bool:
        return bool(torch.isfinite(self.pool).all())
