"""The committed result tables are what cbuap_runner.report makes of the committed records (nothing typed)."""

from __future__ import annotations

import json
import logging
import re
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from cbuap_runner.report import figures, write_document, write_tables
from cbuap_runner.report.claims import VERDICT_REASON, Thresholds, claim_balance, claim_defence, claim_tuned
from cbuap_runner.report.kinds import PARETO, STRENGTH

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "docs" / "results"
TABLES = [("fair_attacks", "attacks"), ("tune_cb_uap", "tuning"), ("uat_bn", "defences")]
BAR = Thresholds(fooled_entropy_gain=0.15, fooling_rate_loss=0.02, tuning_fooling_margin=0.02, front_stable_gain=0.01,
                 front_min_runs=100)


@pytest.mark.parametrize("table,kind", TABLES)
def test_committed_table_regenerates_from_its_records(tmp_path, table, kind):
    write_tables(RESULTS / table / "records", tmp_path, kind, figures=False)
    for suffix in ("md", "csv", "tex"):
        assert (tmp_path / f"{kind}.{suffix}").read_text() == (RESULTS / table / f"{kind}.{suffix}").read_text()


def test_results_document_regenerates_from_the_committed_records(tmp_path, caplog):
    """docs/results.md, every table in it and the claims it answers come from the records and the manifest alone;
    every section and frontier declares its rows."""
    shutil.copytree(RESULTS, tmp_path / "docs" / "results")
    with caplog.at_level(logging.INFO, logger="cbuap_runner.report"):
        doc = write_document(tmp_path / "docs" / "results" / "document.json", figures=False)
    assert doc.read_text() == (REPO / "docs" / "results.md").read_text()
    for table in json.loads((RESULTS / "document.json").read_text())["sections"]:
        for suffix in ("md", "csv") if table["kind"] in (STRENGTH, PARETO) else ("md", "csv", "tex"):
            name = f"{table['kind']}.{suffix}"
            assert (doc.parent / "results" / table["name"] / name).read_text() == (RESULTS / table["name"] / name).read_text()
    assert not caplog.records  # no rows inferred, none added by the clash guard


def _row(**values):
    """A completed table row: settings as given, metrics as (mean, std, n) cells."""
    cells = {k: (v, 0.0, 3) for k, v in values.items() if isinstance(v, float)}
    return {"status": "completed", "n": 3, **{k: v for k, v in values.items() if not isinstance(v, float)}, **cells}


def test_tuned_claim_judges_the_validation_choice_on_test():
    sgd = _row(attack="sgd_uap", _label="sgd_uap", fooling_rate=0.90, label_entropy=0.01, fooled_label_entropy=0.01,
               min_class_attack_success_rate=0.0)
    near = _row(attack="cb_uap", _label="pull1", chosen=True, fooling_rate=0.89, label_entropy=0.20,
                fooled_label_entropy=0.20, min_class_attack_success_rate=0.1)
    far = _row(attack="cb_uap", _label="pull1", chosen=True, fooling_rate=0.85, label_entropy=0.40,
               fooled_label_entropy=0.40, min_class_attack_success_rate=0.1)
    assert claim_tuned("x", [sgd, near], BAR).endswith(") holds.")
    assert "5.0 points lower" in claim_tuned("x", [sgd, far], BAR)
    assert claim_tuned("x", [sgd, far], BAR).endswith("does not hold.")
    assert "not answered" in claim_tuned("x", [sgd], BAR)


def test_defence_claim_reads_the_chosen_cb_uat_variant():
    rows = [_row(training="uat", clean_acc=0.88, worst_adv_acc=0.70),
            _row(training="cw_uat", clean_acc=0.87, worst_adv_acc=0.65),
            _row(training="cb_uat", **{"table/cb_uat": None}, clean_acc=0.84, worst_adv_acc=0.50),
            _row(training="cb_uat", **{"table/cb_uat": "worst_member"}, clean_acc=0.89, worst_adv_acc=0.75)]
    assert "not answered" in claim_defence("x", rows)  # two CB-UAT rows and no choice between them
    assert claim_defence("x", rows, {"table/cb_uat": "worst_member"}).endswith("the claim holds.")
    assert claim_defence("x", rows, {"table/cb_uat": None}).endswith("the claim does not hold.")


