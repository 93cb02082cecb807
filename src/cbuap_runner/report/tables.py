"""A sweep's tables: the records under a directory as `<kind>.md`, `.csv`, `.tex` and figures."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..io import write_text
from .claims import manifest_thresholds
from .figures import make_figures
from .formats import WRITERS
from .kinds import PARETO, PROGRESS, STRENGTH, TRANSFER, resolve_kind
from .pareto import write_pareto
from .progress import write_progress
from .records import SUMMARY, NoRecords, load_records
from .rows import build_rows, choose_tuned
from .strength import write_strength
from .transfer import write_transfer


def write_table_files(out: Path, kind: str, keys: Sequence[str], columns: Sequence[str],
                      rows: Sequence[Mapping[str, Any]]) -> list[Path]:
    """`out/<kind>.md`, `.csv` and `.tex`; returns their paths."""
    written = []
    for suffix, writer in WRITERS.items():
        path = out / f"{kind}.{suffix}"
        write_text(path, writer(keys, columns, rows))
        written.append(path)
    return written


def write_tables(root: str | os.PathLike, out_dir: str | os.PathLike | None = None, kind: str = "auto",
                 metrics: Sequence[str] | None = None, figures: bool = True, rows: Sequence[str] | None = None,
                 claims: str | os.PathLike | None = None) -> list[Path]:
    """Read the records under `root` and write `<kind>.md/.csv/.tex` and the figures to `out_dir` (default:
    `root/tables`). `rows`: the row keys where the records declare none; `claims`: the manifest whose margins
    `--kind pareto` shades (default: the committed one)."""
    records = load_records(root)
    if not records:
        raise NoRecords(f"no {SUMMARY} under {root} (run an experiment first, or point at a sweep directory)")
    kind = resolve_kind(records, kind)
    out = Path(out_dir) if out_dir is not None else Path(root) / "tables"
    if kind == TRANSFER:
        return write_transfer(records, out, figures)
    if kind == STRENGTH:
        return write_strength(records, out, figures)
    if kind == PARETO:
        return write_pareto(records, out, manifest_thresholds(claims), figures)
    if kind == PROGRESS:
        return write_progress(records, Path(root), out)
    keys, columns, table = build_rows(records, kind, metrics, rows)
    if kind == "tuning":
        choose_tuned(table)
    written = write_table_files(out, kind, keys, columns, table)
    if figures:
        written += make_figures(keys, table, out)
    return written
