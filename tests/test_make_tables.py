"""scripts/make_tables.py: run records -> aggregated tables and figures."""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "make_tables.py"


@pytest.fixture(scope="module")
def mt():
    spec = importlib.util.spec_from_file_location("make_tables", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_tables"] = module
    spec.loader.exec_module(module)
    return module


def _record(attack: str, eps: float, seed: int, fooling: float, status: str = "completed") -> dict:
    record = {
        "status": status,
        "task": "attack",
        "dataset": "fashion_mnist",
        "model": "small_cnn",
        "attack": attack,
        "training": "natural",
        "seed": seed,
        "git_commit": "abc",
        "versions": {"torch": "2.14.1"},
        "wall_seconds": 10.0 + seed,
        "overrides": [f"attack={attack}", f"attack.eps={eps}", f"seed={seed}"],
        "config": {
            "task": "attack",
            "seed": seed,
            "dataset": {"name": "fashion_mnist", "root": f"/data/{seed}"},
            "model": {"name": "small_cnn", "checkpoint": f"outputs/cache/{seed}/model.pt"},
            "attack": {"name": attack, "eps": eps, "lambda_div": 1.0 if attack == "cb_uap" else 0.0},
            "training": {"name": "natural"},
        },
        "metrics": {},
    }
    if status == "completed":
        record["metrics"] = {
            "clean_acc": 0.9,
            "adv_acc": 1 - fooling,
            "fooling_rate": fooling,
            "attack_success_rate": fooling + 0.05,
            "label_entropy": 0.5 * fooling + (0.3 if attack == "cb_uap" else 0.0),
            "dominant_label_ratio": 0.5,
            "num_target_labels": 4,
            "worst_class_adv_acc": 0.01,
            "per_class_adv_acc": [0.1 * i for i in range(10)],
            "craft_seconds": 3.0,
        }
    else:
        record["error"] = "RuntimeError: CUDA out of memory\nsecond line"
    return record


@pytest.fixture()
def sweep(tmp_path: Path) -> Path:
    """2 attacks x 2 eps; (sgd_uap, 0.1) has two seeds; (sgd_uap, 0.2) failed."""
    runs = {
        "0": _record("sgd_uap", 0.1, 0, 0.6),
        "1": _record("sgd_uap", 0.1, 1, 0.8),
        "2": _record("cb_uap", 0.1, 0, 0.7),
        "3": _record("cb_uap", 0.2, 0, 0.9),
        "4": _record("sgd_uap", 0.2, 0, 0.0, status="failed"),
    }
    for name, record in runs.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "run_summary.json").write_text(json.dumps(record))
    (tmp_path / "4" / ".hydra").mkdir()  # not a record
    return tmp_path


def _row(rows, attack, eps, status="completed"):
    found = [r for r in rows if r["attack"] == attack and r["attack.eps"] == eps and r["status"] == status]
    assert len(found) == 1, found
    return found[0]


def test_rows_group_over_seeds_and_keep_failed(mt, sweep):
    records = mt.load_records(sweep)
    assert len(records) == 5
    keys, columns, rows = mt.build_rows(records, "attacks")
    assert keys == ["task", "dataset", "model", "attack", "training", "attack.eps"]  # no seed, no paths
    assert "fooling_rate" in columns and "label_entropy" in columns and "num_target_labels" in columns
    assert len(rows) == 4
    two = _row(rows, "sgd_uap", 0.1)
    assert two["n"] == 2 and two["seeds"] == [0, 1]
    mean, std, n = two["fooling_rate"]
    assert n == 2 and mean == pytest.approx(0.7) and std == pytest.approx(math.sqrt(0.02))  # sample std
    one = _row(rows, "cb_uap", 0.2)
    assert one["n"] == 1 and one["fooling_rate"] == (pytest.approx(0.9), None, 1)
    failed = _row(rows, "sgd_uap", 0.2, status="failed")
    assert failed["error"] == "RuntimeError: CUDA out of memory"
    assert failed["fooling_rate"] == (None, None, 0)


def test_a_swept_key_outside_the_base_set_becomes_a_column(mt, sweep):
    for name in ("0", "1"):
        path = sweep / name / "run_summary.json"
        record = json.loads(path.read_text())
        record["overrides"].append(f"attack.passes={5 * (int(name) + 1)}")
        record["config"]["attack"]["passes"] = 5 * (int(name) + 1)
        path.write_text(json.dumps(record))
    keys, _, rows = mt.build_rows(mt.load_records(sweep), "attacks")
    assert "attack.passes" in keys
    assert len([r for r in rows if r["attack"] == "sgd_uap" and r["attack.eps"] == 0.1]) == 2


