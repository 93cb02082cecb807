"""Figures of table rows: entropy against fooling rate, per-class robust accuracy, clean against worst-case
accuracy. Matplotlib (Agg) is imported only when a figure is drawn."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..io import atomic_path
from .formats import row_label, setting_text, varying_keys
from .records import metric

PER_CLASS_KEYS = ("per_class_worst_adv_acc", "per_class_adv_acc")
# the frontier figure's panels: (index in a point, y-axis label, panel title)
FRONTIER_PANELS = (
    (2, "label entropy of the adversarial predictions (test)", "label entropy"),
    (3, "fooled-label entropy: labels of the fooled images (test)", "fooled-label entropy (claim 1's verdict)"),
)


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path) -> Path:
    """Save `fig` atomically, in the format its suffix names, and close it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip("."), dpi=120, bbox_inches="tight")
    pyplot().close(fig)
    return path


def make_figures(keys: Sequence[str], rows: Sequence[Mapping[str, Any]], out_dir: str | os.PathLike) -> list[Path]:
    """Label entropy against fooling rate (one point per run, coloured by attack) and per-class
    robust accuracy bars (one bar per row, one figure per dataset and model). Returns the files."""
    out_dir = Path(out_dir)
    done = [r for r in rows if r["status"] == "completed"]
    return _entropy_figure(done, out_dir) + _per_class_figures(keys, done, out_dir)


def _entropy_figure(done: Sequence[Mapping[str, Any]], out_dir: Path) -> list[Path]:
    points: dict[str, list[tuple[float, float]]] = {}
    for row in done:
        for rec in row["_records"]:
            fr, ent = metric(rec, "fooling_rate"), metric(rec, "label_entropy")
            if fr is not None and ent is not None:
                points.setdefault(setting_text(row.get("attack")), []).append((fr, ent))
    if not points:
        return []
    fig, ax = pyplot().subplots(figsize=(5, 4))
    for attack, xy in sorted(points.items()):
        ax.scatter([p[0] for p in xy], [p[1] for p in xy], label=attack, alpha=0.8)
    ax.set_xlabel("fooling rate")
    ax.set_ylabel("label entropy (adversarial predictions)")
    ax.set_title("Label entropy vs fooling rate")
    ax.legend(title="attack")
    ax.grid(alpha=0.3)
    return [save_figure(fig, out_dir / "entropy_vs_fooling.png")]


def _per_class_means(row: Mapping[str, Any]) -> tuple[str, list[float]] | None:
    """The first per-class metric every run of the row reports with one length, and its means over the runs."""
    for name in PER_CLASS_KEYS:
        lists = [(rec.get("metrics") or {}).get(name) for rec in row["_records"]]
        lists = [v for v in lists if isinstance(v, list) and v]
        if lists and all(len(v) == len(lists[0]) for v in lists):
            return name, [sum(float(v[i]) for v in lists) / len(lists) for i in range(len(lists[0]))]
    return None


def _per_class_figures(keys: Sequence[str], done: Sequence[Mapping[str, Any]], out_dir: Path) -> list[Path]:
    varying = varying_keys(keys, done, skip=("dataset", "model"))
    panels: dict[tuple[str, str], list[tuple[str, str, list[float]]]] = {}
    for row in done:
        found = _per_class_means(row)
        if found:
            key = (setting_text(row.get("dataset")), setting_text(row.get("model")))
            panels.setdefault(key, []).append((row_label(row, varying), *found))
    return [_per_class_figure(dataset, model, bars, out_dir) for (dataset, model), bars in sorted(panels.items())]


def _per_class_figure(dataset: str, model: str, bars: Sequence[tuple[str, str, list[float]]], out_dir: Path) -> Path:
    num_classes = max(len(b[2]) for b in bars)
    width = 0.8 / len(bars)
    fig, ax = pyplot().subplots(figsize=(max(6, num_classes * 0.6 + 2), 4))
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
    return save_figure(fig, out_dir / f"per_class_{dataset}_{model}.png")


def frontier_figure(points: Sequence[tuple[str, float, float | None, float | None]], title: str, path: Path,
                    region: tuple[float, float] | None = None) -> Path:
    """Label entropy and fooled-label entropy against test fooling rate, side by side: one marker per run
    (label, fooling rate, label entropy, fooled-label entropy), one colour per setting. `region`: (entropy gain,
    fooling-rate loss) claim 1 asks of CB-UAP over SGD-UAP, shaded where SGD-UAP has points."""
    plt = pyplot()
    labels = list(dict.fromkeys(p[0] for p in points))
    markers = dict(zip(dict.fromkeys(label.split(",")[0] for label in labels), "osD^vP*X"))  # one per attack
    colours = plt.get_cmap("tab20")
    styles = {label: {"marker": markers[label.split(",")[0]], "color": colours(i % 20)} for i, label in enumerate(labels)}
    fig, axes = plt.subplots(1, 2, figsize=(14, 5), sharex=True)
    regions = [_frontier_panel(ax, points, styles, *panel, region) for ax, panel in zip(axes, FRONTIER_PANELS)]
    settings = [h for h in axes[0].get_legend_handles_labels()[0] if h not in regions]  # one legend for both panels
    axes[1].legend(handles=settings + [h for h in regions if h is not None][:1], fontsize="x-small", loc="upper left",
                   bbox_to_anchor=(1.01, 1.0))
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)


def _frontier_panel(ax: Any, points: Sequence[tuple], styles: Mapping[str, Mapping[str, Any]], index: int, ylabel: str,
                    title: str, region: tuple[float, float] | None) -> Any:
    """One entropy (points' `index`) against fooling rate; returns the shaded claim-1 region (None without SGD-UAP
    or a region)."""
    points = [p for p in points if p[index] is not None]
    for label, style in styles.items():
        xy = [(p[1], p[index]) for p in points if p[0] == label]
        ax.scatter([p[0] for p in xy], [p[1] for p in xy], label=label, alpha=0.8, s=30, **style)
    sgd = [(p[1], p[index]) for p in points if p[0].split(",")[0] == "sgd_uap"]
    shaded = None
    if sgd and region:  # where claim 1 asks CB-UAP to land: entropy `gain` above SGD-UAP's, fooling rate within `loss`
        gain, loss = region
        fr, h = (sum(v) / len(sgd) for v in zip(*sgd))
        shaded = ax.fill_between([fr - loss, 1.0], h + gain, 1.0, color="green", alpha=0.08,
                                 label=f"claim 1: entropy ≥ SGD-UAP's + {gain}, fooling rate ≥ SGD-UAP's − {loss}")
    ax.set_xlabel("fooling rate (test)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return shaded


def defence_figure(rows: Sequence[Mapping[str, Any]], title: str, path: Path) -> Path:
    """Clean accuracy against worst-case UAP accuracy per defence row (labelled by `_label`), mean ± std over the
    seeds."""
    fig, ax = pyplot().subplots(figsize=(6, 4.5))
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
    return save_figure(fig, path)
