"""Turn run records (`run_summary.json`) into Markdown, CSV and LaTeX tables and figures.

    python scripts/make_tables.py SWEEP_DIR [--out DIR] [--rows a,b]
        [--kind attacks|defences|ablation|tuning|transfer|pareto|strength|progress|auto]
    python scripts/make_tables.py --document docs/results/document.json   (docs/results.md)

Runs that agree on everything that decides a result and differ in the seed alone form one row; metrics are
shown as mean ± sample std over those seeds (n = number of runs; two runs of one seed in a row are an error).
The keys that make a row are the manifest section's `rows` or --rows, else the records' `rows` (the table
config's), else inferred from the runs' overrides (a note says so). What decides a result: the config keys the task reads,
and where a record carries `provenance`, the data's fingerprint and the identities of its model and perturbation
in place of their paths. A row whose runs come from more than one code version is marked (`n†`). A run that did
not complete gets a row of its own, marked with its status and error.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from .document import write_document
from .kinds import KINDS
from .records import NoRecords
from .tables import write_tables

PROG = "make_tables"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", help="a sweep directory or outputs/ (searched recursively for run_summary.json)")
    parser.add_argument("--out", default=None, help="where to write the tables (default: ROOT/tables)")
    parser.add_argument("--kind", default="auto", choices=KINDS,
                        help="which metric columns to show; transfer: the crafted-on x evaluated-on matrix; "
                        "pareto: a study's Pareto front (python -m cbuap_runner.study); strength: the defences' strength checks "
                        "(table=strength_fmnist and its companions); progress: where each run of a sweep stands and the "
                        "time its training has left")
    parser.add_argument("--metrics", default=None, help="comma-separated metric columns (overrides --kind's)")
    parser.add_argument("--rows", default=None, metavar="KEYS",
                        help="comma-separated keys that make a row, where the records declare none (e.g. attack.name,attack.eps)")
    parser.add_argument("--claims", default=None, metavar="MANIFEST",
                        help="--kind pareto: the manifest whose claims block sets claim 1's region "
                        "(default: docs/results/document.json)")
    parser.add_argument("--no-figures", action="store_true", help="write the tables only")
    parser.add_argument("--document", default=None, metavar="MANIFEST",
                        help="write the results document a manifest describes (docs/results/document.json)")
    return parser


def _names(text: str | None) -> list[str] | None:
    return [name.strip() for name in text.split(",") if name.strip()] if text else None


@contextmanager
def _notes_on_stderr() -> Iterator[None]:
    """The report's notes (rows inferred or added) on stderr, one line each, while the command runs."""
    logger = logging.getLogger(__package__)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{PROG}: %(message)s"))
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.document is None and args.root is None:
        parser.error("give a sweep directory (or --document MANIFEST)")
    with _notes_on_stderr():
        return _document(args) if args.document else _tables(args)


def _document(args: argparse.Namespace) -> int:
    try:
        print(f"wrote {write_document(args.document, not args.no_figures, _names(args.rows))}")
    except KeyError as err:
        return _fail(f"{args.document}: missing key {err.args[0]!r}")
    except (NoRecords, OSError, ValueError) as err:
        return _fail(str(err))
    return 0


def _tables(args: argparse.Namespace) -> int:
    try:
        written = write_tables(args.root, args.out, args.kind, _names(args.metrics), not args.no_figures,
                               _names(args.rows), args.claims)
    except (NoRecords, OSError, ValueError) as err:
        return _fail(str(err))
    print(Path(written[0]).read_text(), end="")
    for path in written:
        print(f"wrote {path}")
    return 0


def _fail(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 1
