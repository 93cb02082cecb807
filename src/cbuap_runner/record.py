"""A run's record and its resume state, in one place (docs/design.md, Run directory and Resume).

A run directory holds:
- `run_summary.json`: what ran and how it ended; written when the job starts ("running") and when it ends.
- `metrics.jsonl`: one row per epoch and per crafting pass (the local tracker appends them).
- `checkpoint.pt`: training's state after its last finished epoch (model, optimiser, scheduler, the defence's
  adversary, RNG, history) under the weights key it was trained for; `checkpoint_epoch<N>.pt`: a copy of it as it
  was after epoch N, for each N of `keep_checkpoints`.
- `crafting/<attack>.pt`: an attack's crafting state after its last pass and every `checkpoint_images` images within
  a pass (δ, the step's and the objective's state, the position in the pass and its order, the generator, the
  stopping rule's history) under the key of what it crafts (the attack's config, the network, the data, the seed).

With `resume=auto` (the default) or `true` a job continues from these, bit-identical on CPU to a run never
interrupted; a state written under other settings is refused with one line (a rerun with changed settings into the
same directory would otherwise continue, or overwrite, another experiment); `resume=false` starts afresh over it.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any, Optional

import torch

from . import dist
from .errors import UserError
from .io import atomic_path, safe_torch_load, torch_save, write_json
from .provenance import file_sha256
from .runinfo import git_commit

log = logging.getLogger(__name__)

SUMMARY = "run_summary.json"
METRICS = "metrics.jsonl"
CHECKPOINT = "checkpoint.pt"
CRAFTING = "crafting"
PER_CLASS = "per_class"  # <stem>.json: per-class lists and the transition matrix of one evaluation
INLINE_CLASSES = 20  # up to this many classes, per-class lists stay in run_summary.json
TRAINING_STATE = ("model", "optimizer", "scheduler", "adversary", "rng", "epoch", "history", "train_seconds")


def kept_checkpoint(epoch: int) -> str:
    """The name of the copy of checkpoint.pt kept after `epoch` (keep_checkpoints)."""
    return f"checkpoint_epoch{epoch}.pt"


def rng_states() -> dict[str, Any]:
    states = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():  # (a state from a machine with more GPUs: this one's share)
        torch.cuda.set_rng_state_all(states["cuda"][:torch.cuda.device_count()])


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in _flatten(sub, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): tree}


def _rows(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.is_file() else []


def _rewrite(path: Path, lines: list[str]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text("".join(f"{line}\n" for line in lines))


def _row(line: str) -> Optional[dict]:
    """A metrics.jsonl line as a row; None for a line cut short by a kill."""
    try:
        row = json.loads(line)
    except ValueError:
        return None
    return row if isinstance(row, dict) else None


INPUT_FILES = ("model", "init_checkpoint", "perturbation")  # provenance entries of files a run read


def _changed_input(provenance: dict[str, Any]) -> Optional[str]:
    """The path of a file the run read (its network, starting weights or perturbation) whose bytes are no longer
    those the record names, or None. A network the run trained itself is its own output, not an input."""
    for name in INPUT_FILES:
        entry = provenance.get(name)
        if not isinstance(entry, dict) or not entry.get("path") or not entry.get("sha256"):
            continue
        if entry.get("source") == "trained":
            continue
        path = Path(entry["path"]).expanduser()
        if not path.is_file() or file_sha256(path) != entry["sha256"]:
            return str(path)
    return None


STARTING_KEYS = ("resume", "branch_from", "keep_checkpoints")  # where a run starts and what it keeps, not what it is


def _same_config(earlier: Any, current: dict[str, Any]) -> bool:
    """Whether a record's resolved config is `current`, STARTING_KEYS aside; a key one of them lacks counts as null
    (a key a later code version added, left at its null default, does not make the run another)."""
    return isinstance(earlier, dict) and all(key in STARTING_KEYS for key, _, _ in differing_keys(earlier, current))


class RunRecord:
    """The files of one run directory and the resume mode (`resume`: "auto", True or False) they are read under."""

    def __init__(self, run_dir: Path, resume: bool | str = "auto") -> None:
        self.run_dir, self.resume = Path(run_dir), resume
        self.training_continued_from: Optional[int] = None  # the epoch of the training checkpoint loaded, if any
        self.training_branched_from: Optional[dict[str, Any]] = None  # another run's checkpoint it started from
        self.keep_epochs: set[int] = set()  # epochs whose checkpoint is also kept as checkpoint_epoch<N>.pt
        self.waited_seconds = 0.0  # spent waiting for another job to train the model this run needs
        self.continued_code: set[str] = set()  # other code versions whose training or crafting state it continued
        self._code: Optional[str] = None

    @property
    def code(self) -> str:
        """The code version this attempt runs (what its states are written under)."""
        if self._code is None:
            self._code = git_commit()
        return self._code

    def note_code(self, written_by: Optional[str], path: Path) -> None:
        """A state continued from another code version: said in the log, and in the record (`continued_code`)."""
        if written_by and written_by != self.code:
            log.warning("%s was written by code %s, this run is %s: continued, and the record says so", path,
                        written_by, self.code)
            self.continued_code.add(written_by)

    # ------------------------------------------------------------ the summary

    def earlier_run(self) -> bool:
        """Whether the directory holds an earlier attempt whose task started (not merely a refused start)."""
        try:
            earlier = json.loads((self.run_dir / SUMMARY).read_text())
        except (OSError, ValueError):
            return False
        return bool(earlier.get("started", True))  # records from before "started" was written: an attempt

    def completed_run(self, config: dict[str, Any]) -> Optional[dict[str, Any]]:
        """The directory's record where it is of a completed run of `config` (the resolved job config; `resume`
        aside), else None: a relaunched sweep keeps such a run rather than running it again (resume=false reruns it)."""
        try:
            earlier = json.loads((self.run_dir / SUMMARY).read_text())
        except (OSError, ValueError):
            return None
        if not (isinstance(earlier, dict) and earlier.get("status") == "completed"):
            return None
        if not _same_config(earlier.get("config"), config):
            return None
        changed = _changed_input(earlier.get("provenance") or {})
        if changed:
            log.info("%s: %s has changed since the run completed; running it again", self.run_dir, changed)
            return None
        return earlier

    def write_summary(self, summary: dict[str, Any]) -> None:
        if dist.is_main():
            write_json(self.run_dir / SUMMARY, summary)

    # ------------------------------------------------------------ the metrics log

    def rewind_metrics(self, epoch: int) -> set[int]:
        """Cut metrics.jsonl back to what training checkpoint `epoch` covers; returns the epochs whose rows remain.

        A run killed after appending rows the checkpoint does not cover (a later epoch, the attack that followed
        training, a half-written line) would otherwise repeat them when it resumes.
        """
        path = self.run_dir / METRICS
        if not path.is_file():
            return set()
        kept, epochs, end = [], set(), 0
        for line in _rows(path):
            row = _row(line)
            if row is None:
                break  # a line cut short by the kill: nothing after it is trusted
            is_epoch_row = "epoch" in row and "train_loss" in row
            if is_epoch_row and (row["epoch"] > epoch or row["epoch"] in epochs):
                break
            kept.append(line)
            if is_epoch_row:
                epochs.add(row["epoch"])
                end = len(kept)
        _rewrite(path, kept[:end])
        return epochs

    def forget_rows(self, key: str) -> int:
        """Drop the rows that hold `key` (and lines cut short) from metrics.jsonl; returns how many.

        A task calls it before it logs a section of rows (an attack's crafting passes: key `<prefix>pass`), so that a
        run repeated in its directory leaves one set of them, not one per attempt; the other rows are kept.
        """
        path = self.run_dir / METRICS
        lines = _rows(path)
        kept = [line for line in lines if (row := _row(line)) is not None and key not in row]
        if len(kept) < len(lines):
            _rewrite(path, kept)
        return len(lines) - len(kept)

    # ------------------------------------------------------------ training's checkpoint

    def save_training(self, **state: Any) -> None:
        """Write checkpoint.pt atomically (model, optimiser, scheduler, adversary, epoch, history, key) with RNG."""
        branch = {"branch": self.training_branched_from} if self.training_branched_from else {}
        torch_save({**state, **branch, "rng": rng_states(), "code": self.code}, self.run_dir / CHECKPOINT)
        if state["epoch"] in self.keep_epochs:  # e.g. for a longer schedule to branch from (training/branch.py)
            with atomic_path(self.run_dir / kept_checkpoint(state["epoch"])) as tmp:
                shutil.copyfile(self.run_dir / CHECKPOINT, tmp)

    def training_checkpoint(self, key: dict[str, Any]) -> Optional[dict[str, Any]]:
        """The checkpoint to continue training from: none for resume=false or before the first epoch ended;
        refused with one line when it is not a training checkpoint or was trained under another `key`."""
        path = self.run_dir / CHECKPOINT
        if self.resume is False or not path.exists():
            if self.resume is True:
                log.warning("resume=true: no %s in %s (interrupted before the first epoch ended); starting from "
                            "epoch 1, or branch_from's", CHECKPOINT, self.run_dir)
            return None
        blob = safe_torch_load(path, "resume")
        if not isinstance(blob, dict) or any(k not in blob for k in TRAINING_STATE):
            raise UserError(f"resume={self.label}: {path} is not a training checkpoint of this tool; resume in the "
                            f"interrupted run's own directory, or {self.afresh_hint}")
        self.check_same(blob.get("config"), key, path, "trained")
        self.training_continued_from = int(blob["epoch"])
        self.note_code(blob.get("code"), path)
        if blob.get("branch"):  # an interrupted branch: its first epochs are still the other run's
            self.branched(blob["branch"])
        return blob

    def branched(self, branch: dict[str, Any]) -> None:
        """Training started from another run's checkpoint (training/branch.py: its path, sha256, epoch, code): the
        record and every later checkpoint of this run say so."""
        self.training_branched_from = branch
        self.training_continued_from = self.training_continued_from or branch["epoch"]
        self.note_code(branch.get("code"), Path(branch["path"]))

    # ------------------------------------------------------------ crafting states

    def crafting(self, name: str, key: dict[str, Any], every: int) -> "CraftingCheckpoint":
        """The crafting state of attack `name` (a pipeline's attacks have one each; under torchrun, one per rank)."""
        rank = f".rank{dist.rank()}" if dist.world_size() > 1 else ""
        return CraftingCheckpoint(self, self.run_dir / CRAFTING / f"{name}{rank}.pt", key, every)

    # ------------------------------------------------------------ shared

    @property
    def label(self) -> str:
        """The resume mode as written on the command line: auto, true or false."""
        return str(self.resume).lower()

    @property
    def afresh_hint(self) -> str:
        """What to do instead of resuming from a state that cannot be continued."""
        if self.resume == "auto":
            return "write to another hydra.run.dir / hydra.sweep.dir, or pass resume=false to start afresh over it"
        return "start a new run"

    def check_same(self, stored: Optional[dict[str, Any]], current: dict[str, Any], path: Path, verb: str) -> None:
        """Refuse to continue a state written under settings that differ from this run's."""
        if stored is None:  # a checkpoint from before settings were recorded
            return
        for key, old, new in differing_keys(stored, current)[:1]:
            raise UserError(f"{key}={new!r}: {path} was {verb} with {key}={old!r}; resume={self.label} continues "
                            f"it only under the same settings: keep them, or {self.afresh_hint}")


def differing_keys(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(dotted key, old value, new value) for every leaf where two nested settings differ, in key order."""
    a, b = _flatten(old), _flatten(new)
    return [(key, a.get(key), b.get(key)) for key in sorted(a.keys() | b.keys()) if a.get(key) != b.get(key)]


def sparse_matrix(matrix: list[list[int]]) -> list[list[int]]:
    """A count matrix as its non-zero cells [row, column, count]."""
    return [[i, j, int(v)] for i, row in enumerate(matrix) for j, v in enumerate(row) if v]


def per_class_to_file(metrics: dict[str, Any], k: int, run_dir: Path, stem: str) -> dict[str, Any]:
    """`metrics` as run_summary.json keeps them: the transition matrix (always) and, past INLINE_CLASSES classes,
    every per-class list (length `k`) go to `<stem>.json` in the run directory (the matrix as its non-zero
    [clean, adversarial, count] cells), named in `per_class_file`; the scalar summaries (worst, mean, std) stay.
    Rank 0 writes."""
    lists = [key for key, value in metrics.items() if isinstance(value, list) and len(value) == k
             and key != "transition_matrix"] if k > INLINE_CLASSES else []
    moved = lists + (["transition_matrix"] if "transition_matrix" in metrics else [])
    if not moved:
        return metrics
    side = {key: metrics[key] for key in moved}
    if "transition_matrix" in side:
        side["transition_matrix"] = {"shape": [k, k], "cells": sparse_matrix(metrics["transition_matrix"])}
    if dist.is_main():
        write_json(run_dir / f"{stem}.json", side)
    kept = {key: value for key, value in metrics.items() if key not in moved}
    return {**kept, "per_class_file": f"{stem}.json"}


class CraftingCheckpoint:
    """One attack's crafting state file (engine.Checkpoint): `load` what an interrupted attempt left, `save` the
    state the crafting loop hands over; `every`: images between two saves within a pass (0: at pass ends only)."""

    def __init__(self, record: RunRecord, path: Path, key: dict[str, Any], every: int) -> None:
        self.record, self.path, self.key, self.every = record, path, key, every
        self.continued_from: Optional[dict[str, int]] = None  # {"passes", "position"} of the state loaded, if any

    def load(self) -> Optional[dict[str, Any]]:
        if self.record.resume is False or not self.path.is_file():
            return None
        blob = safe_torch_load(self.path, "resume")
        if not isinstance(blob, dict) or not {"key", "loop", "attack"} <= blob.keys():
            raise UserError(f"resume={self.record.label}: {self.path} is not a crafting state of this tool; "
                            f"{self.record.afresh_hint}")
        self.record.check_same(blob["key"], self.key, self.path, "crafted")
        self.continued_from = {k: int(blob["loop"][k]) for k in ("passes", "position")}
        self.record.note_code(blob.get("code"), self.path)
        log.info("continuing the crafting of %s after %d passes and %d positions into the next (%s)",
                 self.path.stem, self.continued_from["passes"], self.continued_from["position"], self.path)
        return blob

    def save(self, state: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        torch_save({**state, "key": self.key, "code": self.record.code}, self.path)
