"""The committed result tables are what scripts/make_tables.py makes of the committed records (nothing typed)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "docs" / "results"
TABLES = [("fair_attacks", "attacks"), ("tune_cb_uap", "tuning"), ("uat_bn", "defences")]


@pytest.fixture(scope="module")
def make_tables():
    spec = importlib.util.spec_from_file_location("make_tables", REPO / "scripts" / "make_tables.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_tables"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("table,kind", TABLES)
def test_committed_table_regenerates_from_its_records(make_tables, tmp_path, table, kind):
    make_tables.write_tables(RESULTS / table / "records", tmp_path, kind, figures=False)
    for suffix in ("md", "csv"):
        assert (tmp_path / f"{kind}.{suffix}").read_text() == (RESULTS / table / f"{kind}.{suffix}").read_text()


def test_results_document_regenerates_from_the_committed_records(make_tables, tmp_path):
    """docs/results.md, every table in it and the claims it answers come from the records alone."""
    shutil.copytree(RESULTS, tmp_path / "docs" / "results")
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        from results_document import write_document
    finally:
        sys.path.remove(str(REPO / "scripts"))
    doc = write_document(tmp_path / "docs" / "results" / "document.json", figures=False)
    assert doc.read_text() == (REPO / "docs" / "results.md").read_text()
    for table in json.loads((RESULTS / "document.json").read_text())["sections"]:
        for suffix in ("md", "csv"):
            name = f"{table['kind']}.{suffix}"
            assert (doc.parent / "results" / table["name"] / name).read_text() == (RESULTS / table["name"] / name).read_text()
