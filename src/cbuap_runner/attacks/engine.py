"""The crafting loop: minibatch ascent on δ for a universal δ [C,H,W], M independent starts [M,C,H,W] and
class-wise perturbations [K,C,H,W] (docs/method.md, The crafting engine: minibatch ascent, project, decay per pass).

The loop knows no attack. It takes the crafting set (`CraftingSet`), the starting δ, an `Objective` (the loss to
maximise, with whatever state and schedule it keeps), a `Step` (the update of δ and its projection onto the threat
ball) and a `Budget` (passes or minibatch steps, and the stopping rule); each attack builds those from its config.

A crafting run given a `Checkpoint` (RunOptions.checkpoint) hands it its whole state after every pass and every
`checkpoint.every` images within a pass, and continues from the state the checkpoint holds: the loop's (passes,
steps, history, the pass's order and position, the generator, the stopping rule's history) and the attack's (δ, its
step's and objective's state, the pass's partial statistics); a continued run is bit-identical on CPU to one never
interrupted. Objectives and steps therefore keep their state where `state_dict`/`load_state_dict` reach it.

Contract: the model is put in eval mode with parameter gradients off (both restored afterwards); δ is a
leaf tensor updated in place through `delta.data`; x̃ = clamp(x + δ, 0, 1); the objective is mean-reduced
over the batch, so the step does not scale with batch size; the input batch is never modified; per-pass
statistics are accumulated on device and synchronised once per pass.
"""

from __future__ import annotations

import logging
import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional, Protocol

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..dist import all_reduce_mean_
from ..metrics import predict
from ..schema import AttackConfig
from .stopping import PassMonitor
from .threat import ThreatModel

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


@dataclass(frozen=True)
class CraftingSet:
    """The images a perturbation is crafted on (x in [0,1], y int64) and the validation images its stopping rule
    reads (None: no stopping rule can run)."""

    x: Tensor
    y: Tensor
    val: Optional[tuple[Tensor, Tensor]] = None


@dataclass(frozen=True)
class Budget:
    """How long a crafting run goes: up to `passes` passes over the crafting set in minibatches of `batch_size`,
    ended earlier by the stopping rule on the validation images (stopping.py: `patience` with `tol`,
    `fooling_target`); or, with `max_steps`, exactly that many minibatch steps, cycling through as many passes as
    they take, with no stopping rule (a CB-UAT pool refresh)."""

    passes: int
    batch_size: int
    patience: Optional[int] = None
    tol: float = 0.0
    fooling_target: Optional[float] = None
    max_steps: Optional[int] = None

    @classmethod
    def of(cls, cfg: AttackConfig, max_steps: int | None = None) -> "Budget":
        """The budget and stopping rule an attack config sets (every attack has these keys)."""
        return cls(cfg.passes, cfg.batch_size, cfg.patience, cfg.tol, cfg.fooling_target, max_steps)

    @property
    def max_passes(self) -> float:
        return math.inf if self.max_steps is not None else self.passes

    @property
    def bar_total(self) -> int:
        return self.passes if self.max_steps is None else self.max_steps

    @property
    def stopping(self) -> "Budget":
        """The budget whose stopping rule runs: this one, or none under `max_steps`."""
        return self if self.max_steps is None else Budget(self.passes, self.batch_size, max_steps=self.max_steps)


class Checkpoint(Protocol):
    """Where a crafting run keeps its state: `load` the state of an interrupted attempt (None: start afresh),
    `save` the current one; `every`: images between two saves within a pass (0: at pass ends only)."""

    every: int

    def load(self) -> Optional[dict]: ...

    def save(self, state: dict) -> None: ...


@dataclass(frozen=True)
class RunOptions:
    """How a crafting run goes besides what it optimises: its name (logs and the bar), the generator of its pass
    orders, whether to show a bar, whether δ is class-wise (sample i receives δ[y_i]) and where it checkpoints."""

    name: str
    generator: Optional[torch.Generator] = None
    progress: bool = False
    class_wise: bool = False
    checkpoint: Optional[Checkpoint] = None


