#!/usr/bin/env python
"""Turn run records (`run_summary.json`) into Markdown, CSV and LaTeX tables and figures.

    python scripts/make_tables.py SWEEP_DIR [--out DIR] [--kind attacks|defences|ablation|auto]
    python scripts/make_tables.py --document docs/results/document.json   (docs/results.md, see results_document.py)

Runs that agree on everything that decides a result and differ in the seed alone form one row; metrics are
shown as mean ± sample std over those seeds (n = number of runs; two runs of one seed in a row are an error).
What decides a result: the config keys the task reads, and where a record carries `provenance`, the data's
fingerprint and the identities of its model and perturbation in place of their paths. A row whose runs come from
more than one code version is marked (`n†`). A run that did not complete gets a row of its own, marked with its
status and error. The script needs only the standard library and matplotlib (for the figures), so it runs from a
checkout without installing.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import os
import re
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

log = logging.getLogger("make_tables")

SUMMARY = "run_summary.json"
BASE_KEYS = ("task", "dataset", "model", "attack", "training", "attack.eps")
ATTACK_METRICS = (
    "clean_acc",
    "fooling_rate",
    "attack_success_rate",
    "adv_acc",
    "label_entropy",
    "fooled_label_entropy",
    "dominant_label_ratio",
    "num_target_labels",
    "worst_class_adv_acc",
    "min_class_attack_success_rate",
    "mean_class_attack_success_rate",
    "craft_seconds",
)
TUNING_METRICS = (  # the choice reads the val_* columns only; the test columns show what it gives
    "val_fooling_rate",
    "val_label_entropy",
    "val_fooled_label_entropy",
    "val_dominant_label_ratio",
    "val_min_class_attack_success_rate",
    "fooling_rate",
    "label_entropy",
    "fooled_label_entropy",
    "min_class_attack_success_rate",
    "craft_seconds",
)
DEFENCE_METRICS = (
    "clean_acc",
    "adv_acc_*",  # one column per attack the records report, in their order
    "worst_adv_acc",
    "worst_class_adv_acc",
    "wall_seconds",
    "time_vs_natural",
)
KIND_METRICS = {"attacks": ATTACK_METRICS, "ablation": ATTACK_METRICS, "defences": DEFENCE_METRICS,
                "tuning": TUNING_METRICS}
# tuning: the CB-UAP setting with the highest validation entropy among those whose validation fooling rate is
# within this of SGD-UAP's (the paper's goal: spread the labels without losing strength)
TUNING_FOOLING_MARGIN = 0.02
KINDS = ("auto", *KIND_METRICS)
# Settings that differ between runs without changing a result (besides the paths provenance stands in for).
HARMLESS_ROOTS = {"seed", "hydra", "logger", "device", "progress", "cache_dir", "resume", "deterministic"}
HARMLESS_KEYS = {"dataset.download"}
# tasks that read no `attack.*` key: training, and evaluating a stored perturbation (its attack is the file's)
TASKS_WITHOUT_ATTACK = ("train", "evaluate")
SHORT_ID = 12  # hex characters of a fingerprint or identity shown as a setting
PER_CLASS_KEYS = ("per_class_worst_adv_acc", "per_class_adv_acc")


class NoRecords(Exception):
    """The directory holds no run records."""


@contextmanager
def _atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside `path`, renamed onto it on success (same contract as
    `cbuap_runner.io.atomic_path`, repeated here so the script runs without the package)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _write_text(path: Path, text: str) -> Path:
    with _atomic_path(path) as tmp:
        tmp.write_text(text)
    return path


# ----------------------------------------------------------------------------- records


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


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one dict with dotted keys."""
    out: dict[str, Any] = {}
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            out.update(_flatten(value, f"{prefix}{key}."))
    elif prefix:
        out[prefix[:-1]] = obj
    return out


def _override_key(override: str) -> str | None:
    """`attack.eps` for `attack.eps=0.2` (also `+key=`, `++key=`); None for `~key` or no '='."""
    if "=" not in override or override.startswith("~"):
        return None
    return override.split("=", 1)[0].lstrip("+").strip()