def test_balance_claim_reads_the_fooled_label_entropy():
    """A weaker attack leaves more images unfooled and so gains label entropy for free: the verdict reads the
    entropy of the fooled images' labels, and the sentence reports both."""
    sgd = _row(attack="sgd_uap", fooling_rate=0.90, label_entropy=0.70, fooled_label_entropy=0.30,
               min_class_attack_success_rate=0.0)
    unfooled = _row(attack="cb_uap", fooling_rate=0.89, label_entropy=0.90, fooled_label_entropy=0.35,
                    min_class_attack_success_rate=0.0)
    spread = _row(attack="cb_uap", fooling_rate=0.89, label_entropy=0.72, fooled_label_entropy=0.50,
                  min_class_attack_success_rate=0.0)
    verdict = claim_balance("x", [sgd, unfooled], BAR)
    assert verdict.endswith("does not hold.")
    assert "fooled-label entropy by 0.050" in verdict and "label entropy +0.200" in verdict
    assert claim_balance("x", [sgd, spread], BAR).endswith(") holds.")
    del spread["fooled_label_entropy"]
    assert "not answered" in claim_balance("x", [sgd, spread], BAR)


def test_balance_claim_reads_the_cb_uap_row_it_is_told():
    sgd = _row(attack="sgd_uap", fooling_rate=0.90, label_entropy=0.30, fooled_label_entropy=0.30,
               min_class_attack_success_rate=0.0, **{"table/study_point": None})
    defaults = _row(attack="cb_uap", fooling_rate=0.89, label_entropy=0.35, fooled_label_entropy=0.35,
                    min_class_attack_success_rate=0.0, **{"table/study_point": None})
    chosen = _row(attack="cb_uap", fooling_rate=0.89, label_entropy=0.60, fooled_label_entropy=0.60,
                  min_class_attack_success_rate=0.0, **{"table/study_point": "s"})
    rows = [sgd, defaults, chosen]
    assert "more than one CB-UAP row matches" in claim_balance("x", rows, BAR)  # and no choice between them
    assert claim_balance("x", rows, BAR, cb_where={"table/study_point": "s"}).endswith(") holds.")
    assert claim_balance("x", rows, BAR, cb_where={"table/study_point": None}).endswith("does not hold.")


def test_frontier_figure_has_a_label_entropy_and_a_fooled_label_entropy_panel(monkeypatch, tmp_path):
    saved = []
    monkeypatch.setattr(figures, "save_figure", lambda fig, path: saved.append(fig) or path)
    points = [("sgd_uap", 0.9, 0.1, 0.05), ("sgd_uap", 0.91, 0.12, 0.07), ("cb_uap, div1", 0.88, 0.3, 0.4)]
    figures.frontier_figure(points, "t", tmp_path / "f.png", (0.15, 0.02))
    label_panel, fooled_panel = saved[0].axes
    assert "fooled-label" in fooled_panel.get_ylabel() and "fooled" not in label_panel.get_ylabel()
    for panel in (label_panel, fooled_panel):
        assert len(panel.collections) == 3  # two settings and the shaded claim region
    assert [len(panel.collections[0].get_offsets()) for panel in (label_panel, fooled_panel)] == [2, 2]


def test_the_thresholds_decide_the_balance_verdict():
    sgd = _row(attack="sgd_uap", fooling_rate=0.90, label_entropy=0.30, fooled_label_entropy=0.30,
               min_class_attack_success_rate=0.0)
    cb = _row(attack="cb_uap", fooling_rate=0.89, label_entropy=0.40, fooled_label_entropy=0.40,
              min_class_attack_success_rate=0.0)
    assert claim_balance("x", [sgd, cb], BAR).endswith("(fooled-label entropy ≥ 0.15 higher with at most 2 points "
                                                       "lost) does not hold.")  # 0.10 gained
    lower = replace(BAR, fooled_entropy_gain=0.05)
    assert claim_balance("x", [sgd, cb], lower).endswith("(fooled-label entropy ≥ 0.05 higher with at most 2 points "
                                                         "lost) holds.")
    stricter = replace(BAR, fooled_entropy_gain=0.05, fooling_rate_loss=0.005)
    assert claim_balance("x", [sgd, cb], stricter).endswith("does not hold.")  # 1 point lost


def _attack_record(attack: str, seed: int, commit: str, fooled_entropy: float = 0.05) -> dict:
    return {"status": "completed", "task": "attack", "dataset": "fashion_mnist", "model": "small_cnn", "attack": attack,
            "training": "natural", "seed": seed, "git_commit": commit, "overrides": [f"attack={attack}", f"seed={seed}"],
            "config": {"attack": {"name": attack, "eps": 0.2}},
            "metrics": {"fooling_rate": 0.9, "label_entropy": 0.1, "fooled_label_entropy": fooled_entropy,
                        "min_class_attack_success_rate": 0.0}}