class Objective(Protocol):
    """What the loop maximises. Logits arrive as [S,B,K] (S perturbations on the same B samples); J is [S]."""

    target: Optional[int]  # the class a targeted objective pushes to (its hit rate is recorded), else None

    def start_pass(self, pass_idx: int) -> None:
        """Called before pass `pass_idx` (0-based)."""

    def __call__(self, logits: Tensor, y: Tensor, *, clean: Tensor,
                 weight: Tensor | None) -> tuple[Tensor, dict[str, Tensor]]:
        """J [S] (mean-reduced over the batch, `weight` [B] the per-sample weights or None) and its detached parts;
        `clean` [B] are the clean predictions of the batch."""

    def observe(self, pred: Tensor, y: Tensor) -> None:
        """The adversarial predictions [S,B] of the batch just stepped on."""

    def end_pass(self) -> dict:
        """Called after each pass; returns what to add to the pass record."""

    def state_dict(self) -> dict:
        """The state the objective carries between batches and passes (empty if none)."""

    def load_state_dict(self, state: dict) -> None: ...


class Step(Protocol):
    """The update of δ: ascend along the gradient in place, project onto the threat ball; decayed per pass."""

    current_step_size: float

    def step(self, grad: Tensor) -> None: ...

    def end_pass(self) -> None: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


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
    """Starting δ of `shape`: the warm start `init` (broadcast to all rows), else zero or uniform (attack.init)."""
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
    """A tqdm bar, shown when asked (the caller reads `progress=`: auto on a terminal only, on or off)."""
    return tqdm(total=total, desc=desc, disable=not enabled, leave=False)


def batch_objective(model: nn.Module, xb: Tensor, yb: Tensor, delta: Tensor, objective: Objective, *,
                    clean: Tensor, class_wise: bool = False) -> tuple[Tensor, dict[str, Tensor], Tensor]:
    """J [S] (mean-reduced over the batch), its parts and the logits [G,B,K] for δ [S,C,H,W] on one batch."""
    b = xb.shape[0]
    if class_wise:
        xt = (xb + delta[yb]).clamp(0, 1)
    else:
        xt = (xb.unsqueeze(0) + delta.unsqueeze(1)).clamp(0, 1).flatten(0, 1)
    logits = model(xt)
    logits = logits.view(-1, b, logits.shape[-1])
    weight = None
    if class_wise:  # mean within each class, then over the classes present
        counts = torch.zeros(logits.shape[-1], device=xb.device).scatter_add_(0, yb, torch.ones(b, device=xb.device))
        weight = 1.0 / counts[yb]
    J, parts = objective(logits, yb, clean=clean, weight=weight)
    return J, parts, logits


def pass_record(pass_idx: int, objective: float, fooling_rate: float, step_size: float | None, images: int,
                **extra: object) -> dict:
    """A pass record with the keys every attack's history shares, then `extra`."""
    return {"pass": pass_idx, "objective": objective, "fooling_rate": fooling_rate, "step_size": step_size,
            "images": images, **extra}


