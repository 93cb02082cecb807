"""Attack objectives: the clipped SGD-UAP loss (CE or CW margin, untargeted or targeted) and the
class-balanced CB-UAP objective J = L_atk + λ_div·L_div − λ_conf·L_conf − λ_pen·R_pen − λ_pull·L_pull
(docs/method.md, CB-UAP).

Logits arrive as [S,B,K]: S perturbations (M random starts, or 1) evaluated on the same B samples. Every
term is reduced per perturbation, so J is a vector [S] and summing it gives each δ_s its own mean-reduced
gradient. With all balance weights at zero (or before `balance_start`) the balance code is skipped
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
- balance schedule (`lambda_ramp`, `fooling_guard`, set by the engine through `scale` [S]): the balance
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
- targeted CE: ℓ = −max(CE(z, t), c) with c = −log(1 − e^{−β}), the analogue of clipping CE at β: a sample
  stops contributing once all but e^{−β} of its mass sits on t. Targeted CW: min(z_t − max_{k≠t} z_k, κ).
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ..schema import AttackConfig

log = logging.getLogger(__name__)

_REWEIGHT_FLOOR = 0.05


def _margin(logits: Tensor, cls: Tensor) -> Tensor:
    """max_{k≠c} z_k − z_c for each sample; logits [...,K], cls [...] broadcastable."""
    z_c = logits.gather(-1, cls.unsqueeze(-1)).squeeze(-1)
    others = logits.scatter(-1, cls.unsqueeze(-1), float("-inf"))
    return others.amax(-1) - z_c


def attack_loss(logits: Tensor, y: Tensor, cfg: AttackConfig) -> Tensor:
    """Per-sample clipped attack loss ℓ_i (to be maximised); logits [S,B,K], y [B] → [S,B]."""
    S, B, K = logits.shape
    if cfg.target is None:
        cls = y.unsqueeze(0).expand(S, B)
        if cfg.loss == "ce":
            ce = F.cross_entropy(logits.reshape(S * B, K), cls.reshape(-1), reduction="none").view(S, B)
            return ce.clamp(max=cfg.beta)
        return _margin(logits, cls).clamp(max=cfg.kappa)
    tgt = torch.full((S, B), cfg.target, dtype=torch.long, device=logits.device)
    if cfg.loss == "ce":
        ce = F.cross_entropy(logits.reshape(S * B, K), tgt.reshape(-1), reduction="none").view(S, B)
        return -ce.clamp(min=-math.log1p(-math.exp(-cfg.beta)))
    return (-_margin(logits, tgt)).clamp(max=cfg.kappa)


def balanced_targets(log_p: Tensor, y: Tensor, iters: int = 3) -> Tensor:
    """Wrong-class targets [S,B] from log-probabilities [S,B,K]: the row argmax of a Sinkhorn equipartition plan."""
    S, B, K = log_p.shape
    true = F.one_hot(y, K).bool().unsqueeze(0)
    plan = torch.softmax(log_p.masked_fill(true, float("-inf")).reshape(S, B * K), -1).view(S, B, K)
    for _ in range(iters):
        plan = plan / (plan.sum(1, keepdim=True).clamp_min(1e-30) * K)  # each class 1/K of the batch
        plan = plan / (plan.sum(2, keepdim=True).clamp_min(1e-30) * B)  # each image 1/B
    return plan.argmax(-1)


def _entropy(p: Tensor, log_p: Tensor) -> Tensor:
    """−Σ p log p over the last dim."""
    return -(p * log_p).sum(-1)


class UAPObjective:
    """J per perturbation; carries the balance state (EMA of q̄, running counts, class weights)."""

    def __init__(self, cfg: AttackConfig, num_classes: int, *, balanced: bool) -> None:
        self.cfg, self.b = cfg, cfg.balance
        self.K = num_classes
        lambdas = (self.b.lambda_div, self.b.lambda_conf, self.b.lambda_pen, self.b.lambda_pull)
        self.use_terms = balanced and any(v > 0 for v in lambdas)
        self.use_reweight = balanced and self.b.class_reweight
        self.use_dro = balanced and self.b.dro_eta is not None
        self.dro_logits = torch.zeros(num_classes)  # θ of the group-DRO class weights
        self.ema: Tensor | None = None  # [S,K]
        self.counts: Tensor | None = None  # [S,K] running adversarial-prediction counts
        self.class_weight: Tensor | None = None  # [K] for class_reweight
        self._fooled: Tensor | None = None  # [K] per-pass success counts by true class
        self._seen: Tensor | None = None

    @property
    def balanced(self) -> bool:
        """Whether any balance mechanism is configured."""
        return self.use_terms or self.use_reweight or self.use_dro

    def __call__(self, logits: Tensor, y: Tensor, *, balance_on: bool = True,
                 sample_weight: Tensor | None = None,
                 scale: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """J [S] and its detached parts (means over S) for logits [S,B,K] and labels y [B]; `scale` [S]
        (or a scalar tensor) multiplies the balance part of J (the λ schedule; None = 1)."""
        loss = attack_loss(logits, y, self.cfg)
        weight = sample_weight
        if balance_on and self.use_reweight and self.class_weight is not None:
            cw = self.class_weight[y]
            weight = cw if weight is None else weight * cw
        if balance_on and self.use_dro:
            dw = self._dro_weights(loss.detach(), y)[y]
            weight = dw if weight is None else weight * dw
        if weight is None:
            l_atk = loss.mean(-1)
        else:
            l_atk = (loss * weight).sum(-1) / weight.sum()
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

    def end_pass(self) -> None:
        """Turn the pass's per-class success rates into class weights (stays on device)."""
        if not self.use_reweight or self._fooled is None:
            return
        success = self._fooled / self._seen.clamp_min(1)
        w = 1.0 - success + _REWEIGHT_FLOOR
        self.class_weight = w * self.K / w.sum()
        self._fooled.zero_()
        self._seen.zero_()
