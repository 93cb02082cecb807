"""Perturbations in a run: the crafting and evaluation splits, crafting with restarts and resume, scoring δ on the
test split (with the per-image predictions a bootstrap reads), and saving and loading perturbation files."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import dist, figures
from .attacks import ATTACKS, apply_delta, craft
from .context import Context, scalars
from .data import AnySplit, DataBundle, Split, balanced_subset
from .errors import UserError
from .io import atomic_path, safe_torch_load, torch_save
from .metrics import best_start, evaluate_clean, evaluate_perturbation, predict
from .progress import progress_enabled
from .provenance import file_sha256, identity
from .record import CraftingCheckpoint
from .runinfo import git_commit
from .schema import AttackConfig, to_plain

log = logging.getLogger(__name__)


def eval_split(ctx: Context, data: DataBundle) -> AnySplit:
    """The test split, or a seeded class-balanced part of it (eval.num_images)."""
    n = ctx.cfg.eval.num_images
    return data.test if n is None else data.test.subset(balanced_subset(data.test.y, n, ctx.cfg.seed))


def crafting_split(attack: AttackConfig, data: DataBundle, seed: int) -> Split:
    """A seeded class-balanced sample of the training split (attack.crafting_per_class of each class, else
    attack.crafting_images; null = all), held in memory."""
    n = attack.crafting_images if attack.crafting_per_class is None else attack.crafting_per_class * data.num_classes
    if n is None and data.train.streamed:
        raise UserError(f"attack.crafting_images=null: the training split is streamed ({len(data.train)} images) and "
                        f"the crafting set is held in memory; set attack.crafting_images (k per class: k x "
                        f"{data.num_classes})")
    return (data.train if n is None else data.train.subset(balanced_subset(data.train.y, n, seed))).resident()


PREDICTIONS = "predictions"  # <stem>.npz: label, clean and adv per test image (eval.save_predictions)


def evaluate_on(ctx: Context, model: nn.Module, split: AnySplit, num_classes: int, delta: torch.Tensor | None = None,
                class_wise: bool = False, stem: str = PREDICTIONS) -> dict[str, Any]:
    """The clean metrics (no δ) or δ's metrics on `split`, in one pass; under torchrun each rank reads its share
    and the counts are summed, so every image counts once. With eval.save_predictions, δ's per-image predictions
    go to `<stem>.npz` in the run directory."""
    batch_size, world = ctx.cfg.eval.batch_size, dist.world_size()
    images = split.shard(batch_size, dist.rank(), world)
    if delta is None:
        return evaluate_clean(model, images, None, num_classes, batch_size, over_ranks=world > 1)
    kept = None
    if ctx.cfg.eval.save_predictions:
        if world > 1:
            raise UserError("eval.save_predictions=true: each rank evaluates its share of the test images under "
                            "torchrun; save the predictions of a single-process run")
        kept = []
    metrics = evaluate_perturbation(model, images, None, delta, num_classes, batch_size, class_wise=class_wise,
                                    over_ranks=world > 1, predictions=kept)
    if kept:
        label, clean, adv = kept[0].numpy().astype(np.int32)
        with atomic_path(ctx.run_dir / f"{stem}.npz") as tmp, open(tmp, "wb") as f:
            np.savez_compressed(f, label=label, clean=clean, adv=adv)
        metrics["predictions_file"] = f"{stem}.npz"
    return metrics


# what an attack run also reports on the validation split: what tuning and selection read
VAL_METRICS = ("fooling_rate", "adv_acc", "label_entropy", "fooled_label_entropy", "dominant_label_ratio",
               "min_class_attack_success_rate")


def select_start(model: nn.Module, data: DataBundle, starts: torch.Tensor, batch_size: int) -> tuple[int, list[float]]:
    """The start of a stack [M,C,H,W] with the highest fooling rate on the validation split, and every rate."""
    return best_start(model, data.val.x, starts, batch_size)


def crafting_checkpoint(ctx: Context, data: DataBundle, attack: AttackConfig, prefix: str,
                        restart: int = 0) -> CraftingCheckpoint:
    """Where `attack` keeps its crafting state in this run (one per restart), under the key of what it crafts: the
    attack's settings, the network, the data and the seed (and the number of ranks that share the crafting), and
    the file its given start came from (attack.start), by content."""
    key = {"attack": to_plain(attack), "model": ctx.provenance["model"]["identity"], "data": data.fingerprint,
           "seed": ctx.cfg.seed, "world_size": dist.world_size(), "restart": restart}
    if attack.start is not None:
        key["start"] = ctx.provenance["start"]["sha256"]
    name = prefix.rstrip("/") or attack.name
    return ctx.record.crafting(name if attack.restarts == 1 else f"{name}.restart{restart}", key,
                               ctx.cfg.checkpoint_images)


def restart_generator(seed: int, restart: int) -> torch.Generator:
    """The random stream of one crafting: the run's seed for the first (so restarts=1 crafts as a single run does),
    an independent stream drawn from (seed, restart) for each further restart."""
    if restart == 0:
        return torch.Generator().manual_seed(seed)
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, restart]).generate_state(1)[0]))


@dataclass
class Attempt:
    """One crafting of an attack: δ (its chosen start), the crafting's result, its validation metrics, how long it
    took and the state it continued from (None: from the start)."""

    delta: torch.Tensor
    result: Any  # attacks.CraftResult
    chosen: dict[str, Any]
    val: dict[str, Any]
    seconds: float
    continued_from: Any


def given_start(ctx: Context, data: DataBundle, attack: AttackConfig) -> torch.Tensor | None:
    """The δ of attack.start (None where it is not set), checked against the dataset and against the attack's kind
    (one δ per class for a class-wise attack, one for every image otherwise); the record names its file."""
    if attack.start is None:
        return None
    blob = load_perturbation(attack.start, data, "attack.start")
    if stored_class_wise(blob) != ATTACKS[attack.name].class_wise:
        kinds = ("one δ for every image", "one δ per class")
        raise UserError(f"attack.start={attack.start!r}: holds {kinds[stored_class_wise(blob)]}; {attack.name} "
                        f"crafts {kinds[ATTACKS[attack.name].class_wise]}")
    ctx.provenance["start"] = perturbation_provenance(attack.start, blob)
    return blob["delta"]


def craft_once(ctx: Context, model: nn.Module, data: DataBundle, attack: AttackConfig, crafting: Split,
               prefix: str, restart: int, start: torch.Tensor | None = None) -> Attempt:
    """Craft `attack` once (restart `restart`; from `start` where given, else from attack.init), log its passes,
    pick its best start on the validation split and score it there."""
    rows = prefix if attack.restarts == 1 else f"{prefix}restart{restart}/"
    checkpoint = crafting_checkpoint(ctx, data, attack, prefix, restart) if ATTACKS[attack.name].resumable else None
    resumable = {} if checkpoint is None else {"checkpoint": checkpoint}
    t0 = time.perf_counter()
    result = craft(model, crafting.float_x(), crafting.y, attack, data.num_classes,
                   generator=restart_generator(ctx.cfg.seed, restart), progress=progress_enabled(),
                   val=(data.val.float_x(), data.val.y), init=start, **resumable)
    if ctx.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    if not torch.isfinite(result.delta).all():
        raise UserError(f"{rows or 'attack'}: the perturbation became non-finite; lower attack.step_size or attack.adam_lr")
    if dist.is_main():  # an earlier attempt of this run in this directory logged its own crafting rows
        ctx.record.forget_rows(f"{rows}pass")
    for row in result.history:
        ctx.tracker.log({f"{rows}{k}": v for k, v in row.items()})
    class_wise = ATTACKS[attack.name].class_wise
    delta, chosen = result.delta, {}
    if delta.dim() == 4 and not class_wise:
        best, rates = select_start(model, data, delta, ctx.cfg.eval.batch_size)
        delta, chosen = delta[best], {"best_start": best, "val_fooling_rates": rates, "num_starts": len(rates)}
    val = evaluate_perturbation(model, data.val.x, data.val.y, delta, data.num_classes, ctx.cfg.eval.batch_size,
                                class_wise=class_wise)
    return Attempt(delta, result, chosen, val, seconds, None if checkpoint is None else checkpoint.continued_from)


def craft_and_evaluate(ctx: Context, model: nn.Module, data: DataBundle, attack: AttackConfig,
                       prefix: str = "") -> tuple[dict[str, Any], torch.Tensor]:
    """Craft `attack` on training images attack.restarts times (validation images judge stopping and pick among
    starts and restarts), evaluate the chosen δ on the test split; returns metrics and δ."""
    crafting = crafting_split(attack, data, ctx.cfg.seed)
    if ATTACKS[attack.name].splits_over_ranks:  # each rank crafts on its shard; ∇δ is averaged
        crafting = crafting.subset(dist.shard(torch.arange(len(crafting))))
    start = given_start(ctx, data, attack)
    attempts = [craft_once(ctx, model, data, attack, crafting, prefix, r, start) for r in range(attack.restarts)]
    best = max(range(len(attempts)), key=lambda r: attempts[r].val["fooling_rate"])  # the first among ties
    kept = attempts[best]
    metrics = evaluate_on(ctx, model, eval_split(ctx, data), data.num_classes, kept.delta,
                          ATTACKS[attack.name].class_wise, f"{PREDICTIONS}_{prefix.rstrip('/')}" if prefix else PREDICTIONS)
    metrics.update({f"val_{k}": kept.val[k] for k in VAL_METRICS}, **kept.chosen,
                   class_wise=ATTACKS[attack.name].class_wise)  # one δ per class: not in a universal worst case
    if attack.restarts > 1:
        metrics.update(best_restart=best, restart_val_fooling_rates=[a.val["fooling_rate"] for a in attempts])
    if dist.world_size() > 1:
        metrics.update(ddp_world_size=dist.world_size(), ddp_delta_identical=dist.same_on_all_ranks([kept.result.delta]))
    metrics.update(kept.result.stats)
    metrics.update(_crafting_cost(attempts))
    metrics.update(craft_passes=int(kept.result.passes), converged=bool(kept.result.converged))
    return metrics, kept.delta


def _crafting_cost(attempts: list[Attempt]) -> dict[str, Any]:
    """What the craftings of one attack cost together: seconds of this attempt of the run (from the state each
    continued, if any), images processed, and the rate where no crafting was continued."""
    seconds = sum(a.seconds for a in attempts)
    processed = sum(int(a.result.images_processed) for a in attempts)
    continued = [a.continued_from for a in attempts]
    resumed = any(c is not None for c in continued)
    return {"craft_seconds": round(seconds, 4), "craft_images_processed": processed * dist.world_size(),
            "craft_continued_from": continued[0] if len(continued) == 1 else continued if resumed else None,
            "craft_images_per_second": None if resumed else round(processed / max(seconds, 1e-9), 1)}


def save_perturbation(ctx: Context, delta: torch.Tensor, attack: AttackConfig, model: tuple[nn.Module, str],
                      data: DataBundle, metrics: dict[str, Any], stem: str = "perturbation") -> None:
    """perturbation.pt plus its figures (δ with examples labelled by the network's clean and adversarial classes,
    label histogram, transition matrix); rank 0 only. `model`: the network and where it came from."""
    if not dist.is_main():
        return
    model, model_path = model
    run_dir, class_wise = ctx.run_dir, ATTACKS[attack.name].class_wise
    crafted = {"attack": to_plain(attack), "model": ctx.provenance["model"]["identity"], "data": data.fingerprint,
               "seed": ctx.cfg.seed}
    torch_save({"delta": delta.detach().cpu(), "eps": attack.eps, "norm": str(attack.norm), "attack": attack.name,
                "class_wise": class_wise, "space": perturbation_space(ctx, data, attack),
                "dataset": ctx.cfg.dataset.name, "model_checkpoint": model_path,
                "input_shape": list(data.input_shape), "num_classes": data.num_classes,
                "config": to_plain(attack),
                "provenance": {"identity": identity(crafted), "crafted": crafted, "code": git_commit(),
                               "crafted_on_weights": ctx.provenance["model"].get("weights_fingerprint")}},
               run_dir / f"{stem}.pt")
    test = eval_split(ctx, data)
    examples = test.subset(balanced_subset(test.y, min(8, len(test)), ctx.cfg.seed)).resident()
    x = examples.float_x()
    adv = apply_delta(x, delta, examples.y if class_wise else None)
    names = [[data.class_names[int(k)] for k in predict(model, images, ctx.cfg.eval.batch_size)] for images in (x, adv)]
    figures.save_perturbation_png(run_dir / f"{stem}.png", delta.detach().cpu(), (x.cpu(), adv.cpu()), names)
    prefix = "" if stem == "perturbation" else f"{stem}_"  # pipeline runs hold one set per attack
    figures.save_label_hist_png(run_dir / f"{prefix}label_hist.png", metrics["clean_label_hist"],
                                metrics["label_hist"], data.class_names)
    figures.save_transition_png(run_dir / f"{prefix}transition.png", metrics["transition_matrix"], data.class_names)
    ctx.tracker.log_images({stem: run_dir / f"{stem}.png", f"{prefix}label_hist": run_dir / f"{prefix}label_hist.png"})
    ctx.tracker.log_artifact(run_dir / f"{stem}.pt", name=f"{stem}-{attack.name}-{ctx.cfg.dataset.name}",
                             type="perturbation", metadata={"eps": attack.eps, "norm": str(attack.norm),
                                                            "attack": attack.name, **scalars(metrics)})


def perturbation_space(ctx: Context, data: DataBundle, attack: AttackConfig) -> dict[str, Any]:
    """Where a perturbation lives: added to the network's input images (channels in RGB or grey, values in [0,1],
    this resolution, after the data's resize and crop) within ε in its norm, and the network it was crafted on."""
    channels, height, width = data.input_shape
    network = {k: v for k, v in ctx.provenance["model"].items() if k not in ("path", "file")}
    return {"channels": channels, "channel_order": "RGB" if channels == 3 else "grey", "value_range": [0.0, 1.0],
            "resolution": [height, width], "added_after": data.preprocessing, "clamped_to": [0.0, 1.0],
            "eps": attack.eps, "norm": str(attack.norm), "network": network}