def draw_order(n: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """A random permutation of range(n) drawn from `generator` (on its own device), moved to `device`."""
    gen_device = generator.device if generator is not None else torch.device("cpu")
    return torch.randperm(n, generator=generator, device=gen_device).to(device)


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

    def state_dict(self) -> dict:
        return {"obj_sum": self.obj_sum, "parts_sum": self.parts_sum, "fooled": self.fooled, "hits": self.hits,
                "batches": self.batches, "seen": self.seen}

    def load_state_dict(self, state: dict) -> None:
        self.obj_sum, self.parts_sum = state["obj_sum"], dict(state["parts_sum"])
        self.fooled, self.hits, self.batches, self.seen = state["fooled"], state["hits"], state["batches"], state["seen"]

    def record(self, pass_idx: int, step_size: float | None, **extra: object) -> dict:
        """The pass record: means over batches and images, averaged over ranks, read in one host sync."""
        n = len(self.parts_sum)
        means = torch.stack([self.obj_sum / self.batches, *(v / self.batches for v in self.parts_sum.values())])
        stats = all_reduce_mean_(torch.cat([means, self.fooled / self.seen, self.hits / self.seen])).tolist()
        rates = stats[1 + n:1 + n + self.groups]
        record = pass_record(pass_idx, stats[0], max(rates), step_size, self.seen, **extra)
        record.update(zip(self.parts_sum, stats[1:1 + n]))
        if self.groups > 1:
            record["fooling_rates"] = rates
        if self.target is not None:
            record["target_rate"] = max(stats[1 + n + self.groups:])
        return record


class PassLoop:
    """The passes of a crafting run within its budget: a fresh shuffled order per pass while the budget allows
    another, the stopping rule (stopping.py) has not fired and `finish()` was not called; the minibatches of a pass
    (no more than the budget's steps); the history, the debug log, the progress bar and the checkpoints. Use as a
    context manager. Continuing a checkpoint, it restores its own state and keeps the attack's in `resumed`."""

    def __init__(self, model: nn.Module, budget: Budget, val: tuple[Tensor, Tensor] | None, n: int,
                 run: RunOptions, device: torch.device) -> None:
        self.monitor = PassMonitor(model, budget.stopping, val, class_wise=run.class_wise)
        self.budget, self.run, self.n, self.device = budget, run, n, device
        self.history: list[dict] = []
        self.passes = 0  # completed passes
        self.steps = 0  # minibatch steps taken
        self.done = False
        self.order: Optional[Tensor] = None  # the current pass's order, None between passes
        self.position = 0  # where the current pass stands, in the attack's unit (minibatches, images)
        self._unsaved = 0  # images since the last checkpoint
        saved = run.checkpoint.load() if run.checkpoint is not None else None
        self.resumed: Optional[dict] = None if saved is None else saved["attack"]
        if saved is not None:
            self._load(saved["loop"])
        self.bar = _progress_bar(budget.bar_total, run.progress, run.name)
        self.bar.update(self.passes if budget.max_steps is None else self.steps)

    def __enter__(self) -> "PassLoop":
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.close()

    def _more(self) -> bool:
        limit = self.budget.max_steps
        return self.passes < self.budget.max_passes and not self.done and (limit is None or self.steps < limit)

    def __iter__(self) -> Iterator[Tensor]:
        """The order of each pass still to run (first the interrupted pass's, where a checkpoint left one)."""
        while self._more():
            if self.order is None:
                self.order, self.position = draw_order(self.n, self.run.generator, self.device), 0
            yield self.order

    def minibatches(self, order: Tensor, state: Callable[[], dict]) -> Iterator[Tensor]:
        """Consecutive minibatches of `order` from the pass's position, no more than the budget's steps left; each
        one counts as a step, and `state()` (the attack's) is checkpointed when due after it."""
        limit = self.budget.max_steps
        batches = order.split(self.budget.batch_size)
        for i in range(self.position, len(batches)):
            if limit is not None and self.steps >= limit:
                return
            self.steps += 1
            yield batches[i]
            self.advance(i + 1, batches[i].numel(), state)

    def advance(self, position: int, images: int, state: Callable[[], dict]) -> None:
        """The pass reached `position` after `images` more images; checkpoint `state()` when `every` are unsaved."""
        self.position = position
        self._unsaved += images
        ckpt = self.run.checkpoint
        if ckpt is not None and ckpt.every and self._unsaved >= ckpt.every:
            self._save(state())

    def end_pass(self, record: dict, delta: Tensor, state: Callable[[], dict], *, advance: int = 1,
                 **postfix: str) -> None:
        """Judge δ after a pass, complete and keep its record, advance the bar, checkpoint `state()`."""
        self.passes += 1
        record.update(self.monitor.end_pass(delta))
        self.history.append(record)
        log.debug("%s pass %d: %s", self.run.name, self.passes, record)
        self.bar.update(advance)
        self.bar.set_postfix(**postfix)
        self.done = self.done or self.monitor.stop
        self.order, self.position = None, 0
        if self.run.checkpoint is not None:
            self._save(state())

    def finish(self) -> None:
        """Run no further pass."""
        self.done = True

    def _save(self, attack: dict) -> None:
        self.run.checkpoint.save({"loop": self._state(), "attack": attack})
        self._unsaved = 0

    def _state(self) -> dict:
        gen = self.run.generator
        return {"passes": self.passes, "steps": self.steps, "done": self.done, "history": self.history,
                "order": self.order, "position": self.position, "monitor": self.monitor.state_dict(),
                "generator": None if gen is None else gen.get_state(), "torch_rng": torch.get_rng_state()}

    def _load(self, state: dict) -> None:
        self.passes, self.steps, self.done = state["passes"], state["steps"], state["done"]
        self.history, self.position = list(state["history"]), state["position"]
        self.order = None if state["order"] is None else state["order"].to(self.device)
        self.monitor.load_state_dict(state["monitor"], self.device)
        if self.run.generator is not None:
            self.run.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])


