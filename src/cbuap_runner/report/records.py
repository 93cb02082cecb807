"""Run records (`run_summary.json`): loading them, the settings that decide each one's result, its code version."""

from __future__ import annotations

import json
import math
import os
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

SUMMARY = "run_summary.json"
LOG = "metrics.jsonl"  # record.METRICS (the report reads runs without the runner): a row per epoch and crafting pass
# top-level record fields, each the name of its config group (`attack` is `attack.name`)
IDENTITY_FIELDS = ("task", "dataset", "model", "attack", "training")
# Settings that differ between runs without changing a result (besides the paths provenance stands in for);
# `rows` names the keys that make a table row and decides nothing itself.
# (branch_from: where training started, as resume is; the run ends as one trained from epoch 1, and its record's
# train_branched_from says so)
HARMLESS_ROOTS = {"seed", "hydra", "logger", "device", "progress", "cache_dir", "resume", "branch_from",
                  "keep_checkpoints", "checkpoint_images", "deterministic", "rows"}
HARMLESS_KEYS = {"dataset.download", "eval.save_predictions", "model.channels_last", "model.compile"}
# tasks that read no `attack.*` key: training, and evaluating a stored perturbation (its attack is the file's)
TASKS_WITHOUT_ATTACK = ("train", "evaluate")
PARTIAL_WHEN_CONTINUED = ("craft_seconds", "wall_seconds")  # timings a relaunch measures only in part
SHORT_ID = 12  # hex characters of a fingerprint or identity shown as a setting


class NoRecords(Exception):
    """The directory holds no run records."""


def load_records(root: str | os.PathLike) -> list[dict[str, Any]]:
    """Every `run_summary.json` under `root` (recursively), each with `_dir` (its run directory
    relative to `root`). An unreadable file becomes a record with status "unreadable"."""
    root = Path(root)
    if not root.is_dir():
        raise NotADirectoryError(f"{root}: no such directory")
    records = []
    for path in sorted(root.rglob(SUMMARY)):
        rel = path.parent.relative_to(root).as_posix() or "."
        try:
            record = json.loads(path.read_text())
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as err:
            record = {"status": "unreadable", "error": f"{path}: {err}".splitlines()[0]}
        record["_dir"] = rel
        records.append(record)
    return records


def log_rows(record: Mapping[str, Any], *keys: str) -> list[dict[str, Any]]:
    """The rows of the run's metrics.jsonl (beside its record: `_path`, else `_dir`) that hold every one of `keys`,
    in order; a line cut short by a killed process is skipped."""
    path = Path(location(record)) / LOG
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and all(k in row for k in keys):
            rows.append(row)
    return rows


