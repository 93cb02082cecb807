"""One job: validate the config, run its task, and always leave an honest run record."""

from __future__ import annotations

import logging
import time
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from . import dist
from .errors import UserError, describe, unknown_key_line
from .gpu_assign import assign_gpu
from .io import write_text
from .progress import set_progress_mode
from .record import RunRecord
from .runinfo import git_commit, resolve_device, seed_everything, versions
from .schema import Config, to_plain, validate

log = logging.getLogger(__name__)
WAIT_WORTH_SAYING = 1.0  # seconds: a shorter wait for the model cache's lease goes unrecorded


def to_config(dcfg: DictConfig) -> Config:
    """The composed DictConfig as a validated `Config` dataclass (interpolations resolved)."""
    cfg = OmegaConf.to_object(dcfg)
    if not isinstance(cfg, Config):
        raise UserError("config: the root config must extend base_config")
    _refuse_added_keys(dcfg, cfg)
    validate(cfg)
    return cfg


def _refuse_added_keys(node: Any, obj: Any, prefix: str = "") -> None:
    """A key added with `+key=value` where the schema has none (OmegaConf would drop it silently)."""
    if not (is_dataclass(obj) and isinstance(node, DictConfig)):
        return
    own = {f.name for f in fields(obj)}
    for key in node.keys():
        full = f"{prefix}{key}"
        if key not in own:
            raise UserError(unknown_key_line(full, str(OmegaConf.select(node, "name", default="") or "") or None))
        _refuse_added_keys(node._get_node(key), getattr(obj, key), f"{full}.")


def _summary_base(dcfg: DictConfig, overrides: list[str]) -> dict[str, Any]:
    def pick(path: str) -> Any:
        value = OmegaConf.select(dcfg, path, default=None, throw_on_resolution_failure=False)
        return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value

    return {"status": "running", "task": pick("task"), "dataset": pick("dataset.name"), "model": pick("model.name"),
            "attack": pick("attack.name"), "training": pick("training.name"), "seed": pick("seed"),
            "rows": pick("rows"), "overrides": overrides, "git_commit": git_commit(), "versions": versions()}


def _resolved_config(dcfg: DictConfig) -> dict[str, Any]:
    try:
        return OmegaConf.to_container(dcfg, resolve=True, enum_to_str=True)
    except Exception:  # an unresolvable value is reported by validation; keep the raw form here
        return OmegaConf.to_container(dcfg, resolve=False, enum_to_str=True)


def run_job(dcfg: DictConfig, run_dir: Path, overrides: list[str], multirun: bool, group: Optional[str],
            job_num: Optional[int] = None) -> Optional[dict]:
    """Run the job; on failure write error.txt and status=failed, re-raising unless in a multirun.

    Under torchrun every rank runs the job and only rank 0 writes the record.
    """
    from .context import Context
    from .tasks import TASKS
    from .tracking import make_tracker

    t0 = time.time()
    writes = dist.is_main()
    run_dir.mkdir(parents=True, exist_ok=True)
    record = RunRecord(run_dir, OmegaConf.select(dcfg, "resume", default="auto", throw_on_resolution_failure=False))
    earlier_run = record.earlier_run()
    summary = {**_summary_base(dcfg, overrides), "run_dir": str(run_dir), "config": _resolved_config(dcfg),
               "started": False}
    if summary["git_commit"].endswith("-dirty"):
        log.warning("the source tree has uncommitted edits: the record names commit %s, not the exact code",
                    summary["git_commit"])
    kept = record.completed_run(summary["config"]) if record.resume is not False else None
    if kept is not None:  # a relaunched sweep continues where it stopped: what completed stays as it is
        log.info("%s holds a completed run of this config (code %s): kept, not run again (resume=false reruns it)",
                 run_dir, kept.get("git_commit"))
        return kept.get("metrics")
    if writes:
        (run_dir / "error.txt").unlink(missing_ok=True)  # an earlier attempt's failure; this attempt writes its own
    record.write_summary(summary)
    tracker, status, ctx = None, "failed", None
    try:
        cfg = to_config(dcfg)
        record.resume, record.keep_epochs = cfg.resume, set(cfg.keep_checkpoints or ())
        if cfg.resume is True and not earlier_run:  # resume=auto starts afresh where nothing ran before
            raise UserError(f"resume=true: {run_dir} holds no earlier run to resume; pass hydra.run.dir=<the "
                            "interrupted run's directory>, or leave resume=auto to start afresh")
        set_progress_mode(cfg.progress)
        seed_everything(cfg.seed, cfg.deterministic)
        device = dist.local_device(resolve_device(assign_gpu(job_num, cfg.device)))
        subject = cfg.attack.name if TASKS[cfg.task].attacks == "one" else cfg.training.name
        job_name = f"{cfg.task}-{cfg.dataset.name}-{cfg.model.name}-{subject}"
        tracker = make_tracker(cfg.logger, run_dir, to_plain(cfg), job_name, group, rank=dist.rank())
        log.info("task=%s dataset=%s model=%s on %s; run directory %s", cfg.task, cfg.dataset.name, cfg.model.name,
                 device, run_dir)
        ctx = Context(cfg, record, device, tracker)
        summary["started"] = True
        record.write_summary(summary)
        metrics = TASKS[cfg.task].run(ctx)
        summary.update(status="completed", metrics=metrics, device=str(device), world_size=dist.world_size())
        tracker.set_summary({k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool))})
        status = "completed"
        return metrics
    except BaseException as ex:
        line = describe(ex)
        summary.update(status="failed", error=line)
        if writes:
            write_text(run_dir / "error.txt", line + "\n")
        if multirun and isinstance(ex, Exception):
            log.error("job failed: %s", line)
            return None
        raise
    finally:
        if ctx is not None:  # what decided the results: data fingerprint, the network and perturbation used
            summary["provenance"] = ctx.provenance_record()
        summary["wall_seconds"] = round(time.time() - t0, 3)
        if record.training_continued_from is not None:  # wall_seconds then counts this attempt's part only
            summary["train_continued_from"] = record.training_continued_from
        if record.training_branched_from:  # its first epochs are another run's (branch_from)
            summary["train_branched_from"] = record.training_branched_from
        if record.continued_code:  # a training or crafting state another code version wrote
            summary["continued_code"] = sorted(record.continued_code)
        if record.waited_seconds >= WAIT_WORTH_SAYING:  # part of wall_seconds that was not this run's work
            summary["waited_seconds"] = record.waited_seconds
        record.write_summary(summary)
        if tracker is not None:
            tracker.finish(status)