def _shared_grad(J: Tensor, delta: Tensor) -> Tensor:
    """∇δ of ΣJ, averaged over torchrun ranks so that every rank takes the same step."""
    (grad,) = torch.autograd.grad(J.sum(), delta)
    return all_reduce_mean_(grad)


def ascend(model: nn.Module, data: CraftingSet, delta: Tensor, objective: Objective, step: Step, budget: Budget,
           run: RunOptions) -> CraftResult:
    """Maximise `objective` over δ (the starting [G,C,H,W], updated in place by `step`) by minibatch ascent over
    the crafting set, within `budget`."""
    x, y = data.x, data.y.to(data.x.device)
    groups = 1 if run.class_wise else delta.shape[0]  # one forward per sample class-wise, one per δ otherwise
    delta.requires_grad_(True)
    with frozen(model), PassLoop(model, budget, data.val, x.shape[0], run, x.device) as loop:
        clean = predict(model, x, budget.batch_size)
        state = _AscentState(delta, step, objective, loop.resumed)
        for order in loop:
            objective.start_pass(loop.passes)
            stats = state.stats = PassStats(groups, x.device, objective.target)
            state.continue_pass(loop.position > 0)
            for idx in loop.minibatches(order, state.state_dict):
                J, parts, logits = batch_objective(model, x[idx], y[idx], delta, objective, clean=clean[idx],
                                                   class_wise=run.class_wise)
                step.step(_shared_grad(J, delta))
                pred = logits.detach().argmax(-1)  # [G,b]
                objective.observe(pred, y[idx])
                stats.add(J, parts, pred, clean[idx])
            extra = objective.end_pass()
            if stats.batches == 0:
                break
            state.images += stats.seen
            record = stats.record(loop.passes + 1, step.current_step_size, **extra)
            step.end_pass()
            state.stats = None
            loop.end_pass(record, delta.detach(), state.state_dict,
                          advance=1 if budget.max_steps is None else stats.batches,
                          obj=f"{record['objective']:.3f}", fr=f"{record['fooling_rate']:.3f}")
    out = loop.monitor.result(delta.detach()).clone()
    return CraftResult(delta=out[0] if groups == 1 and not run.class_wise else out,
                       converged=loop.monitor.converged, passes=loop.passes, images_processed=state.images,
                       history=loop.history)


class _AscentState:
    """What an ascent run checkpoints besides the loop's own state: δ, the step, the objective, the images drawn and,
    within a pass, the pass's partial statistics; restored from `resumed` (a checkpoint's attack state) if given."""

    def __init__(self, delta: Tensor, step: Step, objective: Objective, resumed: Optional[dict]) -> None:
        self.delta, self.step, self.objective, self.resumed = delta, step, objective, resumed
        self.stats: Optional[PassStats] = None
        self.images = 0
        if resumed is not None:
            with torch.no_grad():
                delta.copy_(resumed["delta"].to(delta.device))
            step.load_state_dict(resumed["step"])
            objective.load_state_dict(resumed["objective"])
            self.images = resumed["images"]

    def continue_pass(self, mid_pass: bool) -> None:
        """At the start of the first pass run after a checkpoint taken in the middle of a pass: restore the pass's
        statistics."""
        if self.resumed is not None and mid_pass:
            self.stats.load_state_dict(self.resumed["stats"])
        self.resumed = None

    def state_dict(self) -> dict:
        return {"delta": self.delta.detach().clone(), "step": self.step.state_dict(),
                "objective": self.objective.state_dict(), "images": self.images,
                "stats": None if self.stats is None else self.stats.state_dict()}