def _manifest(root: Path, records: list[dict], section: dict | None = None, **claims) -> Path:
    """A manifest of one attacks section `s` over `records`, answering claim 1 from it; `claims`: its thresholds
    (default: docs/results/document.json's)."""
    for i, record in enumerate(records):
        (root / "records" / str(i)).mkdir(parents=True)
        (root / "records" / str(i) / "run_summary.json").write_text(json.dumps(record))
    section = {"name": "s", "title": "S", "kind": "attacks", "records": ["records"], "about": "a", "rerun": ["r"],
               **(section or {})}
    thresholds = {"fooled_entropy_gain": 0.15, "fooling_rate_loss": 0.02, "tuning_fooling_margin": 0.02,
                  "front_stable_gain": 0.01, "front_min_runs": 100, **claims}
    manifest = {"document": "doc.md", "title": "T", "intro": [], "sections": [section], "frontiers": [],
                "claims": {**thresholds, "balance": [{"label": "S", "section": "s"}], "defence": []}}
    (root / "document.json").write_text(json.dumps(manifest))
    return root / "document.json"


def test_document_names_the_code_versions_of_each_section(tmp_path):
    commits = ["a" * 40, "b" * 40 + "-dirty", "a" * 40]
    records = [_attack_record(attack, seed, commits[i]) for i, (attack, seed) in
               enumerate([("sgd_uap", 0), ("sgd_uap", 1), ("cb_uap", 0)])]
    text = write_document(_manifest(tmp_path, records), figures=False).read_text()
    assert "Records from commits: aaaaaaa (2 runs), bbbbbbb-dirty (1 run)." in text  # these records hold no timing
    for record, seconds in zip(records, (1800, 3600, 5400)):
        record["wall_seconds"] = seconds
    text = write_document(_manifest(tmp_path / "timed", records), figures=False).read_text()
    assert "bbbbbbb-dirty (1 run); the runs' wall time: 3.0 h over 3 runs." in text
    records[0]["train_continued_from"] = 12  # a relaunch: its wall time is that attempt's
    records[1]["metrics"]["train_seconds"] = 7200.0  # trained longer than it ran: a record from before the flag
    records[2]["waited_seconds"] = 1800.0  # for another job to train its model: not this run's cost
    text = write_document(_manifest(tmp_path / "continued", records), figures=False).read_text()
    assert ("the runs' wall time: 1.0 h over 1 run, leaving out the wall time of 2 runs continued from an earlier "
            "attempt (it counts the last attempt only).") in text
    assert "| 2† |" in text and "- attack=sgd_uap: aaaaaaa (1 run), bbbbbbb-dirty (1 run)" in text
    assert VERDICT_REASON in text
    assert "fooled-label entropy" in text.split("- S: ")[1].splitlines()[0]


def test_the_document_ends_with_what_each_section_cost(tmp_path):
    records = [_attack_record("sgd_uap", seed, "a" * 40) for seed in (0, 1, 2)]
    records[0]["wall_seconds"], records[1]["wall_seconds"] = 1800, 5400
    records[1]["metrics"]["train_seconds"] = 3600.0  # trained its network within its wall time
    records[2]["wall_seconds"], records[2]["train_continued_from"] = 600, 12  # its last attempt's time only
    records[2]["metrics"]["train_seconds"] = 7200.0  # over every attempt
    text = write_document(_manifest(tmp_path, records), figures=False).read_text()
    assert text.rstrip().endswith("| S | 3 | 2.0 h | 2 | 1 | 3.0 h | 2 |")
    assert "## What each section cost to run" in text


