"""Two-stage CB-UAT: stage 1 refreshes a pool of M CB-UAPs against the frozen model; stage 2 trains on them.

Stage 1 (every `pool.refresh_every` epochs or iterations): `pool.refresh_steps` minibatch steps of the CB-UAP attack
(`training.adversary`, norm included) on all M members at once, warm-started from the pool, on a class-balanced
subset of the training split, with the network frozen (eval mode, running statistics untouched: the engine's
`frozen`), i.e. the model as every evaluation attack sees it. Under torchrun the refresh runs on the unwrapped
network and its seeds and data are the same on every rank, so every rank keeps the same pool (checked after
every refresh: a pool that differs between ranks raises).
Stage 2: sample i gets pool member m_i and the loss is the exact (1 − σ)·CE(clean) + σ·CE(x + δ_{m_i}) of
adversary.mixed_loss, the same loss as every other defence. `pool.member=random` draws m_i uniformly (from the
epoch generator); `pool.member=worst` takes the member with the highest CE on sample i, judged by M extra forwards
without gradient in eval mode (BatchNorm statistics untouched), the pool analogue of SAT's max over its heap.
Seeds: the refresh subset and the attack's generator derive from the run's `seed` and the refresh count.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
import torch.nn.functional as F
from omegaconf import II
from torch import nn

from .. import dist
from ..attacks import apply_delta, craft
from ..attacks.cb_uap import BalanceConfig, CBUAPConfig
from ..data import balanced_subset
from ..schema import AdversarialConfig, PoolMember, RefreshUnit, changed_keys, fail, one_of, positive
from .adversary import Adversary, mixed_loss
from .loop import unwrap

log = logging.getLogger(__name__)


@dataclass
class PoolConfig:
    """Stage 1: a pool of CB-UAPs refreshed against the frozen model."""

    size: int = 4  # M perturbations in the pool
    # the schedule chosen on validation (table=cb_uat_variants): 5 steps every 43 iterations, about ten refreshes per
    # epoch of 55,000 images, beat one 20-step refresh per epoch on clean and worst-case validation accuracy
    refresh_every: int = 43  # refresh the pool every k units
    refresh_unit: RefreshUnit = RefreshUnit.iter
    refresh_steps: int = 5  # S minibatch steps per refresh
    member: PoolMember = PoolMember.random  # stage 2 trains each sample on a random member, or on its worst one


def _pool_attack() -> CBUAPConfig:
    """Stage 1's CB-UAP: the balance weights chosen for CB-UAT on validation (table=cb_uat_variants)."""
    return CBUAPConfig(name="cb_uap", eps=II("training.eps"),
                       balance=BalanceConfig(lambda_div=1.0, lambda_pen=1.0, lambda_pull=0.0))


# what a pool refresh cannot honour: it runs training.pool.refresh_steps minibatch steps of one pass on
# refresh_steps · batch_size images of its own choosing, with no validation split and no pass schedule
REFRESH_UNREAD = ("passes", "restarts", "crafting_images", "crafting_per_class", "patience", "tol", "fooling_target",
                  "step_decay", "balance.start", "balance.stop", "balance.lambda_ramp")


@dataclass
class CBUATConfig(AdversarialConfig):
    pool: PoolConfig = field(default_factory=PoolConfig)
    adversary: CBUAPConfig = field(default_factory=_pool_attack)  # stage 1's attack, its threat model included

    def check(self, num_classes: int) -> None:
        super().check(num_classes)
        for key in ("size", "refresh_every", "refresh_steps"):
            positive(f"training.pool.{key}", getattr(self.pool, key))
        one_of("training.adversary.name", self.adversary.name, ("cb_uap",))
        for key, pool_value in (("num_starts", 1), ("init", "zero")):  # the pool sets them (training.pool.size)
            if getattr(self.adversary, key) != pool_value:
                fail(f"training.adversary.{key}", getattr(self.adversary, key),
                     "training=cb_uat sets it from its pool (training.pool.size, uniform starts)")
        self._refuse_pass_keys()
        self.adversary.check("training.adversary", num_classes)

    def _refuse_pass_keys(self) -> None:
        usual = _pool_attack()
        for key, value in changed_keys(self.adversary, usual, "training.adversary"):
            if key.removeprefix("training.adversary.") in REFRESH_UNREAD:
                fail(key, value, "training=cb_uat refreshes its pool with training.pool.refresh_steps minibatch "
                     "steps of one pass (no passes, stopping rule or pass schedule); set training.pool.* instead")


