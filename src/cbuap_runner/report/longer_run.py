"""What a longer schedule gains: the runs of one seed that differ only in how long they trained, side by side.

A section whose manifest entry names `longer_run` (the row key of the schedule's length, `training.epochs`) pairs
each completed row with every completed row that shares its other row keys and trained longer, seed by seed: each
run's test accuracy and final validation accuracy, and what the longer run gained. Only seeds both rows ran are
paired, so the gain is never a difference of means over other seeds. The mean gain over the paired seeds and its
95 % t-interval follow where two or more seeds pair. A run that started from a checkpoint of the other (`branch_from`:
its record's `train_branched_from`; a longer run from the shorter one's, or a shorter one from the longer one's
before its schedule decays), or two runs that both started from checkpoints of a third, share their first epochs;
the table says how many, once the two runs' rows up to there are equal ("of another run" where they are not).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .formats import format_cell, row_label, varying_keys
from .records import epoch_rows, hashable, metric
from .significance import paired

METRIC = "clean_acc"
CURVE = ("epoch", "train_loss", "train_acc", "val_acc")  # what a shared epoch's rows agree on (not its rate or time)


def _final_val_acc(record: Mapping[str, Any]) -> float | None:
    epochs = epoch_rows(record)
    return float(epochs[-1]["val_acc"]) if epochs else None


def _by_seed(row: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {hashable(r.get("seed")): r for r in row["_records"] if r.get("seed") is not None}


def _pairs(keys: Sequence[str], rows: Sequence[Mapping[str, Any]], key: str
           ) -> list[tuple[Mapping[str, Any], Mapping[str, Any]]]:
    """(shorter, longer) for every two completed rows that share every row key but `key`, shorter first."""
    done = [r for r in rows if r["status"] == "completed" and isinstance(r.get(key), (int, float))]
    others = [k for k in keys if k != key]
    pairs = [(short, long) for short in done for long in done if long[key] > short[key]
             and all(hashable(short.get(k)) == hashable(long.get(k)) for k in others)]
    return sorted(pairs, key=lambda p: (p[0][key], p[1][key]))


def _branch_epoch(record: Mapping[str, Any]) -> int | None:
    branch = record.get("train_branched_from")
    return int(branch["epoch"]) if isinstance(branch, Mapping) else None


def _shared_epochs(shorter: Mapping[str, Any], longer: Mapping[str, Any]) -> str:
    """How many first epochs the two runs share: those one took from a checkpoint of the other, or both from one
    run's (the fewer where both branched); 0 where each trained them all."""
    epochs = [n for n in (_branch_epoch(shorter), _branch_epoch(longer)) if n is not None]
    if not epochs:
        return "0"
    n = min(epochs)
    curves = [[[row.get(k) for k in CURVE] for row in epoch_rows(r)[:n]] for r in (shorter, longer)]
    return f"{n}" if len(curves[0]) == n and curves[0] == curves[1] else f"{n} of another run"


def _cell(value: float | None) -> str:
    return format_cell((value, None, 1))


def longer_run_lines(keys: Sequence[str], rows: Sequence[Mapping[str, Any]], key: str) -> list[str]:
    """The section's paired table and a line per pair of rows (or one line saying that no longer run has finished
    beside a shorter one). ValueError where `key` is not one of the row keys."""
    if key not in keys:
        raise ValueError(f"longer_run={key!r}: not one of the section's row keys ({', '.join(keys)})")
    pairs = _pairs(keys, rows, key)
    intro = f"Trained longer, seed by seed (completed runs of one seed that differ only in `{key}`):"
    if not pairs:
        return [f"{intro} none yet: no run of a longer schedule has finished beside a shorter one.", ""]
    varying = varying_keys([k for k in keys if k != key], [r for r in rows if r["status"] == "completed"],
                           skip=("task", "dataset", "model"))
    lines = [intro, "", f"| row | seed | {key} | {METRIC} | final val_acc | {key} (longer) | {METRIC} (longer) | "
             f"final val_acc (longer) | epochs shared | {METRIC} gained (points) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    notes = []
    for short, long in pairs:
        label = row_label(short, varying)
        shorter, longer = _by_seed(short), _by_seed(long)
        for seed in sorted(shorter.keys() & longer.keys()):
            a, b = metric(shorter[seed], METRIC), metric(longer[seed], METRIC)
            gain = "–" if a is None or b is None else f"{100 * (b - a):+.1f}"
            lines.append(f"| {label} | {seed} | {short[key]} | {_cell(a)} | {_cell(_final_val_acc(shorter[seed]))} | "
                         f"{long[key]} | {_cell(b)} | {_cell(_final_val_acc(longer[seed]))} | "
                         f"{_shared_epochs(shorter[seed], longer[seed])} | {gain} |")
        gained = paired(short, long, METRIC)
        what = f"- {label}, {key} {long[key]} against {short[key]}"
        notes.append(f"{what}: no seed ran both." if gained is None else
                     f"{what}: {gained.text(scale=100, digits=1)} points of {METRIC} over {gained.n} paired "
                     f"seed{'s' * (gained.n != 1)}{'' if gained.low is None else ' (95 % t-interval)'}.")
    shared = ("`epochs shared`: the first epochs the pair shares, taken from a checkpoint of one of them, or of a "
              "third run, by the other or by both (branch_from).")
    return [*lines, "", shared, "", *notes, ""]