def test_the_document_ends_with_what_is_left_to_run(tmp_path):
    """Every row of a section that plans seeds, on each planned seed no completed run holds, at the median cost of
    the row's completed runs; a row with no cost to go by is counted apart."""
    records = []
    for attack, seed, wall in [("sgd_uap", 0, 600), ("sgd_uap", 1, 2000), ("sgd_uap", 2, 700), ("cb_uap", 0, None)]:
        records.append({**_attack_record(attack, seed, "a" * 40), **({"wall_seconds": wall} if wall else {})})
    records.append({**_attack_record("cb_uap", 1, "a" * 40), "status": "running"})  # started, not finished
    section = {"rows": ["attack.name"], "seeds_to_run": [1, 2, 3]}
    text = write_document(_manifest(tmp_path, records, section), figures=False).read_text()
    assert "## What is left to run" in text
    assert "| S | 1, 2, 3 | 4 | 12 min | 3 |" in text  # the median, 700 s (the mean would be 1,100 s)
    assert "| S | cb_uap | 1, 2, 3 | – |\n|  | sgd_uap | 3 | 12 min |" in text
    assert "## What is left to run" not in write_document(_manifest(tmp_path / "none", records), figures=False).read_text()
    with pytest.raises(ValueError, match=r"section s: seeds_to_run='3': must be a list of whole numbers"):
        write_document(_manifest(tmp_path / "typo", records, {**section, "seeds_to_run": "3"}), figures=False)
    only_sgd = {**section, "seeds_to_run_where": {"attack.name": "sgd_uap"}}  # the rows it plans seeds on
    text = write_document(_manifest(tmp_path / "where", records, only_sgd), figures=False).read_text()
    assert "| S | 1, 2, 3 | 1 | 12 min | 0 |" in text and "| cb_uap |" not in text.split("## What is left to run")[1]
    with pytest.raises(ValueError, match=r"section s: seeds_to_run_where=\[182\]: must map row keys to values"):
        write_document(_manifest(tmp_path / "typo2", records, {**section, "seeds_to_run_where": [182]}), figures=False)
    with pytest.raises(ValueError, match=r"section s: seeds_to_run_where names 'atack', which no run has"):
        write_document(_manifest(tmp_path / "typo3", records, {**section, "seeds_to_run_where": {"atack": 1}}),
                       figures=False)


@pytest.mark.parametrize("gain,verdict", [(0.15, "holds"), (0.25, "does not hold")])
def test_the_manifests_thresholds_decide_the_verdict(tmp_path, gain, verdict):
    records = [_attack_record("sgd_uap", 0, "a" * 40), _attack_record("cb_uap", 0, "a" * 40, fooled_entropy=0.25)]
    text = write_document(_manifest(tmp_path, records, fooled_entropy_gain=gain), figures=False).read_text()
    claim = text.split("- S: ")[1].splitlines()[0]
    assert claim.endswith(f"(fooled-label entropy ≥ {gain} higher with at most 2 points lost) {verdict}.")


def test_a_section_groups_its_rows_by_the_manifests_rows(tmp_path):
    records = [_attack_record("sgd_uap", 0, "a" * 40), _attack_record("cb_uap", 0, "a" * 40)]
    text = write_document(_manifest(tmp_path, records, {"rows": ["attack.name"]}), figures=False).read_text()
    assert "\n| attack | n | fooling_rate |" in text  # the declared row keys, and no others


