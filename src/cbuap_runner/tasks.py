"""The four tasks (train, attack, evaluate, pipeline) on top of data, models, attacks and defences."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from . import dist, figures
from .attacks import ATTACKS, apply_delta, attack_for, craft
from .data import DataBundle, Split, balanced_subset, load_data
from .errors import UserError
from .io import atomic_path, safe_torch_load, torch_save
from .metrics import evaluate_clean, evaluate_perturbation, fooling_rates
from .models import build_model, load_model, prepare, read_model_file, save_model
from .progress import progress_enabled
from .schema import AttackConfig, Config, to_plain
from .tracking.local import forget_rows
from .training import make_adversary, read_settings
from .training.loop import fit

log = logging.getLogger(__name__)


@dataclass
class Context:
    """What every task needs: the validated config, where to write, the device and the tracker."""

    cfg: Config
    run_dir: Path
    device: torch.device
    tracker: Any

    def data(self) -> DataBundle:
        return load_data(self.cfg.dataset, self.cfg.cache_dir, self.cfg.seed, self.device)


# ---------------------------------------------------------------- models


def _model_cache_path(cfg: Config) -> Path:
    """Cache slot of the model that cfg's dataset + model + training + seed would train."""
    dataset = {k: v for k, v in to_plain(cfg.dataset).items() if k not in ("root", "download", "classes")}
    model = {"name": cfg.model.name}
    training = read_settings(to_plain(cfg.training))
    key = json.dumps({"dataset": dataset, "model": model, "training": training, "seed": cfg.seed}, sort_keys=True)
    digest = hashlib.sha1(key.encode()).hexdigest()[:12]
    return Path(cfg.cache_dir).expanduser() / "models" / f"{cfg.dataset.name}-{cfg.model.name}-{cfg.training.name}-{digest}" / "model.pt"


def _check_model_fits(path: str, data: DataBundle, key: str) -> None:
    blob = read_model_file(path, key)
    if tuple(blob["input_shape"]) != tuple(data.input_shape) or int(blob["num_classes"]) != data.num_classes:
        raise UserError(
            f"{key}={path!r}: model takes {tuple(blob['input_shape'])} with {blob['num_classes']} classes, "
            f"the dataset has {tuple(data.input_shape)} with {data.num_classes}; give a model trained on this dataset")


def train_model(ctx: Context, data: DataBundle) -> tuple[nn.Module, dict[str, Any]]:
    """Train cfg.training's defence on the data; writes checkpoint.pt every epoch and model.pt at the end."""
    cfg = ctx.cfg
    model = build_model(cfg.model.name, data.num_classes, data.input_shape, list(cfg.dataset.mean),
                        list(cfg.dataset.std)).to(ctx.device)
    if cfg.training.init_checkpoint:
        _check_model_fits(cfg.training.init_checkpoint, data, "training.init_checkpoint")
        model.load_state_dict(read_model_file(cfg.training.init_checkpoint, "training.init_checkpoint")["state_dict"])
    model = _prepared(cfg, model)
    adversary = make_adversary(cfg.training.name, cfg.training, data.num_classes, data.input_shape, ctx.device,
                               seed=cfg.seed)
    result = fit(model, adversary, data, cfg.dataset, cfg.training, ctx.run_dir, cfg.seed, ctx.device,
                 lambda row: ctx.tracker.log(row, step=row["epoch"]), resume=cfg.resume,
                 eval_batch_size=cfg.eval.batch_size)
    history = result.pop("history")
    if dist.world_size() > 1:
        result["ddp_world_size"] = dist.world_size()
        result["ddp_weights_identical"] = dist.same_on_all_ranks(list(model.state_dict().values()))
    if dist.is_main():
        save_model(str(ctx.run_dir / "model.pt"), model, to_plain(cfg.model), cfg.dataset.name, data.num_classes,
                   data.input_shape, {k: v for k, v in result.items() if not isinstance(v, list)})
        ctx.tracker.log_artifact(ctx.run_dir / "model.pt", name=f"model-{cfg.dataset.name}-{cfg.model.name}",
                                 type="model", metadata={"training": cfg.training.name, **_scalars(result)})
    return model.eval(), {**result, "final_train_acc": history[-1]["train_acc"] if history else None}


def _prepared(cfg: Config, model: nn.Module) -> nn.Module:
    return prepare(model, channels_last=cfg.model.channels_last, compile=cfg.model.compile)


