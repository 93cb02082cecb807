"""Table rows: which settings make a row, the runs of each row aggregated over their seeds, the tuning choice.

A row's keys come from, in order: the keys a caller declares (a manifest section's `rows`, which may merge the
records of several sweeps, or the command line's `--rows`), the records' own `rows` (the config keys a sweep
declares, written into every run_summary.json), or else they are inferred from the runs' overrides. Whichever
they are, the clash guard adds any other setting that would put two different experiments into one row (seeds,
execution and logging options aside), so that no row averages runs that differ in anything but their seed.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from .formats import setting_text
from .kinds import metric_columns, resolve_kind
from .records import IDENTITY_FIELDS, commit_counts, hashable, is_harmless, location, metric, override_key, settings

log = logging.getLogger(__name__)
T = TypeVar("T")

# the row keys inference starts from, where any run has them
BASE_KEYS = ("task", "dataset", "model", "attack", "training", "attack.eps")
# tuning: the CB-UAP setting with the highest validation entropy among those whose validation fooling rate is
# within this of SGD-UAP's (the paper's goal: spread the labels without losing strength). The default for a table
# made without a document manifest; the manifest's claims.tuning_fooling_margin sets it for the document.
TUNING_FOOLING_MARGIN = 0.02


# ----------------------------------------------------------------------------- row keys


def row_keys(records: Sequence[Mapping[str, Any]], declared: Sequence[str] | None = None) -> list[str]:
    """The settings that define a table row: `declared`, else the records' `rows`, else inferred; the clash guard's
    additions follow. ValueError for records that declare different rows (and nothing is declared), or a declared
    key that no run has and no record's own `rows` names."""
    runs = [settings(r) for r in records]
    recorded = None if declared else recorded_rows(records)
    if recorded is None and not declared:
        keys = _inferred(records, runs)
        log.info("note: rows inferred from the runs' overrides (%s); declare them with `rows` (the table config's or a "
                 "manifest's) or --rows", ", ".join(keys))
        return keys
    keys = _named(declared or recorded, runs, known=_recorded_keys(records) if declared else None)
    added = _clash_keys(runs, keys)
    if added:
        log.info("note: rows %s added: runs that share the declared rows differ in them", ", ".join(added))
    return keys + added


def recorded_rows(records: Sequence[Mapping[str, Any]]) -> list[str] | None:
    """The `rows` the records declare (records without them follow the others), or None where none does."""
    found: dict[str, Mapping[str, Any]] = {}
    for record in records:
        rows = record.get("rows")
        if rows is None:
            continue
        if not isinstance(rows, list) or not all(isinstance(k, str) for k in rows):
            raise ValueError(f"{location(record)}: rows={rows!r}: must be a list of config keys")
        found.setdefault(hashable(rows), record)
    if len(found) > 1:
        shown = "; ".join(f"{r['rows']} in {location(r)}" for r in found.values())
        raise ValueError(f"rows: the records of one table declare different rows ({shown}); tabulate them apart")
    return list(next(iter(found.values()))["rows"]) if found else None


def row_key(name: str) -> str:
    """The row key of a config key: a group's `name` is the group's column (`attack.name` is `attack`)."""
    group, _, leaf = name.rpartition(".")
    return group if leaf == "name" and group in IDENTITY_FIELDS else name


def _recorded_keys(records: Sequence[Mapping[str, Any]]) -> set[str]:
    """The row keys some record's own `rows` names: its sweep declares them, even where no run of it sets one yet
    (a config group its later jobs add)."""
    return {row_key(k) for r in records if isinstance(r.get("rows"), list) for k in r["rows"] if isinstance(k, str)}


def _named(names: Sequence[str], runs: Sequence[Mapping[str, Any]], known: set[str] | None) -> list[str]:
    """The row keys `names` declares, in order; unless `known` is None, refuse a key that no run has and `known`
    lacks (a typo)."""
    if isinstance(names, str) or not all(isinstance(n, str) and n.strip() for n in names):
        raise ValueError(f"rows={names!r}: must be a list of config keys")
    keys = list(dict.fromkeys(row_key(n.strip()) for n in names))
    for key in keys:
        if key == "seed":
            raise ValueError("rows: seed: the seeds of one row are averaged; name the other keys")
        if known is not None and key not in known and not any(key in s for s in runs):
            raise ValueError(f"rows: {key}: no run of this table has this setting (a config key such as "
                             "attack.eps, or a config group such as table/tune)")
    return keys