def test_a_section_of_trained_networks_shows_their_training_curves(tmp_path):
    records = [{**_attack_record("sgd_uap", seed, "a" * 40), "task": "evaluate"} for seed in (0, 1)]
    manifest = _manifest(tmp_path, records, {"metrics": ["clean_acc"]})
    curve = [0.5, 0.80, 0.85, 0.85]  # ends at its best, but moved 5 points over the last three epochs
    for seed in (0, 1):
        rows = [{"epoch": e + 1, "val_acc": acc, "train_loss": 1.0} for e, acc in enumerate(curve)]
        (tmp_path / "records" / str(seed) / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = write_document(manifest, figures=False).read_text()
    assert "Training to its plateau" in text
    assert "| natural | 2 | 4 | 0.850 ± 0.000 | 0.000 ± 0.000 | 0.050 ± 0.000 | no |" in text
    assert "clean_vs_worst" not in text  # the defences' figure belongs to defence sections


def _trained(seed: int, epochs: int, clean: float) -> dict:
    return {**_attack_record("sgd_uap", seed, "a" * 40), "task": "evaluate", "attack": None,
            "config": {"training": {"name": "natural", "epochs": epochs}}, "metrics": {"clean_acc": clean}}


def test_a_longer_schedule_is_read_against_the_shorter_seed_by_seed(tmp_path):
    runs = [(0, 182, 0.870), (1, 182, 0.880), (2, 182, 0.875), (1, 364, 0.890), (2, 364, 0.879), (3, 364, 0.99)]
    section = {"metrics": ["clean_acc"], "rows": ["task", "training.name", "training.epochs"],
               "longer_run": "training.epochs"}
    manifest = _manifest(tmp_path, [_trained(*run) for run in runs], section)
    for i, (_, _, clean) in enumerate(runs):  # a final validation accuracy one point under the test accuracy
        row = {"epoch": 1, "val_acc": clean - 0.01, "train_loss": 1.0}
        (tmp_path / "records" / str(i) / "metrics.jsonl").write_text(json.dumps(row) + "\n")
    text = write_document(manifest, figures=False).read_text()
    assert "| natural | 1 | 182 | 0.880 | 0.870 | 364 | 0.890 | 0.880 | 0 | +1.0 |" in text
    assert "| natural | 2 | 182 | 0.875 | 0.865 | 364 | 0.879 | 0.869 | 0 | +0.4 |" in text
    assert "| natural | 0 |" not in text and "| natural | 3 |" not in text  # a seed only one schedule ran
    assert "- natural, training.epochs 364 against 182: +0.7 [-3.1, +4.5] points of clean_acc over 2 paired seeds" in text
    # seed 1 (records 1: 182 epochs, 3: 364), {record: the epoch it branched at}: the 364-epoch run from the
    # 182-epoch one (equal first rows, or not), the 182-epoch run from the 364-epoch one before its schedule decays,
    # or both from a third run (they share the fewer epochs)
    cases = (({3: 1}, 0.87, "1"), ({3: 1}, 0.5, "1 of another run"), ({1: 1}, 0.87, "1"), ({1: 1, 3: 2}, 0.87, "1"))
    for case, (branched, shorter_val, shared) in enumerate(cases):
        records = [_trained(*run) for run in runs]
        for i, epoch in branched.items():
            records[i]["train_branched_from"] = {"epoch": epoch, "path": "c.pt", "sha256": "b" * 64}
        manifest = _manifest(tmp_path / f"case{case}", records, section)
        for i, val in ((1, shorter_val), (3, 0.87)):
            row = {"epoch": 1, "val_acc": val, "train_loss": 1.0}
            (manifest.parent / "records" / str(i) / "metrics.jsonl").write_text(json.dumps(row) + "\n")
        text = write_document(manifest, figures=False).read_text()
        assert f"| natural | 1 | 182 | 0.880 | {shorter_val:.3f} | 364 | 0.890 | 0.870 | {shared} | +1.0 |" in text
    runs = runs[:3]
    manifest = _manifest(tmp_path / "short", [_trained(*run) for run in runs], section)
    assert "none yet: no run of a longer schedule has finished" in write_document(manifest, figures=False).read_text()
    manifest = _manifest(tmp_path / "typo", [_trained(*run) for run in runs], {**section, "longer_run": "epochs"})
    with pytest.raises(ValueError, match=r"section s: longer_run='epochs': not one of the section's row keys"):
        write_document(manifest, figures=False)


@pytest.mark.parametrize("claims,message", [
    ({"fooling_rate_loss": None}, "claims.fooling_rate_loss=None: must be a number ≥ 0"),
    ({"tuning_fooling_margin": -0.1}, "claims.tuning_fooling_margin=-0.1: must be a number ≥ 0"),
    ({"front_min_runs": 99.5}, "claims.front_min_runs=99.5: must be a whole number, at least 4"),
    ({"front_min_runs": 3}, "claims.front_min_runs=3: must be a whole number, at least 4"),
    ({"front_min_runs": None}, "claims.front_stable_gain and claims.front_min_runs: give both or neither")])
def test_a_bad_threshold_is_named(tmp_path, claims, message):
    manifest = _manifest(tmp_path, [_attack_record("sgd_uap", 0, "a" * 40)], **claims)
    with pytest.raises(ValueError, match=f"document.json: {message}"):
        write_document(manifest, figures=False)


def test_each_section_rows_hold_the_rows_of_the_tables_that_rerun_it():
    """A section's rows are its sweeps' (conf/table/<name>.yaml `rows`), plus what tells merged sweeps apart."""
    from omegaconf import OmegaConf

    for section in json.loads((RESULTS / "document.json").read_text())["sections"]:
        if section["kind"] in (STRENGTH, PARETO):  # not tables of rows: they read their records' checks or trials
            continue
        tables = {name for line in section["rerun"] for name in re.findall(r"\btable=(\w+)", line)}
        assert tables, section["name"]
        for table in tables:
            declared = OmegaConf.load(REPO / "conf" / "table" / f"{table}.yaml").rows
            assert set(declared) <= set(section["rows"]), (section["name"], table)


def test_no_text_of_the_manifest_types_a_result():
    """Prose carries no measured figure: a number printed as the tables print metrics (three or more decimals) in a
    title, text or note of docs/results/document.json is a result typed by hand, and goes stale when records change."""
    typed = re.compile(r"(?<![\d.])\d\.\d{3,}(?!\d)")

    def strings(node):
        if isinstance(node, str):
            yield node
        elif isinstance(node, dict | list):
            for child in node.values() if isinstance(node, dict) else node:
                yield from strings(child)

    manifest = json.loads((RESULTS / "document.json").read_text())
    found = [(m.group(), text[max(0, m.start() - 40):m.end()]) for text in strings(manifest) for m in typed.finditer(text)]
    assert not found