def obtain_model(ctx: Context, data: DataBundle) -> tuple[nn.Module, str]:
    """model.checkpoint if given; else the cached model for this config, trained once on first use."""
    cfg = ctx.cfg
    if cfg.model.checkpoint:
        _check_model_fits(cfg.model.checkpoint, data, "model.checkpoint")
        return _prepared(cfg, load_model(cfg.model.checkpoint, ctx.device)), cfg.model.checkpoint
    cached = _model_cache_path(cfg)
    if cached.is_file():
        log.info("using the cached model %s", cached)
        return _prepared(cfg, load_model(str(cached), ctx.device, key="cache_dir")), str(cached)
    log.info("no model.checkpoint given and none cached: training %s with training=%s first", cfg.model.name,
             cfg.training.name)
    model, _ = train_model(ctx, data)
    if not dist.is_main():
        return model, str(cached)
    with atomic_path(cached) as tmp:  # concurrent sweep jobs may fill the same slot: each renames a whole file
        shutil.copyfile(ctx.run_dir / "model.pt", tmp)
    return model, str(cached)


# ---------------------------------------------------------------- perturbations


def eval_split(ctx: Context, data: DataBundle) -> Split:
    """The test split, or a seeded class-balanced part of it (eval.num_images)."""
    n = ctx.cfg.eval.num_images
    return data.test if n is None else data.test.subset(balanced_subset(data.test.y, n, ctx.cfg.seed))


def crafting_split(attack: AttackConfig, data: DataBundle, seed: int) -> Split:
    """A seeded class-balanced sample of the training split (attack.crafting_images; null = all)."""
    n = attack.crafting_images
    return data.train if n is None else data.train.subset(balanced_subset(data.train.y, n, seed))


# what an attack run also reports on the validation split: what tuning and selection read
VAL_METRICS = ("fooling_rate", "adv_acc", "label_entropy", "dominant_label_ratio", "min_class_attack_success_rate")


def select_start(model: nn.Module, data: DataBundle, starts: torch.Tensor, batch_size: int) -> tuple[int, list[float]]:
    """The start of a stack [M,C,H,W] with the highest fooling rate on the validation split, and every rate."""
    rates = fooling_rates(model, data.val.x, starts, batch_size)
    return max(range(len(rates)), key=rates.__getitem__), rates


def craft_and_evaluate(ctx: Context, model: nn.Module, data: DataBundle, attack: AttackConfig,
                       prefix: str = "") -> tuple[dict[str, Any], torch.Tensor]:
    """Craft `attack` on training images (validation images judge stopping and pick among several
    starts), evaluate it on the test split; returns metrics and δ (the chosen start only)."""
    crafting = crafting_split(attack, data, ctx.cfg.seed)
    if ATTACKS[attack.name].splits_over_ranks:  # each rank crafts on its shard; ∇δ is averaged
        crafting = crafting.subset(dist.shard(torch.arange(len(crafting))))
    g = torch.Generator().manual_seed(ctx.cfg.seed)
    t0 = time.perf_counter()
    result = craft(model, crafting.float_x(), crafting.y, attack, data.num_classes, generator=g,
                   progress=progress_enabled(), val=(data.val.float_x(), data.val.y))
    if ctx.device.type == "cuda":
        torch.cuda.synchronize()
    craft_seconds = time.perf_counter() - t0
    if not torch.isfinite(result.delta).all():
        raise UserError(f"{prefix or 'attack'}: the perturbation became non-finite; lower attack.step_size or attack.adam_lr")
    if dist.is_main():  # an earlier attempt of this run in this directory logged its own crafting rows
        forget_rows(ctx.run_dir, f"{prefix}pass")
    for row in result.history:
        ctx.tracker.log({f"{prefix}{k}": v for k, v in row.items()})
    class_wise = ATTACKS[attack.name].class_wise
    delta, chosen = result.delta, {}
    if delta.dim() == 4 and not class_wise:
        best, rates = select_start(model, data, delta, ctx.cfg.eval.batch_size)
        delta, chosen = delta[best], {"best_start": best, "val_fooling_rates": rates, "num_starts": len(rates)}
    test = eval_split(ctx, data)
    metrics = evaluate_perturbation(model, test.x, test.y, delta, data.num_classes, ctx.cfg.eval.batch_size,
                                    class_wise=class_wise)
    val = evaluate_perturbation(model, data.val.x, data.val.y, delta, data.num_classes, ctx.cfg.eval.batch_size,
                                class_wise=class_wise)
    metrics.update({f"val_{k}": val[k] for k in VAL_METRICS}, **chosen)
    if dist.world_size() > 1:
        metrics.update(ddp_world_size=dist.world_size(), ddp_delta_identical=dist.same_on_all_ranks([result.delta]))
    metrics.update(craft_seconds=round(craft_seconds, 4),
                   craft_images_processed=int(result.images_processed) * dist.world_size(),
                   craft_passes=int(result.passes), converged=bool(result.converged),
                   craft_images_per_second=round(result.images_processed / max(craft_seconds, 1e-9), 1))
    return metrics, delta