class CBUAT(Adversary):
    """Pool [M,C,H,W] of class-balanced UAPs, warm-started at every refresh; σ-mixed loss."""

    def __init__(self, cfg, num_classes, input_shape, device, seed: int = 0):
        super().__init__(cfg, num_classes, input_shape, device, seed)
        # init="uniform": the first refresh starts every member from its own random point in the ε-ball. The
        # pool used to start as M zeros and be warm-started from itself, and since all members see the same
        # batches, M identical zeros gave M identical CB-UAPs forever (the pool collapsed to one δ).
        self.attack_cfg = dataclasses.replace(cfg.adversary, name="cb_uap", num_starts=cfg.pool.size, init="uniform")
        self.pool = torch.zeros((cfg.pool.size, *input_shape), device=device)
        self.refreshes = 0
        self._train: Any = None  # the training split (data.Split or streamed)
        self._generator: Optional[torch.Generator] = None

    def on_epoch_start(self, model, epoch, train, generator):
        self._train, self._generator = train, generator
        if self.cfg.pool.refresh_unit == "epoch" and epoch % self.cfg.pool.refresh_every == 0:
            self.refresh(model)

    def refresh_seeds(self) -> tuple[int, int]:
        """Seeds of the next refresh's crafting subset and attack generator (from the run's seed and the count)."""
        base = (self.seed * 1_000_003 + self.refreshes) * 2
        return base, base + 1

    def refresh(self, model: nn.Module) -> None:
        """Stage 1: `pool.refresh_steps` minibatch steps of CB-UAP on every pool member, the network frozen."""
        n = min(len(self._train), self.cfg.pool.refresh_steps * self.attack_cfg.batch_size)
        subset_seed, attack_seed = self.refresh_seeds()
        part = self._train.subset(balanced_subset(self._train.y, n, seed=subset_seed)).resident()
        g = torch.Generator().manual_seed(attack_seed)
        init = self.pool if self.refreshes > 0 else None  # None: independent uniform starts (see __init__)
        result = craft(unwrap(model), part.float_x(), part.y, self.attack_cfg, self.num_classes,
                       generator=g, init=init, max_steps=self.cfg.pool.refresh_steps)
        self.pool.copy_(result.delta.detach().view_as(self.pool))
        self.refreshes += 1
        if not dist.same_on_all_ranks([self.pool]):  # one checksum all-gather; True outside torchrun
            raise RuntimeError(f"CB-UAT refresh {self.refreshes}: the ranks crafted different pools")

    def loss(self, model, x, y, step):
        if self.cfg.pool.refresh_unit == "iter" and step % self.cfg.pool.refresh_every == 0:
            self.refresh(model)
        if self.cfg.pool.member == "worst":
            member = self.worst_member(model, x, y)
        else:
            member = torch.randint(0, self.cfg.pool.size, (x.shape[0],), generator=self._generator).to(x.device)
        return mixed_loss(model, x, apply_delta(x, self.pool, member), y, self.cfg.sigma)

    @torch.no_grad()
    def worst_member(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per sample, the pool member with the highest cross-entropy (the network in eval mode for the choice)."""
        net = unwrap(model)
        was_training = net.training
        net.eval()
        try:  # one forward of M·B images, as the attack engine does for its starts
            logits = net((x.unsqueeze(0) + self.pool.unsqueeze(1)).clamp(0, 1).flatten(0, 1))
        finally:
            net.train(was_training)
        losses = F.cross_entropy(logits, y.repeat(len(self.pool)), reduction="none").view(len(self.pool), -1)
        return losses.argmax(0)

    def state_dict(self) -> dict[str, Any]:
        return {"pool": self.pool.detach().cpu(), "refreshes": self.refreshes}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pool.copy_(state["pool"].to(self.device))
        self.refreshes = int(state["refreshes"])

    def finite(self) -> bool:
        return bool(torch.isfinite(self.pool).all())
