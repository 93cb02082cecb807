"""The results document: docs/results.md, its tables and figures, generated from the committed records.

    python scripts/make_tables.py --document docs/results/document.json

The manifest (JSON) names, per section, the record folders (relative to the manifest), the table kind, the keys
that make a row (`rows`), what the table compares and the commands that rerun it; its `claims` block holds the
claims' margins (claims.Thresholds) and which tables answer them. Every number in the document is computed here
from the records. Besides one table per section (with the code versions behind its records) it draws the label
entropy and the fooled-label entropy against the fooling rate (one point per run) and the clean against worst-case
accuracy of each defence (mean ± std), it answers the paper's two claims in one sentence each from the rows, and it
ends with what each section cost to run (the wall and training time its records give) and, where a section plans
more seeds (`seeds_to_run`), what is left to run and its estimated cost (report.left).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..io import write_text
from . import pareto, strength
from .claims import VERDICT_REASON, Thresholds, claim_balance, claim_defence, claim_tuned, matches
from .figures import defence_figure, frontier_figure
from .formats import WallTime, fmt_duration, fmt_eps, format_cell, provenance_line, row_label, to_markdown, varying_keys, wall_time
from .kinds import PARETO, STRENGTH
from .left import left_lines, left_to_run, planned_seeds
from .longer_run import longer_run_lines
from .records import NoRecords, epoch_rows, load_records, metric, settings
from .rows import build_rows, choose_tuned, mean_std
from .tables import write_table_files

FRONTIER_METRICS = ("fooling_rate", "label_entropy", "fooled_label_entropy")
ANCHOR_AGREEMENT = 1e-3  # rows one anchor stands beside must agree on its metric within this
COSTS_ABOUT = ("The sum of each section's run wall times, from its records, as the line under its table gives it. A "
               "run continued from an earlier attempt records its last attempt only, so it is left out of the sum "
               "and counted in its own column; the training columns sum the training time of the runs that trained a "
               "network, which a continued training records over every attempt. Runs that predate wall-time records "
               "count in `runs` only. These are costs on the machine as each section says it was loaded, not "
               "benchmarks.")
PLATEAU_TOLERANCE = 0.01  # a defence has reached its plateau: final val_acc within this of the best and of the last 3


@dataclass(frozen=True)
class _Build:
    """What every part of one document shares."""

    base: Path  # the manifest's folder: record folders and section tables are relative to it
    out_dir: Path  # the document's folder: its links are relative to it
    figures: bool
    bar: Thresholds
    rows: Sequence[str] | None  # the row keys of a section that declares none (the command line's)


def write_document(manifest: str | Path, figures: bool = True, rows: Sequence[str] | None = None) -> Path:
    """Write the document the manifest describes (and its section tables and figures); returns its path. `rows`:
    the row keys of a section whose records and manifest entry declare none."""
    manifest = Path(manifest)
    spec = json.loads(manifest.read_text())
    doc = (manifest.parent / spec["document"]).resolve()
    build = _Build(manifest.parent.resolve(), doc.parent, figures, Thresholds.read(spec["claims"], str(manifest)), rows)
    lines = [f"# {spec['title']}", "", *spec["intro"], "", "Regenerate this document, its tables and figures from the "
             "committed records:", "", "```bash", f"python scripts/make_tables.py --document "
             f"{(build.base / manifest.name).relative_to(build.out_dir.parent)}", "```", ""]
    body, tables, costs, left = [], {}, [], []
    for section in spec["sections"]:
        text, tables[section["name"]], records = _section_text(build, section)
        body += text
        costs.append((section["title"], len(records), wall_time(records)))
        left.append((section["title"], planned_seeds(section), left_to_run(section, records, build.rows)))
    if spec.get("frontiers"):
        body += ["## Fooling rate against label entropy and fooled-label entropy", ""]
    for frontier in spec.get("frontiers", []):
        body += _frontier_text(build, frontier)
    claims = _claim_lines(spec["claims"], tables, build.bar, _strength_claim_lines(build, spec))
    write_text(doc, "\n".join([*lines, *claims, *body, *cost_lines(costs), *left_lines(left)]).rstrip() + "\n")
    return doc


def _claim_lines(claims: Mapping[str, Any], tables: Mapping[str, list[dict[str, Any]]], bar: Thresholds,
                 strength: Sequence[str] = ()) -> list[str]:
    """The claims' sentences (none where the manifest answers no claim); `strength`: claim 2 read with the
    strongest attacks found, after the others."""
    if not any(claims.get(kind) for kind in ("balance", "tuned", "defence")) and not strength:
        return []
    lines = ["## The paper's claims, answered from these tables", "", VERDICT_REASON, ""]
    for claim in claims.get("balance", []):
        rows = tables[claim["section"]]
        lines += [f"- {claim_balance(claim['label'], rows, bar, claim.get('where', {}), claim.get('cb_where'))}"]
    for claim in claims.get("tuned", []):
        lines += [f"- {claim_tuned(claim['label'], tables[claim['section']], bar)}"]
    for claim in claims.get("defence", []):
        lines += [f"- {claim_defence(claim['label'], tables.get(claim['section'], []), claim.get('cb_where'))}"]
    return [*lines, *strength, ""]


def _strength_claim_lines(build: _Build, spec: Mapping[str, Any]) -> list[str]:
    """Claim 2 read with the strongest attack the strength checks found (the manifest's claims.strength)."""
    sections = {section["name"]: section for section in spec["sections"]}
    lines = []
    for claim in spec["claims"].get("strength", []):
        eps, table, _ = strength.rows(_section_records(build, sections[claim["section"]], paths=True))
        text = strength.claim_two_text(eps, table) or "not answered (the section lacks CB-UAT, UAT or CW-UAT)."
        lines.append(f"- {claim['label']} (the lowest accuracy of its strength checks at ε = {fmt_eps(eps)}): {text}")
    return lines


def _table(build: _Build, spec: Mapping[str, Any], kind: str, metrics: Sequence[str] | None
           ) -> tuple[list[str], list[str], list[dict[str, Any]]]:
    """The rows of a section or frontier: its records (those `only` keeps), grouped by its rows."""
    records = [{**r, "_path": str(build.base / folder / r["_dir"])} for folder in spec["records"]
               for r in load_records(build.base / folder)]
    only = spec.get("only", {})  # {setting: [values]}: keep the records whose setting is one of these
    records = [r for r in records if all(settings(r).get(k) in v for k, v in only.items())]
    name = f"section {spec['name']}" if "name" in spec else f"frontier {spec['figure']}"
    if not records:
        raise NoRecords(f"{name}: no records under {', '.join(spec['records'])}")
    try:
        return build_rows(records, kind, metrics, spec.get("rows") or build.rows)
    except ValueError as err:
        raise ValueError(f"{name}: {err}") from err


def _labelled(keys: Sequence[str], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`rows`, each with `_label`: its settings that differ between the completed rows."""
    varying = varying_keys(keys, [r for r in rows if r["status"] == "completed"], skip=("task", "dataset", "model"))
    for row in rows:
        row["_label"] = row_label(row, varying)
    return rows


def _section_records(build: _Build, section: Mapping[str, Any], paths: bool = False) -> list[dict[str, Any]]:
    """The section's records; with `paths`, each with `_path`, where the files beside it are read (the strength
    checks' predictions)."""
    records = [{**r, "_path": str(build.base / folder / r["_dir"])} if paths else r
               for folder in section["records"] for r in load_records(build.base / folder)]
    if not records:
        raise NoRecords(f"section {section['name']}: no records under {', '.join(section['records'])}")
    return records


def _head(section: Mapping[str, Any]) -> list[str]:
    return [f"## {section['title']}", "", section["about"], "", "Rerun:", "", "```bash", *section["rerun"], "```", ""]


FIGURE = {STRENGTH: strength.FIGURE, PARETO: pareto.FIGURE}  # the figure each such section draws


def _written_text(build: _Build, section: Mapping[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
    """A section whose kind writes its own files (strength checks, a study's front): its table, links and figure;
    and its records."""
    folder = build.base / section["name"]
    records = _section_records(build, section, paths=section["kind"] == STRENGTH)
    if section["kind"] == STRENGTH:
        written = strength.write_strength(records, folder, build.figures)
    else:
        written = pareto.write_pareto(records, folder, build.bar, build.figures)
    table, *others = [folder / p.name for p in written]
    links = [f"[{p.relative_to(build.out_dir)}]({p.relative_to(build.out_dir)})" for p in others if p.suffix != ".png"]
    png = (folder / FIGURE[section["kind"]]).relative_to(build.out_dir)  # linked whether drawn now or before
    return [*_head(section), table.read_text(), provenance_line(records), "",
            *([f"Also: {', '.join(links)}.", ""] if links else []), f"![{png.stem}]({png})", ""], records


def _section_text(build: _Build, section: Mapping[str, Any]
                  ) -> tuple[list[str], list[dict[str, Any]], list[dict[str, Any]]]:
    """The section's text, its table rows (none for a kind that writes its own table) and its records."""
    kind = section["kind"]
    if kind in (STRENGTH, PARETO):
        text, records = _written_text(build, section)
        return text, [], records
    keys, columns, rows = _table(build, section, kind, section.get("metrics"))  # metrics: the kind's by default
    if kind == "tuning":
        choose_tuned(rows, build.bar.tuning_fooling_margin)
    _labelled(keys, rows)
    folder = build.base / section["name"]
    write_table_files(folder, kind, keys, columns, rows)
    rel = folder.relative_to(build.out_dir)
    lines = _head(section)
    records = [rec for row in rows for rec in row["_records"]]
    lines += [to_markdown(keys, columns, rows), provenance_line(records), "",
              f"CSV and LaTeX: [{rel}/{kind}.csv]({rel}/{kind}.csv), [{rel}/{kind}.tex]({rel}/{kind}.tex).", ""]
    if "anchors" in section:
        lines += anchor_lines(section["anchors"], rows)
    lines += _plateau_text(rows)  # where the runs trained a network: their training curves
    if "longer_run" in section:
        try:
            lines += longer_run_lines(keys, rows, section["longer_run"])
        except ValueError as err:
            raise ValueError(f"section {section['name']}: {err}") from err
    if kind == "defences":
        lines += _defence_figure(build, section, rows, folder)
    return lines, rows, records


def anchor_lines(anchors: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Published figures beside this table's: per anchor (`where`: the row's settings, or fewer where the rows they
    match agree on the metric; `value`, `label`) the published value, the matching runs' mean ± std (n) and the
    difference; `metric` and `source` say what and whose, `note` what to expect of the comparison."""
    name = anchors["metric"]
    lines = [f"Published figures beside these ({name}; {anchors['source']}):", "",
             "| row | published | this table (n) | this − published |", "|---|---|---|---|"]
    for anchor in anchors["values"]:
        found = [r for r in rows if r["status"] == "completed" and matches(r, anchor["where"])]
        cell = _anchor_cell(name, anchor, found)
        ours = format_cell(cell) + (f" ({cell[2]})" if found else " (not run)")
        diff = "–" if cell[0] is None else f"{cell[0] - anchor['value']:+.3f}"
        lines.append(f"| {anchor['label']} | {anchor['value']:.3f} | {ours} | {diff} |")
    return [*lines, "", anchors["note"], ""] if anchors.get("note") else [*lines, ""]


def _anchor_cell(name: str, anchor: Mapping[str, Any], found: Sequence[Mapping[str, Any]]
                 ) -> tuple[float | None, float | None, int]:
    """The cell an anchor stands beside: its one matching row's; where `where` leaves row keys open (a network's
    clean accuracy, the same in every row that attacks it), every run of the matching rows, pooled, provided the
    rows agree on the metric within ANCHOR_AGREEMENT."""
    if len(found) <= 1:
        return found[0][name] if found else (None, None, 0)
    means = [r[name][0] for r in found if r[name][0] is not None]
    if means and max(means) - min(means) > ANCHOR_AGREEMENT:
        raise ValueError(f"anchors: {anchor['label']!r} matches {len(found)} rows whose {name} differs "
                         f"({min(means):.3f} to {max(means):.3f}); make its `where` name one")
    values = [v for r in found for v in (metric(rec, name) for rec in r["_records"]) if v is not None]
    return (*mean_std(values), len(values))


def _plateau_text(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    plateau = plateau_lines(rows)
    if not plateau:
        return []
    return ["Training to its plateau (validation accuracy per epoch, from each run's `metrics.jsonl`):", "", *plateau,
            ""]


def _defence_figure(build: _Build, section: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], folder: Path
                    ) -> list[str]:
    png = folder / "clean_vs_worst.png"
    if build.figures:
        defence_figure(rows, section["title"], png)
    return [f"![clean against worst-case accuracy]({png.relative_to(build.out_dir)})", ""]


def plateau_lines(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Per row of runs that trained a network (a defence, a natural model): epochs trained, the final validation
    accuracy, how far it lies below the best epoch and how much it moved over the last three epochs (means over the
    seeds; the check: both within PLATEAU_TOLERANCE)."""
    lines = ["| training | n | epochs | final val_acc | best − final | range over the last 3 epochs | within 1 point |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        runs = [epoch_rows(rec) for rec in row.get("_records", [])]
        runs = [r for r in runs if len(r) >= 3]
        if row["status"] != "completed" or not runs:
            continue
        final = [r[-1]["val_acc"] for r in runs]
        gap = [max(e["val_acc"] for e in r) - r[-1]["val_acc"] for r in runs]
        spread = [max(e["val_acc"] for e in r[-3:]) - min(e["val_acc"] for e in r[-3:]) for r in runs]
        ok = all(g <= PLATEAU_TOLERANCE for g in gap) and all(s <= PLATEAU_TOLERANCE for s in spread)
        cell = [format_cell((*mean_std(v), len(v))) for v in (final, gap, spread)]
        lines.append(f"| {row['_label']} | {len(runs)} | {len(runs[0])} | {' | '.join(cell)} | {'yes' if ok else 'no'} |")
    return lines if len(lines) > 2 else []


def cost_lines(costs: Sequence[tuple[str, int, WallTime]]) -> list[str]:
    """What each section cost to run: per section (title, records, their wall time), the sum of the wall times that
    count and the runs left out (continued from an earlier attempt), as each section's line under its table says."""
    lines = ["## What each section cost to run", "", COSTS_ABOUT, "",
             "| section | runs | wall time | over runs | runs continued from an earlier attempt (left out) | "
             "training, every attempt | over runs |", "|---|---|---|---|---|---|---|"]
    for title, runs, wall in costs:
        shown = fmt_duration(wall.seconds) if wall.timed else "–"
        training = fmt_duration(wall.training) if wall.trained else "–"
        lines.append(f"| {title} | {runs} | {shown} | {wall.timed} | {wall.partial} | {training} | {wall.trained} |")
    return [*lines, ""]


def _frontier_text(build: _Build, spec: Mapping[str, Any]) -> list[str]:
    keys, _, rows = _table(build, spec, "attacks", list(FRONTIER_METRICS))
    rows = _labelled(keys, [r for r in rows if r["status"] == "completed" and matches(r, spec.get("where", {}))])
    points = [(r["_label"], *(metric(rec, m) for m in FRONTIER_METRICS)) for r in rows for rec in r["_records"]]
    points = [p for p in points if p[1] is not None and (p[2] is not None or p[3] is not None)]
    png = build.base / "figures" / spec["figure"]
    if build.figures:
        frontier_figure(points, spec["title"], png, (build.bar.fooled_entropy_gain, build.bar.fooling_rate_loss))
    lines = [f"### {spec['title']}", "", spec["about"], "", f"![label entropy and fooled-label entropy against "
             f"fooling rate]({png.relative_to(build.out_dir)})", "",
             "| setting | n | fooling rate | label entropy | fooled-label entropy |", "|---|---|---|---|---|"]
    ordered = sorted(rows, key=lambda r: -(r["fooling_rate"][0] or 0))
    lines += [f"| {r['_label']} | {r['n']} | " + " | ".join(format_cell(r[m]) for m in FRONTIER_METRICS) + " |"
              for r in ordered]
    return [*lines, "", *_per_seed_lines(ordered), ""]


def _per_seed_lines(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The points of a frontier figure, one table row per run, folded away."""
    def number(rec: Mapping[str, Any], name: str) -> str:
        value = metric(rec, name)
        return "–" if value is None else f"{value:.3f}"

    metrics = ("fooling_rate", "label_entropy", "fooled_label_entropy", "min_class_attack_success_rate")
    lines = ["<details><summary>Every run (one point of each panel of the figure)</summary>", "",
             "| setting | seed | fooling rate | label entropy | fooled-label entropy | min per-class attack success |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        for rec in sorted(row["_records"], key=lambda rec: str(rec.get("seed"))):
            lines.append(f"| {row['_label']} | {rec.get('seed')} | " + " | ".join(number(rec, m) for m in metrics) + " |")
    return [*lines, "", "</details>"]
