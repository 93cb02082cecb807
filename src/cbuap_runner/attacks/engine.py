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
    stats: dict = field(default_factory=dict)  # the attack's own totals over the run (reported with the metrics)


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
        self.ramp, self.guard = cfg.balance.lambda_ramp, cfg.balance.fooling_guard
        self.start = cfg.balance.start
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


def pass_record(pass_idx: int, objective: float, fooling_rate: float, step_size: float | None, images: int,
                **extra: object) -> dict:
    """A pass record with the keys every attack's history shares, then `extra`."""
    return {"pass": pass_idx, "objective": objective, "fooling_rate": fooling_rate, "step_size": step_size,
            "images": images, **extra}


def draw_order(n: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """A random permutation of range(n) drawn from `generator` (on its own device), moved to `device`."""
    gen_device = generator.device if generator is not None else torch.device("cpu")
    return torch.randperm(n, generator=generator, device=gen_device).to(device)


class Stepper:
    """The update of δ: a threat-model step of size α (decayed each pass) or Adam, then the projection."""

    def __init__(self, delta: Tensor, threat: ThreatModel, cfg: AttackConfig) -> None:
        self.delta, self.threat, self.decay = delta, threat, cfg.step_decay
        self.alpha = cfg.step_size if cfg.step_size is not None else cfg.eps / 4
        self.opt = torch.optim.Adam([delta], lr=cfg.adam_lr, maximize=True) if cfg.optimizer == "adam" else None

    @property
    def current_step_size(self) -> float:
        """The sign-step size α, or Adam's learning rate."""
        return self.alpha if self.opt is None else self.opt.param_groups[0]["lr"]

    @torch.no_grad()
    def step(self, grad: Tensor) -> None:
        """Ascend along `grad` in place and project δ back onto the threat ball."""
        if self.opt is None:
            self.threat.step_(self.delta.data, grad, self.alpha)
        else:
            self.delta.grad = grad
            self.opt.step()
            self.delta.grad = None
        self.threat.project_(self.delta.data)

    def end_pass(self) -> None:
        """Decay the step size (and Adam's learning rate) by `step_decay`."""
        self.alpha *= self.decay
        if self.opt is not None:
            self.opt.param_groups[0]["lr"] *= self.decay


class PassStats:
    """One pass's statistics, accumulated on device: J, its parts, fooled counts and target hits per group."""

    def __init__(self, groups: int, device: torch.device, target: int | None = None) -> None:
        self.groups, self.target = groups, target
        self.obj_sum = torch.zeros((), device=device)
        self.parts_sum: dict[str, Tensor] = {}
        self.fooled = torch.zeros(groups, device=device)
        self.hits = torch.zeros(groups, device=device)
        self.batches = self.seen = 0

    @torch.no_grad()
    def add(self, J: Tensor, parts: dict[str, Tensor], pred: Tensor, clean: Tensor) -> None:
        """Add one batch: J [S], its parts, the adversarial predictions [G,b] and the clean ones [b]."""
        self.obj_sum += J.detach().mean()
        for k, v in parts.items():
            self.parts_sum[k] = self.parts_sum.get(k, 0) + v
        self.fooled += (pred != clean).sum(1)
        if self.target is not None:
            self.hits += (pred == self.target).sum(1)
        self.batches += 1
        self.seen += pred.shape[1]

    def record(self, pass_idx: int, step_size: float | None, balance_on: bool) -> dict:
        """The pass record: means over batches and images, averaged over ranks, read in one host sync."""
        n = len(self.parts_sum)
        means = torch.stack([self.obj_sum / self.batches, *(v / self.batches for v in self.parts_sum.values())])
        stats = all_reduce_mean_(torch.cat([means, self.fooled / self.seen, self.hits / self.seen])).tolist()
        rates = stats[1 + n:1 + n + self.groups]
        record = pass_record(pass_idx, stats[0], max(rates), step_size, self.seen, balance_on=balance_on)
        record.update(zip(self.parts_sum, stats[1:1 + n]))
        if self.groups > 1:
            record["fooling_rates"] = rates
        if self.target is not None:
            record["target_rate"] = max(stats[1 + n + self.groups:])
        return record


class PassLoop:
    """The passes of a crafting run: a fresh shuffled order per pass while fewer than `max_passes` ran, `more()`
    holds (when given), the stopping rule (stopping.py) has not fired and `finish()` was not called; the
    history, the debug log and the progress bar. Use as a context manager."""

    def __init__(self, model: nn.Module, cfg: AttackConfig, val: tuple[Tensor, Tensor] | None, *, n: int,
                 device: torch.device, generator: torch.Generator | None, max_passes: float, bar_total: int,
                 more: Callable[[], bool] | None = None, progress: bool = False, class_wise: bool = False,
                 name: str | None = None) -> None:
        self.monitor = PassMonitor(model, cfg, val, class_wise=class_wise)
        self.bar = _progress_bar(bar_total, progress, cfg.name)
        self.n, self.device, self.generator, self.max_passes, self.more = n, device, generator, max_passes, more
        self.name = cfg.name if name is None else name
        self.history: list[dict] = []
        self.passes = 0  # completed passes
        self.done = False

    def __enter__(self) -> "PassLoop":
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.close()

    def __iter__(self) -> Iterator[Tensor]:
        """The order of each pass still to run."""
        while self.passes < self.max_passes and not self.done and (self.more is None or self.more()):
            yield draw_order(self.n, self.generator, self.device)

    def end_pass(self, record: dict, delta: Tensor, *, advance: int = 1, **postfix: str) -> None:
        """Judge δ after a pass, complete and keep its record, advance the bar."""
        self.passes += 1
        record.update(self.monitor.end_pass(delta))
        self.history.append(record)
        log.debug("%s pass %d: %s", self.name, self.passes, record)
        self.bar.update(advance)
        self.bar.set_postfix(**postfix)
        self.done = self.done or self.monitor.stop

    def finish(self) -> None:
        """Run no further pass."""
        self.done = True


def _balance_on(cfg: AttackConfig, pass_idx: int) -> bool:
    """Whether the balance terms apply in pass `pass_idx` (0-based)."""
    stop = cfg.balance.stop if cfg.balance.stop is not None else math.inf
    return cfg.balance.start <= pass_idx < stop


def _make_schedule(cfg: AttackConfig, objective: UAPObjective, groups: int,
                   device: torch.device) -> BalanceSchedule | None:
    """The λ schedule when the objective has balance terms and a ramp or guard is configured."""
    if not objective.use_terms:
        return None
    schedule = BalanceSchedule(cfg, groups, device)
    return schedule if schedule.active else None


def _minibatches(order: Tensor, batch_size: int, limit: int | None) -> tuple[Tensor, ...]:
    """Consecutive minibatches of `order`, at most `limit` of them."""
    chunks = order.split(batch_size)
    return chunks if limit is None else chunks[:limit]


def _shared_grad(J: Tensor, delta: Tensor) -> Tensor:
    """∇δ of ΣJ, averaged over torchrun ranks so that every rank takes the same step."""
    (grad,) = torch.autograd.grad(J.sum(), delta)
    return all_reduce_mean_(grad)


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
    device, y = x.device, y.to(x.device)
    groups = 1 if class_wise else num_deltas  # one forward per sample class-wise, one per δ otherwise
    threat = make_threat(cfg.norm, cfg.eps)
    delta = init_delta(threat, (num_deltas, *x.shape[1:]), cfg, device=device, generator=generator, init=init)
    stepper = Stepper(delta.requires_grad_(True), threat, cfg)
    schedule = _make_schedule(cfg, objective, groups, device)
    steps = images = 0
    with frozen(model), PassLoop(model, cfg, val if max_steps is None else None, n=x.shape[0], device=device,
                                 generator=generator, max_passes=cfg.passes if max_steps is None else math.inf,
                                 more=lambda: max_steps is None or steps < max_steps,
                                 bar_total=cfg.passes if max_steps is None else max_steps, progress=progress,
                                 class_wise=class_wise) as loop:
        clean = predict(model, x, cfg.batch_size)
        for order in loop:
            balance_on, stats = _balance_on(cfg, loop.passes), PassStats(groups, device, cfg.target)
            for idx in _minibatches(order, cfg.batch_size, None if max_steps is None else max_steps - steps):
                J, parts, logits = batch_objective(model, x[idx], y[idx], delta, objective, num_classes=num_classes,
                                                   class_wise=class_wise, balance_on=balance_on,
                                                   schedule=schedule, pass_idx=loop.passes, clean=clean[idx])
                stepper.step(_shared_grad(J, delta))
                pred = logits.detach().argmax(-1)  # [G,b]
                objective.observe(pred, y[idx])
                stats.add(J, parts, pred, clean[idx])
            objective.end_pass()
            if stats.batches == 0:
                break
            steps, images = steps + stats.batches, images + stats.seen
            record = stats.record(loop.passes + 1, stepper.current_step_size, balance_on and objective.balanced)
            loop.end_pass(record, delta.detach(), advance=1 if max_steps is None else stats.batches,
                          obj=f"{record['objective']:.3f}", fr=f"{record['fooling_rate']:.3f}")
            stepper.end_pass()
    out = loop.monitor.result(delta.detach()).clone()
    return CraftResult(delta=out[0] if num_deltas == 1 and not class_wise else out, converged=loop.monitor.converged,
                       passes=loop.passes, images_processed=images, history=loop.history)


def craft_sgd_uap(model: nn.Module, x: Tensor, y: Tensor, cfg: AttackConfig, num_classes: int,
                  **kw) -> CraftResult:
    """SGD-UAP (Shafahi et al. 2020): clipped CE (or CW) ascent, no balance terms."""
    objective = UAPObjective(cfg, num_classes, balanced=False)
    return run_engine(model, x, y, cfg, num_classes, objective=objective, num_deltas=cfg.num_starts, **kw)


def craft_cb_uap(model: nn.Module, x: Tensor, y: Tensor, cfg: AttackConfig, num_classes: int,
                 **kw) -> CraftResult:
    """CB-UAP: the SGD-UAP skeleton with the class-balance terms of docs/method.md (CB-UAP)."""
    objective = UAPObjective(cfg, num_classes, balanced=True)
    return run_engine(model, x, y, cfg, num_classes, objective=objective, num_deltas=cfg.num_starts, **kw)
