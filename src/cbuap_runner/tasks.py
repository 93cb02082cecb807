"""The four tasks (train, attack, evaluate, pipeline) on top of data, networks, perturbations and defences."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .attacks import ATTACKS, attack_for
from .context import Context, scalars
from .models import read_model_file
from .networks import obtain_model, train_model
from .perturbations import (
    craft_and_evaluate,
    eval_split,
    evaluate_on,
    load_perturbation,
    perturbation_provenance,
    save_perturbation,
    stored_class_wise,
)
from .record import PER_CLASS, per_class_to_file
from .schema import AttackConfig

log = logging.getLogger(__name__)


def task_train(ctx: Context) -> dict[str, Any]:
    data = ctx.data()
    _, metrics = train_model(ctx, data)
    return metrics


def task_evaluate(ctx: Context) -> dict[str, Any]:
    data = ctx.data()
    model, model_path = obtain_model(ctx, data)
    test = eval_split(ctx, data)
    if ctx.cfg.perturbation is None:
        clean = {**evaluate_on(ctx, model, test, data.num_classes), **training_cost(model_path)}
        return per_class_to_file(clean, data.num_classes, ctx.run_dir, PER_CLASS)
    blob = load_perturbation(ctx.cfg.perturbation, data)
    ctx.provenance["perturbation"] = perturbation_provenance(ctx.cfg.perturbation, blob)
    delta = blob["delta"].to(ctx.device)
    crafted_after = (blob.get("space") or {}).get("added_after")
    if crafted_after is not None and crafted_after != data.preprocessing:
        log.warning("perturbation=%s was crafted on images prepared as %s; these are prepared as %s",
                    ctx.cfg.perturbation, crafted_after, data.preprocessing)
    metrics = evaluate_on(ctx, model, test, data.num_classes, delta, stored_class_wise(blob))
    crafted_on = blob.get("model_checkpoint") or ((blob.get("space") or {}).get("network") or {}).get("label")
    metrics.update(perturbation=ctx.cfg.perturbation, perturbation_attack=blob.get("attack"),
                   source_model=crafted_on, target_model=model_path,
                   same_preparation=None if crafted_after is None else crafted_after == data.preprocessing)
    return per_class_to_file(metrics, data.num_classes, ctx.run_dir, PER_CLASS)


def training_cost(model_path: str) -> dict[str, Any]:
    """What training the evaluated network cost, as its model file says (`train_seconds`, summed over resumed
    sessions, and `epochs`); nothing for a network this project did not train (a model source's)."""
    if not Path(model_path).is_file():
        return {}
    stored = read_model_file(model_path).get("metrics") or {}
    return {k: stored[k] for k in ("train_seconds", "epochs") if k in stored}


def task_attack(ctx: Context) -> dict[str, Any]:
    data = ctx.data()
    model, model_path = obtain_model(ctx, data)
    metrics, delta = craft_and_evaluate(ctx, model, data, ctx.cfg.attack)
    save_perturbation(ctx, delta, ctx.cfg.attack, (model, model_path), data, metrics)
    ctx.tracker.log_table("result", [{"attack": ctx.cfg.attack.name, **scalars(metrics)}])
    return per_class_to_file(metrics, data.num_classes, ctx.run_dir, PER_CLASS)


def pipeline_attacks(base: AttackConfig, names: list[str]) -> dict[str, AttackConfig]:
    """The attacks `names` (pipeline.attacks) under `base`'s shared budget, each with `base`'s values of the keys
    their schemas share (attacks.attack_for): the same crafting images, passes and stopping rule for all."""
    return {name: attack_for(base, name) for name in names}


def task_pipeline(ctx: Context) -> dict[str, Any]:
    """Train a defence, then attack the final model white-box with each attack of pipeline.attacks under one
    crafting budget; report each, and the worst attack and the worst class over the universal ones of that list (one δ for every image; a
    class-wise attack picks δ by the true label, so it is reported beside them, not in the worst case), all on the
    same test images."""
    data = ctx.data()
    model, train_metrics = train_model(ctx, data)
    model_path = str(ctx.run_dir / "model.pt")
    test = eval_split(ctx, data)
    clean = evaluate_on(ctx, model, test, data.num_classes)
    out: dict[str, Any] = {"clean_acc": clean["clean_acc"], "train_seconds": train_metrics["train_seconds"],
                           "per_class_clean_acc": clean["per_class_acc"], "num_images": clean["num_images"],
                           **{k: v for k, v in train_metrics.items() if k.startswith("ddp_")}}
    per_attack = {}
    out["pipeline_attacks"] = list(ctx.cfg.pipeline.attacks)
    for name, attack in pipeline_attacks(ctx.cfg.attack, out["pipeline_attacks"]).items():
        metrics, delta = craft_and_evaluate(ctx, model, data, attack, prefix=f"{name}/")
        save_perturbation(ctx, delta, attack, (model, model_path), data, metrics, stem=f"perturbation_{name}")
        per_attack[name] = metrics
        out[f"adv_acc_{name}"] = metrics["adv_acc"]
        out[f"fooling_rate_{name}"] = metrics["fooling_rate"]
        out[f"label_entropy_{name}"] = metrics["label_entropy"]
    universal = {name: m for name, m in per_attack.items() if not ATTACKS[name].class_wise}
    out.update(worst_case(universal))
    ctx.tracker.log_table("attacks", [{"attack": name, **scalars(m)} for name, m in per_attack.items()])
    out = per_class_to_file(out, data.num_classes, ctx.run_dir, PER_CLASS)
    out["attacks"] = {name: per_class_to_file(m, data.num_classes, ctx.run_dir, f"{PER_CLASS}_{name}")
                      for name, m in per_attack.items()}
    return out


def worst_case(per_attack: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The attack with the lowest accuracy under attack, and the lowest per-class accuracy over every
    attack and class (with the attack and class it came from)."""
    worst = min(per_attack, key=lambda n: per_attack[n]["adv_acc"])
    cells = [(acc, name, k) for name, m in per_attack.items() for k, acc in enumerate(m["per_class_adv_acc"])
             if acc is not None]
    acc, attack, cls = min(cells)
    per_class = [min(v for v in column if v is not None) if any(v is not None for v in column) else None
                 for column in zip(*(m["per_class_adv_acc"] for m in per_attack.values()))]
    return {"worst_attack": worst, "worst_adv_acc": per_attack[worst]["adv_acc"], "worst_class_adv_acc": acc,
            "worst_class_attack": attack, "worst_class": cls, "per_class_worst_adv_acc": per_class}


@dataclass(frozen=True)
class TaskSpec:
    """A task: what it runs and which attacks it crafts."""

    run: Callable[[Context], dict[str, Any]]
    attacks: str  # none | one (attack=) | declared (pipeline.attacks, derived from attack= by attack_for)


# the only list of task names (`task=` options)
TASKS: dict[str, TaskSpec] = {
    "train": TaskSpec(task_train, attacks="none"),
    "attack": TaskSpec(task_attack, attacks="one"),
    "evaluate": TaskSpec(task_evaluate, attacks="none"),
    "pipeline": TaskSpec(task_pipeline, attacks="declared"),
}