def save_perturbation(ctx: Context, delta: torch.Tensor, attack: AttackConfig, model_path: str,
                      data: DataBundle, metrics: dict[str, Any], stem: str = "perturbation") -> None:
    """perturbation.pt plus its figures (δ with examples, label histogram, transition matrix); rank 0 only."""
    if not dist.is_main():
        return
    run_dir, class_wise = ctx.run_dir, ATTACKS[attack.name].class_wise
    torch_save({"delta": delta.detach().cpu(), "eps": attack.eps, "norm": str(attack.norm), "attack": attack.name,
                "class_wise": class_wise,
                "dataset": ctx.cfg.dataset.name, "model_checkpoint": model_path,
                "input_shape": list(data.input_shape), "num_classes": data.num_classes,
                "config": to_plain(attack)}, run_dir / f"{stem}.pt")
    test = eval_split(ctx, data)
    examples = test.subset(balanced_subset(test.y, min(8, len(test)), ctx.cfg.seed))
    x = examples.float_x()
    adv = apply_delta(x, delta, examples.y if class_wise else None)
    figures.save_perturbation_png(run_dir / f"{stem}.png", delta.detach().cpu(), x.cpu(), adv.cpu())
    prefix = "" if stem == "perturbation" else f"{stem}_"  # pipeline runs hold one set per attack
    figures.save_label_hist_png(run_dir / f"{prefix}label_hist.png", metrics["clean_label_hist"],
                                metrics["label_hist"], data.class_names)
    figures.save_transition_png(run_dir / f"{prefix}transition.png", metrics["transition_matrix"], data.class_names)
    ctx.tracker.log_images({stem: run_dir / f"{stem}.png", f"{prefix}label_hist": run_dir / f"{prefix}label_hist.png"})
    ctx.tracker.log_artifact(run_dir / f"{stem}.pt", name=f"{stem}-{attack.name}-{ctx.cfg.dataset.name}",
                             type="perturbation", metadata={"eps": attack.eps, "norm": str(attack.norm),
                                                            "attack": attack.name, **_scalars(metrics)})


def stored_class_wise(blob: dict[str, Any]) -> bool:
    """Whether a perturbation file holds one δ per class (its flag, or else its attack's registry entry)."""
    spec = ATTACKS.get(blob.get("attack"))
    return bool(blob.get("class_wise", spec is not None and spec.class_wise))


def load_perturbation(path: str, data: DataBundle) -> dict[str, Any]:
    """A perturbation.pt checked against the dataset's input shape."""
    blob = safe_torch_load(path, "perturbation")
    if isinstance(blob, dict) and "state_dict" in blob:
        raise UserError(f"perturbation={path!r}: this is a model file; pass it as model.checkpoint=<path>")
    if not isinstance(blob, dict) or not isinstance(blob.get("delta"), torch.Tensor):
        raise UserError(f"perturbation={path!r}: not a perturbation file (needs a 'delta' tensor); give a "
                        "perturbation.pt written by task=attack")
    delta = blob["delta"]
    if tuple(delta.shape[-3:]) != tuple(data.input_shape) or delta.dim() not in (3, 4):
        raise UserError(f"perturbation={path!r}: δ has shape {tuple(delta.shape)}, the dataset's images are "
                        f"{tuple(data.input_shape)}; give a perturbation crafted on this dataset")
    if delta.dim() == 4 and not stored_class_wise(blob):
        raise UserError(f"perturbation={path!r}: holds a stack of {delta.shape[0]} perturbations; give a file with "
                        "one δ (task=attack saves the start chosen on the validation split)")
    if stored_class_wise(blob) and delta.shape[0] != data.num_classes:
        raise UserError(f"perturbation={path!r}: class-wise δ has {delta.shape[0]} classes, the dataset has "
                        f"{data.num_classes}; give a perturbation crafted on this dataset")
    return blob


