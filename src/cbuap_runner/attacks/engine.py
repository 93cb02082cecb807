"""The crafting engine: one loop for a universal δ [C,H,W], M independent starts [M,C,H,W] and
class-wise perturbations [K,C,H,W] (docs/method.md, The crafting engine: minibatch ascent, project, decay per pass).

Contract: the model is put in eval mode with parameter gradients off (both restored afterwards); δ is a
leaf tensor updated in place through `delta.data`; x̃ = clamp(x + δ, 0, 1); the objective is mean-reduced
over the batch, so the step does not scale with batch size; the input batch is never modified; per-pass
statistics are accumulated on device and synchronised once per pass.
"""

from __future__ import annotations

import logging
import math
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..dist import all_reduce_mean_
from ..metrics import predict
from ..schema import AttackConfig
from .objectives import UAPObjective
from .stopping import PassMonitor
from .threat import ThreatModel, make_threat

log = logging.getLogger(__name__)


@dataclass
class CraftResult:
    """What a crafting run returns."""

    delta: Tensor  # [C,H,W]; [M,C,H,W] if num_starts > 1; [K,C,H,W] for cw_uap
    converged: bool
    passes: int
    images_processed: int  # crafting-set images drawn by the loop (summed over steps, not × M)
    history: list[dict] = field(default_factory=list)  # one dict per pass


CraftFn = Callable[..., CraftResult]


def apply_delta(x: Tensor, delta: Tensor, y: Tensor | None = None) -> Tensor:
    """clamp(x + δ, 0, 1); a class-wise δ [K,C,H,W] needs `y` and gives sample i δ[y_i]."""
    delta = delta.to(device=x.device, dtype=x.dtype)
    if delta.dim() == x.dim():
        if y is not None:
            delta = delta[y.to(x.device)]
        elif delta.shape[0] == 1:
            delta = delta[0]
        else:
            raise ValueError(f"a stacked perturbation {tuple(delta.shape)} needs labels y (class-wise) "
                             "or one start selected (delta[m])")
    return (x + delta).clamp(0, 1)


@contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and no parameter gradients inside; the previous mode and requires_grad flags after."""
    was_training = model.training
    flags = [p.requires_grad for p in model.parameters()]
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)
        model.train(was_training)


def init_delta(threat: ThreatModel, shape: tuple[int, ...], cfg: AttackConfig, *, device: torch.device,
               generator: torch.Generator | None, init: Tensor | None) -> Tensor:
    """Starting δ of `shape`: the warm start `init` (broadcast to all rows), else zero or uniform."""
    if init is not None:
        d = init.detach().to(device=device, dtype=torch.float32)
        if d.dim() == len(shape) - 1:
            d = d.unsqueeze(0)
        d = d.expand(shape).clone()
    elif cfg.init == "uniform":
        d = threat.random_init(shape, device=device, generator=generator)
    else:
        d = torch.zeros(shape, device=device)
    return threat.project_(d)


def _progress_bar(total: int, enabled: bool, desc: str) -> tqdm:
    """A tqdm bar, shown only when asked and stderr is a terminal."""
    return tqdm(total=total, desc=desc, disable=not (enabled and sys.stderr.isatty()), leave=False)


def batch_objective(model: nn.Module, xb: Tensor, yb: Tensor, delta: Tensor, objective: UAPObjective, *,
                    num_classes: int, class_wise: bool = False,
                    balance_on: bool = True, schedule: "BalanceSchedule | None" = None, pass_idx: int = 0,
                    clean: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor], Tensor]:
    """J [S] (mean-reduced over the batch), its parts and the logits [G,B,K] for δ [S,C,H,W] on one batch.
    With a `schedule` (and the batch's `clean` predictions) the batch's fooled fraction at the current δ
    updates it first, and its factor then multiplies the balance terms (the λ schedule)."""
    b = xb.shape[0]
    if class_wise:
        xt = (xb + delta[yb]).clamp(0, 1)
        counts = torch.zeros(num_classes, device=xb.device).scatter_add_(0, yb, torch.ones(b, device=xb.device))
        weight = 1.0 / counts[yb]  # mean within each class, then over the classes present
    else:
        xt = (xb.unsqueeze(0) + delta.unsqueeze(1)).clamp(0, 1).flatten(0, 1)
        weight = None
    logits = model(xt).view(-1, b, num_classes)
    scale = None
    if schedule is not None:
        if clean is not None:
            schedule.observe((logits.detach().argmax(-1) != clean).float().mean(1))
        if balance_on:
            scale = schedule.factor(pass_idx)
    J, parts = objective(logits, yb, balance_on=balance_on, sample_weight=weight, scale=scale)
    return J, parts, logits


class BalanceSchedule:
    """The factor on the balance part of J (objectives.py docstring): a linear ramp over the first
    `lambda_ramp` balanced passes times, with `fooling_guard` = g, clamp((f − (f* − g)) / g, 0, 1) where f
    is an EMA (decay 0.8, over batches, the current batch at the current δ included) of each start's
    crafting fooling rate and f* its running maximum. `factor` is None when neither is configured, so the
    objective runs its unscaled ops. No host syncs."""

    EMA_DECAY = 0.8

    def __init__(self, cfg: AttackConfig, groups: int, device: torch.device) -> None:
        self.ramp, self.guard = cfg.lambda_ramp, cfg.fooling_guard
        self.start = cfg.balance_start
        self.active = self.ramp > 0 or self.guard is not None
        self.fr: Tensor | None = None  # [G] EMA of the batch fooling rate
        self.best = torch.zeros(groups, device=device)

    def factor(self, pass_idx: int) -> Tensor | None:
        """The scale for the next batch ([G] tensor, or None = unscaled)."""
        if not self.active:
            return None
        ramp = min(1.0, (pass_idx - self.start + 1) / self.ramp) if self.ramp > 0 else 1.0
        if self.guard is None or self.fr is None:
            return torch.full_like(self.best, ramp)
        return ramp * ((self.fr - (self.best - self.guard)) / self.guard).clamp(0, 1)

    def observe(self, fooled_fraction: Tensor) -> None:
        """Update the fooling-rate EMA [G] and its running maximum with one batch's fooled fraction."""
        if self.guard is None:
            return
        f = fooled_fraction.float()
        self.fr = f if self.fr is None else self.EMA_DECAY * self.fr + (1 - self.EMA_DECAY) * f
        torch.maximum(self.best, self.fr, out=self.best)


def run_engine(model: nn.Module, x: Tensor, y: Tensor, cfg: AttackConfig, num_classes: int, *,
               objective: UAPObjective, num_deltas: int, class_wise: bool = False,
               generator: torch.Generator | None = None, progress: bool = False,
               init: Tensor | None = None, max_steps: int | None = None,
               val: tuple[Tensor, Tensor] | None = None) -> CraftResult:
    """Maximise `objective` over δ [num_deltas,C,H,W] by minibatch ascent over the crafting set (x, y).

    Stops after `cfg.passes` passes or by the shared stopping rule on the validation images `val`
    (stopping.py); with `max_steps` it runs exactly that many minibatch steps instead (cycling through
    passes, no early stop), which is what the CB-UAT pool refresh needs.
    """
    device = x.device
    y = y.to(device)
    N, K, S = x.shape[0], num_classes, num_deltas
    G = 1 if class_wise else S  # prediction groups: one forward per sample class-wise, S otherwise
    threat = make_threat(cfg.norm, cfg.eps)
    delta = init_delta(threat, (S, *x.shape[1:]), cfg, device=device, generator=generator, init=init)
    delta.requires_grad_(True)
    alpha = cfg.step_size if cfg.step_size is not None else cfg.eps / 4
    opt = torch.optim.Adam([delta], lr=cfg.adam_lr, maximize=True) if cfg.optimizer == "adam" else None
    gen_device = generator.device if generator is not None else torch.device("cpu")
    history: list[dict] = []
    steps = images = pass_idx = 0
    schedule = BalanceSchedule(cfg, G, device) if objective.use_terms else None
    if schedule is not None and not schedule.active:
        schedule = None
    with frozen(model):
        clean = predict(model, x, cfg.batch_size)
        monitor = PassMonitor(model, cfg, val if max_steps is None else None, class_wise=class_wise)
        bar = _progress_bar(max_steps if max_steps is not None else cfg.passes, progress, cfg.name)
        while (pass_idx < cfg.passes) if max_steps is None else (steps < max_steps):
            stop = cfg.balance_stop if cfg.balance_stop is not None else math.inf
            balance_on = cfg.balance_start <= pass_idx < stop
            perm = torch.randperm(N, generator=generator, device=gen_device).to(device)
            obj_sum = torch.zeros((), device=device)
            parts_sum: dict[str, Tensor] = {}
            fooled = torch.zeros(G, device=device)
            hits = torch.zeros(G, device=device)
            batches = seen = 0
            for start in range(0, N, cfg.batch_size):
                if max_steps is not None and steps >= max_steps:
                    break
                idx = perm[start:start + cfg.batch_size]
                xb, yb, cb = x[idx], y[idx], clean[idx]
                b = xb.shape[0]
                J, parts, logits = batch_objective(model, xb, yb, delta, objective, num_classes=K,
                                                   class_wise=class_wise, balance_on=balance_on,
                                                   schedule=schedule, pass_idx=pass_idx, clean=cb)
                (grad,) = torch.autograd.grad(J.sum(), delta)
                all_reduce_mean_(grad)  # under torchrun: every rank steps with the same ∇δ
                with torch.no_grad():
                    if opt is None:
                        threat.step_(delta.data, grad, alpha)
                    else:
                        delta.grad = grad
                        opt.step()
                        delta.grad = None
                    threat.project_(delta.data)
                    pred = logits.detach().argmax(-1)  # [G,b]
                    objective.observe(pred, yb)
                    obj_sum += J.detach().mean()
                    for k, v in parts.items():
                        parts_sum[k] = parts_sum.get(k, 0) + v
                    fooled += (pred != cb).sum(1)
                    if cfg.target is not None:
                        hits += (pred == cfg.target).sum(1)
                steps += 1
                batches += 1
                seen += b
            objective.end_pass()
            if batches == 0:
                break
            images += seen
            pass_idx += 1
            # one host sync per pass
            stats = all_reduce_mean_(torch.cat([torch.stack([obj_sum / batches, *(v / batches for v in parts_sum.values())]),
                               fooled / seen, hits / seen])).tolist()
            objective_value, n_parts = stats[0], len(parts_sum)
            rates = stats[1 + n_parts:1 + n_parts + G]
            record = {"pass": pass_idx, "objective": objective_value, "fooling_rate": max(rates),
                      "step_size": alpha if opt is None else opt.param_groups[0]["lr"],
                      "images": seen, "balance_on": bool(balance_on and objective.balanced)}
            record.update(zip(parts_sum, stats[1:1 + n_parts]))
            if G > 1:
                record["fooling_rates"] = rates
            if cfg.target is not None:
                record["target_rate"] = max(stats[1 + n_parts + G:])
            record.update(monitor.end_pass(delta.detach()))
            history.append(record)
            log.debug("%s pass %d: %s", cfg.name, pass_idx, record)
            bar.update(batches if max_steps is not None else 1)
            bar.set_postfix(obj=f"{objective_value:.3f}", fr=f"{record['fooling_rate']:.3f}")
            alpha *= cfg.step_decay
            if opt is not None:
                opt.param_groups[0]["lr"] *= cfg.step_decay
            if monitor.stop:
                break
        bar.close()
    out = monitor.result(delta.detach()).clone()
    if S == 1 and not class_wise:
        out = out[0]
    return CraftResult(delta=out, converged=monitor.converged, passes=pass_idx, images_processed=images,
                       history=history)


def _check_unbalanced(cfg: AttackConfig) -> None:
    """Warn when balance knobs are set on an attack that ignores them."""
    if cfg.lambda_div or cfg.lambda_conf or cfg.lambda_pen or cfg.class_reweight:
        log.warning("attack=%s ignores the class-balance settings (lambda_*, class_reweight); use attack=cb_uap",
                    cfg.name)


def craft_sgd_uap(model: nn.Module, x: Tensor, y: Tensor, cfg: AttackConfig, num_classes: int,
                  **kw) -> CraftResult:
    """SGD-UAP (Shafahi et al. 2020): clipped CE (or CW) ascent, no balance terms."""
    _check_unbalanced(cfg)
    objective = UAPObjective(cfg, num_classes, balanced=False)
    return run_engine(model, x, y, cfg, num_classes, objective=objective, num_deltas=cfg.num_starts, **kw)


def craft_cb_uap(model: nn.Module, x: Tensor, y: Tensor, cfg: AttackConfig, num_classes: int,
                 **kw) -> CraftResult:
    """CB-UAP: the SGD-UAP skeleton with the class-balance terms of docs/method.md (CB-UAP)."""
    objective = UAPObjective(cfg, num_classes, balanced=True)
    return run_engine(model, x, y, cfg, num_classes, objective=objective, num_deltas=cfg.num_starts, **kw)


# name -> crafting function; classwise.py and deepfool_uap.py add their entries (one line each)
ATTACKS: dict[str, CraftFn] = {"sgd_uap": craft_sgd_uap, "cb_uap": craft_cb_uap}


def craft(model: nn.Module, x: Tensor, y: Tensor, cfg: AttackConfig, num_classes: int, *,
          generator: torch.Generator | None = None, progress: bool = False,
          init: Tensor | None = None, max_steps: int | None = None,
          val: tuple[Tensor, Tensor] | None = None) -> CraftResult:
    """Craft the perturbation named by `cfg.name` on the crafting set (x in [0,1], y int64); `val`
    (validation images in [0,1] and labels) serves the stopping rule."""
    if cfg.name not in ATTACKS:
        raise KeyError(f"attack.name={cfg.name!r}: unknown attack; one of {', '.join(sorted(ATTACKS))}")
    return ATTACKS[cfg.name](model, x, y, cfg, num_classes, generator=generator, progress=progress,
                             init=init, max_steps=max_steps, val=val)
