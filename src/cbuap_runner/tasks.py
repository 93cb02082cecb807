"""The four tasks (train, attack, evaluate, pipeline) on top of data, models, attacks and defences."""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

from . import dist, figures
from .attacks import ATTACKS, apply_delta, attack_for, craft
from .data import AnySplit, DataBundle, Split, balanced_subset, load_data
from .errors import UserError
from .io import atomic_path, safe_torch_load, torch_save
from .lease import slot_lease
from .metrics import best_start, evaluate_clean, evaluate_perturbation, predict
from .models import build_model, load_model, prepare, read_model_file, save_model, saved_weights
from .models.sources import (
    SOURCES,
    ModelSource,
    Network,
    SourceContext,
    check_class_names,
    describe_network,
    network_identity,
    select_classes,
)
from .progress import progress_enabled
from .provenance import digest, file_sha256, identity, model_file_provenance, weights_key
from .record import PER_CLASS, CraftingCheckpoint, RunRecord, per_class_to_file
from .runinfo import git_commit
from .schema import AttackConfig, Config, to_plain
from .training import make_adversary
from .training.loop import TrainingRun, fit

log = logging.getLogger(__name__)


@dataclass
class Context:
    """What every task needs: the validated config, where to write, the device and the tracker."""

    cfg: Config
    record: RunRecord
    device: torch.device
    tracker: Any
    provenance: dict[str, Any] = field(default_factory=dict)  # what decided the results (run_summary.json)
    bad_files: Any = None  # data.BadFiles of image folders: what could not be read, for the record

    @property
    def run_dir(self) -> Path:
        return self.record.run_dir

    @property
    def source(self) -> ModelSource | None:
        """The model option's source when the network comes from elsewhere (models/sources.py), else None."""
        return SOURCES.get(self.cfg.model.name)

    def data(self) -> DataBundle:
        declared = None if self.source is None else self.source.preprocessing(self.cfg.model)
        data = load_data(self.cfg.dataset, self.cfg.cache_dir, self.cfg.seed, self.device, declared)
        streamed = [name for name, split in (("train", data.train), ("test", data.test)) if split.streamed]
        self.provenance.update(code=git_commit(), data={"fingerprint": data.fingerprint, "streamed": streamed})
        self.bad_files = data.bad_files  # image folders only
        return data

    def provenance_record(self) -> dict[str, Any]:
        """What decided the results, with the image files that could not be read (refused, or skipped and counted)."""
        if self.bad_files is not None:
            self.provenance["data"]["bad_files"] = self.bad_files.record()
        return self.provenance


# ---------------------------------------------------------------- models


def model_cache_path(cfg: Config, key: dict[str, Any]) -> Path:
    """Cache slot of the model that the weights `key` (provenance.weights_key) describes."""
    name = f"{cfg.dataset.name}-{cfg.model.name}-{cfg.training.name}-{digest(key)[:16]}"
    return Path(cfg.cache_dir).expanduser() / "models" / name / "model.pt"


def _check_model_fits(path: str, data: DataBundle, key: str, dataset: str | None = None) -> dict[str, Any]:
    """The model file at `path`, refused with one line if it does not take this data (or, given `dataset`, was
    trained on another dataset)."""
    blob = read_model_file(path, key)
    if tuple(blob["input_shape"]) != tuple(data.input_shape) or int(blob["num_classes"]) != data.num_classes:
        raise UserError(
            f"{key}={path!r}: model takes {tuple(blob['input_shape'])} with {blob['num_classes']} classes, "
            f"the dataset has {tuple(data.input_shape)} with {data.num_classes}; give a model trained on this dataset")
    if dataset is not None and blob.get("dataset") != dataset:
        raise UserError(f"{key}={path!r}: was trained on dataset={blob.get('dataset')}, this run reads "
                        f"dataset={dataset}; give a model trained on {dataset}, or set dataset= to its dataset")
    return blob


