"""SGD-UAP's objective: the clipped attack loss (CE or CW margin, untargeted or targeted), mean-reduced over the
batch (Shafahi et al., "Universal adversarial training", AAAI 2020, Algorithm 2: the clipped cross-entropy).

Logits arrive as [S,B,K]: S perturbations (M random starts, or 1) evaluated on the same B samples; the loss is
reduced per perturbation, so J is a vector [S] and summing it gives each δ_s its own mean-reduced gradient.

Where the paper is silent: targeted CE is ℓ = −max(CE(z, t), c) with c = −log(1 − e^{−β}), the analogue of clipping
CE at β (a sample stops contributing once all but e^{−β} of its mass sits on t); targeted CW is
min(z_t − max_{k≠t} z_k, κ).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def _margin(logits: Tensor, cls: Tensor) -> Tensor:
    """max_{k≠c} z_k − z_c for each sample; logits [...,K], cls [...] broadcastable."""
    z_c = logits.gather(-1, cls.unsqueeze(-1)).squeeze(-1)
    others = logits.scatter(-1, cls.unsqueeze(-1), float("-inf"))
    return others.amax(-1) - z_c


class ClippedLoss:
    """J = the batch mean of the per-sample clipped loss ℓ_i (to be maximised); stateless."""

    def __init__(self, loss: str, beta: float, kappa: float, target: int | None = None) -> None:
        self.loss, self.beta, self.kappa, self.target = loss, beta, kappa, target

    def per_sample(self, logits: Tensor, y: Tensor) -> Tensor:
        """ℓ [S,B] for logits [S,B,K] and labels y [B]."""
        S, B, K = logits.shape
        if self.target is None:
            cls = y.unsqueeze(0).expand(S, B)
            if self.loss == "ce":
                ce = F.cross_entropy(logits.reshape(S * B, K), cls.reshape(-1), reduction="none").view(S, B)
                return ce.clamp(max=self.beta)
            return _margin(logits, cls).clamp(max=self.kappa)
        tgt = torch.full((S, B), self.target, dtype=torch.long, device=logits.device)
        if self.loss == "ce":
            ce = F.cross_entropy(logits.reshape(S * B, K), tgt.reshape(-1), reduction="none").view(S, B)
            return -ce.clamp(min=-math.log1p(-math.exp(-self.beta)))
        return (-_margin(logits, tgt)).clamp(max=self.kappa)

    @staticmethod
    def reduce(loss: Tensor, weight: Tensor | None) -> Tensor:
        """The batch mean of ℓ [S,B], weighted by `weight` [B] when given."""
        return loss.mean(-1) if weight is None else (loss * weight).sum(-1) / weight.sum()

    def start_pass(self, pass_idx: int) -> None:
        pass

    def __call__(self, logits: Tensor, y: Tensor, *, clean: Tensor | None = None,
                 weight: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        l_atk = self.reduce(self.per_sample(logits, y), weight)
        return l_atk, {"l_atk": l_atk.detach().mean()}

    def observe(self, pred: Tensor, y: Tensor) -> None:
        pass

    def end_pass(self) -> dict:
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
