"""The network a run attacks, evaluates or trains: `model.checkpoint`, a model source's network, or the model
cache's (trained once on first use, one job training a slot while the others wait); training a defence, from
`training.init_checkpoint` where given; what the record says of each."""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

from . import dist
from .context import Context, scalars
from .data import DataBundle
from .errors import UserError
from .io import atomic_path
from .lease import slot_lease
from .models import build_model, load_model, prepare, read_model_file, save_model, saved_weights
from .models.sources import (
    Network,
    SourceContext,
    check_class_names,
    describe_network,
    network_identity,
    select_classes,
)
from .provenance import digest, identity, model_file_provenance, weights_key
from .runinfo import git_commit
from .schema import Config, to_plain
from .training import make_adversary
from .training.loop import TrainingRun, fit

log = logging.getLogger(__name__)


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
                      cfg.eval.batch_size, cfg.branch_from)
    result = fit(model, adversary, data, cfg.dataset, cfg.training, run)
    history = result.pop("history")
    if dist.world_size() > 1:
        result["ddp_world_size"] = dist.world_size()
        result["ddp_weights_identical"] = dist.same_on_all_ranks(list(model.state_dict().values()))
    stored = {"weights_key": key, "digest": digest(key), "identity": identity(key), "code": git_commit(),
              "data": data.fingerprint}
    if ctx.record.training_branched_from:  # its first epochs were another run's (branch_from)
        stored["branched_from"] = ctx.record.training_branched_from
    if not dist.is_main():  # rank 0 writes the file and the record; a rank's crafting state is keyed by the identity
        ctx.provenance["model"] = {"identity": stored["identity"], "source": "trained"}
    else:
        save_model(str(ctx.run_dir / "model.pt"), model, to_plain(cfg.model), cfg.dataset.name, data.num_classes,
                   data.input_shape, {k: v for k, v in result.items() if not isinstance(v, list)}, provenance=stored)
        ctx.provenance["model"] = model_file_provenance(str(ctx.run_dir / "model.pt"), {
            "provenance": stored, "state_dict": saved_weights(model)}, "trained")
        ctx.tracker.log_artifact(ctx.run_dir / "model.pt", name=f"model-{cfg.dataset.name}-{cfg.model.name}",
                                 type="model", metadata={"training": cfg.training.name, **scalars(result)})
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