def stored_class_wise(blob: dict[str, Any]) -> bool:
    """Whether a perturbation file holds one δ per class (its flag, or else its attack's registry entry)."""
    spec = ATTACKS.get(blob.get("attack"))
    return bool(blob.get("class_wise", spec is not None and spec.class_wise))


def load_perturbation(path: str, data: DataBundle, key: str = "perturbation") -> dict[str, Any]:
    """A perturbation.pt checked against the dataset's input shape (`key`: the config key that named it)."""
    blob = safe_torch_load(path, key)
    if isinstance(blob, dict) and "state_dict" in blob:
        raise UserError(f"{key}={path!r}: this is a model file; pass it as model.checkpoint=<path>")
    if not isinstance(blob, dict) or not isinstance(blob.get("delta"), torch.Tensor):
        raise UserError(f"{key}={path!r}: not a perturbation file (needs a 'delta' tensor); give a "
                        "perturbation.pt written by task=attack")
    delta = blob["delta"]
    if tuple(delta.shape[-3:]) != tuple(data.input_shape) or delta.dim() not in (3, 4):
        raise UserError(f"{key}={path!r}: δ has shape {tuple(delta.shape)}, the dataset's images are "
                        f"{tuple(data.input_shape)}; give a perturbation crafted on this dataset")
    if delta.dim() == 4 and not stored_class_wise(blob):
        raise UserError(f"{key}={path!r}: holds a stack of {delta.shape[0]} perturbations; give a file with "
                        "one δ (task=attack saves the start chosen on the validation split)")
    if stored_class_wise(blob) and delta.shape[0] != data.num_classes:
        raise UserError(f"{key}={path!r}: class-wise δ has {delta.shape[0]} classes, the dataset has "
                        f"{data.num_classes}; give a perturbation crafted on this dataset")
    return blob


def perturbation_provenance(path: str, blob: dict[str, Any]) -> dict[str, Any]:
    """What a record says of the perturbation it evaluated: its file's hash, what it is, what crafted it (a file
    without that gets its hash as its identity), and for an imported one the published file it came from."""
    sha = file_sha256(Path(path).expanduser())
    stored = blob.get("provenance") or {}
    return {"identity": stored.get("identity") or f"sha256:{sha}", "sha256": sha, "path": str(path),
            "crafted_on": (stored.get("crafted") or {}).get("model"),
            "crafted_on_weights": stored.get("crafted_on_weights"),
            "attack": blob.get("attack"), "eps": blob.get("eps"), "norm": blob.get("norm"),
            "class_wise": stored_class_wise(blob), "crafted_by": stored.get("code"),
            "imported_from": stored.get("imported_from")}
