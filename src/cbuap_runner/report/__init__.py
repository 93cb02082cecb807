"""Reporting: run records (`run_summary.json`) as tables, figures and the results document.

Imports neither torch nor matplotlib (a figure imports matplotlib when drawn), so it runs wherever the records are.

    records   loading records; the settings that decide a result; code versions
    kinds     the metric columns of each table kind
    rows      which settings make a row, the runs aggregated over seeds, the tuning choice
    formats   Markdown, CSV and LaTeX
    figures   the figures of a table and of the document
    tables    a sweep directory's tables (write_tables)
    frontier  the Pareto front of two maximised objectives and its 2-D hypervolume
    pareto    a study's records as its front, with the hypervolume history (--kind pareto)
    claims    the paper's two claims, one sentence each, against the manifest's thresholds
    document  the manifest (docs/results/document.json) as docs/results.md
    cli       scripts/make_tables.py
"""

from .document import write_document
from .records import NoRecords, load_records
from .rows import build_rows, choose_tuned, row_keys
from .tables import write_tables

__all__ = ["NoRecords", "build_rows", "choose_tuned", "load_records", "row_keys", "write_document", "write_tables"]