def _inferred(records: Sequence[Mapping[str, Any]], runs: Sequence[Mapping[str, Any]]) -> list[str]:
    """The identity fields and `attack.eps` where any run has them, every key a run overrode (except the seed and
    execution options) and the clash guard's additions; override keys that never vary are dropped."""
    keys = [k for k in BASE_KEYS if any(s.get(k) is not None for s in runs)]
    for record, run in zip(records, runs):
        for override in record.get("overrides") or []:
            key = override_key(str(override))
            if key and key not in keys and not is_harmless(key) and key in run:
                keys.append(key)
    keys += _clash_keys(runs, keys)
    # a sweep over one value adds no information
    return [k for k in keys if k in BASE_KEYS or len({hashable(s.get(k)) for s in runs}) > 1]


def _clash_keys(runs: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> list[str]:
    """The clash guard: each setting that differs between runs sharing a row of `keys` (and of the settings added
    before it, in sorted order), so that it becomes a row key too."""
    keys = list(keys)
    added: list[str] = []
    for key in sorted({k for s in runs for k in s if not is_harmless(k) and k not in keys}):
        if key.endswith(".name") and key[: -len(".name")] in keys:
            continue
        if _clashes(runs, keys, key):
            keys.append(key)
            added.append(key)
    return added


def _clashes(runs: Sequence[Mapping[str, Any]], keys: Sequence[str], candidate: str) -> bool:
    seen: dict[str, str] = {}
    for s in runs:
        ident = hashable([s.get(k) for k in keys])
        if seen.setdefault(ident, hashable(s.get(candidate))) != hashable(s.get(candidate)):
            return True
    return False


# ----------------------------------------------------------------------------- aggregation


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (None for fewer than two values)."""
    if not values:
        return None, None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def build_rows(records: Sequence[Mapping[str, Any]], kind: str = "auto", metrics: Sequence[str] | None = None,
               declared: Sequence[str] | None = None) -> tuple[list[str], list[str], list[dict[str, Any]]]:
    """Aggregate records into table rows; returns (setting columns, metric columns, rows). `declared`: the row
    keys where the records declare none (see row_keys).

    Each completed row holds its settings, `status`, `n`, `seeds`, `commits` ({code version: runs}), the run
    directories and `<metric>: (mean, std, n)`; each run that did not complete is a row of its own with its
    `error`. Rows are sorted by their settings; failed rows follow their group. Two completed runs of one seed in
    a row raise ValueError: the row would count one experiment twice.
    """
    kind = resolve_kind(records, kind)
    keys = row_keys(records, declared)
    columns = list(metrics) if metrics else metric_columns(records, kind)
    rows = [_aggregate(group, columns) for group in _groups(records, keys)]
    if "time_vs_natural" in columns:
        _add_time_vs_natural(rows)
    rows.sort(key=lambda r: ([_sort_key(r.get(k)) for k in keys], r["status"] != "completed", r["dirs"]))
    return keys, columns, rows


def _groups(records: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> list[dict[str, Any]]:
    """The runs of each row, in the order of their first run: completed runs by their settings, others alone."""
    groups: dict[str, dict[str, Any]] = {}
    for record in records:
        run = settings(record)
        ident = hashable([run.get(k) for k in keys])
        status = record.get("status") or "unknown"
        if status != "completed":
            ident += f"|{status}|{record.get('_dir')}"
        if ident not in groups:
            groups[ident] = {"settings": {k: run.get(k) for k in keys}, "status": status, "records": []}
        groups[ident]["records"].append(record)
    return list(groups.values())


def _aggregate(group: Mapping[str, Any], columns: Sequence[str]) -> dict[str, Any]:
    recs = group["records"]
    done = group["status"] == "completed"
    if done:
        _check_seeds_unique(group["settings"], recs)
    row: dict[str, Any] = {**group["settings"], "status": group["status"], "n": len(recs)}
    row["seeds"] = sorted({r.get("seed") for r in recs if r.get("seed") is not None}, key=str)
    row["commits"] = commit_counts(recs)
    row["dirs"] = [r.get("_dir") for r in recs]
    row["error"] = "; ".join(str(r.get("error") or "").splitlines()[0] for r in recs if r.get("error")) or None
    row["_records"] = recs
    row.update(metric_cells(recs if done else [], columns))
    return row


def metric_cells(runs: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> dict[str, tuple]:
    """`<metric>: (mean, std, n)` over the runs that report each metric."""
    cells = {}
    for m in columns:
        values = [v for v in (metric(r, m) for r in runs) if v is not None]
        cells[m] = (*mean_std(values), len(values))
    return cells


def _check_seeds_unique(row_settings: Mapping[str, Any], records: Sequence[Mapping[str, Any]]) -> None:
    by_seed: dict[str, list[str]] = {}
    for record in records:
        if record.get("seed") is not None:
            by_seed.setdefault(hashable(record["seed"]), []).append(location(record))
    for seed, dirs in by_seed.items():
        if len(dirs) > 1:
            shown = ", ".join(f"{k}={setting_text(v)}" for k, v in row_settings.items())
            raise ValueError(f"row {shown}: seed {seed} in more than one run ({', '.join(dirs)})")


def _sort_key(value: Any) -> tuple:
    if value is None:
        return (0, 0, "")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (1, value, "")
    return (2, 0, str(value))


# ----------------------------------------------------------------------------- training time against natural


def _train_seconds(record: Mapping[str, Any]) -> float | None:
    """Training time where the run reports it, else the run's wall time."""
    for key in ("train_seconds", "training_seconds"):
        value = metric(record, key)
        if value is not None:
            return value
    return metric(record, "wall_seconds")


def _epochs(record: Mapping[str, Any]) -> Any:
    training = (record.get("config") or {}).get("training")
    return training.get("epochs") if isinstance(training, Mapping) else None


def _training_budget(row: Mapping[str, Any]) -> str:
    """What a natural row must share with `row` to be its baseline: dataset, model and epochs (the sweep that ran
    a row and the table rows it chose, `table` and `table/*`, are labels, not settings of the natural run)."""
    epochs = sorted({hashable(_epochs(r)) for r in row["_records"]})
    return hashable([row.get("dataset"), row.get("model"), epochs])


def _seconds_by_seed(row: Mapping[str, Any]) -> dict[str, float]:
    times = {hashable(r.get("seed")): _train_seconds(r) for r in row["_records"] if r.get("seed") is not None}
    return {seed: t for seed, t in times.items() if t is not None}


def _add_time_vs_natural(rows: list[dict[str, Any]]) -> None:
    """Each completed row's training time over natural training's, seed by seed, from the one natural row with the
    same training budget that holds every seed of the row (none or several: no ratio)."""
    naturals = [r for r in rows if r["status"] == "completed" and r.get("training") == "natural"]
    for row in rows:
        times = _seconds_by_seed(row) if row["status"] == "completed" else {}
        bases = [_seconds_by_seed(n) for n in naturals if _training_budget(n) == _training_budget(row)]
        bases = [b for b in bases if times and set(times) <= set(b)]
        ratios = [t / bases[0][seed] for seed, t in times.items() if bases[0][seed]] if len(bases) == 1 else []
        row["time_vs_natural"] = (*mean_std(ratios), len(ratios))


# ----------------------------------------------------------------------------- the tuning choice


def choose_tuned(rows: Sequence[dict[str, Any]], margin: float = TUNING_FOOLING_MARGIN) -> dict[str, Any] | None:
    """Mark (`chosen`) and return the tuning row chosen on the validation split: the CB-UAP row of the highest
    validation entropy whose validation fooling rate is at most `margin` below SGD-UAP's (none: the strongest
    CB-UAP row); None without an SGD-UAP and a CB-UAP row."""
    done = [r for r in rows if r["status"] == "completed" and r.get("val_fooling_rate", (None,))[0] is not None]
    reference = [r["val_fooling_rate"][0] for r in done if r.get("attack") == "sgd_uap"]
    candidates = [r for r in done if r.get("attack") == "cb_uap"]
    if not reference or not candidates:
        return None
    spread = _tuning_entropy(candidates)
    chosen = choose_balanced(candidates, lambda r: r["val_fooling_rate"][0], lambda r: r[spread][0],
                             max(reference) - margin)
    for r in rows:
        r["chosen"] = r is chosen
    return chosen


def choose_balanced(candidates: Sequence[T], fooling: Callable[[T], float], entropy: Callable[[T], float],
                    floor: float) -> T:
    """The tuning rule: of the candidates whose validation fooling rate is at least `floor` (SGD-UAP's less the
    margin), the one of the highest validation entropy; none: the strongest. Ties go to the earliest candidate."""
    strong = [c for c in candidates if fooling(c) >= floor]
    return max(strong, key=entropy) if strong else max(candidates, key=fooling)


def _tuning_entropy(candidates: Sequence[Mapping[str, Any]]) -> str:
    """The validation entropy the choice maximises: the fooled-label entropy where every candidate reports it,
    else the label entropy (the committed tuning records carry no validation fooled-label entropy)."""
    fooled = "val_fooled_label_entropy"
    return fooled if all(r.get(fooled, (None,))[0] is not None for r in candidates) else "val_label_entropy"
