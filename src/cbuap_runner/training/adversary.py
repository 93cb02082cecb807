"""The adversary interface of the training loop (one subclass per defence) and the one σ-mixed loss they share.

Every defence but `natural` trains on (1 − σ)·CE(clean) + σ·CE(adv) with σ = `training.sigma` (`mixed_loss`),
so that defences compared at the same σ differ only in how they build the adversarial input.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..schema import TrainingConfig


class Adversary:
    """Turns a clean batch into the training loss and keeps the defence's state (δ, a pool, ...)."""

    def __init__(self, cfg: TrainingConfig, num_classes: int, input_shape: tuple[int, int, int], device: torch.device,
                 seed: int = 0):
        self.cfg = cfg
        self.num_classes = num_classes
        self.input_shape = input_shape
        self.device = device
        self.seed = seed

    def on_epoch_start(self, model: nn.Module, epoch: int, train: Any, generator: torch.Generator) -> None:
        """Called before every epoch with the model in train mode and the training split (a data.Split or a streamed
        split: `subset(index).resident()` holds a part of it)."""

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The training loss of one batch and the logits used for train accuracy."""
        logits = model(x)
        return F.cross_entropy(logits, y), logits

    def after_backward(self) -> None:  # noqa: B027 (an optional hook)
        """Called after loss.backward(), before the optimiser step (FastUAT reads ∇δ here)."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""

    def finite(self) -> bool:
        """False when the adversary's state went non-finite."""
        return True


class Natural(Adversary):
    """Plain empirical risk minimisation on clean images."""


def mixed_loss(model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor,
               sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(1 − σ)·CE(model(x)) + σ·CE(model(x_adv)) and the logits for train accuracy (adversarial unless σ = 0).

    One forward per term that has weight: σ = 1 skips the clean forward, σ = 0 the adversarial one (natural training).
    """
    if sigma <= 0:
        logits = model(x)
        return F.cross_entropy(logits, y), logits
    logits_adv = model(x_adv)
    loss = sigma * F.cross_entropy(logits_adv, y)
    if sigma < 1:
        loss = loss + (1 - sigma) * F.cross_entropy(model(x), y)
    return loss, logits_adv
