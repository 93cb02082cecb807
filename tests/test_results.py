"""The committed result tables are what scripts/make_tables.py makes of the committed records (nothing typed)."""

from __future__ import annotations

import importlib.util
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
