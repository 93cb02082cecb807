"""Table text: cells as mean ± std, and a table as Markdown, CSV or LaTeX."""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .records import commit_counts, commits_text, counted, hashable, measured_in_part, metric

MIXED_CODE = "†"  # after a row's n: its runs come from more than one code version
ERROR_WIDTH = 100  # characters of a failed row's error shown in a table


def fmt_number(x: float) -> str:
    if float(x).is_integer() and abs(x) >= 10:
        return str(int(x))
    return f"{x:.3f}" if abs(x) < 100 else f"{x:.1f}"


def fmt_eps(eps: float) -> str:
    """A perturbation budget as it is spoken of: `8/255` where it is a whole number of 255ths that no three-decimal
    figure states exactly, else the number (`0.2`)."""
    steps = eps * 255
    if round(eps, 3) != eps and abs(steps - round(steps)) < 1e-6:
        return f"{round(steps)}/255"
    return f"{eps:g}"


def fmt_duration(seconds: float) -> str:
    """`45 s`, `12 min`, `3.4 h`."""
    if seconds < 60:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 3600 else f"{seconds / 3600:.1f} h"


@dataclass(frozen=True)
class WallTime:
    """What a set of runs cost: the sum of the wall times that count, over how many runs, and how many runs were
    left out because they continued an earlier attempt (their wall time is the last attempt's only)."""

    seconds: float
    timed: int
    partial: int
    training: float  # the training time of the runs that trained a network, summed over every attempt of each
    trained: int  # (a branched run's epochs that another run trained are that run's, counted once)


def _branched_seconds(record: Mapping[str, Any]) -> float:
    """The training seconds a run took over with the checkpoint it branched from (branch_from), else 0."""
    branch = record.get("train_branched_from")
    seconds = branch.get("train_seconds") if isinstance(branch, Mapping) else None
    return float(seconds) if isinstance(seconds, (int, float)) else 0.0


def wall_time(records: Sequence[Mapping[str, Any]]) -> WallTime:
    seconds = [s for s in (metric(r, "wall_seconds") for r in records) if s is not None]
    training = [s - _branched_seconds(r) for r in records if (s := metric(r, "train_seconds")) is not None]
    return WallTime(sum(seconds), len(seconds), sum(measured_in_part(r, "wall_seconds") for r in records),
                    sum(training), len(training))


def provenance_line(records: Sequence[Mapping[str, Any]]) -> str:
    """The commits the records come from and the sum of their runs' wall time (what the section cost to run)."""
    wall = wall_time(records)
    cost = f"; the runs' wall time: {fmt_duration(wall.seconds)} over {counted(wall.timed, 'run')}" if wall.timed else ""
    if wall.partial:
        cost += (f"{',' if wall.timed else ';'} leaving out the wall time of {counted(wall.partial, 'run')} continued "
                 "from an earlier attempt (it counts the last attempt only)")
    continued = sum(bool(r.get("continued_code")) for r in records)
    if continued:
        cost += (f"; {counted(continued, 'run')} continued a training or crafting state another code version wrote (counted "
                 "under both)")
    return f"Records from commits: {commits_text(commit_counts(records))}{cost}."


def format_cell(cell: tuple[float | None, float | None, int], pm: str = "±") -> str:
    """`mean ± std` (just the mean for one value, "–" for none); the table's n column (or a "(n=k)"
    after a cell whose count differs from its row's) says over how many runs."""
    mean, std, _ = cell
    if mean is None:
        return "–"
    return fmt_number(mean) if std is None else f"{fmt_number(mean)} {pm} {fmt_number(std)}"


def setting_text(value: Any) -> str:
    if value is None:
        return "–"
    return fmt_number(value) if isinstance(value, float) else str(value)


def mixes_code(row: Mapping[str, Any]) -> bool:
    return len(row.get("commits") or {}) > 1


def varying_keys(keys: Sequence[str], rows: Sequence[Mapping[str, Any]], skip: Sequence[str] = ()) -> list[str]:
    """The keys (but `skip`) whose value differs between the rows."""
    return [k for k in keys if k not in skip and len({hashable(r.get(k)) for r in rows}) > 1]


def row_label(row: Mapping[str, Any], varying: Sequence[str]) -> str:
    """The row by the `varying` settings (a dotted key named), else by its defence, attack or task."""
    parts = [f"{k}={setting_text(row.get(k))}" if k.count(".") else setting_text(row.get(k)) for k in varying]
    return ", ".join(parts) or setting_text(row.get("training") or row.get("attack") or row.get("task"))


def display(keys: Sequence[str], columns: Sequence[str], rows: Sequence[Mapping[str, Any]], pm: str = "±"
            ) -> tuple[list[str], list[list[str]]]:
    """Header and text cells shared by the Markdown and LaTeX writers."""
    show_status = any(r["status"] != "completed" for r in rows)
    status = ["status"] if show_status else []
    chosen = ["chosen"] if any("chosen" in r for r in rows) else []
    header = list(keys) + status + chosen + ["n"] + list(columns) + (["error"] if show_status else [])
    body = []
    for r in rows:
        cells = [setting_text(r.get(k)) for k in keys]
        if chosen:
            cells.append("yes" if r.get("chosen") else "")
        if show_status:
            cells.append(str(r["status"]).upper() if r["status"] != "completed" else "ok")
        cells.append(str(r["n"]) + (MIXED_CODE if mixes_code(r) else ""))
        cells += [format_cell(r[m], pm) + (f" (n={r[m][2]})" if r[m][0] is not None and r[m][2] != r["n"] else "")
                  for m in columns]
        if show_status:
            error = r.get("error") or ""
            cells.append(error if len(error) <= ERROR_WIDTH else error[:ERROR_WIDTH - 3] + "...")
        body.append(cells)
    return header, body


def to_markdown(keys: Sequence[str], columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> str:
    """A GitHub-flavoured Markdown table."""
    header, body = display(keys, columns, rows)

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
    varying = varying_keys(keys, rows) or list(keys)
    lines = ["", f"{MIXED_CODE} Runs from more than one code version:"]
    for row in mixed:
        shown = [k for k in varying if row.get(k) is not None] or list(keys)
        label = ", ".join(f"{k}={setting_text(row.get(k))}" for k in shown)
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
    header, body = display(keys, columns, rows, pm="PLUSMINUS")
    n_text = len(header) - len(columns) - (1 if "error" in header else 0)
    align = "l" * n_text + "r" * len(columns) + ("l" if "error" in header else "")

    def cell(text: str) -> str:
        return latex_escape(text).replace("PLUSMINUS", r"$\pm$").replace("–", "--").replace(MIXED_CODE, r"$^\dagger$")

    out = [r"\begin{tabular}{" + align + "}", r"\toprule", " & ".join(cell(h) for h in header) + r" \\", r"\midrule"]
    out += [" & ".join(cell(c) for c in cells) + r" \\" for cells in body]
    out += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(out) + "\n"


# writer of each table file, by suffix
WRITERS = {"md": to_markdown, "csv": to_csv, "tex": to_latex}
