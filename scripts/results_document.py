"""The results document: docs/results.md and its figures, generated from the committed records.

    python scripts/make_tables.py --document docs/results/document.json

The manifest (JSON) names, per section, the record folders (relative to the manifest), the table kind, what the
table compares and the commands that rerun it; every number in the document is computed here from the records.
Besides one table per section (with the code versions behind its records) it draws the label entropy and the
fooled-label entropy against the fooling rate (one point per run) and the clean against worst-case accuracy of each
defence (mean ± std), and it answers the paper's two claims in one sentence each from the rows (or says which
records are missing).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import make_tables as mt

# claim 1 (CB-UAP against SGD-UAP): fooled-label entropy up by at least this, fooling rate down by at most this
ENTROPY_GAIN = 0.15
FOOLING_LOSS = 0.02
VERDICT_ENTROPY = "fooled_label_entropy"
VERDICT_REASON = ("Claim 1's verdict reads the fooled-label entropy, the entropy of the labels the attack gives the "
                  "images it fools: that is where a class-balanced attack spreads its victims, while the label entropy "
                  "also counts the images left unfooled, so a weaker attack would gain it for free.")
UAT_FAMILY = ("cb_uat", "uat", "cw_uat")


def _rows(base: Path, section: Mapping[str, Any]) -> tuple[list[str], list[str], list[dict[str, Any]]]:
    records = [{**r, "_path": str(base / folder / r["_dir"])} for folder in section["records"]
               for r in mt.load_records(base / folder)]
    only = section.get("only", {})  # {setting: [values]}: keep the records whose setting is one of these
    records = [r for r in records if all(mt._settings(r).get(k) in v for k, v in only.items())]
    if not records:
        raise mt.NoRecords(f"section {section['name']}: no records under {', '.join(section['records'])}")
    keys, columns, rows = mt.build_rows(records, section["kind"], section.get("metrics"))  # metrics: the kind's by default
    if section["kind"] == "tuning":
        mt.choose_tuned(rows)
    return keys, columns, rows


def _matches(row: Mapping[str, Any], where: Mapping[str, Any]) -> bool:
    return all(row.get(k) == v for k, v in where.items())


def _mean(row: Mapping[str, Any] | None, metric: str) -> float | None:
    return None if row is None else row.get(metric, (None,))[0]


def _find(rows: Sequence[Mapping[str, Any]], **where: Any) -> dict[str, Any] | None:
    found = [r for r in rows if r["status"] == "completed" and _matches(r, where)]
    return found[0] if len(found) == 1 else None


def _balance_verdict(sgd: Mapping[str, Any], cb: Mapping[str, Any], name: str) -> str:
    """`name` against SGD-UAP on test: fooled-label entropy gained (the verdict's), label entropy gained, fooling
    rate lost, minimum per-class success, the verdict."""
    if _mean(sgd, VERDICT_ENTROPY) is None or _mean(cb, VERDICT_ENTROPY) is None:
        return "not answered (the rows lack the fooled-label entropy)."
    d_fooled = _mean(cb, VERDICT_ENTROPY) - _mean(sgd, VERDICT_ENTROPY)
    d_ent = _mean(cb, "label_entropy") - _mean(sgd, "label_entropy")
    d_fr = _mean(cb, "fooling_rate") - _mean(sgd, "fooling_rate")
    holds = d_fooled >= ENTROPY_GAIN and d_fr >= -FOOLING_LOSS
    cell = mt.format_cell
    return (f"{name} {'raises' if d_fooled >= 0 else 'lowers'} the test fooled-label entropy by {abs(d_fooled):.3f} "
            f"({cell(sgd[VERDICT_ENTROPY])} → {cell(cb[VERDICT_ENTROPY])}; the label entropy {d_ent:+.3f}, "
            f"{cell(sgd['label_entropy'])} → {cell(cb['label_entropy'])}) with the test fooling rate "
            f"{abs(d_fr) * 100:.1f} points {'higher' if d_fr >= 0 else 'lower'} ({cell(sgd['fooling_rate'])} → "
            f"{cell(cb['fooling_rate'])}) and the minimum per-class attack success "
            f"{cell(sgd['min_class_attack_success_rate'])} → {cell(cb['min_class_attack_success_rate'])} "
            f"(n = {sgd['n']}, {cb['n']}): the claim (fooled-label entropy ≥ {ENTROPY_GAIN} higher with at most "
            f"{FOOLING_LOSS * 100:.0f} points lost) {'holds' if holds else 'does not hold'}.")


def claim_balance(label: str, rows: Sequence[Mapping[str, Any]], where: Mapping[str, Any]) -> str:
    """Claim 1 in one sentence: does CB-UAP (the defaults) raise the fooled-label entropy by ENTROPY_GAIN over
    SGD-UAP with the fooling rate within FOOLING_LOSS?"""
    sgd = _find([r for r in rows if _matches(r, where)], attack="sgd_uap")
    cb = _find([r for r in rows if _matches(r, where)], attack="cb_uap")
    if sgd is None or cb is None:
        return f"{label}: not answered (the table lacks a completed SGD-UAP or CB-UAP row)."
    return f"{label}: {_balance_verdict(sgd, cb, 'CB-UAP')}"


def claim_tuned(label: str, rows: Sequence[Mapping[str, Any]]) -> str:
    """Claim 1 for the setting chosen on validation in a tuning table, judged on the test split."""
    sgd = _find(rows, attack="sgd_uap")
    chosen = _find(rows, chosen=True)
    if sgd is None or chosen is None:
        return f"{label}: not answered (the tuning table lacks a completed SGD-UAP row or a chosen row)."
    return f"{label}: {_balance_verdict(sgd, chosen, 'the setting chosen on validation (' + chosen['_label'] + ')')}"


def claim_defence(label: str, rows: Sequence[Mapping[str, Any]], cb_where: Mapping[str, Any] | None = None) -> str:
    """Claim 2 in one sentence: does CB-UAT (its row matching `cb_where`) beat UAT and CW-UAT on worst-case
    white-box UAP accuracy at equal or better clean accuracy?"""
    where = {name: {"training": name} for name in UAT_FAMILY}
    where["cb_uat"].update(cb_where or {})
    found = {name: _find(rows, **where[name]) for name in UAT_FAMILY}
    missing = [name for name, row in found.items() if row is None]
    if missing:
        return f"{label}: not answered (no completed row for {', '.join(missing)})."
    cb = found["cb_uat"]
    parts, wins = [], True
    for other in ("uat", "cw_uat"):
        row = found[other]
        worst = _mean(cb, "worst_adv_acc") - _mean(row, "worst_adv_acc")
        clean = _mean(cb, "clean_acc") - _mean(row, "clean_acc")
        wins &= worst > 0 and clean >= 0
        parts.append(f"against {other} worst-case {worst * 100:+.1f} points and clean {clean * 100:+.1f} points")
    runs = ", ".join(f"{name} {found[name]['n']}" for name in UAT_FAMILY)
    return (f"{label}: CB-UAT (clean {mt.format_cell(cb['clean_acc'])}, worst case "
            f"{mt.format_cell(cb['worst_adv_acc'])}) stands {'; '.join(parts)} (runs: {runs}): the claim "
            f"{'holds' if wins else 'does not hold'}.")


def epoch_rows(record: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The per-epoch training rows of a run (its metrics.jsonl, committed beside the record), in order."""
    path = Path(record.get("_path") or "") / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if "epoch" in r and "val_acc" in r]