def train_model(ctx: Context, data: DataBundle) -> tuple[nn.Module, dict[str, Any]]:
    """Train cfg.training's defence on the data (from a model source's weights where the model has a source);
    writes checkpoint.pt every epoch and model.pt at the end."""
    cfg = ctx.cfg
    if ctx.source is not None:
        model = network_from_source(ctx, data).model.to(ctx.device)
        ctx.provenance["initial_model"] = ctx.provenance.pop("model")
    else:
        model = build_model(cfg.model.name, data.num_classes, data.input_shape, list(cfg.dataset.mean),
                            list(cfg.dataset.std)).to(ctx.device)
    if cfg.training.init_checkpoint:
        path = cfg.training.init_checkpoint
        blob = _check_model_fits(path, data, "training.init_checkpoint")
        model.load_state_dict(blob["state_dict"])
        ctx.provenance["init_checkpoint"] = model_file_provenance(path, blob, "init_checkpoint")
        _warn_other_data(path, ctx.provenance["init_checkpoint"]["data"], data)
    model = _prepared(cfg, model)
    adversary = make_adversary(cfg.training.name, cfg.training, data.num_classes, data.input_shape, ctx.device,
                               seed=cfg.seed)
    key = weights_key(cfg, data.fingerprint)
    run = TrainingRun(ctx.record, cfg.seed, ctx.device, lambda row: ctx.tracker.log(row, step=row["epoch"]), key,
                      cfg.eval.batch_size)
    result = fit(model, adversary, data, cfg.dataset, cfg.training, run)
    history = result.pop("history")
    if dist.world_size() > 1:
        result["ddp_world_size"] = dist.world_size()
        result["ddp_weights_identical"] = dist.same_on_all_ranks(list(model.state_dict().values()))
    stored = {"weights_key": key, "digest": digest(key), "identity": identity(key), "code": git_commit(),
              "data": data.fingerprint}
    if not dist.is_main():  # rank 0 writes the file and the record; a rank's crafting state is keyed by the identity
        ctx.provenance["model"] = {"identity": stored["identity"], "source": "trained"}
    else:
        save_model(str(ctx.run_dir / "model.pt"), model, to_plain(cfg.model), cfg.dataset.name, data.num_classes,
                   data.input_shape, {k: v for k, v in result.items() if not isinstance(v, list)}, provenance=stored)
        ctx.provenance["model"] = model_file_provenance(str(ctx.run_dir / "model.pt"), {
            "provenance": stored, "state_dict": saved_weights(model)}, "trained")
        ctx.tracker.log_artifact(ctx.run_dir / "model.pt", name=f"model-{cfg.dataset.name}-{cfg.model.name}",
                                 type="model", metadata={"training": cfg.training.name, **_scalars(result)})
        if ctx.source is None:  # a model source's network is never looked up in the cache
            offer_to_cache(model_cache_path(cfg, key), key, ctx.run_dir / "model.pt")
    return model.eval(), {**result, "final_train_acc": history[-1]["train_acc"] if history else None}


def offer_to_cache(slot: Path, key: dict[str, Any], trained: Path) -> None:
    """Put a model this run trained into the cache slot of its weights key where the slot holds none yet, so that
    every later run of that key (an attack on this defence, by any task) loads it instead of training it again."""
    if _cached_model(slot, key) is None:
        with atomic_path(slot) as tmp:
            shutil.copyfile(trained, tmp)
        log.info("cached the trained model as %s", slot)


def _prepared(cfg: Config, model: nn.Module) -> nn.Module:
    return prepare(model, channels_last=cfg.model.channels_last, compile=cfg.model.compile)


