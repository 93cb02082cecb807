"""The transfer matrix (`--kind transfer`): a perturbation crafted on each network, evaluated on every other.

Reads `task=evaluate` records of stored perturbations: the row is the network the perturbation was crafted on
(`metrics.source_model`), the column the network it is evaluated on (`metrics.target_model`), the cell the mean ±
std fooling rate over the records of that pair (n). One matrix per perturbation kind (attack, norm, ε, from the
record's `provenance.perturbation`); the diagonal, where a sweep includes it, is the white-box fooling rate.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..io import write_text
from .figures import pyplot, save_figure
from .formats import format_cell
from .networks import check_groups
from .records import NoRecords, hashable, metric
from .rows import mean_std

METRIC = "fooling_rate"


def network_label(model: Any) -> str:
    """A network's short name: a model source's label (`torchvision:vgg16@…`) as it is, a model file by its folder."""
    text = str(model)
    return text if ":" in text or "/" not in text else Path(text).parent.name


def _kind(record: Mapping[str, Any]) -> str:
    stored = (record.get("provenance") or {}).get("perturbation") or {}
    return f"{stored.get('attack')} {stored.get('norm')} ε={stored.get('eps')}"


def transfer_cells(records: Sequence[Mapping[str, Any]]) -> dict[str, dict[tuple[str, str], list[float]]]:
    """kind -> (source, target) -> the fooling rates of its completed evaluate records. ValueError when the records
    of one target network and seed evaluated on different weights (a network trained again under its key:
    networks.py)."""
    cells: dict[str, dict[tuple[str, str], list[float]]] = {}
    targets: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for record in records:
        metrics = record.get("metrics") or {}
        if record.get("status") != "completed" or record.get("task") != "evaluate" or "source_model" not in metrics:
            continue
        pair = (network_label(metrics["source_model"]), network_label(metrics["target_model"]))
        targets.setdefault((pair[1], hashable(record.get("seed"))), []).append(record)
        value = metric(record, METRIC)
        if value is not None:
            cells.setdefault(_kind(record), {}).setdefault(pair, []).append(value)
    if not cells:
        raise NoRecords("--kind transfer: no completed task=evaluate records of stored perturbations")
    check_groups({f"--kind transfer: evaluated on {target}, seed {seed}": group
                  for (target, seed), group in targets.items()}, "a cell compares one network")
    return cells


def _order(pairs: Sequence[tuple[str, str]], side: int) -> list[str]:
    return sorted({pair[side] for pair in pairs})


def to_markdown(cells: Mapping[str, Mapping[tuple[str, str], list[float]]]) -> str:
    """One table per kind: rows the networks crafted on, columns the networks evaluated on."""
    lines = []
    for kind, by_pair in cells.items():
        sources, targets = _order(list(by_pair), 0), _order(list(by_pair), 1)
        lines += [f"Fooling rate of a perturbation ({kind}) crafted on the row's network, on the column's (n):", "",
                  "| crafted on \\ evaluated on | " + " | ".join(targets) + " |", "|---" * (len(targets) + 1) + "|"]
        for source in sources:
            row = [by_pair.get((source, target)) for target in targets]
            lines.append(f"| {source} | " + " | ".join(
                "–" if v is None else f"{format_cell((*mean_std(v), len(v)))} ({len(v)})" for v in row) + " |")
        lines.append("")
    return "\n".join(lines)


def to_csv(cells: Mapping[str, Mapping[tuple[str, str], list[float]]]) -> str:
    lines = ["perturbation,crafted_on,evaluated_on,fooling_rate_mean,fooling_rate_std,n"]
    for kind, by_pair in cells.items():
        for (source, target), values in sorted(by_pair.items()):
            mean, std = mean_std(values)
            lines.append(f"{kind},{source},{target},{mean},{'' if std is None else std},{len(values)}")
    return "\n".join(lines) + "\n"


def transfer_figure(cells: Mapping[str, Mapping[tuple[str, str], list[float]]], path: Path) -> Path:
    """A heat map per kind of the mean fooling rates (rows crafted on, columns evaluated on)."""
    import numpy as np

    plt = pyplot()
    fig, axes = plt.subplots(1, len(cells), figsize=(4.5 * len(cells), 4), squeeze=False)
    for ax, (kind, by_pair) in zip(axes[0], cells.items()):
        sources, targets = _order(list(by_pair), 0), _order(list(by_pair), 1)
        grid = np.array([[mean_std(by_pair[(s, t)])[0] if (s, t) in by_pair else np.nan for t in targets]
                         for s in sources], dtype=float)
        im = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis")
        ax.set_xticks(range(len(targets)), targets, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(sources)), sources, fontsize=7)
        ax.set_xlabel("evaluated on")
        ax.set_ylabel("crafted on")
        ax.set_title(kind, fontsize=8)
        fig.colorbar(im, ax=ax, fraction=0.046)
    return save_figure(fig, path)


def write_transfer(records: Sequence[Mapping[str, Any]], out: Path, figures: bool) -> list[Path]:
    """`out/transfer.md`, `transfer.csv` and (with `figures`) `transfer.png`."""
    cells = transfer_cells(records)
    written = []
    for name, text in (("transfer.md", to_markdown(cells)), ("transfer.csv", to_csv(cells))):
        write_text(out / name, text)
        written.append(out / name)
    if figures:
        written.append(transfer_figure(cells, out / "transfer.png"))
    return written