def _scalars(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float, bool, str)) or v is None}


# ---------------------------------------------------------------- tasks


def task_train(ctx: Context) -> dict[str, Any]:
    data = ctx.data()
    _, metrics = train_model(ctx, data)
    return metrics


def task_evaluate(ctx: Context) -> dict[str, Any]:
    data = ctx.data()
    model, model_path = obtain_model(ctx, data)
    test = eval_split(ctx, data)
    if ctx.cfg.perturbation is None:
        return evaluate_clean(model, test.x, test.y, data.num_classes, ctx.cfg.eval.batch_size)
    blob = load_perturbation(ctx.cfg.perturbation, data)
    delta = blob["delta"].to(ctx.device)
    metrics = evaluate_perturbation(model, test.x, test.y, delta, data.num_classes, ctx.cfg.eval.batch_size,
                                    class_wise=stored_class_wise(blob))
    metrics.update(perturbation=ctx.cfg.perturbation, perturbation_attack=blob.get("attack"),
                   source_model=blob.get("model_checkpoint"), target_model=model_path)
    return metrics


def task_attack(ctx: Context) -> dict[str, Any]:
    data = ctx.data()
    model, model_path = obtain_model(ctx, data)
    metrics, delta = craft_and_evaluate(ctx, model, data, ctx.cfg.attack)
    save_perturbation(ctx, delta, ctx.cfg.attack, model_path, data, metrics)
    ctx.tracker.log_table("result", [{"attack": ctx.cfg.attack.name, **_scalars(metrics)}])
    return metrics


def pipeline_attacks(base: AttackConfig) -> dict[str, AttackConfig]:
    """Every registered attack under `base`'s shared budget, each with `base`'s values of the keys it reads
    (attacks.attack_for): the same crafting images, passes and stopping rule for all."""
    return {name: attack_for(base, name) for name in ATTACKS}


def task_pipeline(ctx: Context) -> dict[str, Any]:
    """Train a defence, then attack the final model white-box with each UAP under one crafting budget;
    report each, and the worst attack and the worst class over the universal ones (one δ for every image; a
    class-wise attack picks δ by the true label, so it is reported beside them, not in the worst case), all on the
    same test images."""
    data = ctx.data()
    model, train_metrics = train_model(ctx, data)
    model_path = str(ctx.run_dir / "model.pt")
    test = eval_split(ctx, data)
    clean = evaluate_clean(model, test.x, test.y, data.num_classes, ctx.cfg.eval.batch_size)
    out: dict[str, Any] = {"clean_acc": clean["clean_acc"], "train_seconds": train_metrics["train_seconds"],
                           "per_class_clean_acc": clean["per_class_acc"], "num_images": clean["num_images"],
                           **{k: v for k, v in train_metrics.items() if k.startswith("ddp_")}}
    per_attack = {}
    for name, attack in pipeline_attacks(ctx.cfg.attack).items():
        metrics, delta = craft_and_evaluate(ctx, model, data, attack, prefix=f"{name}/")
        save_perturbation(ctx, delta, attack, model_path, data, metrics, stem=f"perturbation_{name}")
        per_attack[name] = metrics
        out[f"adv_acc_{name}"] = metrics["adv_acc"]
        out[f"fooling_rate_{name}"] = metrics["fooling_rate"]
        out[f"label_entropy_{name}"] = metrics["label_entropy"]
    universal = {name: m for name, m in per_attack.items() if not ATTACKS[name].class_wise}
    out.update(worst_case(universal), attacks=per_attack)
    ctx.tracker.log_table("attacks", [{"attack": name, **_scalars(m)} for name, m in per_attack.items()])
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
    attacks: str  # none | one (attack=) | every (every registered attack, derived from attack= by attack_for)


# the only list of task names (`task=` options)
TASKS: dict[str, TaskSpec] = {
    "train": TaskSpec(task_train, attacks="none"),
    "attack": TaskSpec(task_attack, attacks="one"),
    "evaluate": TaskSpec(task_evaluate, attacks="none"),
    "pipeline": TaskSpec(task_pipeline, attacks="every"),
}