def _ignored(key: str) -> bool:
    """Seed, execution and logging options: they differ between runs of one experiment."""
    return re.split(r"[./]", key)[0] in HARMLESS_ROOTS or key in HARMLESS_KEYS


def _short_id(value: Any) -> str:
    """A fingerprint or identity cut to SHORT_ID hex characters (a `sha256:` prefix kept)."""
    prefix, _, digest = str(value).rpartition(":")
    return f"{prefix}:{digest[:SHORT_ID]}" if prefix else digest[:SHORT_ID]


def _settings(record: Mapping[str, Any]) -> dict[str, Any]:
    """What decides the record's result: flattened config, overrides and the top-level identity fields, with
    provenance in place of the paths it identifies and the attack a task actually ran."""
    out = _flatten(record.get("config") or {})
    for override in record.get("overrides") or []:
        key = _override_key(str(override))
        if key and key not in out:
            out[key] = str(override).split("=", 1)[1]
    for key in ("task", "dataset", "model", "attack", "training"):
        if key in record:
            out[key] = record[key]
        elif isinstance(out.get(f"{key}.name"), str):
            out[key] = out[f"{key}.name"]
    _use_provenance(out, record.get("provenance") or {})
    if out.get("task") in TASKS_WITHOUT_ATTACK:
        _use_attack_run(out, record)
    return out


def _use_provenance(settings: dict[str, Any], provenance: Mapping[str, Any]) -> None:
    """Replace the paths of the data, model and perturbation by what the record says they held (a path alone is
    a setting like any other: another path may hold other contents)."""
    data, model, perturbation = (provenance.get(k) or {} for k in ("data", "model", "perturbation"))
    if data.get("fingerprint"):
        for key in ("dataset.root", "dataset.download"):
            settings.pop(key, None)
        settings["data"] = _short_id(data["fingerprint"])
    if model.get("identity"):
        for key in ("model.checkpoint", "training.init_checkpoint"):
            settings.pop(key, None)
        settings["model.identity"] = _short_id(model["identity"])
    if perturbation:
        settings.pop("perturbation", None)
        settings["perturbation.identity"] = _short_id(perturbation.get("identity") or perturbation.get("sha256"))


def _use_attack_run(settings: dict[str, Any], record: Mapping[str, Any]) -> None:
    """For a task that reads no `attack.*` key: drop the config's attack, and label an evaluated perturbation by
    the attack that made it (from its provenance, else the file's attack name with ε unknown)."""
    for key in [k for k in settings if k == "attack" or k.startswith("attack.")]:
        del settings[key]
    stored = (record.get("provenance") or {}).get("perturbation")
    if stored:
        settings.update({"attack": stored.get("attack"), "attack.eps": stored.get("eps"), "attack.norm": stored.get("norm")})
    elif (record.get("metrics") or {}).get("perturbation_attack") is not None:
        settings.update({"attack": record["metrics"]["perturbation_attack"], "attack.eps": None})


