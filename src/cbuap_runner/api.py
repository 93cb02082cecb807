"""The Python API: one attack or one metric inside your own code or notebook, without Hydra or a run directory.

    from cbuap_runner import api
    crafted = api.craft("sgd_uap", model, x, y, eps=8 / 255, passes=10)   # or api.sgd_uap(model, x, y, eps=...)
    metrics = api.evaluate(model, x_test, y_test, crafted.delta)

`model` is any `nn.Module` that maps images in [0, 1] (float, or uint8 divided by 255) to logits; `x`/`y` are
tensors or a loader of (images, labels) batches. The keyword arguments are the attack's config keys
(`attack.<key>`: docs/method.md, which keys each option has; sections as dataclasses or dicts, e.g.
`balance={"lambda_div": 1.0}`). The attack runs through the same registry and crafting code as
`python -m cbuap_runner task=attack`, so a run and a call with the same settings, images and seed give the same δ.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Iterable

import torch
from torch import Tensor, nn

from .attacks import ATTACKS, attack_config
from .attacks import craft as _craft
from .metrics import best_start, evaluate_perturbation
from .schema import AttackConfig, to_plain

Images = Tensor | Iterable[tuple[Tensor, Tensor]]


@dataclass
class Crafted:
    """A crafted perturbation and its record."""

    delta: Tensor  # [C,H,W]; [K,C,H,W] for a class-wise attack
    config: AttackConfig
    record: dict[str, Any] = field(default_factory=dict)  # the config as plain data, the run's totals and history


def _tensors(x: Images, y: Tensor | None) -> tuple[Tensor, Tensor]:
    """Images as float [N,C,H,W] in [0,1] and labels int64 [N], from tensors or a loader of batches."""
    if isinstance(x, Tensor):
        if y is None:
            raise TypeError("y: labels are needed beside an image tensor")
        images, labels = x, y
    else:
        batches = list(x)
        images, labels = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    images = images.float().div(255) if images.dtype == torch.uint8 else images.float()
    return images, labels.long()


def _sections(name: str, values: dict[str, Any]) -> dict[str, Any]:
    """A section given as a dict becomes its dataclass (e.g. balance={"lambda_div": 1.0})."""
    defaults = ATTACKS[name].schema(name=name)
    out = dict(values)
    for key, value in values.items():
        current = getattr(defaults, key, None)
        if isinstance(value, dict) and dataclasses.is_dataclass(current):
            out[key] = dataclasses.replace(current, **value)
    return out


def _num_classes(model: nn.Module, x: Tensor) -> int:
    with torch.no_grad():
        was = model.training
        model.eval()
        try:
            return int(model(x[:1]).shape[-1])
        finally:
            model.train(was)


def craft(attack: str, model: nn.Module, x: Images, y: Tensor | None = None, *, eps: float,
          val: tuple[Tensor, Tensor] | None = None, seed: int = 0, num_classes: int | None = None,
          **keys: Any) -> Crafted:
    """Craft attack `attack` on (x, y) within `eps`; `val` (images, labels) feeds the stopping rule and picks the
    best of several starts (else the crafting images do); `seed` draws the pass orders and random starts."""
    cfg = attack_config(attack, eps=eps, **_sections(attack, keys))
    xs, ys = _tensors(x, y)
    k = num_classes or _num_classes(model, xs)
    cfg.check("attack", k)
    val_t = None if val is None else _tensors(*val)
    result = _craft(model, xs, ys, cfg, k, generator=torch.Generator().manual_seed(seed), val=val_t)
    delta, chosen = result.delta, {}
    if delta.dim() == 4 and not ATTACKS[attack].class_wise:
        best, rates = best_start(model, (val_t or (xs, ys))[0], delta, 500)
        delta, chosen = delta[best], {"best_start": best, "start_fooling_rates": rates}
    record = {"attack": attack, "config": to_plain(cfg), "converged": result.converged, "passes": result.passes,
              "images_processed": result.images_processed, **result.stats, **chosen, "history": result.history}
    return Crafted(delta=delta, config=cfg, record=record)


def evaluate(model: nn.Module, x: Images, y: Tensor | None, delta: Tensor, *, num_classes: int | None = None,
             class_wise: bool = False, batch_size: int = 500) -> dict[str, Any]:
    """The metrics of δ on (x, y): fooling rate, accuracy under attack, label entropies, per-class rates, ...
    (docs/method.md, Metrics); `class_wise` for a [K,C,H,W] class-wise δ."""
    xs, ys = _tensors(x, y)
    k = num_classes or _num_classes(model, xs)
    return evaluate_perturbation(model, xs, ys, delta, k, batch_size, class_wise=class_wise)


def __getattr__(name: str) -> Any:
    """`api.<attack>(model, x, y, eps=..., **keys)` for every registered attack."""
    if name in ATTACKS:
        def call(model: nn.Module, x: Images, y: Tensor | None = None, **kw: Any) -> Crafted:
            return craft(name, model, x, y, **kw)

        call.__name__ = call.__qualname__ = name
        call.__doc__ = f"api.craft({name!r}, model, x, y, eps=..., **keys)"
        return call
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