def obtain_model(ctx: Context, data: DataBundle) -> tuple[nn.Module, str]:
    """model.checkpoint if given; else the cached model for this config, trained once on first use (one job of a
    sweep trains a slot while the others wait for it: lease.py)."""
    cfg = ctx.cfg
    if ctx.source is not None:  # used as it is: never trained here, never cached
        network = network_from_source(ctx, data)
        return _prepared(cfg, network.model.to(ctx.device).eval()), ctx.provenance["model"]["label"]
    if cfg.model.checkpoint:
        blob = _check_model_fits(cfg.model.checkpoint, data, "model.checkpoint", dataset=cfg.dataset.name)
        _note_model(ctx, cfg.model.checkpoint, blob, "checkpoint", data)
        return _prepared(cfg, load_model(cfg.model.checkpoint, ctx.device)), cfg.model.checkpoint
    key = weights_key(cfg, data.fingerprint)
    cached = model_cache_path(cfg, key)
    asked = time.time()
    with _train_or_wait(cached, lambda: _cached_model(cached, key) is not None) as mine:
        ctx.record.waited_seconds = round(time.time() - asked, 3)  # for another job training this slot
        if not mine:
            log.info("using the cached model %s", cached)
            _note_model(ctx, str(cached), _cached_model(cached, key), "cache", data)
            return _prepared(cfg, load_model(str(cached), ctx.device, key="cache_dir")), str(cached)
        if cached.is_file():
            log.warning("ignoring the cached model %s: it was not trained under this run's settings and data", cached)
        log.info("no model.checkpoint given and none cached: training %s with training=%s first", cfg.model.name,
                 cfg.training.name)
        model, _ = train_model(ctx, data)  # which fills the slot
    return model, str(cached)


def network_from_source(ctx: Context, data: DataBundle) -> Network:
    """The model source's network for this data (refused with one line when its classes do not match), with the
    weights of model.checkpoint where one is given (a network fine-tuned here); recorded as provenance.model."""
    cfg = ctx.cfg
    source_cfg = cfg.model
    if cfg.model.checkpoint and hasattr(source_cfg, "weights"):  # the checkpoint's weights replace the source's
        source_cfg = dataclasses.replace(source_cfg, weights=None)
    context = SourceContext(data.num_classes, list(cfg.dataset.mean), list(cfg.dataset.std), cfg.seed)
    network = ctx.source.load(source_cfg, context)
    network = select_classes(network, cfg.model.classes, data.class_names, _output_width(network.model, data))
    check_class_names(network, data.class_names)
    description = dict(network.description)
    if cfg.model.checkpoint:
        blob = read_model_file(cfg.model.checkpoint)
        try:
            network.model.load_state_dict(blob["state_dict"])
        except RuntimeError as ex:
            raise UserError(f"model.checkpoint={cfg.model.checkpoint!r}: its weights do not fit "
                            f"{describe_network(description)} ({str(ex).splitlines()[0]})") from ex
        description["checkpoint"] = model_file_provenance(cfg.model.checkpoint, blob, "checkpoint")
    check_classes(cfg.model.name, cfg.dataset.name, _output_width(network.model, data), data.num_classes)
    label = describe_network(description)
    ctx.provenance["model"] = {"identity": f"network:{network_identity(description)}", "label": label,
                               **description}
    return network


def check_classes(model: str, dataset: str, network_classes: int, dataset_classes: int) -> None:
    """Refuse a network whose head has another number of classes than the dataset."""
    if network_classes != dataset_classes:
        raise UserError(f"model.name={model}: the network has {network_classes} classes, dataset={dataset} has "
                        f"{dataset_classes}; give a dataset of its classes or a network for this one")


def _output_width(model: nn.Module, data: DataBundle) -> int:
    """The number of logits the network gives for one test image (the network's head, whatever it declares)."""
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            first = data.test.subset(torch.zeros(1, dtype=torch.long)).resident()
            return int(model(first.x.cpu().float().div(255)).shape[-1])
    except RuntimeError as ex:
        raise UserError(f"dataset.crop: the network cannot take images of {tuple(data.input_shape)} "
                        f"({str(ex).splitlines()[0]}); set dataset.resize/dataset.crop to the size it expects") from ex
    finally:
        model.train(was)