def epoch_rows(record: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The run's per-epoch training rows, in order."""
    return log_rows(record, "epoch", "val_acc")


def location(record: Mapping[str, Any]) -> str:
    """Where the record was read: its path where known, else its run directory under the root."""
    return str(record.get("_path") or record.get("_dir"))


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one dict with dotted keys."""
    out: dict[str, Any] = {}
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            out.update(flatten(value, f"{prefix}{key}."))
    elif prefix:
        out[prefix[:-1]] = obj
    return out


def override_key(override: str) -> str | None:
    """`attack.eps` for `attack.eps=0.2` (also `+key=`, `++key=`); None for `~key` or no '='."""
    if "=" not in override or override.startswith("~"):
        return None
    return override.split("=", 1)[0].lstrip("+").strip()


def is_harmless(key: str) -> bool:
    """Seed, execution and logging options: they differ between runs of one experiment."""
    return re.split(r"[./]", key)[0] in HARMLESS_ROOTS or key in HARMLESS_KEYS


def short_id(value: Any) -> str:
    """A fingerprint or identity cut to SHORT_ID hex characters (a `sha256:` prefix kept)."""
    prefix, _, digest = str(value).rpartition(":")
    return f"{prefix}:{digest[:SHORT_ID]}" if prefix else digest[:SHORT_ID]


def hashable(value: Any) -> str:
    """`value` as a string that compares equal exactly when the values do."""
    return json.dumps(value, sort_keys=True, default=str)


def settings(record: Mapping[str, Any]) -> dict[str, Any]:
    """What decides the record's result: flattened config, overrides and the top-level identity fields, with
    provenance in place of the paths it identifies and the attack a task actually ran."""
    out = flatten(record.get("config") or {})
    for override in record.get("overrides") or []:
        key = override_key(str(override))
        if key and key not in out:
            out[key] = str(override).split("=", 1)[1]
    for key in IDENTITY_FIELDS:
        if key in record:
            out[key] = record[key]
        elif isinstance(out.get(f"{key}.name"), str):
            out[key] = out[f"{key}.name"]
    _use_provenance(out, record.get("provenance") or {})
    if out.get("task") in TASKS_WITHOUT_ATTACK:
        _use_attack_run(out, record)
    return out


def _use_provenance(out: dict[str, Any], provenance: Mapping[str, Any]) -> None:
    """Replace the paths of the data, model and perturbation by what the record says they held (a path alone is
    a setting like any other: another path may hold other contents)."""
    data, model, perturbation = (provenance.get(k) or {} for k in ("data", "model", "perturbation"))
    if data.get("fingerprint"):
        for key in ("dataset.root", "dataset.download"):
            out.pop(key, None)
        out["data"] = short_id(data["fingerprint"])
    if model.get("identity"):
        for key in ("model.checkpoint", "training.init_checkpoint"):
            out.pop(key, None)
        out["model.identity"] = short_id(model["identity"])
    if perturbation:
        out.pop("perturbation", None)
        out["perturbation.identity"] = short_id(perturbation.get("identity") or perturbation.get("sha256"))


def _use_attack_run(out: dict[str, Any], record: Mapping[str, Any]) -> None:
    """For a task that reads no `attack.*` key: drop the config's attack, and label an evaluated perturbation by
    the attack that made it (from its provenance, else the file's attack name with ε unknown)."""
    for key in [k for k in out if k == "attack" or k.startswith("attack.")]:
        del out[key]
    stored = (record.get("provenance") or {}).get("perturbation")
    if stored:
        out.update({"attack": stored.get("attack"), "attack.eps": stored.get("eps"), "attack.norm": stored.get("norm")})
    elif (record.get("metrics") or {}).get("perturbation_attack") is not None:
        out.update({"attack": record["metrics"]["perturbation_attack"], "attack.eps": None})


def measured_in_part(record: Mapping[str, Any], name: str) -> bool:
    """Whether timing `name` counts only the last attempt of a run that continued an earlier one: its crafting
    (both timings), or its training (the wall time; `train_seconds` sums every attempt, so a training that took
    longer than the run's wall time continued one, even in a record from before `train_continued_from`)."""
    metrics = record.get("metrics") or {}
    if name not in PARTIAL_WHEN_CONTINUED:
        return False
    if metrics.get("craft_continued_from"):
        return True
    trained, wall = metrics.get("train_seconds"), record.get("wall_seconds")
    return name == "wall_seconds" and (record.get("train_continued_from") is not None or (
        isinstance(trained, (int, float)) and isinstance(wall, (int, float)) and trained > wall))


def metric(record: Mapping[str, Any], name: str) -> float | None:
    """The record's finite number `name` (a metric, or its `wall_seconds`), else None; None too for a timing that
    counts only the last attempt of a continued run (measured_in_part)."""
    metrics = record.get("metrics") or {}
    if measured_in_part(record, name):
        return None
    value = metrics.get(name)
    if value is None and name == "wall_seconds":  # less the wait for another job to train the model it needs
        value = record.get("wall_seconds")
        waited = record.get("waited_seconds")
        if isinstance(value, (int, float)) and isinstance(waited, (int, float)):
            value -= waited
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def commit_of(record: Mapping[str, Any]) -> str:
    """The code version that produced the record (provenance.code, else git_commit)."""
    return str((record.get("provenance") or {}).get("code") or record.get("git_commit") or "unknown")


def short_commit(commit: str) -> str:
    """A 7-character hash, `-dirty` kept."""
    return commit.removesuffix("-dirty")[:7] + ("-dirty" if commit.endswith("-dirty") else "")


def commits_of(record: Mapping[str, Any]) -> set[str]:
    """The code versions behind the record: its own, and those whose training or crafting state it continued."""
    return {commit_of(record), *(str(c) for c in record.get("continued_code") or [])}


def commit_counts(records: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """{code version: number of records it is behind}, the most frequent first (a record that continued another
    version's state counts under both)."""
    counts = Counter(code for record in records for code in commits_of(record))
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def counted(n: int, noun: str) -> str:
    """`1 seed`, `3 seeds`."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def commits_text(counts: Mapping[str, int]) -> str:
    """`abc1234 (2 runs), def5678 (1 run)`."""
    return ", ".join(f"{short_commit(c)} ({counted(k, 'run')})" for c, k in counts.items())