def plateau_lines(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Per defence row: epochs trained, the final validation accuracy, how far it lies below the best epoch and how
    much it moved over the last three epochs (means over the seeds; the check: both within 1 point)."""
    lines = ["| defence | n | epochs | final val_acc | best − final | range over the last 3 epochs | within 1 point |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        runs = [epoch_rows(rec) for rec in row.get("_records", [])]
        runs = [r for r in runs if len(r) >= 3]
        if row["status"] != "completed" or not runs:
            continue
        final = [r[-1]["val_acc"] for r in runs]
        gap = [max(e["val_acc"] for e in r) - r[-1]["val_acc"] for r in runs]
        spread = [max(e["val_acc"] for e in r[-3:]) - min(e["val_acc"] for e in r[-3:]) for r in runs]
        ok = all(g <= 0.01 for g in gap) and all(s <= 0.01 for s in spread)
        cell = [mt.format_cell((*mt.mean_std(v), len(v))) for v in (final, gap, spread)]
        lines.append(f"| {row['_label']} | {len(runs)} | {len(runs[0])} | {' | '.join(cell)} | {'yes' if ok else 'no'} |")
    return lines if len(lines) > 2 else []


# the frontier figure's panels: (index in a point, y-axis label, panel title)
FRONTIER_PANELS = (
    (2, "label entropy of the adversarial predictions (test)", "label entropy"),
    (3, "fooled-label entropy: labels of the fooled images (test)", "fooled-label entropy (claim 1's verdict)"),
)


def frontier_figure(points: Sequence[tuple[str, float, float | None, float | None]], title: str, path: Path) -> Path:
    """Label entropy and fooled-label entropy against test fooling rate, side by side: one marker per run
    (label, fooling rate, label entropy, fooled-label entropy), one colour per setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(dict.fromkeys(p[0] for p in points))
    markers = dict(zip(dict.fromkeys(label.split(",")[0] for label in labels), "osD^vP*X"))  # one per attack
    colours = plt.get_cmap("tab20")
    styles = {label: {"marker": markers[label.split(",")[0]], "color": colours(i % 20)} for i, label in enumerate(labels)}
    fig, axes = plt.subplots(1, 2, figsize=(14, 5), sharex=True)
    regions = [_frontier_panel(ax, points, styles, *panel) for ax, panel in zip(axes, FRONTIER_PANELS)]
    settings = [h for h in axes[0].get_legend_handles_labels()[0] if h not in regions]  # one legend for both panels
    axes[1].legend(handles=settings + [h for h in regions if h is not None][:1], fontsize="x-small", loc="upper left",
                   bbox_to_anchor=(1.01, 1.0))
    fig.suptitle(title)
    fig.tight_layout()
    out = mt._save_figure(fig, path)
    plt.close(fig)
    return out


def _frontier_panel(ax: Any, points: Sequence[tuple], styles: Mapping[str, Mapping[str, Any]], index: int, ylabel: str,
                    title: str) -> Any:
    """One entropy (points' `index`) against fooling rate; returns the shaded claim-1 region (None without SGD-UAP)."""
    points = [p for p in points if p[index] is not None]
    for label, style in styles.items():
        xy = [(p[1], p[index]) for p in points if p[0] == label]
        ax.scatter([p[0] for p in xy], [p[1] for p in xy], label=label, alpha=0.8, s=30, **style)
    sgd = [(p[1], p[index]) for p in points if p[0].split(",")[0] == "sgd_uap"]
    shaded = None
    if sgd:  # where claim 1 asks CB-UAP to land: entropy ENTROPY_GAIN above SGD-UAP's, fooling rate within FOOLING_LOSS
        fr, h = (sum(v) / len(sgd) for v in zip(*sgd))
        shaded = ax.fill_between([fr - FOOLING_LOSS, 1.0], h + ENTROPY_GAIN, 1.0, color="green", alpha=0.08,
                                 label=f"claim 1: entropy ≥ SGD-UAP's + {ENTROPY_GAIN}, "
                                       f"fooling rate ≥ SGD-UAP's − {FOOLING_LOSS}")
    ax.set_xlabel("fooling rate (test)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return shaded


def defence_figure(rows: Sequence[Mapping[str, Any]], title: str, path: Path) -> Path:
    """Clean accuracy against worst-case UAP accuracy per defence row, mean ± std over the seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for row in rows:
        if row["status"] != "completed" or row.get("worst_adv_acc", (None,))[0] is None:
            continue
        (cx, sx, _), (wy, sy, _) = row["clean_acc"], row["worst_adv_acc"]
        ax.errorbar(cx, wy, xerr=sx or 0, yerr=sy or 0, fmt="o", capsize=3, label=row["_label"])
    ax.set_xlabel("clean accuracy (test)")
    ax.set_ylabel("worst-case accuracy under white-box UAPs (test)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="x-small")
    out = mt._save_figure(fig, path)
    plt.close(fig)
    return out


def _labelled(keys: Sequence[str], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    done = [r for r in rows if r["status"] == "completed"]
    varying = [k for k in keys if k not in ("task", "dataset", "model")
               and len({mt._hashable(r.get(k)) for r in done}) > 1]
    for row in rows:
        row["_label"] = mt._label(row, keys, varying)
    return rows


def _section_text(base: Path, out_dir: Path, section: Mapping[str, Any], figures: bool) -> tuple[list[str], Any]:
    keys, columns, rows = _rows(base, section)
    _labelled(keys, rows)
    folder = base / section["name"]
    mt._write_text(folder / f"{section['kind']}.md", mt.to_markdown(keys, columns, rows))
    mt._write_text(folder / f"{section['kind']}.csv", mt.to_csv(keys, columns, rows))
    mt._write_text(folder / f"{section['kind']}.tex", mt.to_latex(keys, columns, rows))
    rel = folder.relative_to(out_dir)
    lines = [f"## {section['title']}", "", section["about"], ""]
    lines += ["Rerun:", "", "```bash", *section["rerun"], "```", ""]
    records = [rec for row in rows for rec in row["_records"]]
    lines += [mt.to_markdown(keys, columns, rows), f"Records from commits: {mt.commits_text(mt.commit_counts(records))}.", "",
              f"CSV and LaTeX: [{rel}/{section['kind']}.csv]"
              f"({rel}/{section['kind']}.csv), [{rel}/{section['kind']}.tex]({rel}/{section['kind']}.tex).", ""]
    if section["kind"] == "defences":
        plateau = plateau_lines(rows)
        if plateau:
            lines += ["Training to its plateau (validation accuracy per epoch, from each run's `metrics.jsonl`):", "",
                      *plateau, ""]
        png = folder / "clean_vs_worst.png"
        if figures:
            defence_figure(rows, section["title"], png)
        lines += [f"![clean against worst-case accuracy]({png.relative_to(out_dir)})", ""]
    return lines, (keys, rows)


def _frontier_text(base: Path, out_dir: Path, spec: Mapping[str, Any], figures: bool) -> list[str]:
    records = [r for folder in spec["records"] for r in mt.load_records(base / folder)]
    keys, _, rows = mt.build_rows(records, "attacks", ["fooling_rate", "label_entropy", "fooled_label_entropy"])
    rows = _labelled(keys, [r for r in rows if r["status"] == "completed" and _matches(r, spec.get("where", {}))])
    points = [(r["_label"], *(mt._value(rec, m) for m in ("fooling_rate", "label_entropy", "fooled_label_entropy")))
              for r in rows for rec in r["_records"]]
    points = [p for p in points if p[1] is not None and (p[2] is not None or p[3] is not None)]
    png = base / "figures" / spec["figure"]
    if figures:
        frontier_figure(points, spec["title"], png)
    lines = [f"### {spec['title']}", "", spec["about"], "", f"![label entropy and fooled-label entropy against "
             f"fooling rate]({png.relative_to(out_dir)})", "",
             "| setting | n | fooling rate | label entropy | fooled-label entropy |", "|---|---|---|---|---|"]
    ordered = sorted(rows, key=lambda r: -(r["fooling_rate"][0] or 0))
    lines += [f"| {r['_label']} | {r['n']} | " + " | ".join(mt.format_cell(r[m]) for m in
              ("fooling_rate", "label_entropy", "fooled_label_entropy")) + " |" for r in ordered]
    return [*lines, "", *_per_seed_lines(ordered), ""]


def _per_seed_lines(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The points of a frontier figure, one table row per run, folded away."""
    def number(rec: Mapping[str, Any], metric: str) -> str:
        value = mt._value(rec, metric)
        return "–" if value is None else f"{value:.3f}"

    metrics = ("fooling_rate", "label_entropy", "fooled_label_entropy", "min_class_attack_success_rate")
    lines = ["<details><summary>Every run (one point of each panel of the figure)</summary>", "",
             "| setting | seed | fooling rate | label entropy | fooled-label entropy | min per-class attack success |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        for rec in sorted(row["_records"], key=lambda rec: str(rec.get("seed"))):
            lines.append(f"| {row['_label']} | {rec.get('seed')} | " + " | ".join(number(rec, m) for m in metrics) + " |")
    return [*lines, "", "</details>"]


def write_document(manifest: str | Path, figures: bool = True) -> Path:
    """Write the document the manifest describes (and its section tables and figures); returns its path."""
    manifest = Path(manifest)
    spec = json.loads(manifest.read_text())
    base = manifest.parent
    doc = (base / spec["document"]).resolve()
    out_dir = doc.parent
    base = base.resolve()
    lines = [f"# {spec['title']}", "", *spec["intro"], "", "Regenerate this document, its tables and figures from the "
             "committed records:", "", "```bash", f"python scripts/make_tables.py --document "
             f"{(base / manifest.name).relative_to(out_dir.parent)}", "```", ""]
    body, tables = [], {}
    for section in spec["sections"]:
        text, tables[section["name"]] = _section_text(base, out_dir, section, figures)
        body += text
    body += ["## Fooling rate against label entropy and fooled-label entropy", ""]
    for frontier in spec["frontiers"]:
        body += _frontier_text(base, out_dir, frontier, figures)
    claims = ["## The paper's claims, answered from these tables", "", VERDICT_REASON, ""]
    for claim in spec["claims"]["balance"]:
        claims += [f"- {claim_balance(claim['label'], tables[claim['section']][1], claim.get('where', {}))}"]
    for claim in spec["claims"].get("tuned", []):
        claims += [f"- {claim_tuned(claim['label'], tables[claim['section']][1])}"]
    for claim in spec["claims"]["defence"]:
        rows = tables.get(claim["section"], (None, []))[1]
        claims += [f"- {claim_defence(claim['label'], rows, claim.get('cb_where'))}"]
    mt._write_text(doc, "\n".join([*lines, *claims, "", *body]).rstrip() + "\n")
    return doc