@contextmanager
def _train_or_wait(slot: Path, ready: Callable[[], bool]) -> Iterator[bool]:
    """True: this job trains the slot (holding its lease); False: the slot was filled, by another job perhaps.
    Under torchrun rank 0 decides for every rank."""
    if not dist.is_main():
        yield dist.broadcast_flag(False)
        return
    with slot_lease(slot.parent, ready=ready, log_wait=log.info) as mine:
        yield dist.broadcast_flag(mine)


def _cached_model(path: Path, key: dict[str, Any]) -> dict[str, Any] | None:
    """The cache slot's model file if it holds the model `key` describes; a file of another key (damaged, or
    written by an older version) is not used: the slot is trained anew (obtain_model says so)."""
    if not path.is_file():
        return None
    try:
        blob = read_model_file(str(path), "cache_dir")
    except UserError:
        return None
    return blob if (blob.get("provenance") or {}).get("digest") == digest(key) else None


def _note_model(ctx: Context, path: str, blob: dict[str, Any], source: str, data: DataBundle) -> None:
    """Record which network this run uses; say so when it was trained on other data than this run reads."""
    ctx.provenance["model"] = model_file_provenance(path, blob, source)
    _warn_other_data(path, ctx.provenance["model"]["data"], data)


def _warn_other_data(path: str, trained_on: str | None, data: DataBundle) -> None:
    """A log line when the model file at `path` was trained on other data than this run reads (both fingerprints
    are in the record)."""
    if trained_on and trained_on != data.fingerprint:
        log.warning("%s was trained on other data (fingerprint %s) than this run reads (%s)", path, trained_on[:12],
                    data.fingerprint[:12])


# ---------------------------------------------------------------- perturbations


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
    attack's settings, the network, the data and the seed (and the number of ranks that share the crafting)."""
    key = {"attack": to_plain(attack), "model": ctx.provenance["model"]["identity"], "data": data.fingerprint,
           "seed": ctx.cfg.seed, "world_size": dist.world_size(), "restart": restart}
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


def craft_once(ctx: Context, model: nn.Module, data: DataBundle, attack: AttackConfig, crafting: Split,
               prefix: str, restart: int) -> Attempt:
    """Craft `attack` once (restart `restart`), log its passes, pick its best start on the validation split and
    score it there."""
    rows = prefix if attack.restarts == 1 else f"{prefix}restart{restart}/"
    checkpoint = crafting_checkpoint(ctx, data, attack, prefix, restart) if ATTACKS[attack.name].resumable else None
    resumable = {} if checkpoint is None else {"checkpoint": checkpoint}
    t0 = time.perf_counter()
    result = craft(model, crafting.float_x(), crafting.y, attack, data.num_classes,
                   generator=restart_generator(ctx.cfg.seed, restart), progress=progress_enabled(),
                   val=(data.val.float_x(), data.val.y), **resumable)
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
    attempts = [craft_once(ctx, model, data, attack, crafting, prefix, r) for r in range(attack.restarts)]
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
                "provenance": {"identity": identity(crafted), "crafted": crafted, "code": git_commit()}},
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
                                                            "attack": attack.name, **_scalars(metrics)})


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


def perturbation_provenance(path: str, blob: dict[str, Any]) -> dict[str, Any]:
    """What a record says of the perturbation it evaluated: its file's hash, what it is, what crafted it (a file
    without that gets its hash as its identity), and for an imported one the published file it came from."""
    sha = file_sha256(Path(path).expanduser())
    stored = blob.get("provenance") or {}
    return {"identity": stored.get("identity") or f"sha256:{sha}", "sha256": sha, "path": str(path),
            "crafted_on": (stored.get("crafted") or {}).get("model"),
            "attack": blob.get("attack"), "eps": blob.get("eps"), "norm": blob.get("norm"),
            "class_wise": stored_class_wise(blob), "crafted_by": stored.get("code"),
            "imported_from": stored.get("imported_from")}


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
    ctx.tracker.log_table("result", [{"attack": ctx.cfg.attack.name, **_scalars(metrics)}])
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
    ctx.tracker.log_table("attacks", [{"attack": name, **_scalars(m)} for name, m in per_attack.items()])
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