def _hashable(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def group_keys(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """The settings that define a table row: the identity fields and `attack.eps` where any run
    has them, every key a run overrode (except the seed and execution options), and any other
    setting that would otherwise put two different experiments into one row."""
    settings = [_settings(r) for r in records]
    keys = [k for k in BASE_KEYS if any(s.get(k) is not None for s in settings)]
    for record in records:
        for override in record.get("overrides") or []:
            key = _override_key(str(override))
            if key and key not in keys and not _ignored(key) and key in _settings(record):
                keys.append(key)

    def clashes(candidate: str) -> bool:
        seen: dict[str, str] = {}
        for s in settings:
            ident = _hashable([s.get(k) for k in keys])
            if seen.setdefault(ident, _hashable(s.get(candidate))) != _hashable(s.get(candidate)):
                return True
        return False

    all_keys = sorted({k for s in settings for k in s if not _ignored(k) and k not in keys})
    for key in all_keys:
        if key.endswith(".name") and key[: -len(".name")] in keys:
            continue
        if clashes(key):
            keys.append(key)
    # drop override keys that never vary (e.g. a sweep over one value): they add no information
    return [k for k in keys if k in BASE_KEYS or len({_hashable(s.get(k)) for s in settings}) > 1]


def resolve_kind(records: Sequence[Mapping[str, Any]], kind: str = "auto") -> str:
    """`kind`, or for "auto": defences when every run trains or runs the pipeline, attacks when
    every run attacks or evaluates, "mixed" otherwise."""
    if kind != "auto":
        if kind not in KIND_METRICS:
            raise ValueError(f"--kind {kind!r}: must be one of {', '.join(KINDS)}")
        return kind
    tasks = {r.get("task") for r in records if r.get("status") == "completed"} or {r.get("task") for r in records}
    if tasks and tasks <= {"train", "pipeline"}:
        return "defences"
    if tasks and tasks <= {"attack", "evaluate"}:
        return "attacks"
    return "mixed"


def metric_columns(records: Sequence[Mapping[str, Any]], kind: str) -> list[str]:
    """The kind's metric columns that at least one run reports (a `prefix*` entry: every such metric, in the
    records' order)."""
    present: dict[str, None] = {}
    for r in records:
        present.update(dict.fromkeys((r.get("metrics") or {}).keys()))
        if r.get("wall_seconds") is not None:
            present["wall_seconds"] = None
    if "wall_seconds" in present:
        present["time_vs_natural"] = None
    wanted = KIND_METRICS[kind] if kind in KIND_METRICS else ATTACK_METRICS + DEFENCE_METRICS
    columns: list[str] = []
    for m in wanted:
        matches = [k for k in present if k.startswith(m[:-1])] if m.endswith("*") else [m] if m in present else []
        columns += [k for k in matches if k not in columns]
    return columns


def _value(record: Mapping[str, Any], metric: str) -> float | None:
    value = (record.get("metrics") or {}).get(metric)
    if value is None and metric == "wall_seconds":
        value = record.get("wall_seconds")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (None for fewer than two values)."""
    if not values:
        return None, None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _train_seconds(record: Mapping[str, Any]) -> float | None:
    """Training time where the run reports it, else the run's wall time."""
    for key in ("train_seconds", "training_seconds"):
        value = _value(record, key)
        if value is not None:
            return value
    return _value(record, "wall_seconds")


def build_rows(records: Sequence[Mapping[str, Any]], kind: str = "auto", metrics: Sequence[str] | None = None
               ) -> tuple[list[str], list[str], list[dict[str, Any]]]:
    """Aggregate records into table rows; returns (setting columns, metric columns, rows).

    Each completed row holds its settings, `status`, `n`, `seeds`, `commits` ({code version: runs}), the run
    directories and `<metric>: (mean, std, n)`; each run that did not complete is a row of its own with its
    `error`. Rows are sorted by their settings; failed rows follow their group. Two completed runs of one seed in
    a row raise ValueError: the row would count one experiment twice.
    """
    kind = resolve_kind(records, kind)
    keys = group_keys(records)
    columns = list(metrics) if metrics else metric_columns(records, kind)
    groups: dict[str, dict[str, Any]] = {}
    order: list[str] = []
    for record in records:
        settings = _settings(record)
        ident = _hashable([settings.get(k) for k in keys])
        status = record.get("status") or "unknown"
        if status != "completed":
            ident += f"|{status}|{record.get('_dir')}"
        if ident not in groups:
            groups[ident] = {"settings": {k: settings.get(k) for k in keys}, "status": status, "records": []}
            order.append(ident)
        groups[ident]["records"].append(record)

    rows = []
    for ident in order:
        group = groups[ident]
        recs = group["records"]
        row: dict[str, Any] = dict(group["settings"])
        row["status"] = group["status"]
        row["n"] = len(recs)
        if row["status"] == "completed":
            _check_seeds_unique(group["settings"], recs)
        row["seeds"] = sorted({r.get("seed") for r in recs if r.get("seed") is not None}, key=str)
        row["commits"] = commit_counts(recs)
        row["dirs"] = [r.get("_dir") for r in recs]
        row["error"] = "; ".join(str(r.get("error") or "").splitlines()[0] for r in recs if r.get("error")) or None
        row["_records"] = recs
        for m in columns:
            values = [v for v in (_value(r, m) for r in recs) if v is not None] if row["status"] == "completed" else []
            mean, std = mean_std(values)
            row[m] = (mean, std, len(values))
        rows.append(row)
    if "time_vs_natural" in columns:
        _add_time_vs_natural(rows)
    rows.sort(key=lambda r: ([_sort_key(r.get(k)) for k in keys], r["status"] != "completed", r["dirs"]))
    return keys, columns, rows


def _check_seeds_unique(settings: Mapping[str, Any], records: Sequence[Mapping[str, Any]]) -> None:
    by_seed: dict[str, list[str]] = {}
    for record in records:
        if record.get("seed") is not None:
            by_seed.setdefault(_hashable(record["seed"]), []).append(str(record.get("_path") or record.get("_dir")))
    for seed, dirs in by_seed.items():
        if len(dirs) > 1:
            shown = ", ".join(f"{k}={_setting_text(v)}" for k, v in settings.items())
            raise ValueError(f"row {shown}: seed {seed} in more than one run ({', '.join(dirs)})")


def commit_of(record: Mapping[str, Any]) -> str:
    """The code version that produced the record (provenance.code, else git_commit)."""
    return str((record.get("provenance") or {}).get("code") or record.get("git_commit") or "unknown")


def short_commit(commit: str) -> str:
    """A 7-character hash, `-dirty` kept."""
    return commit.removesuffix("-dirty")[:7] + ("-dirty" if commit.endswith("-dirty") else "")


def commit_counts(records: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """{code version: number of records}, the most frequent first."""
    counts = Counter(commit_of(record) for record in records)
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def commits_text(counts: Mapping[str, int]) -> str:
    """`abc1234 (2 runs), def5678 (1 run)`."""
    return ", ".join(f"{short_commit(c)} ({k} run{'s' if k != 1 else ''})" for c, k in counts.items())


def _sort_key(value: Any) -> tuple:
    if value is None:
        return (0, 0, "")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (1, value, "")
    return (2, 0, str(value))


def _epochs(record: Mapping[str, Any]) -> Any:
    training = (record.get("config") or {}).get("training")
    return training.get("epochs") if isinstance(training, Mapping) else None


def _training_budget(row: Mapping[str, Any]) -> str:
    """What a natural row must share with `row` to be its baseline: dataset, model and epochs (the sweep that ran
    a row and the table rows it chose, `table` and `table/*`, are labels, not settings of the natural run)."""
    epochs = sorted({_hashable(_epochs(r)) for r in row["_records"]})
    return _hashable([row.get("dataset"), row.get("model"), epochs])


def _seconds_by_seed(row: Mapping[str, Any]) -> dict[str, float]:
    times = {_hashable(r.get("seed")): _train_seconds(r) for r in row["_records"] if r.get("seed") is not None}
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


def choose_tuned(rows: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """Mark and return the tuning row chosen on the validation split (TUNING_FOOLING_MARGIN), or None."""
    done = [r for r in rows if r["status"] == "completed" and r.get("val_fooling_rate", (None,))[0] is not None]
    reference = [r["val_fooling_rate"][0] for r in done if r.get("attack") == "sgd_uap"]
    candidates = [r for r in done if r.get("attack") == "cb_uap"]
    if not reference or not candidates:
        return None
    floor = max(reference) - TUNING_FOOLING_MARGIN
    strong = [r for r in candidates if r["val_fooling_rate"][0] >= floor]
    spread = _tuning_entropy(candidates)
    chosen = (max(strong, key=lambda r: r[spread][0]) if strong
              else max(candidates, key=lambda r: r["val_fooling_rate"][0]))
    for r in rows:
        r["chosen"] = r is chosen
    return chosen


def _tuning_entropy(candidates: Sequence[Mapping[str, Any]]) -> str:
    """The validation entropy the choice maximises: the fooled-label entropy where every candidate reports it,
    else the label entropy (the committed tuning records carry no validation fooled-label entropy)."""
    fooled = "val_fooled_label_entropy"
    return fooled if all(r.get(fooled, (None,))[0] is not None for r in candidates) else "val_label_entropy"


# ----------------------------------------------------------------------------- formats


def _fmt_number(x: float) -> str:
    if float(x).is_integer() and abs(x) >= 10:
        return str(int(x))
    return f"{x:.3f}" if abs(x) < 100 else f"{x:.1f}"


def format_cell(cell: tuple[float | None, float | None, int], pm: str = "±") -> str:
    """`mean ± std` (just the mean for one value, "–" for none); the table's n column (or a "(n=k)"
    after a cell whose count differs from its row's) says over how many runs."""
    mean, std, _ = cell
    if mean is None:
        return "–"
    return _fmt_number(mean) if std is None else f"{_fmt_number(mean)} {pm} {_fmt_number(std)}"


def _setting_text(value: Any) -> str:
    if value is None:
        return "–"
    return _fmt_number(value) if isinstance(value, float) else str(value)


MIXED_CODE = "†"  # after a row's n: its runs come from more than one code version


def mixes_code(row: Mapping[str, Any]) -> bool:
    return len(row.get("commits") or {}) > 1


def _display(keys: Sequence[str], columns: Sequence[str], rows: Sequence[Mapping[str, Any]], pm: str = "±"
             ) -> tuple[list[str], list[list[str]]]:
    """Header and text cells shared by the Markdown and LaTeX writers."""
    show_status = any(r["status"] != "completed" for r in rows)
    status = ["status"] if show_status else []
    chosen = ["chosen"] if any("chosen" in r for r in rows) else []
    header = list(keys) + status + chosen + ["n"] + list(columns) + (["error"] if show_status else [])
    body = []
    for r in rows:
        cells = [_setting_text(r.get(k)) for k in keys]
        if chosen:
            cells.append("yes" if r.get("chosen") else "")
        if show_status:
            cells.append(str(r["status"]).upper() if r["status"] != "completed" else "ok")
        cells.append(str(r["n"]) + (MIXED_CODE if mixes_code(r) else ""))
        cells += [format_cell(r[m], pm) + (f" (n={r[m][2]})" if r[m][0] is not None and r[m][2] != r["n"] else "")
                  for m in columns]
        if show_status:
            error = r.get("error") or ""
            cells.append(error if len(error) <= 100 else error[:97] + "...")
        body.append(cells)
    return header, body


def to_markdown(keys: Sequence[str], columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> str:
    """A GitHub-flavoured Markdown table."""
    header, body = _display(keys, columns, rows)

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |"

    out = [line(header), "|" + "|".join("---" for _ in header) + "|"]
    out += [line(cells) for cells in body]
    return "\n".join(out + _code_footnote(keys, rows)) + "\n"


def _code_footnote(keys: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Lines under a table naming the code versions of each row marked MIXED_CODE."""
    mixed = [r for r in rows if mixes_code(r)]
    if not mixed:
        return []
    varying = [k for k in keys if len({_hashable(r.get(k)) for r in rows}) > 1] or list(keys)
    lines = ["", f"{MIXED_CODE} Runs from more than one code version:"]
    for row in mixed:
        shown = [k for k in varying if row.get(k) is not None] or list(keys)
        label = ", ".join(f"{k}={_setting_text(row.get(k))}" for k in shown)
        lines.append(f"- {label}: {commits_text(row['commits'])}")
    return lines


def to_csv(keys: Sequence[str], columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> str:
    """Machine-readable CSV: `<metric>_mean`, `<metric>_std`, `<metric>_n` per metric; `commits`: the code versions
    of the row's runs."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(list(keys) + ["status", "n", "seeds", "commits"]
                    + [f"{m}_{s}" for m in columns for s in ("mean", "std", "n")] + ["error", "dirs"])
    for r in rows:
        cells = [("" if r.get(k) is None else r.get(k)) for k in keys]
        cells += [r["status"], r["n"], " ".join(str(s) for s in r["seeds"]), " ".join(r.get("commits") or {})]
        for m in columns:
            mean, std, n = r[m]
            cells += ["" if mean is None else repr(mean), "" if std is None else repr(std), n]
        cells += [r.get("error") or "", " ".join(str(d) for d in r["dirs"])]
        writer.writerow(cells)
    return buf.getvalue()


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    """`text` with LaTeX's special characters escaped."""
    return "".join(_LATEX_SPECIAL.get(c, c) for c in str(text))


def to_latex(keys: Sequence[str], columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> str:
    """A booktabs `tabular` (needs `\\usepackage{booktabs}`)."""
    header, body = _display(keys, columns, rows, pm="PLUSMINUS")
    n_text = len(header) - len(columns) - (1 if "error" in header else 0)
    align = "l" * n_text + "r" * len(columns) + ("l" if "error" in header else "")

    def cell(text: str) -> str:
        return latex_escape(text).replace("PLUSMINUS", r"$\pm$").replace("–", "--").replace(MIXED_CODE, r"$^\dagger$")

    out = [r"\begin{tabular}{" + align + "}", r"\toprule", " & ".join(cell(h) for h in header) + r" \\", r"\midrule"]
    out += [" & ".join(cell(c) for c in cells) + r" \\" for cells in body]
    out += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------- figures


def _label(row: Mapping[str, Any], keys: Sequence[str], varying: Sequence[str]) -> str:
    parts = [f"{k}={_setting_text(row.get(k))}" if k.count(".") else _setting_text(row.get(k)) for k in varying]
    return ", ".join(parts) or _setting_text(row.get("training") or row.get("attack") or row.get("task"))


def _save_figure(fig: Any, path: Path) -> Path:
    with _atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip("."), dpi=120, bbox_inches="tight")
    return path


def make_figures(keys: Sequence[str], rows: Sequence[Mapping[str, Any]], out_dir: str | os.PathLike) -> list[Path]:
    """Label entropy against fooling rate (one point per run, coloured by attack) and per-class
    robust accuracy bars (one bar per row, one figure per dataset and model). Returns the files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    written: list[Path] = []
    done = [r for r in rows if r["status"] == "completed"]

    points: dict[str, list[tuple[float, float]]] = {}
    for row in done:
        for rec in row["_records"]:
            fr, ent = _value(rec, "fooling_rate"), _value(rec, "label_entropy")
            if fr is not None and ent is not None:
                points.setdefault(_setting_text(row.get("attack")), []).append((fr, ent))
    if points:
        fig, ax = plt.subplots(figsize=(5, 4))
        for attack, xy in sorted(points.items()):
            ax.scatter([p[0] for p in xy], [p[1] for p in xy], label=attack, alpha=0.8)
        ax.set_xlabel("fooling rate")
        ax.set_ylabel("label entropy (adversarial predictions)")
        ax.set_title("Label entropy vs fooling rate")
        ax.legend(title="attack")
        ax.grid(alpha=0.3)
        written.append(_save_figure(fig, out_dir / "entropy_vs_fooling.png"))
        plt.close(fig)

    varying = [k for k in keys if k not in ("dataset", "model") and len({_hashable(r.get(k)) for r in done}) > 1]
    panels: dict[tuple[str, str], list[tuple[str, str, list[float]]]] = {}
    for row in done:
        for metric in PER_CLASS_KEYS:
            lists = [(rec.get("metrics") or {}).get(metric) for rec in row["_records"]]
            lists = [v for v in lists if isinstance(v, list) and v]
            if lists and all(len(v) == len(lists[0]) for v in lists):
                means = [sum(float(v[i]) for v in lists) / len(lists) for i in range(len(lists[0]))]
                key = (_setting_text(row.get("dataset")), _setting_text(row.get("model")))
                panels.setdefault(key, []).append((_label(row, keys, varying), metric, means))
                break
    for (dataset, model), bars in sorted(panels.items()):
        num_classes = max(len(b[2]) for b in bars)
        width = 0.8 / len(bars)
        fig, ax = plt.subplots(figsize=(max(6, num_classes * 0.6 + 2), 4))
        for i, (label, _, means) in enumerate(bars):
            ax.bar([c - 0.4 + width * (i + 0.5) for c in range(len(means))], means, width=width, label=label)
        metrics_used = sorted({b[1] for b in bars})
        ax.set_xticks(range(num_classes))
        ax.set_xlabel("class")
        ax.set_ylabel(" / ".join(m.replace("per_class_", "") for m in metrics_used))
        ax.set_ylim(0, 1)
        ax.set_title(f"Per-class robust accuracy: {dataset}, {model}")
        ax.legend(fontsize="small")
        ax.grid(axis="y", alpha=0.3)
        written.append(_save_figure(fig, out_dir / f"per_class_{dataset}_{model}.png"))
        plt.close(fig)
    return written


# ----------------------------------------------------------------------------- CLI


def write_tables(root: str | os.PathLike, out_dir: str | os.PathLike | None = None, kind: str = "auto",
                 metrics: Sequence[str] | None = None, figures: bool = True) -> list[Path]:
    """Read the records under `root` and write `<kind>.md/.csv/.tex` and the figures to `out_dir`."""
    records = load_records(root)
    if not records:
        raise NoRecords(f"no {SUMMARY} under {root} (run an experiment first, or point at a sweep directory)")
    kind = resolve_kind(records, kind)
    keys, columns, rows = build_rows(records, kind, metrics)
    if kind == "tuning":
        choose_tuned(rows)
    out = Path(out_dir) if out_dir is not None else Path(root) / "tables"
    written = [
        _write_text(out / f"{kind}.md", to_markdown(keys, columns, rows)),
        _write_text(out / f"{kind}.csv", to_csv(keys, columns, rows)),
        _write_text(out / f"{kind}.tex", to_latex(keys, columns, rows)),
    ]
    if figures:
        written += make_figures(keys, rows, out)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", help="a sweep directory or outputs/ (searched recursively for run_summary.json)")
    parser.add_argument("--out", default=None, help="where to write the tables (default: ROOT/tables)")
    parser.add_argument("--kind", default="auto", choices=KINDS, help="which metric columns to show")
    parser.add_argument("--metrics", default=None, help="comma-separated metric columns (overrides --kind's)")
    parser.add_argument("--no-figures", action="store_true", help="write the tables only")
    parser.add_argument("--document", default=None, metavar="MANIFEST",
                        help="write the results document a manifest describes (docs/results/document.json)")
    args = parser.parse_args(argv)
    if args.document:
        return _document(args.document, figures=not args.no_figures)
    if args.root is None:
        parser.error("give a sweep directory (or --document MANIFEST)")
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else None
    try:
        written = write_tables(args.root, args.out, args.kind, metrics, figures=not args.no_figures)
    except (NoRecords, NotADirectoryError, OSError, ValueError) as err:
        print(f"make_tables: error: {err}", file=sys.stderr)
        return 1
    print(Path(written[0]).read_text(), end="")
    for path in written:
        print(f"wrote {path}")
    return 0


def _document(manifest: str, figures: bool) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.modules.setdefault("make_tables", sys.modules[__name__])
    from results_document import write_document

    try:
        print(f"wrote {write_document(manifest, figures)}")
    except (NoRecords, OSError, KeyError, ValueError) as err:
        print(f"make_tables: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
