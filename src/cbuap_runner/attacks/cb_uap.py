"""CB-UAP: SGD-UAP's clipped loss plus class-balance terms, J = L_atk + λ_div·L_div − λ_conf·L_conf − λ_pen·R_pen
− λ_pull·L_pull (docs/method.md, CB-UAP). Its schema (`CBUAPConfig`: SGD-UAP's keys and attack.balance.*), its
objective with the pass window and λ schedule of the balance terms, and its crafting function.

With all balance weights at zero (or outside the passes [balance.start, balance.stop)) the balance code is skipped
entirely, so CB-UAP executes exactly the tensor ops of SGD-UAP and yields a bit-identical δ.

Choices where the paper is silent (all documented in docs/method.md, CB-UAP, and the README table of switches):
- calibration: `none` uses softmax(z); `temperature` uses softmax(z/T); `exclude_true` uses softmax(z/T)
  with the true class removed and the rest renormalised (T = 1 by default).
- ema: q̄ ← d·q̄_prev + (1−d)·q̄_batch, history detached, state kept per start across batches and passes;
  the first active batch initialises it. The penalty then also uses the EMA q̄.
- penalty `frequency`: a running count c_k of adversarial predictions (per start, since the balance terms
  switched on) gives w_k = K·(c_k+1)/(Σc+K), a smoothed running-frequency weight that is stable under small
  batches (the batch-histogram `hinge` weights flicker at K = 100).
- class_reweight: after each pass, the per-class attack success rate s_k (prediction ≠ true label, over
  all starts) sets w_k ∝ (1 − s_k + 0.05), normalised to mean 1 over classes; the attack loss becomes
  Σ_i w_{y_i}ℓ_i / Σ_i w_{y_i}, so classes that resist most get most weight. The first pass is unweighted.
- balance schedule (`lambda_ramp`, `fooling_guard`, BalanceSchedule, through `scale` [S]): the balance
  part of J is multiplied by a factor in [0, 1]. `lambda_ramp` = R ramps it linearly over the first R
  balanced passes; `fooling_guard` = g makes it a fooling-rate constraint: with f the running (EMA over
  batches) crafting fooling rate of a start and f* its best value so far (plain passes included), the
  factor is clamp((f − (f* − g)) / g, 0, 1): full balance weights while the attack is as strong as it
  has been, none once it has lost g, linear in between. scale = None is exactly the unscaled objective.
- balanced targets (`lambda_pull`): each batch, a Sinkhorn equipartition plan (3 alternating normalisations of
  the joint softmax with the true class masked: every wrong class receives 1/K of the batch, every image 1/B)
  assigns image i the target t_i = argmax_k of its row; L_pull = mean_i 1[fooled_i]·CE(z_i, t_i) pulls only the
  images the δ already fools (pred ≠ y), so images it does not fool keep the untargeted push alone. The plan uses
  the detached probabilities; the targets change with δ from batch to batch (Asano et al. 2020, SeLa, §3.1, for
  the equipartition; its use as an attack target is this runner's).
- group DRO (`dro_eta` = η): class weights w = K·softmax(θ) on the attack loss, θ_k ← θ_k − η·(L̄_k − mean L̄)
  after each batch from the batch's mean loss L̄_k of each present class (Sagawa et al. 2020, Alg. 1, with
  classes as the groups): the least-fooled classes gain weight. Applied on top of `class_reweight` when both are set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..schema import Calibration, Penalty, PenaltyWeights, fail, fraction, non_negative, positive
from .ascent import craft_by_ascent
from .engine import CraftResult
from .objectives import ClippedLoss
from .sgd_uap import SGDUAPConfig

_REWEIGHT_FLOOR = 0.05


@dataclass
class BalanceConfig:
    """The class-balance terms. The weights are the setting chosen by table=tune_cb_uap on the validation split;
    every weight at zero, class_reweight off and dro_eta null reproduce sgd_uap."""

    calibration: Calibration = Calibration.exclude_true
    temperature: float = 1.0
    lambda_div: float = 0.5  # diversity H(mean q) of the calibrated distributions
    lambda_conf: float = 0.0  # sharpness of each calibrated distribution
    lambda_pen: float = 0.5  # penalty on the classes above 1/K of the mean q
    penalty: Penalty = Penalty.hinge
    penalty_weights: PenaltyWeights = PenaltyWeights.indicator  # hinge only
    ema: bool = False
    ema_decay: float = 0.9
    start: int = 0  # passes of plain SGD-UAP before the balance terms switch on
    stop: Optional[int] = None  # switch the balance terms off again from this pass on (null = never)
    class_reweight: bool = False  # reweight the attack loss towards classes that are fooled least
    lambda_ramp: int = 0  # ramp the balance weights linearly over this many balanced passes (0 = full at once)
    fooling_guard: Optional[float] = None  # scale the balance terms down as the crafting fooling rate drops up to this below its best
    lambda_pull: float = 0.0  # pull each fooled image toward its wrong-class target, targets balanced over classes (Sinkhorn)
    dro_eta: Optional[float] = None  # group-DRO weights on the attack loss: step size of the per-batch class-weight update

    def check(self, prefix: str) -> None:
        positive(f"{prefix}.temperature", self.temperature)
        if self.temperature < 1:
            fail(f"{prefix}.temperature", self.temperature, "must be >= 1")
        for key in ("lambda_div", "lambda_conf", "lambda_pen", "lambda_pull", "start", "lambda_ramp"):
            non_negative(f"{prefix}.{key}", getattr(self, key))
        if self.dro_eta is not None:
            positive(f"{prefix}.dro_eta", self.dro_eta)
        if self.stop is not None and self.stop <= self.start:
            fail(f"{prefix}.stop", self.stop, "must exceed start (or be null)")
        if self.fooling_guard is not None:
            fraction(f"{prefix}.fooling_guard", self.fooling_guard, " (a fooling-rate margin) or be null")
        fraction(f"{prefix}.ema_decay", self.ema_decay, "")


@dataclass
class CBUAPConfig(SGDUAPConfig):
    balance: BalanceConfig = field(default_factory=BalanceConfig)

    def check(self, prefix: str, num_classes: int) -> None:
        super().check(prefix, num_classes)
        self.balance.check(f"{prefix}.balance")


def balanced_targets(log_p: Tensor, y: Tensor, iters: int = 3) -> Tensor:
    """Wrong-class targets [S,B] from log-probabilities [S,B,K]: the row argmax of a Sinkhorn equipartition plan."""
    S, B, K = log_p.shape
    true = F.one_hot(y, K).bool().unsqueeze(0)
    plan = torch.softmax(log_p.masked_fill(true, float("-inf")).reshape(S, B * K), -1).view(S, B, K)
    for _ in range(iters):
        plan = plan / (plan.sum(1, keepdim=True).clamp_min(1e-30) * K)  # each class 1/K of the batch
        plan = plan / (plan.sum(2, keepdim=True).clamp_min(1e-30) * B)  # each image 1/B
    return plan.argmax(-1)


def _on(value: object, device: torch.device) -> object:
    """A restored tensor on `device` (other values as they are)."""
    return value.to(device) if isinstance(value, Tensor) else value


def _entropy(p: Tensor, log_p: Tensor) -> Tensor:
    """−Σ p log p over the last dim."""
    return -(p * log_p).sum(-1)



class BalanceSchedule:
    """The factor on the balance part of J (module docstring): a linear ramp over the first `lambda_ramp` balanced
    passes times, with `fooling_guard` = g, clamp((f − (f* − g)) / g, 0, 1) where f is an EMA (decay 0.8, over
    batches, the current batch at the current δ included) of each start's crafting fooling rate and f* its running
    maximum. `factor` is None when neither is configured, so the objective runs its unscaled ops. No host syncs."""

    EMA_DECAY = 0.8

    def __init__(self, balance: BalanceConfig, groups: int, device: torch.device) -> None:
        self.ramp, self.guard = balance.lambda_ramp, balance.fooling_guard
        self.start = balance.start
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

    def state_dict(self) -> dict:
        return {"fr": self.fr, "best": self.best}

    def load_state_dict(self, state: dict) -> None:
        self.fr, self.best = _on(state["fr"], self.best.device), state["best"].to(self.best.device)


class CBObjective:
    """J per perturbation; carries the balance state (EMA of q̄, running counts, class weights) and the pass
    window and λ schedule of the balance terms (a crafting-loop Objective, engine.py)."""

    def __init__(self, cfg: CBUAPConfig, num_classes: int, groups: int, device: torch.device) -> None:
        self.b, self.device = cfg.balance, device
        self.K = num_classes
        self.clipped = ClippedLoss(cfg.loss, cfg.beta, cfg.kappa, cfg.target)
        self.target = cfg.target
        lambdas = (self.b.lambda_div, self.b.lambda_conf, self.b.lambda_pen, self.b.lambda_pull)
        self.use_terms = any(v > 0 for v in lambdas)
        self.use_reweight = self.b.class_reweight
        self.use_dro = self.b.dro_eta is not None
        schedule = BalanceSchedule(self.b, groups, device) if self.use_terms else None
        self.schedule = schedule if schedule is not None and schedule.active else None
        self.pass_idx, self.on = 0, True
        self.dro_logits = torch.zeros(num_classes)  # θ of the group-DRO class weights
        self.ema: Tensor | None = None  # [S,K]
        self.counts: Tensor | None = None  # [S,K] running adversarial-prediction counts
        self.class_weight: Tensor | None = None  # [K] for class_reweight
        self._fooled: Tensor | None = None  # [K] per-pass success counts by true class
        self._seen: Tensor | None = None

    STATE = ("pass_idx", "on", "dro_logits", "ema", "counts", "class_weight", "_fooled", "_seen")

    def state_dict(self) -> dict:
        """The balance state between batches and passes, and the λ schedule's."""
        state = {name: getattr(self, name) for name in self.STATE}
        return {**state, "schedule": None if self.schedule is None else self.schedule.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        for name in self.STATE:
            setattr(self, name, _on(state[name], self.device))
        if self.schedule is not None:
            self.schedule.load_state_dict(state["schedule"])

    @property
    def balanced(self) -> bool:
        """Whether any balance mechanism is configured."""
        return self.use_terms or self.use_reweight or self.use_dro

    def start_pass(self, pass_idx: int) -> None:
        """The balance terms apply in the passes [balance.start, balance.stop)."""
        stop = self.b.stop if self.b.stop is not None else math.inf
        self.pass_idx, self.on = pass_idx, self.b.start <= pass_idx < stop

    def __call__(self, logits: Tensor, y: Tensor, *, clean: Tensor,
                 weight: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """J [S] and its parts for the batch; with a λ schedule the batch's fooled fraction at the current δ
        (against the clean predictions `clean`) updates it first, and its factor then scales the balance terms."""
        scale = None
        if self.schedule is not None:
            self.schedule.observe((logits.detach().argmax(-1) != clean).float().mean(1))
            if self.on:
                scale = self.schedule.factor(self.pass_idx)
        return self.terms(logits, y, balance_on=self.on, sample_weight=weight, scale=scale)

    def terms(self, logits: Tensor, y: Tensor, *, balance_on: bool = True, sample_weight: Tensor | None = None,
              scale: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """J [S] and its detached parts (means over S) for logits [S,B,K] and labels y [B]; `scale` [S]
        (or a scalar tensor) multiplies the balance part of J (the λ schedule; None = 1)."""
        loss = self.clipped.per_sample(logits, y)
        weight = sample_weight
        if balance_on and self.use_reweight and self.class_weight is not None:
            cw = self.class_weight[y]
            weight = cw if weight is None else weight * cw
        if balance_on and self.use_dro:
            dw = self._dro_weights(loss.detach(), y)[y]
            weight = dw if weight is None else weight * dw
        l_atk = ClippedLoss.reduce(loss, weight)
        parts = {"l_atk": l_atk.detach().mean()}
        if not (balance_on and self.use_terms):
            return l_atk, parts
        l_div, l_conf, r_pen = self._balance_terms(logits, y)
        c = self.b
        balance = c.lambda_div * l_div - c.lambda_conf * l_conf - c.lambda_pen * r_pen
        if c.lambda_pull > 0:
            l_pull = self._pull_term(logits, y)
            balance = balance - c.lambda_pull * l_pull
            parts["l_pull"] = l_pull.detach().mean()
        J = l_atk + (balance if scale is None else scale * balance)
        parts.update(l_div=l_div.detach().mean(), l_conf=l_conf.detach().mean(), r_pen=r_pen.detach().mean())
        if scale is not None:
            parts["balance_scale"] = scale.detach().float().mean()
        return J, parts

    def _calibrated(self, logits: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """q_i and log q_i (log 0 replaced by 0) per the calibration switch; [S,B,K] each."""
        c = self.b
        z = logits if c.calibration == "none" else logits / c.temperature
        if c.calibration != "exclude_true":
            log_q = F.log_softmax(z, -1)
            return log_q.exp(), log_q
        mask = F.one_hot(y, self.K).bool().unsqueeze(0).expand_as(z)
        log_q = F.log_softmax(z.masked_fill(mask, float("-inf")), -1)
        return log_q.exp(), log_q.masked_fill(mask, 0.0)

    def _balance_terms(self, logits: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """L_div = H(q̄), L_conf = mean_i H(q_i), R_pen = Σ_k w_k relu(q̄_k − 1/K)², each [S]."""
        c = self.b
        q, log_q = self._calibrated(logits, y)
        l_conf = _entropy(q, log_q).mean(-1)
        q_bar = q.mean(1)
        if c.ema:
            if self.ema is not None:
                q_bar = c.ema_decay * self.ema + (1 - c.ema_decay) * q_bar
            self.ema = q_bar.detach()
        l_div = _entropy(q_bar, q_bar.clamp_min(1e-12).log())
        r_pen = torch.zeros_like(l_div)
        if c.penalty != "none" and c.lambda_pen > 0:
            w = self._penalty_weights(logits)
            r_pen = (w * F.relu(q_bar - 1.0 / self.K).pow(2)).sum(-1)
        return l_div, l_conf, r_pen

    def _pull_term(self, logits: Tensor, y: Tensor) -> Tensor:
        """L_pull [S]: mean over the batch of 1[fooled_i]·CE(z_i, t_i), t the balanced targets."""
        log_p = F.log_softmax(logits, -1)
        targets = balanced_targets(log_p.detach(), y)
        fooled = (logits.detach().argmax(-1) != y).to(logits.dtype)
        return (fooled * -log_p.gather(-1, targets.unsqueeze(-1)).squeeze(-1)).mean(-1)

    def _dro_weights(self, loss: Tensor, y: Tensor) -> Tensor:
        """Update θ from the batch's per-class mean loss (loss [S,B], detached) and return the weights [K]."""
        K = self.K
        theta = self.dro_logits = self.dro_logits.to(loss.device)
        total = torch.zeros(K, device=loss.device).scatter_add_(0, y, loss.mean(0))
        count = torch.zeros(K, device=loss.device).scatter_add_(0, y, torch.ones_like(y, dtype=loss.dtype))
        present = (count > 0).to(loss.dtype)
        mean_k = total / count.clamp_min(1)
        centred = (mean_k - (mean_k * present).sum() / present.sum()) * present
        theta.sub_(self.b.dro_eta * centred).sub_(theta.max())
        return K * torch.softmax(theta, 0)

    def _penalty_weights(self, logits: Tensor) -> Tensor:
        """w_k [S,K] from the hard histogram of the current adversarial predictions (or a running count)."""
        onehot = F.one_hot(logits.detach().argmax(-1), self.K).to(logits.dtype)  # [S,B,K]
        if self.b.penalty == "frequency":
            batch = onehot.sum(1)
            self.counts = batch if self.counts is None else self.counts + batch
            return self.K * (self.counts + 1) / (self.counts.sum(-1, keepdim=True) + self.K)
        h = onehot.mean(1)
        if self.b.penalty_weights == "indicator":
            return (h > 1.0 / self.K).to(logits.dtype)
        return h * self.K

    def observe(self, adv_pred: Tensor, y: Tensor) -> None:
        """Accumulate per-class attack success (pred ≠ y) for class_reweight; adv_pred [S,B]."""
        if not self.use_reweight:
            return
        if self._fooled is None:
            self._fooled = torch.zeros(self.K, device=y.device)
            self._seen = torch.zeros(self.K, device=y.device)
        S = adv_pred.shape[0]
        self._fooled.scatter_add_(0, y, (adv_pred != y).float().sum(0))
        self._seen.scatter_add_(0, y, torch.full_like(y, S, dtype=torch.float))

    def end_pass(self) -> dict:
        """Turn the pass's per-class success rates into class weights (stays on device); the pass record says
        whether the balance terms applied."""
        record = {"balance_on": self.on and self.balanced}
        if not self.use_reweight or self._fooled is None:
            return record
        success = self._fooled / self._seen.clamp_min(1)
        w = 1.0 - success + _REWEIGHT_FLOOR
        self.class_weight = w * self.K / w.sum()
        self._fooled.zero_()
        self._seen.zero_()
        return record


def craft_cb_uap(model: nn.Module, x: Tensor, y: Tensor, cfg: CBUAPConfig, num_classes: int,
                 **kw) -> CraftResult:
    """CB-UAP: the SGD-UAP skeleton with the class-balance terms."""
    objective = CBObjective(cfg, num_classes, cfg.num_starts, x.device)
    return craft_by_ascent(model, x, y, cfg, objective, num_deltas=cfg.num_starts, **kw)
