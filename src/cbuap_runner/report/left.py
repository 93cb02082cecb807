"""What is left to run: the runs a section still plans, and their cost estimated from the runs that did run.

A section whose manifest entry names `seeds_to_run` (a list of seeds) plans every one of its rows on each of them,
or only the rows whose row keys hold the values its `seeds_to_run_where` names (e.g. `{"training.epochs": 182}`):
a row is the section's runs that share every row key but the seed (the section's `rows`, else the record's own).
A planned (row, seed) with no completed record is left to run. Its cost is the median cost of the row's completed
runs: a run's wall time where it ran in one attempt, else the training time it summed over every attempt; a row
none of whose runs has such a cost gets no estimate, and the document says how many. The estimate is the pace of
the machine as the section says it was loaded, not a benchmark. A row that no run has started yet is not known to
the records, so the section's own text must name it.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .formats import fmt_duration, row_label, varying_keys
from .records import hashable, metric, settings
from .rows import row_key

ABOUT = ("The runs each section still plans (its manifest entry's `seeds_to_run`: every row of the section on each "
         "of these seeds, or the rows its `seeds_to_run_where` names) that no completed record holds yet, and what "
         "they would cost at the median cost of the same row's completed runs (the wall time of a run that ran in "
         "one attempt, else its training time over every attempt). These are estimates at the pace of the machine "
         "as each section says it was loaded, not benchmarks; a row none of whose runs has such a cost gets no "
         "estimate, and rows no run has started are named in the section's own text, not here.")


@dataclass(frozen=True)
class Left:
    """One row's runs left to run."""

    label: str
    seeds: tuple[Any, ...]
    per_run: float | None  # seconds, the median cost of the row's completed runs; None: none has a cost

    @property
    def seconds(self) -> float | None:
        return None if self.per_run is None else self.per_run * len(self.seeds)


def run_cost(record: Mapping[str, Any]) -> float | None:
    """What the run cost: its wall time where it ran in one attempt, else its training time over every attempt."""
    wall = metric(record, "wall_seconds")
    return wall if wall is not None else metric(record, "train_seconds")


def planned_seeds(section: Mapping[str, Any]) -> list[Any]:
    """The section's `seeds_to_run` (none planned where it names none)."""
    seeds = section.get("seeds_to_run", [])
    if not isinstance(seeds, list) or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ValueError(f"section {section['name']}: seeds_to_run={seeds!r}: must be a list of whole numbers")
    return seeds


def _planned_rows(section: Mapping[str, Any]) -> dict[str, Any]:
    """The row-key values a planned row holds (`seeds_to_run_where`; every row where it names none)."""
    where = section.get("seeds_to_run_where", {})
    if not isinstance(where, Mapping):
        raise ValueError(f"section {section['name']}: seeds_to_run_where={where!r}: must map row keys to values")
    return {row_key(k): v for k, v in where.items()}


def left_to_run(section: Mapping[str, Any], records: Sequence[Mapping[str, Any]],
                rows: Sequence[str] | None = None) -> list[Left]:
    """The rows of `records` with planned seeds no completed record holds, in the order the rows first appear;
    `rows`: the row keys where neither the section nor a record names any (the command line's)."""
    seeds, where = planned_seeds(section), _planned_rows(section)
    if not seeds:
        return []
    groups: dict[tuple[str, ...], list[Mapping[str, Any]]] = {}
    values: dict[tuple[str, ...], dict[str, Any]] = {}
    held: set[str] = set()  # the setting keys some run has
    for record in records:
        keys = [row_key(k) for k in (section.get("rows") or record.get("rows") or rows or []) if k != "seed"]
        if not keys:
            raise ValueError(f"section {section['name']}: seeds_to_run needs row keys (the records' `rows` or the "
                             "section's)")
        found = settings(record)
        held.update(found)
        if any(hashable(found.get(k)) != hashable(v) for k, v in where.items()):
            continue
        key = tuple(f"{k}={hashable(found.get(k))}" for k in keys)
        groups.setdefault(key, []).append(record)
        values.setdefault(key, {k: found.get(k) for k in keys})
    unknown = [k for k in where if k not in held]
    if records and unknown:
        raise ValueError(f"section {section['name']}: seeds_to_run_where names {unknown[0]!r}, which no run has")
    shown = varying_keys(sorted({k for v in values.values() for k in v}), list(values.values()),
                         skip=("task", "dataset", "model"))
    out = []
    for key, runs in groups.items():
        done = [r for r in runs if r.get("status") == "completed"]
        missing = tuple(s for s in seeds if s not in {r.get("seed") for r in done})
        if missing:
            costs = [c for c in (run_cost(r) for r in done) if c is not None]
            out.append(Left(row_label(values[key], shown), missing, statistics.median(costs) if costs else None))
    return out


def left_lines(sections: Sequence[tuple[str, Sequence[Any], Sequence[Left]]]) -> list[str]:
    """The document's closing part: per section that plans seeds (title, its seeds_to_run, what is left), the runs
    left, their estimated cost and how many have none; then, folded, each row's seeds and cost per run (the section
    named on its first row)."""
    planned = [s for s in sections if s[1]]
    if not planned:
        return []
    lines = ["## What is left to run", "", ABOUT, "",
             "| section | seeds to run | runs left | estimated cost | runs left with no estimate |", "|---|---|---|---|---|"]
    detail = ["<details><summary>Each row's runs left</summary>", "",
              "| section | row | seeds | cost per run (median of its runs) |", "|---|---|---|---|"]
    total = 0.0
    for title, seeds, left in planned:
        runs = sum(len(row.seeds) for row in left)
        known = sum(row.seconds for row in left if row.seconds is not None)
        unknown = sum(len(row.seeds) for row in left if row.per_run is None)
        total += known
        cost = fmt_duration(known) if runs > unknown else "–"
        lines.append(f"| {title} | {', '.join(map(str, seeds))} | {runs} | {cost} | {unknown} |")
        detail += [f"| {title if i == 0 else ''} | {row.label} | {', '.join(map(str, row.seeds))} | "
                   f"{'–' if row.per_run is None else fmt_duration(row.per_run)} |" for i, row in enumerate(left)]
    return [*lines, "", f"In all: {fmt_duration(total)} of estimated runs.", "", *detail, "", "</details>", ""]
