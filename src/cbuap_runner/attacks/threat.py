"""Threat models (MadryLab style): projection onto the ε-ball, random start and one ascent step.

A perturbation is either one tensor [C,H,W] or a stack [M,C,H,W] of independent ones; a 4-D tensor is
always treated row by row (per-row norms), so M starts or K class-wise perturbations never share a budget.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor

log = logging.getLogger(__name__)

_TINY = 1e-12


def _row_norms(t: Tensor, p: float) -> Tensor:
    """Norm of each row of a [M,...] tensor (a [C,H,W] tensor is one row), shaped to broadcast back."""
    rows = t.reshape(t.shape[0], -1) if t.dim() == 4 else t.reshape(1, -1)
    norms = torch.linalg.vector_norm(rows, ord=p, dim=1)
    return norms.view(-1, 1, 1, 1) if t.dim() == 4 else norms.view(*([1] * t.dim()))


class ThreatModel:
    """An ℓp ball of radius `eps` around zero; subclasses define the geometry."""

    norm = ""

    def __init__(self, eps: float) -> None:
        self.eps = float(eps)

    def project_(self, delta: Tensor) -> Tensor:
        """Project `delta` onto the ball in place and return it."""
        raise NotImplementedError

    def step_(self, delta: Tensor, grad: Tensor, alpha: float) -> Tensor:
        """One steepest-ascent step of length `alpha` along `grad`, in place (no projection)."""
        raise NotImplementedError

    def random_init(self, shape: tuple[int, ...], *, device: torch.device | str = "cpu",
                    generator: torch.Generator | None = None) -> Tensor:
        """A random point inside the ball, drawn with `generator` (on its own device) then moved."""
        raise NotImplementedError

    def norms(self, delta: Tensor) -> Tensor:
        """Per-row norm of `delta` (one value for [C,H,W])."""
        p = float("inf") if self.norm == "linf" else 2.0
        return _row_norms(delta, p).reshape(-1)


def _gen_device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


class LinfThreat(ThreatModel):
    """‖δ‖_∞ ≤ ε: clamp, sign step, uniform start."""

    norm = "linf"

    def project_(self, delta: Tensor) -> Tensor:
        """Clamp every entry into [−ε, ε]."""
        return delta.clamp_(-self.eps, self.eps)

    def step_(self, delta: Tensor, grad: Tensor, alpha: float) -> Tensor:
        """δ += α·sign(g)."""
        return delta.add_(grad.sign(), alpha=alpha)

    def random_init(self, shape: tuple[int, ...], *, device: torch.device | str = "cpu",
                    generator: torch.Generator | None = None) -> Tensor:
        """Uniform in [−ε, ε]."""
        u = torch.rand(shape, generator=generator, device=_gen_device(generator))
        return ((2 * u - 1) * self.eps).to(device)


class L2Threat(ThreatModel):
    """‖δ‖_2 ≤ ε: rescale only rows outside the ball, normalised-gradient step, uniform-in-ball start."""

    norm = "l2"

    def project_(self, delta: Tensor) -> Tensor:
        """Rescale rows whose norm exceeds ε onto the sphere; rows inside the ball are left unchanged."""
        scale = (self.eps / _row_norms(delta, 2.0).clamp_min(_TINY)).clamp(max=1.0)
        return delta.mul_(scale)

    def step_(self, delta: Tensor, grad: Tensor, alpha: float) -> Tensor:
        """δ += α·g/‖g‖₂ (per row)."""
        return delta.add_(grad / _row_norms(grad, 2.0).clamp_min(_TINY), alpha=alpha)

    def random_init(self, shape: tuple[int, ...], *, device: torch.device | str = "cpu",
                    generator: torch.Generator | None = None) -> Tensor:
        """Uniform in the ball: a Gaussian direction with radius ε·U^(1/d)."""
        dev = _gen_device(generator)
        g = torch.randn(shape, generator=generator, device=dev)
        rows = shape[0] if len(shape) == 4 else 1
        d = g.numel() // rows
        u = torch.rand(rows, generator=generator, device=dev).pow(1.0 / d)
        radius = (self.eps * u).view(-1, 1, 1, 1) if len(shape) == 4 else self.eps * u.view(*([1] * len(shape)))
        return (g / _row_norms(g, 2.0).clamp_min(_TINY) * radius).to(device)


THREATS: dict[str, type[ThreatModel]] = {"linf": LinfThreat, "l2": L2Threat}


def make_threat(norm: str, eps: float) -> ThreatModel:
    """The threat model for `norm` (linf | l2) with radius `eps`."""
    return THREATS[norm](eps)