def test_formats(mt, sweep):
    keys, columns, rows = mt.build_rows(mt.load_records(sweep), "attacks")
    md = mt.to_markdown(keys, columns, rows)
    lines = md.strip().splitlines()
    assert len(lines) == 2 + 4
    assert "0.700 ± 0.141" in md
    failed_line = next(line for line in lines if "FAILED" in line)
    assert "CUDA out of memory" in failed_line and "sgd_uap" in failed_line

    table = list(csv.DictReader(io.StringIO(mt.to_csv(keys, columns, rows))))
    assert len(table) == 4
    row = next(r for r in table if r["attack"] == "sgd_uap" and r["attack.eps"] == "0.1")
    assert float(row["fooling_rate_mean"]) == pytest.approx(0.7)
    assert float(row["fooling_rate_std"]) == pytest.approx(math.sqrt(0.02))
    assert row["fooling_rate_n"] == "2" and row["seeds"] == "0 1"
    assert [r["status"] for r in table].count("failed") == 1

    tex = mt.to_latex(keys, columns, rows)
    assert tex.startswith(r"\begin{tabular}") and r"\bottomrule" in tex
    assert r"0.700 $\pm$ 0.141" in tex and r"sgd\_uap" in tex and "FAILED" in tex


def test_cli_writes_tables_and_figures(sweep, tmp_path):
    out = tmp_path / "tables_out"
    proc = subprocess.run([sys.executable, str(SCRIPT), str(sweep), "--out", str(out), "--kind", "attacks"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for name in ("attacks.md", "attacks.csv", "attacks.tex", "entropy_vs_fooling.png",
                 "per_class_fashion_mnist_small_cnn.png"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "entropy_vs_fooling.png").read_bytes()[:4] == b"\x89PNG"
    assert "FAILED" in (out / "attacks.md").read_text()


def test_defence_table_time_relative_to_natural(mt, tmp_path):
    for i, (training, wall) in enumerate([("natural", 10.0), ("cb_uat", 25.0), ("cb_uat", 35.0)]):
        record = {
            "status": "completed", "task": "pipeline", "dataset": "cifar10", "model": "resnet20", "attack": None,
            "training": training, "seed": i, "wall_seconds": wall, "overrides": [f"training={training}"],
            "config": {"training": {"name": training}},
            "metrics": {"clean_acc": 0.8, "adv_acc_sgd_uap": 0.5, "adv_acc_uap": 0.6, "adv_acc_cb_uap": 0.4,
                        "worst_adv_acc": 0.4, "worst_class_adv_acc": 0.1, "per_class_worst_adv_acc": [0.4] * 10},
        }
        (tmp_path / str(i)).mkdir()
        (tmp_path / str(i) / "run_summary.json").write_text(json.dumps(record))
    records = mt.load_records(tmp_path)
    assert mt.resolve_kind(records) == "defences"
    keys, columns, rows = mt.build_rows(records)
    assert columns[:6] == ["clean_acc", "adv_acc_sgd_uap", "adv_acc_uap", "adv_acc_cb_uap", "worst_adv_acc",
                           "worst_class_adv_acc"]
    cb = next(r for r in rows if r["training"] == "cb_uat")
    assert cb["time_vs_natural"][0] == pytest.approx(3.0)
    written = mt.make_figures(keys, rows, tmp_path / "fig")
    assert [p.name for p in written] == ["per_class_cifar10_resnet20.png"]


def test_empty_directory_fails_with_one_line(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "no run_summary.json" in lines[0]
    assert not (tmp_path / "tables").exists()


def test_missing_directory_fails_with_one_line(mt, tmp_path, capsys):
    assert mt.main([str(tmp_path / "nope")]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no such directory" in err[0]


def _tuning_row(attack: str, fooling: float, entropy: float) -> dict:
    return {"status": "completed", "attack": attack, "val_fooling_rate": (fooling, 0.01, 3),
            "val_label_entropy": (entropy, 0.01, 3)}


def test_tuning_choice_is_the_widest_spread_within_the_fooling_margin(mt):
    rows = [_tuning_row("sgd_uap", 0.80, 0.10), _tuning_row("cb_uap", 0.79, 0.20), _tuning_row("cb_uap", 0.781, 0.25),
            _tuning_row("cb_uap", 0.70, 0.60)]
    assert mt.choose_tuned(rows) is rows[2]  # 0.60 entropy loses 10 points; 0.25 is within 2
    assert [r["chosen"] for r in rows] == [False, False, True, False]
    weak = [_tuning_row("sgd_uap", 0.80, 0.10), _tuning_row("cb_uap", 0.70, 0.60), _tuning_row("cb_uap", 0.75, 0.3)]
    assert mt.choose_tuned(weak) is weak[2]  # none within the margin: the strongest


def test_a_cell_with_fewer_runs_than_its_row_says_so(mt):
    row = {"status": "completed", "n": 3, "attack": "sgd_uap", "fooling_rate": (0.5, 0.1, 2), "adv_acc": (0.4, 0.1, 3)}
    _, body = mt._display(["attack"], ["fooling_rate", "adv_acc"], [row])
    assert body[0] == ["sgd_uap", "3", "0.500 ± 0.100 (n=2)", "0.400 ± 0.100"]
