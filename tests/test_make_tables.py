"""cbuap_runner.report: run records -> aggregated tables and figures (scripts/make_tables.py is its command line)."""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import subprocess
import sys
from pathlib import Path

import pytest

from cbuap_runner.report import build_rows, choose_tuned, load_records
from cbuap_runner.report.cli import main
from cbuap_runner.report.figures import make_figures
from cbuap_runner.report.formats import to_csv, to_latex, to_markdown
from cbuap_runner.report.kinds import resolve_kind

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "make_tables.py"


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
        "provenance": {
            "code": "abc",
            "data": {"fingerprint": "f" * 64},
            "model": {"identity": "1" * 64, "sha256": str(seed) * 64, "path": f"outputs/cache/{seed}/model.pt",
                      "source": "cache"},
        },
    }
    if status == "completed":
        record["metrics"] = {
            "clean_acc": 0.9,
            "adv_acc": 1 - fooling,
            "fooling_rate": fooling,
            "attack_success_rate": fooling + 0.05,
            "label_entropy": 0.5 * fooling + (0.3 if attack == "cb_uap" else 0.0),
            "fooled_label_entropy": 0.4 * fooling,
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


def test_rows_group_over_seeds_and_keep_failed(sweep):
    records = load_records(sweep)
    assert len(records) == 5
    keys, columns, rows = build_rows(records, "attacks")
    assert keys == ["task", "dataset", "model", "attack", "training", "attack.eps"]  # no seed, no paths
    assert "fooling_rate" in columns and "num_target_labels" in columns
    assert columns.index("fooled_label_entropy") == columns.index("label_entropy") + 1
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


def test_a_swept_key_outside_the_base_set_becomes_a_column(sweep):
    for name in ("0", "1"):
        path = sweep / name / "run_summary.json"
        record = json.loads(path.read_text())
        record["overrides"].append(f"attack.passes={5 * (int(name) + 1)}")
        record["config"]["attack"]["passes"] = 5 * (int(name) + 1)
        path.write_text(json.dumps(record))
    keys, _, rows = build_rows(load_records(sweep), "attacks")
    assert "attack.passes" in keys
    assert len([r for r in rows if r["attack"] == "sgd_uap" and r["attack.eps"] == 0.1]) == 2


def test_formats(sweep):
    keys, columns, rows = build_rows(load_records(sweep), "attacks")
    md = to_markdown(keys, columns, rows)
    lines = md.strip().splitlines()
    assert len(lines) == 2 + 4
    assert "0.700 ± 0.141" in md
    failed_line = next(line for line in lines if "FAILED" in line)
    assert "CUDA out of memory" in failed_line and "sgd_uap" in failed_line

    table = list(csv.DictReader(io.StringIO(to_csv(keys, columns, rows))))
    assert len(table) == 4
    row = next(r for r in table if r["attack"] == "sgd_uap" and r["attack.eps"] == "0.1")
    assert float(row["fooling_rate_mean"]) == pytest.approx(0.7)
    assert float(row["fooling_rate_std"]) == pytest.approx(math.sqrt(0.02))
    assert row["fooling_rate_n"] == "2" and row["seeds"] == "0 1"
    assert [r["status"] for r in table].count("failed") == 1

    tex = to_latex(keys, columns, rows)
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


def _write(root: Path, records: list[dict]) -> Path:
    """Each record as `root/<i>/run_summary.json`."""
    for i, record in enumerate(records):
        (root / str(i)).mkdir(parents=True)
        (root / str(i) / "run_summary.json").write_text(json.dumps(record))
    return root


def _defence(training: str, seed: int, seconds: float, epochs: int = 15, **extra) -> dict:
    """A completed pipeline record training `training` for `epochs` epochs in `seconds`."""
    return {
        "status": "completed", "task": "pipeline", "dataset": "cifar10", "model": "resnet20", "attack": None,
        "training": training, "seed": seed, "wall_seconds": seconds + 5.0,
        "overrides": [f"training={training}", *(f"{k}={v}" for k, v in extra.items())],
        "config": {"training": {"name": training, "epochs": epochs}, **extra},
        "metrics": {"clean_acc": 0.8, "train_seconds": seconds, "adv_acc_sgd_uap": 0.5, "adv_acc_uap": 0.6,
                    "adv_acc_cb_uap": 0.4, "worst_adv_acc": 0.4, "worst_class_adv_acc": 0.1,
                    "per_class_worst_adv_acc": [0.4] * 10},
    }


def _time_vs_natural(root: Path, training: str = "cb_uat") -> tuple:
    _, _, rows = build_rows(load_records(root), "defences")
    found = [r for r in rows if r["training"] == training]
    assert len(found) == 1, found
    return found[0]["time_vs_natural"]


def test_defence_table_time_relative_to_natural(tmp_path):
    _write(tmp_path, [_defence("natural", 0, 10.0), _defence("natural", 1, 20.0),
                      _defence("cb_uat", 0, 30.0), _defence("cb_uat", 1, 40.0)])
    records = load_records(tmp_path)
    assert resolve_kind(records) == "defences"
    keys, columns, rows = build_rows(records)
    assert columns[:6] == ["clean_acc", "adv_acc_sgd_uap", "adv_acc_uap", "adv_acc_cb_uap", "worst_adv_acc",
                           "worst_class_adv_acc"]
    mean, std, n = _time_vs_natural(tmp_path)
    assert (mean, n) == (pytest.approx(2.5), 2) and std == pytest.approx(math.sqrt(0.5))  # 30/10 and 40/20, seed by seed
    written = make_figures(keys, rows, tmp_path / "fig")
    assert [p.name for p in written] == ["per_class_cifar10_resnet20.png"]


def test_time_vs_natural_reads_the_natural_row_of_the_same_epochs(tmp_path):
    _write(tmp_path, [_defence("natural", 0, 30.0, epochs=15), _defence("natural", 0, 10.0, epochs=5),
                      _defence("uat", 0, 60.0, epochs=15)])
    assert _time_vs_natural(tmp_path, "uat")[0] == pytest.approx(2.0)


def test_time_vs_natural_needs_every_seed_in_one_natural_row(tmp_path):
    _write(tmp_path / "missing_seed", [_defence("natural", 0, 10.0), _defence("cb_uat", 0, 30.0),
                                       _defence("cb_uat", 1, 30.0)])
    assert _time_vs_natural(tmp_path / "missing_seed") == (None, None, 0)
    _write(tmp_path / "two_naturals", [_defence("natural", 0, 10.0, **{"training.lr": 0.1}),
                                       _defence("natural", 0, 20.0, **{"training.lr": 0.05}), _defence("cb_uat", 0, 30.0)])
    assert _time_vs_natural(tmp_path / "two_naturals") == (None, None, 0)
    _write(tmp_path / "other_sweep", [_defence("natural", 0, 10.0, table="defences"), _defence("natural", 1, 10.0, table="defences"),
                                      _defence("cb_uat", 0, 30.0, table="variants")])
    assert _time_vs_natural(tmp_path / "other_sweep")[:2] == (pytest.approx(3.0), None)  # `table` is a label


def test_empty_directory_fails_with_one_line(tmp_path, capsys):
    assert main([str(tmp_path)]) != 0
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "no run_summary.json" in lines[0]
    assert not (tmp_path / "tables").exists()


def test_missing_directory_fails_with_one_line(tmp_path, capsys):
    assert main([str(tmp_path / "nope")]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no such directory" in err[0]


def _tuning_row(attack: str, fooling: float, entropy: float) -> dict:
    return {"status": "completed", "attack": attack, "val_fooling_rate": (fooling, 0.01, 3),
            "val_label_entropy": (entropy, 0.01, 3)}


def test_tuning_choice_is_the_widest_spread_within_the_fooling_margin():
    rows = [_tuning_row("sgd_uap", 0.80, 0.10), _tuning_row("cb_uap", 0.79, 0.20), _tuning_row("cb_uap", 0.781, 0.25),
            _tuning_row("cb_uap", 0.70, 0.60)]
    assert choose_tuned(rows) is rows[2]  # 0.60 entropy loses 10 points; 0.25 is within 2
    assert [r["chosen"] for r in rows] == [False, False, True, False]
    weak = [_tuning_row("sgd_uap", 0.80, 0.10), _tuning_row("cb_uap", 0.70, 0.60), _tuning_row("cb_uap", 0.75, 0.3)]
    assert choose_tuned(weak) is weak[2]  # none within the margin: the strongest


def test_a_cell_with_fewer_runs_than_its_row_says_so():
    row = {"status": "completed", "n": 3, "attack": "sgd_uap", "fooling_rate": (0.5, 0.1, 2), "adv_acc": (0.4, 0.1, 3)}
    line = to_markdown(["attack"], ["fooling_rate", "adv_acc"], [row]).splitlines()[2]
    assert line == "| sgd_uap | 3 | 0.500 ± 0.100 (n=2) | 0.400 ± 0.100 |"


def _evaluate(seed: int, fooling: float, perturbation: dict | None, path: str, attack_in_file: str = "uap") -> dict:
    """A task=evaluate record of the perturbation at `path` (provenance given by `perturbation`, or none); its
    config's attack group holds defaults it never read."""
    record = {
        "status": "completed", "task": "evaluate", "dataset": "fashion_mnist", "model": "small_cnn",
        "attack": "sgd_uap", "training": "natural", "seed": seed, "git_commit": "abc",
        "overrides": [f"perturbation={path}", f"seed={seed}"],
        "config": {"task": "evaluate", "seed": seed, "perturbation": path,
                   "dataset": {"name": "fashion_mnist", "root": "data/fashion_mnist"},
                   "model": {"name": "small_cnn", "checkpoint": None},
                   "attack": {"name": "sgd_uap", "eps": 0.1, "norm": "linf"}, "training": {"name": "natural"}},
        "metrics": {"fooling_rate": fooling, "perturbation": path, "perturbation_attack": attack_in_file},
    }
    if perturbation is not None:
        record["provenance"] = {"code": "abc", "perturbation": {"sha256": str(seed) * 64, "path": path, **perturbation}}
    return record


def test_evaluate_rows_are_the_perturbations_that_were_run(tmp_path):
    uap = {"identity": "a" * 64, "attack": "uap", "eps": 0.2, "norm": "linf", "class_wise": False}
    weak = {"identity": "b" * 64, "attack": "uap", "eps": 0.2, "norm": "linf", "class_wise": False}
    _write(tmp_path, [_evaluate(0, 0.75, uap, "runs/a/perturbation.pt"), _evaluate(1, 0.03, weak, "runs/b/perturbation.pt")])
    keys, _, rows = build_rows(load_records(tmp_path), "attacks")
    assert len(rows) == 2 and [r["n"] for r in rows] == [1, 1]
    assert "perturbation.identity" in keys and "perturbation" not in keys
    assert {(r["attack"], r["attack.eps"], r["perturbation.identity"]) for r in rows} == {
        ("uap", 0.2, "a" * 12), ("uap", 0.2, "b" * 12)}  # not the config's sgd_uap at 0.1


def test_evaluate_without_provenance_reads_the_files_attack(tmp_path):
    _write(tmp_path, [_evaluate(0, 0.75, None, "runs/a/perturbation.pt", "cb_uap"),
                      _evaluate(1, 0.03, None, "runs/b/perturbation.pt", "cb_uap")])
    keys, _, rows = build_rows(load_records(tmp_path), "attacks")
    assert "perturbation" in keys and len(rows) == 2  # another path may hold another perturbation
    assert {(r["attack"], r.get("attack.eps")) for r in rows} == {("cb_uap", None)}  # ε unknown: no column


def test_seeds_of_one_experiment_share_a_row_whatever_their_paths_and_execution_settings(tmp_path):
    records = []
    for seed in (0, 1):
        record = _record("sgd_uap", 0.1, seed, 0.5)
        record["config"].update(device=["cpu", "cuda"][seed], progress=seed == 0, cache_dir=f"/c{seed}", resume="auto",
                                deterministic=seed == 1, logger={"dir": f"/l{seed}"})
        record["config"]["dataset"]["download"] = seed == 0
        record["config"]["training"]["init_checkpoint"] = f"/ckpt/{seed}.pt"
        record["overrides"].append(f"hydra.run.dir=/runs/{seed}")
        records.append(record)
    _write(tmp_path, records)
    keys, _, rows = build_rows(load_records(tmp_path), "attacks")
    assert len(rows) == 1 and rows[0]["n"] == 2
    assert keys == ["task", "dataset", "model", "attack", "training", "attack.eps"]


def test_without_provenance_the_paths_are_settings(tmp_path):
    for path in ("dataset.root", "model.checkpoint"):
        records = [_record("sgd_uap", 0.1, seed, 0.5) for seed in (0, 1)]
        for record in records:
            del record["provenance"]
            record["config"]["dataset"]["root"] = "/data"
            record["config"]["model"]["checkpoint"] = "model.pt"
        section, key = path.split(".")
        records[1]["config"][section][key] = "/elsewhere"
        _write(tmp_path / path, records)
        keys, _, rows = build_rows(load_records(tmp_path / path), "attacks")
        assert len(rows) == 2 and path in keys
    other_data = [_record("sgd_uap", 0.1, seed, 0.5) for seed in (0, 1)]
    other_data[1]["provenance"]["data"]["fingerprint"] = "e" * 64
    _write(tmp_path / "data", other_data)
    keys, _, rows = build_rows(load_records(tmp_path / "data"), "attacks")
    assert len(rows) == 2 and "data" in keys and "dataset.root" not in keys


def test_training_rows_ignore_the_attack_config(tmp_path):
    records = []
    for seed, eps in ((0, 0.1), (1, 0.2)):
        record = _defence("natural", seed, 10.0)
        record.update(task="train", attack="sgd_uap", overrides=[f"attack.eps={eps}", f"seed={seed}"])
        record["config"]["attack"] = {"name": "sgd_uap", "eps": eps}
        records.append(record)
    _write(tmp_path, records)
    keys, _, rows = build_rows(load_records(tmp_path), "defences")
    assert len(rows) == 1 and rows[0]["n"] == 2
    assert not [k for k in keys if k.startswith("attack")]


def test_two_runs_of_one_seed_in_a_row_are_an_error(tmp_path):
    _write(tmp_path, [_record("sgd_uap", 0.1, 0, 0.5), _record("sgd_uap", 0.1, 0, 0.6)])
    with pytest.raises(ValueError, match=r"attack=sgd_uap.*seed 0 .*\(0, 1\)"):
        build_rows(load_records(tmp_path), "attacks")


def test_a_row_from_two_code_versions_is_marked(tmp_path):
    records = [_record("sgd_uap", 0.1, seed, 0.5) for seed in (0, 1, 2)] + [_record("cb_uap", 0.1, 0, 0.5)]
    records[0]["provenance"]["code"] = "1234567890abcdef"
    records[1]["provenance"]["code"] = "fedcba0987654321-dirty"
    del records[2]["provenance"]["code"]  # git_commit "abc" stands in
    _write(tmp_path, records)
    keys, columns, rows = build_rows(load_records(tmp_path), "attacks")
    md = to_markdown(keys, columns, rows)
    assert "| 3† |" in md and "| 1 |" in md
    assert md.rstrip().endswith("- attack=sgd_uap: 1234567 (1 run), abc (1 run), fedcba0-dirty (1 run)")
    table = {r["attack"]: r for r in csv.DictReader(io.StringIO(to_csv(keys, columns, rows)))}
    assert table["sgd_uap"]["n"] == "3" and table["sgd_uap"]["commits"] == "1234567890abcdef abc fedcba0987654321-dirty"
    assert table["cb_uap"]["commits"] == "abc"
    assert r"3$^\dagger$" in to_latex(keys, columns, rows)


def test_tuning_choice_reads_the_validation_fooled_label_entropy_where_every_candidate_has_it():
    rows = [_tuning_row("sgd_uap", 0.80, 0.10), _tuning_row("cb_uap", 0.79, 0.20), _tuning_row("cb_uap", 0.79, 0.30)]
    rows[1]["val_fooled_label_entropy"] = (0.5, 0.0, 3)
    rows[2]["val_fooled_label_entropy"] = (0.4, 0.0, 3)
    assert choose_tuned(rows) is rows[1]
    rows[2]["val_fooled_label_entropy"] = (None, None, 0)
    assert choose_tuned(rows) is rows[2]  # not every candidate has it: the label entropy


def test_tuning_choice_reads_its_margin():
    rows = [_tuning_row("sgd_uap", 0.80, 0.10), _tuning_row("cb_uap", 0.79, 0.20), _tuning_row("cb_uap", 0.70, 0.60)]
    assert choose_tuned(rows) is rows[1]
    assert choose_tuned(rows, margin=0.15) is rows[2]  # 10 points lost are within a 15-point margin


def test_the_package_imports_neither_torch_nor_matplotlib():
    code = "import sys, cbuap_runner.report; print(sorted({'torch', 'matplotlib'} & set(sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def _declaring(sweep: Path, rows_of: dict[str, list[str]]) -> list[dict]:
    """The sweep's records, those named in `rows_of` declaring those rows (as run_summary.json records them)."""
    for name, rows in rows_of.items():
        path = sweep / name / "run_summary.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "rows": rows}))
    return load_records(sweep)


def test_rows_are_the_ones_the_records_declare(sweep, caplog):
    records = _declaring(sweep, {name: ["attack.name", "attack.eps"] for name in "01234"})
    with caplog.at_level(logging.INFO, logger="cbuap_runner.report"):
        keys, _, rows = build_rows(records, "attacks")
    assert keys == ["attack", "attack.eps"]  # a group's name is the group's column
    assert len(rows) == 4 and _row(rows, "sgd_uap", 0.1)["n"] == 2
    assert not caplog.records


def test_declared_rows_come_before_the_records_and_merge_sweeps_of_other_rows(sweep):
    """A manifest section (or --rows) may merge sweeps whose records declare different rows."""
    records = _declaring(sweep, {"0": ["attack.name"], "1": ["attack.name", "attack.eps"]})
    with pytest.raises(ValueError, match="declare different rows"):
        build_rows(records, "attacks")
    keys, _, rows = build_rows(records, "attacks", declared=["attack.name", "attack.eps"])
    assert keys == ["attack", "attack.eps"] and len(rows) == 4


def test_declared_rows_keep_the_clash_guard(sweep, caplog):
    records = _declaring(sweep, {name: ["attack.name"] for name in "01234"})
    with caplog.at_level(logging.INFO, logger="cbuap_runner.report"):
        keys, _, rows = build_rows(records, "attacks")
    assert keys == ["attack", "attack.eps"]  # runs of one attack at two ε are two experiments, not one row
    assert len(rows) == 4
    assert [r.getMessage() for r in caplog.records] == ["note: rows attack.eps added: runs that share the declared "
                                                        "rows differ in them"]


def test_execution_settings_add_no_rows(sweep, caplog):
    """A network run in channels_last or compiled computes the same function: such runs share a row."""
    records = _declaring(sweep, {name: ["attack.name", "attack.eps"] for name in "01234"})
    records[0]["config"]["model"].update(channels_last=True, compile=True)
    with caplog.at_level(logging.INFO, logger="cbuap_runner.report"):
        keys, _, rows = build_rows(records, "attacks")
    assert keys == ["attack", "attack.eps"] and len(rows) == 4 and not caplog.records


def test_records_that_declare_different_rows_are_refused(sweep, capsys):
    _declaring(sweep, {"0": ["attack.name", "attack.eps"], "1": ["attack.name"]})
    with pytest.raises(ValueError, match=r"declare different rows \(\['attack.name', 'attack.eps'\] in 0; \['attack.name'\] in 1\)"):
        build_rows(load_records(sweep), "attacks")
    assert main([str(sweep), "--no-figures"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("make_tables: error: rows: the records of one table declare different rows")


def test_rows_from_the_command_line_else_inferred_with_a_note(sweep, tmp_path, capsys):
    assert main([str(sweep), "--out", str(tmp_path / "given"), "--no-figures", "--rows", "attack.name,attack.eps"]) == 0
    assert (tmp_path / "given" / "attacks.csv").read_text().startswith("attack,attack.eps,status,n,")
    assert "inferred" not in capsys.readouterr().err
    assert main([str(sweep), "--out", str(tmp_path / "inferred"), "--no-figures"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["make_tables: note: rows inferred from the runs' overrides (task, dataset, model, attack, training, "
                   "attack.eps); declare them with `rows` (the table config's or a manifest's) or --rows"]


@pytest.mark.parametrize("rows,message", [(["attack.epz"], "rows: attack.epz: no run of this table has this setting"),
                                          (["attack.name", "seed"], "rows: seed: the seeds of one row are averaged")])
def test_declared_rows_name_settings_of_the_runs_other_than_the_seed(sweep, rows, message):
    with pytest.raises(ValueError, match=message):
        build_rows(load_records(sweep), "attacks", declared=rows)


def test_a_declared_row_that_the_records_own_sweep_names_is_kept_before_any_run_sets_it(sweep):
    """A table whose later jobs add a config group (table/study_point) can be tabulated before they run."""
    records = _declaring(sweep, {name: ["attack.name", "attack.eps", "table/study_point"] for name in "01234"})
    keys, _, rows = build_rows(records, "attacks", declared=["attack.name", "attack.eps", "table/study_point"])
    assert keys == ["attack", "attack.eps", "table/study_point"] and len(rows) == 4
    with pytest.raises(ValueError, match="rows: table/tune: no run of this table has this setting"):
        build_rows(records, "attacks", declared=["attack.name", "attack.eps", "table/tune"])


def test_a_run_that_continued_its_crafting_shows_no_crafting_time():
    from cbuap_runner.report.records import metric

    record = {"metrics": {"craft_seconds": 3.0, "craft_continued_from": {"passes": 1, "position": 4}},
              "wall_seconds": 9.0}
    assert metric(record, "craft_seconds") is None and metric(record, "wall_seconds") is None
    record["metrics"]["craft_continued_from"] = None
    assert metric(record, "craft_seconds") == 3.0 and metric(record, "wall_seconds") == 9.0


def test_published_anchors_stand_beside_the_matching_rows():
    from cbuap_runner.report.document import anchor_lines

    rows = [{"status": "completed", "model.arch": "vgg16", "attack": "uap", "fooling_rate": (0.701, 0.02, 3)},
            {"status": "completed", "model.arch": "vgg16", "attack": "sgd_uap", "fooling_rate": (0.9, None, 1)}]
    anchors = {"metric": "fooling_rate", "source": "a paper, Table 1", "note": "Expect a few points of difference.",
               "values": [{"label": "VGG-16, DeepFool UAP", "where": {"model.arch": "vgg16", "attack": "uap"},
                           "value": 0.783},
                          {"label": "VGG-19, DeepFool UAP", "where": {"model.arch": "vgg19", "attack": "uap"},
                           "value": 0.778}]}
    lines = anchor_lines(anchors, rows)
    assert lines[0] == "Published figures beside these (fooling_rate; a paper, Table 1):"
    assert "| VGG-16, DeepFool UAP | 0.783 | 0.701 ± 0.020 (3) | -0.082 |" in lines
    assert "| VGG-19, DeepFool UAP | 0.778 | – (not run) | – |" in lines
    assert lines[-2] == "Expect a few points of difference."
    with pytest.raises(ValueError, match="matches 2 rows whose fooling_rate differs"):
        anchor_lines({**anchors, "values": [{"label": "x", "where": {"model.arch": "vgg16"}, "value": 0.5}]}, rows)


def test_a_network_keyed_anchor_pools_the_runs_of_every_row_that_attacks_it():
    """A clean accuracy is the network's: an anchor naming only the network stands beside all its rows' runs."""
    from cbuap_runner.report.document import anchor_lines

    def row(arch: str, attack: str, accs: list[float]) -> dict:
        runs = [{"status": "completed", "seed": s, "metrics": {"clean_acc": a}} for s, a in enumerate(accs)]
        return {"status": "completed", "model.arch": arch, "attack": attack, "clean_acc": (sum(accs) / len(accs),
                                                                                           None, len(accs)),
                "_records": runs}

    rows = [row("Standard", "sgd_uap", [0.94, 0.96]), row("Standard", "uap", [0.94, 0.96]),
            row("Wong2020Fast", "sgd_uap", [0.8, 0.8]), row("Wong2020Fast", "uap", [0.8, 0.9])]
    anchors = {"metric": "clean_acc", "source": "a leaderboard",
               "values": [{"label": "Standard", "where": {"model.arch": "Standard"}, "value": 0.9478}]}
    assert "| Standard | 0.948 | 0.950 ± 0.012 (4) | +0.002 |" in anchor_lines(anchors, rows)
    wong = {**anchors, "values": [{"label": "Wong", "where": {"model.arch": "Wong2020Fast"}, "value": 0.8334}]}
    with pytest.raises(ValueError, match=r"'Wong' matches 2 rows whose clean_acc differs \(0\.800 to 0\.850\)"):
        anchor_lines(wong, rows)


def test_the_transfer_matrix_puts_crafted_on_rows_and_evaluated_on_columns(tmp_path):
    from cbuap_runner.report.transfer import to_markdown, transfer_cells, write_transfer

    def evaluated(source: str, target: str, rate: float, seed: int = 0) -> dict:
        return {"status": "completed", "task": "evaluate", "seed": seed,
                "metrics": {"fooling_rate": rate, "source_model": source, "target_model": target},
                "provenance": {"perturbation": {"attack": "uap", "norm": "linf", "eps": 0.04}}}

    records = [evaluated("torchvision:vgg16", "torchvision:vgg16", 0.8),
               evaluated("torchvision:vgg16", "torchvision:vgg16", 0.6, seed=1),
               evaluated("torchvision:vgg16", "outputs/cache/models/x-resnet20-natural-ab12/model.pt", 0.3),
               evaluated("outputs/cache/models/x-resnet20-natural-ab12/model.pt", "torchvision:vgg16", 0.4),
               {"status": "completed", "task": "attack", "metrics": {"fooling_rate": 0.9}}]
    cells = transfer_cells(records)
    assert cells["uap linf ε=0.04"][("torchvision:vgg16", "torchvision:vgg16")] == [0.8, 0.6]
    text = to_markdown(cells)
    assert "| crafted on \\ evaluated on | torchvision:vgg16 | x-resnet20-natural-ab12 |" in text
    assert "| torchvision:vgg16 | 0.700 ± 0.141 (2) | 0.300 (1) |" in text
    assert "| x-resnet20-natural-ab12 | 0.400 (1) | – |" in text
    written = write_transfer(records, tmp_path, figures=True)
    assert [p.name for p in written] == ["transfer.md", "transfer.csv", "transfer.png"]
    assert (tmp_path / "transfer.png").stat().st_size > 1000
    # the cached network of one seed trained again into other weights: the diagonal would mix two networks
    cached = "outputs/cache/models/x-resnet20-natural-ab12/model.pt"
    first, again = (evaluated("torchvision:vgg16", cached, rate) for rate in (0.3, 0.5))
    first["provenance"]["model"] = {"weights_fingerprint": "w"}
    again["provenance"]["model"] = {"weights_fingerprint": "v"}
    first["_dir"], again["_dir"] = "vgg16_on_resnet20", "vgg16_on_resnet20_again"
    with pytest.raises(ValueError, match="evaluated on x-resnet20-natural-ab12, seed 0: vgg16_on_resnet20 and "
                                         "vgg16_on_resnet20_again used different weights"):
        transfer_cells([first, again])
    again["provenance"]["model"] = {"weights_fingerprint": "w"}
    cell = ("torchvision:vgg16", "x-resnet20-natural-ab12")
    assert transfer_cells([first, again])["uap linf ε=0.04"][cell] == [0.3, 0.5]


def test_progress_says_where_each_run_stands_and_the_training_left(tmp_path, capsys):
    def run(name: str, record: dict, rows: list[dict], tail: str = "") -> None:
        (tmp_path / name).mkdir()
        (tmp_path / name / "run_summary.json").write_text(json.dumps(record))
        (tmp_path / name / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + tail)

    training = {"status": "running", "task": "evaluate", "config": {"training": {"epochs": 10}}}
    seconds = [100, 100, 20, 30, 40, 50, 60]  # the last five: median 40
    run("natural_seed0", training, [{"epoch": e + 1, "val_acc": 0.5, "epoch_seconds": s} for e, s in
                                    enumerate(seconds)], tail='{"epoch": 8, "val_')  # cut short by a kill
    attack = {**_record("cb_uap", 0.2, 0, 0.9), "config": {"attack": {"passes": 10}}, "wall_seconds": 90.0}
    run("cb_uap_seed0", attack, [{"pass": k + 1, "objective": 1.0} for k in range(10)])
    assert main([str(tmp_path), "--kind", "progress", "--out", str(tmp_path / "out")]) == 0
    text = capsys.readouterr().out
    assert "| natural_seed0 | evaluate | running | 7/10 | 40 s | 2 min | – | – |" in text  # 3 epochs × 40 s
    assert "| cb_uap_seed0 | attack | completed | – | – | – | 10 (10 per crafting) | 2 min |" in text
    assert "1 of 2 runs completed." in text and "Training left: 2 min summed over 1 run, 2 min for the longest" in text
